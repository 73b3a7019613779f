"""Validation of source groups, schedules and maintenance: every refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from server_core.errors import InvalidInput
from server_core.plan_input import (
    parse_bandwidth_override,
    parse_group,
    parse_maintenance,
    parse_schedule,
)

OK: dict[str, Any] = {"name": "etc", "includes": ["/etc"]}


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(OK)
    body.update(changes)
    return body


def test_minimal_group_takes_defaults() -> None:
    g = parse_group(OK)
    assert g.includes == ["/etc"] and g.excludes == []
    assert g.retention == dict.fromkeys(
        [
            "keep_last",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
            "keep_within",
        ]
    )
    assert (g.retry_max, g.retry_backoff_seconds, g.pre_hook, g.post_hook) == (0, 300, None, None)


def test_full_group() -> None:
    g = parse_group(
        with_(
            name="Users.docs_2",
            includes=["/home", "C:\\Users", "D:/data", "/home"],
            excludes=["*.iso", "/home/*/.cache"],
            retention={"keep_last": 3, "keep_daily": 7, "keep_within": "1y6m", "keep_yearly": None},
            retry_max=10,
            retry_backoff_seconds=86_400,
            pre_hook="pg_dump -f /var/backups/db.sql",
            post_hook="   ",
        )
    )
    assert g.includes == ["/home", "C:\\Users", "D:/data"]  # de-duplicated
    assert g.retention["keep_within"] == "1y6m" and g.retention["keep_daily"] == 7
    assert g.pre_hook == "pg_dump -f /var/backups/db.sql"
    assert g.post_hook is None  # blank means none


def test_read_only_fields_of_a_view_are_accepted_back() -> None:
    body = with_(id=4, host_id=1, has_pre_hook=False, created_at=0, schedule_ids=[1])
    assert parse_group(body).name == "etc"


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"includes": ["/etc"]}, "name", "'name' is required"),
        ({"name": "etc"}, "includes", "'includes' is required"),
        (with_(name=""), "name", "'name' must be"),
        (with_(name="has space"), "name", "snapshot tag"),
        (with_(name="a,b"), "name", "'name' must be"),
        (with_(name="-x"), "name", "starting with a letter"),
        (with_(name="x" * 65), "name", "1-64"),
        (with_(includes=[]), "includes", "non-empty list"),
        (with_(includes="/etc"), "includes", "non-empty list"),
        (with_(includes=["etc"]), "includes", "'etc' must be an absolute path"),
        (with_(includes=["./data"]), "includes", "absolute path"),
        (with_(includes=["C:data"]), "includes", "absolute path"),
        (with_(includes=[""]), "includes", "entry 1 must be a non-empty path"),
        (with_(includes=["/a\nb"]), "includes", "control character"),
        (with_(includes=[3]), "includes", "non-empty path"),
        (with_(includes=["/x"] * 1001), "includes", "more than 1000"),
        (with_(excludes=[""]), "excludes", "non-empty pattern"),
        (with_(excludes=["ok", 7]), "excludes", "entry 2"),
        (with_(excludes="*.tmp"), "excludes", "list of patterns"),
        (with_(retention=[]), "retention", "object of keep_* rules"),
        (with_(retention={"keep_forever": 1}), "retention.keep_forever", "unknown rule"),
        (with_(retention={"keep_daily": 0}), "retention.keep_daily", "between 1 and 100000"),
        (with_(retention={"keep_daily": 100_001}), "retention.keep_daily", "between 1 and"),
        (with_(retention={"keep_daily": "7"}), "retention.keep_daily", "count"),
        (with_(retention={"keep_daily": True}), "retention.keep_daily", "count"),
        (with_(retention={"keep_within": "7 days"}), "retention.keep_within", "like '7d'"),
        (with_(retention={"keep_within": "0d"}), "retention.keep_within", "duration"),
        (with_(retention={"keep_within": "7w"}), "retention.keep_within", "duration"),
        (with_(retry_max=11), "retry_max", "between 0 and 10"),
        (with_(retry_max=-1), "retry_max", "between 0 and 10"),
        (with_(retry_backoff_seconds=9), "retry_backoff_seconds", "between 10 and 86400"),
        (with_(retry_backoff_seconds=86_401), "retry_backoff_seconds", "between 10"),
        (with_(pre_hook="x" * 8193), "pre_hook", "8192 bytes"),
        (with_(post_hook="é" * 4097), "post_hook", "8194 bytes"),
        (with_(pre_hook=["ls"]), "pre_hook", "shell command or null"),
        (with_(post_hook="a\0b"), "post_hook", "NUL"),
        (with_(colour="red"), "colour", "unknown field(s): colour"),
    ],
)
def test_group_refusals_name_the_field(body: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_group(body)
    assert err.value.field == field
    assert says in err.value.message


def test_hook_of_exactly_8_kib_is_allowed() -> None:
    assert parse_group(with_(pre_hook="x" * 8192)).pre_hook == "x" * 8192


def test_schedule() -> None:
    s = parse_schedule({"cron": "@daily", "source_group_ids": [2, 1, 2]})
    assert (s.cron, s.enabled, s.source_group_ids) == ("0 0 * * *", True, [2, 1])


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"source_group_ids": [1]}, "cron", "'cron' is required"),
        ({"cron": "0 2 * *", "source_group_ids": [1]}, "cron", "5 fields"),
        ({"cron": "0 2 * * *"}, "source_group_ids", "at least one"),
        ({"cron": "0 2 * * *", "source_group_ids": []}, "source_group_ids", "at least one"),
        ({"cron": "0 2 * * *", "source_group_ids": ["1"]}, "source_group_ids", "'1'"),
        ({"cron": "0 2 * * *", "source_group_ids": [0]}, "source_group_ids", "not a source"),
        ({"cron": "0 2 * * *", "source_group_ids": [True]}, "source_group_ids", "True"),
        ({"cron": "0 2 * * *", "source_group_ids": [1], "enabled": "yes"}, "enabled", "true or"),
    ],
)
def test_schedule_refusals(body: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_schedule(body)
    assert err.value.field == field
    assert says in err.value.message


def test_maintenance_carries_only_what_was_sent() -> None:
    m = parse_maintenance({"prune_cron": None, "check_cron": "", "forget_cron": "@daily"})
    assert m.changes == {"prune_cron": None, "check_cron": None, "forget_cron": "0 0 * * *"}
    assert parse_maintenance({"enabled": False}).changes == {"enabled": False}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"forget_cron": "0 2 * *"}, "forget_cron", "'forget_cron' must have 5 fields"),
        ({"check_cron": "0 25 * * *"}, "check_cron", "'check_cron' hour field"),
        ({"check_subset_percent": 0}, "check_subset_percent", "between 1 and 100"),
        ({"check_subset_percent": 101}, "check_subset_percent", "between 1 and 100"),
        ({"enabled": 1}, "enabled", "true or false"),
        ({"prune": "weekly"}, "prune", "unknown field"),
    ],
)
def test_maintenance_refusals(body: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_maintenance(body)
    assert err.value.field == field
    assert says in err.value.message


def test_bandwidth_override() -> None:
    assert parse_bandwidth_override(None, None) == {}
    assert parse_bandwidth_override(512, None) == {"upload_kib_s": 512}
    with pytest.raises(InvalidInput) as err:
        parse_bandwidth_override(None, 0)
    assert err.value.field == "download_kib_s"
