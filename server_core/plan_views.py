"""Read models of a host's backup plan (store thread): source groups,
schedules, maintenance and repository statistics."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from server_core import agent_sync, cron, maintenance_plan
from server_core.crypto import SecretBox
from server_core.models import (
    Maintenance,
    RepoStats,
    RepoStatsDaily,
    Schedule,
    ScheduleGroup,
    SourceGroup,
)
from server_core.plan_input import RETENTION_KEYS
from server_core.views import (
    MaintenanceView,
    RepoStatsPoint,
    RepoStatsView,
    ScheduleView,
    SourceGroupView,
)


def schedule_links(host_id: int) -> dict[int, list[int]]:
    """schedule id -> its source group ids, for one host."""
    links: dict[int, list[int]] = {}
    rows = (
        ScheduleGroup.select(ScheduleGroup.schedule, ScheduleGroup.source_group)
        .join(Schedule)
        .where(Schedule.host == host_id)
        .order_by(ScheduleGroup.schedule, ScheduleGroup.source_group)
        .tuples()
    )
    for schedule_id, group_id in rows:
        links.setdefault(int(schedule_id), []).append(int(group_id))
    return links


def retention_of(group: SourceGroup) -> dict[str, Any]:
    stored = json.loads(group.retention)
    return {k: stored.get(k) for k in RETENTION_KEYS}


def group_view(
    box: SecretBox, group: SourceGroup, links: dict[int, list[int]] | None = None
) -> SourceGroupView:
    hooks = agent_sync.group_hooks(box, group)
    if links is None:
        links = schedule_links(int(group.host_id))
    return SourceGroupView(
        id=int(group.id),
        host_id=int(group.host_id),
        name=group.name,
        includes=list(json.loads(group.includes)),
        excludes=list(json.loads(group.excludes)),
        retention=retention_of(group),
        retry_max=group.retry_max,
        retry_backoff_seconds=group.retry_backoff_seconds,
        has_pre_hook=bool(hooks.get("pre")),
        has_post_hook=bool(hooks.get("post")),
        created_at=group.created_at,
        updated_at=group.updated_at,
        pre_hook=hooks.get("pre") or None,
        post_hook=hooks.get("post") or None,
        schedule_ids=sorted(sid for sid, gids in links.items() if group.id in gids),
    )


def group_views(box: SecretBox, host_id: int) -> list[SourceGroupView]:
    links = schedule_links(host_id)
    groups = SourceGroup.select().where(SourceGroup.host == host_id).order_by(SourceGroup.id)
    return [group_view(box, g, links) for g in groups]


def schedule_view(
    s: Schedule, links: dict[int, list[int]], now: float, cache: dict[str, float | None]
) -> ScheduleView:
    next_run = None
    if s.enabled:
        if s.cron not in cache:
            cache[s.cron] = cron.next_run(s.cron, now)
        next_run = cache[s.cron]
    return ScheduleView(
        id=int(s.id),
        host_id=int(s.host_id),
        cron=s.cron,
        enabled=bool(s.enabled),
        source_group_ids=list(links.get(int(s.id), [])),
        description=cron.describe(s.cron),
        next_run_at=next_run,
        last_run_at=s.last_run_at,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


def schedule_views(host_id: int, now: float | None = None) -> list[ScheduleView]:
    at = time.time() if now is None else now
    links = schedule_links(host_id)
    cache: dict[str, float | None] = {}
    rows = Schedule.select().where(Schedule.host == host_id).order_by(Schedule.id)
    return [schedule_view(s, links, at, cache) for s in rows]


def maintenance_view(host_id: int, now: float | None = None) -> MaintenanceView:
    at = time.time() if now is None else now
    row, _ = maintenance_plan.ensure_row(host_id, at)
    attempts = {kind: ts for (_, kind), ts in maintenance_plan.last_attempts([host_id]).items()}
    return maintenance_view_of(row, attempts, at)


def maintenance_view_of(
    row: Maintenance, attempts: dict[str, float], now: float
) -> MaintenanceView:
    return MaintenanceView(
        host_id=int(row.host_id),
        enabled=bool(row.enabled),
        forget_cron=row.forget_cron,
        prune_cron=row.prune_cron,
        check_cron=row.check_cron,
        check_subset_percent=row.check_subset_percent,
        last_forget_at=row.last_forget_at,
        last_prune_at=row.last_prune_at,
        last_check_at=row.last_check_at,
        last_check_status=row.last_check_status,
        next_forget_at=maintenance_plan.next_at(row, "forget", now),
        next_prune_at=maintenance_plan.next_at(row, "prune", now),
        next_check_at=maintenance_plan.next_at(row, "check", now),
        due=maintenance_plan.due_kinds(row, attempts, now),
    )


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def repo_stats_view(host_id: int, days: int, now: float | None = None) -> RepoStatsView:
    at = time.time() if now is None else now
    first = utc_day(at - (days - 1) * 86_400)
    history = [
        RepoStatsPoint(
            day=r.day,
            total_size=r.total_size,
            total_uncompressed_size=r.total_uncompressed_size,
            snapshot_count=r.snapshot_count,
            file_count=r.file_count,
        )
        for r in RepoStatsDaily.select()
        .where((RepoStatsDaily.host == host_id) & (RepoStatsDaily.day >= first))
        .order_by(RepoStatsDaily.day)
    ]
    latest: RepoStats | None = RepoStats.get_or_none(RepoStats.host == host_id)
    maint: Maintenance | None = Maintenance.get_or_none(Maintenance.host == host_id)
    return RepoStatsView(
        host_id=host_id,
        collected_at=latest.collected_at if latest else None,
        total_size=latest.total_size if latest else None,
        total_uncompressed_size=latest.total_uncompressed_size if latest else None,
        snapshot_count=latest.snapshot_count if latest else None,
        file_count=latest.file_count if latest else None,
        last_check_at=maint.last_check_at if maint else None,
        last_check_status=maint.last_check_status if maint else None,
        last_prune_at=maint.last_prune_at if maint else None,
        history=history,
    )
