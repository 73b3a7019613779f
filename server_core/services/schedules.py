"""Schedules: when a host backs up which source groups. The agent fires them
itself (online or not); the control plane keeps the plan and shows it."""

from __future__ import annotations

import time
from typing import Any

from server_core import audit
from server_core.errors import Conflict, NotFound
from server_core.models import Schedule, ScheduleGroup
from server_core.plan_input import ScheduleInput, parse_schedule
from server_core.plan_views import group_views, schedule_links, schedule_view, schedule_views
from server_core.schedule_conflicts import find_conflicts
from server_core.services import plan_sync
from server_core.services.context import Actor, ServiceContext
from server_core.services.hosts import require_host
from server_core.services.sources import validate_group_ids
from server_core.views import ConflictView, ScheduleView

MAX_SCHEDULES_PER_HOST = 100


def require_schedule(host_id: int, schedule_id: int) -> Schedule:
    row: Schedule | None = Schedule.get_or_none(
        (Schedule.id == schedule_id) & (Schedule.host == host_id)
    )
    if row is None:
        host = require_host(host_id)
        raise NotFound(f"schedule {schedule_id} does not exist on host {host.name}")
    return row


def _view(row: Schedule) -> ScheduleView:
    return schedule_view(row, schedule_links(int(row.host_id)), time.time(), {})


def _link(schedule_id: int, group_ids: list[int]) -> None:
    ScheduleGroup.delete().where(ScheduleGroup.schedule == schedule_id).execute()
    ScheduleGroup.insert_many(
        [{"schedule": schedule_id, "source_group": gid} for gid in group_ids]
    ).execute()


def _audit_shape(data: ScheduleInput) -> dict[str, Any]:
    return {
        "cron": data.cron,
        "enabled": data.enabled,
        "source_group_ids": data.source_group_ids,
    }


class ScheduleService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def list_schedules(self, host_id: int) -> list[ScheduleView]:
        def run() -> list[ScheduleView]:
            require_host(host_id)
            return schedule_views(host_id)

        return await self._ctx.store.call(run)

    async def get_schedule(self, host_id: int, schedule_id: int) -> ScheduleView:
        return await self._ctx.store.call(lambda: _view(require_schedule(host_id, schedule_id)))

    async def create_schedule(self, host_id: int, body: Any, actor: Actor) -> ScheduleView:
        data = parse_schedule(body)
        box = self._ctx.box

        def run() -> ScheduleView:
            require_host(host_id)
            if Schedule.select().where(Schedule.host == host_id).count() >= MAX_SCHEDULES_PER_HOST:
                raise Conflict(f"a host can have at most {MAX_SCHEDULES_PER_HOST} schedules")
            validate_group_ids(host_id, data.source_group_ids)
            now = time.time()
            row = Schedule.create(
                host=host_id, cron=data.cron, enabled=data.enabled, created_at=now, updated_at=now
            )
            _link(row.id, data.source_group_ids)
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "schedule.created",
                actor_id=actor.id,
                target_kind="schedule",
                target_id=row.id,
                payload={"host_id": host_id, "schedule_version": version, **_audit_shape(data)},
            )
            return _view(row)

        view = await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)
        return view

    async def update_schedule(
        self, host_id: int, schedule_id: int, body: Any, actor: Actor
    ) -> ScheduleView:
        data = parse_schedule(body)
        box = self._ctx.box

        def run() -> ScheduleView:
            row = require_schedule(host_id, schedule_id)
            validate_group_ids(host_id, data.source_group_ids)
            before = _view(row)
            row.cron = data.cron
            row.enabled = data.enabled
            row.updated_at = time.time()
            row.save()
            _link(row.id, data.source_group_ids)
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "schedule.updated",
                actor_id=actor.id,
                target_kind="schedule",
                target_id=schedule_id,
                payload={
                    "host_id": host_id,
                    "schedule_version": version,
                    "before": {
                        "cron": before.cron,
                        "enabled": before.enabled,
                        "source_group_ids": before.source_group_ids,
                    },
                    **_audit_shape(data),
                },
            )
            return _view(row)

        view = await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)
        return view

    async def delete_schedule(self, host_id: int, schedule_id: int, actor: Actor) -> None:
        box = self._ctx.box

        def run() -> None:
            row = require_schedule(host_id, schedule_id)
            cron_text = row.cron
            row.delete_instance()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "schedule.deleted",
                actor_id=actor.id,
                target_kind="schedule",
                target_id=schedule_id,
                payload={"host_id": host_id, "cron": cron_text, "schedule_version": version},
            )

        await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)

    async def conflicts(self, host_id: int) -> list[ConflictView]:
        def run() -> list[ConflictView]:
            require_host(host_id)
            return find_conflicts(group_views(self._ctx.box, host_id), schedule_views(host_id))

        return await self._ctx.store.call(run)
