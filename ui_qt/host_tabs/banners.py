"""Coloured notices above a tab's content: the schedule conflicts and the stale lock.

Tinted, not filled, so the text keeps the palette's colour and stays
readable in light and dark themes.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from server_core.views import ConflictView
from ui_qt.host_tabs.common import AMBER


class Banner(QFrame):
    """A title, a body and optional buttons on the right; hidden until shown."""

    def __init__(self, object_name: str, colour: str = AMBER) -> None:
        super().__init__()
        self.setObjectName(object_name)
        tint = QColor(colour)
        tint.setAlpha(38)
        rgba = f"rgba({tint.red()}, {tint.green()}, {tint.blue()}, {tint.alpha()})"
        self.setStyleSheet(
            f"QFrame#{object_name} {{ background: {rgba}; border: 1px solid {colour};"
            " border-left: 5px solid " + colour + "; border-radius: 3px; }"
        )
        self.title = QLabel()
        self.title.setObjectName(f"{object_name}Title")
        self.title.setStyleSheet(f"color: {colour}; font-weight: bold;")
        self.body = QLabel()
        self.body.setObjectName(f"{object_name}Body")
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text = QVBoxLayout()
        text.setSpacing(3)
        text.addWidget(self.title)
        text.addWidget(self.body)
        self.buttons = QHBoxLayout()
        self.buttons.setSpacing(6)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 7, 10, 7)
        row.addLayout(text, 1)
        row.addLayout(self.buttons)
        self.hide()

    def add_button(self, widget: QWidget) -> None:
        self.buttons.addWidget(widget, 0, Qt.AlignmentFlag.AlignVCenter)


class ConflictsBanner(Banner):
    """Retention/schedule combinations that will not do what they say.

    ``group_names`` turn ids into names for the operator; the message from
    the service is shown as it is."""

    def __init__(self, object_name: str = "conflictsBanner") -> None:
        super().__init__(object_name, AMBER)
        self.conflicts: list[ConflictView] = []

    def set_conflicts(self, conflicts: list[ConflictView]) -> None:
        self.conflicts = list(conflicts)
        if not conflicts:
            self.hide()
            return
        n = len(conflicts)
        self.title.setText(
            "⚠ "
            + ("1 retention/schedule conflict" if n == 1 else f"{n} retention/schedule conflicts")
        )
        items = "".join(f"<li>{html.escape(c.message)}</li>" for c in conflicts)
        self.body.setText(
            f'<ul style="margin-left: -24px; margin-top: 0; margin-bottom: 0">{items}</ul>'
        )  # a tight list: Qt's default indents and spaces it generously
        self.show()
