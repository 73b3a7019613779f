"""The agent's scheduler with an injected wall clock.

The job runner is replaced by a recorder here: what is under test is *when*
jobs start and with what, not how restic runs (tests/unit/agent/test_jobs.py
runs real restic, and one test below drives the scheduler into a real runner).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.jobs import JobResult
from agent.retry import BACKOFF_CAP_S, attempt_of, retry_delay
from agent.scheduler import (
    CHECK_KEY,
    STATE_FILE_NAME,
    Scheduler,
    latest_window,
    next_window,
    valid_cron,
)


def at(text: str) -> float:
    """An epoch time from 'YYYY-MM-DD HH:MM[:SS]' in UTC."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Started:
    cmd: protocol.CommandRun
    schedule_id: int | None
    result: asyncio.Future[JobResult | None]


@dataclass
class Recorder:
    """Stands in for JobRunner.start: records commands, finishes them on request."""

    started: list[Started] = field(default_factory=list)

    def start(
        self, cmd: protocol.CommandRun, *, schedule_id: int | None = None
    ) -> asyncio.Task[JobResult | None]:
        future: asyncio.Future[JobResult | None] = asyncio.get_running_loop().create_future()
        self.started.append(Started(cmd, schedule_id, future))

        async def wait() -> JobResult | None:
            return await future

        return asyncio.create_task(wait())

    async def finish(
        self, index: int, status: str = "succeeded", retry_at: float | None = None
    ) -> None:
        job = self.started[index]
        job.result.set_result(
            JobResult(job_id=job.cmd.job_id, status=status, retry_at=retry_at)  # type: ignore[arg-type]
        )
        # Let the task and the scheduler's done-callback run.
        for _ in range(3):
            await asyncio.sleep(0)


def group(gid: int, name: str, **kwargs: Any) -> protocol.SourceGroupSpec:
    return protocol.SourceGroupSpec(id=gid, name=name, includes=[f"/srv/{name}"], **kwargs)


def schedule_set(
    *schedules: protocol.ScheduleSpec,
    groups: list[protocol.SourceGroupSpec] | None = None,
    maintenance: protocol.MaintenanceSpec | None = None,
    version: int = 1,
) -> protocol.ScheduleSet:
    return protocol.ScheduleSet(
        version=version,
        schedules=list(schedules),
        source_groups=groups if groups is not None else [group(1, "etc"), group(2, "home")],
        maintenance=maintenance or protocol.MaintenanceSpec(check_cron=None),
    )


def every(cron: str, *group_ids: int, sid: int = 7, enabled: bool = True) -> protocol.ScheduleSpec:
    return protocol.ScheduleSpec(
        id=sid, cron=cron, enabled=enabled, source_group_ids=list(group_ids) or [1]
    )


@dataclass
class Rig:
    clock: Clock
    jobs: Recorder
    state: Path
    scheduler: Scheduler

    def restart(self, sset: protocol.ScheduleSet | None) -> None:
        """A new agent process: same state file, nothing in memory."""
        self.jobs = Recorder()
        self.scheduler = make_scheduler(self.clock, self.jobs, self.state, sset)


def make_scheduler(
    clock: Clock, jobs: Recorder, state: Path, sset: protocol.ScheduleSet | None
) -> Scheduler:
    ids = iter(f"job{i:04d}" for i in range(10_000))
    return Scheduler(
        jobs=jobs,
        state_path=state,
        schedule_set=sset,
        clock=clock,
        tz=UTC,
        new_job_id=lambda: next(ids),
    )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    clock = Clock(at("2024-03-01 09:59:30"))
    jobs = Recorder()
    state = tmp_path / "state" / STATE_FILE_NAME
    return Rig(clock, jobs, state, make_scheduler(clock, jobs, state, None))


# -- cron arithmetic -------------------------------------------------------------


def test_windows_at_and_around_a_boundary() -> None:
    assert latest_window("* * * * *", at("2024-03-01 10:01"), UTC) == at("2024-03-01 10:01")
    assert latest_window("* * * * *", at("2024-03-01 10:00:59"), UTC) == at("2024-03-01 10:00")
    assert latest_window("30 2 * * *", at("2024-03-01 02:29"), UTC) == at("2024-02-29 02:30")
    assert next_window("30 2 * * *", at("2024-03-01 02:30"), UTC) == at("2024-03-02 02:30")
    assert next_window("0 3 * * 0", at("2024-03-01 00:00"), UTC) == at("2024-03-03 03:00")


