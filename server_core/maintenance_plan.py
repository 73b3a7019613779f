"""A host's maintenance plan: defaults, and which kinds are due.

A kind is *due* when one of its cron windows has passed since it last ran
(or was last attempted: a failure waits for the next window instead of
being retried every tick), counting from when the plan was created so a
new host is not hit by windows from before it existed.
"""

from __future__ import annotations

import time
from typing import Any

import peewee as pw

from server_core import cron
from server_core.models import Job, Maintenance

KINDS = ("forget", "prune", "check")
# Kinds the control plane starts itself (they need the admin credential);
# check runs from the agent's own scheduler.
DISPATCHED_KINDS = ("forget", "prune")

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "forget_cron": "30 3 * * *",  # daily 03:30
    "prune_cron": "30 4 * * 0",  # Sunday 04:30
    "check_cron": "30 5 * * 6",  # Saturday 05:30
    "check_subset_percent": 5,
}


def ensure_row(host_id: int, now: float | None = None) -> tuple[Maintenance, bool]:
    """The host's plan, created with the defaults if missing (store thread)."""
    row: Maintenance | None = Maintenance.get_or_none(Maintenance.host == host_id)
    if row is not None:
        return row, False
    row = Maintenance.create(
        host=host_id, created_at=time.time() if now is None else now, **DEFAULTS
    )
    return row, True


def last_attempts(host_ids: list[int]) -> dict[tuple[int, str], float]:
    """When each host last started (or queued) each maintenance kind, in one query."""
    if not host_ids:
        return {}
    rows = (
        Job.select(Job.host, Job.kind, pw.fn.MAX(Job.created_at))
        .where(Job.host.in_(host_ids) & Job.kind.in_(KINDS))
        .group_by(Job.host, Job.kind)
        .tuples()
    )
    return {(int(h), str(k)): float(at) for h, k, at in rows}


def next_at(row: Maintenance, kind: str, now: float) -> float | None:
    expr: str | None = getattr(row, f"{kind}_cron")
    if not row.enabled or not expr:
        return None
    return cron.next_run(expr, now)


def due_kinds(row: Maintenance, attempts: dict[str, float], now: float) -> list[str]:
    """Kinds whose latest window lies after their last run or attempt."""
    if not row.enabled:
        return []
    out = []
    for kind in KINDS:
        expr: str | None = getattr(row, f"{kind}_cron")
        if not expr:
            continue
        window = cron.previous_run(expr, now)
        if window is None:
            continue
        marks = [row.created_at or 0.0, attempts.get(kind, 0.0)]
        ran = getattr(row, f"last_{kind}_at")
        if ran is not None:
            marks.append(float(ran))
        if window > max(marks):
            out.append(kind)
    return out
