"""Jobs: run restic for the control plane and report every step durably.

A job's life on the wire is ``job.started`` → ``job.log`` / ``job.progress``
… → ``job.finished``, each event numbered by a per-job counter that
survives restarts. Events are handed to ``emit`` (which, in the agent,
commits them to the outbox before returning), so the runner itself never
knows whether the control plane is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from agent import platform_info, protocol
from agent.hooks import HOOK_GRACE_S, HOOK_TIMEOUT_S, HookResult, hook_env, run_hook
from agent.job_types import FinalStatus, RepoStatus
from agent.job_types import JobCancelled as _JobCancelled
from agent.job_types import JobFailed as _JobFailed
from agent.job_types import Outcome as _Outcome
from agent.redact import Redactor
from agent.restic import commands as rc
from agent.restic import errors as rerrors
from agent.restic import parse as rparse
from agent.restic.runner import RepoLocks, ResticResult, run_restic
from agent.restic.version import ResticNotFound, ResticVersion, detect_version, find_restic
from agent.restore_jobs import run_diff, run_restore
from agent.retry import attempt_of, retry_delay
from agent.tree_index import (
    DEFAULT_BUDGET_BYTES,
    EVICT_PROTECT_S,
    INDEX_DIR_NAME,
    IndexUnavailable,
    TreeIndexes,
)
from agent.version import __version__

log = logging.getLogger(__name__)

LOG_FLUSH_INTERVAL_S = 0.5
LOG_BATCH_LINES = 200
# A JobLog frame must stay well under protocol.MAX_FRAME_BYTES even when
# its lines are long.
LOG_BATCH_BYTES = 256 * 1024
PROGRESS_INTERVAL_S = 1.0
GRACE_SECONDS = 10.0
MAX_ERROR_BYTES = 2048
SNAPSHOTS_REPORT_BUDGET = protocol.MAX_FRAME_BYTES * 3 // 4

# Kinds whose restic takes the repository's exclusive lock: a snapshot index
# build (restic ls, a shared lock) must not overlap them.
EXCLUSIVE_KINDS = frozenset({"forget", "prune", "check"})
INTERRUPTED_ERROR = "the agent restarted while this job was running; it did not complete"
NO_CREDENTIALS_ERROR = "no repository credentials received from the control plane yet"
WAITING_MESSAGE = "waiting for another restic job on this repository"
# How many finished job ids are remembered to ignore a repeated command.run.
RECENT_JOBS = 1000

_CREATED_RE = re.compile(r"^created restic repository (\w+) at ")

NO_GROUPS_ERROR = (
    "this agent has not received its source groups from the control plane yet, so it "
    "does not know which retention to apply"
)
LOCKED_ADVICE = (
    "the repository is locked, probably by a restic process that was killed; if no other "
    "restic is running on it, unlock it from the Repo tab"
)
# A post-hook after a cancel usually undoes what the pre-hook did (restart a
# stopped service); it runs, but must not hold up an agent shutdown for long.
POST_HOOK_AFTER_CANCEL_S = 60.0
# restic 0.18 exits 0 when an append-only server refuses to delete a snapshot.
_NOT_REMOVED_RE = re.compile(r"unable to remove \S+ from the repository")
# What `restic unlock` says (0.17+) when it removed stale locks; silent when none.
_REMOVED_LOCKS_RE = re.compile(r"successfully removed (\d+) locks")

Emit = Callable[[protocol.Message], None]


class JobStore(Protocol):
    """The part of the outbox the runner needs (seq counters, running marks)."""

    def next_seq(self, job_id: str) -> int: ...

    def reserve_seqs(self, job_id: str, count: int) -> int: ...

    def knows_job(self, job_id: str) -> bool: ...

    def mark_running(self, job_id: str, kind: str) -> None: ...

    def clear_running(self, job_id: str) -> None: ...

    def running(self) -> list[tuple[str, str, float]]: ...


@dataclass(frozen=True)
class JobSettings:
    """What the last ``config.update`` said, as far as jobs are concerned."""

    repository: protocol.RepoCredentials | None = None
    bandwidth: protocol.Bandwidth = field(default_factory=protocol.Bandwidth)
    default_pre_hook: str | None = None
    default_post_hook: str | None = None
    # Where restores go when the operator names no directory.
    restore_dir: str | None = None


@dataclass(frozen=True)
class JobResult:
    """How a job ended, for whoever started it (the scheduler plans retries)."""

    job_id: str
    status: FinalStatus
    # Wall-clock time of the next attempt this job's log announced, if any.
    retry_at: float | None = None


def effective_bandwidth(
    host: protocol.Bandwidth, override: protocol.Bandwidth | None
) -> protocol.Bandwidth:
    """A per-run override wins field by field; a field it leaves None keeps the host cap."""
    if override is None:
        return host
    return protocol.Bandwidth(
        upload_kib_s=(
            override.upload_kib_s if override.upload_kib_s is not None else host.upload_kib_s
        ),
        download_kib_s=(
            override.download_kib_s if override.download_kib_s is not None else host.download_kib_s
        ),
    )


def run_bandwidth(cmd: protocol.CommandRun) -> protocol.Bandwidth | None:
    """The per-run cap of a command: ``bandwidth``, else ``args["bandwidth"]``.

    The control plane stores a one-off cap with the job's args; either place
    is honoured so the two sides need not agree on one.
    """
    if cmd.bandwidth is not None:
        return cmd.bandwidth
    raw = cmd.args.get("bandwidth")
    if raw is None:
        return None
    try:
        return protocol.from_dict(protocol.Bandwidth, raw)
    except protocol.ProtocolError as exc:
        log.warning("job %s: ignored an unreadable per-run bandwidth cap: %s", cmd.job_id, exc)
        return None


@dataclass(frozen=True)
class ResticBinary:
    path: str
    version: ResticVersion


async def find_restic_binary(configured: str | None) -> ResticBinary:
    """The configured restic, else the one on PATH; raises ResticNotFound."""
    path = find_restic(None, configured)
    try:
        version = await detect_version(path)
    except (TimeoutError, ValueError) as exc:
        raise ResticNotFound(f"{path} does not work as restic: {exc}") from None
    return ResticBinary(path=path, version=version)


async def locate_restic(configured: str | None) -> ResticBinary | None:
    """The restic to use, or None (the agent still connects and says so)."""
    try:
        return await find_restic_binary(configured)
    except ResticNotFound as exc:
        log.error("%s; jobs will fail until restic is installed", exc)
        return None


# Long enough for a slow cloud backend to create a repository, short enough
# that a wrong URL shows up while the operator is still looking.
PROBE_TIMEOUT_S = 300.0
# Event numbers reserved per durable write; see Outbox.reserve_seqs.
SEQ_BLOCK = 1000


@dataclass(frozen=True)
class _JobDeps:
    """What a running job needs from its runner to number and send events."""

    emit: Emit
    store: JobStore
    redactor: Redactor
    clock: Callable[[], float]
    log_batch_lines: int
    log_flush_interval: float
    progress_interval: float


class _Job:
    """One running job: numbering, log batching and progress throttling."""

    def __init__(
        self, deps: _JobDeps, cmd: protocol.CommandRun, schedule_id: int | None = None
    ) -> None:
        self._deps = deps
        self.cmd = cmd
        self.job_id = cmd.job_id
        self.schedule_id = schedule_id
        # Credentials sent for this job only (the admin slot) are scrubbed
        # from its log by a redactor that dies with the job.
        self.redactor = (
            deps.redactor.with_credentials(cmd.credentials)
            if cmd.credentials is not None
            else deps.redactor
        )
        self.cancel = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._lines: list[protocol.LogLine] = []
        self._line_bytes = 0
        self._log_timer: asyncio.TimerHandle | None = None
        self._pending_progress: protocol.Progress | None = None
        self._progress_timer: asyncio.TimerHandle | None = None
        self._last_progress_at: float | None = None
        self._seq_next = 0
        self._seq_end = 0
        self.lines_written = 0

    def seq(self) -> int:
        if self._seq_next >= self._seq_end:
            self._seq_next = self._deps.store.reserve_seqs(self.job_id, SEQ_BLOCK)
            self._seq_end = self._seq_next + SEQ_BLOCK
        seq = self._seq_next
        self._seq_next += 1
        return seq

    def emit(self, message: protocol.Message) -> None:
        self._deps.emit(message)

    # -- logs ------------------------------------------------------------

    def log(self, stream: protocol.LogStream, text: str) -> None:
        text = self.redactor.line(text.rstrip("\r\n"))
        line = protocol.LogLine(seq=self.seq(), ts=self._deps.clock(), stream=stream, text=text)
        self._lines.append(line)
        self.lines_written += 1
        # The line's size in the frame, not its raw size: JSON spells a control
        # character in six bytes, so 64 KiB of them take 384 KiB on the wire.
        self._line_bytes += _json_text_bytes(text) + 64
        if len(self._lines) >= self._deps.log_batch_lines or self._line_bytes >= LOG_BATCH_BYTES:
            self.flush_logs()
        elif self._log_timer is None:
            self._log_timer = self._loop.call_later(
                self._deps.log_flush_interval, self._on_log_timer
            )

    def _on_log_timer(self) -> None:
        self._log_timer = None
        try:
            self.flush_logs()
        except Exception:
            log.exception("could not store the log of job %s", self.job_id)

    def flush_logs(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        if not self._lines:
            return
        lines, self._lines, self._line_bytes = self._lines, [], 0
        self.emit(protocol.JobLog(job_id=self.job_id, seq=self.seq(), lines=lines))

    # -- progress ----------------------------------------------------------

    def progress(self, progress: protocol.Progress) -> None:
        now = self._loop.time()
        interval = self._deps.progress_interval
        if self._last_progress_at is None or now - self._last_progress_at >= interval:
            self._pending_progress = progress
            self.flush_progress()
            return
        # Throttled, but the latest state always goes out eventually.
        self._pending_progress = progress
        if self._progress_timer is None:
            delay = interval - (now - self._last_progress_at)
            self._progress_timer = self._loop.call_later(delay, self._on_progress_timer)

    def _on_progress_timer(self) -> None:
        self._progress_timer = None
        try:
            self.flush_progress()
        except Exception:
            log.exception("could not store the progress of job %s", self.job_id)

    def flush_progress(self) -> None:
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        progress, self._pending_progress = self._pending_progress, None
        if progress is None:
            return
        self._last_progress_at = self._loop.time()
        self.emit(protocol.JobProgress(job_id=self.job_id, seq=self.seq(), progress=progress))

    def close(self) -> None:
        for timer in (self._log_timer, self._progress_timer):
            if timer is not None:
                timer.cancel()
        self._log_timer = self._progress_timer = None


class JobRunner:
    def __init__(
        self,
        *,
        emit: Emit,
        store: JobStore,
        state_dir: Path,
        redactor: Redactor,
        restic: ResticBinary | None,
        settings: JobSettings | None = None,
        locks: RepoLocks | None = None,
        hostname: str | None = None,
        agent_version: str = __version__,
        grace_seconds: float = GRACE_SECONDS,
        log_flush_interval: float = LOG_FLUSH_INTERVAL_S,
        log_batch_lines: int = LOG_BATCH_LINES,
        progress_interval: float = PROGRESS_INTERVAL_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
        hook_timeout: float = HOOK_TIMEOUT_S,
        hook_grace: float = HOOK_GRACE_S,
        clock: Callable[[], float] = time.time,
        restore_dir: str | None = None,
        index_budget_bytes: int = DEFAULT_BUDGET_BYTES,
        index_protect_seconds: float = EVICT_PROTECT_S,
        restore_scan_interval: float = 2.0,
    ) -> None:
        self._probe_timeout = probe_timeout
        self._hook_timeout = hook_timeout
        self._hook_grace = hook_grace
        self._emit = emit
        self._store = store
        self._state_dir = state_dir
        self._redactor = redactor
        self._restic = restic
        self._deps = _JobDeps(
            emit=emit,
            store=store,
            redactor=redactor,
            clock=clock,
            log_batch_lines=log_batch_lines,
            log_flush_interval=log_flush_interval,
            progress_interval=progress_interval,
        )
        self._settings = JobSettings()
        self._locks = locks or RepoLocks()
        # Backups and forget must name the same host, or forget would never
        # match what the backups wrote.
        self._hostname = platform_info.hostname(hostname)
        self._schedule: protocol.ScheduleSet | None = None
        self._agent_version = agent_version
        self._grace_seconds = grace_seconds
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._tasks: dict[str, asyncio.Task[JobResult | None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        # The agent config's restore dir; one sent by the control plane wins.
        self._config_restore_dir = restore_dir
        self._restore_scan_interval = restore_scan_interval
        self._known_snapshots: list[str] = []
        self.indexes = TreeIndexes(
            state_dir / INDEX_DIR_NAME,
            ls_command=self.ls_command,
            budget_bytes=index_budget_bytes,
            protect_seconds=index_protect_seconds,
            grace_seconds=grace_seconds,
        )
        self.update_settings(settings or JobSettings())

    @property
    def restic(self) -> ResticBinary | None:
        return self._restic

    @property
    def cache_dir(self) -> Path:
        return self._state_dir / "cache"

    @property
    def hostname(self) -> str:
        """The host name this agent's snapshots carry (restic --host)."""
        return self._hostname

    @property
    def known_snapshots(self) -> list[str]:
        """Full ids from the last complete snapshot list (oldest first)."""
        return list(self._known_snapshots)

    @property
    def restore_root(self) -> str:
        """Where a restore goes when the operator names no directory."""
        return (
            self._settings.restore_dir
            or self._config_restore_dir
            or str(self._state_dir / "restores")
        )

    def ls_command(self, snapshot_id: str) -> rc.ResticCommand:
        """``restic ls --json`` of one snapshot, for the tree index."""
        if self._restic is None:
            raise IndexUnavailable(
                "restic was not found on this host: install restic or set restic_path in "
                "the agent config, then restart the agent"
            )
        creds = self._settings.repository
        if creds is None:
            raise IndexUnavailable(NO_CREDENTIALS_ERROR)
        opts = rc.GlobalOptions(
            binary=self._restic.path,
            cache_dir=str(self.cache_dir),
            limit_download_kib=self._settings.bandwidth.download_kib_s,
            version=self._restic.version,
        )
        try:
            return rc.ls_cmd(opts, creds, os.environ, snapshot_id)
        except ValueError as exc:
            raise IndexUnavailable(str(exc)) from None

    def update_settings(self, settings: JobSettings) -> None:
        """Apply a new ``config.update``; running jobs keep what they started with."""
        self._redactor.add_credentials(settings.repository)
        self._settings = settings

    def update_schedule_set(self, schedule_set: protocol.ScheduleSet | None) -> None:
        """The source groups (and their retention) forget applies from now on."""
        self._schedule = schedule_set

    def running_job_ids(self) -> list[str]:
        return list(self._tasks)

    # -- lifecycle -----------------------------------------------------------

    def start(
        self, cmd: protocol.CommandRun, *, schedule_id: int | None = None
    ) -> asyncio.Task[JobResult | None]:
        """Start a job in the background; a duplicate ``command.run`` is ignored.

        The task's result says how the job ended (None for an ignored repeat).
        """
        existing = self._tasks.get(cmd.job_id)
        if existing is not None:
            log.info("job %s is already running; ignored a repeated command.run", cmd.job_id)
            return existing
        if cmd.job_id in self._finished or self._store.knows_job(cmd.job_id):
            # A server that re-sends a command after a reconnect gets the
            # job's events from the outbox; running it twice would not help.
            log.info("job %s already ran; ignored a repeated command.run", cmd.job_id)
            return asyncio.create_task(_noop(), name=f"job-{cmd.job_id}-repeat")
        job = _Job(self._deps, cmd, schedule_id)
        self._jobs[cmd.job_id] = job
        task = asyncio.create_task(self._run(job), name=f"job-{cmd.job_id}")
        self._tasks[cmd.job_id] = task
        return task

    async def run(
        self, cmd: protocol.CommandRun, *, schedule_id: int | None = None
    ) -> JobResult | None:
        """Run a job to its end (what tests await)."""
        return await self.start(cmd, schedule_id=schedule_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job; a job this agent never started is reported
        cancelled, so the control plane can close it. False if nothing ran."""
        job = self._jobs.get(job_id)
        if job is None:
            if job_id in self._finished or self._store.knows_job(job_id):
                return False
            # The command never arrived (or arrived before a restart and was
            # lost): tell the control plane the job will not run.
            self._emit(
                protocol.JobFinished(
                    job_id=job_id,
                    seq=self._store.next_seq(job_id),
                    status="cancelled",
                    finished_at=self._clock(),
                    error="cancelled before it started",
                )
            )
            self._finished[job_id] = None
            return True
        log.info("cancelling job %s", job_id)
        job.cancel.set()
        return True

    async def shutdown(self) -> None:
        """Cancel every running job and wait until each reported ``cancelled``."""
        for job in list(self._jobs.values()):
            job.cancel.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.indexes.close()

    def reject(self, job_id: str, kind: str, actor: str, error: str) -> None:
        """Report a job that cannot even start (started + failed), without running it."""
        if job_id in self._tasks or job_id in self._finished:
            log.info("job %s is known already; ignored a conflicting command", job_id)
            return
        self._store.mark_running(job_id, kind)
        self._emit(
            protocol.JobStarted(
                job_id=job_id,
                seq=self._store.next_seq(job_id),
                kind=_job_kind(kind),
                actor=_actor(actor),
                started_at=self._clock(),
            )
        )
        self._emit_failure(job_id, error)
        self._store.clear_running(job_id)
        self._finished[job_id] = None

    def recover_orphans(self) -> list[str]:
        """Report jobs a previous run of the agent left "running" as failed."""
        recovered = []
        for job_id, kind, _started_at in self._store.running():
            if job_id in self._tasks:
                continue
            log.warning("job %s (%s) was interrupted by an agent restart", job_id, kind)
            self._emit_failure(job_id, INTERRUPTED_ERROR)
            self._store.clear_running(job_id)
            recovered.append(job_id)
        return recovered

    def _emit_failure(self, job_id: str, error: str) -> None:
        line = protocol.LogLine(
            seq=self._store.next_seq(job_id), ts=self._clock(), stream="agent", text=error
        )
        self._emit(protocol.JobLog(job_id=job_id, seq=self._store.next_seq(job_id), lines=[line]))
        self._emit(
            protocol.JobFinished(
                job_id=job_id,
                seq=self._store.next_seq(job_id),
                status="failed",
                finished_at=self._clock(),
                error=error,
            )
        )

    async def _run(self, job: _Job) -> JobResult | None:
        cmd = job.cmd
        try:
            self._store.mark_running(cmd.job_id, cmd.kind)
            job.emit(
                protocol.JobStarted(
                    job_id=cmd.job_id,
                    seq=job.seq(),
                    kind=cmd.kind,
                    actor=cmd.actor,
                    started_at=self._clock(),
                    source_group_id=cmd.source_group.id if cmd.source_group else None,
                    schedule_id=job.schedule_id,
                    args=_public_args(cmd.args),
                )
            )
            log.info("job %s (%s, %s) started", cmd.job_id, cmd.kind, cmd.actor)
            origin = _origin_line(cmd)
            if origin is not None:
                job.log("agent", origin)
            outcome = await self._execute(job)
        except asyncio.CancelledError:
            self._finish_safely(job, _Outcome(status="cancelled"))
            raise
        except Exception as exc:
            log.exception("job %s failed inside the agent", cmd.job_id)
            outcome = _Outcome(status="failed", error=f"internal agent error: {exc}")
        return self._finish_safely(job, outcome)

    def _finish_safely(self, job: _Job, outcome: _Outcome) -> JobResult | None:
        try:
            return self._finish(job, outcome)
        except Exception:
            # The job stays marked running and is reported as interrupted by
            # the next start; nothing better can be done without the outbox.
            log.exception("could not record the end of job %s", job.job_id)
            return None

    def _finish(self, job: _Job, outcome: _Outcome) -> JobResult:
        try:
            job.flush_progress()
            if outcome.status == "cancelled":
                job.log("agent", "job cancelled")
            elif outcome.status == "failed" and outcome.error:
                job.log("agent", f"job failed: {outcome.error}")
            retry_at = self._plan_retry(job) if outcome.status == "failed" else None
            job.flush_logs()
            error = job.redactor.redact(outcome.error) if outcome.error else None
            job.emit(
                protocol.JobFinished(
                    job_id=job.job_id,
                    seq=job.seq(),
                    status=outcome.status,
                    finished_at=self._clock(),
                    exit_code=outcome.exit_code,
                    error=error,
                    warnings=outcome.warnings,
                    summary=outcome.summary,
                    repo_status=outcome.repo_status,
                    log_lines=job.lines_written,
                )
            )
            # Only once job.finished is durable may the job stop being "running".
            self._store.clear_running(job.job_id)
            log.info(
                "job %s finished: %s%s",
                job.job_id,
                outcome.status,
                f" ({error})" if error else "",
            )
        finally:
            self._forget(job)
        return JobResult(job_id=job.job_id, status=outcome.status, retry_at=retry_at)

    def _plan_retry(self, job: _Job) -> float | None:
        """Announce (in the failed job's log) when a scheduled backup is tried again.

        The scheduler carries the retry out; it lives in memory only, so an
        agent restart drops it and the schedule's next window (caught up once
        if it passes while the agent is down) backs the group up instead.
        """
        cmd = job.cmd
        group = cmd.source_group
        if cmd.kind != "backup" or cmd.actor != "schedule" or group is None:
            return None
        attempt = attempt_of(cmd.args)
        delay = retry_delay(attempt, group.retry_max, group.retry_backoff_seconds)
        if delay is None:
            if group.retry_max > 0:
                job.log(
                    "agent",
                    f"no retry: all {group.retry_max} retries of this scheduled backup failed",
                )
            return None
        retry_at = self._clock() + delay
        when = datetime.fromtimestamp(retry_at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        job.log(
            "agent",
            f"retry {attempt} of {group.retry_max} will run at {when} "
            f"(in {_human_duration(delay)}) unless the agent restarts first",
        )
        return retry_at

    def _forget(self, job: _Job) -> None:
        job.close()
        self._jobs.pop(job.job_id, None)
        self._tasks.pop(job.job_id, None)
        self._finished[job.job_id] = None
        while len(self._finished) > RECENT_JOBS:
            self._finished.popitem(last=False)

    # -- kinds -------------------------------------------------------------

    async def _execute(self, job: _Job) -> _Outcome:
        kind = job.cmd.kind
        handler = {
            "init": self._do_init,
            "backup": self._do_backup,
            "snapshots": self._do_snapshots,
            "stats": self._do_stats,
            "unlock": self._do_unlock,
            "forget": self._do_forget,
            "prune": self._do_prune,
            "check": self._do_check,
            "restore": self._do_restore,
            "diff": self._do_diff,
        }.get(kind)
        if handler is None:
            return _Outcome(
                status="failed",
                error=f"job kind {kind} is not supported by agent {self._agent_version}",
            )
        try:
            return await handler(job)
        except _JobCancelled:
            return _Outcome(status="cancelled")
        except _JobFailed as exc:
            return _Outcome(
                status="failed",
                error=exc.error,
                exit_code=exc.exit_code,
                repo_status=exc.repo_status,
            )

    def _prepare(self, job: _Job) -> _Repo:
        if self._restic is None:
            raise _JobFailed(
                "restic was not found on this host: install restic or set restic_path in "
                "the agent config, then restart the agent"
            )
        # Admin credentials come with the job that needs them and go with it
        # (the job's own redactor scrubs them from its log); nothing here
        # writes them anywhere.
        creds = job.cmd.credentials or self._settings.repository
        if creds is None:
            raise _JobFailed(NO_CREDENTIALS_ERROR)
        bandwidth = effective_bandwidth(self._settings.bandwidth, run_bandwidth(job.cmd))
        opts = rc.GlobalOptions(
            binary=self._restic.path,
            cache_dir=str(self.cache_dir),
            limit_upload_kib=bandwidth.upload_kib_s,
            limit_download_kib=bandwidth.download_kib_s,
            version=self._restic.version,
        )
        return _Repo(restic=self._restic, creds=creds, opts=opts, rcreds=creds)

    @contextlib.asynccontextmanager
    async def _repo_lock(self, job: _Job, repo: _Repo) -> AsyncIterator[None]:
        # Keyed by a digest: the URL may carry credentials and must not sit
        # in lock tables or log lines.
        key = hashlib.sha256(repo.creds.url.encode("utf-8")).hexdigest()
        lock = self._locks.lock(key)
        if not lock.locked():
            # Taken without suspending, so a job started right after this one
            # already sees the repository as busy.
            await lock.acquire()
        else:
            job.log("agent", WAITING_MESSAGE)
            job.flush_logs()
            acquire = asyncio.ensure_future(lock.acquire())
            cancelled = asyncio.ensure_future(job.cancel.wait())
            try:
                await asyncio.wait([acquire, cancelled], return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
                if not acquire.done():
                    acquire.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acquire
            if acquire.cancelled():
                raise _JobCancelled()
        if job.cancel.is_set():
            lock.release()
            raise _JobCancelled()
        exclusive = job.cmd.kind in EXCLUSIVE_KINDS
        try:
            if exclusive:
                self.indexes.exclusive_started()
                await self._wait_index_idle(job)
            yield
        finally:
            if exclusive:
                self.indexes.exclusive_finished()
            lock.release()

    async def _wait_index_idle(self, job: _Job) -> None:
        if not self.indexes.building:
            return
        job.log("agent", "waiting for a snapshot listing (restore browser) to finish")
        idle = asyncio.ensure_future(self.indexes.wait_idle())
        cancelled = asyncio.ensure_future(job.cancel.wait())
        try:
            await asyncio.wait([idle, cancelled], return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            cancelled.cancel()
        if job.cancel.is_set():
            raise _JobCancelled()

    async def _restic_run(
        self,
        job: _Job,
        command: rc.ResticCommand,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        time_limit: float | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> ResticResult:
        log.debug("job %s: %s", job.job_id, command.display())
        stop = job.cancel
        timed_out = False
        timer: asyncio.TimerHandle | None = None
        relay: asyncio.Task[None] | None = None
        if time_limit is not None:
            # restic 0.18 retries an unreachable backend for many minutes; a
            # probe must fail in bounded time with what restic last said.
            stop = asyncio.Event()

            def expire() -> None:
                nonlocal timed_out
                timed_out = True
                stop.set()

            async def follow_cancel() -> None:
                await job.cancel.wait()
                stop.set()

            timer = asyncio.get_running_loop().call_later(time_limit, expire)
            relay = asyncio.create_task(follow_cancel())
        try:
            result = await run_restic(
                command,
                on_stdout=on_stdout or (lambda line: job.log("stdout", line)),
                on_stderr=on_stderr or (lambda line: job.log("stderr", line)),
                cancel=stop,
                grace_seconds=self._grace_seconds,
                on_start=on_start,
            )
        finally:
            if timer is not None:
                timer.cancel()
            if relay is not None:
                relay.cancel()
        if timed_out and not job.cancel.is_set():
            lines = [ln for ln in (result.stderr_tail or "").splitlines() if ln.strip()]
            last = _cap(job.redactor.redact(lines[-1].strip()), MAX_ERROR_BYTES) if lines else ""
            raise _JobFailed(
                f"restic did not finish within {time_limit:.0f} s"
                + (f"; it last said: {last}" if last else ""),
                repo_status="init_failed" if job.cmd.kind == "init" else None,
            )
        if result.cancelled:
            raise _JobCancelled()
        return result

    # init ------------------------------------------------------------------

    async def _do_init(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            result = await self._restic_run(
                job,
                repo.build(rc.init_cmd),
                on_stdout=lambda line: self._log_init_stdout(job, line),
                time_limit=self._probe_timeout,
            )
            if result.exit_code != 0:
                kind = rerrors.classify(result.exit_code, result.stderr_tail, repo.restic.version)
                if kind is not rerrors.ResticErrorKind.ALREADY_INITIALISED:
                    raise _JobFailed(
                        self._error_text(job, result), result.exit_code, repo_status="init_failed"
                    )
                job.log("agent", "the repository is already initialised; checking access")
            # Always prove the password and URL work, whether we created the
            # repository or found one: a typo must surface now, not at the
            # first scheduled backup.
            probe = await self._restic_run(
                job, repo.build(rc.probe_cmd), on_stdout=_ignore, time_limit=self._probe_timeout
            )
            if probe.exit_code != 0:
                raise _JobFailed(
                    self._error_text(job, probe), probe.exit_code, repo_status="init_failed"
                )
            job.log("agent", "the repository is ready: its password and URL work")
            await self._refresh(job, repo)
        return _Outcome(status="succeeded", exit_code=0, repo_status="ready")

    def _log_init_stdout(self, job: _Job, line: str) -> None:
        # Both forms name the repository URL, which may hold credentials the
        # redactor does not know about (a token in a query string, say).
        data = _json_object(line)
        created = _CREATED_RE.match(line.strip())
        if data is not None and data.get("message_type") == "initialized":
            job.log("stdout", f"created restic repository {str(data.get('id', ''))[:10]}")
        elif created:
            job.log("stdout", f"created restic repository {created.group(1)}")
        elif line.strip():
            job.log("stdout", line)

    # backup ----------------------------------------------------------------

    async def _do_backup(self, job: _Job) -> _Outcome:
        group = job.cmd.source_group
        if group is None:
            raise _JobFailed("a backup job needs a source group, and none was sent")
        if not group.includes:
            raise _JobFailed(f"source group {group.name!r} has no paths to back up")
        repo = self._prepare(job)
        command = repo.build(
            rc.backup_cmd,
            includes=list(group.includes),
            excludes=list(group.excludes),
            tags=[group.name],
            host=self._hostname,
        )
        pre_hook, post_hook = self._hooks_for(group)
        async with self._repo_lock(job, repo):
            # Hooks run inside the repository lock: a dump made by the
            # pre-hook must not wait (and go stale) behind another job.
            outcome: _Outcome | None = None
            failure: _JobFailed | None = None
            cancelled = snapshot_made = False
            try:
                if pre_hook is not None:
                    await self._pre_hook(job, pre_hook, group)
                outcome, snapshot_made = await self._backup_restic(job, repo, command)
            except _JobFailed as exc:
                failure = exc
            except _JobCancelled:
                cancelled = True
            if post_hook is not None:
                # Always, whatever happened since the lock was taken: the
                # post-hook usually undoes the pre-hook (restarts a service).
                post_ok = await self._post_hook(
                    job, post_hook, group, succeeded=outcome is not None, cancelled=cancelled
                )
                if not post_ok and outcome is not None:
                    outcome.warnings = True
                    outcome.error = "; ".join(
                        filter(None, [outcome.error, "the post-hook failed (see the log)"])
                    )
            if snapshot_made and not job.cancel.is_set():
                # Reported before job.finished, so the app shows the new
                # snapshot by the time it shows the job as done.
                await self._refresh(job, repo)
        if cancelled:
            raise _JobCancelled()
        if failure is not None:
            raise failure
        assert outcome is not None
        return outcome

    async def _backup_restic(
        self, job: _Job, repo: _Repo, command: rc.ResticCommand
    ) -> tuple[_Outcome, bool]:
        summaries: list[rparse.BackupSummary] = []

        def on_output(stream: protocol.LogStream, line: str) -> None:
            parsed = rparse.parse_backup_line(line)
            if isinstance(parsed, rparse.BackupProgress):
                job.progress(_progress(parsed, job.redactor))
            elif isinstance(parsed, rparse.BackupSummary):
                summaries.append(parsed)
            elif isinstance(parsed, rparse.BackupError):
                job.log("stderr", _backup_error_text(parsed))
            elif line.strip():
                job.log(stream, _json_message(line) or line)

        result = await self._restic_run(
            job,
            command,
            on_stdout=lambda line: on_output("stdout", line),
            on_stderr=lambda line: on_output("stderr", line),
        )
        summary = summaries[-1] if summaries else None
        if summary is not None:
            job.log("agent", _summary_line(summary))
        if result.exit_code not in (0, 3):
            raise self._failure(job, result, repo)
        warnings = result.exit_code == 3
        if warnings:
            job.log("agent", "some files could not be read; the snapshot is incomplete")
        outcome = _Outcome(
            status="succeeded",
            exit_code=result.exit_code,
            warnings=warnings,
            error="some files could not be read" if warnings else None,
            summary=summary.to_dict() if summary is not None else None,
        )
        return outcome, summary is not None and bool(summary.snapshot_id)

    # hooks -----------------------------------------------------------------

    def _hooks_for(self, group: protocol.SourceGroupSpec) -> tuple[str | None, str | None]:
        """Each hook of the group, else the host's default for that slot."""
        pre = group.pre_hook if _has_text(group.pre_hook) else self._settings.default_pre_hook
        post = group.post_hook if _has_text(group.post_hook) else self._settings.default_post_hook
        return (pre if _has_text(pre) else None, post if _has_text(post) else None)

    async def _pre_hook(self, job: _Job, command: str, group: protocol.SourceGroupSpec) -> None:
        result = await self._run_hook(
            job, "pre", command, self._hook_vars(job, group), job.cancel, self._hook_timeout
        )
        # What the hook printed goes to the outbox now, not with restic's first
        # lines up to LOG_FLUSH_INTERVAL_S later: an agent killed in between
        # would lose the record of what the hook did.
        job.flush_logs()
        if result.cancelled:
            raise _JobCancelled()
        if not result.ok:
            raise _JobFailed(
                f"the pre-hook {result.describe(self._hook_timeout)}; the backup did not run",
                exit_code=result.exit_code,
            )

    async def _post_hook(
        self,
        job: _Job,
        command: str,
        group: protocol.SourceGroupSpec,
        *,
        succeeded: bool,
        cancelled: bool,
    ) -> bool:
        env = self._hook_vars(job, group)
        env["RM_JOB_STATUS"] = "succeeded" if succeeded else "failed"
        if cancelled:
            env["RM_JOB_CANCELLED"] = "1"
            # The job's cancel already fired; a fresh event keeps the hook
            # alive, and a short limit keeps a shutdown from hanging on it.
            timeout = min(self._hook_timeout, POST_HOOK_AFTER_CANCEL_S)
            result = await self._run_hook(job, "post", command, env, asyncio.Event(), timeout)
        else:
            timeout = self._hook_timeout
            result = await self._run_hook(job, "post", command, env, job.cancel, timeout)
        if not result.ok:
            job.log("agent", f"warning: the post-hook {result.describe(timeout)}")
        return result.ok

    def _hook_vars(self, job: _Job, group: protocol.SourceGroupSpec) -> dict[str, str]:
        return {"RM_JOB_ID": job.job_id, "RM_SOURCE_GROUP": group.name}

    async def _run_hook(
        self,
        job: _Job,
        phase: Literal["pre", "post"],
        command: str,
        variables: dict[str, str],
        cancel: asyncio.Event,
        time_limit: float,
    ) -> HookResult:
        prefix = f"hook({phase}): "
        job.log("agent", f"running the {phase}-hook")
        try:
            result = await run_hook(
                command,
                env=hook_env(os.environ, variables),
                on_line=lambda line: job.log("hook", prefix + line),
                cancel=cancel,
                time_limit=time_limit,
                grace=self._hook_grace,
            )
        except OSError as exc:
            job.log("agent", f"the {phase}-hook could not be started: {exc}")
            return HookResult(exit_code=127)
        if result.ok:
            job.log("agent", f"the {phase}-hook succeeded")
        return result

    # maintenance -------------------------------------------------------------

    async def _do_forget(self, job: _Job) -> _Outcome:
        groups = self._forget_groups(job)
        repo = self._prepare(job)
        results: list[dict[str, object]] = []
        failures: list[str] = []
        ran = 0
        async with self._repo_lock(job, repo):
            await self._clear_stale_locks(job, repo)
            try:
                for group in groups:
                    if group.retention.is_empty():
                        job.log(
                            "agent",
                            f"group {group.name}: no retention policy set; "
                            "all its snapshots are kept",
                        )
                        continue
                    problem, counts = await self._forget_group(job, repo, group)
                    ran += 1
                    if problem is not None:
                        failures.append(f"group {group.name}: {problem.error}")
                        job.log("agent", f"group {group.name}: forget failed: {problem.error}")
                        if problem.repo_status == "locked":
                            # Every other group would hit the same lock.
                            raise problem
                        continue
                    results.append(
                        {
                            "group": group.name,
                            "kept": counts.kept if counts else None,
                            "removed": counts.removed if counts else None,
                        }
                    )
            finally:
                if ran and not job.cancel.is_set():
                    await self._refresh(job, repo)
        if failures:
            raise _JobFailed(_cap("forget failed for " + "; ".join(failures), MAX_ERROR_BYTES))
        if not ran:
            job.log("agent", "no source group has a retention policy: nothing to forget")
        removed = sum(r["removed"] for r in results if isinstance(r["removed"], int))
        return _Outcome(
            status="succeeded", exit_code=0, summary={"groups": results, "removed": removed}
        )

    async def _forget_group(
        self, job: _Job, repo: _Repo, group: protocol.SourceGroupSpec
    ) -> tuple[_JobFailed | None, rparse.ForgetResult | None]:
        """One ``restic forget`` for one group's tag: (failure, counts)."""
        try:
            command = repo.build(
                rc.forget_cmd,
                tag=group.name,
                host=self._hostname,
                **_retention_kwargs(group.retention),
            )
        except _JobFailed as exc:
            return exc, None
        job.log(
            "agent",
            f"group {group.name}: forget snapshots tagged {group.name!r} from host "
            f"{self._hostname!r}, {_retention_text(group.retention)}",
        )
        out: list[str] = []
        result = await self._restic_run(job, command, on_stdout=out.append)
        problem = self._forget_problem(job, result, repo)
        if problem is not None:
            return problem, None
        try:
            counts = rparse.parse_forget("\n".join(out))
        except rparse.ResticOutputError as exc:
            job.log("agent", f"group {group.name}: could not read restic's answer: {exc}")
            return None, None
        job.log(
            "agent",
            f"group {group.name}: kept {counts.kept}, removed {counts.removed} snapshot(s)",
        )
        return None, counts

    def _forget_groups(self, job: _Job) -> list[protocol.SourceGroupSpec]:
        """Which tags to forget with which retention: the job's own group, else
        the groups the control plane listed with the job (retention as it was
        when the job went out), else the groups of the current schedule set."""
        if job.cmd.source_group is not None:
            return [job.cmd.source_group]
        listed = job.cmd.args.get("groups")
        if listed is not None:
            return _groups_from_args(listed)
        if self._schedule is None:
            raise _JobFailed(NO_GROUPS_ERROR)
        return list(self._schedule.source_groups)

    def _forget_problem(self, job: _Job, result: ResticResult, repo: _Repo) -> _JobFailed | None:
        if result.exit_code != 0:
            return self._failure(job, result, repo)
        refused = _NOT_REMOVED_RE.findall(result.stderr_tail or "")
        if refused:
            # restic 0.18 reports success when the server refused to delete.
            return _JobFailed(
                f"the repository refused to delete {len(refused)} snapshot(s) (an append-only "
                f"server needs the admin credential for forget): {self._error_text(job, result)}",
                result.exit_code,
            )
        return None

    async def _do_prune(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            await self._clear_stale_locks(job, repo)
            result = await self._restic_run(job, repo.build(rc.prune_cmd))
            if result.exit_code != 0:
                raise self._failure(job, result, repo)
            if _NOT_REMOVED_RE.search(result.stderr_tail or ""):
                raise _JobFailed(
                    "the repository refused to delete data (an append-only server needs the "
                    f"admin credential for prune): {self._error_text(job, result)}",
                    result.exit_code,
                )
            await self._refresh(job, repo)
        return _Outcome(status="succeeded", exit_code=0)

    async def _do_check(self, job: _Job) -> _Outcome:
        percent = self._check_percent(job)
        repo = self._prepare(job)
        command = repo.build(rc.check_cmd, read_data_subset_percent=percent)
        errors: list[int] = []

        def on_stdout(line: str) -> None:
            data = _json_object(line)
            if data is not None and data.get("message_type") == "summary":
                count = data.get("num_errors")
                errors.append(count if isinstance(count, int) else 0)
                job.log("stdout", f"check summary: {count} error(s)")
            elif line.strip():
                job.log("stdout", _json_message(line) or line)

        async with self._repo_lock(job, repo):
            await self._clear_stale_locks(job, repo)
            if percent is not None:
                job.log("agent", f"checking the repository, reading {percent}% of its data")
            result = await self._restic_run(job, command, on_stdout=on_stdout)
            if result.exit_code != 0:
                raise self._failure(job, result, repo)
            await self._refresh(job, repo)
        return _Outcome(
            status="succeeded",
            exit_code=0,
            summary={
                "read_data_subset_percent": percent,
                "num_errors": errors[-1] if errors else 0,
            },
        )

    def _check_percent(self, job: _Job) -> int | None:
        for key in ("read_data_subset_percent", "check_subset_percent"):
            value = job.cmd.args.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                raise _JobFailed(f"{key} must be a whole number from 1 to 100, got {value!r}")
            return value
        if self._schedule is not None:
            return self._schedule.maintenance.check_subset_percent
        return protocol.MaintenanceSpec().check_subset_percent

    # restore / diff ----------------------------------------------------------

    async def _do_restore(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        return await run_restore(
            job,
            _Access(self, job, repo),
            self.indexes,
            self.restore_root,
            clock=self._clock,
            scan_interval=self._restore_scan_interval,
        )

    async def _do_diff(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        return await run_diff(job, _Access(self, job, repo))

    # snapshots / stats / unlock -------------------------------------------

    async def _do_snapshots(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            await self._report_snapshots(job, repo, strict=True)
        return _Outcome(status="succeeded", exit_code=0)

    async def _do_stats(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            await self._report_stats(job, repo, strict=True)
        return _Outcome(status="succeeded", exit_code=0)

    async def _clear_stale_locks(self, job: _Job, repo: _Repo) -> None:
        """Before a job that takes the exclusive lock (forget, prune, check):
        remove the locks restic itself calls stale (their process on this host
        is gone, or they are older than 30 min), such as the one a restic
        killed mid-backup leaves. Live locks stay; the job then waits for them
        and fails as locked if they do not go away."""
        out: list[str] = []
        result = await self._restic_run(
            job, repo.build(rc.unlock_cmd), on_stdout=out.append, on_stderr=out.append
        )
        if result.exit_code != 0:
            # Not fatal: the job's own restic run says what is wrong.
            job.log("agent", f"could not look for stale locks: {self._error_text(job, result)}")
            return
        removed = [int(m[1]) for line in out if (m := _REMOVED_LOCKS_RE.search(line))]
        if removed and removed[-1] > 0:
            job.log(
                "agent",
                f"removed {removed[-1]} stale lock(s) left by restic processes that are gone",
            )
        elif any("successfully removed locks" in line for line in out):
            # restic before 0.17 says so whether or not there was a lock.
            job.log("agent", "stale locks left by restic processes that are gone, if any, removed")

    async def _do_unlock(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            result = await self._restic_run(job, repo.build(rc.unlock_cmd))
            if result.exit_code != 0:
                raise self._failure(job, result, repo)
        job.log("agent", "stale locks removed; the repository is ready")
        return _Outcome(status="succeeded", exit_code=0, repo_status="ready")

    async def _refresh(self, job: _Job, repo: _Repo) -> None:
        """Report snapshots and repo size; a failure here does not fail the job.

        Side by side: each restic run opens the repository, which derives its
        key with scrypt (~0.5 s by design); both only read."""
        await asyncio.gather(
            self._report_snapshots(job, repo, strict=False),
            self._report_stats(job, repo, strict=False),
        )

    async def _report_snapshots(self, job: _Job, repo: _Repo, *, strict: bool) -> None:
        out: list[str] = []
        result = await self._restic_run(job, repo.build(rc.snapshots_cmd), out.append)
        snapshots: list[protocol.SnapshotInfo] | None = None
        problem = _JobFailed("listing snapshots failed", result.exit_code)
        if result.exit_code == 0:
            try:
                parsed = rparse.parse_snapshots("\n".join(out))
                snapshots = [_snapshot_info(s, job.redactor) for s in parsed]
            except rparse.ResticOutputError as exc:
                problem = _JobFailed(
                    f"could not read restic's snapshot list: {job.redactor.redact(str(exc))}",
                    result.exit_code,
                )
        else:
            problem = self._failure(job, result, repo, "listing snapshots failed")
        if snapshots is None:
            if strict:
                raise problem
            job.log("agent", problem.error)
            return
        self._known_snapshots = [s.id for s in snapshots]
        # A complete list: indexes of snapshots that are gone are dead weight.
        self.indexes.forget_missing(self._known_snapshots)
        collected_at = self._clock()
        pages = _snapshot_pages(snapshots)
        for number, page in enumerate(pages, start=1):
            job.emit(
                protocol.SnapshotsReport(
                    collected_at=collected_at,
                    snapshots=page,
                    job_id=job.job_id,
                    complete=number == len(pages),
                )
            )
        job.log("agent", f"{len(snapshots)} snapshot(s) in the repository")

    async def _report_stats(self, job: _Job, repo: _Repo, *, strict: bool) -> None:
        out: list[str] = []
        result = await self._restic_run(job, repo.build(rc.stats_cmd), out.append)
        stats: rparse.RepoStatsInfo | None = None
        problem = _JobFailed("repository stats failed", result.exit_code)
        if result.exit_code == 0:
            try:
                stats = rparse.parse_stats("\n".join(out))
            except rparse.ResticOutputError as exc:
                problem = _JobFailed(
                    f"could not read restic's stats: {job.redactor.redact(str(exc))}",
                    result.exit_code,
                )
        else:
            problem = self._failure(job, result, repo, "repository stats failed")
        if stats is None:
            if strict:
                raise problem
            job.log("agent", problem.error)
            return
        job.emit(
            protocol.RepoStatsReport(
                collected_at=self._clock(),
                total_size=stats.total_size,
                snapshot_count=stats.snapshots_count,
                total_uncompressed_size=stats.total_uncompressed_size,
                blob_count=stats.blob_count,
                job_id=job.job_id,
            )
        )
        job.log("agent", f"repository size: {_human_bytes(stats.total_size)}")

    # errors ----------------------------------------------------------------

    def _error_text(self, job: _Job, result: ResticResult) -> str:
        """restic's own words: its ``Fatal:`` line (or exit_error), else stderr's tail."""
        text = rerrors.error_summary(result.stderr_tail or "")
        if not text:
            text = f"restic exited with code {result.exit_code}"
        return _cap(job.redactor.redact(text), MAX_ERROR_BYTES)

    def _failure(
        self, job: _Job, result: ResticResult, repo: _Repo, prefix: str | None = None
    ) -> _JobFailed:
        """The job failure for a failed restic run; a lock is named as such,
        with what to do about it, and marks the repository "locked"."""
        kind = rerrors.classify(result.exit_code, result.stderr_tail or "", repo.restic.version)
        detail = self._error_text(job, result)
        repo_status: RepoStatus | None = None
        if kind is rerrors.ResticErrorKind.LOCKED:
            repo_status = "locked"
            text = f"{LOCKED_ADVICE}. restic said: {detail}"
        else:
            label = _ERROR_LABELS.get(kind)
            text = f"{label}: {detail}" if label is not None else detail
        if prefix:
            text = f"{prefix}: {text}"
        return _JobFailed(_cap(text, MAX_ERROR_BYTES), result.exit_code, repo_status=repo_status)


@dataclass(frozen=True)
class _Repo:
    """Everything needed to run restic against one repository for one job."""

    restic: ResticBinary
    creds: protocol.RepoCredentials
    rcreds: rc.RepoCredentials
    opts: rc.GlobalOptions

    def build(self, builder: Callable[..., rc.ResticCommand], **kwargs: Any) -> rc.ResticCommand:
        try:
            return builder(self.opts, self.rcreds, os.environ, **kwargs)
        except ValueError as exc:
            # The builders refuse unsafe input (relative paths, a comma in a
            # tag, a reserved env name) with a message meant for the operator.
            raise _JobFailed(str(exc)) from None


class _Access:
    """restic against one job's repository, for the job kinds kept in their
    own modules (``agent.restore_jobs``)."""

    def __init__(self, runner: JobRunner, job: _Job, repo: _Repo) -> None:
        self._runner = runner
        self._job = job
        self._repo = repo

    @property
    def version(self) -> ResticVersion:
        return self._repo.restic.version

    def build(self, builder: Callable[..., rc.ResticCommand], **kwargs: Any) -> rc.ResticCommand:
        return self._repo.build(builder, **kwargs)

    def lock(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._runner._repo_lock(self._job, self._repo)

    async def run(
        self,
        command: rc.ResticCommand,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> ResticResult:
        return await self._runner._restic_run(
            self._job, command, on_stdout=on_stdout, on_stderr=on_stderr, on_start=on_start
        )

    def failure(self, result: ResticResult, prefix: str | None = None) -> _JobFailed:
        return self._runner._failure(self._job, result, self._repo, prefix)


_ERROR_LABELS = {
    rerrors.ResticErrorKind.WRONG_PASSWORD: "wrong repository password",
    rerrors.ResticErrorKind.NOT_INITIALISED: "the repository does not exist or is not initialised",
    rerrors.ResticErrorKind.LOCKED: "the repository is locked by another restic process",
    rerrors.ResticErrorKind.REPO_UNREACHABLE: "the repository cannot be reached",
    rerrors.ResticErrorKind.PERMISSION_DENIED: "access to the repository was denied",
    rerrors.ResticErrorKind.ALREADY_INITIALISED: "the repository is already initialised",
}


def _ignore(_line: str) -> None:
    return None


async def _noop() -> JobResult | None:
    return None


# -- helpers ----------------------------------------------------------------


def _progress(p: rparse.BackupProgress, redactor: Redactor) -> protocol.Progress:
    percent = max(0.0, min(100.0, p.percent))
    eta = p.seconds_remaining
    if eta is None and 0 < percent < 100 and p.seconds_elapsed:
        # restic 0.14 omits seconds_remaining; a linear estimate beats none.
        eta = int(p.seconds_elapsed * (100 - percent) / percent)
    return protocol.Progress(
        percent=round(percent, 2),
        files_done=p.files_done,
        files_total=p.files_total,
        bytes_done=p.bytes_done,
        bytes_total=p.bytes_total,
        current_file=redactor.line(p.current_file) if p.current_file else None,
        eta_seconds=eta,
    )


def _json_object(line: str) -> dict[str, object] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _json_message(line: str) -> str | None:
    """The human message of a JSON line restic printed, if it is one."""
    data = _json_object(line)
    if data is not None and isinstance(data.get("message"), str):
        return str(data["message"])
    return None


def _origin_line(cmd: protocol.CommandRun) -> str | None:
    """Why the agent's own scheduler started this job, for the top of its log."""
    window = cmd.args.get("window")
    if not isinstance(window, str) or cmd.actor not in ("schedule", "system"):
        return None
    what = "backup" if cmd.kind == "backup" else cmd.kind
    if cmd.args.get("retry_of"):
        attempt = attempt_of(cmd.args)
        return (
            f"retry {attempt - 1} of the scheduled {what} for the {window} window "
            f"(job {cmd.args.get('previous_job_id') or cmd.args['retry_of']} failed)"
        )
    if cmd.args.get("catch_up"):
        return (
            f"catch-up of the scheduled {what} for the {window} window, missed while this "
            "host was asleep or the agent was not running"
        )
    return f"scheduled {what} for the {window} window"


def _public_args(args: dict[str, Any]) -> dict[str, Any]:
    # The control plane never puts a secret in args (credentials travel in
    # their own field), so they can be echoed back with job.started.
    return dict(args)


def _groups_from_args(listed: object) -> list[protocol.SourceGroupSpec]:
    """``args["groups"]``: ``[{"id", "name", "retention": {keep_*}}]``."""
    if not isinstance(listed, list):
        raise _JobFailed("args.groups must be a list of source groups")
    groups = []
    for index, item in enumerate(listed):
        where = f"args.groups[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _JobFailed(f"{where} must be an object with a name")
        group_id = item.get("id", 0)
        try:
            retention = protocol.from_dict(
                protocol.Retention, item.get("retention") or {}, path=f"{where}.retention"
            )
        except protocol.ProtocolError as exc:
            raise _JobFailed(str(exc)) from None
        groups.append(
            protocol.SourceGroupSpec(
                id=group_id if isinstance(group_id, int) else 0,
                name=item["name"],
                includes=[],
                retention=retention,
            )
        )
    return groups


def _has_text(value: str | None) -> bool:
    return value is not None and bool(value.strip())


_RETENTION_FIELDS = (
    ("keep_last", "last"),
    ("keep_hourly", "hourly"),
    ("keep_daily", "daily"),
    ("keep_weekly", "weekly"),
    ("keep_monthly", "monthly"),
    ("keep_yearly", "yearly"),
)


def _retention_kwargs(retention: protocol.Retention) -> dict[str, Any]:
    kwargs: dict[str, Any] = {name: getattr(retention, name) for name, _ in _RETENTION_FIELDS}
    kwargs["keep_within"] = retention.keep_within
    return kwargs


def _retention_text(retention: protocol.Retention) -> str:
    parts = [
        f"{label} {getattr(retention, name)}"
        for name, label in _RETENTION_FIELDS
        if getattr(retention, name) is not None
    ]
    if retention.keep_within is not None:
        parts.append(f"within {retention.keep_within}")
    return "keep " + ", ".join(parts)


def _human_duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole / 3600:.1f} h"


def _backup_error_text(err: rparse.BackupError) -> str:
    where = f"{err.item}: " if err.item else ""
    return f"error: {where}{err.message}"


def _summary_line(s: rparse.BackupSummary) -> str:
    return (
        f"snapshot {(s.snapshot_id or '')[:8] or '(none)'} saved: {s.files_new} new, "
        f"{s.files_changed} changed files, {_human_bytes(s.data_added)} added"
    )


def _snapshot_info(s: rparse.SnapshotInfo, redactor: Redactor) -> protocol.SnapshotInfo:
    return protocol.SnapshotInfo(
        id=s.id,
        short_id=s.short_id or s.id[:8],
        time=s.time,
        hostname=s.hostname,
        # A path is the operator's data, but one that spells a secret must
        # not carry it to the app.
        paths=[redactor.redact(p) for p in s.paths],
        tags=[redactor.redact(t) for t in s.tags],
        tree=s.tree,
    )


def _json_text_bytes(text: str) -> int:
    """Bytes ``text`` takes as a JSON string in a frame (as protocol.encode writes it)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", errors="replace"))


def _snapshot_pages(
    snapshots: list[protocol.SnapshotInfo],
) -> list[list[protocol.SnapshotInfo]]:
    """Split the list into reports that each fit in one frame (always at least one)."""
    pages: list[list[protocol.SnapshotInfo]] = [[]]
    used = 0
    for snap in snapshots:
        size = len(json.dumps(protocol.to_dict(snap))) + 1
        if pages[-1] and used + size > SNAPSHOTS_REPORT_BUDGET:
            pages.append([])
            used = 0
        pages[-1].append(snap)
        used += size
    return pages


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _cap(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "…"


def _job_kind(kind: str) -> protocol.JobKind:
    if kind not in protocol.JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    return kind  # type: ignore[return-value]


def _actor(actor: str) -> protocol.Actor:
    if actor not in ("operator", "schedule", "system", "agent"):
        raise ValueError(f"unknown actor {actor!r}")
    return actor  # type: ignore[return-value]