def test_only_five_field_crons_are_valid() -> None:
    assert valid_cron("*/15 * * * *")
    assert not valid_cron("* * * * * *")  # seconds: the control plane refuses them too
    assert not valid_cron("61 * * * *")
    assert not valid_cron("")


def test_local_time_is_the_default_zone() -> None:
    now = time.time()
    window = latest_window("0 * * * *", now)
    local = datetime.fromtimestamp(window)
    assert (local.minute, local.second) == (0, 0)
    assert now - 3600 < window <= now


# -- firing ------------------------------------------------------------------------


async def test_a_schedule_fires_once_per_window_one_job_per_group(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("* * * * *", 1, 2)))
    assert rig.scheduler.tick() == []  # 09:59:00 was before the schedule was known
    rig.clock.now = at("2024-03-01 10:00:00")
    fired = rig.scheduler.tick()
    assert [c.source_group.name for c in fired if c.source_group] == ["etc", "home"]
    for job in rig.jobs.started:
        assert job.cmd.kind == "backup" and job.cmd.actor == "schedule"
        assert job.schedule_id == 7
        assert protocol.JOB_ID_PATTERN.fullmatch(job.cmd.job_id)
        assert job.cmd.args["attempt"] == 1 and "catch_up" not in job.cmd.args
        assert job.cmd.args["window"] == "2024-03-01T10:00:00+00:00"
    rig.clock.now = at("2024-03-01 10:00:40")
    await rig.jobs.finish(0)
    await rig.jobs.finish(1)
    assert rig.scheduler.tick() == []  # same window
    rig.clock.now = at("2024-03-01 10:01:05")
    assert len(rig.scheduler.tick()) == 2
    assert len({j.cmd.job_id for j in rig.jobs.started}) == 4


async def test_missed_windows_are_caught_up_once(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("*/5 * * * *")))
    rig.clock.now = at("2024-03-01 10:00:01")
    assert len(rig.scheduler.tick()) == 1
    await rig.jobs.finish(0)
    # The host sleeps for five hours: sixty windows pass.
    rig.clock.now = at("2024-03-01 15:02:00")
    fired = rig.scheduler.tick()
    assert len(fired) == 1
    assert fired[0].args["catch_up"] is True
    assert fired[0].args["window"] == "2024-03-01T15:00:00+00:00"
    await rig.jobs.finish(1)
    rig.clock.now = at("2024-03-01 15:04:59")
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-01 15:05:00")
    assert len(rig.scheduler.tick()) == 1


async def test_catch_up_after_the_agent_was_stopped_across_a_window(rig: Rig) -> None:
    sset = schedule_set(every("0 2 * * *"))
    rig.scheduler.replace(sset)
    rig.clock.now = at("2024-03-02 02:00:00")
    assert len(rig.scheduler.tick()) == 1
    # Stopped at 03:00, started again two days later at 08:00.
    rig.clock.now = at("2024-03-04 08:00:00")
    rig.restart(sset)
    fired = rig.scheduler.tick()
    assert len(fired) == 1 and fired[0].args["catch_up"] is True
    assert fired[0].args["window"] == "2024-03-04T02:00:00+00:00"
    # A second restart the same morning does not run it again.
    rig.restart(sset)
    assert rig.scheduler.tick() == []


async def test_a_new_schedule_does_not_catch_up_windows_from_before_it_was_received(
    rig: Rig,
) -> None:
    rig.clock.now = at("2024-03-01 12:00:00")
    rig.scheduler.replace(schedule_set(every("0 2 * * *")))
    rig.clock.now = at("2024-03-01 12:00:20")
    assert rig.scheduler.tick() == []
    rig.restart(schedule_set(every("0 2 * * *")))
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-02 02:00:03")
    assert len(rig.scheduler.tick()) == 1


