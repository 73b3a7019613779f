"""The repository-size trend (QtCharts): on-disk and uncompressed size per day,
with 30 / 90 / 365-day range buttons.

It holds the whole history it is given and only changes the visible range
when a button is pressed, so switching ranges costs no query.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from PySide6.QtCharts import QChart, QChartView, QDateTimeAxis, QLineSeries, QValueAxis
from PySide6.QtCore import QDateTime, QEvent, QMargins, QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QButtonGroup,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from server_core.views import RepoStatsPoint

RANGES = (30, 90, 365)
DISK_COLOUR = "#2f7fd8"
RAW_COLOUR = "#8a8a8a"
UNITS = (("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4))


def day_ms(day: str) -> float:
    """``YYYY-MM-DD`` (UTC) as milliseconds since the epoch, for the date axis."""
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, 12, tzinfo=dt.UTC).timestamp() * 1000


def unit_for(largest: float) -> tuple[str, int]:
    name, size = UNITS[0]
    for name_, size_ in UNITS:
        if largest >= size_:
            name, size = name_, size_
    return name, size


class SizeChart(QWidget):
    def __init__(
        self, parent: QWidget | None = None, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(parent)
        self.setObjectName("sizeChart")
        self._now = now
        self.points: list[RepoStatsPoint] = []
        self.days = RANGES[0]
        self._ready = False

        self.buttons: dict[int, QPushButton] = {}
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        row = QHBoxLayout()
        row.setSpacing(4)
        self.caption = QLabel("Repository size")
        self.caption.setEnabled(False)
        row.addWidget(self.caption)
        row.addStretch(1)
        for days in RANGES:
            button = QPushButton(f"{days} days")
            button.setObjectName(f"range{days}")
            button.setCheckable(True)
            button.setChecked(days == self.days)
            button.setToolTip(f"Show the last {days} days")
            button.clicked.connect(lambda _c=False, d=days: self.set_days(d))
            self.group.addButton(button)
            self.buttons[days] = button
            row.addWidget(button)

        self.disk = QLineSeries()
        self.disk.setName("on disk")
        self.raw = QLineSeries()
        self.raw.setName("uncompressed")
        self.chart = QChart()
        self.chart.addSeries(self.raw)
        self.chart.addSeries(self.disk)
        self.chart.setBackgroundVisible(False)
        self.chart.setMargins(QMargins(2, 2, 2, 2))
        self.chart.legend().setAlignment(Qt.AlignmentFlag.AlignBottom)
        self.x_axis = QDateTimeAxis()
        self.x_axis.setFormat("d MMM")
        self.x_axis.setTickCount(6)
        self.y_axis = QValueAxis()
        self.y_axis.setLabelFormat("%.3g")
        self.y_axis.setTickCount(5)
        self.chart.addAxis(self.x_axis, Qt.AlignmentFlag.AlignBottom)
        self.chart.addAxis(self.y_axis, Qt.AlignmentFlag.AlignLeft)
        for series in (self.disk, self.raw):
            series.attachAxis(self.x_axis)
            series.attachAxis(self.y_axis)
        self.view = QChartView(self.chart)
        self.view.setObjectName("sizeChartView")
        self.view.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.view.setMinimumHeight(220)
        self.view.setStyleSheet("background: transparent")

        self.empty = QLabel(
            "No statistics yet: they are collected after each backup, forget, prune and check."
        )
        self.empty.setObjectName("sizeChartEmpty")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.view)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.stack, 1)
        self._ready = True
        self._style()
        self._redraw()

    def set_points(self, points: list[RepoStatsPoint]) -> None:
        if points != self.points:
            self.points = list(points)
            self._redraw()

    def set_days(self, days: int) -> None:
        self.days = days
        button = self.buttons.get(days)
        if button is not None and not button.isChecked():
            button.setChecked(True)
        self._redraw()

    def visible_points(self) -> list[RepoStatsPoint]:
        start = dt.datetime.fromtimestamp(self._now(), dt.UTC) - dt.timedelta(days=self.days)
        first = start.date().isoformat()
        return [p for p in self.points if p.day > first]

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and self._ready:
            self._style()

    def _style(self) -> None:
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.Text)
        grid = QColor(pal.color(QPalette.ColorRole.Mid))
        grid.setAlpha(110)
        for axis in (self.x_axis, self.y_axis):
            axis.setLabelsColor(text)
            axis.setTitleBrush(text)
            axis.setGridLineColor(grid)
            axis.setLinePenColor(grid)
        self.chart.legend().setLabelColor(text)
        self.disk.setPen(QPen(QColor(DISK_COLOUR), 2.4))
        raw = QPen(QColor(RAW_COLOUR), 1.6)
        raw.setStyle(Qt.PenStyle.DashLine)
        self.raw.setPen(raw)

    def _redraw(self) -> None:
        points = self.visible_points()
        disk = [(day_ms(p.day), p.total_size) for p in points if p.total_size is not None]
        raw = [
            (day_ms(p.day), p.total_uncompressed_size)
            for p in points
            if p.total_uncompressed_size is not None
        ]
        if not disk and not raw:
            self.stack.setCurrentWidget(self.empty)
            self.disk.clear()
            self.raw.clear()
            return
        self.stack.setCurrentWidget(self.view)
        largest = max(v for _x, v in disk + raw)
        unit, size = unit_for(float(largest))
        self.disk.replace([QPointF(x, v / size) for x, v in disk])
        self.raw.replace([QPointF(x, v / size) for x, v in raw])
        self.raw.setVisible(bool(raw))
        few = len(disk) <= 45
        self.disk.setPointsVisible(few)
        end = self._now() * 1000
        self.x_axis.setRange(
            QDateTime.fromMSecsSinceEpoch(int(end - self.days * 86_400_000)),
            QDateTime.fromMSecsSinceEpoch(int(end)),
        )
        self.x_axis.setFormat("d MMM" if self.days <= 90 else "MMM yyyy")
        self.y_axis.setRange(0, largest / size * 1.08)
        self.y_axis.applyNiceNumbers()
        self.y_axis.setTitleText(unit)
        days = "1 day" if len(disk) == 1 else f"{len(disk)} days"
        self.caption.setText(f"Last {self.days} days ({days} with data)")
