"""Applying what agents report, in batches.

Durable agent events arrive on many sockets; they are queued and written
in one transaction per batch (a chatty backup produces thousands of log
lines a second), then acknowledged to each agent only after the commit,
so an event the agent forgets is an event the database has.
Application is idempotent: log lines are unique on (job, seq), job status
only moves forward, snapshot reports replace the host's list.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import peewee as pw

from agent.protocol import (
    TERMINAL_STATUSES,
    Envelope,
    JobFinished,
    JobLog,
    JobProgress,
    JobStarted,
    Message,
    RepoStatsReport,
    SnapshotsReport,
    to_dict,
)
from server_core import audit, maintenance_plan
from server_core.events import (
    Event,
    EventBus,
    HostChanged,
    JobChanged,
    JobLogAppended,
    RepoStatsChanged,
    SnapshotsChanged,
    SourcesChanged,
)
from server_core.models import (
    Host,
    Job,
    RepoStats,
    RepoStatsDaily,
    Schedule,
    Snapshot,
    SourceGroup,
)
from server_core.store import Store

log = logging.getLogger(__name__)


class AgentSink(Protocol):
    """The connection an event came from: acknowledged after commit, or
    dropped so the agent replays what could not be stored."""

    async def ack(self, ids: list[str]) -> None: ...

    async def abort(self, reason: str) -> None: ...


@dataclass(frozen=True)
class Incoming:
    host_id: int
    envelope: Envelope
    sink: AgentSink


# Back-off between attempts at a batch while another process holds the
# database's write lock (each attempt already waits out busy_timeout).
RETRY_DELAYS_S = (0.2, 1.0, 3.0)


class Rejected(Exception):
    """An event that must be dropped (and audited), never applied."""


class EventIngestor:
    def __init__(
        self, store: Store, bus: EventBus, *, max_batch: int = 2000, queue_size: int = 20_000
    ) -> None:
        self._store = store
        self._bus = bus
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.applied = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-ingestor")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            await self._write(self._drain())

    async def submit(self, item: Incoming) -> None:
        # A full queue makes the socket reader wait: backpressure to the agent.
        await self._queue.put(item)

    def _drain(self) -> list[Incoming]:
        batch: list[Incoming] = []
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first, *self._drain()]
            try:
                await self._write(batch)
            except Exception:
                log.exception("failed to write a batch of %d agent events", len(batch))

    async def _write(self, batch: list[Incoming]) -> None:
        if not batch:
            return
        try:
            committed, failed, events = await self._commit(batch)
        except Exception:
            # Neither stored nor refused: treated as failed, so the links are
            # dropped and the agents replay (and no connection's window of
            # unacknowledged events stays full).
            log.exception("failed to write a batch of %d agent events", len(batch))
            committed, failed, events = [], batch, []
        self.applied += len(committed)
        by_sink: dict[AgentSink, list[str]] = {}
        for item in committed:
            by_sink.setdefault(item.sink, []).append(item.envelope.id)
        for sink, ids in by_sink.items():
            try:
                await sink.ack(ids)
            except Exception:
                # The agent will replay; application is idempotent.
                log.debug("could not ack %d events", len(ids), exc_info=True)
        for sink in {item.sink for item in failed}:
            # Never ack what is not stored: drop the link and let the agent
            # send it again when it reconnects.
            with contextlib.suppress(Exception):
                await sink.abort("the control plane could not store events; replay later")
        self._bus.publish_all(events)

    async def _commit(
        self, batch: list[Incoming]
    ) -> tuple[list[Incoming], list[Incoming], list[Event]]:
        for delay in (*RETRY_DELAYS_S, None):
            try:
                events = await self._store.transaction(self._apply_batch, batch)
                return batch, [], events
            except pw.OperationalError as exc:
                if delay is None:
                    break
                log.warning(
                    "database busy (%s); retrying %d events in %.1f s", exc, len(batch), delay
                )
                await asyncio.sleep(delay)
            except Exception:
                log.exception("batch write failed; applying %d events one by one", len(batch))
                break
        committed: list[Incoming] = []
        failed: list[Incoming] = []
        events = []
        for item in batch:
            try:
                events += await self._store.transaction(self._apply_batch, [item])
                committed.append(item)
            except Exception:
                log.exception(
                    "could not store agent event %s (%s) from host %s",
                    item.envelope.id,
                    item.envelope.type,
                    item.host_id,
                )
                failed.append(item)
        return committed, failed, events

    # -- applied on the store thread, inside one transaction -----------------

    def _apply_batch(self, batch: list[Incoming]) -> list[Event]:
        events: list[Event] = []
        for item in batch:
            msg = item.envelope.payload
            try:
                with self._store.db.atomic():  # a savepoint: a refused event leaves no trace
                    events += apply_event(item.host_id, msg)
            except (Rejected, ValueError, OverflowError, TypeError, KeyError) as exc:
                # Bad data, not a bad database: retrying would fail the same
                # way forever, so the event is refused (and acknowledged).
                log.warning("refused %s from host %s: %s", msg.TYPE, item.host_id, exc)
                audit.record(
                    "agent",
                    "agent.event_refused",
                    actor_id=item.host_id,
                    target_kind="host",
                    target_id=item.host_id,
                    payload={"type": msg.TYPE, "reason": str(exc)},
                )
        return events


def _job_for(host_id: int, job_id: str, *, kind: str = "unknown") -> Job:
    job: Job | None = Job.get_or_none(Job.id == job_id)
    if job is None:
        # The agent minted this job (schedule, catch-up) or the start event
        # was lost with a database restore: either way, keep what it says.
        job = Job.create(
            id=job_id,
            host=host_id,
            kind=kind,
            status="running",
            actor="agent",
            created_at=time.time(),
        )
    elif job.host_id != host_id:
        raise Rejected(f"job {job_id} belongs to another host")
    return job


def _plausible(ts: float) -> bool:
    # Between 1970 and 5138: anything else is a broken clock or a hostile agent.
    return 0 <= ts < 1e11


def _check_time(ts: float, what: str) -> None:
    if not _plausible(ts):
        raise Rejected(f"{what} {ts!r} is not a plausible time")


def apply_event(host_id: int, msg: Message) -> list[Event]:
    if isinstance(msg, JobStarted):
        return _job_started(host_id, msg)
    if isinstance(msg, JobProgress):
        return _job_progress(host_id, msg)
    if isinstance(msg, JobLog):
        return _job_log(host_id, msg)
    if isinstance(msg, JobFinished):
        return _job_finished(host_id, msg)
    if isinstance(msg, SnapshotsReport):
        return _snapshots(host_id, msg)
    if isinstance(msg, RepoStatsReport):
        return _repo_stats(host_id, msg)
    raise Rejected(f"{msg.TYPE} is not a durable event")


def _job_started(host_id: int, msg: JobStarted) -> list[Event]:
    job: Job | None = Job.get_or_none(Job.id == msg.job_id)
    if job is not None and job.host_id != host_id:
        raise Rejected(f"job {msg.job_id} belongs to another host")
    group = None
    if msg.source_group_id is not None:
        group = SourceGroup.get_or_none(
            (SourceGroup.id == msg.source_group_id) & (SourceGroup.host == host_id)
        )
    schedule = None
    if msg.schedule_id is not None:
        schedule = Schedule.get_or_none(
            (Schedule.id == msg.schedule_id) & (Schedule.host == host_id)
        )
    if job is None:
        job = Job.create(
            id=msg.job_id,
            host=host_id,
            kind=msg.kind,
            status="running",
            actor=msg.actor,
            source_group=group,
            schedule=schedule,
            created_at=msg.started_at,
            started_at=msg.started_at,
            last_seq=msg.seq,
            args=json.dumps(getattr(msg, "args", None) or {}),
        )
        audit.record(
            "agent",
            "job.started",
            actor_id=host_id,
            target_kind="job",
            target_id=msg.job_id,
            payload={"kind": msg.kind, "actor": msg.actor, "source_group_id": msg.source_group_id},
        )
    elif job.kind not in ("unknown", msg.kind):
        raise Rejected(f"job {msg.job_id} is a {job.kind} job, not {msg.kind}")
    elif job.status == "queued" or job.kind == "unknown":
        job.status = "running" if job.status not in TERMINAL_STATUSES else job.status
        job.kind = msg.kind
        job.started_at = msg.started_at
        job.last_seq = max(job.last_seq, msg.seq)
        job.save()
        audit.record(
            "agent",
            "job.started",
            actor_id=host_id,
            target_kind="job",
            target_id=msg.job_id,
            payload={"kind": msg.kind},
        )
    events: list[Event] = [JobChanged(msg.job_id, host_id)]
    if schedule is not None and _plausible(msg.started_at):
        # max(): a replayed old start must not move the last run backwards.
        moved = (
            Schedule.update(last_run_at=msg.started_at)
            .where(
                (Schedule.id == schedule.id)
                & (Schedule.last_run_at.is_null() | (Schedule.last_run_at < msg.started_at))
            )
            .execute()
        )
        if moved:
            events += [SourcesChanged(host_id), HostChanged(host_id)]
    return events


def _job_progress(host_id: int, msg: JobProgress) -> list[Event]:
    job = _job_for(host_id, msg.job_id)
    # Replays and reordering must not move progress backwards or revive a finished job.
    if job.status in TERMINAL_STATUSES or msg.seq <= job.last_seq:
        return []
    Job.update(progress=json.dumps(to_dict(msg.progress)), last_seq=msg.seq).where(
        Job.id == job.id
    ).execute()
    return [JobChanged(msg.job_id, host_id)]


_INSERT_LOG_LINE = (
    'INSERT OR IGNORE INTO "job_log" ("job_id", "seq", "ts", "stream", "text") '
    "VALUES (?, ?, ?, ?, ?)"
)


_JOB_HOST = 'SELECT "host_id" FROM "job" WHERE "id" = ?'
_COUNT_LOG_LINES = 'UPDATE "job" SET "log_lines" = "log_lines" + ? WHERE "id" = ?'


def _job_log(host_id: int, msg: JobLog) -> list[Event]:
    # Fixed SQL, not peewee: its query building per frame was ~20 % of the
    # store thread (and GIL the loop needs) while a log streams. A job that is
    # missing or another host's goes through _job_for (created, or refused).
    conn = Job._meta.database.connection()
    row = conn.execute(_JOB_HOST, (msg.job_id,)).fetchone()
    if row is not None and row[0] == host_id:
        job_id = msg.job_id
    else:
        job_id = _job_for(host_id, msg.job_id).id
    if not msg.lines:
        return []
    before = conn.total_changes
    rows = [(job_id, line.seq, line.ts, line.stream, line.text) for line in msg.lines]
    # Plain executemany: peewee's insert_many builds the SQL in Python, which
    # cost ~6x the CPU (and the GIL the UI thread needs) on a streaming job.
    conn.executemany(_INSERT_LOG_LINE, rows)
    inserted = conn.total_changes - before
    if inserted:
        conn.execute(_COUNT_LOG_LINES, (inserted, job_id))
    return [JobLogAppended(job_id, host_id, max(line.seq for line in msg.lines))]


def _job_finished(host_id: int, msg: JobFinished) -> list[Event]:
    job = _job_for(host_id, msg.job_id)
    events: list[Event] = [JobChanged(job.id, host_id)]
    if job.status in TERMINAL_STATUSES:
        return events
    job.status = msg.status
    job.finished_at = msg.finished_at
    job.started_at = job.started_at or msg.finished_at
    job.exit_code = msg.exit_code
    job.error = msg.error
    job.warnings = msg.warnings
    job.summary = json.dumps(msg.summary) if msg.summary is not None else None
    job.log_lines_reported = msg.log_lines
    job.last_seq = max(job.last_seq, msg.seq)
    job.save()
    audit.record(
        "agent",
        "job.finished",
        actor_id=host_id,
        target_kind="job",
        target_id=job.id,
        payload={
            "kind": job.kind,
            "status": msg.status,
            "exit_code": msg.exit_code,
            "warnings": msg.warnings,
            "error": (msg.error or "")[:500] or None,
        },
    )
    _repo_status(host_id, job, msg)
    if job.kind in maintenance_plan.KINDS:
        events += _maintenance_finished(host_id, job, msg)
    if job.kind == "backup" and msg.status == "succeeded" and _update_file_count(host_id, msg):
        events.append(RepoStatsChanged(host_id))
    events.append(HostChanged(host_id))
    return events


# Jobs that open the repository: one that succeeds proves no stale lock stops it.
REPO_KINDS = frozenset(
    {
        "backup",
        "init",
        "forget",
        "prune",
        "check",
        "unlock",
        "restore",
        "diff",
        "snapshots",
        "stats",
    }
)


def _repo_status(host_id: int, job: Job, msg: JobFinished) -> None:
    """The repository's state from a finished job: what the agent says
    (ready, init_failed, locked), else a later success clears a lock."""
    host: Host = Host.get_by_id(host_id)
    if host.repo_status_at is not None and msg.finished_at < host.repo_status_at:
        return  # a replayed old event must not undo what a newer one said
    status = msg.repo_status
    if status is None:
        if not (
            host.repo_status == "locked" and msg.status == "succeeded" and job.kind in REPO_KINDS
        ):
            return
        status = "ready"
    Host.update(
        repo_status=status,
        repo_status_error=msg.error if status in ("init_failed", "locked") else None,
        repo_status_at=msg.finished_at,
    ).where(Host.id == host_id).execute()
    audit.record(
        "agent",
        "host.repo_status",
        actor_id=host_id,
        target_kind="host",
        target_id=host_id,
        payload={
            "repo_status": status,
            "before": host.repo_status,
            "job_id": job.id,
            "kind": job.kind,
        },
    )


def _maintenance_finished(host_id: int, job: Job, msg: JobFinished) -> list[Event]:
    """forget/prune record their last success; check records every verdict."""
    if not _plausible(msg.finished_at):
        return []
    row, _ = maintenance_plan.ensure_row(host_id)
    if job.kind == "check":
        if msg.status == "cancelled":
            return []
        # Newest verdict wins, whatever order the events arrive in.
        if row.last_check_at is not None and row.last_check_at > msg.finished_at:
            return []
        row.last_check_at = msg.finished_at
        row.last_check_status = msg.status
    elif msg.status == "succeeded":
        field = f"last_{job.kind}_at"
        if (getattr(row, field) or 0) >= msg.finished_at:
            return []
        setattr(row, field, msg.finished_at)
    else:
        return []
    row.save()
    return [SourcesChanged(host_id), RepoStatsChanged(host_id)]


def host_file_count(host_id: int) -> int | None:
    """Files in the repository's newest backup of each source group: what a
    full restore of the host would bring back. None before any summary."""
    ranked = (
        Job.select(
            Job.summary,
            pw.fn.ROW_NUMBER()
            .over(partition_by=[Job.source_group], order_by=[Job.finished_at.desc()])
            .alias("rank"),
        )
        .where(
            (Job.host == host_id)
            & (Job.kind == "backup")
            & (Job.status == "succeeded")
            & Job.source_group.is_null(False)
            & Job.summary.is_null(False)
        )
        .alias("ranked")
    )
    latest = (
        pw.Select(from_list=[ranked], columns=[ranked.c.summary])
        .where(ranked.c.rank == 1)
        .bind(Job._meta.database)
    )
    total: int | None = None
    for (summary,) in latest.tuples():
        try:
            files = json.loads(summary).get("total_files_processed")
        except (ValueError, AttributeError):
            continue
        if isinstance(files, int) and not isinstance(files, bool) and files >= 0:
            total = (total or 0) + files
    return total


def _update_file_count(host_id: int, msg: JobFinished) -> bool:
    count = host_file_count(host_id)
    if count is None or not _plausible(msg.finished_at):
        return False
    RepoStats.update(file_count=count).where(RepoStats.host == host_id).execute()
    RepoStatsDaily.insert(
        host=host_id, day=_utc_day(msg.finished_at), file_count=count
    ).on_conflict(
        conflict_target=[RepoStatsDaily.host, RepoStatsDaily.day], update={"file_count": count}
    ).execute()
    return True


def _utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def _snapshots(host_id: int, msg: SnapshotsReport) -> list[Event]:
    """Upsert the reported snapshots, stamped with the collection time; the
    report that completes a collection drops whatever that collection did not see."""
    reported = {s.id: s for s in msg.snapshots}
    existing = dict(
        Snapshot.select(Snapshot.snapshot_id, Snapshot.id).where(Snapshot.host == host_id).tuples()
    )
    seen = [existing[sid] for sid in reported if sid in existing]
    for start in range(0, len(seen), 500):
        Snapshot.update(seen_at=msg.collected_at).where(
            Snapshot.id.in_(seen[start : start + 500]) & (Snapshot.seen_at < msg.collected_at)
        ).execute()
    new_rows = [
        {
            "host": host_id,
            "snapshot_id": s.id,
            "short_id": s.short_id,
            "time": s.time,
            "hostname": s.hostname,
            "paths": json.dumps(s.paths),
            "tags": json.dumps(s.tags),
            "tree": s.tree,
            "seen_at": msg.collected_at,
        }
        for sid, s in reported.items()
        if sid not in existing
    ]
    for start in range(0, len(new_rows), 200):
        Snapshot.insert_many(new_rows[start : start + 200]).execute()
    removed = 0
    if msg.complete:
        removed = (
            Snapshot.delete()
            .where((Snapshot.host == host_id) & (Snapshot.seen_at < msg.collected_at))
            .execute()
        )
    if removed or new_rows:
        audit.record(
            "agent",
            "snapshots.changed",
            actor_id=host_id,
            target_kind="host",
            target_id=host_id,
            payload={"added": len(new_rows), "removed": removed},
        )
    return [SnapshotsChanged(host_id), HostChanged(host_id)]


def _repo_stats(host_id: int, msg: RepoStatsReport) -> list[Event]:
    _check_time(msg.collected_at, "collected_at")
    values = {
        "total_size": msg.total_size,
        "total_uncompressed_size": msg.total_uncompressed_size,
        "snapshot_count": msg.snapshot_count,
        "blob_count": msg.blob_count,
    }
    before = RepoStats.get_or_none(RepoStats.host == host_id)
    if before is None or (before.total_size, before.snapshot_count) != (
        msg.total_size,
        msg.snapshot_count,
    ):
        audit.record(
            "agent",
            "repo.stats_changed",
            actor_id=host_id,
            target_kind="host",
            target_id=host_id,
            payload={"total_size": msg.total_size, "snapshot_count": msg.snapshot_count},
        )
    # A partial report must not erase a value captured earlier, and a
    # replayed old report must not overwrite a newer one.
    present = {k: v for k, v in values.items() if v is not None}
    file_count = host_file_count(host_id)
    if file_count is not None:
        present["file_count"] = file_count
    if before is None:
        RepoStats.create(host=host_id, collected_at=msg.collected_at, **present)
    elif msg.collected_at >= before.collected_at:
        RepoStats.update(collected_at=msg.collected_at, **present).where(
            RepoStats.host == host_id
        ).execute()
    RepoStatsDaily.insert(host=host_id, day=_utc_day(msg.collected_at), **present).on_conflict(
        conflict_target=[RepoStatsDaily.host, RepoStatsDaily.day], update=present
    ).execute()
    return [HostChanged(host_id), RepoStatsChanged(host_id)]
