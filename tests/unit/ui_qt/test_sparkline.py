"""The fleet size sparkline: point placement and painting (real QPainter on an image)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QImage, QPainter

from ui_qt.widgets.sparkline import paint_sparkline, spark_points


def test_points_span_the_rect_and_skip_missing_days() -> None:
    rect = QRectF(0, 0, 58, 20)
    points = spark_points([10, None, 30, 20], rect)
    assert [(p.x(), p.y()) for p in points] == [
        (0.0, 20.0),  # the minimum at the bottom
        (38.666666666666664, 0.0),  # slot 2 of 4, the maximum at the top
        (58.0, 10.0),
    ]


def test_a_flat_or_empty_history() -> None:
    rect = QRectF(0, 0, 30, 10)
    assert [p.y() for p in spark_points([5, 5, 5], rect)] == [5.0, 5.0, 5.0]
    assert spark_points([], rect) == []
    assert spark_points([None] * 30, rect) == []


def test_a_nearly_flat_series_is_not_blown_up_to_full_height() -> None:
    # 1 % of change: drawn within the middle tenth, not from bottom to top.
    ys = [p.y() for p in spark_points([1000, 1010, 1000], QRectF(0, 0, 30, 100))]
    assert 9 < max(ys) - min(ys) < 10
    assert all(45 <= y <= 55 for y in ys)


def test_painting_draws_in_the_given_colour(qapp: Any) -> None:
    image = QImage(80, 24, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    drew = paint_sparkline(painter, QRectF(4, 4, 64, 16), [1, 2, 3, 2, 5], QColor("#ff0000"))
    nothing = paint_sparkline(painter, QRectF(4, 4, 64, 16), [None, None], QColor("#ff0000"))
    painter.end()
    assert drew and not nothing
    reddish = sum(
        1
        for x in range(80)
        for y in range(24)
        if (c := image.pixelColor(x, y)).red() > 200 and c.green() < 120 and c.blue() < 120
    )
    assert reddish > 40
