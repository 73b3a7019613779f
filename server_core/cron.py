"""Cron expressions: validation, next runs, a readable description (pure, no DB).

Schedules use standard 5-field cron (minute hour day-of-month month
day-of-week) as croniter understands it; the agent fires them in its own
local time, the control plane previews them in its local time.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

import dateutil.tz
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from server_core.errors import InvalidInput

FIELD = "cron"
MAX_LENGTH = 200

# Shorthands croniter knows, spelled out so the agent and every preview
# read the same five fields.
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
# croniter's hashed (H) and random (R) fields depend on an id or on chance:
# the agent and the preview would disagree.
_HASHED = re.compile(r"(^|[^A-Za-z])[HR]([^A-Za-z]|$)")
_ALLOWED = re.compile(r"^[0-9A-Za-z*/,#?-]+$")

QUICK_PICKS: list[tuple[str, str]] = [
    ("Every 15 minutes", "*/15 * * * *"),
    ("Hourly", "0 * * * *"),
    ("Every 6 hours", "0 */6 * * *"),
    ("Daily at 02:00", "0 2 * * *"),
    ("Weekdays at 22:00", "0 22 * * 1-5"),
    ("Weekly (Sunday 03:00)", "0 3 * * 0"),
    ("Monthly (1st at 04:00)", "0 4 1 * *"),
]

_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def validate(expr: str) -> str:
    """The normalised expression (single spaces, aliases spelled out), or
    InvalidInput naming what is wrong."""
    if not isinstance(expr, str):
        raise InvalidInput("'cron' must be a string like '0 2 * * *'", field=FIELD)
    text = " ".join(expr.split())
    if not text:
        raise InvalidInput("'cron' is empty: give five fields like '0 2 * * *'", field=FIELD)
    if len(text) > MAX_LENGTH:
        raise InvalidInput(f"'cron' is longer than {MAX_LENGTH} characters", field=FIELD)
    text = _ALIASES.get(text.lower(), text)
    if text.startswith("@"):
        raise InvalidInput(
            f"'cron' shorthand {text!r} is not known (use @hourly, @daily, @weekly, "
            "@monthly, @yearly or five fields)",
            field=FIELD,
        )
    fields = text.split(" ")
    if len(fields) != 5:
        raise InvalidInput(
            f"'cron' must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {text!r}",
            field=FIELD,
        )
    for name, value in zip(_FIELD_NAMES, fields, strict=True):
        if not _ALLOWED.match(value):
            raise InvalidInput(f"'cron' {name} field {value!r} has invalid characters", field=FIELD)
        if _HASHED.search(value):
            raise InvalidInput(
                f"'cron' {name} field {value!r}: hashed or random values (H, R) are not supported",
                field=FIELD,
            )
    try:
        it = croniter(text, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidInput(_bad_field(fields) or _whole(text, exc), field=FIELD) from None
    try:
        it.get_next(float)
    except (CroniterBadDateError, CroniterError, ValueError):
        raise InvalidInput(
            f"'cron' {text!r} never fires (no such date, e.g. 30 February)", field=FIELD
        ) from None
    return text


_RANGES = ("0-59", "0-23", "1-31 or L", "1-12 or JAN-DEC", "0-7 or SUN-SAT")


def _bad_field(fields: list[str]) -> str | None:
    """Which field croniter refuses, tried one at a time for a precise message."""
    for i, (name, value) in enumerate(zip(_FIELD_NAMES, fields, strict=True)):
        probe = ["*"] * 5
        probe[i] = value
        try:
            croniter(" ".join(probe), dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        except (CroniterError, ValueError, KeyError):
            return (
                f"'cron' {name} field {value!r} is not valid "
                f"(allowed: {_RANGES[i]}, '*', lists, ranges, steps)"
            )
    return None


def _whole(text: str, exc: Exception) -> str:
    reason = str(exc).replace(f"[{text}]", "").strip() or type(exc).__name__
    return f"'cron' {text!r} is not valid: {reason}"


def _iter(expr: str, after: float, tz: dt.tzinfo | None) -> croniter:
    # tzlocal follows the system's daylight saving rules; a fixed offset
    # from datetime.astimezone() would drift by an hour across a change.
    return croniter(expr, dt.datetime.fromtimestamp(after, tz or dateutil.tz.tzlocal()))


def next_runs(
    expr: str, after: float, count: int = 5, *, tz: dt.tzinfo | None = None
) -> list[float]:
    """The next ``count`` firings strictly after ``after`` (epoch seconds),
    in ``tz`` (default: the control plane's local time zone)."""
    it = _iter(expr, after, tz)
    out: list[float] = []
    try:
        for _ in range(count):
            out.append(float(it.get_next(float)))
    except (CroniterBadDateError, CroniterError):
        pass
    return out


def next_run(expr: str, after: float, *, tz: dt.tzinfo | None = None) -> float | None:
    runs = next_runs(expr, after, 1, tz=tz)
    return runs[0] if runs else None


def previous_run(expr: str, before: float, *, tz: dt.tzinfo | None = None) -> float | None:
    """The latest firing at or before ``before``."""
    it = _iter(expr, before + 1e-3, tz)
    try:
        return float(it.get_prev(float))
    except (CroniterBadDateError, CroniterError):
        return None


# Enough firings to see the densest stretch of any sensible expression
# (a week of hourly runs, several years of monthly ones).
_SAMPLES = 400
_REFERENCE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


# 400 croniter steps cost ~40 ms; conflicts are computed for every schedule on
# each change, so the answer (a pure function of the text) is remembered.
@functools.lru_cache(maxsize=1024)
def min_interval_seconds(expr: str) -> float:
    """The smallest gap between consecutive firings, sampled in UTC from a
    fixed date so that daylight saving time never makes a daily schedule
    look sub-daily and the answer does not depend on today's date."""
    it = croniter(expr, _REFERENCE)
    previous = float(it.get_next(float))
    smallest = float("inf")
    for _ in range(_SAMPLES):
        try:
            current = float(it.get_next(float))
        except (CroniterBadDateError, CroniterError):
            break
        smallest = min(smallest, current - previous)
        previous = current
    return smallest


# -- description ------------------------------------------------------------


def describe(expr: str) -> str:
    """A readable sentence for common shapes; the raw expression otherwise."""
    try:
        text = validate(expr)
    except InvalidInput:
        return expr
    minute, hour, dom, month, dow = text.split(" ")
    try:
        return _describe(minute, hour, dom, month, dow) or f"cron {text}"
    except ValueError:
        return f"cron {text}"


def _num(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _step(value: str) -> int | None:
    if value.startswith("*/") and value[2:].isdigit():
        return int(value[2:])
    return None


def _list(value: str) -> list[int] | None:
    parts = value.split(",")
    if all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _day_names(dow: str) -> str | None:
    names = {name[:3].lower(): i for i, name in enumerate(_DAYS)}
    if dow.lower() in ("1-5", "mon-fri"):
        return "weekday (Monday to Friday)"
    if dow.lower() in ("0,6", "6,0", "sat,sun", "sun,sat"):
        return "Saturday and Sunday"
    days: list[int] = []
    for part in dow.split(","):
        key = part.lower()
        if key.isdigit() and 0 <= int(key) <= 7:
            days.append(int(key) % 7)
        elif key in names:
            days.append(names[key])
        else:
            return None
    labels = [_DAYS[d] for d in dict.fromkeys(days)]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _describe(minute: str, hour: str, dom: str, month: str, dow: str) -> str | None:
    every_day = dom == "*" and month == "*" and dow == "*"
    m = _num(minute)
    if every_day:
        if minute == "*" and hour == "*":
            return "every minute"
        step = _step(minute)
        if step is not None and hour == "*":
            return f"every {step} minutes" if step > 1 else "every minute"
        if m is not None and hour == "*":
            return "every hour on the hour" if m == 0 else f"every hour at minute {m}"
        hstep = _step(hour)
        if m is not None and hstep is not None:
            every = "every hour" if hstep == 1 else f"every {hstep} hours"
            return f"{every} at minute {m}" if m else f"{every} on the hour"
    if m is None or not 0 <= m <= 59:
        return None
    hours = _list(hour)
    if hours is None or not all(0 <= h <= 23 for h in hours):
        return None
    times = [f"{h:02d}:{m:02d}" for h in hours]
    at = times[0] if len(times) == 1 else ", ".join(times[:-1]) + " and " + times[-1]
    if every_day:
        return f"every day at {at}"
    if dom == "*" and month == "*":
        days = _day_names(dow)
        return f"every {days} at {at}" if days else None
    day = _num(dom)
    if dow == "*" and day is not None and 1 <= day <= 31:
        if month == "*":
            return f"on the {_ordinal(day)} of every month at {at}"
        mon = _num(month)
        if mon is not None and 1 <= mon <= 12:
            return f"every year on {_MONTHS[mon - 1]} {day} at {at}"
    if dom == "L" and month == "*" and dow == "*":
        return f"on the last day of every month at {at}"
    return None
