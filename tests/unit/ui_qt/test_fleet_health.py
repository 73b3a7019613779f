from __future__ import annotations

import dataclasses

from server_core.views import HostView
from ui_qt.fleet_health import CRITICAL, OK, STALE_AFTER_S, WARNING, assess_host, fleet_health

NOW = 1_700_000_000.0


def host(host_id: int = 1, name: str = "web1", **kw: object) -> HostView:
    base = HostView(
        id=host_id,
        name=name,
        status="online",
        enrolled=True,
        os="linux",
        arch="amd64",
        agent_version="0.1.0",
        restic_version="0.14.0",
        last_seen_at=NOW,
        last_backup_at=NOW - 3600,
        last_backup_status="succeeded",
        repo_status="ready",
        repo_status_error=None,
        snapshot_count=3,
        repo_size_bytes=1 << 30,
        open_alerts=0,
        tags=[],
        presence_mode="always_on",
        created_at=NOW - 86400,
    )
    fields = {f.name for f in dataclasses.fields(HostView)}
    return dataclasses.replace(base, **{k: v for k, v in kw.items() if k in fields})


def test_empty_fleet_is_ok_and_says_so():
    health = fleet_health([], now=NOW)
    assert health.level == OK
    assert health.total == 0 and health.attention == []
    assert health.tooltip == "No hosts yet"


def test_all_good():
    health = fleet_health([host(1, "a"), host(2, "b")], now=NOW)
    assert health.level == OK
    assert (health.total, health.online, health.offline) == (2, 2, 0)
    assert health.tooltip == "2/2 online"
    assert health.attention == []


def test_failed_backup_is_critical_and_counted_as_failing():
    hosts = [host(i, f"h{i}") for i in range(1, 6)]
    hosts.append(host(6, "db1", status="offline"))
    hosts[0] = host(1, "h1", last_backup_status="failed")
    health = fleet_health(hosts, now=NOW)
    assert health.level == CRITICAL
    assert health.failing == 1 and health.warnings == 1
    assert health.tooltip == "5/6 online · 1 failing · 1 needs attention"
    # critical first, then warnings
    assert [(a.name, a.level) for a in health.attention] == [("h1", CRITICAL), ("db1", WARNING)]
    assert health.attention[0].reasons == ("last backup failed",)
    assert health.attention[1].summary == "db1 — offline"


def test_repo_init_failure_is_critical():
    level, reasons = assess_host(host(repo_status="init_failed", last_backup_at=None), NOW)
    assert level == CRITICAL and reasons == ["repository init failed"]


def test_a_locked_repository_needs_attention():
    level, reasons = assess_host(host(repo_status="locked"), NOW)
    assert (level, reasons) == (WARNING, ["repository locked"])
    health = fleet_health([host(repo_status="locked"), host(2, "b")], now=NOW)
    assert health.level == WARNING and health.warnings == 1
    assert health.attention[0].summary.endswith("repository locked")


def test_offline_laptop_is_normal_but_offline_server_is_a_warning():
    assert assess_host(host(status="offline", presence_mode="laptop"), NOW)[0] == OK
    assert assess_host(host(status="offline"), NOW) == (WARNING, ["offline"])


def test_awaiting_agent_is_not_a_problem():
    pending = host(status="offline", enrolled=False, last_backup_at=None, last_backup_status=None)
    health = fleet_health([pending, host(2, "b")], now=NOW)
    assert health.level == OK
    assert health.awaiting == 1 and health.offline == 0
    assert health.tooltip == "1/2 online · 1 awaiting agent"


def test_warnings_alerts_and_stale_backups():
    assert assess_host(host(last_backup_status="succeeded_with_warnings"), NOW) == (
        WARNING,
        ["last backup had warnings"],
    )
    assert assess_host(host(open_alerts=2), NOW) == (WARNING, ["2 open alerts"])
    stale = host(last_backup_at=NOW - STALE_AFTER_S - 86400)
    assert assess_host(stale, NOW) == (WARNING, ["no backup for 8 days"])
    fresh = host(last_backup_at=NOW - STALE_AFTER_S + 60)
    assert assess_host(fresh, NOW)[0] == OK


def test_critical_host_lists_every_reason_most_serious_first():
    level, reasons = assess_host(
        host(last_backup_status="failed", status="offline", open_alerts=1), NOW
    )
    assert level == CRITICAL
    assert reasons == ["last backup failed", "offline", "1 open alert"]


def test_worst_level_wins_and_attention_is_sorted_by_name_within_a_level():
    hosts = [
        host(1, "zeta", status="offline"),
        host(2, "Alpha", status="offline"),
        host(3, "mid"),
    ]
    health = fleet_health(hosts, now=NOW)
    assert health.level == WARNING
    assert [a.name for a in health.attention] == ["Alpha", "zeta"]
    assert health.tooltip == "1/3 online · 2 need attention"
