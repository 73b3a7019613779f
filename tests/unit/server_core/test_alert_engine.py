"""The alert engine against a real SQLite store and the real ingest path:
job outcomes raise and resolve within moments, silence and missed backups
on the tick and on timers. Time-based rules run on an injected clock."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent import protocol as p
from server_core.events import AlertChanged, HostChanged, JobChanged
from server_core.ingest import EventIngestor, Incoming
from server_core.models import Host, Job
from server_core.services.alerts import AlertEngine, AlertService
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.views import AlertView

from .conftest import GROUP, Services, add_host

DAY = 86400.0


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class Sink:
    async def ack(self, ids: list[str]) -> None:
        pass

    async def abort(self, reason: str) -> None:
        raise AssertionError(f"the ingestor gave up on a batch: {reason}")


@pytest.fixture
async def ingestor(svc: Services) -> AsyncIterator[EventIngestor]:
    ing = EventIngestor(svc.store, svc.ctx.bus)
    ing.start()
    yield ing
    await ing.stop()


@pytest.fixture
async def make_engine(svc: Services) -> AsyncIterator[Callable[..., AlertEngine]]:
    engines: list[AlertEngine] = []

    def make(*, start: bool = True, clock: Callable[[], float] = time.time, **kw: Any):
        kw.setdefault("tick_s", 3600.0)  # ticks are driven by the tests
        engine = AlertEngine(svc.ctx, AlertService(svc.ctx, clock=clock), clock=clock, **kw)
        if start:
            engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop()


@pytest.fixture
def alerts(svc: Services) -> AlertService:
    return AlertService(svc.ctx)


async def until(pred: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def until_async(pred: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alert_changes(svc: Services, transition: str | None = None) -> list[AlertChanged]:
    return [
        e
        for e in svc.events
        if isinstance(e, AlertChanged) and (transition is None or e.transition == transition)
    ]


async def run_job(
    ing: EventIngestor,
    host_id: int,
    kind: str,
    status: str,
    *,
    group: int | None = None,
    error: str | None = None,
    finished_at: float | None = None,
    repo_status: str | None = None,
    job_id: str | None = None,
) -> str:
    """A job as an agent reports it: job.started then job.finished."""
    job_id = job_id or uuid.uuid4().hex
    at = time.time() if finished_at is None else finished_at
    sink = Sink()
    for message in (
        p.JobStarted(
            job_id=job_id,
            seq=1,
            kind=kind,
            actor="schedule",
            started_at=at - 1,
            source_group_id=group,
        ),
        p.JobFinished(
            job_id=job_id,
            seq=2,
            status=status,
            finished_at=at,
            exit_code=None if status == "succeeded" else 1,
            error=error,
            repo_status=repo_status,
        ),
    ):
        envelope = p.Envelope(type=message.TYPE, id=p.new_id(), ts=time.time(), payload=message)
        await ing.submit(Incoming(host_id, envelope, sink))
    return job_id


async def replay_finished(ing: EventIngestor, host_id: int, job_id: str, at: float) -> None:
    """The agent sends job.finished again (its ack was lost)."""
    message = p.JobFinished(job_id=job_id, seq=2, status="failed", finished_at=at, error="again")
    envelope = p.Envelope(type=message.TYPE, id=p.new_id(), ts=time.time(), payload=message)
    await ing.submit(Incoming(host_id, envelope, Sink()))


async def group_id(svc: Services, host_id: int, name: str = "etc") -> int:
    view = await svc.sources.create_group(host_id, {**GROUP, "name": name}, OPERATOR)
    return view.id


async def only(alerts: AlertService, **filters: Any) -> list[AlertView]:
    return await alerts.list_alerts(**filters)


# -- job outcomes --------------------------------------------------------------


async def test_a_failed_backup_raises_its_alert_within_two_seconds_of_the_job_event(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc, online=True)
    etc = await group_id(svc, host)
    make_engine()
    finished_seen: dict[str, float] = {}
    raised_at: list[float] = []

    def watch(event: object) -> None:
        if isinstance(event, JobChanged):
            finished_seen.setdefault(event.job_id, time.monotonic())
        if isinstance(event, AlertChanged) and event.transition == "raised":
            raised_at.append(time.monotonic())

    svc.ctx.bus.subscribe(watch)
    job = await run_job(
        ingestor, host, "backup", "failed", group=etc, error="Fatal: wrong password or no key found"
    )
    await until(lambda: raised_at, "the backup_failed alert")
    assert raised_at[0] - finished_seen[job] < 2.0
    [alert] = await only(alerts)
    assert (alert.kind, alert.severity, alert.status, alert.count, alert.host_id) == (
        "backup_failed",
        "critical",
        "open",
        1,
        host,
    )
    assert alert.message == "Backup of 'etc' on web1 failed: Fatal: wrong password or no key found"
    [entry] = await svc.store.call(list_audit, action="alert.raised")
    assert entry.actor_kind == "system" and entry.target_id == str(alert.id)


async def test_ten_failures_of_a_group_are_one_alert_counted_ten_times(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc)
    etc = await group_id(svc, host, "etc")
    home = await group_id(svc, host, "home")
    make_engine()
    t0 = time.time() - 1000
    jobs = []
    for i in range(10):
        jobs.append(
            await run_job(
                ingestor, host, "backup", "failed", group=etc, error=f"fail {i}", finished_at=t0 + i
            )
        )

    async def counted() -> bool:
        found = await alerts.list_alerts()
        return len(found) == 1 and found[0].count == 10

    await until_async(counted, "count 10")
    [alert] = await alerts.list_alerts()
    assert alert.message.endswith("fail 9")
    assert (alert.first_seen_at, alert.last_seen_at) == (t0, t0 + 9)
    assert len(await svc.store.call(list_audit, action="alert.raised")) == 1
    assert len(alert_changes(svc, "raised")) == 1
    # A replayed job.finished is the same failure: no eleventh count. The
    # other group's failure afterwards shows the replay was evaluated.
    await replay_finished(ingestor, host, jobs[-1], t0 + 9)
    await run_job(ingestor, host, "backup", "failed", group=home, error="disk full")
    await until(lambda: len(alert_changes(svc, "raised")) == 2, "the second group's alert")
    by_message = {a.message: a for a in await alerts.list_alerts()}
    assert by_message["Backup of 'etc' on web1 failed: fail 9"].count == 10
    assert by_message["Backup of 'home' on web1 failed: disk full"].count == 1


async def test_a_later_success_resolves_and_a_cancelled_job_changes_nothing(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc)
    etc = await group_id(svc, host)
    other = await add_host(svc, "db1")
    make_engine()
    await run_job(ingestor, host, "backup", "failed", group=etc, error="boom")
    await until(lambda: alert_changes(svc, "raised"), "the alert")
    # Cancelled: neither a new failure nor a success (barrier: db1's failure).
    await run_job(ingestor, host, "backup", "cancelled", group=etc)
    await run_job(ingestor, other, "check", "failed", error="pack 1a2b is damaged")
    await until(lambda: len(alert_changes(svc, "raised")) == 2, "db1's alert")
    web_alert = (await alerts.list_alerts(host_id=host))[0]
    assert (web_alert.status, web_alert.count) == ("open", 1)
    await run_job(ingestor, host, "backup", "succeeded", group=etc)
    await until(lambda: alert_changes(svc, "resolved"), "the auto-resolve")
    assert (await alerts.get_alert(web_alert.id)).status == "resolved"
    [entry] = await svc.store.call(list_audit, action="alert.resolved")
    assert entry.actor_kind == "system" and "succeeded" in entry.payload["reason"]
    # The success of one group does not resolve another key.
    assert (await alerts.list_alerts(host_id=other))[0].status == "open"


async def test_an_old_failure_replayed_after_a_newer_success_raises_nothing(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc)
    etc = await group_id(svc, host)
    make_engine()
    now = time.time()
    old = await run_job(ingestor, host, "backup", "failed", group=etc, finished_at=now - 100)
    await until(lambda: alert_changes(svc, "raised"), "the alert")
    await run_job(ingestor, host, "backup", "succeeded", group=etc, finished_at=now - 50)
    await until(lambda: alert_changes(svc, "resolved"), "the auto-resolve")
    await replay_finished(ingestor, host, old, now - 100)
    await run_job(ingestor, host, "prune", "failed", error="barrier")
    await until(lambda: len(alert_changes(svc, "raised")) == 2, "the barrier")
    kinds = sorted((a.kind, a.status) for a in await alerts.list_alerts())
    assert kinds == [("backup_failed", "resolved"), ("prune_failed", "open")]


async def test_a_failure_and_its_fix_reported_together_raise_nothing(
    svc, ingestor, make_engine, alerts
):
    """An agent back from a night without the app replays both: the newest
    outcome decides, so nobody is told about a problem that is gone."""
    host = await add_host(svc)
    etc = await group_id(svc, host)
    make_engine()
    now = time.time()
    await ingestor.stop()  # queue both, then let them be written in one batch
    await run_job(ingestor, host, "backup", "failed", group=etc, finished_at=now - 100)
    await run_job(ingestor, host, "backup", "succeeded", group=etc, finished_at=now - 50)
    await run_job(ingestor, host, "prune", "failed", error="barrier")
    ingestor.start()
    await until(lambda: alert_changes(svc, "raised"), "the barrier")
    assert [a.kind for a in await alerts.list_alerts()] == ["prune_failed"]


async def test_each_maintenance_kind_has_its_own_alert_severity_and_words(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc)
    make_engine()
    for kind in ("forget", "prune", "check"):
        await run_job(ingestor, host, kind, "failed", error=f"{kind} broke")
    await run_job(ingestor, host, "check", "failed", error="check broke again")

    async def three() -> bool:
        found = await alerts.list_alerts()
        return len(found) == 3 and sum(a.count for a in found) == 4

    await until_async(three, "three alerts, four failures")
    found = {a.kind: a for a in await alerts.list_alerts()}
    assert {k: (a.severity, a.count) for k, a in found.items()} == {
        "forget_failed": ("warning", 1),
        "prune_failed": ("warning", 1),
        "check_failed": ("critical", 2),
    }
    assert found["forget_failed"].message.startswith("Forget (retention policy) on web1 failed")
    assert found["prune_failed"].message.startswith("Prune of the repository of web1 failed")
    assert found["check_failed"].message == ("Repository check on web1 failed: check broke again")


async def test_a_failed_init_is_one_repo_alert_and_a_ready_repository_resolves_it(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc, repo_status="unknown")
    make_engine()
    # The init job fails and the host's repository is marked init_failed:
    # two paths to the same problem, counted once.
    await run_job(
        ingestor,
        host,
        "init",
        "failed",
        error="Fatal: unable to open config file: Stat: permission denied",
        repo_status="init_failed",
    )
    await until(lambda: alert_changes(svc, "raised"), "repo_init_failed")
    await run_job(ingestor, host, "forget", "failed", error="barrier")
    await until(lambda: len(alert_changes(svc, "raised")) == 2, "the barrier")
    found = {a.kind: a for a in await alerts.list_alerts()}
    repo = found["repo_init_failed"]
    assert (repo.severity, repo.count) == ("critical", 1)
    assert "could not be opened or initialised: Fatal: unable to open config file" in repo.message
    await run_job(ingestor, host, "init", "succeeded", repo_status="ready")
    await until(lambda: alert_changes(svc, "resolved"), "resolved by the ready repository")
    assert (await alerts.get_alert(repo.id)).status == "resolved"


async def test_a_repository_found_unusable_raises_even_without_an_init_job(
    svc, make_engine, alerts
):
    host = await add_host(svc)
    engine = make_engine(start=False)

    def mark(status: str, at: float) -> None:
        Host.update(
            repo_status=status, repo_status_error="wrong password", repo_status_at=at
        ).where(Host.id == host).execute()

    await svc.store.transaction(mark, "init_failed", time.time() - 10)
    await engine.evaluate_host(host)
    [alert] = await alerts.list_alerts()
    assert alert.kind == "repo_init_failed" and "wrong password" in alert.message
    # The operator closes it: the same failure is not raised again.
    await alerts.resolve([alert.id], OPERATOR)
    await engine.evaluate_host(host)
    assert [a.status for a in await alerts.list_alerts()] == ["resolved"]
    # A new failure is a new problem.
    await svc.store.transaction(mark, "init_failed", time.time() + 1)
    await engine.evaluate_host(host)
    assert sorted(a.status for a in await alerts.list_alerts()) == ["open", "resolved"]
    # A usable repository clears it.
    await svc.store.transaction(mark, "ready", time.time() + 2)
    await engine.evaluate_host(host)
    assert [a.status for a in await alerts.list_alerts()] == ["resolved", "resolved"]


# -- agent offline ---------------------------------------------------------------


async def set_presence(svc: Services, host: int, *, online: bool, last_seen: float) -> None:
    await svc.store.transaction(
        lambda: Host.update(online=online, last_seen_at=last_seen).where(Host.id == host).execute()
    )
    svc.ctx.bus.publish(HostChanged(host))


async def test_a_silent_agent_raises_on_its_own_timer_and_clears_when_back(
    svc, make_engine, alerts
):
    host = await add_host(svc, online=True)
    engine = make_engine(offline_after_s=0.3)
    went_offline = time.time()
    await set_presence(svc, host, online=False, last_seen=went_offline)
    await until(lambda: host in engine.armed_hosts, "the offline timer")
    [raised] = await until(lambda: alert_changes(svc, "raised"), "agent_offline", timeout=3)
    # On its timer, not the (hour-long) tick: shortly after the timeout.
    assert 0.3 <= time.time() - went_offline < 2.0
    alert = await alerts.get_alert(raised.alert_id)
    assert (alert.kind, alert.severity) == ("agent_offline", "warning")
    assert alert.message.startswith("Agent on web1 has not been heard from since ")
    assert host not in engine.armed_hosts
    await set_presence(svc, host, online=True, last_seen=time.time())
    await until(lambda: alert_changes(svc, "resolved"), "resolved when back")
    [entry] = await svc.store.call(list_audit, action="alert.resolved")
    assert entry.payload["reason"] == "the agent connected again"


async def test_no_offline_alert_during_the_start_up_grace(svc, make_engine, alerts):
    host = await add_host(svc)
    await set_presence(svc, host, online=False, last_seen=time.time() - 3600)
    started = time.time()
    engine = make_engine(offline_after_s=0.4)
    await until(lambda: host in engine.armed_hosts, "the grace timer")
    await until(lambda: alert_changes(svc, "raised"), "agent_offline after the grace", timeout=3)
    # Silent for an hour, yet not raised before the engine had run the timeout.
    assert time.time() - started >= 0.4
    [alert] = await alerts.list_alerts()
    assert alert.message.endswith("(1 h)")


async def test_laptops_never_get_offline_alerts_and_switching_resolves_one(
    svc, make_engine, alerts
):
    clock = Clock()
    web = await add_host(svc, "web1")
    lap = await add_host(svc, "lap1")
    await svc.hosts.set_presence_mode(lap, "laptop", OPERATOR)
    for host in (web, lap):
        await set_presence(svc, host, online=False, last_seen=clock.now - 10)
    engine = make_engine(clock=clock, offline_after_s=90)
    clock.now += 3600
    await engine.tick()
    [alert] = await alerts.list_alerts()
    assert (alert.kind, alert.host_id) == ("agent_offline", web)
    assert lap not in engine.armed_hosts
    await svc.hosts.set_presence_mode(web, "laptop", OPERATOR)
    await until(lambda: alert_changes(svc, "resolved"), "resolved by laptop mode")
    assert (await alerts.get_alert(alert.id)).status == "resolved"
    [entry] = await svc.store.call(list_audit, action="alert.resolved")
    assert entry.payload["reason"] == "the host is a laptop"


async def test_an_outage_the_operator_resolved_is_not_raised_again_until_the_next(
    svc, make_engine, alerts
):
    clock = Clock()
    host = await add_host(svc)
    await set_presence(svc, host, online=False, last_seen=clock.now)
    engine = make_engine(clock=clock, offline_after_s=90)
    clock.now += 600
    await engine.tick()
    [first] = await alerts.list_alerts()
    await alerts.resolve([first.id], OPERATOR)
    clock.now += 600
    await engine.tick()
    assert [a.id for a in await alerts.list_alerts()] == [first.id]
    # Back, then silent again: a new outage, a new alert.
    await set_presence(svc, host, online=True, last_seen=clock.now)
    await engine.evaluate_host(host)
    await set_presence(svc, host, online=False, last_seen=clock.now + 5)
    clock.now += 600
    await engine.tick()
    assert sorted(a.status for a in await alerts.list_alerts()) == ["open", "resolved"]


# -- stale backups -----------------------------------------------------------------


async def add_schedule(svc: Services, host: int, cron: str, group: int) -> int:
    view = await svc.schedules.create_schedule(
        host, {"cron": cron, "enabled": True, "source_group_ids": [group]}, OPERATOR
    )
    return view.id


async def add_success(svc: Services, host: int, at: float) -> None:
    await svc.store.transaction(
        lambda: Job.create(
            id=uuid.uuid4().hex,
            host=host,
            kind="backup",
            status="succeeded",
            actor="schedule",
            created_at=at - 10,
            started_at=at - 10,
            finished_at=at,
        )
    )


async def test_stale_after_one_and_a_half_intervals_resolved_by_a_backup(svc, make_engine, alerts):
    clock = Clock()
    host = await add_host(svc)
    etc = await group_id(svc, host)
    await add_schedule(svc, host, "0 2 * * *", etc)
    t0 = clock.now
    await add_success(svc, host, t0)
    engine = make_engine(start=False, clock=clock)
    clock.now = t0 + 1.4 * DAY
    await engine.tick()
    assert await alerts.list_alerts() == []
    clock.now = t0 + 2 * DAY + 60
    await engine.tick()
    [alert] = await alerts.list_alerts()
    assert (alert.kind, alert.severity) == ("stale_backup", "warning")
    assert alert.message == (
        "No successful backup on web1 for 2 days; its schedules expect one every 1 day"
    )
    await engine.tick()  # still stale: the same alert, not a bump
    [same] = await alerts.list_alerts()
    assert (same.id, same.count) == (alert.id, 1)
    await add_success(svc, host, clock.now - 5)
    await engine.tick()
    assert (await alerts.get_alert(alert.id)).status == "resolved"


async def test_a_successful_backup_event_resolves_stale_without_waiting_for_the_tick(
    svc, ingestor, make_engine, alerts
):
    host = await add_host(svc)
    etc = await group_id(svc, host)
    await add_schedule(svc, host, "0 * * * *", etc)
    await add_success(svc, host, time.time() - 3 * 3600)
    make_engine()  # its first tick runs at start
    [raised] = await until(lambda: alert_changes(svc, "raised"), "stale_backup")
    stale = await alerts.get_alert(raised.alert_id)
    assert stale.message == (
        "No successful backup on web1 for 3 h; its schedules expect one every 1 hour"
    )
    await run_job(ingestor, host, "backup", "succeeded", group=etc)
    await until(lambda: alert_changes(svc, "resolved"), "resolved by the backup")


async def test_laptops_get_a_week_and_hosts_without_schedules_nothing(svc, make_engine, alerts):
    clock = Clock()
    lap = await add_host(svc, "lap1")
    bare = await add_host(svc, "bare")
    await svc.hosts.set_presence_mode(lap, "laptop", OPERATOR)
    etc = await group_id(svc, lap)
    schedule = await add_schedule(svc, lap, "0 2 * * *", etc)
    t0 = clock.now
    await add_success(svc, lap, t0)
    await add_success(svc, bare, t0)
    engine = make_engine(start=False, clock=clock)
    clock.now = t0 + 3 * DAY
    await engine.tick()
    assert await alerts.list_alerts() == []
    clock.now = t0 + 8 * DAY
    await engine.tick()
    [alert] = await alerts.list_alerts()
    assert alert.host_id == lap
    assert alert.message.endswith("in laptop mode one is expected at least every 7 days")
    # Without an enabled schedule nothing is promised: the alert clears.
    await svc.schedules.update_schedule(
        lap, schedule, {"cron": "0 2 * * *", "enabled": False, "source_group_ids": [etc]}, OPERATOR
    )
    await engine.tick()
    assert (await alerts.get_alert(alert.id)).status == "resolved"
    assert len(await alerts.list_alerts()) == 1


async def test_a_host_never_backed_up_is_measured_from_when_backups_were_set_up(
    svc, make_engine, alerts
):
    clock = Clock()
    host = await add_host(svc)
    await svc.store.transaction(
        lambda: Host.update(enrolled_at=clock.now - 30 * DAY).where(Host.id == host).execute()
    )
    etc = await group_id(svc, host)
    await add_schedule(svc, host, "0 2 * * *", etc)
    engine = make_engine(start=False, clock=clock)
    t0 = clock.now
    clock.now = t0 + DAY
    await engine.tick()
    assert await alerts.list_alerts() == []
    clock.now = t0 + 1.6 * DAY
    await engine.tick()
    [alert] = await alerts.list_alerts()
    assert alert.message == (
        "No successful backup on web1 yet, 1 day 14 h after backups were set up; "
        "its schedules expect one every 1 day"
    )


# -- lifecycle ---------------------------------------------------------------------


async def test_stop_cancels_the_timers_and_the_tasks(svc, make_engine):
    host = await add_host(svc)
    await set_presence(svc, host, online=False, last_seen=time.time())
    engine = make_engine(offline_after_s=60)
    await until(lambda: host in engine.armed_hosts, "the offline timer")
    handles = list(engine._timers.values())
    assert engine.running
    await engine.stop()
    assert not engine.running
    assert engine.armed_hosts == frozenset()
    assert handles and all(h.cancelled() for h in handles)
    # No longer listening: a host event arms nothing.
    svc.ctx.bus.publish(HostChanged(host))
    await asyncio.sleep(0)
    assert engine.armed_hosts == frozenset()


async def test_stop_evaluates_what_arrived_just_before_it(svc, make_engine, alerts):
    """The ingestor flushes its queue on the way out; those failures count."""
    host = await add_host(svc)
    engine = make_engine()  # its start-up tick may still hold the engine when stop() comes
    await svc.store.transaction(
        lambda: Job.create(
            id="late",
            host=host,
            kind="check",
            status="failed",
            actor="schedule",
            created_at=time.time(),
            finished_at=time.time(),
            error="pack damaged",
        )
    )
    svc.ctx.bus.publish(JobChanged("late", host))  # no await in between: the worker never ran
    await engine.stop()
    [alert] = await alerts.list_alerts()
    assert alert.kind == "check_failed"
