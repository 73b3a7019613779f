"""Screenshots of the host view, with realistic data from a real control plane.

Entry points:

* ``async def render(path_dir, ui)`` — the primary one. ``ui`` is a
  ``UiContext`` wired to a *running* control plane (the e2e ``ui`` fixture,
  or the app's own); it must run on a qasync loop. It adds two hosts
  through the real services, brings them to life with protocol-speaking fake
  agents (found through ``ui.server_info()``), opens ``HostView`` on them and
  saves ``widget.grab()`` PNGs into ``path_dir``. Returns the files written.
* ``render_standalone(path_dir)`` — synchronous: starts a temporary control
  plane on a qasync loop and calls ``render``. ``python -m
  tests.e2e.screenshot_host_view [DIR]`` runs it (use ``xvfb-run -a`` for a
  real X server; it falls back to offscreen).

Files: host-header-snapshots.png, host-header-snapshots-dark.png,
host-sources.png, host-jobs.png, host-credentials.png,
host-credentials-edit.png, host-danger.png, host-init-failed.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.helpers.palettes import dark_palette

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import aiohttp
from PySide6.QtWidgets import QApplication, QWidget

from agent import protocol as p
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.embedded_ui import run_with_embedded_ui
from tests.helpers.fake_agent import FakeAgent, enrol, pinned
from ui_qt.context import UiContext
from ui_qt.host_view import HostView

MiB = 1024**2
GiB = 1024**3
H = 3600.0


class _Navigator:
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _agent(
    ui: UiContext, session: aiohttp.ClientSession, name: str, **host: Any
) -> tuple[int, FakeAgent]:
    grant = await ui.enrolment.add_host(parse_new_host({"hostname": name, **host}), OPERATOR)
    info = ui.server_info()
    body = await enrol(session, info.agent_url, info.cert_sha256, grant.token, name)
    ws = await session.ws_connect(
        info.agent_url + p.WS_PATH,
        headers={"Authorization": f"Bearer {body['bearer']}"},
        ssl=pinned(info.cert_sha256),
    )
    agent = FakeAgent(ws)
    await agent.send(
        p.Hello(
            protocol_version=p.PROTOCOL_VERSION,
            agent_version="0.3.1",
            hostname=name,
            os="linux",
            arch="amd64",
            restic_version="0.18.0",
        )
    )
    return grant.host_id, agent


async def _run(
    agent: FakeAgent,
    job_id: str,
    kind: str,
    actor: str,
    started: float,
    seconds: float | None,
    group_id: int | None = None,
    **finished: Any,
) -> None:
    """Report a job as the agent would: started, then finished (unless seconds is None)."""
    await agent.send(
        p.JobStarted(
            job_id=job_id,
            seq=1,
            kind=kind,  # type: ignore[arg-type]
            actor=actor,  # type: ignore[arg-type]
            started_at=started,
            source_group_id=group_id,
        )
    )
    if seconds is not None:
        await agent.send(
            p.JobFinished(
                job_id=job_id, seq=3, finished_at=started + seconds, log_lines=0, **finished
            )
        )


def _snapshot(n: int, at: float, paths: list[str], host: str) -> p.SnapshotInfo:
    full = hashlib.sha256(f"{host}/{n}".encode()).hexdigest()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at))
    offset = time.strftime("%z", time.localtime(at))
    return p.SnapshotInfo(
        id=full,
        short_id=full[:8],
        time=f"{stamp}.{n * 7919 % 10**9:09d}{offset[:3]}:{offset[3:]}",
        hostname=host,
        paths=paths,
        tags=["default"],
    )


async def _populate_db(
    ui: UiContext, session: aiohttp.ClientSession, now: float, keep: list[FakeAgent]
) -> int:
    paths = ["/etc", "/var/lib/postgresql", "/home"]
    host_id, agent = await _agent(
        ui,
        session,
        "db-prod-1",
        repository={
            "url": "rest:https://restic:Append0nly!@backup.example.net:8000/db-prod-1",
            "password": "correct horse battery staple",
        },
        admin_repository={
            "url": "rest:https://backup.example.net:8001/db-prod-1",
            "password": "correct horse battery staple",
            "username": "restic-admin",
            "backend_password": "pr4ne-only",
            "env": {"RESTIC_PACK_SIZE": "64", "RESTIC_COMPRESSION": "max"},
        },
        initial_paths=paths,
        tags=["prod", "postgres", "site:fra-1"],
    )
    keep.append(agent)  # an unreferenced client socket is closed when collected
    probe = await agent.expect(p.CommandRun)
    await _run(
        agent, probe.job_id, "init", "system", now - 50 * H, 3.2, status="succeeded",
        exit_code=0, repo_status="ready",
    )  # fmt: skip
    (group,) = await ui.hosts.list_source_groups(host_id)

    snaps = []
    # Scheduled backups every 6 h for two days: one failed, one with warnings.
    for n, hours_ago in enumerate(range(48, 0, -6)):
        started = now - hours_ago * H - 1380
        job_id = uuid.uuid4().hex
        if hours_ago == 30:
            await _run(
                agent, job_id, "backup", "schedule", started, 4.0, group.id, status="failed",
                exit_code=1,
                error="Fatal: unable to create lock in backend: repository is already locked "
                "exclusively by PID 4121 on db-prod-1 by postgres (UID 998, GID 998)",
            )  # fmt: skip
            continue
        warnings = hours_ago == 18
        snap = _snapshot(n + 1, started + 200, paths, "db-prod-1")
        snaps.append(snap)
        await _run(
            agent, job_id, "backup", "schedule", started, 190 + n * 13, group.id,
            status="succeeded", exit_code=3 if warnings else 0, warnings=warnings,
            summary={
                "files_new": 12 + n * 3, "files_changed": 240 + n * 11,
                "files_unmodified": 48210, "data_added": (310 + n * 37) * MiB,
                "total_files_processed": 48462, "total_bytes_processed": 41 * GiB,
                "snapshot_id": snap.id,
            },
        )  # fmt: skip
    await agent.send(p.SnapshotsReport(collected_at=now - 60, snapshots=snaps))
    await agent.send(
        p.RepoStatsReport(collected_at=now - 60, total_size=int(38.6 * GiB), snapshot_count=7)
    )
    # A backup the operator started a few minutes ago, still running.
    job_id = await ui.jobs.dispatch(host_id, "backup", actor=OPERATOR, source_group_id=group.id)
    await agent.expect(p.CommandRun)
    await _run(agent, job_id, "backup", "operator", now - 174, None, group.id)
    await agent.send(
        p.JobProgress(
            job_id=job_id,
            seq=2,
            progress=p.Progress(
                percent=63.4,
                files_done=30712,
                files_total=48470,
                bytes_done=int(26.1 * GiB),
                bytes_total=int(41.2 * GiB),
                current_file="/var/lib/postgresql/15/main/base/16384/2619",
                eta_seconds=101,
            ),
        )
    )
    deadline = time.monotonic() + 10
    while True:  # everything the agent sent is ingested before the shots
        jobs = await ui.jobs.list_jobs(host_id)
        host = await ui.hosts.get_host(host_id)
        if host.snapshot_count == len(snaps) and any(j.progress for j in jobs):
            return host_id
        if time.monotonic() > deadline:
            raise AssertionError("the agent's reports were not ingested")
        await asyncio.sleep(0.05)


async def _populate_laptop(ui: UiContext, session: aiohttp.ClientSession, now: float) -> int:
    host_id, agent = await _agent(
        ui,
        session,
        "laptop-anna",
        repository={"url": "sftp:backup@nas.lan:/srv/restic/laptop-anna", "password": "s3cret-pw"},
        initial_paths=["/home/anna"],
        tags=["laptop"],
    )
    probe = await agent.expect(p.CommandRun)
    await _run(
        agent, probe.job_id, "init", "system", now - 2 * H, 6.0, status="failed", exit_code=1,
        error="Fatal: create repository at sftp:backup@nas.lan:/srv/restic/laptop-anna failed: "
        "sftp: \"Permission denied\" (SSH_FX_PERMISSION_DENIED)",
        repo_status="init_failed",
    )  # fmt: skip
    await _until_acked(ui, host_id)
    await agent.ws.close()  # the laptop went to sleep
    return host_id


async def _until_acked(ui: UiContext, host_id: int) -> None:
    deadline = time.monotonic() + 10
    while (await ui.hosts.get_host(host_id)).repo_status == "unknown":
        if time.monotonic() > deadline:
            raise AssertionError("the probe result was not recorded")
        await asyncio.sleep(0.02)


async def _settle(view: HostView) -> None:
    await asyncio.sleep(0.3)  # the bridge coalesces for 100 ms, then the tabs fetch
    await _until(
        lambda: (
            not any(
                t.loader.busy  # type: ignore[attr-defined]
                for t in view.all_tabs
                if hasattr(t, "loader")
            )
            and not view.loader.busy
        ),
        "the host view to load",
    )
    await asyncio.sleep(0.1)
    QApplication.processEvents()


def _save(widget: QWidget, path: Path) -> Path:
    QApplication.processEvents()
    widget.grab().save(str(path))
    return path


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
            agents: list[FakeAgent] = []
            db_id = await _populate_db(ui, session, now, agents)
            laptop_id = await _populate_laptop(ui, session, now)

            view = HostView(ui, _Navigator(), db_id)
            view.resize(1180, 760)
            view.show()
            await _settle(view)
            view.tabs.setCurrentWidget(view.snapshots_tab)
            shots.append(_save(view, out / "host-header-snapshots.png"))

            light = app.palette()
            app.setPalette(dark_palette())
            try:
                await asyncio.sleep(0.05)
                shots.append(_save(view, out / "host-header-snapshots-dark.png"))
            finally:
                app.setPalette(light)

            view.tabs.setCurrentWidget(view.sources_tab)
            shots.append(_save(view, out / "host-sources.png"))
            view.tabs.setCurrentWidget(view.jobs_tab)
            view.jobs_tab.table.selectRow(2)
            shots.append(_save(view, out / "host-jobs.png"))

            view.tabs.setCurrentWidget(view.credentials_tab)
            shots.append(_save(view, out / "host-credentials.png"))
            everyday = view.credentials_tab.slots["everyday"]
            everyday.start_edit()
            everyday.form.url.setText(
                "rest:https://restic:Append0nly!@backup.example.net:8000/db-prod-2"
            )
            everyday.form.password.setText("abc")
            everyday.save()
            await _until(lambda: not everyday.saving, "the refused save")
            shots.append(_save(view, out / "host-credentials-edit.png"))
            everyday.cancel_edit()

            view.tabs.setCurrentWidget(view.danger_tab)
            view.danger_tab.confirm.setText("db-prod-1")
            shots.append(_save(view, out / "host-danger.png"))
            view.close()
            view.deleteLater()

            laptop = HostView(ui, _Navigator(), laptop_id)
            laptop.resize(1180, 520)
            laptop.show()
            await _settle(laptop)
            await _until(lambda: "offline" in laptop.status.text(), "the laptop to be offline")
            laptop.retry_repo_probe()  # refused while offline: the reason is shown inline
            await _until(lambda: laptop.retry_probe.isEnabled(), "the refused probe")
            laptop.tabs.setCurrentWidget(laptop.jobs_tab)
            shots.append(_save(laptop, out / "host-init-failed.png"))
            laptop.close()
            laptop.deleteLater()
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)
    return shots


def render_standalone(path_dir: str | Path) -> list[Path]:
    return run_with_embedded_ui(lambda env: render(Path(path_dir), env.ui))


if __name__ == "__main__":
    for path in render_standalone(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
