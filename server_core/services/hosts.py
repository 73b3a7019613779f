"""Hosts: the fleet table, credentials, deletion."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Protocol

from agent.protocol import redact_url
from server_core import agent_sync, audit, credentials, cron, plan_views
from server_core.errors import InvalidInput, NotFound
from server_core.events import HostChanged, HostRemoved
from server_core.models import Host, HostCredential, Snapshot
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


# The fleet rows in one statement, whatever the fleet size: each host's
# latest finished backup and latest restore are one index seek on
# job(host_id, kind, finished_at), found by rowid and joined back; counts are
# index seeks too. ``+j.created_at`` keeps SQLite from walking every job of
# the host in job(host_id, created_at) order to find its few restores. Ties
# between backups finished at the same moment go to the one recorded last.
_FLEET_SQL = """
SELECT h.id, h.name, h.online, h.enrolled_at, h.os, h.arch, h.agent_version,
       h.restic_version, h.last_seen_at, h.repo_status, h.repo_status_error, h.tags,
       h.presence_mode, h.created_at, h.schedule_version, h.schedule_acked_version,
       h.upload_kib_s, h.download_kib_s,
       b.finished_at, b.status, b.warnings,
       r.id, r.status, COALESCE(r.finished_at, r.started_at, r.created_at),
       (SELECT COUNT(*) FROM snapshot s WHERE s.host_id = h.id),
       (SELECT t.total_size FROM repo_stats t WHERE t.host_id = h.id),
       (SELECT COUNT(*) FROM alert a WHERE a.host_id = h.id AND a.status != 'resolved')
FROM (
    SELECT host.*,
           (SELECT j.rowid FROM job j
             WHERE j.host_id = host.id AND j.kind = 'backup' AND j.finished_at IS NOT NULL
             ORDER BY j.finished_at DESC, j.rowid DESC LIMIT 1) AS backup_row,
           (SELECT j.rowid FROM job j
             WHERE j.host_id = host.id AND j.kind = 'restore'
             ORDER BY +j.created_at DESC, j.id DESC LIMIT 1) AS restore_row
    FROM host {where}
) AS h
LEFT JOIN job b ON b.rowid = h.backup_row
LEFT JOIN job r ON r.rowid = h.restore_row
ORDER BY h.name
"""
# Enabled schedules that back something up.
_SCHEDULES_SQL = """
SELECT DISTINCT s.host_id, s.cron FROM schedule s
JOIN schedule_group g ON g.schedule_id = s.id
WHERE s.enabled {and_hosts}
"""
# CROSS JOIN keeps host as the outer loop: a seek on repo_stats_daily(host_id,
# day) per host reads the window only, not a year of history for everyone.
_HISTORY_SQL = """
SELECT d.host_id, d.day, d.total_size FROM host h
CROSS JOIN repo_stats_daily d ON d.host_id = h.id AND d.day >= ?
{where}
"""


def _ids_in(column: str, ids: list[int]) -> str:
    return f"{column} IN ({','.join('?' * len(ids))})"


def host_views(host_ids: list[int] | None = None, now: float | None = None) -> list[HostView]:
    """Build fleet rows (all hosts, or those of ``host_ids`` that exist, by name)
    in three statements whatever the fleet size, reading plain rows."""
    now = time.time() if now is None else now
    ids = None if host_ids is None else list(dict.fromkeys(int(i) for i in host_ids))
    if ids is not None and not ids:
        return []
    db = Host._meta.database
    where = "" if ids is None else "WHERE " + _ids_in("host.id", ids)
    rows = db.execute_sql(_FLEET_SQL.format(where=where), ids or []).fetchall()
    if not rows:
        return []
    next_runs = _next_runs(db, ids, now)
    history = _size_history(db, ids, now)
    views = []
    for (
        host_id,
        name,
        online,
        enrolled_at,
        os,
        arch,
        agent_version,
        restic_version,
        last_seen_at,
        repo_status,
        repo_status_error,
        tags,
        presence_mode,
        created_at,
        schedule_version,
        schedule_acked_version,
        upload_kib_s,
        download_kib_s,
        backup_at,
        backup_status,
        backup_warnings,
        restore_id,
        restore_status,
        restore_at,
        snapshot_count,
        repo_size,
        open_alerts,
    ) in rows:
        if backup_status == "succeeded" and backup_warnings:
            backup_status = "succeeded_with_warnings"
        views.append(
            HostView(
                id=host_id,
                name=name,
                status="online" if online else "offline",
                enrolled=enrolled_at is not None,
                os=os,
                arch=arch,
                agent_version=agent_version,
                restic_version=restic_version,
                last_seen_at=last_seen_at,
                last_backup_at=backup_at,
                last_backup_status=backup_status,
                repo_status=repo_status,
                repo_status_error=repo_status_error,
                snapshot_count=int(snapshot_count),
                repo_size_bytes=repo_size,
                open_alerts=int(open_alerts),
                tags=list(json.loads(tags)),
                presence_mode=presence_mode,
                created_at=created_at,
                schedule_version=schedule_version,
                schedule_acked_version=schedule_acked_version,
                next_run_at=next_runs.get(host_id),
                size_history=history.get(host_id, [None] * SIZE_HISTORY_DAYS),
                upload_kib_s=upload_kib_s,
                download_kib_s=download_kib_s,
                latest_restore_job_id=restore_id,
                latest_restore_status=restore_status,
                latest_restore_at=restore_at,
            )
        )
    return views


SIZE_HISTORY_DAYS = 30


def _next_runs(db: Any, ids: list[int] | None, now: float) -> dict[int, float]:
    """Earliest next firing of each host's enabled schedules that back
    something up (one query; each distinct expression computed once)."""
    and_hosts = "" if ids is None else "AND " + _ids_in("s.host_id", ids)
    rows = db.execute_sql(_SCHEDULES_SQL.format(and_hosts=and_hosts), ids or [])
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


def _size_history(db: Any, ids: list[int] | None, now: float) -> dict[int, list[int | None]]:
    """Repository size per UTC day for the last 30 days, oldest first (one query)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = [
        (today - dt.timedelta(days=n)).isoformat() for n in range(SIZE_HISTORY_DAYS - 1, -1, -1)
    ]
    index = {day: i for i, day in enumerate(days)}
    where = "" if ids is None else "WHERE " + _ids_in("h.id", ids)
    out: dict[int, list[int | None]] = {}
    rows = db.execute_sql(_HISTORY_SQL.format(where=where), [days[0], *(ids or [])])
    for host_id, day, size in rows:
        slot = index.get(day)
        if slot is not None:
            out.setdefault(host_id, [None] * SIZE_HISTORY_DAYS)[slot] = size
    return out


