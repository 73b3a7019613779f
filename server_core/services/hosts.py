"""Hosts: the fleet table, credentials, deletion."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Protocol

import peewee as pw

from agent.protocol import redact_url
from server_core import agent_sync, audit, credentials, cron, plan_views
from server_core.errors import InvalidInput, NotFound
from server_core.events import HostChanged, HostRemoved
from server_core.models import (
    Alert,
    Host,
    HostCredential,
    Job,
    RepoStats,
    RepoStatsDaily,
    Schedule,
    ScheduleGroup,
    Snapshot,
)
from server_core.services.context import Actor, ServiceContext
from server_core.views import CredentialSummary, HostView, SnapshotView, SourceGroupView


class JobDispatcher(Protocol):
    async def dispatch(
        self,
        host_id: int,
        kind: str,
        *,
        actor: Actor,
        source_group_id: int | None = None,
        require_online: bool = True,
        reuse_queued: bool = False,
    ) -> str: ...


def host_views(host_ids: list[int] | None = None, now: float | None = None) -> list[HostView]:
    """Build fleet rows with a fixed number of queries, whatever the fleet size."""
    now = time.time() if now is None else now
    query = Host.select().order_by(Host.name)
    if host_ids is not None:
        query = query.where(Host.id.in_(host_ids))
    hosts = list(query)
    if not hosts:
        return []
    ids = [h.id for h in hosts]
    # The latest finished backup of every host, in one query.
    ranked = (
        Job.select(
            Job.host,
            Job.finished_at,
            Job.status,
            Job.warnings,
            pw.fn.ROW_NUMBER()
            .over(partition_by=[Job.host], order_by=[Job.finished_at.desc()])
            .alias("rank"),
        )
        .where(Job.host.in_(ids) & (Job.kind == "backup") & Job.finished_at.is_null(False))
        .alias("ranked")
    )
    latest = (
        pw.Select(
            from_list=[ranked],
            columns=[ranked.c.host_id, ranked.c.finished_at, ranked.c.status, ranked.c.warnings],
        )
        .where(ranked.c.rank == 1)
        .bind(Job._meta.database)
    )
    last_backup: dict[int, tuple[float, str]] = {}
    for host_id, at, status, warnings in latest.tuples():
        if status == "succeeded" and warnings:
            status = "succeeded_with_warnings"
        last_backup[host_id] = (at, status)
    last_restore = _latest_restores(ids)
    snap_counts = dict(
        Snapshot.select(Snapshot.host, pw.fn.COUNT(Snapshot.id))
        .where(Snapshot.host.in_(ids))
        .group_by(Snapshot.host)
        .tuples()
    )
    sizes = dict(
        RepoStats.select(RepoStats.host, RepoStats.total_size)
        .where(RepoStats.host.in_(ids))
        .tuples()
    )
    alerts = dict(
        Alert.select(Alert.host, pw.fn.COUNT(Alert.id))
        .where(Alert.host.in_(ids) & (Alert.status != "resolved"))
        .group_by(Alert.host)
        .tuples()
    )
    next_runs = _next_runs(ids, now)
    history = _size_history(ids, now)
    views = []
    for h in hosts:
        at, status = last_backup.get(h.id, (None, None))
        restore_id, restore_status, restore_at = last_restore.get(h.id, (None, None, None))
        views.append(
            HostView(
                id=h.id,
                name=h.name,
                status="online" if h.online else "offline",
                enrolled=h.enrolled_at is not None,
                os=h.os,
                arch=h.arch,
                agent_version=h.agent_version,
                restic_version=h.restic_version,
                last_seen_at=h.last_seen_at,
                last_backup_at=at,
                last_backup_status=status,
                repo_status=h.repo_status,
                repo_status_error=h.repo_status_error,
                snapshot_count=int(snap_counts.get(h.id, 0)),
                repo_size_bytes=sizes.get(h.id),
                open_alerts=int(alerts.get(h.id, 0)),
                tags=list(json.loads(h.tags)),
                presence_mode=h.presence_mode,
                created_at=h.created_at,
                schedule_version=h.schedule_version,
                schedule_acked_version=h.schedule_acked_version,
                next_run_at=next_runs.get(h.id),
                size_history=history.get(h.id, [None] * SIZE_HISTORY_DAYS),
                upload_kib_s=h.upload_kib_s,
                download_kib_s=h.download_kib_s,
                latest_restore_job_id=restore_id,
                latest_restore_status=restore_status,
                latest_restore_at=restore_at,
            )
        )
    return views


def _latest_restores(ids: list[int]) -> dict[int, tuple[str, str, float]]:
    """Each host's most recently queued restore job: (id, status, when it
    finished, else started, else was queued), in one query."""
    ranked = (
        Job.select(
            Job.host,
            Job.id,
            Job.status,
            pw.fn.COALESCE(Job.finished_at, Job.started_at, Job.created_at).alias("at"),
            pw.fn.ROW_NUMBER()
            .over(partition_by=[Job.host], order_by=[Job.created_at.desc(), Job.id.desc()])
            .alias("rank"),
        )
        .where(Job.host.in_(ids) & (Job.kind == "restore"))
        .alias("ranked")
    )
    latest = (
        pw.Select(
            from_list=[ranked],
            columns=[ranked.c.host_id, ranked.c.id, ranked.c.status, ranked.c.at],
        )
        .where(ranked.c.rank == 1)
        .bind(Job._meta.database)
    )
    return {host_id: (job_id, status, at) for host_id, job_id, status, at in latest.tuples()}


SIZE_HISTORY_DAYS = 30


def _next_runs(ids: list[int], now: float) -> dict[int, float]:
    """Earliest next firing of each host's enabled schedules that back
    something up (one query; each distinct expression computed once)."""
    rows = (
        Schedule.select(Schedule.host, Schedule.cron)
        .join(ScheduleGroup)
        .where(Schedule.host.in_(ids) & Schedule.enabled)
        .distinct()
        .tuples()
    )
    cache: dict[str, float | None] = {}
    out: dict[int, float] = {}
    for host_id, expr in rows:
        if expr not in cache:
            try:
                cache[expr] = cron.next_run(expr, now)
            except Exception:
                cache[expr] = None  # a stored expression croniter cannot read: no run
        at = cache[expr]
        if at is not None and (host_id not in out or at < out[host_id]):
            out[host_id] = at
    return out


def _size_history(ids: list[int], now: float) -> dict[int, list[int | None]]:
    """Repository size per UTC day for the last 30 days, oldest first (one query)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = [
        (today - dt.timedelta(days=n)).isoformat() for n in range(SIZE_HISTORY_DAYS - 1, -1, -1)
    ]
    index = {day: i for i, day in enumerate(days)}
    out: dict[int, list[int | None]] = {}
    rows = (
        RepoStatsDaily.select(RepoStatsDaily.host, RepoStatsDaily.day, RepoStatsDaily.total_size)
        .where(RepoStatsDaily.host.in_(ids) & (RepoStatsDaily.day >= days[0]))
        .tuples()
    )
    for host_id, day, size in rows:
        if day in index:
            out.setdefault(host_id, [None] * SIZE_HISTORY_DAYS)[index[day]] = size
    return out


