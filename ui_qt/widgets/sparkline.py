"""A 30-day repository-size sparkline, drawn in the fleet table's size cell.

The delegate paints the cell as usual (the size text, right-aligned by the
model) and the trend line in the space to its left, from the model's
``SPARKLINE_ROLE`` (daily sizes, oldest first, None for a day without a
sample). Cheap enough for a thousand rows: a short path per visible cell.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

Index = QModelIndex | QPersistentModelIndex

SPARK_WIDTH = 64
MIN_SPAN = 0.1  # of the largest value
LINE_COLOUR = "#2f7fd8"


def spark_points(values: Sequence[int | None], rect: QRectF) -> list[QPointF]:
    """The known values as points across ``rect`` (slot i of len(values) → x),
    scaled between their minimum and maximum (widened to ``MIN_SPAN`` of the
    maximum, centred); a flat series sits mid-height."""
    n = len(values)
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if n == 0 or not known:
        return []
    low = float(min(v for _i, v in known))
    high = float(max(v for _i, v in known))
    # Scale to at least MIN_SPAN of the largest value, centred: a repository
    # that barely changes draws a calm line, not its noise blown up to full height.
    span = max(high - low, abs(high) * MIN_SPAN)
    low -= (span - (high - low)) / 2
    step = rect.width() / max(n - 1, 1)
    points = []
    for i, v in known:
        frac = 0.5 if span == 0 else (v - low) / span
        points.append(QPointF(rect.left() + i * step, rect.bottom() - frac * rect.height()))
    return points


def paint_sparkline(
    painter: QPainter, rect: QRectF, values: Sequence[int | None], colour: QColor
) -> bool:
    """Draw the line (and a dot on the latest value); False if there was nothing to draw."""
    points = spark_points(values, rect)
    if not points:
        return False
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    if len(points) > 1:
        path = QPainterPath(points[0])
        for point in points[1:]:
            path.lineTo(point)
        painter.setPen(QPen(colour, 1.4))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawEllipse(points[-1], 2.2, 2.2)
    painter.restore()
    return True


class SparklineDelegate(QStyledItemDelegate):
    def __init__(self, role: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        size = super().sizeHint(option, index)
        return QSize(size.width() + SPARK_WIDTH + 10, size.height())

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        super().paint(painter, option, index)
        values = index.data(self.role)
        if not isinstance(values, list | tuple) or not values:
            return
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        text_width = option.fontMetrics.horizontalAdvance(text) + 12
        rect = QRectF(option.rect)
        room = rect.width() - text_width - 8
        if room < 24:
            return  # the column is too narrow: the size text wins
        width = min(SPARK_WIDTH, room)
        area = QRectF(rect.left() + 6, rect.top() + 5, width, rect.height() - 10)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        palette: QPalette = option.palette
        colour = (
            palette.color(QPalette.ColorRole.HighlightedText) if selected else QColor(LINE_COLOUR)
        )
        paint_sparkline(painter, area, values, colour)
