"""Fleet rows carry the plan's version, next run and a 30-day size history,
in the same number of queries for 1 host as for 40."""

from __future__ import annotations

import json
import time

from server_core import cron
from server_core.models import Host, RepoStatsDaily, Schedule, ScheduleGroup, SourceGroup
from server_core.services.hosts import SIZE_HISTORY_DAYS, host_views

from .conftest import Services

DAY = 86_400


def seed(count: int, now: float) -> None:
    for i in range(count):
        host = Host.create(
            name=f"h{i:03d}", created_at=0, tags="[]", schedule_version=3, schedule_acked_version=2
        )
        group = SourceGroup.create(
            host=host, name="g", includes=json.dumps(["/srv"]), created_at=0, updated_at=0
        )
        for expr, enabled in (
            ("0 2 * * *", True),
            (f"{i % 60} * * * *", True),
            ("* * * * *", False),
        ):
            s = Schedule.create(host=host, cron=expr, enabled=enabled, created_at=0, updated_at=0)
            ScheduleGroup.create(schedule=s, source_group=group)
        for age in (0, 5, 29, 30):
            day = time.strftime("%Y-%m-%d", time.gmtime(now - age * DAY))
            RepoStatsDaily.create(host=host, day=day, total_size=1000 * (i + 1) + age)


def count_queries(svc: Services, now: float) -> tuple[int, list]:
    statements: list[str] = []

    def run() -> tuple[int, list]:
        conn = svc.store.db.connection()
        conn.set_trace_callback(statements.append)
        try:
            views = host_views(now=now)
        finally:
            conn.set_trace_callback(None)
        return len(statements), views

    return run()


async def test_rows_carry_plan_fields_in_a_fixed_number_of_queries(svc: Services) -> None:
    now = time.time()
    await svc.store.transaction(seed, 1, now)
    one, views = await svc.store.call(count_queries, svc, now)
    (row,) = views
    assert (row.schedule_version, row.schedule_acked_version) == (3, 2)
    expected = min(cron.next_run("0 2 * * *", now), cron.next_run("0 * * * *", now))
    assert row.next_run_at == expected  # the disabled every-minute schedule does not count
    assert len(row.size_history) == SIZE_HISTORY_DAYS
    assert row.size_history[-1] == 1000 and row.size_history[-6] == 1005
    assert row.size_history[0] == 1029  # 30 days including today: age 30 is out
    assert row.size_history.count(None) == SIZE_HISTORY_DAYS - 3

    def more() -> None:
        Host.delete().execute()
        seed(40, now)

    await svc.store.transaction(more)
    forty, views = await svc.store.call(count_queries, svc, now)
    assert len(views) == 40
    assert 0 < forty == one
    assert views[7].size_history[-1] == 8000


async def test_hosts_without_schedules_or_stats(svc: Services) -> None:
    await svc.store.transaction(lambda: Host.create(name="bare", created_at=0, tags="[]"))
    (row,) = await svc.hosts.list_hosts()
    assert row.next_run_at is None
    assert row.size_history == [None] * SIZE_HISTORY_DAYS
