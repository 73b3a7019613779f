"""Schedules tab: when the host backs up, which groups, next and last run.

The agent runs these schedules itself, app open or not; the control plane
pushes the set on every change. Conflicts between retention and schedules
are shown in a banner above the table. The enabled checkbox in a row saves
at once; Add / Edit open ``ScheduleDialog``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from server_core.services.context import OPERATOR
from server_core.views import ConflictView, HostView, ScheduleView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.host_tabs.banners import ConflictsBanner
from ui_qt.host_tabs.common import (
    AMBER,
    GREEN,
    GREY,
    HostTab,
    SingleFlight,
    alive,
    confirm_delete,
    error_label,
    error_text,
    guarded,
    plan_key,
    set_error,
)
from ui_qt.host_tabs.schedule_dialog import ScheduleDialog
from ui_qt.navigator import Navigator

# A next run this far in the past means the list is stale: fetch it again.
STALE_AFTER_S = 5.0


@dataclass(frozen=True)
class SchedulesData:
    schedules: list[ScheduleView]
    groups: list[SourceGroupView]
    conflicts: list[ConflictView]


def sync_text(host: HostView) -> tuple[str, str]:
    """(text, colour): "agent in sync" or "agent at version N of M" of the schedule set."""
    want, have = host.schedule_version, host.schedule_acked_version
    if want <= 0:
        return "no schedule set sent yet", GREY
    if have >= want:
        return "agent in sync", GREEN
    where = "" if host.status == "online" else " (updates when it reconnects)"
    return f"agent at version {have} of {want}{where}", AMBER


class SchedulesTab(HostTab):
    COLUMNS = ("On", "Cron", "When", "Groups", "Next run", "Last run")
    ENABLED, CRON, DESCRIPTION, GROUPS, NEXT, LAST = range(6)

    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(ctx, navigator, host_id)
        self._now = now
        self.data: SchedulesData | None = None
        self.schedules: list[ScheduleView] = []
        self.dialog: ScheduleDialog | None = None
        self.confirm_box: QMessageBox | None = None
        self._filling = False
        self.toggling: set[int] = set()

        self.note = QLabel(
            "The agent runs these schedules itself, whether or not this app is open; "
            "a host that was asleep runs each missed schedule once when it wakes."
        )
        self.note.setWordWrap(True)
        self.note.setEnabled(False)
        self.sync = QLabel()
        self.sync.setObjectName("scheduleSync")
        self.add_button = QPushButton("Add schedule…")
        self.add_button.setObjectName("addSchedule")
        self.add_button.clicked.connect(self.add_schedule)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.setObjectName("editSchedule")
        self.edit_button.clicked.connect(self.edit_selected)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("deleteSchedule")
        self.delete_button.clicked.connect(self.delete_selected)
        toolbar = QHBoxLayout()
        text = QVBoxLayout()
        text.addWidget(self.note)
        text.addWidget(self.sync)
        toolbar.addLayout(text, 1)
        toolbar.addWidget(self.add_button)
        toolbar.addWidget(self.edit_button)
        toolbar.addWidget(self.delete_button)

        self.conflicts = ConflictsBanner("schedulesConflicts")
        self.error = error_label()

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("schedulesTable")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 12)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(True)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(self._double_clicked)
        header = self.table.horizontalHeader()
        for col in range(len(self.COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.GROUPS, QHeaderView.ResizeMode.Stretch)
        for col, tip in (
            (self.ENABLED, "Enabled: untick to pause a schedule without deleting it"),
            (self.CRON, "The cron expression (minute hour day-of-month month day-of-week)"),
            (self.NEXT, "When it fires next (this computer's local time)"),
            (self.LAST, "When it last fired"),
        ):
            item = self.table.horizontalHeaderItem(col)
            if item is not None:
                item.setToolTip(tip)

        self.empty = QLabel(
            "No schedules: this host is only backed up when you start a backup by hand."
        )
        self.empty.setObjectName("noSchedules")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        layout = QVBoxLayout(self)
        layout.addLayout(toolbar)
        layout.addWidget(self.conflicts)
        layout.addWidget(self.error)
        layout.addWidget(self.stack, 1)

        self.loader: SingleFlight[SchedulesData] = SingleFlight(
            self,
            ctx.runner,
            "loading schedules",
            self._fetch,
            self._loaded,
            lambda exc: self.fetch_failed("the schedules", exc, self.error),
        )
        self._update_buttons()

    async def _fetch(self) -> SchedulesData:
        ctx, host_id = self.ctx, self.host_id
        schedules = await ctx.schedules.list_schedules(host_id)
        groups = await ctx.sources.list_groups(host_id)
        old = self.data
        if old is not None and plan_key(groups, schedules) == plan_key(old.groups, old.schedules):
            conflicts = old.conflicts  # unchanged plan: skip the costly check
        else:
            conflicts = await ctx.schedules.conflicts(host_id)
        return SchedulesData(schedules=schedules, groups=groups, conflicts=conflicts)

    def reload(self) -> None:
        self.loader.request()

    def host_gone(self) -> None:
        self.loader.stop()
        if self.dialog is not None and alive(self.dialog):
            self.dialog.reject()

    def set_host(self, host: HostView) -> None:
        super().set_host(host)
        text, colour = sync_text(host)
        self.sync.setText(f"Schedule set: {text}")
        self.sync.setStyleSheet(f"color: {colour};")

    def tick(self) -> None:
        now = self._now()
        stale = any(
            s.enabled and s.next_run_at is not None and s.next_run_at < now - STALE_AFTER_S
            for s in self.schedules
        )
        if stale:
            self.reload()
        self._show_times()

    # -- showing ------------------------------------------------------------------------

    def _loaded(self, data: SchedulesData) -> None:
        set_error(self.error, None)
        self.conflicts.set_conflicts(data.conflicts)
        selected = self.selected_schedule()
        self.data = data
        self.schedules = data.schedules
        names = {g.id: g.name for g in data.groups}
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self._filling = True
        try:
            self.table.setRowCount(len(data.schedules))
            for row, s in enumerate(data.schedules):
                on = QTableWidgetItem()
                on.setFlags(
                    Qt.ItemFlag.ItemIsUserCheckable
                    | Qt.ItemFlag.ItemIsEnabled
                    | Qt.ItemFlag.ItemIsSelectable
                )
                on.setCheckState(Qt.CheckState.Checked if s.enabled else Qt.CheckState.Unchecked)
                on.setData(Qt.ItemDataRole.UserRole, s.id)
                on.setToolTip("Enabled" if s.enabled else "Disabled: never fires")
                if s.id in self.toggling:
                    on.setFlags(on.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                self.table.setItem(row, self.ENABLED, on)
                cron_item = QTableWidgetItem(s.cron)
                cron_item.setFont(mono)
                self.table.setItem(row, self.CRON, cron_item)
                self.table.setItem(row, self.DESCRIPTION, QTableWidgetItem(s.description))
                groups = [names.get(g, f"#{g}") for g in s.source_group_ids]
                item = QTableWidgetItem(", ".join(groups) or "no groups")
                if not groups:
                    item.setForeground(QBrush(QColor(AMBER)))
                self.table.setItem(row, self.GROUPS, item)
                self.table.setItem(row, self.NEXT, QTableWidgetItem())
                self.table.setItem(row, self.LAST, QTableWidgetItem())
                if not s.enabled:
                    for col in (self.CRON, self.DESCRIPTION, self.GROUPS):
                        cell = self.table.item(row, col)
                        if cell is not None:
                            cell.setForeground(QBrush(QColor(GREY)))
        finally:
            self._filling = False
        self._show_times()
        self.stack.setCurrentWidget(self.table if data.schedules else self.empty)
        if selected is not None:
            self.select_schedule(selected.id)
        self._update_buttons()

    def _show_times(self) -> None:
        now = self._now()
        self._filling = True
        try:
            for row, s in enumerate(self.schedules):
                next_item = self.table.item(row, self.NEXT)
                last_item = self.table.item(row, self.LAST)
                if next_item is None or last_item is None:
                    continue
                if not s.enabled:
                    next_item.setText("disabled")
                    next_item.setToolTip("")
                    next_item.setForeground(QBrush(QColor(GREY)))
                elif s.next_run_at is None:
                    next_item.setText("—")
                else:
                    next_item.setText(
                        f"{relative_time(s.next_run_at, now)} · {absolute_time(s.next_run_at)}"
                    )
                    next_item.setToolTip(absolute_time(s.next_run_at))
                last_item.setText(relative_time(s.last_run_at, now) if s.last_run_at else "not yet")
                last_item.setToolTip(absolute_time(s.last_run_at))
        finally:
            self._filling = False

    # -- selection ------------------------------------------------------------------------

    def selected_schedule(self) -> ScheduleView | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self.schedules[row] if 0 <= row < len(self.schedules) else None

    def select_schedule(self, schedule_id: int) -> None:
        for row, s in enumerate(self.schedules):
            if s.id == schedule_id:
                self.table.selectRow(row)
                return

    def _update_buttons(self) -> None:
        chosen = self.selected_schedule() is not None
        self.edit_button.setEnabled(chosen)
        self.delete_button.setEnabled(chosen)

    def _double_clicked(self, index: object) -> None:
        self.edit_selected()

    # -- editing ----------------------------------------------------------------------------

    def _open(self, schedule: ScheduleView | None) -> None:
        if self.dialog is not None and alive(self.dialog):
            self.dialog.reject()
        data = self.data
        dialog = ScheduleDialog(
            self.ctx,
            self.host_id,
            schedule,
            data.groups if data else [],
            data.schedules if data else [],
            self,
        )
        self.dialog = dialog
        dialog.accepted.connect(self.reload)
        dialog.open()

    def add_schedule(self) -> None:
        self._open(None)

    def edit_selected(self) -> None:
        schedule = self.selected_schedule()
        if schedule is not None:
            self._open(schedule)

    def delete_selected(self) -> None:
        schedule = self.selected_schedule()
        if schedule is None:
            return
        self.confirm_box = confirm_delete(
            self,
            "Delete schedule",
            f"Delete the schedule “{schedule.description}” ({schedule.cron})?\n\n"
            "The agent stops running it as soon as it gets the new schedule set.",
            "confirmDeleteSchedule",
            lambda: self.delete_schedule(schedule),
        )

    def delete_schedule(self, schedule: ScheduleView) -> None:
        self.ctx.runner.run(
            self.ctx.schedules.delete_schedule(self.host_id, schedule.id, OPERATOR),
            what="deleting the schedule",
            on_done=guarded(self, lambda _r: self.reload()),
            on_error=guarded(
                self, lambda exc: set_error(self.error, f"Could not delete: {error_text(exc)}")
            ),
        )

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() != self.ENABLED:
            return
        sid = item.data(Qt.ItemDataRole.UserRole)
        schedule = next((s for s in self.schedules if s.id == sid), None)
        if schedule is None:
            return
        enabled = item.checkState() == Qt.CheckState.Checked
        if enabled == schedule.enabled:
            return
        self.set_enabled(schedule, enabled)

    def set_enabled(self, schedule: ScheduleView, enabled: bool) -> None:
        """Save the enabled flag alone (the rest of the schedule unchanged)."""
        self.toggling.add(schedule.id)
        set_error(self.error, None)
        body = {
            "cron": schedule.cron,
            "enabled": enabled,
            "source_group_ids": list(schedule.source_group_ids),
        }

        def finished(exc: Exception | None) -> None:
            self.toggling.discard(schedule.id)
            if exc is not None:
                set_error(self.error, f"Could not change the schedule: {error_text(exc)}")
            self.reload()

        self.ctx.runner.run(
            self.ctx.schedules.update_schedule(self.host_id, schedule.id, body, OPERATOR),
            what="enabling a schedule" if enabled else "disabling a schedule",
            on_done=guarded(self, lambda _v: finished(None)),
            on_error=guarded(self, finished),
        )
