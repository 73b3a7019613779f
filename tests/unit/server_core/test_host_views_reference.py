"""host_views() against a straightforward reference, on a fleet with varied data.

host_views() reads the whole fleet in a few set-based statements (it is what
the fleet table and the API list): this test pins its output to what the
rules say, computed the slow obvious way — host by host, one small query at a
time — on a real SQLite store with every case the fleet table shows: no
backups, failed / cancelled / warning backups, unfinished and non-backup
jobs, restores in every state, snapshots, repository stats with gaps in the
30-day history (and days outside it), alerts in every state, enabled,
disabled and group-less schedules, a cron expression croniter cannot read,
bandwidth caps, presence modes, tags.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time

import pytest

from server_core import cron
from server_core.models import (
    Alert,
    Host,
    Job,
    RepoStats,
    RepoStatsDaily,
    Schedule,
    ScheduleGroup,
    Snapshot,
    SourceGroup,
)
from server_core.services.hosts import SIZE_HISTORY_DAYS, host_views
from server_core.views import HostView

from .conftest import Services

NOW = 1_763_800_000.0  # fixed, so the 30-day window and next runs are reproducible
DAY = 86_400.0
CRONS = ["0 2 * * *", "30 */6 * * *", "15 3 * * 1", "*/20 * * * *", "5 4 1 * *"]


def reference_host_views(host_ids: list[int] | None, now: float) -> list[HostView]:
    """The fleet rows, one host and one question at a time."""
    query = Host.select().order_by(Host.name)
    if host_ids is not None:
        query = query.where(Host.id.in_(host_ids))
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    window = [
        (today - dt.timedelta(days=n)).isoformat() for n in range(SIZE_HISTORY_DAYS - 1, -1, -1)
    ]
    views = []
    for h in query:
        backups = list(
            Job.select().where(
                (Job.host == h.id) & (Job.kind == "backup") & Job.finished_at.is_null(False)
            )
        )
        latest = max(backups, key=lambda j: j.finished_at, default=None)
        status = None
        if latest is not None:
            status = latest.status
            if status == "succeeded" and latest.warnings:
                status = "succeeded_with_warnings"
        restores = list(Job.select().where((Job.host == h.id) & (Job.kind == "restore")))
        restore = max(restores, key=lambda j: (j.created_at, j.id), default=None)
        restore_at = None
        if restore is not None:
            restore_at = next(
                t
                for t in (restore.finished_at, restore.started_at, restore.created_at)
                if t is not None
            )
        stats = RepoStats.get_or_none(RepoStats.host == h.id)
        runs = []
        for s in Schedule.select().where((Schedule.host == h.id) & (Schedule.enabled == True)):  # noqa: E712
            if not ScheduleGroup.select().where(ScheduleGroup.schedule == s.id).exists():
                continue  # backs nothing up
            try:
                at = cron.next_run(s.cron, now)
            except Exception:
                continue  # an expression croniter cannot read never fires
            if at is not None:
                runs.append(at)
        history: list[int | None] = []
        for day in window:
            row = RepoStatsDaily.get_or_none(
                (RepoStatsDaily.host == h.id) & (RepoStatsDaily.day == day)
            )
            history.append(None if row is None else row.total_size)
        views.append(
            HostView(
                id=h.id,
                name=h.name,
                status="online" if h.online else "offline",
                enrolled=h.enrolled_at is not None,
                os=h.os,
                arch=h.arch,
                agent_version=h.agent_version,
                restic_version=h.restic_version,
                last_seen_at=h.last_seen_at,
                last_backup_at=None if latest is None else latest.finished_at,
                last_backup_status=status,
                repo_status=h.repo_status,
                repo_status_error=h.repo_status_error,
                snapshot_count=Snapshot.select().where(Snapshot.host == h.id).count(),
                repo_size_bytes=None if stats is None else stats.total_size,
                open_alerts=Alert.select()
                .where((Alert.host == h.id) & (Alert.status != "resolved"))
                .count(),
                tags=json.loads(h.tags),
                presence_mode=h.presence_mode,
                created_at=h.created_at,
                schedule_version=h.schedule_version,
                schedule_acked_version=h.schedule_acked_version,
                next_run_at=min(runs) if runs else None,
                size_history=history,
                upload_kib_s=h.upload_kib_s,
                download_kib_s=h.download_kib_s,
                latest_restore_job_id=None if restore is None else restore.id,
                latest_restore_status=None if restore is None else restore.status,
                latest_restore_at=restore_at,
            )
        )
    return views


def _job(host: int, n: int, kind: str, status: str, **kw: object) -> None:
    fields: dict[str, object] = {"actor": "schedule", "created_at": NOW - 40 * DAY + n * 60}
    fields.update(kw)
    Job.create(id=f"{kind[:3]}-{host}-{n:03d}", host=host, kind=kind, status=status, **fields)


def _day(age: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(NOW - age * DAY))


def seed_fleet(random_hosts: int) -> dict[str, int]:
    """Named hosts for each case, then ``random_hosts`` hosts mixing them."""
    ids: dict[str, int] = {}

    def host(name: str, **kw: object) -> int:
        fields: dict[str, object] = {"created_at": NOW - 90 * DAY, "tags": "[]"}
        fields.update(kw)
        ids[name] = Host.create(name=name, **fields).id
        return ids[name]

    # Never enrolled, nothing at all.
    host("bare")
    # Enrolled and online; the last backup failed after an older success;
    # a newer backup is still running (not finished: does not count), and a
    # newer init finished (not a backup).
    h = host(
        "failing",
        enrolled_at=NOW - 80 * DAY,
        online=True,
        last_seen_at=NOW - 5,
        os="linux",
        arch="amd64",
        agent_version="0.3.1",
        restic_version="0.18.0",
        tags=json.dumps(["prod", "db"]),
        repo_status="ready",
    )
    _job(h, 1, "backup", "succeeded", finished_at=NOW - 2 * DAY)
    _job(h, 2, "backup", "failed", finished_at=NOW - DAY, error="Fatal: no space")
    _job(h, 3, "backup", "running", started_at=NOW - 60)
    _job(h, 4, "init", "succeeded", finished_at=NOW - 30)
    # The latest backup succeeded with warnings; an older one failed.
    h = host("warnings", enrolled_at=NOW - 70 * DAY, last_seen_at=NOW - DAY)
    _job(h, 1, "backup", "failed", finished_at=NOW - 3 * DAY)
    _job(h, 2, "backup", "succeeded", finished_at=NOW - DAY, warnings=True)
    # The latest backup was cancelled; an older success had warnings.
    h = host("cancelled", enrolled_at=NOW - 70 * DAY, presence_mode="laptop")
    _job(h, 1, "backup", "succeeded", finished_at=NOW - 5 * DAY, warnings=True)
    _job(h, 2, "backup", "cancelled", finished_at=NOW - 4 * DAY)
    # Repository trouble, caps, plan versions.
    host(
        "init-failed",
        enrolled_at=NOW - DAY,
        repo_status="init_failed",
        repo_status_error="Fatal: create repository at /srv/r failed: permission denied",
        upload_kib_s=2048,
        download_kib_s=None,
        schedule_version=7,
        schedule_acked_version=5,
    )
    host("locked", enrolled_at=NOW - DAY, repo_status="locked", upload_kib_s=10, download_kib_s=99)
    # Size history with gaps, a day with no size, a day just outside the
    # window, and a day in the future (clock skew): only the window counts.
    h = host("gaps", enrolled_at=NOW - 60 * DAY, tags=json.dumps(["lab"]))
    RepoStats.create(host=h, collected_at=NOW - 3600, total_size=5 * 1024**3)
    for age, size in ((0, 5000), (3, 4000), (17, None), (29, 1000), (30, 999), (45, 1), (-1, 7)):
        RepoStatsDaily.create(host=h, day=_day(age), total_size=size)
    for n in range(12):
        Snapshot.create(
            host=h,
            snapshot_id=f"{n:064x}",
            short_id=f"{n:08x}",
            time="2025-01-01T00:00:00Z",
            hostname="gaps",
            paths="[]",
            tags="[]",
            seen_at=NOW,
        )
    # Schedules: the earliest enabled one with a group wins; a disabled one
    # and one without any group do not count; nor does an unreadable one.
    h = host("scheduled", enrolled_at=NOW - 10 * DAY)
    group = SourceGroup.create(host=h, name="etc", includes='["/etc"]', created_at=0, updated_at=0)
    for expr, enabled, linked in (
        ("0 2 * * *", True, True),
        ("30 */6 * * *", True, True),
        ("* * * * *", False, True),
        ("*/5 * * * *", True, False),
        ("61 * * * *", True, True),
    ):
        s = Schedule.create(host=h, cron=expr, enabled=enabled, created_at=0, updated_at=0)
        if linked:
            ScheduleGroup.create(schedule=s, source_group=group)
    h = host("only-disabled", enrolled_at=NOW - 10 * DAY)
    group = SourceGroup.create(host=h, name="etc", includes='["/etc"]', created_at=0, updated_at=0)
    s = Schedule.create(host=h, cron="0 2 * * *", enabled=False, created_at=0, updated_at=0)
    ScheduleGroup.create(schedule=s, source_group=group)
    # Restores: the most recently queued one, whatever its state; its time is
    # when it finished, else started, else was queued. Two queued at the same
    # moment: the larger id.
    h = host("restoring", enrolled_at=NOW - 10 * DAY)
    _job(
        h,
        1,
        "restore",
        "succeeded",
        created_at=NOW - 900,
        started_at=NOW - 890,
        finished_at=NOW - 800,
    )
    _job(h, 2, "restore", "running", created_at=NOW - 100, started_at=NOW - 90)
    h = host("restore-queued", enrolled_at=NOW - 10 * DAY)
    _job(h, 1, "restore", "failed", created_at=NOW - 50, started_at=NOW - 40, finished_at=NOW - 30)
    _job(h, 2, "restore", "queued", created_at=NOW - 20)
    _job(h, 3, "restore", "queued", created_at=NOW - 20)
    _job(h, 4, "backup", "succeeded", created_at=NOW - 10, finished_at=NOW - 5)
    # Alerts: open and acknowledged count, resolved does not; a fleet-wide
    # alert (no host) belongs to no row.
    h = host("alerting", enrolled_at=NOW - 10 * DAY)
    for n, status in enumerate(("open", "acknowledged", "resolved", "open")):
        Alert.create(
            host=h,
            kind="backup_failed",
            severity="critical",
            dedup_key=f"k{n}",
            status=status,
            message="m",
            first_seen_at=NOW,
            last_seen_at=NOW,
        )
    Alert.create(
        host=None,
        kind="agent_offline",
        severity="warning",
        dedup_key="fleet",
        status="open",
        message="m",
        first_seen_at=NOW,
        last_seen_at=NOW,
    )

    rng = random.Random(4)
    for i in range(random_hosts):
        h = host(
            f"r{i:03d}",
            enrolled_at=None if rng.random() < 0.1 else NOW - rng.uniform(1, 80) * DAY,
            online=rng.random() < 0.5,
            last_seen_at=None if rng.random() < 0.1 else NOW - rng.uniform(1, 5 * DAY),
            os=rng.choice([None, "linux", "windows"]),
            arch=rng.choice([None, "amd64", "arm64"]),
            agent_version=rng.choice([None, "0.1.0", "0.2.3"]),
            restic_version=rng.choice([None, "0.14.0", "0.18.0"]),
            tags=json.dumps(rng.sample(["prod", "lab", "db", "web"], rng.randint(0, 3))),
            presence_mode=rng.choice(["always_on", "laptop"]),
            repo_status=rng.choice(["unknown", "ready", "ready", "locked", "init_failed"]),
        )
        for n in range(rng.randint(0, 6)):
            finished = None if rng.random() < 0.15 else NOW - rng.uniform(0, 30) * DAY
            _job(
                h,
                n,
                rng.choice(["backup", "backup", "backup", "check", "restore"]),
                rng.choice(["succeeded", "failed", "cancelled", "running"]),
                created_at=NOW - rng.uniform(31, 60) * DAY,
                started_at=None if rng.random() < 0.3 else NOW - rng.uniform(30, 31) * DAY,
                finished_at=finished,
                warnings=rng.random() < 0.3,
            )
        if rng.random() < 0.7:
            RepoStats.create(host=h, collected_at=NOW, total_size=rng.randint(0, 10**12))
            for age in rng.sample(range(-2, 40), rng.randint(0, 25)):
                RepoStatsDaily.create(host=h, day=_day(age), total_size=rng.randint(0, 10**12))
        if rng.random() < 0.6:
            group = SourceGroup.create(
                host=h, name="g", includes='["/srv"]', created_at=0, updated_at=0
            )
            for expr in rng.sample(CRONS, rng.randint(1, 3)):
                s = Schedule.create(
                    host=h, cron=expr, enabled=rng.random() < 0.8, created_at=0, updated_at=0
                )
                ScheduleGroup.create(schedule=s, source_group=group)
        for n in range(rng.randint(0, 3)):
            Snapshot.create(
                host=h,
                snapshot_id=f"{h:032x}{n:032x}",
                short_id=f"{n:08x}",
                time="2025-01-01T00:00:00Z",
                hostname=f"r{i}",
                paths="[]",
                tags="[]",
                seen_at=NOW,
            )
    return ids


def same(got: list[HostView], want: list[HostView]) -> None:
    # repr, not ==: 3 == 3.0 would hide a float turning into an int.
    assert [v.name for v in got] == [v.name for v in want]
    for g, w in zip(got, want, strict=True):
        assert repr(g) == repr(w), g.name


@pytest.fixture
async def fleet(svc: Services) -> dict[str, int]:
    return await svc.store.transaction(seed_fleet, 60)


async def test_the_whole_fleet_matches_the_reference(svc: Services, fleet: dict[str, int]) -> None:
    got, want = await svc.store.call(lambda: (host_views(now=NOW), reference_host_views(None, NOW)))
    same(got, want)
    # The fleet covers what it claims to (else the comparison proves little).
    rows = {v.name: v for v in got}
    assert {v.last_backup_status for v in got} >= {
        None,
        "succeeded",
        "failed",
        "cancelled",
        "succeeded_with_warnings",
    }
    assert rows["failing"].last_backup_status == "failed"
    assert rows["warnings"].last_backup_status == "succeeded_with_warnings"
    assert rows["cancelled"].last_backup_status == "cancelled"
    assert rows["bare"].size_history == [None] * SIZE_HISTORY_DAYS
    assert rows["gaps"].size_history[-1] == 5000 and rows["gaps"].size_history[0] == 1000
    assert rows["gaps"].size_history.count(None) == SIZE_HISTORY_DAYS - 3
    assert rows["gaps"].snapshot_count == 12
    assert rows["scheduled"].next_run_at == min(
        cron.next_run("0 2 * * *", NOW), cron.next_run("30 */6 * * *", NOW)
    )
    assert rows["only-disabled"].next_run_at is None
    assert (rows["restoring"].latest_restore_status, rows["restoring"].latest_restore_at) == (
        "running",
        NOW - 90,
    )
    assert rows["restore-queued"].latest_restore_job_id == f"res-{fleet['restore-queued']}-003"
    assert rows["restore-queued"].latest_restore_at == NOW - 20
    assert rows["alerting"].open_alerts == 3
    assert rows["init-failed"].schedule_version == 7 and rows["locked"].download_kib_s == 99
    assert any(v.next_run_at is not None for v in got if v.name.startswith("r"))
    assert any(v.latest_restore_job_id for v in got if v.name.startswith("r"))


async def test_some_hosts_match_the_reference(svc: Services, fleet: dict[str, int]) -> None:
    wanted = [fleet["gaps"], fleet["failing"], fleet["r007"], fleet["gaps"], 999_999]
    got, want = await svc.store.call(
        lambda: (host_views(wanted, now=NOW), reference_host_views(wanted, NOW))
    )
    assert [v.name for v in got] == ["failing", "gaps", "r007"]  # by name; unknown ids skipped
    same(got, want)
    assert await svc.store.call(lambda: host_views([], now=NOW)) == []


async def test_an_empty_fleet_has_no_rows(svc: Services) -> None:
    assert await svc.store.call(lambda: host_views(now=NOW)) == []


async def test_of_two_backups_finished_at_the_same_moment_the_later_recorded_counts(
    svc: Services,
) -> None:
    def seed() -> None:
        h = Host.create(name="tie", created_at=0, tags="[]").id
        _job(h, 2, "backup", "failed", finished_at=NOW)
        _job(h, 1, "backup", "succeeded", finished_at=NOW)

    await svc.store.transaction(seed)
    (row,) = await svc.store.call(lambda: host_views(now=NOW))
    assert row.last_backup_status == "succeeded"


async def test_the_whole_fleet_is_read_without_an_id_list(
    svc: Services, fleet: dict[str, int]
) -> None:
    # A list of every id made SQLite parse and probe 1,000 parameters per
    # statement; the whole fleet needs none.
    statements: list[str] = []

    def run() -> None:
        conn = svc.store.db.connection()
        conn.set_trace_callback(statements.append)
        try:
            host_views(now=NOW)
        finally:
            conn.set_trace_callback(None)

    await svc.store.call(run)
    assert statements
    assert not [s for s in statements if " IN (" in s.upper()], statements
