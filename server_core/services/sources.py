"""Source groups: what a host backs up, how long it is kept, and its hooks."""

from __future__ import annotations

import json
import time
from typing import Any

import peewee as pw

from server_core import audit
from server_core.crypto import row_aad
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.models import Host, Schedule, ScheduleGroup, SourceGroup
from server_core.plan_input import GroupInput, parse_bandwidth_override, parse_group, parse_hook
from server_core.plan_views import group_view, group_views
from server_core.services import plan_sync
from server_core.services.context import Actor, ServiceContext
from server_core.services.hosts import require_host
from server_core.services.jobs import JobService
from server_core.views import HostHooksView, SourceGroupView

MAX_GROUPS_PER_HOST = 100


def require_group(host_id: int, group_id: int) -> SourceGroup:
    group: SourceGroup | None = SourceGroup.get_or_none(
        (SourceGroup.id == group_id) & (SourceGroup.host == host_id)
    )
    if group is None:
        host = require_host(host_id)
        raise NotFound(f"source group {group_id} does not exist on host {host.name}")
    return group


def _audit_shape(g: GroupInput) -> dict[str, Any]:
    """What the audit log keeps of a group: everything but the hook commands,
    which may carry secrets (tokens in a curl, a database password)."""
    return {
        "name": g.name,
        "includes": g.includes,
        "excludes": g.excludes,
        "retention": {k: v for k, v in g.retention.items() if v is not None},
        "retry_max": g.retry_max,
        "retry_backoff_seconds": g.retry_backoff_seconds,
        "pre_hook": g.pre_hook is not None,
        "post_hook": g.post_hook is not None,
    }


def _name_taken(host_id: int, name: str, except_id: int | None) -> None:
    # Case-insensitive: "Web" and "web" as two tags would only confuse.
    query = SourceGroup.select().where(
        (SourceGroup.host == host_id) & (pw.fn.LOWER(SourceGroup.name) == name.lower())
    )
    if except_id is not None:
        query = query.where(SourceGroup.id != except_id)
    other = query.first()
    if other is not None:
        raise Conflict(
            f"a source group named '{other.name}' already exists on this host "
            "(names are snapshot tags and must be unique)",
            field="name",
        )


def _store_hooks(box: Any, group: SourceGroup, pre: str | None, post: str | None) -> None:
    if pre is None and post is None:
        group.hooks_enc = None
    else:
        group.hooks_enc = box.seal_json(
            {"pre": pre, "post": post}, row_aad("source_group", group.id, "hooks")
        )


