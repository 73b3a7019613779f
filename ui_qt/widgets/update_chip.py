"""The fleet table's "update available" chip, drawn after the agent version.

The delegate paints the cell as usual (the version text) and, when the
model's role answers a version, a small rounded chip to its right: "update"
with the target version where it fits. One rounded rectangle and a short
text per visible cell: cheap for a thousand rows.
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem, QWidget

Index = QModelIndex | QPersistentModelIndex

CHIP_COLOUR = "#2f7fd8"
PAD = 6
GAP = 8


def chip_text(version: str, fm: QFontMetrics, room: float) -> str | None:
    """The longest label that fits ``room`` pixels: "update → 1.2.0", "update", or none."""
    for text in (f"update → {version}", "update"):
        if fm.horizontalAdvance(text) + 2 * PAD <= room:
            return text
    return None


class UpdateChipDelegate(QStyledItemDelegate):
    def __init__(self, role: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        size = super().sizeHint(option, index)
        version = index.data(self.role)
        if not version:
            return size
        label = f"update → {version}"
        return QSize(
            size.width() + option.fontMetrics.horizontalAdvance(label) + 2 * PAD + GAP,
            size.height(),
        )

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        super().paint(painter, option, index)
        version = index.data(self.role)
        if not isinstance(version, str) or not version:
            return
        fm = option.fontMetrics
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        rect = QRectF(option.rect)
        left = rect.left() + 4 + fm.horizontalAdvance(text) + GAP
        label = chip_text(version, fm, rect.right() - 4 - left)
        if label is None:
            return  # too narrow: the tooltip still says it
        chip = QRectF(
            left, rect.top() + 3, fm.horizontalAdvance(label) + 2 * PAD, rect.height() - 6
        )
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(CHIP_COLOUR))
        painter.drawRoundedRect(chip, chip.height() / 2, chip.height() / 2)
        painter.setPen(QColor("white"))
        painter.drawText(chip, int(Qt.AlignmentFlag.AlignCenter), label)
        painter.restore()
