"""The main window: navigation on the left, the current page on the right.

Navigation: Fleet, Alerts (with the unresolved count and an icon of the
worst unresolved severity, kept current from ``bridge.alerts_changed``),
Audit log and Settings. The audit and settings pages are built the first
time they are shown.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QSplitter,
    QStackedWidget,
    QWidget,
)

from server_core.views import AlertCounts
from ui_qt.add_host import AddHostDialog
from ui_qt.alerts_model import severity_icon, severity_label
from ui_qt.alerts_view import AlertsView
from ui_qt.audit_view import AuditView
from ui_qt.bridge import alters_counts
from ui_qt.context import UiContext
from ui_qt.fleet_view import FleetView
from ui_qt.host_tabs.common import SingleFlight
from ui_qt.host_view import HostView
from ui_qt.job_window import JobWindow
from ui_qt.settings import SettingsView

log = logging.getLogger(__name__)

FLEET, ALERTS, AUDIT, SETTINGS = "fleet", "alerts", "audit", "settings"


def alerts_nav_text(counts: AlertCounts | None) -> str:
    """``Alerts (3)`` with the unresolved (open + acknowledged) count, ``Alerts`` with none."""
    unresolved = 0 if counts is None else counts.open + counts.acknowledged
    return f"Alerts ({unresolved})" if unresolved else "Alerts"


def alerts_nav_tooltip(counts: AlertCounts | None) -> str:
    if counts is None or counts.open + counts.acknowledged == 0:
        return "No unresolved alerts"
    parts = [f"{counts.open} open"]
    if counts.acknowledged:
        parts.append(f"{counts.acknowledged} acknowledged")
    worst = severity_label(counts.worst_severity).lower()
    return f"Unresolved alerts: {', '.join(parts)} — the worst is {worst}"


class MainWindow(QMainWindow):
    """Implements ui_qt.navigator.Navigator for every view it hosts."""

    hidden_to_tray = Signal()

    def __init__(self, ctx: UiContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.setWindowTitle("restic-manager")
        self.resize(1200, 760)
        self._quitting = False
        # Without a system tray, closing the window must quit: a hidden
        # window with no tray icon would strand the app (the shell decides).
        self.close_to_tray = True
        self._job_windows: dict[str, JobWindow] = {}

        self.nav = QListWidget()
        self.nav.setMaximumWidth(180)
        self.nav.setObjectName("navigation")
        self.pages = QStackedWidget()
        self.fleet = FleetView(ctx, self)
        self.pages.addWidget(self.fleet)
        self.host_page: HostView | None = None
        self.alerts = AlertsView(ctx, self)
        self.pages.addWidget(self.alerts)
        self.audit: AuditView | None = None
        self.settings_page: SettingsView | None = None
        self.alert_counts: AlertCounts | None = None
        self._severity_icons: dict[str, QIcon] = {}
        self._nav_items: dict[str, QListWidgetItem] = {}
        for key, text in (
            (FLEET, "Fleet"),
            (ALERTS, "Alerts"),
            (AUDIT, "Audit log"),
            (SETTINGS, "Settings"),
        ):
            item = QListWidgetItem(self._blank_icon(), text)
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.nav.addItem(item)
            self._nav_items[key] = item
        self.alerts_item = self._nav_items[ALERTS]
        self.alerts_item.setToolTip("Alerts: open, acknowledged and resolved")
        self.nav.setSpacing(2)
        self.nav.setCurrentRow(0)
        self.nav.currentItemChanged.connect(self._on_nav)
        # A click on the item already current (back from a host page) still navigates.
        self.nav.itemClicked.connect(lambda item: self._on_nav(item, None))
        self.counts_loader: SingleFlight[AlertCounts] = SingleFlight(
            self,
            ctx.runner,
            "counting alerts",
            ctx.alerts.counts,
            self._counts_loaded,
            self._counts_failed,
        )
        ctx.bridge.alerts_changed.connect(self._alerts_changed)
        # A deleted host takes its alerts along.
        ctx.bridge.hosts_removed.connect(self._recount)
        self.counts_loader.request()

        split = QSplitter()
        split.addWidget(self.nav)
        split.addWidget(self.pages)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setCollapsible(1, False)
        # The navigation pane is capped at 180 px: size the splitter to it,
        # or the pane's share of the width is left as an empty gap.
        split.setSizes([160, 1040])
        self.setCentralWidget(split)
        self._build_menus()

    # -- Navigator -----------------------------------------------------------

    def show_fleet(self) -> None:
        self._show(FLEET)

    def show_alerts(self, alert_id: int | None = None) -> None:
        self._show(ALERTS)
        if alert_id is not None:
            self.alerts.select_alert(alert_id)

    def show_audit(self) -> None:
        self._show(AUDIT)

    def show_settings(self) -> None:
        self._show(SETTINGS)

    def _show(self, key: str) -> None:
        self.pages.setCurrentWidget(self._page(key))
        item = self._nav_items[key]
        if self.nav.currentItem() is not item:
            self.nav.setCurrentItem(item)

    def _page(self, key: str) -> QWidget:
        if key == ALERTS:
            return self.alerts
        if key == AUDIT:
            if self.audit is None:
                self.audit = AuditView(self.ctx, self)
                self.pages.addWidget(self.audit)
            return self.audit
        if key == SETTINGS:
            if self.settings_page is None:
                self.settings_page = SettingsView(self.ctx)
                self.pages.addWidget(self.settings_page)
            return self.settings_page
        return self.fleet

    def open_host(self, host_id: int) -> None:
        # A host page belongs to the fleet, wherever it was opened from.
        self.nav.blockSignals(True)
        self.nav.setCurrentItem(self._nav_items[FLEET])
        self.nav.blockSignals(False)
        if self.host_page is not None:
            if self.host_page.host_id == host_id:
                self.pages.setCurrentWidget(self.host_page)
                return
            self.pages.removeWidget(self.host_page)
            self.host_page.deleteLater()
        self.host_page = HostView(self.ctx, self, host_id)
        self.pages.addWidget(self.host_page)
        self.pages.setCurrentWidget(self.host_page)

    def open_job(self, job_id: str) -> None:
        window = self._job_windows.get(job_id)
        if window is None:
            window = JobWindow(self.ctx, job_id)
            window.destroyed.connect(lambda *_: self._job_windows.pop(job_id, None))
            self._job_windows[job_id] = window
        window.show()
        window.raise_()
        window.activateWindow()

    def add_host(self) -> None:
        dialog = AddHostDialog(self.ctx, self)
        dialog.show()

    # -- chrome ----------------------------------------------------------------

    def _on_nav(self, current: QListWidgetItem | None, _previous: object) -> None:
        if current is not None:
            self.pages.setCurrentWidget(self._page(str(current.data(Qt.ItemDataRole.UserRole))))

    # -- the alerts count --------------------------------------------------------

    def _alerts_changed(self, changes: dict[int, str]) -> None:
        if alters_counts(changes):
            self.counts_loader.request()

    def _recount(self, _host_ids: object = None) -> None:
        self.counts_loader.request()

    def _counts_loaded(self, counts: AlertCounts) -> None:
        if counts == self.alert_counts:
            return
        self.alert_counts = counts
        self.alerts_item.setText(alerts_nav_text(counts))
        self.alerts_item.setToolTip(alerts_nav_tooltip(counts))
        worst = counts.worst_severity if counts.open + counts.acknowledged else None
        if worst is None:
            self.alerts_item.setIcon(self._blank_icon())
        else:
            icon = self._severity_icons.get(worst)
            if icon is None:
                icon = self._severity_icons[worst] = severity_icon(worst)
            self.alerts_item.setIcon(icon)

    def _blank_icon(self) -> QIcon:
        """An empty icon the size of a severity badge: every item's text lines up,
        whether or not the Alerts item shows a badge."""
        blank = self._severity_icons.get("")
        if blank is None:
            pixmap = QPixmap(16, 16)
            pixmap.fill(Qt.GlobalColor.transparent)
            blank = self._severity_icons[""] = QIcon(pixmap)
        return blank

    def _counts_failed(self, exc: Exception) -> None:
        # Background upkeep: the next change tries again; no dialog.
        log.warning("counting alerts failed: %s", exc)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        add = QAction("&Add host…", self)
        add.setShortcut(QKeySequence("Ctrl+N"))
        add.triggered.connect(self.add_host)
        file_menu.addAction(add)
        self._quit_separator = file_menu.addSeparator()
        self.file_menu = file_menu
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        quit_action.triggered.connect(self.quit_app)
        file_menu.addAction(quit_action)
        view_menu = self.menuBar().addMenu("&View")
        fleet = QAction("&Fleet", self)
        fleet.triggered.connect(self.show_fleet)
        view_menu.addAction(fleet)
        alerts = QAction("&Alerts", self)
        alerts.triggered.connect(lambda: self.show_alerts())
        view_menu.addAction(alerts)
        audit = QAction("Audit &log", self)
        audit.triggered.connect(self.show_audit)
        view_menu.addAction(audit)
        settings = QAction("&Settings", self)
        settings.triggered.connect(self.show_settings)
        view_menu.addAction(settings)
        view_menu.addSeparator()
        refresh = QAction("&Refresh", self)
        refresh.setShortcut(QKeySequence("F5"))
        refresh.triggered.connect(self.refresh)
        view_menu.addAction(refresh)
        self.addAction(add)
        self.addAction(quit_action)
        self.addAction(refresh)

    def add_file_action(self, action: QAction) -> None:
        """Add an app-level action (e.g. "Start at login") to the File menu, above Quit."""
        self.file_menu.insertAction(self._quit_separator, action)

    def bring_to_front(self) -> None:
        """Show the window, un-minimised, raised and focused (tray, second launch)."""
        state = self.windowState() & ~Qt.WindowState.WindowMinimized
        self.setWindowState(state | Qt.WindowState.WindowActive)
        self.show()
        self.raise_()
        self.activateWindow()

    def refresh(self) -> None:
        page = self.pages.currentWidget()
        reload = getattr(page, "reload", None)
        if callable(reload):
            reload()

    def quit_app(self) -> None:
        self._quitting = True
        for window in list(self._job_windows.values()):
            window.close()
        QApplication.quit()

    def closeEvent(self, event: QCloseEvent) -> None:
        # Closing the window keeps the app (and the fleet's control plane)
        # running in the tray; Quit is explicit.
        if self._quitting:
            event.accept()
            return
        if not self.close_to_tray:
            event.accept()
            self.quit_app()
            return
        event.ignore()
        self.hide()
        self.hidden_to_tray.emit()

    def current_page(self) -> QWidget | None:
        return self.pages.currentWidget()