def require_host(host_id: int) -> Host:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    if host is None:
        raise NotFound(f"host {host_id} does not exist")
    return host


class HostService:
    def __init__(self, ctx: ServiceContext, jobs: JobDispatcher) -> None:
        self._ctx = ctx
        self._jobs = jobs

    async def list_hosts(self) -> list[HostView]:
        return await self._ctx.store.call(host_views)

    async def get_host(self, host_id: int) -> HostView:
        def run() -> HostView:
            require_host(host_id)
            return host_views([host_id])[0]

        return await self._ctx.store.call(run)

    async def list_source_groups(self, host_id: int) -> list[SourceGroupView]:
        def run() -> list[SourceGroupView]:
            require_host(host_id)
            return plan_views.group_views(self._ctx.box, host_id)

        return await self._ctx.store.call(run)

    async def list_snapshots(self, host_id: int) -> list[SnapshotView]:
        def run() -> list[SnapshotView]:
            require_host(host_id)
            rows = Snapshot.select().where(Snapshot.host == host_id).order_by(Snapshot.time.desc())
            return [
                SnapshotView(
                    id=s.snapshot_id,
                    short_id=s.short_id,
                    time=s.time,
                    hostname=s.hostname,
                    paths=list(json.loads(s.paths)),
                    tags=list(json.loads(s.tags)),
                )
                for s in rows
            ]

        return await self._ctx.store.call(run)

    async def credential_summaries(self, host_id: int) -> list[CredentialSummary]:
        def run() -> list[CredentialSummary]:
            require_host(host_id)
            out = []
            for row in HostCredential.select().where(HostCredential.host == host_id):
                creds = credentials.load(self._ctx.box, host_id, row.slot)
                assert creds is not None
                out.append(
                    CredentialSummary(
                        slot=row.slot,
                        url=row.url_display,
                        has_password=bool(creds.password),
                        username=creds.username,
                        env_keys=sorted(creds.env),
                        updated_at=row.updated_at,
                    )
                )
            return out

        return await self._ctx.store.call(run)

    async def set_credentials(self, host_id: int, slot: str, repository: Any, actor: Actor) -> None:
        """Replace a credential slot; the agent gets it at once and the repo is re-probed."""
        if slot not in credentials.SLOTS:
            raise InvalidInput("'slot' must be 'everyday' or 'admin'", field="slot")
        creds = credentials.parse_repository(repository)

        def run() -> bool:
            host = require_host(host_id)
            credentials.save(self._ctx.box, host_id, slot, creds)
            audit.record(
                actor.kind,
                "host.credentials_updated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"slot": slot, "url": redact_url(creds.url)},
            )
            if slot != "everyday":
                return False
            host.repo_status = "unknown"
            host.repo_status_error = None
            host.save()
            return True

        reprobe = await self._ctx.store.transaction(run)
        if reprobe:
            update = await self._ctx.store.call(agent_sync.config_update, self._ctx.box, host_id)
            await self._ctx.agents.send(host_id, update)
            await self._jobs.dispatch(
                host_id, "init", actor=actor, require_online=False, reuse_queued=True
            )
        self._ctx.bus.publish(HostChanged(host_id))

    async def set_bandwidth(
        self, host_id: int, upload_kib_s: int | None, download_kib_s: int | None, actor: Actor
    ) -> None:
        """Per-host restic bandwidth caps in KiB/s (None = unlimited), pushed at once."""
        for name, value in (("upload_kib_s", upload_kib_s), ("download_kib_s", download_kib_s)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**7
            ):
                raise InvalidInput(
                    f"'{name}' must be a whole number of KiB/s between 1 and 10000000, or null",
                    field=name,
                )

        def run() -> None:
            host = require_host(host_id)
            before = {"upload_kib_s": host.upload_kib_s, "download_kib_s": host.download_kib_s}
            host.upload_kib_s = upload_kib_s
            host.download_kib_s = download_kib_s
            host.save()
            audit.record(
                actor.kind,
                "host.bandwidth_updated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={
                    "before": before,
                    "after": {"upload_kib_s": upload_kib_s, "download_kib_s": download_kib_s},
                },
            )

        await self._ctx.store.transaction(run)
        update = await self._ctx.store.call(agent_sync.config_update, self._ctx.box, host_id)
        await self._ctx.agents.send(host_id, update)
        self._ctx.bus.publish(HostChanged(host_id))

    async def set_tags(self, host_id: int, tags: list[str], actor: Actor) -> list[str]:
        """Replace a host's tags (same rule as at enrolment); returns what was stored."""
        # Imported here: enrolment imports jobs, which imports this module.
        from server_core.services.enrolment import _TAG

        if not isinstance(tags, list) or not all(
            isinstance(t, str) and _TAG.match(t) for t in tags
        ):
            raise InvalidInput(
                "'tags' must be a list of short words (letters, digits, '.', '_', ':', '/', '-')",
                field="tags",
            )
        clean = list(dict.fromkeys(tags))

        def run() -> bool:
            host = require_host(host_id)
            before = list(json.loads(host.tags))
            if before == clean:
                return False
            host.tags = json.dumps(clean)
            host.save()
            audit.record(
                actor.kind,
                "host.tags_updated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"before": before, "after": clean},
            )
            return True

        if await self._ctx.store.transaction(run):
            self._ctx.bus.publish(HostChanged(host_id))
        return clean

    async def delete_host(self, host_id: int, actor: Actor) -> None:
        def run() -> str:
            host = require_host(host_id)
            name = str(host.name)
            host.delete_instance()
            audit.record(
                actor.kind,
                "host.deleted",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"name": name},
            )
            return name

        await self._ctx.store.transaction(run)
        # The bearer is gone with the row; closing the socket makes it final now.
        await self._ctx.agents.disconnect(host_id, "this host was deleted in the control plane")
        self._ctx.bus.publish(HostRemoved(host_id))