async def test_disabled_schedules_never_fire_and_re_enabling_does_not_catch_up(
    rig: Rig,
) -> None:
    rig.scheduler.replace(schedule_set(every("0 * * * *", enabled=False)))
    for hour in range(10, 14):
        rig.clock.now = at(f"2024-03-01 {hour}:00:01")
        assert rig.scheduler.tick() == []
    rig.scheduler.replace(schedule_set(every("0 * * * *", enabled=True), version=2))
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-01 14:00:00")
    assert len(rig.scheduler.tick()) == 1


async def test_a_new_set_replaces_the_old_one(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("0 * * * *", sid=1), every("30 * * * *", 2, sid=2)))
    rig.clock.now = at("2024-03-01 10:00:00")
    assert [j.schedule_id for j in rig.jobs.started] == []
    rig.scheduler.tick()
    await rig.jobs.finish(0)
    # Schedule 1 is gone, schedule 2 moved from :30 to :45 (a changed cron
    # starts afresh), a new schedule 3 arrives.
    rig.scheduler.replace(
        schedule_set(every("45 * * * *", 2, sid=2), every("15 * * * *", 1, sid=3), version=2)
    )
    assert rig.scheduler.schedule_set is not None and rig.scheduler.schedule_set.version == 2
    rig.clock.now = at("2024-03-01 11:10:00")
    # 10:15 (schedule 3) and 10:45 (schedule 2) passed after the set arrived.
    fired = rig.scheduler.tick()
    assert sorted(c.source_group.id for c in fired if c.source_group) == [1, 2]
    assert sorted(j.schedule_id for j in rig.jobs.started[1:]) == [2, 3]
    state = json.loads(rig.state.read_text())
    assert sorted(state["marks"]) == ["schedule:2", "schedule:3"]


async def test_an_unchanged_schedule_keeps_its_mark_across_set_versions(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("0 2 * * *")))
    rig.clock.now = at("2024-03-02 02:00:00")
    assert len(rig.scheduler.tick()) == 1
    await rig.jobs.finish(0)
    rig.clock.now = at("2024-03-03 05:00:00")
    # A group's paths changed (new version) while the 02:00 window was missed.
    rig.scheduler.replace(
        schedule_set(every("0 2 * * *"), groups=[group(1, "etc", excludes=["*.tmp"])], version=9)
    )
    (fired,) = rig.scheduler.tick()
    assert fired.source_group is not None and fired.source_group.excludes == ["*.tmp"]


async def test_a_group_still_backing_up_is_not_started_twice(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("* * * * *")))
    rig.clock.now = at("2024-03-01 10:00:00")
    assert len(rig.scheduler.tick()) == 1
    rig.clock.now = at("2024-03-01 10:01:00")
    assert rig.scheduler.tick() == []  # job0000 still runs
    await rig.jobs.finish(0)
    rig.clock.now = at("2024-03-01 10:02:00")
    assert len(rig.scheduler.tick()) == 1


async def test_check_fires_from_the_maintenance_cadence(rig: Rig) -> None:
    maintenance = protocol.MaintenanceSpec(
        check_cron="30 5 * * 6", forget_cron="30 3 * * *", check_subset_percent=7
    )
    rig.scheduler.replace(schedule_set(maintenance=maintenance))
    rig.clock.now = at("2024-03-02 05:30:00")  # a Saturday
    (check,) = rig.scheduler.tick()
    assert (check.kind, check.actor) == ("check", "system")
    assert check.args["read_data_subset_percent"] == 7
    assert rig.jobs.started[0].schedule_id is None
    # forget and prune are the control plane's to start (they need the admin credential).
    rig.clock.now = at("2024-03-03 03:30:00")
    assert rig.scheduler.tick() == []
    await rig.jobs.finish(0)
    rig.scheduler.replace(
        schedule_set(maintenance=protocol.MaintenanceSpec(enabled=False, check_cron="* * * * *"))
    )
    rig.clock.now = at("2024-03-03 04:00:00")
    assert rig.scheduler.tick() == []
    assert CHECK_KEY not in json.loads(rig.state.read_text())["marks"]


async def test_clock_set_back_does_not_stall_the_schedule(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("0 * * * *")))
    rig.clock.now = at("2024-03-05 10:00:00")  # a wrong clock, days ahead
    assert len(rig.scheduler.tick()) == 1
    await rig.jobs.finish(0)
    rig.clock.now = at("2024-03-01 10:30:00")  # NTP puts it right
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-01 11:00:00")
    assert len(rig.scheduler.tick()) == 1


