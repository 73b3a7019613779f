"""The Alerts page: Open / Acknowledged / Resolved tabs over one live model.

Loaded once through ``AlertService.list_alerts`` and then kept current by
``bridge.alerts_changed``: only the alerts named there are read again (a
burst of many falls back to one full read), and the model applies them in
place, so a re-fire never resets the table, the selection or the sort.
Acknowledge and Resolve act on the selected rows they apply to; the
buttons are enabled only when the selection has such rows.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStackedWidget,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import NotFound
from server_core.services.context import OPERATOR, Actor
from server_core.views import AlertView
from ui_qt.alerts_model import (
    ACKNOWLEDGED,
    OPEN,
    RESOLVED,
    STATUSES,
    UNRESOLVED,
    AlertsModel,
    AlertsStatusProxy,
    Column,
)
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import SingleFlight, error_label, error_text, guarded, show_error
from ui_qt.navigator import Navigator

log = logging.getLogger(__name__)

# Resolved alerts are history: the newest this many are listed.
RESOLVED_LIMIT = 500
UNRESOLVED_LIMIT = 10_000  # AlertService.list_alerts allows at most this
# More changed alerts than this in one flush: one full read instead of one each.
PARTIAL_MAX = 50

TAB_TITLES = {OPEN: "Open", ACKNOWLEDGED: "Acknowledged", RESOLVED: "Resolved"}
EMPTY_TEXT = {
    OPEN: (
        "No open alerts — all is well.",
        "A failed backup, an always-on agent that went silent or a missed schedule "
        "shows up here within seconds, and in the tray.",
    ),
    ACKNOWLEDGED: (
        "Nothing acknowledged.",
        "Acknowledge an open alert to say you are on it: it waits here until the "
        "problem is fixed (most resolve themselves) or you resolve it.",
    ),
    RESOLVED: (
        "No resolved alerts yet.",
        "Alerts resolve themselves when the condition clears — the next backup "
        "succeeds, the agent is back — or when you resolve them.",
    ),
}

# (views, only): with only=None the views are every alert the view lists.
Fetched = tuple[list[AlertView], frozenset[int] | None]


class AlertsTable(QTableView):
    def __init__(self, status: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(f"alertsTable-{status}")
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSortingEnabled(True)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header = self.horizontalHeader()
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

    def size_columns(self) -> None:
        """Widths for the usual contents; the message takes the rest. Needs the
        model set (the header has no sections before)."""
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(int(Column.MESSAGE), QHeaderView.ResizeMode.Stretch)
        metrics = self.fontMetrics()
        widths = {
            Column.SEVERITY: metrics.horizontalAdvance("Critical") + 48,
            Column.KIND: metrics.horizontalAdvance("Repository init failed") + 20,
            Column.HOST: metrics.horizontalAdvance("db-prod-1.example") + 16,
            Column.FIRST_SEEN: metrics.horizontalAdvance("45 min ago") + 28,
            Column.LAST_SEEN: metrics.horizontalAdvance("45 min ago") + 28,
            Column.CHANGED: metrics.horizontalAdvance("Acknowledged") + 28,
            Column.COUNT: metrics.horizontalAdvance("Count") + 28,
        }
        for column, width in widths.items():
            header.resizeSection(int(column), width)


class AlertsTab(QWidget):
    """One status: its table, or a sentence saying why it is empty."""

    def __init__(self, status: str, model: AlertsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = status
        self.proxy = AlertsStatusProxy(status, self)
        self.proxy.setSourceModel(model)
        self.table = AlertsTable(status)
        self.table.setModel(self.proxy)
        self.table.size_columns()
        # Open alerts were neither acknowledged nor resolved yet.
        self.table.setColumnHidden(int(Column.CHANGED), status == OPEN)
        self.table.sortByColumn(int(Column.LAST_SEEN), Qt.SortOrder.DescendingOrder)
        headline, body = EMPTY_TEXT[status]
        self.empty = QLabel(f"<b>{html.escape(headline)}</b><br><br>{html.escape(body)}")
        self.empty.setObjectName(f"alertsEmpty-{status}")
        self.empty.setTextFormat(Qt.TextFormat.RichText)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setMargin(40)
        self.loading = QLabel("Loading alerts…")
        self.loading.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.loading)
        self.pages.addWidget(self.table)
        self.pages.addWidget(self.empty)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages)
        for signal in (
            self.proxy.rowsInserted,
            self.proxy.rowsRemoved,
            self.proxy.modelReset,
            self.proxy.layoutChanged,
        ):
            signal.connect(self.update_state)
        self._model = model

    def update_state(self, *_args: object) -> None:
        if not self._model.loaded():
            self.pages.setCurrentWidget(self.loading)
        elif self.proxy.rowCount() == 0:
            self.pages.setCurrentWidget(self.empty)
        else:
            self.pages.setCurrentWidget(self.table)

    def showing_empty(self) -> bool:
        return self.pages.currentWidget() is self.empty

    def selected_alerts(self) -> list[AlertView]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        alerts = (self.proxy.alert_at(r) for r in rows)
        return [a for a in alerts if a is not None]

    def select_alert(self, alert_id: int) -> bool:
        for row in range(self.proxy.rowCount()):
            if self.proxy.alert_id(row) == alert_id:
                index = self.proxy.index(row, 0)
                self.table.selectionModel().setCurrentIndex(
                    index,
                    QItemSelectionModel.SelectionFlag.ClearAndSelect
                    | QItemSelectionModel.SelectionFlag.Rows,
                )
                self.table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)
                return True
        return False


class AlertsView(QWidget):
    """Implements the Alerts page for ui_qt.main_window.MainWindow."""

    loaded = Signal()  # after every apply of fetched alerts

    def __init__(self, ctx: UiContext, navigator: Navigator, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("alertsView")
        self.ctx = ctx
        self.navigator = navigator
        self._dirty: set[int] = set()
        self._want_full = True
        self._pending_select: int | None = None
        self.acting = False

        self.model = AlertsModel(self)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("alertsTabs")
        self.tab: dict[str, AlertsTab] = {}
        for status in STATUSES:
            tab = AlertsTab(status, self.model)
            self.tab[status] = tab
            self.tabs.addTab(tab, TAB_TITLES[status])
            tab.table.doubleClicked.connect(self._open_index)
            tab.table.customContextMenuRequested.connect(self._context_menu)
            tab.table.selectionModel().selectionChanged.connect(self._update_buttons)
            for signal in (tab.proxy.rowsInserted, tab.proxy.rowsRemoved, tab.proxy.modelReset):
                signal.connect(self._update_titles)
        self.tabs.currentChanged.connect(self._update_buttons)

        self.summary = QLabel()
        self.summary.setObjectName("alertsSummary")
        self.ack_button = QPushButton("Acknowledge")
        self.ack_button.setObjectName("acknowledgeAlerts")
        self.ack_button.setToolTip(
            "Say you are on it: the alert stays unresolved (and on the Acknowledged tab) "
            "and notification channels hear that it was acknowledged"
        )
        self.ack_button.clicked.connect(self.acknowledge_selected)
        self.resolve_button = QPushButton("Resolve")
        self.resolve_button.setObjectName("resolveAlerts")
        self.resolve_button.setToolTip(
            "Close the alert: the problem is gone. If the condition is still there, "
            "it raises a new alert"
        )
        self.resolve_button.clicked.connect(self.resolve_selected)
        self.open_host_button = QPushButton("Open host")
        self.open_host_button.setObjectName("openAlertHost")
        self.open_host_button.setToolTip("Open the host of the selected alert (double-click a row)")
        self.open_host_button.clicked.connect(self._open_selected_host)
        self.error = error_label()
        self.error.setObjectName("alertsError")
        bar = QHBoxLayout()
        bar.addWidget(self.summary)
        bar.addStretch(1)
        bar.addWidget(self.open_host_button)
        bar.addWidget(self.ack_button)
        bar.addWidget(self.resolve_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(8)
        layout.addLayout(bar)
        layout.addWidget(self.error)
        layout.addWidget(self.tabs, 1)

        self.loader: SingleFlight[Fetched] = SingleFlight(
            self, ctx.runner, "loading alerts", self._fetch, self._fetched, self._fetch_failed
        )
        ctx.bridge.alerts_changed.connect(self._on_alerts_changed)
        # Alerts of a deleted host go with it (the store cascades the delete).
        ctx.bridge.hosts_removed.connect(self._on_hosts_removed)
        self._update_titles()
        self._update_buttons()
        for tab in self.tab.values():
            tab.update_state()
        self.reload()

    # -- loading ------------------------------------------------------------------

    def reload(self) -> None:
        """Read every listed alert again (F5); applied as a diff, never a reset."""
        self._want_full = True
        self.loader.request()

    def _on_alerts_changed(self, changes: dict[int, str]) -> None:
        self._dirty.update(changes)
        self.loader.request()

    def _on_hosts_removed(self, host_ids: set[int]) -> None:
        if self.loader.busy:
            # A read in flight may have seen them before the delete: read all again after it.
            self.reload()
            return
        # Dropped in place: no alert event announces them, and nothing needs reading.
        gone = [a.id for a in self.model.alerts() if a.host_id in host_ids]
        if gone:
            self.model.remove_ids(gone)
            self._applied()

    async def _fetch(self) -> Fetched:
        full = self._want_full or not self.model.loaded() or len(self._dirty) > PARTIAL_MAX
        dirty, self._dirty = self._dirty, set()
        self._want_full = False
        alerts = self.ctx.alerts
        if full:
            views: list[AlertView] = []
            for status in UNRESOLVED:
                views += await alerts.list_alerts(status=status, limit=UNRESOLVED_LIMIT)
            views += await alerts.list_alerts(status=RESOLVED, limit=RESOLVED_LIMIT)
            return views, None
        found = []
        for alert_id in sorted(dirty):
            # Gone (its host was deleted): apply() drops the row.
            with contextlib.suppress(NotFound):
                found.append(await alerts.get_alert(alert_id))
        return found, frozenset(dirty)

    def _fetched(self, result: Fetched) -> None:
        views, only = result
        self.error.hide()
        self.model.apply(views, only)
        self._applied()
        if self._pending_select is not None:
            alert_id, self._pending_select = self._pending_select, None
            if not self._select_now(alert_id) and (only is None or alert_id not in only):
                # Not among what was read (e.g. an old resolved one): read it alone;
                # if that does not find it either, it no longer exists.
                self._pending_select = alert_id
                self._dirty.add(alert_id)
                self.loader.request()
        self.loaded.emit()

    def _applied(self) -> None:
        """The model took fetched or acted-on alerts: tabs, titles and buttons follow."""
        for tab in self.tab.values():
            tab.update_state()
        self._update_titles()
        self._update_buttons()

    def _fetch_failed(self, exc: Exception) -> None:
        self._want_full = True  # what was asked for is unknown now: read it all next time
        self.error.setText(f"Could not load the alerts: {error_text(exc)}. Press F5 to retry.")
        self.error.show()

    # -- selection ------------------------------------------------------------------

    def current_tab(self) -> AlertsTab:
        widget = self.tabs.currentWidget()
        assert isinstance(widget, AlertsTab)
        return widget

    def selected_alerts(self) -> list[AlertView]:
        return self.current_tab().selected_alerts()

    def select_alert(self, alert_id: int) -> None:
        """Show the alert's tab with its row selected (the tray opens alerts this way)."""
        if self._select_now(alert_id):
            return
        self._pending_select = alert_id
        self._dirty.add(alert_id)
        self.loader.request()

    def _select_now(self, alert_id: int) -> bool:
        alert = self.model.alert(alert_id)
        if alert is None:
            return False
        tab = self.tab[alert.status]
        self.tabs.setCurrentWidget(tab)
        tab.update_state()
        return tab.select_alert(alert_id)

    def _update_titles(self, *_args: object) -> None:
        for status, tab in self.tab.items():
            n = tab.proxy.rowCount()
            title = TAB_TITLES[status]
            if status != RESOLVED and self.model.loaded():
                title = f"{title} ({n})"
            self.tabs.setTabText(self.tabs.indexOf(tab), title)
        unresolved = sum(self.model.count(s) for s in UNRESOLVED)
        if not self.model.loaded():
            self.summary.setText("")
        elif unresolved == 0:
            self.summary.setText("No unresolved alerts")
        else:
            self.summary.setText(
                f"{unresolved} unresolved alert{'s' if unresolved != 1 else ''} — "
                "select rows to acknowledge or resolve them (Ctrl+A selects all)"
            )

    def _update_buttons(self, *_args: object) -> None:
        selected = self.selected_alerts() if self.model.loaded() else []
        can_ack = [a for a in selected if a.status == OPEN]
        can_resolve = [a for a in selected if a.status in UNRESOLVED]
        self.ack_button.setEnabled(bool(can_ack) and not self.acting)
        self.resolve_button.setEnabled(bool(can_resolve) and not self.acting)
        self.open_host_button.setEnabled(
            len({a.host_id for a in selected}) == 1 and selected[0].host_id is not None
        )
        self.ack_button.setText(
            f"Acknowledge ({len(can_ack)})" if len(can_ack) > 1 else "Acknowledge"
        )
        self.resolve_button.setText(
            f"Resolve ({len(can_resolve)})" if len(can_resolve) > 1 else "Resolve"
        )

    # -- actions -----------------------------------------------------------------------

    def acknowledge_selected(self) -> None:
        ids = [a.id for a in self.selected_alerts() if a.status == OPEN]
        if ids and not self.acting:
            self._act(ids, "acknowledging alerts", self.ctx.alerts.acknowledge)

    def resolve_selected(self) -> None:
        ids = [a.id for a in self.selected_alerts() if a.status in UNRESOLVED]
        if ids and not self.acting:
            self._act(ids, "resolving alerts", self.ctx.alerts.resolve)

    def _act(
        self,
        ids: list[int],
        what: str,
        call: Callable[[list[int], Actor], Coroutine[Any, Any, list[AlertView]]],
    ) -> None:
        self.acting = True
        self._update_buttons()
        self.error.hide()

        def done(views: list[AlertView]) -> None:
            self.acting = False
            # At once, not only when the bridge's echo arrives; the row moves tabs.
            self.model.apply(views, only=frozenset(ids) & {v.id for v in views})
            self._applied()

        def failed(exc: Exception) -> None:
            self.acting = False
            self._update_buttons()
            # Another change may have raced this one (resolved meanwhile): re-read.
            self._dirty.update(ids)
            self.loader.request()
            show_error(self, f"Could not finish {what}", exc)

        self.ctx.runner.run(
            call(ids, OPERATOR),
            what=what,
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def _open_index(self, index: QModelIndex) -> None:
        tab = self.current_tab()
        alert = tab.proxy.alert_at(index.row())
        if alert is not None and alert.host_id is not None:
            self.navigator.open_host(alert.host_id)

    def _open_selected_host(self) -> None:
        selected = self.selected_alerts()
        if selected and selected[0].host_id is not None:
            self.navigator.open_host(selected[0].host_id)

    def _context_menu(self, pos: QPoint) -> None:
        tab = self.current_tab()
        if not tab.table.indexAt(pos).isValid():
            return
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        for button in (self.ack_button, self.resolve_button, self.open_host_button):
            action = menu.addAction(button.text())
            action.setEnabled(button.isEnabled())
            action.triggered.connect(button.click)
        menu.popup(tab.table.viewport().mapToGlobal(pos))

    def ids_in(self, status: str) -> Collection[int]:
        """The alert ids the tab of this status lists (tests, tray)."""
        proxy = self.tab[status].proxy
        return [i for i in (proxy.alert_id(r) for r in range(proxy.rowCount())) if i is not None]
