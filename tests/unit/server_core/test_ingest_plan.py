"""What agent events do to the backup plan's state (real SQLite): schedule
last runs, maintenance results, stale locks, repository stats history."""

from __future__ import annotations

import json

from agent import protocol as p
from server_core.events import Event, HostChanged, RepoStatsChanged, SourcesChanged
from server_core.ingest import apply_event
from server_core.models import Host, Job, Maintenance, RepoStats, RepoStatsDaily
from server_core.services.context import OPERATOR

from .conftest import GROUP, Services, add_host

DAY = 86_400.0
# Noon UTC on some day, so "same day" arithmetic never crosses midnight.
T0 = 1_780_000_000 - 1_780_000_000 % DAY + DAY / 2


async def apply(svc: Services, host_id: int, *messages: p.Message) -> list[Event]:
    def run() -> list[Event]:
        events: list[Event] = []
        for m in messages:
            events += apply_event(host_id, m)
        return events

    return await svc.store.transaction(run)


def finished(job_id: str, status: str = "succeeded", at: float = T0, **kw: object) -> p.JobFinished:
    return p.JobFinished(job_id=job_id, seq=9, status=status, finished_at=at, **kw)  # type: ignore[arg-type]


def started(job_id: str, kind: str, at: float = T0, **kw: object) -> p.JobStarted:
    return p.JobStarted(job_id=job_id, seq=1, kind=kind, actor="schedule", started_at=at, **kw)  # type: ignore[arg-type]


async def host_row(svc: Services, host_id: int) -> Host:
    return await svc.store.call(lambda: Host.get_by_id(host_id))


