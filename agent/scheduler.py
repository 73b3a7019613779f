"""The agent's own scheduler: backups fire on time whether or not the app is up.

The schedule set (cron expressions, which source groups, maintenance
cadences) comes from the control plane and is kept in the encrypted secrets
file; this module only decides *when*. It looks at the wall clock every few
seconds instead of sleeping until the next window, so a host that was
suspended, or whose clock was corrected, notices at once.

For every cron it remembers, in a small state file (not secret), the moment
up to which windows are done: either the last window it fired or, for a
schedule it has just been given, the moment it got it. On each tick, if the
most recent window of a cron is later than that mark, the window fires once,
however many windows were missed while the host slept or the agent was
stopped (catch-up), and a schedule never fires for windows from before the
agent knew it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol

from croniter import croniter

from agent import protocol
from agent.config import write_private_file_atomic
from agent.jobs import JobResult

log = logging.getLogger(__name__)

TICK_S = 15.0
STATE_FILE_NAME = "scheduler-state.json"
STATE_VERSION = 1
CHECK_KEY = "maintenance:check"
# A window fired later than this after its time is recorded as a catch-up
# (a normal firing is at most a tick late).
ON_TIME_S = 45.0
# A mark this far ahead of the clock means the clock was set back.
CLOCK_BACK_SLACK_S = 300.0


class JobStarter(Protocol):
    """The part of the job runner the scheduler uses."""

    def start(
        self, cmd: protocol.CommandRun, *, schedule_id: int | None = None
    ) -> asyncio.Task[JobResult | None]: ...


# -- cron ---------------------------------------------------------------------


def valid_cron(expr: str) -> bool:
    """Five fields (minute hour day month weekday), as the control plane accepts."""
    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def _at(ts: float, tz: tzinfo | None) -> datetime:
    # Naive local time lets the cron follow the host's wall clock through
    # daylight-saving changes ("02:30 every day" stays 02:30 local).
    return datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)


def latest_window(expr: str, now: float, tz: tzinfo | None = None) -> float:
    """The most recent time at or before ``now`` that ``expr`` matches."""
    # croniter's get_prev is strictly before its start; a microsecond later
    # makes a window that is exactly ``now`` count as reached.
    start = _at(now + 1e-6, tz)
    prev: datetime = croniter(expr, start).get_prev(datetime)
    return prev.timestamp()


def next_window(expr: str, after: float, tz: tzinfo | None = None) -> float:
    """The first time strictly after ``after`` that ``expr`` matches."""
    nxt: datetime = croniter(expr, _at(after, tz)).get_next(datetime)
    return nxt.timestamp()


# -- state ----------------------------------------------------------------------


@dataclass
class _Mark:
    cron: str
    # Windows at or before this time are done: fired, or from before the
    # agent knew this cron.
    after: float
    last_fired_at: float | None = None


@dataclass(frozen=True)
class _Retry:
    due: float
    schedule_id: int
    group_id: int
    attempt: int
    window: str
    # The window's first job, and the attempt that failed just now.
    retry_of: str
    previous_job_id: str


@dataclass(frozen=True)
class _Origin:
    """Why a job was started, to decide what happens when it ends."""

    key: str
    schedule_id: int | None = None
    group_id: int | None = None
    window: str = ""
    first_job_id: str | None = None
    attempt: int = 1


class Scheduler:
    def __init__(
        self,
        *,
        jobs: JobStarter,
        state_path: Path,
        schedule_set: protocol.ScheduleSet | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = TICK_S,
        tz: tzinfo | None = None,
        new_job_id: Callable[[], str] = protocol.new_id,
    ) -> None:
        self._jobs = jobs
        self._state_path = state_path
        self._clock = clock
        self._tick = tick
        self._tz = tz
        self._new_job_id = new_job_id
        self._started_at = clock()
        self._set: protocol.ScheduleSet | None = None
        self._marks: dict[str, _Mark] = self._load()
        self._retries: list[_Retry] = []
        # What the scheduler started and is still running, by group/check key.
        self._active: dict[str, str] = {}
        self._tasks: set[asyncio.Task[JobResult | None]] = set()
        self._wake = asyncio.Event()
        self.replace(schedule_set)

    # -- the schedule set ------------------------------------------------------

    @property
    def schedule_set(self) -> protocol.ScheduleSet | None:
        return self._set

    def replace(self, schedule_set: protocol.ScheduleSet | None) -> None:
        """Use a new schedule set from now on, in one step.

        A cron the scheduler already knew keeps its mark (so an unrelated
        change does not cost a catch-up); a new, changed or re-enabled one
        starts from now.
        """
        now = self._clock()
        marks: dict[str, _Mark] = {}
        for key, cron in self._crons(schedule_set).items():
            old = self._marks.get(key)
            marks[key] = old if old is not None and old.cron == cron else _Mark(cron, now)
        self._set = schedule_set
        self._marks = marks
        self._retries = [r for r in self._retries if self._retry_target(r) is not None]
        self._save()
        self._wake.set()

    def _crons(self, schedule_set: protocol.ScheduleSet | None) -> dict[str, str]:
        crons: dict[str, str] = {}
        if schedule_set is None:
            return crons
        for spec in schedule_set.schedules:
            if not spec.enabled:
                continue
            if not valid_cron(spec.cron):
                log.warning("schedule %d: invalid cron %r; it never fires", spec.id, spec.cron)
                continue
            crons[_schedule_key(spec.id)] = spec.cron
        maintenance = schedule_set.maintenance
        if maintenance.enabled and maintenance.check_cron:
            if valid_cron(maintenance.check_cron):
                crons[CHECK_KEY] = maintenance.check_cron
            else:
                log.warning("the check cadence %r is not a valid cron", maintenance.check_cron)
        return crons

    # -- firing ----------------------------------------------------------------

    def tick(self) -> list[protocol.CommandRun]:
        """Start whatever is due at the clock's current time; returns what was started."""
        now = self._clock()
        due: list[tuple[str, float, bool]] = []
        for key, mark in self._marks.items():
            if mark.after > now + CLOCK_BACK_SLACK_S:
                # The clock went back: forget the future mark, fire from the
                # next window on rather than not at all until the clock catches up.
                log.warning("the system clock went back; the %s schedule restarts from now", key)
                mark.after = latest_window(mark.cron, now, self._tz)
                continue
            window = latest_window(mark.cron, now, self._tz)
            if window <= mark.after:
                continue
            # The window passed before this agent process started, or other
            # windows came and went unfired since the mark, or it is late
            # beyond a tick's delay: the host slept or the agent was down.
            missed = next_window(mark.cron, mark.after, self._tz) < window
            catch_up = missed or window < self._started_at or now - window > ON_TIME_S
            mark.after = window
            mark.last_fired_at = now
            due.append((key, window, catch_up))
        retries = [r for r in self._retries if r.due <= now]
        self._retries = [r for r in self._retries if r.due > now]
        if due:
            # Recorded before the jobs start: a crash in between loses one
            # window rather than running it twice.
            self._save()
        started: list[protocol.CommandRun] = []
        for key, window, catch_up in due:
            started += self._fire(key, window, catch_up)
        for retry in retries:
            started += self._fire_retry(retry)
        return started

    def _fire(self, key: str, window: float, catch_up: bool) -> list[protocol.CommandRun]:
        schedule_set = self._set
        if schedule_set is None:
            return []
        when = self._iso(window)
        if catch_up:
            log.info("catching up the %s window of %s (missed while asleep or stopped)", key, when)
        if key == CHECK_KEY:
            return self._fire_check(schedule_set.maintenance, when, catch_up)
        spec = next((s for s in schedule_set.schedules if _schedule_key(s.id) == key), None)
        if spec is None:
            return []
        groups = {g.id: g for g in schedule_set.source_groups}
        started = []
        for group_id in spec.source_group_ids:
            group = groups.get(group_id)
            if group is None:
                log.warning("schedule %d names an unknown source group %d", spec.id, group_id)
                continue
            # The new window covers whatever a pending retry would have done.
            self._retries = [
                r for r in self._retries if (r.schedule_id, r.group_id) != (spec.id, group_id)
            ]
            args: dict[str, Any] = {"window": when, "attempt": 1}
            if catch_up:
                args["catch_up"] = True
            cmd = self._start_backup(spec.id, group, args, first_job_id=None)
            if cmd is not None:
                started.append(cmd)
        return started

    def _fire_check(
        self, maintenance: protocol.MaintenanceSpec, when: str, catch_up: bool
    ) -> list[protocol.CommandRun]:
        if CHECK_KEY in self._active:
            log.warning("the scheduled check of %s is skipped: the last one still runs", when)
            return []
        args: dict[str, Any] = {
            "window": when,
            "read_data_subset_percent": maintenance.check_subset_percent,
        }
        if catch_up:
            args["catch_up"] = True
        cmd = protocol.CommandRun(
            job_id=self._new_job_id(), kind="check", actor="system", args=args
        )
        self._launch(cmd, _Origin(key=CHECK_KEY, window=when))
        return [cmd]

    def _start_backup(
        self,
        schedule_id: int,
        group: protocol.SourceGroupSpec,
        args: dict[str, Any],
        first_job_id: str | None,
    ) -> protocol.CommandRun | None:
        key = _group_key(group.id)
        running = self._active.get(key)
        if running is not None:
            # Piling up backups of one group behind a slow one helps nobody.
            log.warning(
                "scheduled backup of group %s skipped: job %s of the same group still runs",
                group.name,
                running,
            )
            return None
        cmd = protocol.CommandRun(
            job_id=self._new_job_id(),
            kind="backup",
            actor="schedule",
            source_group=group,
            args=args,
        )
        origin = _Origin(
            key=key,
            schedule_id=schedule_id,
            group_id=group.id,
            window=str(args.get("window", "")),
            first_job_id=first_job_id or cmd.job_id,
            attempt=int(args.get("attempt", 1)),
        )
        self._launch(cmd, origin)
        return cmd

    def _launch(self, cmd: protocol.CommandRun, origin: _Origin) -> None:
        log.info("schedule: starting %s job %s (%s)", cmd.kind, cmd.job_id, origin.key)
        task = self._jobs.start(cmd, schedule_id=origin.schedule_id)
        self._active[origin.key] = cmd.job_id
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._on_done(done, cmd.job_id, origin))

    def _on_done(self, task: asyncio.Task[JobResult | None], job_id: str, origin: _Origin) -> None:
        self._tasks.discard(task)
        if self._active.get(origin.key) == job_id:
            del self._active[origin.key]
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if (
            result is None
            or result.status != "failed"
            or result.retry_at is None
            or origin.schedule_id is None
            or origin.group_id is None
        ):
            return
        # Retries live in memory only: after an agent restart the schedule's
        # next window (caught up once if it passed meanwhile) does the work.
        self._retries.append(
            _Retry(
                due=result.retry_at,
                schedule_id=origin.schedule_id,
                group_id=origin.group_id,
                attempt=origin.attempt + 1,
                window=origin.window,
                retry_of=origin.first_job_id or job_id,
                previous_job_id=job_id,
            )
        )
        self._wake.set()

    def _retry_target(self, retry: _Retry) -> protocol.SourceGroupSpec | None:
        """The group a retry backs up, if its schedule still wants it."""
        schedule_set = self._set
        if schedule_set is None:
            return None
        spec = next((s for s in schedule_set.schedules if s.id == retry.schedule_id), None)
        if spec is None or not spec.enabled or retry.group_id not in spec.source_group_ids:
            return None
        return next((g for g in schedule_set.source_groups if g.id == retry.group_id), None)

    def _fire_retry(self, retry: _Retry) -> list[protocol.CommandRun]:
        group = self._retry_target(retry)
        if group is None:
            log.info("retry of job %s dropped: its schedule or group changed", retry.retry_of)
            return []
        args: dict[str, Any] = {
            "window": retry.window,
            "attempt": retry.attempt,
            "retry_of": retry.retry_of,
            "previous_job_id": retry.previous_job_id,
        }
        cmd = self._start_backup(retry.schedule_id, group, args, first_job_id=retry.retry_of)
        return [cmd] if cmd is not None else []

    # -- the loop ----------------------------------------------------------------

    def next_due(self) -> float | None:
        """The wall-clock time of the next window or retry, if any."""
        now = self._clock()
        times = [
            next_window(mark.cron, max(now, mark.after), self._tz) for mark in self._marks.values()
        ]
        times += [r.due for r in self._retries]
        return min(times) if times else None

    async def run(self, stop: asyncio.Event) -> None:
        """Fire schedules until ``stop`` is set."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:
                # One bad tick (a full disk for the state file) must not end
                # the agent's scheduling for good.
                log.exception("the scheduler tick failed")
            delay = self._tick
            due = self.next_due()
            if due is not None:
                # Wake just after the window rather than up to a tick late;
                # never sleep longer than a tick, so a suspend is noticed.
                delay = min(delay, max(due - self._clock() + 0.01, 0.01))
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([stopper, waker], timeout=delay, return_when="FIRST_COMPLETED")
            finally:
                for waiter in (stopper, waker):
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter

    async def wait_idle(self) -> None:
        """Wait until every job the scheduler started has finished (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- persistence ---------------------------------------------------------------

    def _load(self) -> dict[str, _Mark]:
        try:
            raw = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "ignored the scheduler state %s (%s): missed windows are not caught up once",
                self._state_path,
                exc,
            )
            return {}
        marks: dict[str, _Mark] = {}
        entries = raw.get("marks") if isinstance(raw, dict) else None
        if not isinstance(entries, dict):
            return marks
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            cron, after, fired = entry.get("cron"), entry.get("after"), entry.get("last_fired_at")
            if not isinstance(cron, str) or not isinstance(after, int | float):
                continue
            last = float(fired) if isinstance(fired, int | float) else None
            marks[str(key)] = _Mark(cron=cron, after=float(after), last_fired_at=last)
        return marks

    def _save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "marks": {
                key: {"cron": m.cron, "after": m.after, "last_fired_at": m.last_fired_at}
                for key, m in sorted(self._marks.items())
            },
        }
        text = json.dumps(data, indent=1, sort_keys=True)
        try:
            write_private_file_atomic(self._state_path, text.encode("utf-8"))
        except OSError as exc:
            log.error("could not save the scheduler state %s: %s", self._state_path, exc)

    def _iso(self, ts: float) -> str:
        moment = _at(ts, self._tz) if self._tz is not None else _at(ts, None).astimezone()
        return moment.isoformat(timespec="seconds")


def _schedule_key(schedule_id: int) -> str:
    return f"schedule:{schedule_id}"


def _group_key(group_id: int) -> str:
    return f"group:{group_id}"
