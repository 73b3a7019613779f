"""Small pieces the Settings pages share."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QMessageBox, QPushButton, QWidget

from ui_qt.context import UiContext

COPIED_FEEDBACK_MS = 1500


def api_url(ctx: UiContext) -> str | None:
    """The operator API listener's base URL, when the control plane reports it."""
    return ctx.server_info().api_url


def confirm(
    parent: QWidget,
    title: str,
    text: str,
    ok_text: str,
    object_name: str,
    on_ok: Callable[[], None],
) -> QMessageBox:
    """A window-modal "<ok_text> / Cancel" question (``open()``: no nested loop)."""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        title,
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        parent,
    )
    box.setObjectName(object_name)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    yes = box.button(QMessageBox.StandardButton.Yes)
    yes.setText(ok_text)
    box.buttonClicked.connect(lambda button: on_ok() if button is yes else None)
    box.open()
    return box


class CopyableField(QWidget):
    """A read-only (optionally monospace) value with a Copy button."""

    def __init__(self, object_name: str, what: str, *, mono: bool = False) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setObjectName(object_name)
        self.edit.setReadOnly(True)
        if mono:
            self.edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName(f"{object_name}Copy")
        self.copy_button.setToolTip(f"Copy the {what} to the clipboard")
        self.copy_button.setAccessibleName(f"Copy {what}")
        self.copy_button.clicked.connect(self.copy)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.copy_button)

    def set_text(self, text: str) -> None:
        self.edit.setText(text)
        self.edit.setCursorPosition(0)
        self.copy_button.setEnabled(bool(text))

    def text(self) -> str:
        return self.edit.text()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.edit.text())
        self.copy_button.setText("Copied ✓")
        QTimer.singleShot(COPIED_FEEDBACK_MS, self, lambda: self.copy_button.setText("Copy"))