class SourceService:
    def __init__(self, ctx: ServiceContext, jobs: JobService) -> None:
        self._ctx = ctx
        self._jobs = jobs

    async def list_groups(self, host_id: int) -> list[SourceGroupView]:
        def run() -> list[SourceGroupView]:
            require_host(host_id)
            return group_views(self._ctx.box, host_id)

        return await self._ctx.store.call(run)

    async def get_group(self, host_id: int, group_id: int) -> SourceGroupView:
        def run() -> SourceGroupView:
            return group_view(self._ctx.box, require_group(host_id, group_id))

        return await self._ctx.store.call(run)

    async def create_group(self, host_id: int, body: Any, actor: Actor) -> SourceGroupView:
        data = parse_group(body)
        box = self._ctx.box

        def run() -> SourceGroupView:
            require_host(host_id)
            count = SourceGroup.select().where(SourceGroup.host == host_id).count()
            if count >= MAX_GROUPS_PER_HOST:
                raise Conflict(f"a host can have at most {MAX_GROUPS_PER_HOST} source groups")
            _name_taken(host_id, data.name, None)
            now = time.time()
            group = SourceGroup.create(
                host=host_id,
                name=data.name,
                includes=json.dumps(data.includes),
                excludes=json.dumps(data.excludes),
                retention=json.dumps(data.retention),
                retry_max=data.retry_max,
                retry_backoff_seconds=data.retry_backoff_seconds,
                created_at=now,
                updated_at=now,
            )
            # The hooks' AAD names the row, so they are sealed once it has an id.
            _store_hooks(box, group, data.pre_hook, data.post_hook)
            group.save()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "source_group.created",
                actor_id=actor.id,
                target_kind="source_group",
                target_id=group.id,
                payload={"host_id": host_id, "schedule_version": version, **_audit_shape(data)},
            )
            return group_view(box, group)

        view = await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)
        return view

    async def update_group(
        self, host_id: int, group_id: int, body: Any, actor: Actor
    ) -> SourceGroupView:
        """Replace the group with ``body`` (fields left out take their defaults)."""
        data = parse_group(body)
        box = self._ctx.box

        def run() -> SourceGroupView:
            group = require_group(host_id, group_id)
            _name_taken(host_id, data.name, group_id)
            before = group_view(box, group)
            group.name = data.name
            group.includes = json.dumps(data.includes)
            group.excludes = json.dumps(data.excludes)
            group.retention = json.dumps(data.retention)
            group.retry_max = data.retry_max
            group.retry_backoff_seconds = data.retry_backoff_seconds
            group.updated_at = time.time()
            _store_hooks(box, group, data.pre_hook, data.post_hook)
            group.save()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "source_group.updated",
                actor_id=actor.id,
                target_kind="source_group",
                target_id=group_id,
                payload={
                    "host_id": host_id,
                    "schedule_version": version,
                    "before_name": before.name,
                    "hooks_changed": (before.pre_hook, before.post_hook)
                    != (data.pre_hook, data.post_hook),
                    **_audit_shape(data),
                },
            )
            return group_view(box, group)

        view = await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)
        return view

    async def delete_group(self, host_id: int, group_id: int, actor: Actor) -> None:
        box = self._ctx.box

        def run() -> None:
            group = require_group(host_id, group_id)
            users = [
                int(sid)
                for (sid,) in ScheduleGroup.select(ScheduleGroup.schedule)
                .where(ScheduleGroup.source_group == group_id)
                .order_by(ScheduleGroup.schedule)
                .tuples()
            ]
            if users:
                crons = dict(
                    Schedule.select(Schedule.id, Schedule.cron)
                    .where(Schedule.id.in_(users))
                    .tuples()
                )
                named = ", ".join(f"#{sid} ({crons.get(sid, '?')})" for sid in users)
                raise Conflict(
                    f"source group '{group.name}' is used by schedule(s) {named}: "
                    "remove it from them first"
                )
            if SourceGroup.select().where(SourceGroup.host == host_id).count() <= 1:
                raise Conflict(
                    f"source group '{group.name}' is the host's last group and cannot be deleted"
                )
            name = group.name
            group.delete_instance()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "source_group.deleted",
                actor_id=actor.id,
                target_kind="source_group",
                target_id=group_id,
                payload={"host_id": host_id, "name": name, "schedule_version": version},
            )

        await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id)

    async def backup_now(
        self,
        host_id: int,
        group_id: int,
        actor: Actor,
        *,
        upload_kib_s: int | None = None,
        download_kib_s: int | None = None,
    ) -> str:
        """Start a backup of one group now, optionally with a one-off bandwidth
        cap (KiB/s) that overrides the host's for this job only."""
        override = parse_bandwidth_override(upload_kib_s, download_kib_s)
        await self._ctx.store.call(require_group, host_id, group_id)
        return await self._jobs.dispatch(
            host_id,
            "backup",
            actor=actor,
            source_group_id=group_id,
            args={"bandwidth": override} if override else None,
        )

    async def default_hooks(self, host_id: int) -> HostHooksView:
        def run() -> HostHooksView:
            host = require_host(host_id)
            return _hooks_view(self._ctx.box, host)

        return await self._ctx.store.call(run)

    async def set_default_hooks(
        self, host_id: int, pre_hook: str | None, post_hook: str | None, actor: Actor
    ) -> HostHooksView:
        """Host-level hooks, used by groups that have none of their own."""
        pre = parse_hook(pre_hook, "pre_hook")
        post = parse_hook(post_hook, "post_hook")
        box = self._ctx.box

        def run() -> HostHooksView:
            host = require_host(host_id)
            before = _hooks_view(box, host)
            if pre is None and post is None:
                host.default_hooks_enc = None
            else:
                host.default_hooks_enc = box.seal_json(
                    {"pre": pre, "post": post}, row_aad("host", host_id, "hooks")
                )
            host.save()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "host.default_hooks_updated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={
                    "pre_hook": pre is not None,
                    "post_hook": post is not None,
                    "changed": (before.pre_hook, before.post_hook) != (pre, post),
                    "schedule_version": version,
                },
            )
            return HostHooksView(host_id=host_id, pre_hook=pre, post_hook=post)

        view = await self._ctx.store.transaction(run)
        await plan_sync.push(self._ctx, host_id, config=True)
        return view


def _hooks_view(box: Any, host: Host) -> HostHooksView:
    hooks: dict[str, Any] = {}
    if host.default_hooks_enc is not None:
        hooks = box.open_json(bytes(host.default_hooks_enc), row_aad("host", host.id, "hooks"))
    return HostHooksView(
        host_id=int(host.id), pre_hook=hooks.get("pre") or None, post_hook=hooks.get("post") or None
    )


def validate_group_ids(host_id: int, ids: list[int]) -> None:
    """Every id names a group of this host (store thread)."""
    found = {
        int(gid)
        for (gid,) in SourceGroup.select(SourceGroup.id)
        .where((SourceGroup.host == host_id) & SourceGroup.id.in_(ids))
        .tuples()
    }
    missing = [gid for gid in ids if gid not in found]
    if missing:
        raise InvalidInput(
            f"'source_group_ids': no source group {', '.join(map(str, missing))} on this host",
            field="source_group_ids",
        )
