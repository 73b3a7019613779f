"""First page of the restore browser: the snapshot picker and its lazy, checkable tree."""

from __future__ import annotations

import html
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QFont, QKeyEvent, QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from server_core.views import FindResults, SnapshotView, TreeListing
from ui_qt.context import UiContext
from ui_qt.formatting import human_bytes
from ui_qt.host_tabs.common import (
    RED,
    error_label,
    error_text,
    guarded,
    set_error,
    snapshot_timestamp,
)
from ui_qt.host_tabs.snapshots_tab import snapshot_time_text
from ui_qt.restore.advice import advice
from ui_qt.restore.search_results import SearchResults
from ui_qt.restore.tree_model import (
    CHECKED,
    PAGE,
    POLL_S,
    UNCHECKED,
    SnapshotTreeModel,
    Totals,
)

# What the service accepts in one restore (each path becomes an --include).
MAX_PATHS = 1000
SEARCH_LIMIT = 500
GLOB = set("*?[")


@dataclass(frozen=True)
class Selection:
    snapshot: SnapshotView
    paths: list[str]
    totals: Totals


def snapshot_label(snap: SnapshotView) -> str:
    """One line of the picker: when, short id, paths, tags."""
    when = snapshot_time_text(snapshot_timestamp(snap.time), snap.time)
    text = f"{when}   ·   {snap.short_id}   ·   {', '.join(snap.paths)}"
    return text + (f"   ·   tags: {', '.join(snap.tags)}" if snap.tags else "")


def totals_text(totals: Totals) -> str:
    if totals.paths == 0:
        return (
            "Nothing selected yet: tick the files and folders to restore "
            "(Space ticks the current row)."
        )
    items = f"{totals.paths:,} item{'s' if totals.paths != 1 else ''}"
    files = f"{totals.files:,} file{'s' if totals.files != 1 else ''}"
    return f"Selected: {items} · {files} · {human_bytes(totals.bytes)}"


def search_pattern(text: str) -> str:
    """A plain word finds names containing it; a glob is used as typed."""
    text = text.strip()
    return text if GLOB & set(text) else f"*{text}*"


class CheckTree(QTreeView):
    """A tree where Space ticks or unticks the current row, whatever column has focus."""

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Space, Qt.Key.Key_Select) and not event.modifiers():
            current = self.currentIndex()
            if current.isValid():
                name = current.siblingAtColumn(0)
                state = name.data(Qt.ItemDataRole.CheckStateRole)
                ticked = state is not None and Qt.CheckState(state) == CHECKED
                self.model().setData(
                    name, UNCHECKED if ticked else CHECKED, Qt.ItemDataRole.CheckStateRole
                )
                event.accept()
                return
        super().keyPressEvent(event)