async def test_invalid_crons_are_ignored(rig: Rig) -> None:
    rig.scheduler.replace(schedule_set(every("every day"), every("* * * * * *", sid=8)))
    rig.clock.now = at("2024-03-02 00:00:00")
    assert rig.scheduler.tick() == []
    assert rig.scheduler.next_due() is None


# -- retries ---------------------------------------------------------------------------


def test_retry_backoff_is_exponential_and_capped() -> None:
    assert [retry_delay(n, 5, 60) for n in range(1, 7)] == [60, 120, 240, 480, 960, None]
    assert retry_delay(1, 0, 60) is None
    assert retry_delay(10, 10, 3600) == BACKOFF_CAP_S
    assert retry_delay(1, 3, 86400) == 86400  # the cap never cuts below the base
    assert attempt_of({}) == 1 and attempt_of({"attempt": 3}) == 3
    assert attempt_of({"attempt": True}) == 1 and attempt_of({"attempt": -2}) == 1


async def test_a_failed_scheduled_backup_is_retried_with_backoff(rig: Rig) -> None:
    groups = [group(1, "etc", retry_max=2, retry_backoff_seconds=60)]
    rig.scheduler.replace(schedule_set(every("0 3 * * *"), groups=groups))
    rig.clock.now = at("2024-03-02 03:00:00")
    (first,) = rig.scheduler.tick()
    rig.clock.now = at("2024-03-02 03:00:10")
    # The runner announced the retry in the job's log and says when.
    await rig.jobs.finish(0, "failed", retry_at=at("2024-03-02 03:01:10"))
    assert rig.scheduler.next_due() == at("2024-03-02 03:01:10")
    rig.clock.now = at("2024-03-02 03:01:09")
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-02 03:01:10")
    (retry,) = rig.scheduler.tick()
    assert retry.actor == "schedule" and rig.jobs.started[1].schedule_id == 7
    assert retry.args["attempt"] == 2
    assert retry.args["retry_of"] == first.job_id == retry.args["previous_job_id"]
    assert retry.args["window"] == first.args["window"]
    await rig.jobs.finish(1, "failed", retry_at=at("2024-03-02 03:03:10"))
    rig.clock.now = at("2024-03-02 03:03:11")
    (again,) = rig.scheduler.tick()
    assert again.args["attempt"] == 3
    assert again.args["retry_of"] == first.job_id
    assert again.args["previous_job_id"] == retry.job_id
    await rig.jobs.finish(2, "failed", retry_at=None)  # retries used up
    rig.clock.now = at("2024-03-02 05:00:00")
    assert rig.scheduler.tick() == []


async def test_cancelled_jobs_are_not_retried_and_a_new_window_replaces_a_retry(
    rig: Rig,
) -> None:
    groups = [group(1, "etc", retry_max=3, retry_backoff_seconds=600)]
    rig.scheduler.replace(schedule_set(every("*/5 * * * *"), groups=groups))
    rig.clock.now = at("2024-03-01 10:00:00")
    rig.scheduler.tick()
    await rig.jobs.finish(0, "cancelled")
    rig.clock.now = at("2024-03-01 10:04:00")
    assert rig.scheduler.tick() == []
    rig.clock.now = at("2024-03-01 10:05:00")
    rig.scheduler.tick()
    await rig.jobs.finish(1, "failed", retry_at=at("2024-03-01 10:15:00"))
    rig.clock.now = at("2024-03-01 10:10:00")
    (window,) = rig.scheduler.tick()
    assert window.args["attempt"] == 1  # the 10:10 window, not the retry
    await rig.jobs.finish(2)
    rig.clock.now = at("2024-03-01 10:15:00")
    (nxt,) = rig.scheduler.tick()
    assert nxt.args["attempt"] == 1 and "retry_of" not in nxt.args


async def test_a_retry_is_dropped_when_its_schedule_goes_away(rig: Rig) -> None:
    groups = [group(1, "etc", retry_max=3, retry_backoff_seconds=60)]
    rig.scheduler.replace(schedule_set(every("0 3 * * *"), groups=groups))
    rig.clock.now = at("2024-03-02 03:00:00")
    rig.scheduler.tick()
    await rig.jobs.finish(0, "failed", retry_at=at("2024-03-02 03:01:00"))
    rig.scheduler.replace(schedule_set(every("0 3 * * *", enabled=False), groups=groups))
    rig.clock.now = at("2024-03-02 03:02:00")
    assert rig.scheduler.tick() == []


