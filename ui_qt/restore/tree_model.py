"""A lazy, checkable model of one snapshot's tree.

Directories are listed only when opened (``canFetchMore``/``fetchMore``),
one page at a time, from the agent's index through ``fetch``. Ticking a
directory selects everything below it without listing it: a node's
``rest`` is the state its not-yet-listed children take, so a directory
that is checked and then partly unticked still knows that the pages it
never listed are wanted. File and byte totals come from the directories'
aggregates, so they are exact without listing anything either.

While the agent is still building the snapshot's index, listings answer
``building``; the model polls (``poll_s``) and says so through
``index_building`` so the view can show progress instead of freezing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtWidgets import QApplication, QStyle

from server_core.views import TreeEntryView, TreeListing
from ui_qt.formatting import absolute_time, human_bytes
from ui_qt.host_tabs.common import alive, error_text
from ui_qt.tasks import AsyncRunner

Index = QModelIndex | QPersistentModelIndex
Fetch = Callable[[str, int, int], Coroutine[Any, Any, TreeListing]]

CHECKED = Qt.CheckState.Checked
UNCHECKED = Qt.CheckState.Unchecked
PARTIAL = Qt.CheckState.PartiallyChecked

PAGE = 5000
POLL_S = 0.5


class IndexFailed(Exception):
    """The agent could not build the snapshot's index (its message says why)."""


def join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


def entry_files(entry: TreeEntryView | Node) -> int:
    """How many files an entry stands for: a directory's aggregate, else one."""
    return entry.files if entry.type == "dir" else 1


class Node:
    """One entry of the snapshot. ``children`` is None until listed; once
    listed it may hold only the first pages of ``total`` children."""

    __slots__ = (
        "check",
        "children",
        "error",
        "files",
        "loading",
        "mtime",
        "name",
        "parent",
        "path",
        "rest",
        "row",
        "size",
        "total",
        "type",
    )

    def __init__(
        self,
        name: str,
        path: str,
        type_: str,
        parent: Node | None,
        row: int = 0,
        size: int = 0,
        files: int = 0,
        mtime: float | None = None,
        check: Qt.CheckState = UNCHECKED,
    ) -> None:
        self.name = name
        self.path = path
        self.type = type_
        self.parent = parent
        self.row = row
        self.size = size
        self.files = files
        self.mtime = mtime
        self.check = check
        self.rest = check
        self.children: list[Node] | None = None
        self.total = 0
        self.loading = False
        self.error: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def incomplete(self) -> bool:
        """Some children are not listed yet (or none were asked for)."""
        return self.is_dir and (self.children is None or len(self.children) < self.total)

    def child(self, name: str) -> Node | None:
        for c in self.children or ():
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class Totals:
    paths: int = 0
    files: int = 0
    bytes: int = 0


