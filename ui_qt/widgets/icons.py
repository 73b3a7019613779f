"""SVG icons from ``resources/icons``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QIcon

ICON_DIR = Path(__file__).resolve().parents[2] / "resources" / "icons"


def icon(name: str) -> QIcon:
    """``icon("server")`` loads ``resources/icons/server.svg``; a missing file
    gives an empty icon rather than an error (the UI stays usable)."""
    path = ICON_DIR / f"{name}.svg"
    if not path.is_file():
        return QIcon()
    return QIcon(str(path))
