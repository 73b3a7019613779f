"""Sources tab: the host's source groups — what is backed up, kept and retried.

Add / Edit / Delete go through ``SourceService`` (the same validation as the
API); a refused delete (the group is in a schedule, or it is the last one)
is shown in a banner with the service's reason. Each row has "Back up now"
with a one-off bandwidth limit in its menu. Below the table, the host's
default hooks. Everything reloads on ``sources_changed`` from the bridge.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QAction, QBrush, QColor, QPainter, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import ConflictView, HostHooksView, ScheduleView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.host_tabs.banners import Banner, ConflictsBanner
from ui_qt.host_tabs.common import (
    AMBER,
    GREEN,
    GREY,
    RED,
    HostTab,
    SingleFlight,
    alive,
    confirm_delete,
    error_label,
    error_text,
    guarded,
    plan_key,
    set_error,
    show_error,
)
from ui_qt.host_tabs.forms import SavingDialog
from ui_qt.host_tabs.source_group_dialog import (
    SourceGroupDialog,
    hook_warning,
    mono_edit,
    retention_text,
)
from ui_qt.navigator import Navigator

Index = QModelIndex | QPersistentModelIndex

__all__ = ["BandwidthDialog", "SourcesData", "SourcesTab", "retention_text"]


@dataclass(frozen=True)
class SourcesData:
    groups: list[SourceGroupView]
    schedules: list[ScheduleView]
    conflicts: list[ConflictView]
    hooks: HostHooksView


def short_duration(seconds: int) -> str:
    """600 → ``10 min``, 5400 → ``1 h 30 min``, 45 → ``45 s``."""
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if secs and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts)


def retry_text(group: SourceGroupView) -> str:
    if group.retry_max <= 0:
        return "no retries"
    times = "1 retry" if group.retry_max == 1 else f"{group.retry_max} retries"
    return f"{times}, from {short_duration(group.retry_backoff_seconds)}"


def hooks_text(group: SourceGroupView, defaults: HostHooksView | None) -> str:
    own = [n for n, has in (("pre", group.has_pre_hook), ("post", group.has_post_hook)) if has]
    if own:
        return " + ".join(own)
    if defaults is not None and (defaults.pre_hook or defaults.post_hook):
        return "host defaults"
    return "—"


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


class BandwidthDialog(SavingDialog):
    """Back up one group now with its own upload/download limits (KiB/s)."""

    def __init__(
        self,
        ctx: UiContext,
        host_id: int,
        group: SourceGroupView,
        on_started: Callable[[str], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(ctx.runner, f"Back up {group.name} now", "Start backup", parent)
        self.setObjectName("bandwidthDialog")
        self.ctx = ctx
        self.host_id = host_id
        self.group = group
        self.on_started = on_started
        intro = QLabel(
            f"Back up <b>{html.escape(group.name)}</b> now with these limits for this run "
            "only. “host caps” uses the host's bandwidth caps (Repo tab)."
        )
        intro.setWordWrap(True)
        self.upload = self._spin("upload_kib_s")
        self.download = self._spin("download_kib_s")
        form = QVBoxLayout()
        form.addWidget(intro)
        for label, name, spin in (
            ("Upload limit", "upload_kib_s", self.upload),
            ("Download limit", "download_kib_s", self.download),
        ):
            row = QHBoxLayout()
            text = QLabel(label)
            text.setMinimumWidth(110)
            row.addWidget(text)
            row.addWidget(self.errors.wrap(name, spin), 1)
            form.addLayout(row)
        self.form_area.addLayout(form)
        self.resize(440, 200)

    @staticmethod
    def _spin(name: str) -> QSpinBox:
        spin = QSpinBox()
        spin.setObjectName(name)
        spin.setRange(0, 10_000_000)
        spin.setSingleStep(256)
        spin.setSpecialValueText("host caps")
        spin.setSuffix(" KiB/s")
        spin.setToolTip("0 = use the host's caps (unlimited if none)")
        return spin

    def save(self) -> None:
        self.submit(
            self.ctx.sources.backup_now(
                self.host_id,
                self.group.id,
                OPERATOR,
                upload_kib_s=self.upload.value() or None,
                download_kib_s=self.download.value() or None,
            ),
            f"starting a backup of {self.group.name}",
            self.on_started,
        )


class DefaultHooksBox(QGroupBox):
    """The host's default hooks: used by every group that has none of its own."""

    def __init__(self, tab: SourcesTab) -> None:
        super().__init__("Default hooks for this host")
        self.setObjectName("defaultHooks")
        self.tab = tab
        self.loaded: tuple[str, str] | None = None
        self.saving = False
        self.pre = mono_edit("runs before every backup of a group without hooks", 48)
        self.pre.setObjectName("defaultPreHook")
        self.post = mono_edit("runs after it, with RM_JOB_STATUS=succeeded|failed", 48)
        self.post.setObjectName("defaultPostHook")
        for edit in (self.pre, self.post):
            edit.setMaximumHeight(72)
            edit.textChanged.connect(self._edited)
        self.save_button = QPushButton("Save hooks")
        self.save_button.setObjectName("saveDefaultHooks")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save)
        self.status = QLabel()
        self.status.setObjectName("defaultHooksStatus")
        self.status.setWordWrap(True)
        self.error = error_label()
        self.error.setObjectName("defaultHooksError")

        edits = QHBoxLayout()
        for title, edit in (("Before", self.pre), ("After", self.post)):
            column = QVBoxLayout()
            label = QLabel(title)
            label.setEnabled(False)
            column.addWidget(label)
            column.addWidget(edit)
            edits.addLayout(column)
        footer = QHBoxLayout()
        footer.addWidget(self.status, 1)
        footer.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addWidget(hook_warning())
        layout.addLayout(edits)
        layout.addWidget(self.error)
        layout.addLayout(footer)

    def texts(self) -> tuple[str, str]:
        return self.pre.toPlainText().strip(), self.post.toPlainText().strip()

    def dirty(self) -> bool:
        return self.loaded is not None and self.texts() != self.loaded

    def show_hooks(self, hooks: HostHooksView) -> None:
        fresh = (hooks.pre_hook or "", hooks.post_hook or "")
        if not self.dirty():  # never overwrite what is being typed
            self.pre.setPlainText(fresh[0])
            self.post.setPlainText(fresh[1])
        self.loaded = fresh
        self._edited()

    def _edited(self) -> None:
        self.save_button.setEnabled(not self.saving and self.dirty())
        if self.dirty():
            self.status.setText("Unsaved changes")
            self.status.setStyleSheet(f"color: {AMBER};")
        elif (
            self.loaded is not None
            and not self.saving
            and self.status.text() in ("", "Unsaved changes", "No default hooks.")
        ):  # a "Saved" note stays until the next edit
            self.status.setStyleSheet("")
            self.status.setText("" if any(self.loaded) else "No default hooks.")

    def save(self) -> None:
        if not self.save_button.isEnabled():
            return
        pre, post = self.texts()
        self.saving = True
        self.save_button.setEnabled(False)
        set_error(self.error, None)

        def done(hooks: HostHooksView) -> None:
            self.saving = False
            self.loaded = None  # take what was stored, even if it differs from the edits
            self.show_hooks(hooks)
            self.status.setStyleSheet(f"color: {GREEN};")
            self.status.setText("Saved; the agent gets them with its next schedule set.")

        def failed(exc: Exception) -> None:
            self.saving = False
            set_error(self.error, error_text(exc))
            self._edited()

        self.tab.ctx.runner.run(
            self.tab.ctx.sources.set_default_hooks(
                self.tab.host_id, pre or None, post or None, OPERATOR
            ),
            what="saving the default hooks",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )


