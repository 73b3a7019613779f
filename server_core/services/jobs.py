"""Jobs: dispatch to agents, history, logs, cancel."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from agent.protocol import TERMINAL_STATUSES, CommandCancel, CommandRun
from server_core import agent_sync, audit
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import JobChanged
from server_core.models import Job, JobLogLine, SourceGroup
from server_core.services.context import Actor, ServiceContext
from server_core.services.hosts import require_host
from server_core.views import JobView, LogLineView

# Kinds an operator may start through the API in this version.
DISPATCHABLE = ("backup", "init", "snapshots", "stats", "unlock", "forget", "prune", "check")
# Kinds that only make sense with their arguments; RestoreService validates
# and builds them (RestoreArgs, DiffArgs).
WITH_ARGS = ("restore", "diff")


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        host_id=job.host_id,
        kind=job.kind,
        status=job.status,
        actor=job.actor,
        source_group_id=job.source_group_id,
        schedule_id=job.schedule_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        exit_code=job.exit_code,
        error=job.error,
        warnings=bool(job.warnings),
        summary=json.loads(job.summary) if job.summary else None,
        progress=json.loads(job.progress) if job.progress else None,
        log_lines=job.log_lines,
        log_lines_reported=job.log_lines_reported,
    )


def require_job(job_id: str) -> Job:
    job: Job | None = Job.get_or_none(Job.id == job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def create_job(
    host_id: int,
    kind: str,
    actor: Actor,
    *,
    source_group_id: int | None = None,
    args: dict[str, Any] | None = None,
    audit_args: dict[str, Any] | None = None,
) -> Job:
    """Insert a queued job and its audit entry (store thread, inside a transaction).

    ``audit_args`` replaces ``args`` in the audit entry where the arguments
    are too bulky to copy there (a restore's path list).
    """
    audited = audit_args if audit_args is not None else args
    job: Job = Job.create(
        id=uuid.uuid4().hex,
        host=host_id,
        kind=kind,
        status="queued",
        actor="operator" if actor.kind == "api" else actor.kind,
        source_group=source_group_id,
        args=json.dumps(args or {}),
        created_at=time.time(),
    )
    audit.record(
        actor.kind,
        "job.queued",
        actor_id=actor.id,
        target_kind="job",
        target_id=job.id,
        payload={
            "host_id": host_id,
            "kind": kind,
            "source_group_id": source_group_id,
            **({"args": audited} if audited else {}),
        },
    )
    return job


class JobService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def dispatch(
        self,
        host_id: int,
        kind: str,
        *,
        actor: Actor,
        source_group_id: int | None = None,
        require_online: bool = True,
        reuse_queued: bool = False,
        args: dict[str, Any] | None = None,
        audit_args: dict[str, Any] | None = None,
    ) -> str:
        """Queue a job and send it to the agent now if it is connected.

        A job queued for an offline host (only allowed for system jobs) is
        sent when the agent next says hello. With ``reuse_queued``, an
        identical job still waiting is returned instead of a second one.
        ``args`` are stored with the job (never secrets) and reach the agent
        in ``command.run``; a ``bandwidth`` entry there is the per-run cap.
        """
        if kind not in DISPATCHABLE + WITH_ARGS:
            raise InvalidInput(
                f"'kind' must be one of: {', '.join(DISPATCHABLE + WITH_ARGS)}", field="kind"
            )
        if kind in WITH_ARGS and not args:
            raise InvalidInput(f"a {kind} job needs its '{kind}' object", field=kind)
        if kind == "backup" and source_group_id is None:
            raise InvalidInput(
                "'source_group_id' is required for a backup", field="source_group_id"
            )
        online = self._ctx.agents.is_connected(host_id)

        def run() -> Job:
            host = require_host(host_id)
            if source_group_id is not None:
                group = SourceGroup.get_or_none(
                    (SourceGroup.id == source_group_id) & (SourceGroup.host == host_id)
                )
                if group is None:
                    raise NotFound(
                        f"source group {source_group_id} does not exist on host {host.name}",
                        field="source_group_id",
                    )
            if require_online and not online:
                raise Conflict(
                    f"host {host.name} is offline: the agent must be connected to start a job"
                )
            if reuse_queued:
                waiting: Job | None = (
                    Job.select()
                    .where(
                        (Job.host == host_id)
                        & (Job.kind == kind)
                        & (Job.status == "queued")
                        & (
                            Job.source_group.is_null()
                            if source_group_id is None
                            else Job.source_group == source_group_id
                        )
                        & (Job.cancel_requested_at.is_null())
                    )
                    .first()
                )
                if waiting is not None:
                    return waiting
            return create_job(
                host_id,
                kind,
                actor,
                source_group_id=source_group_id,
                args=args,
                audit_args=audit_args,
            )

        job = await self._ctx.store.transaction(run)
        # Asked again after the commit: an agent that said hello meanwhile
        # read the queue before this job was in it.
        await self.send_if_connected(job.id, host_id)
        self._ctx.bus.publish(JobChanged(job.id, host_id))
        return str(job.id)

    async def send_if_connected(self, job_id: str, host_id: int) -> bool:
        if not self._ctx.agents.is_connected(host_id):
            return False

        def load() -> CommandRun | None:
            job = require_job(job_id)
            if job.status != "queued" or job.cancel_requested_at is not None:
                return None
            return agent_sync.command_for(self._ctx.box, job)

        command = await self._ctx.store.call(load)
        if command is None or not await self._ctx.agents.send(host_id, command):
            return False
        await self._ctx.store.transaction(mark_dispatched, [job_id])
        return True

    async def get_job(self, job_id: str) -> JobView:
        return await self._ctx.store.call(lambda: job_view(require_job(job_id)))

    async def list_jobs(self, host_id: int, limit: int = 200) -> list[JobView]:
        def run() -> list[JobView]:
            require_host(host_id)
            rows = (
                Job.select().where(Job.host == host_id).order_by(Job.created_at.desc()).limit(limit)
            )
            return [job_view(j) for j in rows]

        return await self._ctx.store.call(run)

    async def log(
        self, job_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[LogLineView]:
        def run() -> list[LogLineView]:
            require_job(job_id)
            query = (
                JobLogLine.select(JobLogLine.seq, JobLogLine.ts, JobLogLine.stream, JobLogLine.text)
                .where((JobLogLine.job == job_id) & (JobLogLine.seq > after_seq))
                .order_by(JobLogLine.seq)
            )
            if limit is not None:
                query = query.limit(limit)
            return [LogLineView(*row) for row in query.tuples()]

        return await self._ctx.store.call(run)

    async def cancel(self, job_id: str, actor: Actor) -> None:
        """Ask for a job to stop. A job no agent has seen yet is cancelled
        here; otherwise the request is kept and delivered (now, or at the
        agent's next hello) and the agent reports the outcome."""
        now = time.time()

        def run() -> tuple[int, bool]:
            job = require_job(job_id)
            if job.status in TERMINAL_STATUSES:
                raise Conflict(f"job {job_id} has already finished ({job.status})")
            if job.status == "queued" and job.dispatched_at is None:
                job.status = "cancelled"
                job.finished_at = now
                job.error = "cancelled before it was sent to the agent"
                job.save()
                audit.record(
                    actor.kind,
                    "job.cancelled",
                    actor_id=actor.id,
                    target_kind="job",
                    target_id=job_id,
                    payload={"before_dispatch": True},
                )
                return int(job.host_id), False
            job.cancel_requested_at = now
            job.save()
            audit.record(
                actor.kind,
                "job.cancel_requested",
                actor_id=actor.id,
                target_kind="job",
                target_id=job_id,
                payload={"status": job.status},
            )
            return int(job.host_id), True

        host_id, deliver = await self._ctx.store.transaction(run)
        if deliver:
            await self._ctx.agents.send(host_id, CommandCancel(job_id=job_id))
        self._ctx.bus.publish(JobChanged(job_id, host_id))


def mark_dispatched(job_ids: list[str]) -> None:
    """Record that command.run went out (store thread)."""
    if job_ids:
        Job.update(dispatched_at=time.time()).where(Job.id.in_(job_ids)).execute()