class BrowsePage(QWidget):
    selection_changed = Signal()

    def __init__(
        self,
        ctx: UiContext,
        host_id: int,
        snapshot_id: str | None,
        *,
        page: int = PAGE,
        poll_s: float = POLL_S,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.host_id = host_id
        self.host_name = f"host {host_id}"
        self.wanted_snapshot = snapshot_id
        self.page = page
        self.poll_s = poll_s
        self.snapshots: list[SnapshotView] = []
        self.snapshot: SnapshotView | None = None
        self.model: SnapshotTreeModel | None = None
        self.last_error: Exception | None = None
        self.find_results: FindResults | None = None
        self.searches = 0
        self._search_generation = 0
        self._build()
        self.load_snapshots()
        ctx.bridge.snapshots_changed.connect(self._on_snapshots_changed)

    # -- layout -------------------------------------------------------------------

    def _build(self) -> None:
        self.picker = QComboBox()
        self.picker.setObjectName("snapshotPicker")
        self.picker.setMinimumContentsLength(40)
        self.picker.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.picker.currentIndexChanged.connect(self._picked)
        picker_row = QHBoxLayout()
        caption = QLabel("Snapshot")
        caption.setEnabled(False)
        picker_row.addWidget(caption)
        picker_row.addWidget(self.picker, 1)
        self.snapshot_details = QLabel()
        self.snapshot_details.setObjectName("snapshotDetails")
        self.snapshot_details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.snapshot_details.setEnabled(False)

        self.filter = QLineEdit()
        self.filter.setObjectName("restoreFilter")
        self.filter.setPlaceholderText(
            "Filter opened folders by name — press Enter to search the whole snapshot"
        )
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._filter_changed)
        self.filter.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search snapshot")
        self.search_button.setObjectName("searchSnapshot")
        self.search_button.setToolTip(
            "Find names in the whole snapshot (from the agent's index): a word matches names "
            "containing it; *, ? and [...] work as in a shell"
        )
        self.search_button.setEnabled(False)
        self.search_button.clicked.connect(self.search)
        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter, 1)
        filter_row.addWidget(self.search_button)

        # What fills the middle: opening / error / tree / search results / no snapshots.
        self.opening = QWidget()
        opening = QVBoxLayout(self.opening)
        opening.addStretch(1)
        self.opening_label = QLabel()
        self.opening_label.setObjectName("openingLabel")
        self.opening_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.opening_label.setWordWrap(True)
        self.opening_bar = QProgressBar()
        self.opening_bar.setRange(0, 0)
        self.opening_bar.setTextVisible(False)
        self.opening_bar.setMaximumWidth(360)
        opening.addWidget(self.opening_label)
        opening.addWidget(self.opening_bar, 0, Qt.AlignmentFlag.AlignHCenter)
        opening.addStretch(2)

        self.failure = QWidget()
        failure = QVBoxLayout(self.failure)
        failure.addStretch(1)
        self.failure_problem = QLabel()
        self.failure_problem.setObjectName("browseError")
        self.failure_problem.setWordWrap(True)
        self.failure_problem.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.failure_problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.failure_problem.setStyleSheet(f"color: {RED};")
        bold = QFont(self.failure_problem.font())
        bold.setBold(True)
        self.failure_problem.setFont(bold)
        self.failure_hint = QLabel()
        self.failure_hint.setObjectName("browseErrorHint")
        self.failure_hint.setWordWrap(True)
        self.failure_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.retry_button = QPushButton("Try again")
        self.retry_button.setObjectName("retryBrowse")
        self.retry_button.clicked.connect(self.retry)
        failure.addWidget(self.failure_problem)
        failure.addWidget(self.failure_hint)
        failure.addWidget(self.retry_button, 0, Qt.AlignmentFlag.AlignHCenter)
        failure.addStretch(2)

        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(SnapshotTreeModel.NAME)
        self.tree = CheckTree()
        self.tree.setObjectName("restoreTree")
        self.tree.setModel(self.proxy)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setAllColumnsShowFocus(True)
        self.tree.expanded.connect(self._expanded)
        self.tree.verticalScrollBar().valueChanged.connect(self._schedule_page_check)
        self._page_check = QTimer(self)
        self._page_check.setSingleShot(True)
        self._page_check.setInterval(0)
        self._page_check.timeout.connect(self.fetch_visible_pages)

        self.results = SearchResults()
        self.results.check_requested.connect(self._check_match)
        self.results.reveal_requested.connect(self.reveal)
        self.results.back_requested.connect(self.show_tree)

        self.no_snapshots = QLabel(
            "This host has no snapshots yet: there is nothing to restore.\n\n"
            "They appear after the first backup, when the agent reports the repository."
        )
        self.no_snapshots.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.no_snapshots.setWordWrap(True)
        self.no_snapshots.setEnabled(False)

        self.stack = QStackedWidget()
        for widget in (self.opening, self.failure, self.tree, self.results, self.no_snapshots):
            self.stack.addWidget(widget)

        # A building index while the tree is already shown (an evicted index).
        self.progress_row = QWidget()
        progress = QHBoxLayout(self.progress_row)
        progress.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumWidth(160)
        self.progress_label = QLabel()
        self.progress_label.setObjectName("indexProgress")
        progress.addWidget(self.progress_bar)
        progress.addWidget(self.progress_label, 1)
        self.progress_row.hide()

        self.tree_error = error_label()
        self.tree_error.setObjectName("treeError")
        self.totals = QLabel()
        self.totals.setObjectName("selectionTotals")
        self.totals.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.selection_error = error_label()
        self.selection_error.setObjectName("selectionError")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(picker_row)
        layout.addWidget(self.snapshot_details)
        layout.addLayout(filter_row)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.progress_row)
        layout.addWidget(self.tree_error)
        layout.addWidget(self.totals)
        layout.addWidget(self.selection_error)
        self._show_totals()

    # -- snapshots ------------------------------------------------------------------

    def set_host_name(self, name: str) -> None:
        self.host_name = name

    def _on_snapshots_changed(self, host_ids: set[int]) -> None:
        # Keep the open snapshot (and what is ticked in it) if it still exists.
        if self.host_id in host_ids and self.snapshots:
            if self.snapshot is not None:
                self.wanted_snapshot = self.snapshot.id
            self.ctx.runner.run(
                self.ctx.hosts.list_snapshots(self.host_id),
                what="loading snapshots",
                on_done=guarded(self, self._snapshots_loaded),
                on_error=lambda _exc: None,  # the list shown stays usable
            )

    def load_snapshots(self) -> None:
        self._show_opening(f"Reading the snapshots of {self.host_name}…")
        self.ctx.runner.run(
            self.ctx.hosts.list_snapshots(self.host_id),
            what="loading snapshots",
            on_done=guarded(self, self._snapshots_loaded),
            on_error=guarded(self, self._show_failure),
        )

    def _snapshots_loaded(self, rows: list[SnapshotView]) -> None:
        rows = sorted(rows, key=lambda s: snapshot_timestamp(s.time) or 0.0, reverse=True)
        self.snapshots = rows
        if not rows:
            self.stack.setCurrentWidget(self.no_snapshots)
            self.filter.setEnabled(False)
            return
        self.picker.blockSignals(True)
        self.picker.clear()
        for snap in rows:
            self.picker.addItem(snapshot_label(snap), snap.id)
            self.picker.setItemData(
                self.picker.count() - 1,
                f"snapshot {snap.id}\nhost {snap.hostname}\n" + "\n".join(snap.paths),
                Qt.ItemDataRole.ToolTipRole,
            )
        wanted = self.wanted_snapshot
        row = next((n for n, s in enumerate(rows) if wanted and wanted in (s.id, s.short_id)), 0)
        self.picker.setCurrentIndex(row)
        self.picker.blockSignals(False)
        self._picked(row)

    def select_snapshot(self, snapshot_id: str) -> None:
        for n, snap in enumerate(self.snapshots):
            if snapshot_id in (snap.id, snap.short_id):
                self.picker.setCurrentIndex(n)
                return

    def _picked(self, row: int) -> None:
        if not 0 <= row < len(self.snapshots):
            return
        snap = self.snapshots[row]
        if self.snapshot is not None and snap.id == self.snapshot.id and self.model is not None:
            return
        self.snapshot = snap
        details = [f"id {snap.id[:16]}…", f"from {snap.hostname}", "paths " + ", ".join(snap.paths)]
        if snap.tags:
            details.append("tags " + ", ".join(snap.tags))
        self.snapshot_details.setText(" · ".join(details))
        self._open_model(snap)

    def _open_model(self, snap: SnapshotView) -> None:
        old = self.model
        if old is not None:
            old.stop()
        snapshot_id = snap.id

        def fetch(path: str, offset: int, limit: int) -> Coroutine[Any, Any, TreeListing]:
            return self.ctx.restore.tree_list(
                self.host_id, snapshot_id, path, offset=offset, limit=limit
            )

        model = SnapshotTreeModel(
            self.ctx.runner, fetch, page=self.page, poll_s=self.poll_s, parent=self
        )
        model.index_building.connect(self._building)
        model.index_ready.connect(self._index_ready)
        model.root_loaded.connect(self._root_loaded)
        model.listing_failed.connect(self._listing_failed)
        model.selection_changed.connect(self._selection_changed)
        model.rowsInserted.connect(self._schedule_page_check)
        self.model = model
        self.proxy.setSourceModel(model)
        if old is not None:
            old.deleteLater()
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(
            SnapshotTreeModel.NAME, QHeaderView.ResizeMode.Stretch
        )
        for col in (SnapshotTreeModel.SIZE, SnapshotTreeModel.FILES, SnapshotTreeModel.MODIFIED):
            self.tree.header().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        set_error(self.tree_error, None)
        set_error(self.selection_error, None)
        self.progress_row.hide()
        self.results.set_matches([])
        self.find_results = None
        self._search_generation += 1  # a search of the previous snapshot is dropped
        self._show_opening(f"Opening snapshot {snap.short_id} on {self.host_name}…")
        model.load_root()
        self._selection_changed()

    # -- states ---------------------------------------------------------------------

    def _show_opening(self, text: str) -> None:
        self.opening_label.setText(text)
        self.stack.setCurrentWidget(self.opening)
        self.search_button.setEnabled(False)

    def _building(self, nodes: int, elapsed: float) -> None:
        short = self.snapshot.short_id if self.snapshot else ""
        text = (
            f"Indexing snapshot {short} on {self.host_name}: {nodes:,} entries read so far "
            f"({elapsed:.0f} s)."
        )
        note = "This happens once per snapshot; folders then open instantly."
        if self.stack.currentWidget() is self.opening:
            self.opening_label.setText(f"{text}\n{note}")
        else:
            self.progress_label.setText(f"{text} {note}")
            self.progress_row.show()

    def _index_ready(self) -> None:
        self.progress_row.hide()

    def _root_loaded(self) -> None:
        if self.stack.currentWidget() in (self.opening, self.failure):
            self.stack.setCurrentWidget(self.tree)
            self.search_button.setEnabled(True)
            if not self.tree.currentIndex().isValid() and self.proxy.rowCount() > 0:
                self.tree.setCurrentIndex(self.proxy.index(0, 0))
            self.tree.setFocus()
        self._schedule_page_check()

    def _listing_failed(self, path: str, exc: Exception) -> None:
        self.progress_row.hide()
        if path == "/":
            self._show_failure(exc)
            return
        self.last_error = exc
        found = advice(exc, self.host_name)
        set_error(
            self.tree_error,
            f"Could not open {path}: {found.problem}. {found.what_to_do}"
            " (Collapse and open the folder to try again.)",
        )

    def _show_failure(self, exc: Exception) -> None:
        self.last_error = exc
        found = advice(exc, self.host_name)
        self.failure_problem.setText(found.problem)
        self.failure_hint.setText(found.what_to_do)
        self.stack.setCurrentWidget(self.failure)
        self.search_button.setEnabled(False)

    def retry(self) -> None:
        if not self.snapshots:
            self.load_snapshots()
        elif self.model is not None and self.snapshot is not None:
            self._show_opening(f"Opening snapshot {self.snapshot.short_id} on {self.host_name}…")
            self.model.load_root()

    def show_tree(self) -> None:
        if self.model is not None and self.model.root.children is not None:
            self.stack.setCurrentWidget(self.tree)

    # -- tree -------------------------------------------------------------------------

    def source_index(self, index: QModelIndex | QPersistentModelIndex) -> QModelIndex:
        return self.proxy.mapToSource(index)

    def _expanded(self, index: QModelIndex) -> None:
        if self.model is None:
            return
        self._schedule_page_check()
        source = self.source_index(index)
        if self.model.node(source).error is not None:
            set_error(self.tree_error, None)
            self.model.retry(source)

    def _schedule_page_check(self, *_args: object) -> None:
        self._page_check.start()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._schedule_page_check()

    def fetch_visible_pages(self) -> None:
        """Ask for the next page of every partly listed folder whose last
        listed entry is on screen: huge folders page in as they scroll."""
        model = self.model
        if model is None or self.stack.currentWidget() is not self.tree:
            return
        viewport = self.tree.viewport()
        index = self.tree.indexAt(QPoint(1, 1))
        while index.isValid() and self.tree.visualRect(index).top() < viewport.height():
            node = model.node(self.source_index(index))
            parent = node.parent
            if (
                parent is not None
                and parent.children
                and parent.children[-1] is node
                and model.more_below(parent)
            ):
                model.fetchMore(model.index_of(parent))
            index = self.tree.indexBelow(index)

    def _filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text.strip())
        if text.strip():
            self._expand_loaded(QModelIndex())

    def _expand_loaded(self, parent: QModelIndex) -> None:
        """Open the already-listed folders holding matches (never lists new ones)."""
        if self.model is None:
            return
        for row in range(self.proxy.rowCount(parent)):
            index = self.proxy.index(row, 0, parent)
            node = self.model.node(self.source_index(index))
            if node.is_dir and node.children:
                self.tree.expand(index)
                self._expand_loaded(index)

    def _selection_changed(self) -> None:
        self._show_totals()
        if self.model is not None:
            self.results.sync(self.model.effective_state)
        set_error(self.selection_error, None)
        self.selection_changed.emit()

    def _show_totals(self) -> None:
        totals = self.model.totals() if self.model is not None else Totals()
        self.totals.setText(totals_text(totals))

    def current_totals(self) -> Totals:
        return self.model.totals() if self.model is not None else Totals()

    def has_selection(self) -> bool:
        return self.current_totals().paths > 0

    async def resolved_selection(self) -> Selection:
        """The selected paths, listing the unlisted pages a partly ticked folder needs."""
        model = self.model
        snap = self.snapshot
        if model is None or snap is None:
            raise ValueError("no snapshot is open")
        paths, unresolved = model.selected_paths()
        for node in unresolved:
            await model.complete(node)
        if unresolved:
            paths, _ = model.selected_paths()
        return Selection(snap, paths, model.totals())

    # -- search -----------------------------------------------------------------------

    def search(self) -> None:
        text = self.filter.text().strip()
        if not text or self.snapshot is None or not self.search_button.isEnabled():
            return
        self._search_generation += 1
        self.results.set_matches([])
        self.results.set_status(
            f"Searching snapshot {self.snapshot.short_id} for {search_pattern(text)}…"
        )
        self.stack.setCurrentWidget(self.results)
        self._run_search(self._search_generation, search_pattern(text), self.snapshot.id)

    def _run_search(self, generation: int, pattern: str, snapshot_id: str) -> None:
        self.searches += 1

        def done(found: FindResults) -> None:
            if generation != self._search_generation:
                return
            self.find_results = found
            matches = [m for m in found.matches if m.snapshot_id == snapshot_id] or found.matches
            self.results.set_matches(matches)
            if self.model is not None:
                self.results.sync(self.model.effective_state)
            count = f"{len(matches):,} match{'es' if len(matches) != 1 else ''} for {pattern}"
            if found.truncated:
                count += f" (only the first {len(matches):,}: make the search narrower)"
            if snapshot_id in found.building:
                self.results.set_status(
                    f"{count}. The snapshot's index is still being built: searching again…"
                )
                QTimer.singleShot(
                    int(self.poll_s * 1000),
                    self,
                    lambda: self._run_search(generation, pattern, snapshot_id),
                )
                return
            self.results.set_status(
                count
                + (
                    ". Tick a match to restore it; double-click to show it in the tree."
                    if matches
                    else "."
                )
            )

        def failed(exc: Exception) -> None:
            if generation != self._search_generation:
                return
            found = advice(exc, self.host_name)
            self.results.set_status(
                f'<span style="color:{RED}">{html.escape(found.problem)}</span> '
                f"{html.escape(found.what_to_do)}"
            )

        self.ctx.runner.run(
            self.ctx.restore.find(
                self.host_id, pattern, snapshot_id=snapshot_id, limit=SEARCH_LIMIT
            ),
            what="searching the snapshot",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def _check_match(self, path: str, ticked: bool) -> None:
        model = self.model
        if model is None:
            return

        async def tick() -> None:
            node = await model.reveal(path)
            if node is None:
                raise LookupError(f"{path} is not in this snapshot")
            model.set_checked(node, CHECKED if ticked else UNCHECKED)

        def failed(exc: Exception) -> None:
            set_error(self.selection_error, f"Could not select {path}: {error_text(exc)}")
            self.results.sync(model.effective_state)

        self.ctx.runner.run(tick(), what=f"selecting {path}", on_error=guarded(self, failed))

    def reveal(self, path: str) -> None:
        """Show ``path`` in the tree: list its ancestors, open them, select it."""
        model = self.model
        if model is None:
            return

        async def find() -> None:
            node = await model.reveal(path)
            if node is None:
                raise LookupError(f"{path} is not in this snapshot")
            if self.model is not model:
                return
            self.filter.blockSignals(True)
            self.filter.clear()
            self.proxy.setFilterFixedString("")
            self.filter.blockSignals(False)
            self.stack.setCurrentWidget(self.tree)
            index = self.proxy.mapFromSource(model.index_of(node))
            parent = index.parent()
            chain = []
            while parent.isValid():
                chain.append(parent)
                parent = parent.parent()
            for ancestor in reversed(chain):
                self.tree.expand(ancestor)
            self.tree.setCurrentIndex(index)
            self.tree.scrollTo(index)
            self.tree.setFocus()

        def failed(exc: Exception) -> None:
            set_error(self.selection_error, f"Could not show {path}: {error_text(exc)}")

        self.ctx.runner.run(find(), what=f"showing {path}", on_error=guarded(self, failed))

    def shutdown(self) -> None:
        if self.model is not None:
            self.model.stop()
        self._search_generation += 1