async def test_a_scheduled_start_sets_the_schedules_last_run(svc: Services) -> None:
    host_id = await add_host(svc)
    g = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    s = await svc.schedules.create_schedule(
        host_id, {"cron": "* * * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    args = {"window": T0 - 30, "catch_up": True}
    events = await apply(
        svc, host_id, started("a" * 32, "backup", source_group_id=g.id, schedule_id=s.id, args=args)
    )
    assert SourcesChanged(host_id) in events and HostChanged(host_id) in events
    assert (await svc.schedules.get_schedule(host_id, s.id)).last_run_at == T0
    job = await svc.store.call(lambda: Job.get_by_id("a" * 32))
    assert (job.actor, job.schedule_id, json.loads(job.args)) == ("schedule", s.id, args)
    # A replayed older start does not move it back (nor announce anything).
    events = await apply(svc, host_id, started("b" * 32, "backup", at=T0 - 600, schedule_id=s.id))
    assert SourcesChanged(host_id) not in events
    assert (await svc.schedules.get_schedule(host_id, s.id)).last_run_at == T0
    # Another host's schedule id is ignored.
    other = await add_host(svc, "other")
    await apply(svc, other, started("c" * 32, "backup", at=T0 + 60, schedule_id=s.id))
    assert (await svc.schedules.get_schedule(host_id, s.id)).last_run_at == T0


async def test_maintenance_results_are_recorded(svc: Services) -> None:
    host_id = await add_host(svc)
    await apply(svc, host_id, started("f1", "forget"), finished("f1", at=T0 + 10))
    await apply(svc, host_id, started("f2", "forget"), finished("f2", "failed", at=T0 + 20))
    await apply(svc, host_id, started("p1", "prune"), finished("p1", at=T0 + 30))
    events = await apply(svc, host_id, started("c1", "check"), finished("c1", "failed", at=T0 + 40))
    assert RepoStatsChanged(host_id) in events and SourcesChanged(host_id) in events
    await apply(svc, host_id, started("c2", "check"), finished("c2", "cancelled", at=T0 + 50))
    row = await svc.store.call(lambda: Maintenance.get(Maintenance.host == host_id))
    assert row.last_forget_at == T0 + 10  # the failed forget does not count
    assert row.last_prune_at == T0 + 30
    assert (row.last_check_at, row.last_check_status) == (T0 + 40, "failed")
    stats = await svc.maintenance.repo_stats(host_id)
    assert (stats.last_check_status, stats.last_prune_at) == ("failed", T0 + 30)
    # An older check's verdict arriving late does not replace the newer one.
    await apply(svc, host_id, started("c0", "check"), finished("c0", at=T0 + 5))
    row = await svc.store.call(lambda: Maintenance.get(Maintenance.host == host_id))
    assert (row.last_check_at, row.last_check_status) == (T0 + 40, "failed")


async def test_a_stale_lock_is_flagged_and_cleared_by_a_later_success(svc: Services) -> None:
    host_id = await add_host(svc)
    await apply(
        svc,
        host_id,
        started("x1", "prune"),
        finished("x1", "failed", at=T0, repo_status="locked", error="repository is already locked"),
    )
    host = await host_row(svc, host_id)
    assert (host.repo_status, host.repo_status_error) == ("locked", "repository is already locked")
    assert (await svc.hosts.get_host(host_id)).repo_status == "locked"
    # A success from before the lock was seen (a replay) changes nothing.
    await apply(svc, host_id, started("x0", "backup"), finished("x0", at=T0 - 100))
    assert (await host_row(svc, host_id)).repo_status == "locked"
    # A failure afterwards changes nothing either.
    await apply(svc, host_id, started("x2", "backup"), finished("x2", "failed", at=T0 + 5))
    assert (await host_row(svc, host_id)).repo_status == "locked"
    # The operator's unlock succeeds: ready again.
    await apply(svc, host_id, started("x3", "unlock"), finished("x3", at=T0 + 10))
    host = await host_row(svc, host_id)
    assert (host.repo_status, host.repo_status_error) == ("ready", None)


async def test_any_later_successful_repository_job_clears_the_lock(svc: Services) -> None:
    host_id = await add_host(svc)
    await apply(
        svc, host_id, started("y1", "check"), finished("y1", "failed", repo_status="locked")
    )
    await apply(svc, host_id, started("y2", "backup"), finished("y2", at=T0 + 60))
    assert (await host_row(svc, host_id)).repo_status == "ready"


async def test_stats_history_keeps_one_row_a_day_and_never_loses_values(svc: Services) -> None:
    host_id = await add_host(svc)
    full = p.RepoStatsReport(
        collected_at=T0, total_size=1000, snapshot_count=4, total_uncompressed_size=3000
    )
    partial = p.RepoStatsReport(collected_at=T0 + 3600, total_size=1200)
    tomorrow = p.RepoStatsReport(collected_at=T0 + DAY, total_size=1500, snapshot_count=5)
    events = await apply(svc, host_id, full, partial)
    assert RepoStatsChanged(host_id) in events
    rows = await svc.store.call(lambda: list(RepoStatsDaily.select().order_by(RepoStatsDaily.day)))
    assert [(r.total_size, r.snapshot_count, r.total_uncompressed_size) for r in rows] == [
        (1200, 4, 3000)
    ]
    await apply(svc, host_id, tomorrow)
    # A replay of an old report does not overwrite the latest values.
    await apply(svc, host_id, full)
    latest = await svc.store.call(lambda: RepoStats.get(RepoStats.host == host_id))
    assert (latest.total_size, latest.snapshot_count, latest.collected_at) == (1500, 5, T0 + DAY)
    history = (await svc.maintenance.repo_stats(host_id, 3660)).history
    assert [(h.total_size, h.snapshot_count) for h in history] == [(1000, 4), (1500, 5)]


async def test_file_count_is_the_newest_backup_of_each_group(svc: Services) -> None:
    host_id = await add_host(svc)
    g1 = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    g2 = await svc.sources.create_group(host_id, dict(GROUP, name="var"), OPERATOR)

    async def backup(
        job_id: str, group: int, files: int, at: float, status: str = "succeeded"
    ) -> None:
        await apply(
            svc,
            host_id,
            started(job_id, "backup", at=at, source_group_id=group),
            finished(job_id, status, at=at + 1, summary={"total_files_processed": files}),
        )

    await backup("b1", g1.id, 100, T0)
    await apply(svc, host_id, p.RepoStatsReport(collected_at=T0 + 2, total_size=10))
    await backup("b2", g2.id, 20, T0 + 10)
    await backup("b3", g1.id, 110, T0 + 20)
    await backup("b4", g1.id, 999, T0 + 30, status="failed")
    stats = await svc.maintenance.repo_stats(host_id, 3660)
    assert stats.file_count == 130
    assert stats.history[-1].file_count == 130 and stats.history[-1].total_size == 10
