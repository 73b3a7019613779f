"""The main window: navigation on the left, the current page on the right."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QSplitter,
    QStackedWidget,
    QWidget,
)

from ui_qt.add_host import AddHostDialog
from ui_qt.context import UiContext
from ui_qt.fleet_view import FleetView
from ui_qt.host_view import HostView
from ui_qt.job_window import JobWindow


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
        fleet_item = QListWidgetItem("Fleet")
        fleet_item.setData(Qt.ItemDataRole.UserRole, "fleet")
        self.nav.addItem(fleet_item)
        self.nav.setCurrentRow(0)
        self.nav.currentItemChanged.connect(self._on_nav)

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
        self.pages.setCurrentWidget(self.fleet)
        self.nav.setCurrentRow(0)

    def open_host(self, host_id: int) -> None:
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
        if current is not None and current.data(Qt.ItemDataRole.UserRole) == "fleet":
            self.pages.setCurrentWidget(self.fleet)

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
