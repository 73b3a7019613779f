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
from pathlib import Path
from typing import Any, Literal, Protocol

from agent import protocol
from agent.redact import Redactor
from agent.restic import commands as rc
from agent.restic import errors as rerrors
from agent.restic import parse as rparse
from agent.restic.runner import RepoLocks, ResticResult, run_restic
from agent.restic.version import ResticNotFound, ResticVersion, detect_version, find_restic
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

INTERRUPTED_ERROR = "the agent restarted while this job was running; it did not complete"
NO_CREDENTIALS_ERROR = "no repository credentials received from the control plane yet"
WAITING_MESSAGE = "waiting for another restic job on this repository"
# How many finished job ids are remembered to ignore a repeated command.run.
RECENT_JOBS = 1000

_CREATED_RE = re.compile(r"^created restic repository (\w+) at ")

FinalStatus = Literal["succeeded", "failed", "cancelled"]
RepoStatus = Literal["ready", "init_failed"]
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


@dataclass
class _Outcome:
    status: FinalStatus
    exit_code: int | None = None
    error: str | None = None
    warnings: bool = False
    summary: dict[str, object] | None = None
    repo_status: RepoStatus | None = None


# Long enough for a slow cloud backend to create a repository, short enough
# that a wrong URL shows up while the operator is still looking.
PROBE_TIMEOUT_S = 300.0
# Event numbers reserved per durable write; see Outbox.reserve_seqs.
SEQ_BLOCK = 1000


