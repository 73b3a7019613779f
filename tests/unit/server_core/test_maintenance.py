"""MaintenanceService and MaintenanceRunner against a real SQLite store:
defaults, cadences, what is due, dispatch with the admin credential."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.protocol import CommandRun, ScheduleSet
from server_core import maintenance_plan
from server_core.errors import Conflict, InvalidInput
from server_core.events import HostChanged
from server_core.models import Host, Job, Maintenance, RepoStats, RepoStatsDaily
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.services.maintenance import MaintenanceRunner, due_dispatches

from .conftest import GROUP, Services, add_host


def runs(svc: Services) -> dict[str, CommandRun]:
    return {m.job_id: m for m in svc.agents.of_type(CommandRun) if isinstance(m, CommandRun)}


CADENCES = ("forget_cron", "prune_cron", "check_cron")


async def set_plan(
    svc: Services, host_id: int, *, keep_defaults: bool = False, **fields: object
) -> None:
    """Cadences not named are switched off unless keep_defaults: the defaults
    fire at fixed wall-clock times (daily 03:30 …), and a test whose window
    happened to span one would see an extra job due."""
    if not keep_defaults:
        fields = {**{c: None for c in CADENCES}, **fields}

    def run() -> None:
        row, _ = maintenance_plan.ensure_row(host_id)
        for k, v in fields.items():
            setattr(row, k, v)
        row.save()

    await svc.store.transaction(run)


async def test_defaults_are_created_on_first_read(svc: Services) -> None:
    host_id = await add_host(svc)
    view = await svc.maintenance.get(host_id)
    assert (view.forget_cron, view.prune_cron, view.check_cron) == (
        "30 3 * * *",
        "30 4 * * 0",
        "30 5 * * 6",
    )
    assert view.enabled and view.check_subset_percent == 5
    now = time.time()
    for at in (view.next_forget_at, view.next_prune_at, view.next_check_at):
        assert at is not None and now < at <= now + 7 * 86_400
    assert view.due == []  # the plan starts now: no window has passed since
    assert await svc.maintenance.get(host_id) == view  # one row, not two
    assert await svc.store.call(lambda: Maintenance.select().count()) == 1


async def test_update_changes_only_what_is_sent_and_pushes(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    view = await svc.maintenance.update(
        host_id, {"prune_cron": None, "check_subset_percent": 20}, OPERATOR
    )
    assert view.prune_cron is None and view.next_prune_at is None
    assert view.forget_cron == "30 3 * * *" and view.check_subset_percent == 20
    (plan,) = svc.agents.of_type(ScheduleSet)
    assert isinstance(plan, ScheduleSet) and plan.version == 1
    assert plan.maintenance.prune_cron is None and plan.maintenance.check_subset_percent == 20
    # The same values again change nothing and push nothing.
    await svc.maintenance.update(host_id, {"prune_cron": None}, OPERATOR)
    assert len(svc.agents.of_type(ScheduleSet)) == 1
    entries = await svc.store.call(lambda: list_audit(action="maintenance.updated"))
    assert len(entries) == 1
    assert entries[0].payload["before"] == {"prune_cron": "30 4 * * 0", "check_subset_percent": 5}
    off = await svc.maintenance.update(host_id, {"enabled": False}, OPERATOR)
    assert (off.next_forget_at, off.next_check_at, off.due) == (None, None, [])


async def test_update_refusal_names_the_field(svc: Services) -> None:
    host_id = await add_host(svc)
    with pytest.raises(InvalidInput) as err:
        await svc.maintenance.update(host_id, {"forget_cron": "daily"}, OPERATOR)
    assert err.value.field == "forget_cron"


async def test_a_plan_without_a_row_pushes_the_defaults(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    await svc.sources.create_group(host_id, GROUP, OPERATOR)
    (plan,) = svc.agents.of_type(ScheduleSet)
    assert isinstance(plan, ScheduleSet)
    assert plan.maintenance.forget_cron == "30 3 * * *" and plan.maintenance.enabled


async def test_forget_gets_the_admin_credential_and_every_groups_retention(svc: Services) -> None:
    host_id = await add_host(svc, online=True, admin=True)
    await svc.sources.create_group(host_id, GROUP, OPERATOR)
    await svc.sources.create_group(host_id, dict(GROUP, name="bare", retention={}), OPERATOR)
    forget = await svc.maintenance.run_now(host_id, "forget", OPERATOR)
    prune = await svc.maintenance.run_now(host_id, "prune", OPERATOR)
    check = await svc.maintenance.run_now(host_id, "check", OPERATOR)
    unlock = await svc.maintenance.run_now(host_id, "unlock", OPERATOR)
    sent = runs(svc)
    for job_id in (forget, prune):
        creds = sent[job_id].credentials
        assert creds is not None and creds.password == "adminpw"
    for job_id in (check, unlock):
        assert sent[job_id].credentials is None  # the agent's everyday credential
    assert sent[forget].args["groups"] == [
        {"id": 1, "name": "etc", "retention": {"keep_daily": 7, "keep_weekly": 4}}
    ]
    assert sent[check].args == {"read_data_subset_percent": 5}
    assert "adminpw" not in await svc.store.call(
        lambda: "".join(j.args for j in Job.select())
    )  # the credential is never stored with the job


async def test_without_an_admin_slot_forget_uses_the_everyday_credential(svc: Services) -> None:
    host_id = await add_host(svc, online=True, admin=False)
    job_id = await svc.maintenance.run_now(host_id, "forget", OPERATOR)
    assert runs(svc)[job_id].credentials is None


async def test_run_now_refusals(svc: Services) -> None:
    host_id = await add_host(svc, online=False)
    with pytest.raises(InvalidInput) as err:
        await svc.maintenance.run_now(host_id, "backup", OPERATOR)
    assert err.value.field == "kind"
    with pytest.raises(Conflict, match="offline"):
        await svc.maintenance.run_now(host_id, "prune", OPERATOR)


async def test_reinit(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    job_id = await svc.maintenance.reinit(host_id, OPERATOR)
    assert runs(svc)[job_id].kind == "init"
    assert await svc.maintenance.reinit(host_id, OPERATOR) == job_id  # still queued: reused
    offline = await add_host(svc, "b")
    with pytest.raises(Conflict, match="offline"):
        await svc.maintenance.reinit(offline, OPERATOR)
    entries = await svc.store.call(lambda: list_audit(action="repo.reinit_requested"))
    assert [e.target_id for e in entries] == [str(host_id), str(host_id)]


async def test_due_after_a_window_passes_and_not_again_after_an_attempt(svc: Services) -> None:
    host_id = await add_host(svc, online=True, admin=True)
    now = time.time()
    await set_plan(svc, host_id, forget_cron="* * * * *", created_at=now - 3600)
    assert (await svc.maintenance.get(host_id)).due == ["forget"]
    assert await svc.store.call(due_dispatches, None, now) == [(host_id, "forget")]

    runner = MaintenanceRunner(svc.ctx, svc.jobs)
    (job_id,) = await runner.run_once()
    job = await svc.store.call(lambda: Job.get_by_id(job_id))
    assert (job.kind, job.actor, job.status) == ("forget", "system", "queued")
    creds = runs(svc)[job_id].credentials
    assert creds is not None and creds.password == "adminpw"
    # Queued or running: never a second one.
    assert await runner.run_once() == []
    # Failed: it waits for the next window instead of retrying every tick.
    await svc.store.call(lambda: Job.update(status="failed", finished_at=time.time()).execute())
    assert await svc.store.call(due_dispatches, None, time.time()) == []
    assert await svc.store.call(due_dispatches, None, time.time() + 61) == [(host_id, "forget")]


async def test_windows_before_the_plan_existed_are_not_due(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    await set_plan(svc, host_id, keep_defaults=True, created_at=time.time())
    assert await svc.store.call(due_dispatches, None, time.time()) == []


async def test_offline_or_unready_hosts_wait_and_show_due(svc: Services) -> None:
    offline = await add_host(svc, "off", online=False)
    locked = await add_host(svc, "locked", online=True, repo_status="locked")
    for host_id in (offline, locked):
        await set_plan(svc, host_id, prune_cron="* * * * *", created_at=time.time() - 600)
    runner = MaintenanceRunner(svc.ctx, svc.jobs)
    assert await runner.run_once() == []
    assert (await svc.maintenance.get(offline)).due == ["prune"]
    assert (await svc.maintenance.get(locked)).due == ["prune"]


async def test_check_is_shown_due_but_left_to_the_agent(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    await set_plan(svc, host_id, check_cron="* * * * *", created_at=time.time() - 600)
    assert (await svc.maintenance.get(host_id)).due == ["check"]
    assert await MaintenanceRunner(svc.ctx, svc.jobs).run_once() == []


async def test_a_host_coming_online_gets_its_due_maintenance(svc: Services) -> None:
    host_id = await add_host(svc, online=False)
    await set_plan(svc, host_id, forget_cron="* * * * *", created_at=time.time() - 600)
    runner = MaintenanceRunner(svc.ctx, svc.jobs, interval_s=3600, online_delay_s=0.05)
    runner.start()
    try:
        svc.ctx.bus.publish(HostChanged(host_id))  # still offline: nothing
        await asyncio.sleep(0.2)
        assert runs(svc) == {}
        svc.agents.connected.add(host_id)
        await svc.store.transaction(
            lambda: Host.update(online=True).where(Host.id == host_id).execute()
        )
        svc.ctx.bus.publish(HostChanged(host_id))
        svc.ctx.bus.publish(HostChanged(host_id))  # a second event: still one job
        for _ in range(100):
            if runs(svc):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert [m.kind for m in runs(svc).values()] == ["forget"]
    finally:
        await runner.stop()


async def test_repo_stats_latest_and_history(svc: Services) -> None:
    host_id = await add_host(svc)
    empty = await svc.maintenance.repo_stats(host_id)
    assert (empty.total_size, empty.history) == (None, [])
    today = time.time()

    def seed() -> None:
        RepoStats.create(host=host_id, collected_at=today, total_size=300, snapshot_count=3)
        for age, size in ((400, 1), (40, 100), (1, 200), (0, 300)):
            day = time.strftime("%Y-%m-%d", time.gmtime(today - age * 86_400))
            RepoStatsDaily.create(host=host_id, day=day, total_size=size, file_count=size * 2)

    await svc.store.transaction(seed)
    stats = await svc.maintenance.repo_stats(host_id)
    assert stats.total_size == 300 and stats.snapshot_count == 3
    assert [p.total_size for p in stats.history] == [100, 200, 300]  # 365 days, oldest first
    assert stats.history[-1].file_count == 600
    assert [p.total_size for p in (await svc.maintenance.repo_stats(host_id, 30)).history] == [
        200,
        300,
    ]
    with pytest.raises(InvalidInput) as err:
        await svc.maintenance.repo_stats(host_id, 0)
    assert err.value.field == "days"


async def test_hosts_from_before_maintenance_get_a_plan_starting_now(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    assert await svc.store.call(lambda: Maintenance.select().count()) == 0
    assert await MaintenanceRunner(svc.ctx, svc.jobs).run_once() == []
    row = await svc.store.call(lambda: Maintenance.get(Maintenance.host == host_id))
    assert row.forget_cron == "30 3 * * *" and row.created_at is not None
    assert row.created_at == pytest.approx(time.time(), abs=5)
