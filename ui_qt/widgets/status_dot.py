"""Connection-state dots: painted, not bitmaps, so they are crisp at any scale.

``online`` is a green disc, ``offline`` a grey disc, ``never`` (enrolment
pending or never seen) a hollow grey ring — distinguishable by shape as
well as colour.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from ui_qt.widgets.colors import Tone, fill_color

ONLINE = "online"
OFFLINE = "offline"
NEVER = "never"

STATE_LABELS = {ONLINE: "Online", OFFLINE: "Offline", NEVER: "Never connected"}

_STYLE: dict[str, tuple[Tone, bool]] = {  # state -> (colour, filled)
    ONLINE: (Tone.OK, True),
    OFFLINE: (Tone.MUTED, True),
    NEVER: (Tone.MUTED, False),
}


def paint_dot(painter: QPainter, rect: QRectF, state: str) -> None:
    tone, filled = _STYLE.get(state, (Tone.MUTED, False))
    colour = fill_color(tone)
    diameter = min(rect.width(), rect.height())
    pen_width = max(1.5, diameter / 6)
    radius = diameter / 2 - pen_width / 2
    centre = QPointF(rect.center())
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(colour.darker(115) if filled else colour, pen_width))
    painter.setBrush(colour if filled else Qt.BrushStyle.NoBrush)
    painter.drawEllipse(centre, radius, radius)
    painter.restore()


def _device_ratio() -> float:
    app = QGuiApplication.instance()
    if isinstance(app, QGuiApplication):
        return float(app.devicePixelRatio())
    return 1.0


def dot_icon(state: str, size: int = 12) -> QIcon:
    """An icon for item views (``Qt.DecorationRole``). Callers cache it: no
    module-level pixmap may outlive the QGuiApplication."""
    ratio = _device_ratio()
    pixmap = QPixmap(int(size * ratio), int(size * ratio))
    pixmap.setDevicePixelRatio(ratio)
    pixmap.fill(QColor(0, 0, 0, 0))
    painter = QPainter(pixmap)
    paint_dot(painter, QRectF(1, 1, size - 2, size - 2), state)
    painter.end()
    return QIcon(pixmap)


class StatusDot(QWidget):
    """A dot widget for headers and panels; ``set_state("online")``."""

    def __init__(self, state: str = NEVER, diameter: int = 12, parent: QWidget | None = None):
        super().__init__(parent)
        self._state = state
        self._diameter = diameter
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.setToolTip(STATE_LABELS.get(state, state))

    def state(self) -> str:
        return self._state

    def set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.setToolTip(STATE_LABELS.get(state, state))
            self.update()

    def sizeHint(self) -> QSize:
        return QSize(self._diameter + 2, self._diameter + 2)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        d = float(self._diameter)
        paint_dot(
            painter, QRectF((self.width() - d) / 2, (self.height() - d) / 2, d, d), self._state
        )
        painter.end()