class _JobFailed(Exception):
    def __init__(
        self, error: str, exit_code: int | None = None, repo_status: RepoStatus | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.exit_code = exit_code
        self.repo_status = repo_status


class _JobCancelled(Exception):
    pass


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

    def __init__(self, deps: _JobDeps, cmd: protocol.CommandRun) -> None:
        self._deps = deps
        self.cmd = cmd
        self.job_id = cmd.job_id
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
        text = self._deps.redactor.line(text.rstrip("\r\n"))
        line = protocol.LogLine(seq=self.seq(), ts=self._deps.clock(), stream=stream, text=text)
        self._lines.append(line)
        self.lines_written += 1
        self._line_bytes += len(text.encode("utf-8", errors="replace")) + 64
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._probe_timeout = probe_timeout
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
        self._hostname = hostname
        self._agent_version = agent_version
        self._grace_seconds = grace_seconds
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.update_settings(settings or JobSettings())

    @property
    def restic(self) -> ResticBinary | None:
        return self._restic

    @property
    def cache_dir(self) -> Path:
        return self._state_dir / "cache"

    def update_settings(self, settings: JobSettings) -> None:
        """Apply a new ``config.update``; running jobs keep what they started with."""
        self._redactor.add_credentials(settings.repository)
        self._settings = settings

    def running_job_ids(self) -> list[str]:
        return list(self._tasks)

    # -- lifecycle -----------------------------------------------------------

    def start(self, cmd: protocol.CommandRun) -> asyncio.Task[None]:
        """Start a job in the background; a duplicate ``command.run`` is ignored."""
        existing = self._tasks.get(cmd.job_id)
        if existing is not None:
            log.info("job %s is already running; ignored a repeated command.run", cmd.job_id)
            return existing
        if cmd.job_id in self._finished or self._store.knows_job(cmd.job_id):
            # A server that re-sends a command after a reconnect gets the
            # job's events from the outbox; running it twice would not help.
            log.info("job %s already ran; ignored a repeated command.run", cmd.job_id)
            return asyncio.create_task(_noop(), name=f"job-{cmd.job_id}-repeat")
        job = _Job(self._deps, cmd)
        self._jobs[cmd.job_id] = job
        task = asyncio.create_task(self._run(job), name=f"job-{cmd.job_id}")
        self._tasks[cmd.job_id] = task
        return task

    async def run(self, cmd: protocol.CommandRun) -> None:
        """Run a job to its end (what tests and the scheduler await)."""
        await self.start(cmd)

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

    async def _run(self, job: _Job) -> None:
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
                )
            )
            log.info("job %s (%s, %s) started", cmd.job_id, cmd.kind, cmd.actor)
            outcome = await self._execute(job)
        except asyncio.CancelledError:
            self._finish_safely(job, _Outcome(status="cancelled"))
            raise
        except Exception as exc:
            log.exception("job %s failed inside the agent", cmd.job_id)
            outcome = _Outcome(status="failed", error=f"internal agent error: {exc}")
        self._finish_safely(job, outcome)

    def _finish_safely(self, job: _Job, outcome: _Outcome) -> None:
        try:
            self._finish(job, outcome)
        except Exception:
            # The job stays marked running and is reported as interrupted by
            # the next start; nothing better can be done without the outbox.
            log.exception("could not record the end of job %s", job.job_id)

    def _finish(self, job: _Job, outcome: _Outcome) -> None:
        try:
            job.flush_progress()
            if outcome.status == "cancelled":
                job.log("agent", "job cancelled")
            elif outcome.status == "failed" and outcome.error:
                job.log("agent", f"job failed: {outcome.error}")
            job.flush_logs()
            error = self._redactor.redact(outcome.error) if outcome.error else None
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
        creds = job.cmd.credentials or self._settings.repository
        if creds is None:
            raise _JobFailed(NO_CREDENTIALS_ERROR)
        # Admin credentials live only as long as this job, but their
        # secrets must never show up in its log either.
        self._redactor.add_credentials(creds)
        bandwidth = job.cmd.bandwidth or self._settings.bandwidth
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
        try:
            yield
        finally:
            lock.release()

    async def _restic_run(
        self,
        job: _Job,
        command: rc.ResticCommand,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        time_limit: float | None = None,
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
            )
        finally:
            if timer is not None:
                timer.cancel()
            if relay is not None:
                relay.cancel()
        if timed_out and not job.cancel.is_set():
            lines = [ln for ln in (result.stderr_tail or "").splitlines() if ln.strip()]
            last = _cap(self._redactor.redact(lines[-1].strip()), MAX_ERROR_BYTES) if lines else ""
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
                        self._error_text(result), result.exit_code, repo_status="init_failed"
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
                    self._error_text(probe), probe.exit_code, repo_status="init_failed"
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
        summaries: list[rparse.BackupSummary] = []

        def on_output(stream: protocol.LogStream, line: str) -> None:
            parsed = rparse.parse_backup_line(line)
            if isinstance(parsed, rparse.BackupProgress):
                job.progress(_progress(parsed, self._redactor))
            elif isinstance(parsed, rparse.BackupSummary):
                summaries.append(parsed)
            elif isinstance(parsed, rparse.BackupError):
                job.log("stderr", _backup_error_text(parsed))
            elif line.strip():
                job.log(stream, _json_message(line) or line)

        async with self._repo_lock(job, repo):
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
                raise _JobFailed(self._failure_text(result, repo), result.exit_code)
            warnings = result.exit_code == 3
            if warnings:
                job.log("agent", "some files could not be read; the snapshot is incomplete")
            if summary is not None and summary.snapshot_id:
                # Reported before job.finished, so the app shows the new
                # snapshot by the time it shows the job as done.
                await self._refresh(job, repo)
        return _Outcome(
            status="succeeded",
            exit_code=result.exit_code,
            warnings=warnings,
            error="some files could not be read" if warnings else None,
            summary=summary.to_dict() if summary is not None else None,
        )

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

    async def _do_unlock(self, job: _Job) -> _Outcome:
        repo = self._prepare(job)
        async with self._repo_lock(job, repo):
            result = await self._restic_run(job, repo.build(rc.unlock_cmd))
            if result.exit_code != 0:
                raise _JobFailed(self._failure_text(result, repo), result.exit_code)
        return _Outcome(status="succeeded", exit_code=0)

    async def _refresh(self, job: _Job, repo: _Repo) -> None:
        """Report snapshots and repo size; a failure here does not fail the job."""
        await self._report_snapshots(job, repo, strict=False)
        await self._report_stats(job, repo, strict=False)

    async def _report_snapshots(self, job: _Job, repo: _Repo, *, strict: bool) -> None:
        out: list[str] = []
        result = await self._restic_run(job, repo.build(rc.snapshots_cmd), out.append)
        snapshots: list[protocol.SnapshotInfo] | None = None
        problem = "listing snapshots failed"
        if result.exit_code == 0:
            try:
                parsed = rparse.parse_snapshots("\n".join(out))
                snapshots = [_snapshot_info(s, self._redactor) for s in parsed]
            except rparse.ResticOutputError as exc:
                problem = (
                    f"could not read restic's snapshot list: {self._redactor.redact(str(exc))}"
                )
        else:
            problem = f"listing snapshots failed: {self._failure_text(result, repo)}"
        if snapshots is None:
            if strict:
                raise _JobFailed(problem, result.exit_code)
            job.log("agent", problem)
            return
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
        problem = "repository stats failed"
        if result.exit_code == 0:
            try:
                stats = rparse.parse_stats("\n".join(out))
            except rparse.ResticOutputError as exc:
                problem = f"could not read restic's stats: {self._redactor.redact(str(exc))}"
        else:
            problem = f"repository stats failed: {self._failure_text(result, repo)}"
        if stats is None:
            if strict:
                raise _JobFailed(problem, result.exit_code)
            job.log("agent", problem)
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

    def _error_text(self, result: ResticResult) -> str:
        """restic's own words: its ``Fatal:`` line (or exit_error), else stderr's tail."""
        text = rerrors.error_summary(result.stderr_tail or "")
        if not text:
            text = f"restic exited with code {result.exit_code}"
        return _cap(self._redactor.redact(text), MAX_ERROR_BYTES)

    def _failure_text(self, result: ResticResult, repo: _Repo) -> str:
        kind = rerrors.classify(result.exit_code, result.stderr_tail or "", repo.restic.version)
        detail = self._error_text(result)
        label = _ERROR_LABELS.get(kind)
        if label is not None:
            return _cap(f"{label}: {detail}", MAX_ERROR_BYTES)
        return detail


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


async def _noop() -> None:
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