class SnapshotTreeModel(QAbstractItemModel):
    COLUMNS = ("Name", "Size", "Files", "Modified")
    NAME, SIZE, FILES, MODIFIED = range(4)

    index_building = Signal(int, float)  # nodes indexed so far, seconds spent
    index_ready = Signal()
    root_loaded = Signal()
    listing_failed = Signal(str, object)  # path, exception
    selection_changed = Signal()

    def __init__(
        self,
        runner: AsyncRunner,
        fetch: Fetch,
        *,
        page: int = PAGE,
        poll_s: float = POLL_S,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._runner = runner
        self._fetch = fetch
        self.page = page
        self.poll_s = poll_s
        self.root = Node("", "/", "dir", None)
        self.building = False
        self.stopped = False
        self.listings = 0  # answered listings, building ones included
        self._locks: dict[str, asyncio.Lock] = {}
        style = QApplication.style()
        self._icons = {
            "dir": style.standardIcon(QStyle.StandardPixmap.SP_DirIcon),
            "file": style.standardIcon(QStyle.StandardPixmap.SP_FileIcon),
            "symlink": style.standardIcon(QStyle.StandardPixmap.SP_FileLinkIcon),
        }

    def stop(self) -> None:
        """No more fetches; answers still in flight are dropped."""
        self.stopped = True

    # -- the Qt model ---------------------------------------------------------

    def node(self, index: Index) -> Node:
        if index.isValid():
            node = index.internalPointer()
            assert isinstance(node, Node)
            return node
        return self.root

    def index_of(self, node: Node, column: int = 0) -> QModelIndex:
        if node is self.root or node.parent is None:
            return QModelIndex()
        return self.createIndex(node.row, column, node)

    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        node = self.node(parent)
        children = node.children or []
        if 0 <= row < len(children) and 0 <= column < len(self.COLUMNS):
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        if not index.isValid():
            return QModelIndex()
        node = self.node(index).parent
        if node is None or node is self.root:
            return QModelIndex()
        return self.createIndex(node.row, 0, node)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.node(parent).children or [])

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return len(self.COLUMNS)

    def hasChildren(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        node = self.node(parent)
        if not node.is_dir:
            return False
        if node.children is None:
            return True  # unknown until listed (an empty-looking one may hold empty dirs)
        return bool(node.children) or node.total > 0

    def canFetchMore(self, parent: Index) -> bool:
        # Only the first page: Qt's views ask again after every insert into an
        # expanded folder, which would list a huge folder to its end. Later
        # pages are asked for as they scroll into view (more_below).
        node = self.node(parent)
        return node.children is None and node.is_dir and node.error is None and not self.stopped

    def more_below(self, node: Node) -> bool:
        """Listed in part: another page can be fetched (with fetchMore)."""
        listed = node.children is not None and node.incomplete
        return listed and node.error is None and not node.loading

    def fetchMore(self, parent: Index) -> None:
        node = self.node(parent)
        if node.loading or node.error is not None or not node.incomplete or self.stopped:
            return
        node.loading = True
        self._changed(node)
        self._runner.run(
            self._load_next(node),
            what=f"listing {node.path}",
            on_error=lambda exc: self._failed(node, exc),
        )

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == self.NAME:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (self.SIZE, self.FILES):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node = self.node(index)
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == self.NAME:
                return node.name + ("/" if node.is_dir else "")
            if col == self.SIZE:
                if node.error is not None:
                    return "could not list"
                if node.loading:
                    return "listing…"
                return human_bytes(node.size) if node.type in ("file", "dir") else ""
            if col == self.FILES:
                return f"{node.files:,}" if node.is_dir else ""
            if col == self.MODIFIED:
                return absolute_time(node.mtime) if node.mtime is not None else ""
        elif role == Qt.ItemDataRole.CheckStateRole and col == self.NAME:
            return node.check
        elif role == Qt.ItemDataRole.DecorationRole and col == self.NAME:
            return self._icons.get(node.type, self._icons["file"])
        elif role == Qt.ItemDataRole.ToolTipRole:
            if node.error is not None:
                return f"Could not list {node.path}: {node.error}\nCollapse and open it to retry."
            if node.type == "symlink":
                return f"{node.path} (symbolic link)"
            if node.is_dir:
                return f"{node.path}\n{node.files:,} files, {human_bytes(node.size)} below it"
            return node.path
        elif role == Qt.ItemDataRole.TextAlignmentRole and col in (self.SIZE, self.FILES):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        elif role == Qt.ItemDataRole.UserRole:
            return node.path
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.CheckStateRole or not index.isValid():
            return False
        state = Qt.CheckState(value) if not isinstance(value, Qt.CheckState) else value
        # Ticking a partly selected directory selects all of it.
        self.set_checked(self.node(index), UNCHECKED if state == UNCHECKED else CHECKED)
        return True

    # -- checking ---------------------------------------------------------------

    def set_checked(self, node: Node, state: Qt.CheckState) -> None:
        """Tick or untick ``node`` and everything below it; recompute its ancestors."""
        self._set_down(node, state)
        self._changed(node)
        parent = node.parent
        while parent is not None and parent is not self.root:
            new = self._aggregate(parent)
            if new == parent.check:
                break
            parent.check = new
            self._changed(parent)
            parent = parent.parent
        self.selection_changed.emit()

    def _set_down(self, node: Node, state: Qt.CheckState) -> None:
        node.check = state
        node.rest = state
        if node.children:
            for child in node.children:
                self._set_down(child, state)
            first, last = node.children[0], node.children[-1]
            self.dataChanged.emit(
                self.index_of(first, self.NAME),
                self.index_of(last, self.NAME),
                [Qt.ItemDataRole.CheckStateRole],
            )

    @staticmethod
    def _aggregate(node: Node) -> Qt.CheckState:
        states = {c.check for c in node.children or ()}
        if node.incomplete:
            states.add(node.rest)
        if states == {CHECKED}:
            return CHECKED
        if not states or states == {UNCHECKED}:
            return UNCHECKED
        return PARTIAL

    def effective_state(self, path: str) -> Qt.CheckState:
        """Whether ``path`` is selected, listed or not (for search matches)."""
        node = self.root
        for part in [p for p in path.split("/") if p]:
            child = node.child(part)
            if child is None:
                return node.rest if node is not self.root else UNCHECKED
            if child.check != PARTIAL:
                return child.check
            node = child
        return node.check if node is not self.root else UNCHECKED

    def selected_paths(self) -> tuple[list[str], list[Node]]:
        """Paths to restore (a fully ticked directory stands for all below
        it), and the directories whose unlisted pages are wanted but can only
        be named once listed (see ``complete``)."""
        paths: list[str] = []
        unresolved: list[Node] = []

        def walk(node: Node) -> None:
            for child in node.children or ():
                if child.check == CHECKED:
                    paths.append(child.path)
                elif child.check == PARTIAL:
                    walk(child)
            if node is not self.root and node.incomplete and node.rest == CHECKED:
                unresolved.append(node)

        walk(self.root)
        return paths, unresolved

    def totals(self) -> Totals:
        """Files and bytes of what is ticked, from the directories' aggregates."""
        paths = 0
        files = 0
        size = 0

        def walk(node: Node) -> None:
            nonlocal paths, files, size
            for child in node.children or ():
                if child.check == CHECKED:
                    paths += 1
                    files += entry_files(child)
                    size += child.size
                elif child.check == PARTIAL:
                    walk(child)
            if node is not self.root and node.incomplete and node.rest == CHECKED:
                listed = node.children or []
                paths += max(1, node.total - len(listed))
                files += max(0, node.files - sum(entry_files(c) for c in listed))
                size += max(0, node.size - sum(c.size for c in listed))

        walk(self.root)
        return Totals(paths, files, size)

    def iter_loaded(self) -> Iterator[Node]:
        stack = list(reversed(self.root.children or []))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children or []))

    # -- listing ------------------------------------------------------------------

    def load_root(self) -> None:
        self.root.error = None
        self.fetchMore(QModelIndex())

    def retry(self, index: Index) -> None:
        """List a directory again after an error."""
        node = self.node(index)
        if node.error is not None:
            node.error = None
            self._changed(node)
        self.fetchMore(index)

    async def _load_next(self, node: Node) -> None:
        async with self._lock(node):
            try:
                if node.incomplete:
                    await self._load_page(node)
            finally:
                node.loading = False
                if alive(self):
                    self._changed(node)
        if node is self.root and alive(self) and not self.stopped:
            self.root_loaded.emit()

    async def complete(self, node: Node) -> None:
        """List every page of ``node`` (to name the paths a selection means)."""
        async with self._lock(node):
            while node.incomplete and not self.stopped:
                await self._load_page(node)

    async def reveal(self, path: str) -> Node | None:
        """The node at ``path``, listing its ancestors as needed; None if the
        snapshot has no such entry."""
        node = self.root
        for part in [p for p in path.split("/") if p]:
            async with self._lock(node):
                child = node.child(part)
                while child is None and node.incomplete and not self.stopped:
                    await self._load_page(node)
                    child = node.child(part)
            if child is None:
                return None
            node = child
        return node

    def _lock(self, node: Node) -> asyncio.Lock:
        return self._locks.setdefault(node.path, asyncio.Lock())

    async def _load_page(self, node: Node) -> None:
        """One page of ``node``'s children, waiting while the index is built."""
        while True:
            offset = len(node.children or [])
            listing = await self._fetch(node.path, offset, self.page)
            if self.stopped or not alive(self):
                raise asyncio.CancelledError
            self.listings += 1
            if listing.state == "building":
                self.building = True
                self.index_building.emit(listing.nodes, listing.elapsed_s)
                await asyncio.sleep(self.poll_s)
                if self.stopped or not alive(self):
                    raise asyncio.CancelledError
                continue
            if listing.state == "failed":
                self.building = False
                raise IndexFailed(listing.error or "the agent could not read the snapshot's tree")
            if self.building:
                self.building = False
                self.index_ready.emit()
            self._append(node, listing)
            return

    def _append(self, node: Node, listing: TreeListing) -> None:
        children = node.children if node.children is not None else []
        known = {c.name for c in children}
        new = [e for e in listing.entries if e.name not in known]
        first = len(children)
        if new:
            self.beginInsertRows(self.index_of(node), first, first + len(new) - 1)
        node.children = children
        for n, entry in enumerate(new):
            children.append(
                Node(
                    entry.name,
                    join(node.path, entry.name),
                    entry.type,
                    node,
                    row=first + n,
                    size=entry.size,
                    files=entry.files,
                    mtime=entry.mtime,
                    check=node.rest,
                )
            )
        # Never wait for more pages than the agent actually sends.
        node.total = max(listing.total, len(children)) if new else len(children)
        if new:
            self.endInsertRows()
        elif node is not self.root:
            self._changed(node)

    def _failed(self, node: Node, exc: Exception) -> None:
        if not alive(self) or self.stopped:
            return
        node.loading = False
        node.error = error_text(exc)
        self._changed(node)
        self.listing_failed.emit(node.path, exc)

    def _changed(self, node: Node) -> None:
        if node is self.root or node.parent is None:
            return
        self.dataChanged.emit(self.index_of(node, 0), self.index_of(node, len(self.COLUMNS) - 1))
