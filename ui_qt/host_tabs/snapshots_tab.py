"""Snapshots tab: what the agent last reported from the repository."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QAction, QFont, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import SnapshotView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.host_tabs.common import (
    HostTab,
    SingleFlight,
    alive,
    error_label,
    error_text,
    guarded,
    set_error,
    snapshot_timestamp,
)
from ui_qt.navigator import Navigator

Index = QModelIndex | QPersistentModelIndex


def snapshot_time_text(ts: float | None, raw: str) -> str:
    """'2024-05-01 10:00 (3 h ago)' in local time; the raw text if unparseable."""
    if ts is None:
        return raw
    absolute = absolute_time(ts)
    relative = relative_time(ts)
    return absolute if relative == absolute else f"{absolute}  ({relative})"


class SnapshotModel(QAbstractTableModel):
    COLUMNS = ("Time", "ID", "Paths", "Tags", "Hostname")
    TIME, ID, PATHS, TAGS, HOSTNAME = range(5)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[SnapshotView] = []
        self._times: list[float | None] = []
        self._mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self._mono.setStyleHint(QFont.StyleHint.TypeWriter)

    def set_rows(self, rows: list[SnapshotView]) -> None:
        if [r.id for r in rows] == [r.id for r in self.rows]:
            self.rows = rows  # same snapshots: nothing visible changed
            return
        self.beginResetModel()
        self.rows = rows
        self._times = [snapshot_timestamp(r.time) for r in rows]
        self.endResetModel()

    def tick(self) -> None:
        if self.rows:
            top = self.index(0, self.TIME)
            bottom = self.index(len(self.rows) - 1, self.TIME)
            self.dataChanged.emit(top, bottom, [Qt.ItemDataRole.DisplayRole])

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        snap = self.rows[index.row()]
        ts = self._times[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == self.TIME:
                return snapshot_time_text(ts, snap.time)
            if col == self.ID:
                return snap.short_id
            if col == self.PATHS:
                return ", ".join(snap.paths)
            if col == self.TAGS:
                return ", ".join(snap.tags)
            if col == self.HOSTNAME:
                return snap.hostname
        elif role == Qt.ItemDataRole.UserRole:  # sort key
            if col == self.TIME:
                return ts if ts is not None else 0.0
            return self.data(index, Qt.ItemDataRole.DisplayRole)
        elif role == Qt.ItemDataRole.ToolTipRole:
            if col == self.TIME:
                return f"{snap.time} (as reported by restic)"
            if col == self.ID:
                return snap.id
            if col == self.PATHS:
                return "\n".join(snap.paths)
        elif role == Qt.ItemDataRole.FontRole and col == self.ID:
            return self._mono
        return None


class SnapshotsTab(HostTab):
    restore_started = Signal(str)  # job id of a restore started from this host's browser

    def __init__(self, ctx: UiContext, navigator: Navigator, host_id: int) -> None:
        super().__init__(ctx, navigator, host_id)
        self.model = SnapshotModel()
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

        self.table = QTableView()
        self.table.setObjectName("snapshotsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(SnapshotModel.TIME, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(SnapshotModel.TIME, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(SnapshotModel.ID, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(SnapshotModel.PATHS, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(SnapshotModel.TAGS, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(SnapshotModel.HOSTNAME, QHeaderView.ResizeMode.ResizeToContents)

        self.summary = QLabel()
        self.summary.setObjectName("snapshotsSummary")
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by id, path or tag")
        self.filter.setClearButtonEnabled(True)
        self.filter.setMinimumWidth(240)
        self.filter.setMaximumWidth(320)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.error = error_label()

        # Restore from one snapshot; diff two of them.
        self.restore_browser: QWidget | None = None
        self.restore_button = QPushButton("Restore…")
        self.restore_button.setObjectName("restoreSnapshot")
        self.restore_button.clicked.connect(self.restore_selected)
        self.diff_button = QPushButton("Diff")
        self.diff_button.setObjectName("diffSnapshots")
        self.diff_button.clicked.connect(self.diff_selected)
        self.action_error = error_label()
        self.action_error.setObjectName("snapshotActionError")
        self.table.doubleClicked.connect(lambda _index: self.restore_selected())
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.context_menu: QMenu | None = None

        self.empty = QLabel(
            "No snapshots yet.\n\nThey appear here after the first backup, and whenever the "
            "agent reports the repository's snapshot list."
        )
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.filter)
        top.addWidget(self.restore_button)
        top.addWidget(self.diff_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.error)
        layout.addWidget(self.action_error)
        layout.addWidget(self.stack, 1)

        self.loader: SingleFlight[list[SnapshotView]] = SingleFlight(
            self,
            ctx.runner,
            "loading snapshots",
            lambda: ctx.hosts.list_snapshots(host_id),
            self._loaded,
            lambda exc: self.fetch_failed("the snapshots", exc, self.error),
        )
        ctx.bridge.snapshots_changed.connect(self._on_snapshots_changed)
        self._selection_changed()

    def reload(self) -> None:
        self.loader.request()

    def tick(self) -> None:
        self.model.tick()
        self._update_summary()

    def host_gone(self) -> None:
        self.loader.stop()
        if self.restore_browser is not None and alive(self.restore_browser):
            self.restore_browser.close()

    def _on_snapshots_changed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids:
            self.loader.request()

    def _loaded(self, rows: list[SnapshotView]) -> None:
        set_error(self.error, None)
        self.model.set_rows(rows)
        self.stack.setCurrentWidget(self.table if rows else self.empty)
        self.filter.setEnabled(bool(rows))
        self._update_summary()
        self._selection_changed()

    # -- restore and diff ----------------------------------------------------------

    def selected_snapshots(self) -> list[SnapshotView]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return [self.model.rows[r] for r in sorted(rows) if 0 <= r < len(self.model.rows)]

    def select_snapshots(self, snapshot_ids: list[str]) -> None:
        """Select the rows of these snapshots (for tests and scripts)."""
        selection = self.table.selectionModel()
        selection.clearSelection()
        for row, snap in enumerate(self.model.rows):
            if snap.id in snapshot_ids or snap.short_id in snapshot_ids:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                selection.select(
                    index,
                    selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
                )

    def _selection_changed(self, *_args: object) -> None:
        count = len(self.selected_snapshots())
        self.restore_button.setEnabled(count <= 1 and bool(self.model.rows))
        self.restore_button.setToolTip(
            "Browse the selected snapshot and restore files from it (double-click a row too)"
            if count <= 1
            else "Select one snapshot to restore from"
        )
        self.diff_button.setEnabled(count == 2)
        self.diff_button.setToolTip(
            "Compare the two selected snapshots: what was added, removed and modified"
            if count == 2
            else "Select exactly two snapshots (Ctrl+click) to compare them"
        )

    def open_restore(self, snapshot_id: str | None = None) -> QWidget:
        """The restore browser for this host, on ``snapshot_id`` (default: the newest)."""
        from ui_qt.restore.browser import RestoreBrowser  # the browser imports this module

        browser = self.restore_browser
        if browser is not None and alive(browser):
            if snapshot_id is not None and isinstance(browser, RestoreBrowser):
                browser.browse.select_snapshot(snapshot_id)
        else:
            browser = RestoreBrowser(self.ctx, self.navigator, self.host_id, snapshot_id, self)
            browser.started.connect(self.restore_started)
            self.restore_browser = browser
        browser.show()
        browser.raise_()
        browser.activateWindow()
        return browser

    def restore_selected(self) -> None:
        if not self.restore_button.isEnabled():
            return
        selected = self.selected_snapshots()
        self.open_restore(selected[0].id if selected else None)

    def diff_selected(self) -> None:
        selected = self.selected_snapshots()
        if len(selected) != 2 or not self.diff_button.isEnabled():
            return
        # Older first, so "added" means added since the older snapshot.
        older, newer = sorted(selected, key=lambda s: snapshot_timestamp(s.time) or 0.0)
        set_error(self.action_error, None)
        self.diff_button.setEnabled(False)

        def done(job_id: str) -> None:
            self._selection_changed()
            self.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            self._selection_changed()
            set_error(self.action_error, f"Could not start the diff: {error_text(exc)}")

        self.ctx.runner.run(
            self.ctx.restore.start_diff(self.host_id, older.id, newer.id, OPERATOR),
            what="starting a diff",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        restore = QAction("Restore from this snapshot…", menu)
        restore.setEnabled(self.restore_button.isEnabled())
        restore.triggered.connect(self.restore_selected)
        diff = QAction("Diff the two selected snapshots", menu)
        diff.setEnabled(self.diff_button.isEnabled())
        diff.triggered.connect(self.diff_selected)
        menu.addAction(restore)
        menu.addAction(diff)
        self.context_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def _update_summary(self) -> None:
        rows = self.model.rows
        if not rows:
            self.summary.setText("")
            return
        latest = max((t for t in (snapshot_timestamp(r.time) for r in rows) if t), default=None)
        count = f"{len(rows)} snapshot{'s' if len(rows) != 1 else ''}"
        self.summary.setText(f"{count} · latest {relative_time(latest)}" if latest else count)
