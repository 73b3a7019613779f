"""Errors the operator must see: a failed action, an unhandled exception.

Never a silent crash, and never a wall of dialogs either: one dialog at a
time; errors arriving while it is open are appended to it and counted.
Dialogs are non-modal (``show()``), so the event loop — and with it the
fleet's control plane — keeps running while the operator reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

log = logging.getLogger(__name__)

# Past this many, further errors are only counted (they are all in the log).
MAX_DETAILS = 20


@dataclass(frozen=True)
class ReportedError:
    title: str
    message: str
    details: str | None
    at: float


class ErrorReporter(QObject):
    """Shows errors in a dialog; keeps what it showed for tests and a later look."""

    reported = Signal(object)  # ReportedError

    def __init__(self, parent_window: QWidget | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._parent_window = parent_window
        self._dialog: QMessageBox | None = None
        self._pending: list[ReportedError] = []
        self._suppressed = 0
        self.history: list[ReportedError] = []

    @property
    def dialog(self) -> QMessageBox | None:
        return self._dialog

    def set_parent_window(self, window: QWidget | None) -> None:
        self._parent_window = window

    def action_failed(self, what: str, message: str) -> None:
        """Slot for ``AsyncRunner.failed``: an operator action did not work."""
        self.report(f"Could not finish: {what}", message)

    def unhandled(self, summary: str, details: str) -> None:
        """An exception nobody caught: a bug. Say so, and where to find more."""
        self.report(
            "Something went wrong",
            f"{summary}\n\nThe app keeps running; this is probably a bug. "
            "The details below are also in the log.",
            details,
        )

    def report(self, title: str, message: str, details: str | None = None) -> None:
        error = ReportedError(title, message, details, time.time())
        self.history.append(error)
        del self.history[:-100]
        self.reported.emit(error)
        if QApplication.instance() is None:
            log.error("%s: %s", title, message)
            return
        if self._dialog is not None and self._dialog.isVisible():
            self._append(error)
            return
        self._open(error)

    def _open(self, error: ReportedError) -> None:
        self._pending = [error]
        self._suppressed = 0
        box = QMessageBox(self._parent_window)
        box.setObjectName("errorDialog")
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle(f"restic-manager — {error.title}")
        box.setText(error.title)
        box.setInformativeText(error.message)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if error.details:
            box.setDetailedText(error.details)
        box.setStandardButtons(QMessageBox.StandardButton.Close)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._closed)
        self._dialog = box
        box.show()
        box.raise_()

    def _append(self, error: ReportedError) -> None:
        box = self._dialog
        assert box is not None
        if len(self._pending) >= MAX_DETAILS:
            self._suppressed += 1
        else:
            self._pending.append(error)
        count = len(self._pending) + self._suppressed
        box.setText(f"{count} errors")
        first = self._pending[0]
        box.setInformativeText(
            f"{first.title}: {first.message}\n\n…and {count - 1} more (details below)."
        )
        parts = [
            f"{e.title}: {e.message}" + (f"\n{e.details}" if e.details else "")
            for e in self._pending
        ]
        if self._suppressed:
            parts.append(f"…{self._suppressed} more, in the log.")
        box.setDetailedText("\n\n".join(parts))

    def _closed(self, *_: object) -> None:
        self._dialog = None
        self._pending = []
        self._suppressed = 0
