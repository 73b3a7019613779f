"""Retention/schedule conflicts are found, and only real ones."""

from __future__ import annotations

from typing import Any

from server_core import cron
from server_core.schedule_conflicts import find_conflicts
from server_core.views import ScheduleView, SourceGroupView


def group(gid: int, name: str = "g", **retention: Any) -> SourceGroupView:
    return SourceGroupView(
        id=gid,
        host_id=1,
        name=name,
        includes=["/srv"],
        excludes=[],
        retention=retention,
        retry_max=0,
        retry_backoff_seconds=300,
        has_pre_hook=False,
        has_post_hook=False,
        created_at=0,
        updated_at=0,
    )


def schedule(sid: int, expr: str, *gids: int, enabled: bool = True) -> ScheduleView:
    return ScheduleView(
        id=sid,
        host_id=1,
        cron=expr,
        enabled=enabled,
        source_group_ids=list(gids),
        description=cron.describe(expr),
        next_run_at=None,
        last_run_at=None,
        created_at=0,
        updated_at=0,
    )


def kinds(groups: list[SourceGroupView], schedules: list[ScheduleView]) -> set[tuple[str, Any]]:
    return {(c.kind, c.source_group_id or c.schedule_id) for c in find_conflicts(groups, schedules)}


def test_a_sound_plan_has_no_conflicts() -> None:
    groups = [group(1, keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=12)]
    assert kinds(groups, [schedule(1, "0 * * * *", 1)]) == set()


def test_keep_hourly_with_only_a_daily_schedule() -> None:
    conflicts = find_conflicts([group(1, "db", keep_hourly=24)], [schedule(1, "0 2 * * *", 1)])
    assert [c.kind for c in conflicts] == ["keep_hourly_without_faster_schedule"]
    assert conflicts[0].source_group_id == 1
    assert "'db'" in conflicts[0].message and "keep_hourly = 24" in conflicts[0].message


def test_a_faster_second_schedule_resolves_it() -> None:
    groups = [group(1, keep_hourly=24)]
    assert kinds(groups, [schedule(1, "0 2 * * *", 1), schedule(2, "0 */6 * * *", 1)]) == set()


def test_a_disabled_fast_schedule_does_not_count() -> None:
    groups = [group(1, keep_hourly=24)]
    found = kinds(groups, [schedule(1, "0 2 * * *", 1), schedule(2, "0 * * * *", 1, enabled=False)])
    assert found == {("keep_hourly_without_faster_schedule", 1)}


def test_slower_cadences() -> None:
    weekly = [schedule(1, "0 3 * * 0", 1)]
    assert kinds([group(1, keep_daily=7, keep_weekly=4)], weekly) == {
        ("keep_daily_without_faster_schedule", 1)
    }
    monthly = [schedule(1, "0 3 1 * *", 1)]
    assert kinds([group(1, keep_weekly=4, keep_monthly=6)], monthly) == {
        ("keep_weekly_without_faster_schedule", 1)
    }
    yearly = [schedule(1, "0 3 1 1 *", 1)]
    assert kinds([group(1, keep_monthly=6, keep_yearly=3)], yearly) == {
        ("keep_monthly_without_faster_schedule", 1)
    }


def test_weekdays_count_as_daily() -> None:
    assert kinds([group(1, keep_daily=7)], [schedule(1, "0 22 * * 1-5", 1)]) == set()


def test_unscheduled_group_and_missing_retention() -> None:
    groups = [group(1, "a", keep_last=3), group(2, "b")]
    found = kinds(groups, [schedule(1, "0 2 * * *", 1)])
    assert found == {("group_not_scheduled", 2), ("no_retention", 2)}
    (no_retention,) = [c for c in find_conflicts(groups, []) if c.kind == "no_retention"]
    assert "forget keeps everything" in no_retention.message


def test_keep_within_alone_is_a_retention() -> None:
    assert kinds([group(1, keep_within="30d")], [schedule(1, "0 2 * * *", 1)]) == set()


def test_schedule_without_groups() -> None:
    found = kinds([group(1, keep_last=1)], [schedule(1, "0 2 * * *", 1), schedule(2, "0 3 * * *")])
    assert found == {("schedule_without_groups", 2)}
    # A disabled empty schedule does nothing anyway.
    assert (
        kinds(
            [group(1, keep_last=1)],
            [schedule(1, "0 2 * * *", 1), schedule(2, "0 3 * * *", enabled=False)],
        )
        == set()
    )
