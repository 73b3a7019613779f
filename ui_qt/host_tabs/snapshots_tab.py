"""Snapshots tab: what the agent last reported from the repository."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
)

from server_core.views import SnapshotView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.host_tabs.common import HostTab, SingleFlight, error_label, set_error, snapshot_timestamp
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
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.error)
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

    def reload(self) -> None:
        self.loader.request()

    def tick(self) -> None:
        self.model.tick()
        self._update_summary()

    def host_gone(self) -> None:
        self.loader.stop()

    def _on_snapshots_changed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids:
            self.loader.request()

    def _loaded(self, rows: list[SnapshotView]) -> None:
        set_error(self.error, None)
        self.model.set_rows(rows)
        self.stack.setCurrentWidget(self.table if rows else self.empty)
        self.filter.setEnabled(bool(rows))
        self._update_summary()

    def _update_summary(self) -> None:
        rows = self.model.rows
        if not rows:
            self.summary.setText("")
            return
        latest = max((t for t in (snapshot_timestamp(r.time) for r in rows) if t), default=None)
        count = f"{len(rows)} snapshot{'s' if len(rows) != 1 else ''}"
        self.summary.setText(f"{count} · latest {relative_time(latest)}" if latest else count)
