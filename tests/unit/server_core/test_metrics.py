"""The Prometheus exposition rendered from a real store: it must parse with
Prometheus' own text parser and say what the database holds."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from server_core import metrics
from server_core.models import Alert, Host, Job, RepoStats, Snapshot

from .conftest import Services

NOW = time.time()


def make_host(name: str, **kw: Any) -> int:
    fields: dict[str, Any] = {"created_at": NOW - 86400, "enrolled_at": NOW - 86400}
    fields.update(kw)
    return int(Host.create(name=name, **fields).id)


def make_job(host: int, kind: str, status: str, duration: float | None, finished: float) -> None:
    Job.create(
        id=uuid.uuid4().hex,
        host=host,
        kind=kind,
        status=status,
        actor="schedule",
        created_at=finished - (duration or 0) - 1,
        started_at=None if duration is None else finished - duration,
        finished_at=None if status in ("queued", "running") else finished,
    )


def make_alert(host: int | None, kind: str, severity: str, status: str) -> None:
    Alert.create(
        host=host,
        kind=kind,
        severity=severity,
        dedup_key=f"{kind}:{host}:{uuid.uuid4().hex}",
        status=status,
        message="m",
        first_seen_at=NOW,
        last_seen_at=NOW,
    )


def build_fleet() -> None:
    web = make_host("web1", online=True, last_seen_at=NOW - 5, os="linux", agent_version="1.2")
    db = make_host("db-1", presence_mode="laptop", last_seen_at=NOW - 3600)
    make_host("pending", enrolled_at=None)  # waiting for its agent: not reported
    # web1: a success, then a failure (the latest).
    make_job(web, "backup", "succeeded", 5, NOW - 7200)
    make_job(web, "backup", "failed", 45, NOW - 60)
    make_job(web, "prune", "succeeded", 4000, NOW - 9000)
    make_job(web, "check", "running", 10, NOW)
    make_job(web, "backup", "cancelled", None, NOW - 500)  # never started: no duration
    # db-1: succeeded last.
    make_job(db, "backup", "failed", 100_000, NOW - 90_000)
    make_job(db, "backup", "succeeded", 10, NOW - 100)
    make_job(db, "backup", "queued", None, NOW)
    RepoStats.create(host=web, collected_at=NOW, total_size=123_456_789)
    for i in range(3):
        Snapshot.create(
            host=web,
            snapshot_id=f"{i:064x}",
            short_id=f"{i:08x}",
            time="2024-05-01T00:00:00Z",
            hostname="web1",
            paths="[]",
            seen_at=NOW,
        )
    make_alert(web, "backup_failed", "critical", "open")
    make_alert(web, "stale_backup", "warning", "acknowledged")
    make_alert(web, "agent_offline", "warning", "resolved")
    make_alert(db, "prune_failed", "warning", "open")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[("restic_manager_" + name, tuple(sorted(labels.items())))]


async def test_render_parses_and_reflects_the_fleet(svc: Services) -> None:
    await svc.store.transaction(build_fleet)
    body = await metrics.render(svc.store)
    text = body.decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["restic_manager_job_duration_seconds"] == "histogram"
    assert families["restic_manager_host_online"] == "gauge"
    assert all(name.startswith("restic_manager_") for name in families)
    found = samples(text)

    assert value(found, "hosts") == 2
    assert value(found, "hosts_online") == 1
    assert value(found, "host_online", host="web1") == 1
    assert value(found, "host_online", host="db-1") == 0
    assert ("restic_manager_host_online", (("host", "pending"),)) not in found
    assert value(found, "host_last_seen_timestamp_seconds", host="web1") == NOW - 5
    info = value(
        found,
        "host_info",
        host="db-1",
        presence_mode="laptop",
        os="",
        arch="",
        agent_version="",
        restic_version="",
    )
    assert info == 1

    # Latest backup of web1 failed; its last success was two hours ago.
    assert value(found, "host_last_backup_timestamp_seconds", host="web1") == NOW - 60
    assert value(found, "host_last_backup_success", host="web1") == 0
    assert value(found, "host_last_successful_backup_timestamp_seconds", host="web1") == NOW - 7200
    assert value(found, "host_last_backup_success", host="db-1") == 1
    assert value(found, "host_last_backup_timestamp_seconds", host="db-1") == NOW - 100

    assert value(found, "host_repo_size_bytes", host="web1") == 123_456_789
    assert ("restic_manager_host_repo_size_bytes", (("host", "db-1"),)) not in found
    assert value(found, "host_snapshots", host="web1") == 3
    assert value(found, "host_snapshots", host="db-1") == 0
    assert value(found, "host_open_alerts", host="web1") == 2  # open + acknowledged
    assert value(found, "host_open_alerts", host="db-1") == 1

    assert value(found, "alerts", status="open", severity="critical") == 1
    assert value(found, "alerts", status="open", severity="warning") == 1
    assert value(found, "alerts", status="acknowledged", severity="warning") == 1
    assert value(found, "alerts", status="open", severity="info") == 0

    assert value(found, "jobs_active", kind="check", status="running") == 1
    assert value(found, "jobs_active", kind="backup", status="queued") == 1


async def test_job_duration_histogram_by_kind_and_status(svc: Services) -> None:
    await svc.store.transaction(build_fleet)
    found = samples((await metrics.render(svc.store)).decode())

    def bucket(kind: str, status: str, le: str) -> float:
        return value(found, "job_duration_seconds_bucket", kind=kind, status=status, le=le)

    # backup/succeeded: 5 s and 10 s, both in the first bucket (le is inclusive).
    assert bucket("backup", "succeeded", "10.0") == 2
    assert value(found, "job_duration_seconds_count", kind="backup", status="succeeded") == 2
    assert value(found, "job_duration_seconds_sum", kind="backup", status="succeeded") == 15
    # backup/failed: 45 s and 100000 s (beyond the last finite bucket).
    assert bucket("backup", "failed", "30.0") == 0
    assert bucket("backup", "failed", "60.0") == 1
    assert bucket("backup", "failed", "21600.0") == 1
    assert bucket("backup", "failed", "+Inf") == 2
    # prune: 4000 s lands in le=7200.
    assert bucket("prune", "succeeded", "3600.0") == 0
    assert bucket("prune", "succeeded", "7200.0") == 1
    # Unfinished or never-started jobs are not durations.
    assert not any(
        k[0] == "restic_manager_job_duration_seconds_count" and ("kind", "check") in k[1]
        for k in found
    )
    assert ("status", "cancelled") not in {
        lbl for k in found if k[0].endswith("_count") for lbl in k[1]
    }
    les = sorted(
        {dict(k[1])["le"] for k in found if k[0] == "restic_manager_job_duration_seconds_bucket"},
        key=float,
    )
    assert les == [str(float(b)) for b in metrics.DURATION_BUCKETS] + ["+Inf"]


async def test_an_empty_store_renders_valid_zeroes(svc: Services) -> None:
    found = samples((await metrics.render(svc.store)).decode())
    assert value(found, "hosts") == 0
    assert value(found, "alerts", status="open", severity="critical") == 0


async def test_the_work_happens_on_the_store_thread(svc: Services, monkeypatch: Any) -> None:
    threads: list[str] = []
    original = metrics.read_snapshot

    def spy() -> metrics.FleetSnapshot:
        threads.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(metrics, "read_snapshot", spy)
    await metrics.render(svc.store)
    assert len(threads) == 1 and threads[0].startswith("store")


async def test_the_sample_grafana_dashboard_uses_only_exported_metrics(svc: Services) -> None:
    await svc.store.transaction(build_fleet)
    found = samples((await metrics.render(svc.store)).decode())
    exported = {name for name, _ in found}
    dashboard = Path(__file__).parents[3] / "resources/grafana/restic-manager-dashboard.json"
    used = set(re.findall(r"restic_manager_[a-z_]+", dashboard.read_text()))
    assert used and used <= exported, used - exported
    json.loads(dashboard.read_text())
