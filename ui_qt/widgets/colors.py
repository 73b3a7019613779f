"""Status colours that stay readable on light and dark palettes.

Backgrounds always come from the palette; only the *meaning* colours
(ok / warning / failure) are fixed, with a lighter variant picked when the
palette is dark so text in those colours keeps its contrast.
"""

from __future__ import annotations

from enum import Enum

from PySide6.QtGui import QColor, QGuiApplication, QPalette


class Tone(Enum):
    NEUTRAL = "neutral"
    OK = "ok"
    WARN = "warn"
    BAD = "bad"
    MUTED = "muted"


# (on a light palette, on a dark palette)
_TEXT: dict[Tone, tuple[str, str]] = {
    Tone.OK: ("#1a7f37", "#56d364"),
    Tone.WARN: ("#9a6700", "#e3b341"),
    Tone.BAD: ("#cf222e", "#ff7b72"),
}

# Fills (status dots, accent bars): mid-tones visible on either palette.
_FILL: dict[Tone, str] = {
    Tone.OK: "#2da44e",
    Tone.WARN: "#d4a72c",
    Tone.BAD: "#e5534b",
    Tone.MUTED: "#8c959f",
    Tone.NEUTRAL: "#8c959f",
}


def current_palette() -> QPalette:
    app = QGuiApplication.instance()
    if isinstance(app, QGuiApplication):
        return app.palette()
    return QPalette()


def is_dark(palette: QPalette | None = None) -> bool:
    pal = palette if palette is not None else current_palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


def text_color(tone: Tone, palette: QPalette | None = None) -> QColor:
    """A foreground colour for text of this tone on ``palette``'s base."""
    pal = palette if palette is not None else current_palette()
    if tone is Tone.MUTED:
        return pal.color(QPalette.ColorRole.PlaceholderText)
    if tone is Tone.NEUTRAL:
        return pal.color(QPalette.ColorRole.Text)
    light, dark = _TEXT[tone]
    return QColor(dark if is_dark(pal) else light)


def fill_color(tone: Tone) -> QColor:
    return QColor(_FILL[tone])
