"""Retention/schedule combinations that will not do what they say (pure).

restic's ``--keep-hourly N`` keeps the last snapshot of each of the last N
hours *that have a snapshot*; with one backup a day it keeps N daily
snapshots instead, which is rarely what the operator meant. The same goes
for daily/weekly/monthly rules on a slower schedule.
"""

from __future__ import annotations

from server_core import cron
from server_core.views import ConflictView, ScheduleView, SourceGroupView

DAY = 86_400.0
WEEK = 7 * DAY
MONTH = 28 * DAY  # the shortest month: a monthly schedule never fires faster
YEAR = 365 * DAY

# keep_X needs some schedule that fires faster than the X-period (strictly
# below the threshold): (rule, threshold, the wanted cadence, the rule's unit).
_RULES = (
    ("keep_hourly", DAY, "more often than daily", "hour"),
    ("keep_daily", WEEK, "more often than weekly", "day"),
    ("keep_weekly", MONTH, "more often than monthly", "week"),
    ("keep_monthly", YEAR, "more often than yearly", "month"),
)
_KEEP_KEYS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
)


def _interval(expr: str, cache: dict[str, float]) -> float:
    if expr not in cache:
        try:
            cache[expr] = cron.min_interval_seconds(expr)
        except Exception:
            # A stored expression croniter no longer reads fires never.
            cache[expr] = float("inf")
    return cache[expr]


def find_conflicts(
    groups: list[SourceGroupView], schedules: list[ScheduleView]
) -> list[ConflictView]:
    out: list[ConflictView] = []
    cache: dict[str, float] = {}
    group_ids = {g.id for g in groups}
    enabled = [s for s in schedules if s.enabled]
    for g in groups:
        mine = [s for s in enabled if g.id in s.source_group_ids]
        if not mine:
            out.append(
                ConflictView(
                    kind="group_not_scheduled",
                    message=(
                        f"source group '{g.name}' is not in any enabled schedule: "
                        "it is only backed up when you start it by hand"
                    ),
                    source_group_id=g.id,
                )
            )
        if all(g.retention.get(k) in (None, "") for k in _KEEP_KEYS):
            out.append(
                ConflictView(
                    kind="no_retention",
                    message=(
                        f"source group '{g.name}' has no retention: forget keeps everything "
                        "and the repository only grows"
                    ),
                    source_group_id=g.id,
                )
            )
        if not mine:
            continue  # nothing fires: the retention rules have nothing to compare with
        fastest = min(_interval(s.cron, cache) for s in mine)
        for key, threshold, wanted, unit in _RULES:
            if g.retention.get(key) is not None and fastest >= threshold:
                out.append(
                    ConflictView(
                        kind=f"{key}_without_faster_schedule",
                        message=(
                            f"source group '{g.name}' has {key} = {g.retention[key]} but no "
                            f"enabled schedule backs it up {wanted}: {key} then just keeps "
                            f"the last {g.retention[key]} backups, reaching back further "
                            f"than {g.retention[key]} {unit}s"
                        ),
                        source_group_id=g.id,
                    )
                )
    for s in schedules:
        live = [gid for gid in s.source_group_ids if gid in group_ids]
        if s.enabled and not live:
            out.append(
                ConflictView(
                    kind="schedule_without_groups",
                    message=f"schedule '{s.description}' backs up no source group: it does nothing",
                    schedule_id=s.id,
                )
            )
    return out
