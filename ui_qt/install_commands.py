"""Install commands the operator copies onto a new host: Linux, Windows, certificate pin.

Used by the Add host dialog; any view that mints an enrolment token can show
one of these panels.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication, QResizeEvent, QTextOption
from PySide6.QtWidgets import (
    QGridLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

COPIED_FEEDBACK_MS = 1500


class CommandBox(QPlainTextEdit):
    """Read-only monospace text, wrapped anywhere and as tall as its wrapped lines
    (up to ``max_lines``), so a long command is seen whole without scrolling."""

    def __init__(self, lines: int, max_lines: int = 8, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._min_lines = lines
        self._max_lines = max_lines
        self.setReadOnly(True)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setWordWrapMode(QTextOption.WrapMode.WrapAnywhere)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.textChanged.connect(self._fit)
        self._fit()

    def wrapped_lines(self) -> int:
        """Lines the text takes at the current width (the font is monospace, so
        this is arithmetic; the document's own layout is only updated lazily)."""
        usable = self.viewport().width() - 2 * self.document().documentMargin()
        per_line = max(1, int(usable // max(1.0, self.fontMetrics().horizontalAdvance("x"))))
        text = self.toPlainText()
        return sum(max(1, math.ceil(len(line) / per_line)) for line in text.split("\n"))

    def _fit(self) -> None:
        lines = min(max(self.wrapped_lines(), self._min_lines), self._max_lines)
        margins = self.contentsMargins()
        doc_margin = 2 * self.document().documentMargin()
        height = self.fontMetrics().lineSpacing() * lines + doc_margin
        height += margins.top() + margins.bottom() + 2
        if int(height) != self.height():
            self.setFixedHeight(int(height))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self._fit()


class CopyButton(QPushButton):
    """Copies a text source to the clipboard and says so for a moment."""

    def __init__(self, source: QPlainTextEdit, what: str, parent: QWidget | None = None) -> None:
        super().__init__("Copy", parent)
        self._source = source
        self.setToolTip(f"Copy the {what} to the clipboard")
        self.setAccessibleName(f"Copy {what}")
        self.clicked.connect(self.copy)

    def copy(self) -> None:
        clipboard = QGuiApplication.clipboard()
        clipboard.setText(self._source.toPlainText())
        self.setText("Copied ✓")
        QTimer.singleShot(COPIED_FEEDBACK_MS, self, lambda: self.setText("Copy"))


class InstallCommandsPanel(QWidget):
    """The Linux and Windows install commands and the certificate pin, each with Copy."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)

        self.linux = CommandBox(lines=3)
        self.linux.setObjectName("linuxCommand")
        self.linux.setAccessibleName("Linux install command")
        self.windows = CommandBox(lines=3)
        self.windows.setObjectName("windowsCommand")
        self.windows.setAccessibleName("Windows install command")
        self.pin = CommandBox(lines=1)
        self.pin.setObjectName("certificatePin")
        self.pin.setAccessibleName("Certificate pin")
        self.copy_linux = CopyButton(self.linux, "Linux command")
        self.copy_windows = CopyButton(self.windows, "Windows command")
        self.copy_pin = CopyButton(self.pin, "certificate pin")

        rows = (
            ("Linux — as root:", self.linux, self.copy_linux),
            ("Windows — PowerShell as Administrator:", self.windows, self.copy_windows),
            ("Certificate pin (SHA-256):", self.pin, self.copy_pin),
        )
        for i, (caption, box, button) in enumerate(rows):
            label = QLabel(caption)
            label.setBuddy(box)
            grid.addWidget(label, 2 * i, 0, 1, 2)
            grid.addWidget(box, 2 * i + 1, 0)
            grid.addWidget(button, 2 * i + 1, 1, Qt.AlignmentFlag.AlignTop)
        grid.setColumnStretch(0, 1)
        self.pin.setToolTip(
            "The agent refuses a server whose certificate does not match this fingerprint. "
            "It is also shown in Settings."
        )

    def set_commands(self, linux: str, windows: str, pin: str) -> None:
        self.linux.setPlainText(linux)
        self.windows.setPlainText(windows)
        self.pin.setPlainText(pin)

    def set_usable(self, usable: bool) -> None:
        """Grey the commands out (a spent token) — they stay readable, Copy is off."""
        for box in (self.linux, self.windows):
            box.setEnabled(usable)
        for button in (self.copy_linux, self.copy_windows):
            button.setEnabled(usable)
