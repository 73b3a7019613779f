"""Matches of a snapshot search, each checkable like a tree item."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from server_core.views import FindMatchView
from ui_qt.formatting import absolute_time, human_bytes

PATH_ROLE = Qt.ItemDataRole.UserRole


class SearchResults(QWidget):
    check_requested = Signal(str, bool)  # path, ticked
    reveal_requested = Signal(str)  # show this path in the tree
    back_requested = Signal()

    COLUMNS = ("Path", "Type", "Size", "Modified")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.matches: list[FindMatchView] = []
        self._syncing = False
        self.status = QLabel()
        self.status.setObjectName("searchStatus")
        self.status.setWordWrap(True)
        self.back = QPushButton("← Back to the tree")
        self.back.setObjectName("backToTree")
        self.back.clicked.connect(self.back_requested)
        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.back)

        self.model = QStandardItemModel(0, len(self.COLUMNS), self)
        self.model.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.model.itemChanged.connect(self._item_changed)
        self.view = QTreeView()
        self.view.setObjectName("searchResults")
        self.view.setModel(self.model)
        self.view.setRootIsDecorated(False)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setToolTip("Tick a match to restore it; double-click to show it in the tree")
        self.view.doubleClicked.connect(self._double_clicked)
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_matches(self, matches: list[FindMatchView]) -> None:
        self.matches = matches
        self._syncing = True
        try:
            self.model.removeRows(0, self.model.rowCount())
            for match in matches:
                path = QStandardItem(match.path + ("/" if match.type == "dir" else ""))
                path.setData(match.path, PATH_ROLE)
                path.setCheckable(True)
                path.setToolTip(match.path)
                size = QStandardItem(human_bytes(match.size) if match.type != "symlink" else "")
                size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                when = absolute_time(match.mtime) if match.mtime is not None else ""
                self.model.appendRow([path, QStandardItem(match.type), size, QStandardItem(when)])
        finally:
            self._syncing = False

    def sync(self, state_of: Callable[[str], Qt.CheckState]) -> None:
        """Show each match ticked as the tree has it (a ticked folder ticks what is in it)."""
        self._syncing = True
        try:
            for row in range(self.model.rowCount()):
                item = self.model.item(row, 0)
                state = state_of(str(item.data(PATH_ROLE)))
                if item.checkState() != state:
                    item.setCheckState(state)
        finally:
            self._syncing = False

    def item_for(self, path: str) -> QStandardItem | None:
        for row in range(self.model.rowCount()):
            item = self.model.item(row, 0)
            if item.data(PATH_ROLE) == path:
                return item
        return None

    def _item_changed(self, item: QStandardItem) -> None:
        if self._syncing or item.column() != 0:
            return
        ticked = item.checkState() != Qt.CheckState.Unchecked
        self.check_requested.emit(str(item.data(PATH_ROLE)), ticked)

    def _double_clicked(self, index: QModelIndex) -> None:
        item = self.model.item(index.row(), 0)
        if item is not None:
            self.reveal_requested.emit(str(item.data(PATH_ROLE)))
