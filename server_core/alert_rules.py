"""What an alert is: kinds, severities, dedup keys, the stale horizon and the
operator-facing messages (pure, no database, no clock of its own).

A silent agent, a failing backup and a missed schedule are different
problems; each kind says which one in words an operator can act on.
"""

from __future__ import annotations

import datetime as dt

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

KINDS: dict[str, str] = {
    "backup_failed": "critical",
    "forget_failed": "warning",
    "prune_failed": "warning",
    "check_failed": "critical",
    "repo_init_failed": "critical",
    "agent_offline": "warning",
    "stale_backup": "warning",
    "update_failed": "warning",
}

# Job kinds whose failure is an alert, and which alert.
JOB_ALERTS: dict[str, str] = {
    "backup": "backup_failed",
    "forget": "forget_failed",
    "prune": "prune_failed",
    "check": "check_failed",
    "init": "repo_init_failed",
}

STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")
UNRESOLVED: tuple[str, ...] = ("open", "acknowledged")

STALE_FACTOR = 1.5
DEFAULT_LAPTOP_STALE_S = 7 * 86400.0

# Enough of a restic error to say what went wrong, short enough for a tray bubble.
_ERROR_CHARS = 300


def severity_rank(severity: str) -> int:
    """0 for info up to 2 for critical; -1 for anything unknown."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return -1


def severity_of(kind: str) -> str:
    return KINDS[kind]


def dedup_key(kind: str, host_id: int | None, key_suffix: str | int | None = None) -> str:
    """``kind:host`` (``kind:host:suffix`` for per-group backups); one
    unresolved alert per key."""
    key = f"{kind}:{'fleet' if host_id is None else host_id}"
    return key if key_suffix is None else f"{key}:{key_suffix}"


def job_key(job_kind: str, host_id: int, source_group_id: int | None) -> str:
    kind = JOB_ALERTS[job_kind]
    if kind == "backup_failed":
        return dedup_key(kind, host_id, "adhoc" if source_group_id is None else source_group_id)
    return dedup_key(kind, host_id)


def stale_horizon_s(
    presence_mode: str, min_interval_s: float | None, laptop_stale_s: float
) -> float | None:
    """How long a host may go without a successful backup; None when nothing
    is scheduled (nothing was promised, so nothing can be missed)."""
    if min_interval_s is None:
        return None
    horizon = STALE_FACTOR * min_interval_s
    if presence_mode == "laptop":
        return max(laptop_stale_s, horizon)
    return horizon


# -- words -------------------------------------------------------------------


def duration(seconds: float) -> str:
    """'45 s', '4 min', '3 h', '1 day 12 h', '2 days' (rounded down)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h"
    days = _plural(s // 86400, "day")
    hours = (s % 86400) // 3600
    # Hours matter next to one day (36 h is not "1 day"), not next to ten.
    return f"{days} {hours} h" if s < 2 * 86400 and hours else days


def interval(seconds: float) -> str:
    """A schedule's cadence: '15 min', '1 hour', '6 hours', '1 day', '7 days'."""
    s = max(1, round(seconds))
    if s % 86400 == 0:
        return _plural(s // 86400, "day")
    if s % 3600 == 0:
        return _plural(s // 3600, "hour")
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def clock_time(ts: float, now: float, tz: dt.tzinfo | None = None) -> str:
    """'12:03' today, '3 Mar 12:03' another day (control plane's local time)."""
    at = dt.datetime.fromtimestamp(ts, tz)
    if at.date() == dt.datetime.fromtimestamp(now, tz).date():
        return at.strftime("%H:%M")
    return f"{at.day} {at.strftime('%b %H:%M')}"


def first_line(error: str | None) -> str:
    for line in (error or "").splitlines():
        text = line.strip()
        if text:
            return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
    return ""


def job_failed_message(
    job_kind: str,
    host_name: str,
    *,
    group_name: str | None = None,
    error: str | None = None,
    exit_code: int | None = None,
) -> str:
    if job_kind == "backup":
        what = (
            f"Backup of '{group_name}' on {host_name}"
            if group_name
            else (f"Ad-hoc backup on {host_name}")
        )
        head = f"{what} failed"
    elif job_kind == "forget":
        head = f"Forget (retention policy) on {host_name} failed"
    elif job_kind == "prune":
        head = f"Prune of the repository of {host_name} failed"
    elif job_kind == "check":
        head = f"Repository check on {host_name} failed"
    elif job_kind == "init":
        head = f"The repository of {host_name} could not be opened or initialised"
    else:
        head = f"{job_kind.capitalize()} job on {host_name} failed"
    reason = first_line(error)
    if not reason:
        reason = f"exit code {exit_code}" if exit_code is not None else "no error was reported"
    return f"{head}: {reason}"


def repo_status_message(host_name: str, error: str | None) -> str:
    reason = first_line(error) or "no error was reported"
    return (
        f"The repository of {host_name} could not be opened or initialised: {reason} "
        "(check the repository URL and password in the host's Credentials tab)"
    )


def offline_message(host_name: str, last_seen_at: float | None, since: float, now: float) -> str:
    """``since`` is when the host was last heard from, or enrolled if never."""
    ago = duration(now - since)
    if last_seen_at is None:
        return (
            f"Agent on {host_name} has never connected since it was enrolled at "
            f"{clock_time(since, now)} ({ago})"
        )
    return f"Agent on {host_name} has not been heard from since {clock_time(since, now)} ({ago})"


def stale_message(
    host_name: str,
    *,
    last_success_at: float | None,
    since: float,
    now: float,
    presence_mode: str,
    min_interval_s: float,
    horizon_s: float,
) -> str:
    """``since`` is the last successful backup, or when backups were first expected."""
    gap = duration(now - since)
    if last_success_at is None:
        head = f"No successful backup on {host_name} yet, {gap} after backups were set up"
    else:
        head = f"No successful backup on {host_name} for {gap}"
    if presence_mode == "laptop":
        return f"{head}; in laptop mode one is expected at least every {duration(horizon_s)}"
    return f"{head}; its schedules expect one every {interval(min_interval_s)}"