PRESENCE_MODES = ("always_on", "laptop")


def require_host(host_id: int) -> Host:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    if host is None:
        raise NotFound(f"host {host_id} does not exist")
    return host


class HostService:
    def __init__(self, ctx: ServiceContext, jobs: JobDispatcher) -> None:
        self._ctx = ctx
        self._jobs = jobs

    async def list_hosts(self, host_ids: list[int] | None = None) -> list[HostView]:
        """The fleet, or only the hosts in ``host_ids`` that still exist (what a
        view that was told which hosts changed reads)."""
        if host_ids is None:
            return await self._ctx.store.call(host_views)
        return await self._ctx.store.call(host_views, list(host_ids))

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

    async def set_presence_mode(self, host_id: int, mode: str, actor: Actor) -> HostView:
        """Always-on hosts raise agent_offline when silent; laptops sleep
        without alerts and get a longer stale-backup horizon."""
        if mode not in PRESENCE_MODES:
            raise InvalidInput("'mode' must be 'always_on' or 'laptop'", field="mode")

        def run() -> tuple[bool, HostView]:
            host = require_host(host_id)
            before = str(host.presence_mode)
            if before != mode:
                host.presence_mode = mode
                host.save()
                audit.record(
                    actor.kind,
                    "host.presence_changed",
                    actor_id=actor.id,
                    target_kind="host",
                    target_id=host_id,
                    payload={"before": before, "after": mode},
                )
            return before != mode, host_views([host_id])[0]

        changed, view = await self._ctx.store.transaction(run)
        if changed:
            # The alert engine listens: a laptop's agent_offline alert is resolved.
            self._ctx.bus.publish(HostChanged(host_id))
        return view

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
