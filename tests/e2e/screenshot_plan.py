"""Screenshots of the Sources, Schedules and Repo tabs (issue 4), with realistic
data from a real control plane and a protocol-speaking fake agent.

``async def render(path_dir, ui)`` (``ui`` wired to a running control plane on
a qasync loop; ``scripts/screenshots.py`` provides one) writes:

- host-sources-groups.png — three groups, the conflicts banner, default hooks;
- host-source-group-dialog.png — editing a group, an error at its field and
  the live retention/schedule conflict;
- host-schedules.png — schedules with next/last runs and the conflicts banner;
- host-schedule-dialog.png — a new schedule: cron, description, next 5 runs;
- host-backup-bandwidth.png — "Back up now" with a one-off bandwidth limit;
- host-repo.png / host-repo-dark.png — the stale-lock banner, repository
  statistics, a year of size history on the chart, maintenance, bandwidth caps;
- host-danger-reinit.png — the re-init danger zone.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PySide6.QtWidgets import QApplication, QWidget

from agent import protocol as p
from server_core.services.context import OPERATOR
from tests.e2e.screenshot_host_view import _agent, _Navigator, _run, _settle, _snapshot, _until
from tests.helpers.fake_agent import FakeAgent
from tests.helpers.palettes import dark_palette
from ui_qt.context import UiContext
from ui_qt.host_view import HostView

GiB = 1024**3
MiB = 1024**2
H = 3600.0
D = 86400.0


def _save(widget: QWidget, path: Path) -> Path:
    # No processEvents() here: called from a coroutine it would re-enter the
    # asyncio loop; the awaited pauses before each shot let Qt paint.
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    return path


def size_on(day: int) -> tuple[int, int]:
    """(on disk, uncompressed) ``day`` days ago: growth, weekly prune dips, some noise."""
    t = 365 - day
    disk = 21.0 + 17.4 * (t / 365) ** 1.3 + 0.35 * math.sin(t / 3.1) - 0.5 * (t % 7 == 0)
    return int(disk * GiB), int(disk * 1.72 * GiB)


async def _stats_history(agent: FakeAgent, now: float) -> None:
    ids = set()
    for day in [*range(364, 90, -3), *range(90, 0, -1)]:
        disk, raw = size_on(day)
        ids.add(
            await agent.send(
                p.RepoStatsReport(
                    collected_at=now - day * D,
                    total_size=disk,
                    total_uncompressed_size=raw,
                    snapshot_count=min(10, 4 + (365 - day) // 50),
                )
            )
        )
    disk, raw = size_on(0)
    ids.add(
        await agent.send(
            p.RepoStatsReport(
                collected_at=now - 300,
                total_size=disk,
                total_uncompressed_size=raw,
                snapshot_count=10,
            )
        )
    )
    await agent.acked(ids, timeout=30)


async def _maintenance_runs(ui: UiContext, agent: FakeAgent, host_id: int, now: float) -> None:
    for kind, ago, seconds in (
        ("check", 2 * D + 5 * H, 812.0),
        ("prune", 4 * D, 1310.0),
        ("forget", 20 * H, 41.0),
    ):
        job_id = await ui.maintenance.run_now(host_id, kind, OPERATOR)
        await agent.expect(p.CommandRun)
        await _run(
            agent, job_id, kind, "system", now - ago, seconds, status="succeeded", exit_code=0
        )


async def _populate(ui: UiContext, session: aiohttp.ClientSession, now: float) -> tuple[int, Any]:
    host_id, agent = await _agent(
        ui,
        session,
        "db-prod-1",
        repository={
            "url": "rest:https://backup.example.net:8000/db-prod-1",
            "password": "correct horse battery staple",
        },
        initial_paths=["/etc", "/home", "/root"],
        tags=["prod", "postgres"],
    )
    probe = await agent.expect(p.CommandRun)
    await _run(
        agent,
        probe.job_id,
        "init",
        "system",
        now - 60 * D,
        3.0,
        status="succeeded",
        exit_code=0,
        repo_status="ready",
    )
    await _until_ready(ui, host_id)

    (system,) = await ui.sources.list_groups(host_id)
    system = await ui.sources.update_group(
        host_id,
        system.id,
        {
            "name": "system",
            "includes": ["/etc", "/home", "/root"],
            "excludes": ["/home/*/.cache", "*.tmp", "/home/*/Downloads"],
            "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
            "retry_max": 2,
            "retry_backoff_seconds": 600,
            "pre_hook": None,
            "post_hook": None,
        },
        OPERATOR,
    )
    postgres = await ui.sources.create_group(
        host_id,
        {
            "name": "postgres",
            "includes": ["/var/lib/postgresql/dumps"],
            "excludes": [],
            "retention": {"keep_hourly": 24, "keep_daily": 14, "keep_weekly": 8},
            "retry_max": 3,
            "retry_backoff_seconds": 300,
            "pre_hook": "pg_dumpall -U postgres > /var/lib/postgresql/dumps/all.sql",
            "post_hook": "rm -f /var/lib/postgresql/dumps/all.sql",
        },
        OPERATOR,
    )
    await ui.sources.create_group(
        host_id,
        {
            "name": "mail",
            "includes": ["/var/mail", "/etc/postfix"],
            "excludes": ["*.lock"],
            "retention": {"keep_last": 10},
            "retry_max": 0,
            "retry_backoff_seconds": 300,
            "pre_hook": None,
            "post_hook": None,
        },
        OPERATOR,
    )
    await ui.sources.set_default_hooks(
        host_id, None, 'curl -fsS "https://hc.example.net/ping/db-prod-1/$RM_JOB_STATUS"', OPERATOR
    )
    six_hourly = await ui.schedules.create_schedule(
        host_id,
        {"cron": "0 */6 * * *", "enabled": True, "source_group_ids": [system.id]},
        OPERATOR,
    )
    await ui.schedules.create_schedule(
        host_id,
        {"cron": "30 1 * * *", "enabled": True, "source_group_ids": [postgres.id]},
        OPERATOR,
    )
    await ui.schedules.create_schedule(
        host_id,
        {"cron": "0 3 * * 0", "enabled": False, "source_group_ids": [system.id, postgres.id]},
        OPERATOR,
    )
    await ui.maintenance.update(host_id, {"check_subset_percent": 10}, OPERATOR)

    # Backups the schedules ran (with file counts), the last one hitting a stale lock.
    for n, (group, ago) in enumerate(
        ((system, 30 * H), (postgres, 23 * H), (system, 12 * H), (system, 6 * H))
    ):
        job_id = uuid.uuid4().hex
        await agent.send(
            p.JobStarted(
                job_id=job_id,
                seq=1,
                kind="backup",
                actor="schedule",
                started_at=now - ago,
                source_group_id=group.id,
                schedule_id=six_hourly.id if group is system else None,
            )
        )
        await agent.send(
            p.JobFinished(
                job_id=job_id,
                seq=2,
                finished_at=now - ago + 180,
                log_lines=0,
                status="succeeded",
                exit_code=0,
                summary={
                    "total_files_processed": 48210 + n * 40,
                    "data_added": (120 + n * 13) * MiB,
                },
            )
        )
    snaps = [
        _snapshot(n, now - hours * H, ["/etc", "/home", "/root"], "db-prod-1")
        for n, hours in enumerate(range(60, 0, -6))
    ]
    await agent.send(p.SnapshotsReport(collected_at=now - 120, snapshots=snaps))
    await _maintenance_runs(ui, agent, host_id, now)
    await _stats_history(agent, now)
    locked = uuid.uuid4().hex
    await _run(
        agent,
        locked,
        "backup",
        "schedule",
        now - 40 * 60,
        4.0,
        system.id,
        status="failed",
        exit_code=1,
        repo_status="locked",
        error="Fatal: unable to create lock in backend: repository is already locked "
        "exclusively by PID 4121 on db-prod-1 by root (UID 0, GID 0)",
    )
    host = await ui.hosts.get_host(host_id)
    await agent.send(p.ScheduleAck(version=host.schedule_version))
    deadline = time.monotonic() + 15
    while True:
        host = await ui.hosts.get_host(host_id)
        if host.repo_status == "locked" and host.schedule_acked_version == host.schedule_version:
            return host_id, agent
        if time.monotonic() > deadline:
            raise AssertionError("the agent's reports were not ingested")
        await asyncio.sleep(0.05)


async def _until_ready(ui: UiContext, host_id: int) -> None:
    deadline = time.monotonic() + 10
    while (await ui.hosts.get_host(host_id)).repo_status != "ready":
        if time.monotonic() > deadline:
            raise AssertionError("the probe result was not recorded")
        await asyncio.sleep(0.02)


async def _pause(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)  # the qasync loop runs Qt's events meanwhile


async def render(path_dir: str | Path, ui: UiContext) -> list[Path]:
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    now = time.time()
    shots: list[Path] = []
    try:
        async with aiohttp.ClientSession() as session:
            host_id, agent = await _populate(ui, session, now)
            view = HostView(ui, _Navigator(), host_id)
            view.resize(1240, 800)
            view.show()
            await _settle(view)
            sources = view.sources_tab
            await _until(lambda: len(sources.groups) == 3, "the groups")

            view.tabs.setCurrentWidget(sources)
            sources.select_group(sources.groups[1].id)
            await _pause()
            shots.append(_save(view, out / "host-sources-groups.png"))

            postgres = next(g for g in sources.groups if g.name == "postgres")
            sources.edit_group(postgres)
            dialog = sources.dialog
            assert dialog is not None
            dialog.includes.setPlainText(  # type: ignore[attr-defined]
                "/var/lib/postgresql/dumps\nvar/lib/postgresql/wal-archive"
            )
            dialog.save()
            await _until(lambda: not dialog.saving, "the refused save")
            await _until(lambda: not dialog.preview.pending, "the conflict check")  # type: ignore[attr-defined]
            await _pause()
            shots.append(_save(dialog, out / "host-source-group-dialog.png"))
            dialog.reject()

            sources.back_up_limited(sources.groups[0])
            bandwidth = sources.dialog
            assert bandwidth is not None
            bandwidth.upload.setValue(2048)  # type: ignore[attr-defined]
            await _pause(0.1)
            shots.append(_save(bandwidth, out / "host-backup-bandwidth.png"))
            bandwidth.reject()

            schedules = view.schedules_tab
            view.tabs.setCurrentWidget(schedules)
            await _until(lambda: len(schedules.schedules) == 3, "the schedules")
            await _pause()
            shots.append(_save(view, out / "host-schedules.png"))

            schedules.add_schedule()
            add = schedules.dialog
            assert add is not None
            add.cron.setText("0 22 * * 1-5")
            add.set_checked_groups([postgres.id])
            await _pause(0.1)
            await _until(lambda: not add.conflict_preview.pending, "the conflict check")
            await _pause(0.1)
            shots.append(_save(add, out / "host-schedule-dialog.png"))
            add.reject()

            repo = view.repo_tab
            view.resize(1240, 1000)  # tall enough for the bandwidth caps too
            view.tabs.setCurrentWidget(repo)
            await _until(lambda: repo.lock_banner.isVisible(), "the lock banner")
            await _until(lambda: len(repo.chart.points) > 100, "the history")
            repo.chart.set_days(365)
            await _pause()
            shots.append(_save(view, out / "host-repo.png"))
            light = app.palette()
            app.setPalette(dark_palette())
            try:
                repo.chart.set_days(90)
                await _pause()
                shots.append(_save(view, out / "host-repo-dark.png"))
            finally:
                app.setPalette(light)

            view.resize(1240, 800)
            view.tabs.setCurrentWidget(view.danger_tab)
            view.danger_tab.reinit_confirm.setText("db-prod-1")
            await _pause(0.1)
            shots.append(_save(view, out / "host-danger-reinit.png"))
            view.close()
            view.deleteLater()
            await agent.ws.close()
            await _pause(0.3)
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)
    return shots
