"""Human-friendly sizes and times."""

from __future__ import annotations

import datetime as dt
import time


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def relative_time(ts: float | None, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 d ago' — or 'in 5 min' for the future."""
    if ts is None:
        return "never"
    now = time.time() if now is None else now
    delta = now - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 45:
        return "just now" if not future else "in a moment"
    for limit, size, unit in ((3600, 60, "min"), (86400 * 2, 3600, "h"), (86400 * 60, 86400, "d")):
        if delta < limit:
            amount = round(delta / size)
            return f"in {amount} {unit}" if future else f"{amount} {unit} ago"
    return absolute_time(ts)


def absolute_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