class SourcesTab(HostTab):
    COLUMNS = ("Group", "Includes", "Excludes", "Retention", "Retry", "Hooks", "Schedules", "")
    NAME, INCLUDES, EXCLUDES, RETENTION, RETRY, HOOKS, USED_BY, ACTION = range(8)

    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        on_groups: Callable[[dict[int, str]], None] | None = None,
    ) -> None:
        super().__init__(ctx, navigator, host_id)
        self._on_groups = on_groups
        self.data: SourcesData | None = None
        self.groups: list[SourceGroupView] = []
        self.backup_buttons: dict[int, QToolButton] = {}
        self.dialog: SavingDialog | None = None
        self.confirm_box: QMessageBox | None = None

        self.note = QLabel(
            "A source group is what a backup covers: paths, excludes and how long its "
            "snapshots are kept. Snapshots are tagged with the group's name."
        )
        self.note.setWordWrap(True)
        self.note.setEnabled(False)
        self.add_button = QPushButton("Add group…")
        self.add_button.setObjectName("addGroup")
        self.add_button.clicked.connect(self.add_group)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.setObjectName("editGroup")
        self.edit_button.clicked.connect(self.edit_selected)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("deleteGroup")
        self.delete_button.clicked.connect(self.delete_selected)
        toolbar = QHBoxLayout()
        toolbar.addWidget(self.note, 1)
        toolbar.addWidget(self.add_button)
        toolbar.addWidget(self.edit_button)
        toolbar.addWidget(self.delete_button)

        self.conflicts = ConflictsBanner("sourcesConflicts")
        self.refusal = Banner("deleteRefused", RED)
        dismiss = QPushButton("Dismiss")
        dismiss.clicked.connect(self.refusal.hide)
        self.refusal.add_button(dismiss)
        self.error = error_label()

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("sourcesTable")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(True)
        self.table.setItemDelegate(PaddedDelegate(self.table))
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _index: self.edit_selected())
        header = self.table.horizontalHeader()
        for col in range(len(self.COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.INCLUDES, QHeaderView.ResizeMode.Stretch)
        # Row heights follow the wrapped text, which follows the column widths
        # (unknown until the tab is first shown).
        header.sectionResized.connect(self._fit_rows)
        for col, tip in (
            (self.EXCLUDES, "Number of exclude patterns (hover a cell to see them)"),
            (self.RETENTION, "What forget keeps of this group's snapshots"),
            (self.RETRY, "How often a failed backup is retried, and the first wait"),
            (self.HOOKS, "Commands run before/after a backup of this group"),
            (self.USED_BY, "The schedules that back this group up"),
        ):
            item = self.table.horizontalHeaderItem(col)
            if item is not None:
                item.setToolTip(tip)

        self.empty = QLabel("This host has no source groups yet: add one.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        self.hooks_box = DefaultHooksBox(self)

        layout = QVBoxLayout(self)
        layout.addLayout(toolbar)
        layout.addWidget(self.conflicts)
        layout.addWidget(self.refusal)
        layout.addWidget(self.error)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.hooks_box)

        self.loader: SingleFlight[SourcesData] = SingleFlight(
            self,
            ctx.runner,
            "loading source groups",
            self._fetch,
            self._loaded,
            lambda exc: self.fetch_failed("the source groups", exc, self.error),
        )
        self._update_buttons()

    def _fit_rows(self, *_args: object) -> None:
        if self.table.isVisible():
            self.table.resizeRowsToContents()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.table.resizeRowsToContents()

    async def _fetch(self) -> SourcesData:
        ctx, host_id = self.ctx, self.host_id
        groups = await ctx.sources.list_groups(host_id)
        schedules = await ctx.schedules.list_schedules(host_id)
        old = self.data
        if old is not None and plan_key(groups, schedules) == plan_key(old.groups, old.schedules):
            conflicts = old.conflicts
        else:
            conflicts = await ctx.schedules.conflicts(host_id)
        return SourcesData(
            groups=groups,
            schedules=schedules,
            conflicts=conflicts,
            hooks=await ctx.sources.default_hooks(host_id),
        )

    def reload(self) -> None:
        self.loader.request()

    def host_gone(self) -> None:
        self.loader.stop()
        if self.dialog is not None and alive(self.dialog):
            self.dialog.reject()

    # -- showing ------------------------------------------------------------------

    def _loaded(self, data: SourcesData) -> None:
        set_error(self.error, None)
        self.conflicts.set_conflicts(data.conflicts)
        self.hooks_box.show_hooks(data.hooks)
        unchanged = (
            self.data is not None
            and data.groups == self.data.groups
            and data.schedules == self.data.schedules
            and data.hooks == self.data.hooks
            and self.backup_buttons
        )
        self.data = data
        self.groups = data.groups
        if unchanged:
            return  # keep the rows (and the button under the mouse)
        if self._on_groups is not None:
            self._on_groups({g.id: g.name for g in data.groups})
        selected = self.selected_group()
        busy = {gid for gid, b in self.backup_buttons.items() if not b.isEnabled()}
        self.backup_buttons = {}
        schedules = {s.id: s for s in data.schedules}
        self.table.setRowCount(len(data.groups))
        top_left = Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft
        for row, group in enumerate(data.groups):
            used = [schedules[s] for s in group.schedule_ids if s in schedules]
            cells: dict[int, tuple[str, str, str | None]] = {
                self.NAME: (group.name, "", None),
                self.INCLUDES: ("\n".join(group.includes), "", None),
                self.EXCLUDES: self._excludes_cell(group),
                self.RETENTION: (retention_text(group.retention), "", None),
                self.RETRY: (retry_text(group), "", None),
                self.HOOKS: (hooks_text(group, data.hooks), _hooks_tip(group, data.hooks), None),
                self.USED_BY: self._used_by_cell(used),
            }
            for col, (text, tip, colour) in cells.items():
                item = QTableWidgetItem(text)
                item.setTextAlignment(top_left)
                if tip:
                    item.setToolTip(tip)
                if colour:
                    item.setForeground(QBrush(QColor(colour)))
                if col == self.NAME:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                    item.setData(Qt.ItemDataRole.UserRole, group.id)
                self.table.setItem(row, col, item)
            self.table.setCellWidget(row, self.ACTION, self._button_cell(group, group.id in busy))
        self.table.resizeRowsToContents()
        self.stack.setCurrentWidget(self.table if data.groups else self.empty)
        if selected is not None:
            self.select_group(selected.id)
        self._update_buttons()

    @staticmethod
    def _excludes_cell(group: SourceGroupView) -> tuple[str, str, str | None]:
        n = len(group.excludes)
        if not n:
            return "none", "", GREY
        text = "1 pattern" if n == 1 else f"{n} patterns"
        return text, "\n".join(group.excludes), None

    @staticmethod
    def _used_by_cell(used: list[ScheduleView]) -> tuple[str, str, str | None]:
        if not used:
            return "not scheduled", "No schedule backs this group up", AMBER
        lines = [s.description + ("" if s.enabled else " (disabled)") for s in used]
        tip = "\n".join(f"{s.cron}  —  {s.description}" for s in used)
        return "\n".join(lines), tip, None

    def _button_cell(self, group: SourceGroupView, busy: bool) -> QWidget:
        button = QToolButton()
        button.setText("Starting…" if busy else "Back up now")
        button.setObjectName(f"backupNow-{group.id}")
        button.setToolTip(f"Start a backup of {group.name!r} on the agent now")
        button.setEnabled(not busy)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        button.clicked.connect(lambda _checked=False, g=group: self.back_up_now(g))
        menu = QMenu(button)
        limited = QAction("Back up now with a bandwidth limit…", menu)
        limited.triggered.connect(lambda _checked=False, g=group: self.back_up_limited(g))
        menu.addAction(limited)
        button.setMenu(menu)
        self.backup_buttons[group.id] = button
        cell = QWidget()
        layout = QVBoxLayout(cell)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.addWidget(button, 0, Qt.AlignmentFlag.AlignTop)
        return cell

    # -- selection ----------------------------------------------------------------------

    def selected_group(self) -> SourceGroupView | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if len(rows) != 1:
            return None
        item = self.table.item(rows.pop(), self.NAME)
        gid = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        return next((g for g in self.groups if g.id == gid), None)

    def select_group(self, group_id: int) -> None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, self.NAME)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == group_id:
                self.table.selectRow(row)
                return

    def _update_buttons(self) -> None:
        group = self.selected_group()
        self.edit_button.setEnabled(group is not None)
        self.delete_button.setEnabled(group is not None)
        tip = "Select a group first"
        if group is not None:
            if group.schedule_ids:
                tip = "This group is in a schedule: remove it from the schedule first"
            elif len(self.groups) == 1:
                tip = "The last group of a host cannot be deleted"
            else:
                tip = f"Delete {group.name!r} (its snapshots stay in the repository)"
        self.delete_button.setToolTip(tip)

    # -- editing -------------------------------------------------------------------------

    def _open_dialog(self, dialog: SavingDialog) -> None:
        if self.dialog is not None and alive(self.dialog):
            self.dialog.reject()
        self.dialog = dialog
        dialog.accepted.connect(self.reload)
        dialog.open()

    def add_group(self) -> None:
        data = self.data
        self._open_dialog(
            SourceGroupDialog(
                self.ctx,
                self.host_id,
                None,
                data.groups if data else [],
                data.schedules if data else [],
                self,
            )
        )

    def edit_selected(self) -> None:
        group = self.selected_group()
        if group is not None:
            self.edit_group(group)

    def edit_group(self, group: SourceGroupView) -> None:
        data = self.data
        self._open_dialog(
            SourceGroupDialog(
                self.ctx,
                self.host_id,
                group,
                data.groups if data else [],
                data.schedules if data else [],
                self,
            )
        )

    def delete_selected(self) -> None:
        group = self.selected_group()
        if group is None:
            return
        self.refusal.hide()
        if group.schedule_ids or len(self.groups) <= 1:
            self.delete_group(group)  # the service refuses and says why
            return
        self.confirm_box = confirm_delete(
            self,
            "Delete source group",
            f"Delete the source group {group.name!r}?\n\nIts snapshots stay in the "
            "repository; forget no longer applies this group's retention to them.",
            "confirmDeleteGroup",
            lambda: self.delete_group(group),
        )

    def delete_group(self, group: SourceGroupView) -> None:
        self.delete_button.setEnabled(False)

        def done(_result: None) -> None:
            self.refusal.hide()
            self.reload()

        def failed(exc: Exception) -> None:
            self._update_buttons()
            self.refusal.title.setText(f"Cannot delete {group.name!r}")
            self.refusal.body.setText(html.escape(error_text(exc)))
            self.refusal.show()

        self.ctx.runner.run(
            self.ctx.sources.delete_group(self.host_id, group.id, OPERATOR),
            what=f"deleting source group {group.name}",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    # -- backups ---------------------------------------------------------------------------

    def _set_busy(self, group_id: int, busy: bool) -> None:
        button = self.backup_buttons.get(group_id)
        if button is not None:
            button.setEnabled(not busy)
            button.setText("Starting…" if busy else "Back up now")

    def back_up_now(self, group: SourceGroupView) -> None:
        self._set_busy(group.id, True)

        def done(job_id: str) -> None:
            self._set_busy(group.id, False)
            self.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            self._set_busy(group.id, False)
            show_error(self, f"Could not back up {group.name}", exc)

        self.ctx.runner.run(
            self.ctx.sources.backup_now(self.host_id, group.id, OPERATOR),
            what=f"starting a backup of {group.name}",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def back_up_limited(self, group: SourceGroupView) -> None:
        self._open_dialog(
            BandwidthDialog(self.ctx, self.host_id, group, guarded(self, self._started), self)
        )

    def _started(self, job_id: str) -> None:
        self.navigator.open_job(job_id)


def _hooks_tip(group: SourceGroupView, defaults: HostHooksView | None) -> str:
    parts = []
    if group.pre_hook:
        parts.append(f"before: {group.pre_hook}")
    if group.post_hook:
        parts.append(f"after: {group.post_hook}")
    if parts:
        return "\n".join(parts)
    if defaults is not None and (defaults.pre_hook or defaults.post_hook):
        return "No hooks of its own: the host's default hooks run"
    return "No hooks"
