"""Add / edit a schedule: a cron line with quick picks, what it means in words,
the next five runs, the enabled toggle and the groups it backs up.

The description and the preview come from ``server_core.cron`` (pure
functions, cheap enough to call on every keystroke); the service validates
again on save and its ``InvalidInput.field`` puts the message at the field.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QWidget,
)

from server_core import cron
from server_core.errors import InvalidInput
from server_core.services.context import OPERATOR
from server_core.views import ConflictView, ScheduleView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.formatting import relative_time
from ui_qt.host_tabs.conflict_preview import ConflictPreview
from ui_qt.host_tabs.forms import SavingDialog

PREVIEW_RUNS = 5
DRAFT_ID = -1


def run_time(ts: float, now: float) -> str:
    """``Mon 6 Jan 02:00  (in 3 h)``, in local time."""
    when = dt.datetime.fromtimestamp(ts)
    return f"{when:%a %d %b %Y  %H:%M}  ({relative_time(ts, now)})"


class ScheduleDialog(SavingDialog):
    def __init__(
        self,
        ctx: UiContext,
        host_id: int,
        schedule: ScheduleView | None,
        groups: list[SourceGroupView],
        schedules: list[ScheduleView],
        parent: QWidget | None = None,
        *,
        now: float | None = None,
    ) -> None:
        title = "Edit schedule" if schedule else "Add a schedule"
        super().__init__(ctx.runner, title, "Save" if schedule else "Add schedule", parent)
        self.setObjectName("scheduleDialog")
        self.ctx = ctx
        self.host_id = host_id
        self.schedule = schedule
        self.groups = groups
        self.other_schedules = [s for s in schedules if schedule is None or s.id != schedule.id]
        self._now = now
        self.valid_cron: str | None = None

        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.cron = QLineEdit()
        self.cron.setObjectName("cron")
        self.cron.setFont(mono)
        self.cron.setPlaceholderText("minute hour day-of-month month day-of-week, e.g. 0 2 * * *")
        self.cron.setToolTip(
            "Five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12), "
            "day of week (0-7, Sunday = 0 or 7). '*' any, '*/15' every 15, '1-5' a range, "
            "'1,3' a list. @hourly, @daily, @weekly and @monthly work too."
        )
        self.quick = QComboBox()
        self.quick.setObjectName("quickPicks")
        self.quick.addItem("Quick picks…", "")
        for label, expr in cron.QUICK_PICKS:
            self.quick.addItem(f"{label}   ({expr})", expr)
        self.quick.activated.connect(self._pick)
        cron_row = QWidget()
        row = QHBoxLayout(cron_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.cron, 1)
        row.addWidget(self.quick)

        self.description = QLabel()
        self.description.setObjectName("cronDescription")
        self.description.setWordWrap(True)
        font = self.description.font()
        font.setBold(True)
        self.description.setFont(font)
        self.preview = QLabel()
        self.preview.setObjectName("cronPreview")
        self.preview.setFont(mono)
        self.preview.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.preview.setMinimumHeight(self.fontMetrics().lineSpacing() * PREVIEW_RUNS + 4)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        tz = dt.datetime.now().astimezone().strftime("%Z (UTC%z)")
        self.tz_note = QLabel(
            f"Times in this computer's time zone, {tz}. The agent fires the schedule in the "
            "host's own local time."
        )
        self.tz_note.setWordWrap(True)
        self.tz_note.setEnabled(False)

        self.enabled = QCheckBox("Enabled")
        self.enabled.setObjectName("scheduleEnabled")
        self.enabled.setToolTip("A disabled schedule is kept but never fires")
        self.group_list = QListWidget()
        self.group_list.setObjectName("scheduleGroups")
        self.group_list.setMaximumHeight(120)
        for group in groups:
            item = QListWidgetItem(group.name)
            item.setData(Qt.ItemDataRole.UserRole, group.id)
            item.setFlags(
                Qt.ItemFlag.ItemIsUserCheckable
                | Qt.ItemFlag.ItemIsEnabled
                | Qt.ItemFlag.ItemIsSelectable
            )
            item.setCheckState(Qt.CheckState.Unchecked)
            item.setToolTip(", ".join(group.includes))
            self.group_list.addItem(item)

        self.conflict_preview = ConflictPreview(ctx.runner, "With this schedule", self)
        self.conflicts = self.conflict_preview.label
        self.conflicts.setObjectName("scheduleConflicts")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("When (cron)", self.errors.wrap("cron", cron_row))
        form.addRow("", self.description)
        form.addRow("Next runs", self.preview)
        form.addRow("", self.tz_note)
        form.addRow("", self.errors.wrap("enabled", self.enabled))
        form.addRow(
            "Source groups",
            self.errors.wrap("source_group_ids", self.group_list, "groups"),
        )
        self.form_area.addLayout(form)
        self.form_area.addWidget(self.conflicts)

        if schedule is not None:
            self.cron.setText(schedule.cron)
            self.enabled.setChecked(schedule.enabled)
            self.set_checked_groups(schedule.source_group_ids)
        else:
            self.cron.setText("0 2 * * *")
            self.enabled.setChecked(True)
            if len(groups) == 1:
                self.set_checked_groups([groups[0].id])
        self.cron.textChanged.connect(self._update)
        self.enabled.toggled.connect(self._update)
        self.group_list.itemChanged.connect(self._update)
        self._update()
        self.resize(660, self.sizeHint().height() + 20)

    def now(self) -> float:
        return time.time() if self._now is None else self._now

    # -- groups ----------------------------------------------------------------------

    def set_checked_groups(self, ids: list[int]) -> None:
        wanted = set(ids)
        for row in range(self.group_list.count()):
            item = self.group_list.item(row)
            checked = item.data(Qt.ItemDataRole.UserRole) in wanted
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def checked_groups(self) -> list[int]:
        out = []
        for row in range(self.group_list.count()):
            item = self.group_list.item(row)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(int(item.data(Qt.ItemDataRole.UserRole)))
        return out

    # -- live feedback ----------------------------------------------------------------

    def _pick(self, index: int) -> None:
        expr = self.quick.itemData(index)
        if expr:
            self.cron.setText(str(expr))
        self.quick.setCurrentIndex(0)

    def _update(self, *_args: object) -> None:
        label = self.errors.labels["cron"]
        try:
            expr = cron.validate(self.cron.text())
        except InvalidInput as exc:
            self.valid_cron = None
            self.description.setText("")
            self.preview.setText("—")
            label.setText(exc.message)
            label.setVisible(bool(self.cron.text().strip()))
            self.conflict_preview.clear()
            return
        label.setVisible(False)
        self.valid_cron = expr
        text = cron.describe(expr)
        self.description.setText(text[:1].upper() + text[1:])  # not capitalize(): "Monday"
        now = self.now()
        runs = cron.next_runs(expr, now, PREVIEW_RUNS)
        self.preview.setText("\n".join(run_time(r, now) for r in runs) or "never")
        if not self.enabled.isChecked():
            self.description.setText(self.description.text() + " — disabled, will not fire")
        self._preview_conflicts(expr)

    def _preview_conflicts(self, expr: str) -> None:
        checked = self.checked_groups()
        draft = ScheduleView(
            id=self.schedule.id if self.schedule else DRAFT_ID,
            host_id=self.host_id,
            cron=expr,
            enabled=self.enabled.isChecked(),
            source_group_ids=checked,
            description=cron.describe(expr),
            next_run_at=None,
            last_run_at=None,
            created_at=0.0,
            updated_at=0.0,
        )

        def mine(found: list[ConflictView]) -> list[ConflictView]:
            return [
                c
                for c in found
                if (c.source_group_id in checked and c.kind != "no_retention")
                or c.schedule_id == draft.id
            ]

        self.conflict_preview.request(self.groups, [*self.other_schedules, draft], mine)

    # -- saving -------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        return {
            "cron": self.cron.text().strip(),
            "enabled": self.enabled.isChecked(),
            "source_group_ids": self.checked_groups(),
        }

    def save(self) -> None:
        body = self.body()
        if self.schedule is None:
            coro = self.ctx.schedules.create_schedule(self.host_id, body, OPERATOR)
            what = "adding a schedule"
        else:
            coro = self.ctx.schedules.update_schedule(
                self.host_id, self.schedule.id, body, OPERATOR
            )
            what = "saving the schedule"
        self.submit(coro, what)


__all__ = ["ScheduleDialog", "run_time"]
