"""Add / edit a source group: what to back up, how long to keep it, retries, hooks.

The body sent is the API's JSON shape, so the service validates it exactly
as it validates API calls; its ``InvalidInput.field`` puts the message under
the field it names. Retention conflicts with the host's schedules are
previewed while typing (``find_conflicts`` is pure).
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import ConflictView, ScheduleView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import AMBER
from ui_qt.host_tabs.conflict_preview import ConflictPreview
from ui_qt.host_tabs.forms import SavingDialog

KEEP_FIELDS = (
    ("keep_last", "Last", "Keep the N most recent snapshots"),
    ("keep_hourly", "Hourly", "Keep the last snapshot of each of the last N hours"),
    ("keep_daily", "Daily", "Keep the last snapshot of each of the last N days"),
    ("keep_weekly", "Weekly", "Keep the last snapshot of each of the last N weeks"),
    ("keep_monthly", "Monthly", "Keep the last snapshot of each of the last N months"),
    ("keep_yearly", "Yearly", "Keep the last snapshot of each of the last N years"),
)

HOOK_WARNING = (
    "⚠ Hooks run on the host as the agent's service user — <b>root</b> on Linux, "
    "<b>SYSTEM</b> on Windows — through <code>/bin/sh -c</code> (<code>cmd.exe /C</code> "
    "on Windows). A failing pre-hook aborts the backup; the post-hook always runs, with "
    "<code>RM_JOB_STATUS</code> set. Only enter commands you would run as that user."
)


def lines(edit: QPlainTextEdit, *, strip: bool = True) -> list[str]:
    """Non-empty lines, one entry each (paths keep inner spaces)."""
    out = []
    for line in edit.toPlainText().splitlines():
        text = line.strip() if strip else line.rstrip()
        if text.strip():
            out.append(text)
    return out


def mono_edit(placeholder: str, height: int) -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setPlaceholderText(placeholder)
    edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    edit.setTabChangesFocus(True)
    edit.setMinimumHeight(height)
    return edit


def retention_text(retention: dict[str, Any]) -> str:
    """``{"keep_daily": 7, "keep_weekly": 4}`` → ``daily 7, weekly 4``."""
    parts = []
    for key, label, _tip in KEEP_FIELDS:
        value = retention.get(key)
        if value:
            parts.append(f"{label.lower()} {value}")
    within = retention.get("keep_within")
    if within:
        parts.append(f"within {within}")
    return ", ".join(parts) if parts else "keep everything"


class SourceGroupDialog(SavingDialog):
    """``group`` None adds a group; otherwise edits it (a full replace)."""

    def __init__(
        self,
        ctx: UiContext,
        host_id: int,
        group: SourceGroupView | None,
        groups: list[SourceGroupView],
        schedules: list[ScheduleView],
        parent: QWidget | None = None,
    ) -> None:
        title = f"Edit source group {group.name}" if group else "Add a source group"
        super().__init__(ctx.runner, title, "Save" if group else "Add group", parent)
        self.setObjectName("sourceGroupDialog")
        self.ctx = ctx
        self.host_id = host_id
        self.group = group
        self.other_groups = [g for g in groups if group is None or g.id != group.id]
        self.schedules = schedules

        # -- what ------------------------------------------------------------
        self.name = QLineEdit()
        self.name.setObjectName("groupName")
        self.name.setPlaceholderText("e.g. system, databases, home")
        self.name.setToolTip("Unique on this host; snapshots of the group carry it as a tag")
        self.includes = mono_edit("/etc\n/home\n/var/lib/postgresql", 110)
        self.includes.setObjectName("groupIncludes")
        self.includes.setToolTip("Absolute paths on the host, one per line")
        self.excludes = mono_edit("*.tmp\n/home/*/.cache\nnode_modules", 80)
        self.excludes.setObjectName("groupExcludes")
        self.excludes.setToolTip("restic --exclude patterns, one per line")
        what = QGroupBox("What to back up")
        form = QFormLayout(what)
        form.addRow("Name", self.errors.wrap("name", self.name))
        form.addRow("Include paths", self.errors.wrap("includes", self.includes))
        note = QLabel("One absolute path per line, as seen on the host.")
        note.setEnabled(False)
        form.addRow("", note)
        form.addRow("Exclude patterns", self.errors.wrap("excludes", self.excludes))

        # -- retention -------------------------------------------------------------
        self.keep: dict[str, QSpinBox] = {}
        keep = QGroupBox("Retention (applied by forget)")
        grid = QGridLayout(keep)
        grid.setHorizontalSpacing(10)
        for n, (key, label, tip) in enumerate(KEEP_FIELDS):
            spin = QSpinBox()
            spin.setObjectName(key)
            spin.setRange(0, 9999)
            spin.setSpecialValueText("unset")
            spin.setToolTip(tip + " (unset: not used)")
            spin.setMinimumWidth(90)
            self.keep[key] = spin
            row, col = divmod(n, 2)
            text = QLabel(label)
            text.setToolTip(tip)
            grid.addWidget(text, row * 2, col * 2)
            grid.addWidget(self.errors.wrap(key, spin, f"retention.{key}"), row * 2, col * 2 + 1)
        self.keep_within = QLineEdit()
        self.keep_within.setObjectName("keep_within")
        self.keep_within.setPlaceholderText("e.g. 30d, 1y6m (optional)")
        self.keep_within.setToolTip(
            "Keep every snapshot younger than this duration (y, m, d, h), relative to the newest"
        )
        grid.addWidget(QLabel("Within"), 6, 0)
        grid.addWidget(
            self.errors.wrap("keep_within", self.keep_within, "retention.keep_within"), 6, 1, 1, 3
        )
        self.retention_error = self.errors.wrap("retention", QWidget())
        grid.addWidget(self.retention_error, 7, 0, 1, 4)
        self.retention_hint = QLabel()
        self.retention_hint.setObjectName("retentionHint")
        self.retention_hint.setWordWrap(True)
        self.retention_hint.setEnabled(False)
        grid.addWidget(self.retention_hint, 8, 0, 1, 4)

        # -- retry -------------------------------------------------------------------
        self.retry_max = QSpinBox()
        self.retry_max.setObjectName("retry_max")
        self.retry_max.setRange(0, 10)
        self.retry_max.setSpecialValueText("no retries")
        self.retry_max.setSuffix(" retries")
        self.retry_backoff = QSpinBox()
        self.retry_backoff.setObjectName("retry_backoff_seconds")
        self.retry_backoff.setRange(10, 86400)
        self.retry_backoff.setSingleStep(60)
        self.retry_backoff.setSuffix(" s")
        self.retry_backoff.setToolTip(
            "Wait before the first retry; each further retry waits longer (10 s … 24 h)"
        )
        retry = QGroupBox("Retry a failed backup")
        retry_form = QFormLayout(retry)
        retry_form.addRow("At most", self.errors.wrap("retry_max", self.retry_max))
        retry_form.addRow("Back off", self.errors.wrap("retry_backoff_seconds", self.retry_backoff))

        # -- hooks ---------------------------------------------------------------------
        self.pre_hook = mono_edit("e.g. pg_dump -Fc mydb > /var/backups/mydb.dump", 56)
        self.pre_hook.setObjectName("pre_hook")
        self.pre_hook.setMaximumHeight(90)
        self.post_hook = mono_edit('e.g. curl -fsS "https://hc.example/ping/$RM_JOB_STATUS"', 56)
        self.post_hook.setObjectName("post_hook")
        self.post_hook.setMaximumHeight(90)
        hooks = QGroupBox("Hooks (optional; the host's default hooks apply when both are empty)")
        hooks_layout = QVBoxLayout(hooks)
        warning = hook_warning()
        warning.setObjectName("groupHookWarning")
        hooks_layout.addWidget(warning)
        hook_row = QHBoxLayout()
        for title, name, edit in (
            ("Before the backup", "pre_hook", self.pre_hook),
            ("After the backup", "post_hook", self.post_hook),
        ):
            column = QVBoxLayout()
            column.addWidget(QLabel(title))
            column.addWidget(self.errors.wrap(name, edit))
            hook_row.addLayout(column)
        hooks_layout.addLayout(hook_row)

        # -- conflicts preview ------------------------------------------------------------
        self.preview = ConflictPreview(ctx.runner, "With the current schedules", self)
        self.conflicts = self.preview.label
        self.conflicts.setObjectName("groupConflicts")

        right = QVBoxLayout()
        right.addWidget(keep)
        right.addWidget(retry)
        right.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(what, 3)
        top.addLayout(right, 2)
        self.form_area.addLayout(top)
        self.form_area.addWidget(hooks)
        self.form_area.addWidget(self.conflicts)

        self._fill(group)
        for spin in self.keep.values():
            spin.valueChanged.connect(self._preview)
        self.keep_within.textChanged.connect(self._preview)
        self._preview()
        self.resize(940, self.sizeHint().height() + 40)

    def _fill(self, group: SourceGroupView | None) -> None:
        if group is None:
            self.retry_max.setValue(2)
            self.retry_backoff.setValue(600)
            self.keep["keep_daily"].setValue(7)
            self.keep["keep_weekly"].setValue(4)
            self.keep["keep_monthly"].setValue(6)
            return
        self.name.setText(group.name)
        self.includes.setPlainText("\n".join(group.includes))
        self.excludes.setPlainText("\n".join(group.excludes))
        for key, spin in self.keep.items():
            value = group.retention.get(key)
            spin.setValue(int(value) if isinstance(value, int) and value > 0 else 0)
        self.keep_within.setText(str(group.retention.get("keep_within") or ""))
        self.retry_max.setValue(group.retry_max)
        self.retry_backoff.setValue(group.retry_backoff_seconds)
        self.pre_hook.setPlainText(group.pre_hook or "")
        self.post_hook.setPlainText(group.post_hook or "")

    def retention(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: spin.value() or None for key, spin in self.keep.items()}
        out["keep_within"] = self.keep_within.text().strip() or None
        return out

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name.text().strip(),
            "includes": lines(self.includes),
            "excludes": lines(self.excludes, strip=False),
            "retention": self.retention(),
            "retry_max": self.retry_max.value(),
            "retry_backoff_seconds": self.retry_backoff.value(),
            "pre_hook": self.pre_hook.toPlainText().strip() or None,
            "post_hook": self.post_hook.toPlainText().strip() or None,
        }

    def _preview(self) -> None:
        retention = self.retention()
        if not any(retention.values()):
            self.retention_hint.setText("Nothing set: forget keeps every snapshot of this group.")
        else:
            self.retention_hint.setText(f"Keeps: {retention_text(retention)}.")
        if self.group is None:
            return  # a new group is in no schedule yet
        draft = _draft(self.group, retention)

        def mine(found: list[ConflictView]) -> list[ConflictView]:
            # "not in any schedule" is the Schedules tab's business, not this form's.
            return [
                c
                for c in found
                if c.source_group_id == draft.id and c.kind != "group_not_scheduled"
            ]

        self.preview.request([*self.other_groups, draft], self.schedules, mine)

    def save(self) -> None:
        body = self.body()
        if self.group is None:
            coro = self.ctx.sources.create_group(self.host_id, body, OPERATOR)
            what = f"adding source group {body['name']}"
        else:
            coro = self.ctx.sources.update_group(self.host_id, self.group.id, body, OPERATOR)
            what = f"saving source group {body['name']}"
        self.submit(coro, what)


def _draft(group: SourceGroupView, retention: dict[str, Any]) -> SourceGroupView:
    now = time.time()
    return SourceGroupView(
        id=group.id,
        host_id=group.host_id,
        name=group.name,
        includes=group.includes,
        excludes=group.excludes,
        retention={k: v for k, v in retention.items() if v is not None},
        retry_max=group.retry_max,
        retry_backoff_seconds=group.retry_backoff_seconds,
        has_pre_hook=group.has_pre_hook,
        has_post_hook=group.has_post_hook,
        created_at=group.created_at,
        updated_at=now,
        schedule_ids=group.schedule_ids,
    )


def hook_warning() -> QLabel:
    label = QLabel(HOOK_WARNING)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setStyleSheet(f"color: {AMBER};")
    return label
