"""Sources tab (minimal): the host's source groups and "Back up now" per group.

Editing groups, retention and hooks comes with the sources issue; this tab
only lists them and starts backups.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QPushButton,
    QStackedWidget,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import SourceGroupView
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import (
    HostTab,
    SingleFlight,
    error_label,
    guarded,
    set_error,
    show_error,
)
from ui_qt.navigator import Navigator

Index = QModelIndex | QPersistentModelIndex


def retention_text(retention: dict[str, object]) -> str:
    parts = [
        f"{name.removeprefix('keep_').replace('_', ' ')} {value}"
        for name, value in retention.items()
        if value not in (None, 0, "")
    ]
    return ", ".join(parts) if parts else "keep everything"


class PaddedDelegate(QStyledItemDelegate):
    """Some air around multi-line cells (a style sheet would restyle the buttons too)."""

    PAD_X, PAD_Y = 6, 5

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        size = super().sizeHint(option, index)
        return QSize(size.width() + 2 * self.PAD_X, size.height() + 2 * self.PAD_Y)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        inset = QStyleOptionViewItem(option)
        inset.rect = option.rect.adjusted(self.PAD_X, self.PAD_Y, -self.PAD_X, -self.PAD_Y)
        super().paint(painter, inset, index)


class SourcesTab(HostTab):
    COLUMNS = ("Group", "Includes", "Excludes", "Retention", "")
    NAME, INCLUDES, EXCLUDES, RETENTION, ACTION = range(5)

    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        on_groups: Callable[[dict[int, str]], None] | None = None,
    ) -> None:
        super().__init__(ctx, navigator, host_id)
        self._on_groups = on_groups
        self.groups: list[SourceGroupView] = []
        self.backup_buttons: dict[int, QPushButton] = {}

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("sourcesTable")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(True)
        self.table.setItemDelegate(PaddedDelegate(self.table))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(self.NAME, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.INCLUDES, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(self.EXCLUDES, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(self.RETENTION, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.ACTION, QHeaderView.ResizeMode.ResizeToContents)

        self.note = QLabel(
            "A backup of a group runs on the agent now, with that group's paths and "
            "excludes; the snapshot is tagged with the group name."
        )
        self.note.setWordWrap(True)
        self.note.setEnabled(False)
        self.error = error_label()
        self.empty = QLabel("This host has no source groups yet.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addWidget(self.error)
        layout.addWidget(self.stack, 1)

        self.loader: SingleFlight[list[SourceGroupView]] = SingleFlight(
            self,
            ctx.runner,
            "loading source groups",
            lambda: ctx.hosts.list_source_groups(host_id),
            self._loaded,
            lambda exc: self.fetch_failed("the source groups", exc, self.error),
        )

    def reload(self) -> None:
        self.loader.request()

    def host_gone(self) -> None:
        self.loader.stop()

    def _loaded(self, groups: list[SourceGroupView]) -> None:
        set_error(self.error, None)
        if groups == self.groups and self.backup_buttons:
            return  # unchanged: keep the rows (and the button under the mouse)
        self.groups = groups
        if self._on_groups is not None:
            self._on_groups({g.id: g.name for g in groups})
        busy = {gid for gid, b in self.backup_buttons.items() if not b.isEnabled()}
        self.backup_buttons = {}
        self.table.setRowCount(len(groups))
        top_left = Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft
        for row, group in enumerate(groups):
            texts = {
                self.NAME: group.name,
                self.INCLUDES: "\n".join(group.includes),
                self.EXCLUDES: "\n".join(group.excludes) or "—",
                self.RETENTION: retention_text(group.retention),
            }
            for col, text in texts.items():
                item = QTableWidgetItem(text)
                item.setTextAlignment(top_left)
                if col == self.NAME:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, col, item)
            self.table.setCellWidget(row, self.ACTION, self._button_cell(group, group.id in busy))
        self.table.resizeRowsToContents()
        self.stack.setCurrentWidget(self.table if groups else self.empty)

    def _button_cell(self, group: SourceGroupView, busy: bool) -> QWidget:
        button = QPushButton("Starting…" if busy else "Back up now")
        button.setObjectName(f"backupNow-{group.id}")
        button.setToolTip(f"Start a backup of {group.name!r} on the agent now")
        button.setEnabled(not busy)
        button.clicked.connect(lambda _checked=False, g=group: self.back_up_now(g))
        self.backup_buttons[group.id] = button
        cell = QWidget()
        layout = QVBoxLayout(cell)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.addWidget(button, 0, Qt.AlignmentFlag.AlignTop)
        return cell

    def back_up_now(self, group: SourceGroupView) -> None:
        button = self.backup_buttons.get(group.id)
        if button is not None:
            button.setEnabled(False)
            button.setText("Starting…")

        def finished() -> None:
            current = self.backup_buttons.get(group.id)
            if current is not None:
                current.setEnabled(True)
                current.setText("Back up now")

        def done(job_id: str) -> None:
            finished()
            self.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            finished()
            show_error(self, f"Could not back up {group.name}", exc)

        self.ctx.runner.run(
            self.ctx.jobs.dispatch(
                self.host_id, "backup", actor=OPERATOR, source_group_id=group.id
            ),
            what=f"starting a backup of {group.name}",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )
