"""Summary tiles: a title, a big number, a line of detail and a coloured accent."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from ui_qt.widgets.colors import Tone, fill_color, text_color


class _Accent(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tone = Tone.NEUTRAL
        self.setFixedWidth(4)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        colour: QColor = (
            self.palette().color(QPalette.ColorRole.Mid)
            if self.tone is Tone.NEUTRAL
            else fill_color(self.tone)
        )
        painter.fillRect(self.rect(), colour)
        painter.end()


class SummaryTile(QFrame):
    """``tile.set_value("3 / 5", "2 offline", Tone.WARN)``. Emits ``clicked``
    (mouse, or Space/Enter when focused) so a tile can apply a filter."""

    clicked = Signal()

    def __init__(self, title: str, tooltip: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("summaryTile")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        self.setBackgroundRole(QPalette.ColorRole.Base)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        if tooltip:
            self.setToolTip(tooltip)
        self._tone = Tone.NEUTRAL

        self.title_label = QLabel(title)
        self.title_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.value_label = QLabel("—")
        font = self.value_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.7)
        font.setBold(True)
        self.value_label.setFont(font)
        self.detail_label = QLabel("")
        self.detail_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.detail_label.setWordWrap(False)

        texts = QVBoxLayout()
        texts.setSpacing(2)
        texts.setContentsMargins(10, 8, 12, 8)
        texts.addWidget(self.title_label)
        texts.addWidget(self.value_label)
        texts.addWidget(self.detail_label)
        self._accent = _Accent()
        row = QHBoxLayout(self)
        row.setContentsMargins(1, 1, 1, 1)
        row.setSpacing(0)
        row.addWidget(self._accent)
        row.addLayout(texts, 1)
        self.setAccessibleName(title)

    def tone(self) -> Tone:
        return self._tone

    def value(self) -> str:
        return self.value_label.text()

    def set_value(self, value: str, detail: str = "", tone: Tone = Tone.NEUTRAL) -> None:
        self.value_label.setText(value)
        self.detail_label.setText(detail)
        self._tone = tone
        self._accent.tone = tone
        self._accent.update()
        self._apply_tone()
        self.setAccessibleDescription(f"{value}. {detail}".strip())

    def _apply_tone(self) -> None:
        pal = self.value_label.palette()
        colour = text_color(self._tone, self.palette())
        # The label's foreground role follows the tile's background role
        # (Base -> Text), so set both text roles.
        pal.setColor(QPalette.ColorRole.WindowText, colour)
        pal.setColor(QPalette.ColorRole.Text, colour)
        self.value_label.setPalette(pal)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "value_label"):
            self._apply_tone()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(
            event.position().toPoint()
        ):
            self.clicked.emit()
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.clicked.emit()
            return
        super().keyPressEvent(event)
