"""ScheduleService against a real SQLite store: CRUD, next runs, the pushed
plan, conflicts, and the fleet row's schedule fields."""

from __future__ import annotations

import time

import pytest

from agent.protocol import ScheduleSet
from server_core import cron
from server_core.errors import InvalidInput, NotFound
from server_core.events import SourcesChanged
from server_core.models import Schedule
from server_core.services.context import OPERATOR

from .conftest import GROUP, Services, add_host


async def test_create_list_update_delete(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    g1 = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    g2 = await svc.sources.create_group(host_id, dict(GROUP, name="var"), OPERATOR)
    before = time.time()
    view = await svc.schedules.create_schedule(
        host_id, {"cron": "@daily", "source_group_ids": [g2.id, g1.id]}, OPERATOR
    )
    assert view.cron == "0 0 * * *" and view.enabled
    assert view.source_group_ids == [g1.id, g2.id]
    assert view.description == "every day at 00:00"
    assert view.next_run_at is not None and before < view.next_run_at <= before + 86_400
    assert view.next_run_at == cron.next_run("0 0 * * *", before)
    assert view.last_run_at is None
    assert await svc.schedules.list_schedules(host_id) == [view]
    assert await svc.schedules.get_schedule(host_id, view.id) == view

    plan = svc.agents.of_type(ScheduleSet)[-1]
    assert isinstance(plan, ScheduleSet) and plan.version == 3
    assert [(s.id, s.cron, s.source_group_ids) for s in plan.schedules] == [
        (view.id, "0 0 * * *", [g1.id, g2.id])
    ]

    off = await svc.schedules.update_schedule(
        host_id,
        view.id,
        {"cron": "*/30 * * * *", "enabled": False, "source_group_ids": [g1.id]},
        OPERATOR,
    )
    assert (off.cron, off.enabled, off.source_group_ids, off.next_run_at) == (
        "*/30 * * * *",
        False,
        [g1.id],
        None,  # a disabled schedule never runs
    )
    assert (await svc.sources.get_group(host_id, g2.id)).schedule_ids == []
    await svc.schedules.delete_schedule(host_id, view.id, OPERATOR)
    assert await svc.schedules.list_schedules(host_id) == []
    plan = svc.agents.of_type(ScheduleSet)[-1]
    assert isinstance(plan, ScheduleSet) and plan.version == 5 and plan.schedules == []
    assert svc.events.count(SourcesChanged(host_id)) == 5


async def test_group_ids_must_belong_to_the_host(svc: Services) -> None:
    a = await add_host(svc, "a")
    b = await add_host(svc, "b")
    ga = await svc.sources.create_group(a, GROUP, OPERATOR)
    gb = await svc.sources.create_group(b, GROUP, OPERATOR)
    with pytest.raises(InvalidInput) as err:
        await svc.schedules.create_schedule(
            a, {"cron": "0 2 * * *", "source_group_ids": [ga.id, gb.id, 999]}, OPERATOR
        )
    assert err.value.field == "source_group_ids"
    assert f"no source group {gb.id}, 999 on this host" in err.value.message
    assert await svc.schedules.list_schedules(a) == []


async def test_invalid_cron_names_the_field(svc: Services) -> None:
    host_id = await add_host(svc)
    g = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    with pytest.raises(InvalidInput) as err:
        await svc.schedules.create_schedule(
            host_id, {"cron": "0 2 * * * *", "source_group_ids": [g.id]}, OPERATOR
        )
    assert err.value.field == "cron" and "5 fields" in err.value.message


async def test_unknown_schedule(svc: Services) -> None:
    a = await add_host(svc, "a")
    b = await add_host(svc, "b")
    g = await svc.sources.create_group(a, GROUP, OPERATOR)
    s = await svc.schedules.create_schedule(
        a, {"cron": "0 2 * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    with pytest.raises(NotFound, match="on host b"):
        await svc.schedules.get_schedule(b, s.id)
    with pytest.raises(NotFound):
        await svc.schedules.delete_schedule(b, s.id, OPERATOR)


async def test_conflicts_for_the_host(svc: Services) -> None:
    host_id = await add_host(svc)
    g = await svc.sources.create_group(
        host_id, dict(GROUP, retention={"keep_hourly": 24}), OPERATOR
    )
    await svc.sources.create_group(host_id, dict(GROUP, name="bare", retention={}), OPERATOR)
    await svc.schedules.create_schedule(
        host_id, {"cron": "0 2 * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    found = {(c.kind, c.source_group_id) for c in await svc.schedules.conflicts(host_id)}
    bare = (await svc.sources.list_groups(host_id))[1].id
    assert found == {
        ("keep_hourly_without_faster_schedule", g.id),
        ("group_not_scheduled", bare),
        ("no_retention", bare),
    }


async def test_fleet_row_shows_versions_and_the_next_run(svc: Services) -> None:
    host_id = await add_host(svc)
    g = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    assert (await svc.hosts.get_host(host_id)).next_run_at is None
    daily = await svc.schedules.create_schedule(
        host_id, {"cron": "0 2 * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    often = await svc.schedules.create_schedule(
        host_id, {"cron": "*/5 * * * *", "source_group_ids": [g.id], "enabled": False}, OPERATOR
    )
    row = await svc.hosts.get_host(host_id)
    assert row.next_run_at == daily.next_run_at  # the disabled one does not count
    assert (row.schedule_version, row.schedule_acked_version) == (3, 0)
    await svc.schedules.update_schedule(
        host_id, often.id, {"cron": "*/5 * * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    row = await svc.hosts.get_host(host_id)
    assert row.next_run_at is not None and row.next_run_at <= time.time() + 300


async def test_last_run_is_reported(svc: Services) -> None:
    host_id = await add_host(svc)
    g = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    s = await svc.schedules.create_schedule(
        host_id, {"cron": "0 2 * * *", "source_group_ids": [g.id]}, OPERATOR
    )
    await svc.store.call(
        lambda: Schedule.update(last_run_at=1234.0).where(Schedule.id == s.id).execute()
    )
    assert (await svc.schedules.get_schedule(host_id, s.id)).last_run_at == 1234.0
