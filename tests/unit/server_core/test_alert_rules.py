"""Alert kinds, keys, horizons and the words an operator reads (pure)."""

from __future__ import annotations

import datetime as dt

from server_core import alert_rules as r

UTC = dt.UTC
NOON = dt.datetime(2026, 3, 3, 12, 3, tzinfo=UTC).timestamp()


def test_every_kind_has_one_of_the_three_severities():
    assert r.SEVERITIES == ("info", "warning", "critical")
    assert r.KINDS == {
        "backup_failed": "critical",
        "forget_failed": "warning",
        "prune_failed": "warning",
        "check_failed": "critical",
        "repo_init_failed": "critical",
        "agent_offline": "warning",
        "stale_backup": "warning",
        "update_failed": "warning",
    }
    ranks = [r.severity_rank(s) for s in r.SEVERITIES]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3
    assert r.severity_rank("bogus") < r.severity_rank("info")


def test_backups_are_keyed_per_source_group_other_kinds_per_host():
    assert r.job_key("backup", 3, 7) == "backup_failed:3:7"
    assert r.job_key("backup", 3, None) == "backup_failed:3:adhoc"
    assert r.job_key("forget", 3, 7) == "forget_failed:3"
    assert r.job_key("init", 3, None) == "repo_init_failed:3"
    assert r.dedup_key("agent_offline", 3) == "agent_offline:3"
    assert r.dedup_key("stale_backup", 3) == "stale_backup:3"
    assert r.dedup_key("update_failed", 3) == "update_failed:3"


def test_stale_horizon_is_one_and_a_half_intervals_laptops_at_least_a_week():
    day = 86400.0
    assert r.stale_horizon_s("always_on", day, 7 * day) == 1.5 * day
    assert r.stale_horizon_s("laptop", day, 7 * day) == 7 * day
    assert r.stale_horizon_s("laptop", 10 * day, 7 * day) == 15 * day
    assert r.stale_horizon_s("always_on", None, 7 * day) is None
    assert r.stale_horizon_s("laptop", None, 7 * day) is None


def test_durations_and_intervals_read_naturally():
    assert r.duration(45) == "45 s"
    assert r.duration(4 * 60 + 59) == "4 min"
    assert r.duration(3 * 3600 + 10) == "3 h"
    assert r.duration(36 * 3600) == "1 day 12 h"
    assert r.duration(24 * 3600) == "1 day"
    assert r.duration(2 * 86400 + 5 * 3600) == "2 days"
    assert r.interval(86400) == "1 day"
    assert r.interval(7 * 86400) == "7 days"
    assert r.interval(6 * 3600) == "6 hours"
    assert r.interval(900) == "15 min"


def test_a_failed_backup_names_the_group_the_host_and_the_first_error_line():
    msg = r.job_failed_message(
        "backup",
        "web1",
        group_name="etc",
        error="\n  Fatal: wrong password or no key found\nmore detail\n",
        exit_code=12,
    )
    assert msg == "Backup of 'etc' on web1 failed: Fatal: wrong password or no key found"
    adhoc = r.job_failed_message("backup", "web1", error=None, exit_code=1)
    assert adhoc == "Ad-hoc backup on web1 failed: exit code 1"
    long = r.job_failed_message("check", "web1", error="x" * 1000)
    assert len(long) < 400 and long.endswith("…")


def test_each_kind_says_a_different_thing():
    messages = {
        r.job_failed_message(kind, "web1", group_name="etc", error="boom")
        for kind in ("backup", "forget", "prune", "check", "init")
    }
    messages.add(r.offline_message("web1", NOON, NOON, NOON + 240))
    messages.add(
        r.stale_message(
            "web1",
            last_success_at=NOON,
            since=NOON,
            now=NOON + 2 * 86400,
            presence_mode="always_on",
            min_interval_s=86400,
            horizon_s=1.5 * 86400,
        )
    )
    messages.add(r.repo_status_message("web1", "Fatal: unable to open config file"))
    assert len(messages) == 8


def test_offline_message_says_since_when_and_how_long():
    local_noon = dt.datetime(2026, 3, 3, 12, 3).timestamp()  # the control plane's local time
    msg = r.offline_message("web1", local_noon, local_noon, local_noon + 4 * 60 + 10)
    assert msg == "Agent on web1 has not been heard from since 12:03 (4 min)"
    days_later = r.offline_message("web1", local_noon, local_noon, local_noon + 3 * 86400)
    assert days_later == "Agent on web1 has not been heard from since 3 Mar 12:03 (3 days)"
    never = r.offline_message("web1", None, local_noon, local_noon + 120)
    assert never.startswith("Agent on web1 has never connected since it was enrolled at 12:03")


def test_stale_message_states_the_gap_and_the_expectation():
    always = r.stale_message(
        "web1",
        last_success_at=NOON,
        since=NOON,
        now=NOON + 2 * 86400 + 60,
        presence_mode="always_on",
        min_interval_s=86400,
        horizon_s=1.5 * 86400,
    )
    assert always == (
        "No successful backup on web1 for 2 days; its schedules expect one every 1 day"
    )
    laptop = r.stale_message(
        "lap",
        last_success_at=None,
        since=NOON,
        now=NOON + 8 * 86400,
        presence_mode="laptop",
        min_interval_s=86400,
        horizon_s=7 * 86400,
    )
    assert laptop == (
        "No successful backup on lap yet, 8 days after backups were set up; "
        "in laptop mode one is expected at least every 7 days"
    )
