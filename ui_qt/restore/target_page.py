"""Second page of the restore browser: where the files go."""

from __future__ import annotations

import re
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ui_qt.host_tabs.common import RED, error_label, set_error

# Absolute POSIX paths, ~ and $HOME (expanded by the agent), or a Windows drive.
_TARGET = re.compile(r"^(/|~(/|$)|\$HOME(/|$)|[A-Za-z]:[\\/])")
_ROOT = re.compile(r"^(/+|[A-Za-z]:[\\/]*)$")


@dataclass(frozen=True)
class Target:
    target_dir: str | None = None  # None: the agent's default under its restore dir
    in_place: bool = False
    confirm_hostname: str | None = None

    def describe(self, host_name: str, short_id: str) -> str:
        if self.in_place:
            return f"in place on {host_name}: the original paths are overwritten"
        if self.target_dir is None:
            return (
                f"a new directory on {host_name}, under the agent's restore directory "
                f"({short_id}-<date and time>)"
            )
        return f"{self.target_dir} on {host_name} (created if missing)"


def target_dir_problem(text: str) -> str | None:
    """Why ``text`` cannot be a target directory, or None (empty means the default)."""
    text = text.strip()
    if not text:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "The directory must be plain text on one line (no control characters)."
    if _ROOT.match(text):
        return "That is the root of the host: to put files back where they were, choose In place."
    if not _TARGET.match(text):
        return "Give an absolute path (for example /srv/restore), or start it with ~ or $HOME."
    return None


class TargetPage(QWidget):
    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.host_name = ""
        self.short_id = ""
        self.heading = QLabel("Where should the files go?")
        heading_font = self.heading.font()
        heading_font.setBold(True)
        heading_font.setPointSizeF(heading_font.pointSizeF() * 1.2)
        self.heading.setFont(heading_font)

        self.new_dir = QRadioButton(
            "Into a new directory on the host (nothing existing is touched)"
        )
        self.new_dir.setObjectName("targetNewDir")
        self.new_dir.setChecked(True)
        self.target_dir = QLineEdit()
        self.target_dir.setObjectName("targetDir")
        self.target_dir.setClearButtonEnabled(True)
        self.target_dir.textChanged.connect(self._changed)
        self.dir_hint = QLabel()
        self.dir_hint.setObjectName("targetDirHint")
        self.dir_hint.setWordWrap(True)
        self.dir_hint.setEnabled(False)
        self.dir_error = error_label()
        self.dir_error.setObjectName("targetDirError")

        self.in_place = QRadioButton("In place: put the files back where they were")
        self.in_place.setObjectName("targetInPlace")
        self.warning = QLabel()
        self.warning.setObjectName("inPlaceWarning")
        self.warning.setWordWrap(True)
        self.warning.setTextFormat(Qt.TextFormat.RichText)
        self.warning.setStyleSheet(
            f"QLabel {{ border: 1px solid {RED}; border-radius: 4px; padding: 8px; }}"
        )
        self.confirm_label = QLabel()
        self.confirm_label.setObjectName("confirmHostLabel")
        self.confirm = QLineEdit()
        self.confirm.setObjectName("confirmHostname")
        self.confirm.setMaximumWidth(320)
        self.confirm.textChanged.connect(self._changed)
        self.confirm_note = QLabel()
        self.confirm_note.setObjectName("confirmHostNote")
        self.confirm_note.setStyleSheet(f"color: {RED};")

        group = QButtonGroup(self)
        group.addButton(self.new_dir)
        group.addButton(self.in_place)
        self.new_dir.toggled.connect(self._changed)

        self.in_place_box = QFrame()
        box = QVBoxLayout(self.in_place_box)
        box.setContentsMargins(24, 0, 0, 0)
        box.addWidget(self.warning)
        box.addWidget(self.confirm_label)
        box.addWidget(self.confirm)
        box.addWidget(self.confirm_note)
        self.new_dir_box = QFrame()
        dir_box = QVBoxLayout(self.new_dir_box)
        dir_box.setContentsMargins(24, 0, 0, 0)
        dir_box.addWidget(self.target_dir)
        dir_box.addWidget(self.dir_hint)
        dir_box.addWidget(self.dir_error)

        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addSpacing(6)
        layout.addWidget(self.new_dir)
        layout.addWidget(self.new_dir_box)
        layout.addSpacing(10)
        layout.addWidget(self.in_place)
        layout.addWidget(self.in_place_box)
        layout.addStretch(1)
        self._changed()

    def set_context(self, host_name: str, short_id: str) -> None:
        self.host_name = host_name
        self.short_id = short_id
        self.target_dir.setPlaceholderText(
            f"leave empty for the default: <agent's restore directory>/{short_id}-<date and time>"
        )
        self.dir_hint.setText(
            f"Leave it empty to use the agent's restore directory on {host_name}, or type a "
            "path there, e.g. ~/restored or /srv/restore/today (~ and $HOME are those of the "
            "agent's user). The agent creates the directory; files keep their full paths "
            "below it."
        )
        self.warning.setText(
            f"<b>⚠ Restoring in place overwrites files on {host_name}.</b> Every selected file "
            "is written back to its original path: changes made since the snapshot are "
            "lost, and this cannot be undone. Files that are not in the snapshot are left as "
            "they are."
        )
        self.confirm_label.setText(f"Type the host name <b>{host_name}</b> to confirm:")
        self._changed()

    def _changed(self, *_args: object) -> None:
        in_place = self.in_place.isChecked()
        self.in_place_box.setEnabled(in_place)
        self.new_dir_box.setEnabled(not in_place)
        self.warning.setVisible(in_place)
        problem = None if in_place else target_dir_problem(self.target_dir.text())
        set_error(self.dir_error, problem)
        typed = self.confirm.text()
        # Only once it cannot become the name any more: no error while typing it.
        if in_place and typed and not self.host_name.startswith(typed):
            self.confirm_note.setText(f"That is not {self.host_name} (it must match exactly).")
        else:
            self.confirm_note.setText("")
        self.changed.emit()

    def target(self) -> Target | None:
        """The chosen target, or None while the page is incomplete or wrong."""
        if self.in_place.isChecked():
            if not self.host_name or self.confirm.text() != self.host_name:
                return None
            return Target(in_place=True, confirm_hostname=self.confirm.text())
        text = self.target_dir.text().strip()
        if target_dir_problem(text) is not None:
            return None
        return Target(target_dir=text or None)
