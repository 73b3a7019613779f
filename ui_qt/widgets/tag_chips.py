"""Toggleable tag chips: one checkable button per tag, wrapping onto new lines."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget

from ui_qt.widgets.flow_layout import FlowLayout

# Palette roles only, so chips follow the light/dark palette.
CHIP_STYLE = """
QToolButton#tagChip {
    border: 1px solid palette(mid);
    border-radius: 10px;
    padding: 2px 10px;
    background: palette(base);
    color: palette(text);
}
QToolButton#tagChip:hover { border-color: palette(highlight); }
QToolButton#tagChip:checked {
    background: palette(highlight);
    color: palette(highlighted-text);
    border-color: palette(highlight);
}
"""


class TagChips(QWidget):
    """``set_tags(...)`` shows one chip per tag (plus any selected tag no
    longer present, so it can still be switched off); ``selection_changed``
    carries the set of checked tags."""

    selection_changed = Signal(object)  # set[str]

    def __init__(self, parent: QWidget | None = None, label: str = "Tags:") -> None:
        super().__init__(parent)
        self._selected: set[str] = set()
        self._chips: dict[str, QToolButton] = {}
        self._label = QLabel(label)
        self._label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self._label.setContentsMargins(0, 5, 0, 0)
        self._flow_host = QWidget()
        self._flow = FlowLayout(self._flow_host, spacing=6)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self._label, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self._flow_host, 1)
        self.setStyleSheet(CHIP_STYLE)
        self.setVisible(False)

    def tags(self) -> list[str]:
        return list(self._chips)

    def chip(self, tag: str) -> QToolButton | None:
        return self._chips.get(tag)

    def selected(self) -> set[str]:
        return set(self._selected)

    def set_selected(self, tags: Iterable[str]) -> None:
        """Select exactly ``tags`` (quietly: no ``selection_changed``)."""
        self._selected = set(tags)
        self._rebuild(list(self._chips))

    def clear_selection(self) -> None:
        if self._selected:
            self._selected = set()
            self._rebuild(list(self._chips))
            self.selection_changed.emit(set())

    def set_tags(self, tags: Iterable[str]) -> None:
        self._rebuild(list(tags))

    def _rebuild(self, present: list[str]) -> None:
        wanted = sorted(set(present) | self._selected, key=str.casefold)
        if wanted != list(self._chips):
            for chip in self._chips.values():
                self._flow.removeWidget(chip)
                chip.deleteLater()
            self._chips = {}
            for tag in wanted:
                chip = QToolButton()
                chip.setObjectName("tagChip")
                chip.setText(tag)
                chip.setCheckable(True)
                chip.setCursor(Qt.CursorShape.PointingHandCursor)
                chip.setToolTip(f"Show only hosts tagged “{tag}” (combines with other chips)")
                chip.toggled.connect(lambda on, t=tag: self._on_toggled(t, on))
                self._flow.addWidget(chip)
                self._chips[tag] = chip
        for tag, chip in self._chips.items():
            chip.blockSignals(True)
            chip.setChecked(tag in self._selected)
            chip.blockSignals(False)
        self.setVisible(bool(self._chips))
        self._flow_host.updateGeometry()

    def _on_toggled(self, tag: str, on: bool) -> None:
        if on:
            self._selected.add(tag)
        else:
            self._selected.discard(tag)
        self.selection_changed.emit(set(self._selected))
