"""The live retention/schedule conflict check of the editing dialogs, off the loop.

``find_conflicts`` is pure but not cheap: sampling a cron expression's
shortest interval costs tens of milliseconds. Run per keystroke on the event
loop it would stutter the window, so it is debounced and run in a worker
thread; only the newest request's answer is shown.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import QLabel

from server_core.schedule_conflicts import find_conflicts
from server_core.views import ConflictView, ScheduleView, SourceGroupView
from ui_qt.host_tabs.common import AMBER, guarded
from ui_qt.tasks import AsyncRunner

DELAY_MS = 200

Select = Callable[[list[ConflictView]], list[ConflictView]]


def bullets(items: list[str]) -> str:
    """A tight HTML list (Qt's default indents and spaces it generously)."""
    lis = "".join(f"<li>{html.escape(i)}</li>" for i in items)
    return f'<ul style="margin-left: -24px; margin-top: 2px; margin-bottom: 0">{lis}</ul>'


class ConflictPreview(QObject):
    def __init__(self, runner: AsyncRunner, title: str, parent: QObject) -> None:
        super().__init__(parent)
        self.runner = runner
        self.title = title
        self.label = QLabel()
        self.label.setObjectName("conflictPreview")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setStyleSheet(f"color: {AMBER};")
        self.label.hide()
        self.shown: list[ConflictView] = []
        self.pending = False
        self._seq = 0
        self._args: tuple[list[SourceGroupView], list[ScheduleView], Select] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DELAY_MS)
        self._timer.timeout.connect(self._run)

    def request(
        self, groups: list[SourceGroupView], schedules: list[ScheduleView], select: Select
    ) -> None:
        self._args = (list(groups), list(schedules), select)
        self.pending = True
        self._timer.start()

    def clear(self) -> None:
        self._timer.stop()
        self._seq += 1
        self._args = None
        self.pending = False
        self._show([])

    def _run(self) -> None:
        if self._args is None:
            return
        groups, schedules, select = self._args
        self._seq += 1
        seq = self._seq

        def done(found: list[ConflictView]) -> None:
            if seq == self._seq:
                self.pending = False
                self._show(select(found))

        def failed(_exc: Exception) -> None:
            if seq == self._seq:  # a preview only: the service decides on save
                self.pending = False
                self._show([])

        self.runner.run(
            asyncio.to_thread(find_conflicts, groups, schedules),
            what="checking for schedule conflicts",
            on_done=guarded(self.label, done),
            on_error=guarded(self.label, failed),
        )

    def _show(self, conflicts: list[ConflictView]) -> None:
        self.shown = conflicts
        if not conflicts:
            self.label.hide()
            return
        self.label.setText(f"⚠ {self.title}:" + bullets([c.message for c in conflicts]))
        self.label.show()