# -- persistence and the loop -----------------------------------------------------


async def test_state_file_is_private_atomic_json_without_secrets(rig: Rig) -> None:
    groups = [group(1, "etc", pre_hook="pg_dump --password=hunter2 > /x")]
    rig.scheduler.replace(schedule_set(every("0 * * * *"), groups=groups))
    rig.clock.now = at("2024-03-01 10:00:00")
    rig.scheduler.tick()
    data = json.loads(rig.state.read_text())
    assert data["version"] == 1
    assert data["marks"]["schedule:7"] == {
        "cron": "0 * * * *",
        "after": at("2024-03-01 10:00:00"),
        "last_fired_at": at("2024-03-01 10:00:00"),
    }
    assert rig.state.stat().st_mode & 0o777 == 0o600
    assert b"hunter2" not in rig.state.read_bytes()
    assert [p.name for p in rig.state.parent.iterdir()] == [STATE_FILE_NAME]


async def test_a_damaged_state_file_costs_only_the_catch_up(tmp_path: Path) -> None:
    state = tmp_path / STATE_FILE_NAME
    state.write_text("{not json")
    clock = Clock(at("2024-03-01 10:00:30"))
    jobs = Recorder()
    scheduler = make_scheduler(clock, jobs, state, schedule_set(every("* * * * *")))
    assert scheduler.tick() == []
    clock.now = at("2024-03-01 10:01:00")
    assert len(scheduler.tick()) == 1
    assert json.loads(state.read_text())["marks"]["schedule:7"]["cron"] == "* * * * *"


async def test_the_loop_wakes_for_the_window_not_a_tick_later(tmp_path: Path) -> None:
    # A real clock shifted so that a minute boundary is 0.3 s away; the tick
    # is long, so only sleeping until the window can fire it in time.
    base = time.time()
    offset = (at("2024-03-01 10:00:00") - 0.3) - base
    clock = lambda: time.time() + offset  # noqa: E731
    jobs = Recorder()
    scheduler = Scheduler(
        jobs=jobs,
        state_path=tmp_path / STATE_FILE_NAME,
        schedule_set=schedule_set(every("* * * * *")),
        clock=clock,
        tick=20.0,
        tz=UTC,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    started = time.monotonic()
    while not jobs.started and time.monotonic() - started < 5:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(jobs.started) == 1
    assert 0.25 <= elapsed < 1.5, elapsed
    for job in jobs.started:
        job.result.cancel()


async def test_the_loop_notices_a_jump_in_the_clock_within_a_tick(tmp_path: Path) -> None:
    clock = Clock(at("2024-03-01 10:00:30"))
    jobs = Recorder()
    scheduler = Scheduler(
        jobs=jobs,
        state_path=tmp_path / STATE_FILE_NAME,
        schedule_set=schedule_set(every("0 3 * * *")),
        clock=clock,
        tick=0.1,
        tz=UTC,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0.3)
    assert jobs.started == []
    clock.now = at("2024-03-02 07:00:00")  # woke from suspend the next morning
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(jobs.started) == 1 and jobs.started[0].cmd.args["catch_up"] is True
    jobs.started[0].result.cancel()


async def test_a_window_that_passed_just_before_the_agent_started_is_a_catch_up(rig: Rig) -> None:
    sset = schedule_set(every("* * * * *"))
    rig.scheduler.replace(sset)
    rig.clock.now = at("2024-03-01 10:00:00")
    assert len(rig.scheduler.tick()) == 1
    await rig.jobs.finish(0)
    # Stopped at 10:00:30, started again three seconds after the 10:01 window.
    rig.clock.now = at("2024-03-01 10:01:03")
    rig.restart(sset)
    (fired,) = rig.scheduler.tick()
    assert fired.args["catch_up"] is True
    await rig.jobs.finish(0)
    rig.clock.now = at("2024-03-01 10:02:01")
    (fired,) = rig.scheduler.tick()
    assert "catch_up" not in fired.args
