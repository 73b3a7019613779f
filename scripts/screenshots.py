"""Screenshots of every main view, for a person to look at (`make screenshots`).

Run under a real X server (`xvfb-run -a .venv/bin/python scripts/screenshots.py
[DIR]`); without $DISPLAY it falls back to offscreen rendering.

1. The main window, as the app shows it: a real embedded control plane in a
   temporary data dir, hosts created through the services, and
   protocol-speaking fake agents bringing them to life — online with good
   backups, a failing backup, a running job, an init failure, an offline
   host and one awaiting its agent. Also the tray menu and the tray icons.
2. Every ``tests/e2e/screenshot_*.py`` module's renderer (``render_standalone``
   or ``render``, given the output dir); a module that is missing or has no
   renderer is skipped with a note.

Writes PNG files into DIR (default ``screenshots/``) and lists them.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib
import inspect
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
else:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import aiohttp  # noqa: E402
import keyring.backends.fail  # noqa: E402
import qasync  # noqa: E402
from PySide6.QtCore import QPoint, QSettings, QSize  # noqa: E402
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel, QWidget  # noqa: E402

from agent import protocol as p  # noqa: E402
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint  # noqa: E402
from server_core.services.context import OPERATOR  # noqa: E402
from server_core.services.enrolment import parse_new_host  # noqa: E402
from tests.helpers.fake_agent import FakeAgent, enrol, pinned  # noqa: E402
from ui_qt.bridge import EventBridge  # noqa: E402
from ui_qt.context import UiContext  # noqa: E402
from ui_qt.tasks import AsyncRunner  # noqa: E402

GiB = 1024**3
MiB = 1024**2
H = 3600.0
ICONS = ROOT / "resources" / "icons"


# -- a realistic fleet on a real control plane --------------------------------------


async def _until(predicate: Callable[[], Any], what: str, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Fleet:
    def __init__(self, cp: ControlPlane, session: aiohttp.ClientSession) -> None:
        self.cp = cp
        self.session = session
        self.agents: list[FakeAgent] = []  # an unreferenced socket is closed when collected
        self.now = time.time()

    async def host(self, name: str, *, tags: list[str], paths: list[str], url: str) -> int:
        grant = await self.cp.enrolment.add_host(
            parse_new_host(
                {
                    "hostname": name,
                    "repository": {"url": url, "password": "correct horse battery"},
                    "initial_paths": paths,
                    "tags": tags,
                }
            ),
            OPERATOR,
        )
        return grant.host_id

    async def connect(self, name: str, token: str, *, restic: str = "0.18.0") -> FakeAgent:
        cp = self.cp
        # The advertised name is for show; the agents here reach it on loopback.
        url = f"https://127.0.0.1:{cp.agent_port}"
        body = await enrol(self.session, url, cp.certificate.sha256, token, name)
        ws = await self.session.ws_connect(
            url + p.WS_PATH,
            headers={"Authorization": f"Bearer {body['bearer']}"},
            ssl=pinned(cp.certificate.sha256),
        )
        agent = FakeAgent(ws)
        self.agents.append(agent)
        await agent.send(
            p.Hello(
                protocol_version=p.PROTOCOL_VERSION,
                agent_version="0.3.1",
                hostname=name,
                os="linux",
                arch="amd64" if not name.startswith("pi") else "arm64",
                restic_version=restic,
            )
        )
        return agent

    async def enrolled(
        self,
        name: str,
        *,
        tags: list[str],
        paths: list[str],
        url: str,
        init_error: str | None = None,
        restic: str = "0.18.0",
    ) -> tuple[int, FakeAgent, int | None]:
        grant = await self.cp.enrolment.add_host(
            parse_new_host(
                {
                    "hostname": name,
                    "repository": {"url": url, "password": "correct horse battery"},
                    "initial_paths": paths,
                    "tags": tags,
                }
            ),
            OPERATOR,
        )
        agent = await self.connect(name, grant.token, restic=restic)
        probe = await agent.expect(p.CommandRun)
        if init_error:
            await self.run(
                agent, probe.job_id, "init", "system", self.now - 2 * H, 4.0,
                status="failed", exit_code=1, error=init_error, repo_status="init_failed",
            )  # fmt: skip
        else:
            await self.run(
                agent, probe.job_id, "init", "system", self.now - 50 * H, 3.0,
                status="succeeded", exit_code=0, repo_status="ready",
            )  # fmt: skip
        groups = await self.cp.hosts.list_source_groups(grant.host_id)
        return grant.host_id, agent, groups[0].id if groups else None

    async def run(
        self,
        agent: FakeAgent,
        job_id: str,
        kind: str,
        actor: str,
        started: float,
        seconds: float | None,
        group_id: int | None = None,
        **finished: Any,
    ) -> None:
        ids = {
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
        }
        if seconds is not None:
            ids.add(
                await agent.send(
                    p.JobFinished(
                        job_id=job_id,
                        seq=2,
                        finished_at=started + seconds,
                        log_lines=0,
                        **finished,
                    )
                )
            )
        await agent.acked(ids, timeout=15)

    async def backups(
        self,
        name: str,
        agent: FakeAgent,
        group_id: int | None,
        paths: list[str],
        *,
        hours: list[float],
        size: int,
        fail_last: str | None = None,
    ) -> None:
        snaps = []
        for n, hours_ago in enumerate(hours):
            started = self.now - hours_ago * H
            last = n == len(hours) - 1
            if last and fail_last:
                await self.run(
                    agent, uuid.uuid4().hex, "backup", "schedule", started, 9.0, group_id,
                    status="failed", exit_code=1, error=fail_last,
                    repo_status="locked" if "already locked" in fail_last else None,
                )  # fmt: skip
                continue
            full = hashlib.sha256(f"{name}/{n}".encode()).hexdigest()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started + 120))
            snaps.append(
                p.SnapshotInfo(
                    id=full,
                    short_id=full[:8],
                    time=stamp[:-2] + ":" + stamp[-2:],
                    hostname=name,
                    paths=paths,
                    tags=["default"],
                )
            )
            await self.run(
                agent, uuid.uuid4().hex, "backup", "schedule", started, 120 + n * 7, group_id,
                status="succeeded", exit_code=0,
                summary={
                    "files_new": 14 + n, "files_changed": 120 + n * 3,
                    "files_unmodified": 20310, "data_added": (80 + n * 9) * MiB,
                    "total_files_processed": 20444, "total_bytes_processed": size,
                    "snapshot_id": full,
                },
            )  # fmt: skip
        ids = {await agent.send(p.SnapshotsReport(collected_at=self.now - 60, snapshots=snaps))}
        # A month of daily sizes (the fleet's sparkline), growing towards today's.
        seed = sum(map(ord, name))
        for day in range(29, 0, -1):
            if (day + seed) % 9 == 0:
                continue  # a day without a sample
            wobble = 1 + 0.002 * ((day * seed) % 5 - 2)
            past = int(size * (1 - (0.04 + seed % 7 / 50) * day / 29) * wobble)
            ids.add(await agent.send(
                p.RepoStatsReport(collected_at=self.now - day * 86400.0, total_size=past)
            ))  # fmt: skip
        ids.add(
            await agent.send(
                p.RepoStatsReport(
                    collected_at=self.now - 60, total_size=size, snapshot_count=len(snaps)
                )
            )
        )
        await agent.acked(ids, timeout=15)

    async def schedule(self, host_id: int, group_id: int | None, cron: str) -> None:
        """A schedule for the fleet's "Next run" column."""
        if group_id is not None:
            body = {"cron": cron, "enabled": True, "source_group_ids": [group_id]}
            await self.cp.schedules.create_schedule(host_id, body, OPERATOR)


async def build_fleet(cp: ControlPlane, session: aiohttp.ClientSession) -> Fleet:
    fleet = Fleet(cp, session)
    now = fleet.now

    paths = ["/etc", "/var/www", "/home"]
    web_id, web, group = await fleet.enrolled(
        "web-01", tags=["prod", "web"], paths=paths, url="rest:https://backup.lan:8000/web-01"
    )
    await fleet.backups("web-01", web, group, paths, hours=[50, 26, 2], size=int(12.4 * GiB))
    await fleet.schedule(web_id, group, "0 */6 * * *")

    paths = ["/etc", "/var/lib/postgresql"]
    db_id, db, group = await fleet.enrolled(
        "db-prod-1",
        tags=["prod", "postgres"],
        paths=paths,
        url="s3:s3.eu-central-1.amazonaws.com/acme-backups/db-prod-1",
    )
    await fleet.backups(
        "db-prod-1", db, group, paths, hours=[49, 25, 1.2], size=int(38.6 * GiB),
        fail_last="Fatal: unable to create lock in backend: repository is already locked "
        "exclusively by PID 4121 on db-prod-1",
    )  # fmt: skip
    await fleet.schedule(db_id, group, "30 1 * * *")

    paths = ["/srv/files"]
    files_id, files, group = await fleet.enrolled(
        "files-01", tags=["prod", "nas"], paths=paths, url="sftp:backup@nas.lan:/srv/restic/files"
    )
    await fleet.backups("files-01", files, group, paths, hours=[30, 6], size=int(311 * GiB))
    await fleet.schedule(files_id, group, "0 2 * * *")
    running = await cp.jobs.dispatch(files_id, "backup", actor=OPERATOR, source_group_id=group)
    await files.expect(p.CommandRun)
    await fleet.run(files, running, "backup", "operator", now - 174, None, group)
    await files.acked(
        {
            await files.send(
                p.JobProgress(
                    job_id=running,
                    seq=2,
                    progress=p.Progress(
                        percent=63.4,
                        files_done=30712,
                        files_total=48470,
                        bytes_done=int(26.1 * GiB),
                        bytes_total=int(41.2 * GiB),
                        current_file="/srv/files/projects/2024/render-final.mov",
                        eta_seconds=101,
                    ),
                )
            )
        }
    )

    await fleet.enrolled(
        "pi-garage",
        tags=["home"],
        paths=["/home/pi"],
        url="sftp:backup@nas.lan:/srv/restic/pi-garage",
        restic="0.14.0",
        init_error="Fatal: create repository at sftp:backup@nas.lan:/srv/restic/pi-garage "
        'failed: sftp: "Permission denied" (SSH_FX_PERMISSION_DENIED)',
    )

    paths = ["/etc", "/var/mail"]
    mail_id, mail, group = await fleet.enrolled(
        "mail-01", tags=["prod", "mail"], paths=paths, url="rest:https://backup.lan:8000/mail-01"
    )
    await fleet.backups("mail-01", mail, group, paths, hours=[28, 20], size=int(5.1 * GiB))
    await fleet.schedule(mail_id, group, "0 */4 * * *")
    await mail.ws.close()  # went offline

    await fleet.host(
        "build-02", tags=["ci"], paths=["/var/lib/jenkins"], url="/mnt/backup/restic/build-02"
    )  # awaiting its agent

    async def settled() -> bool:
        hosts = {h.name: h for h in await cp.hosts.list_hosts()}
        return (
            len(hosts) == 6
            and hosts["mail-01"].status == "offline"
            and hosts["db-prod-1"].last_backup_status == "failed"
            and hosts["pi-garage"].repo_status == "init_failed"
            and hosts["web-01"].snapshot_count == 3
        )

    deadline = time.monotonic() + 15
    while not await settled():
        if time.monotonic() > deadline:
            raise AssertionError("the fleet did not settle")
        await asyncio.sleep(0.1)
    assert mail_id
    return fleet


# -- shots -------------------------------------------------------------------------


async def _settle(seconds: float = 0.6) -> None:
    """Let the bridge (100 ms), the views' refreshes and painting catch up.

    Only sleeps: the qasync loop runs Qt's events meanwhile, and processEvents()
    from inside a coroutine would re-enter the asyncio loop ("Cannot enter into
    task … while another task is being executed")."""
    await asyncio.sleep(seconds)


def _save(widget: QWidget, path: Path) -> Path:
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    return path


def tray_icons(path: Path) -> Path:
    """The three tray states side by side, at tray size and larger."""
    sizes = (22, 32, 64)
    pad = 16
    width = pad + 3 * (sum(sizes) + pad * len(sizes))
    pix = QPixmap(width, 64 + 2 * pad)
    pix.fill(QColor("#f0f0f0"))
    painter = QPainter(pix)
    x = pad
    for level in ("ok", "warning", "critical"):
        icon = QIcon(str(ICONS / f"tray-{level}.svg"))
        for size in sizes:
            painter.drawPixmap(QPoint(x, pad + 64 - size), icon.pixmap(QSize(size, size)))
            x += size + pad
    painter.end()
    pix.save(str(path))
    return path


async def main_window_shots(out: Path) -> list[Path]:
    from app.gui import StartAtLogin
    from ui_qt.main_window import MainWindow
    from ui_qt.tray import Tray

    shots: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane(
            ControlPlaneConfig(
                data_dir=Path(tmp) / "data",
                agent_listen=Endpoint("127.0.0.1", 0),
                api_listen=Endpoint("127.0.0.1", 0),
                advertise_host="backup-ctl.lan",
                keyring_backend=keyring.backends.fail.Keyring(),
                # No bundled agent builds: a local dist/ must not change the pictures.
                agents_dir=Path(tmp) / "agents",
            )
        )
        await cp.start()
        bridge = EventBridge(cp.bus)
        runner = AsyncRunner()
        try:
            async with aiohttp.ClientSession() as session:
                fleet = await build_fleet(cp, session)
                ctx = UiContext.for_control_plane(
                    cp,
                    bridge=bridge,
                    runner=runner,
                    settings=QSettings(str(Path(tmp) / "ui.ini"), QSettings.Format.IniFormat),
                )
                window = MainWindow(ctx)
                tray = Tray(ctx, window)
                bar = window.statusBar()
                bar.addPermanentWidget(QLabel(f"Agents: {cp.agent_url} · API: {cp.api_url}"))
                # File ▸ Start at login, as the app adds it (not toggled here).
                login = StartAtLogin(cp.config, lambda *_: None, window)
                window.add_file_action(login.action)
                window.resize(1360, 800)
                window.show()
                tray.start()
                await _until(lambda: tray.refreshes >= 1, "the tray")
                await _settle(1.5)
                shots.append(_save(window, out / "main-window.png"))

                # The tray menu as it pops up, with the hosts needing attention.
                menu = tray.menu
                menu.popup(window.mapToGlobal(window.rect().center()))
                await _settle(0.3)
                sub = tray.attention_menu
                sub.popup(menu.mapToGlobal(menu.rect().topRight()))
                await _settle(0.3)
                shots.append(_save(menu, out / "tray-menu.png"))
                shots.append(_save(sub, out / "tray-menu-attention.png"))
                sub.hide()
                menu.hide()
                print(f"tray: {tray.health.level} — {tray.health.tooltip}")
                file_menu = window.file_menu
                file_menu.popup(window.mapToGlobal(QPoint(8, 28)))
                await _settle(0.3)
                shots.append(_save(file_menu, out / "file-menu.png"))
                file_menu.hide()
                shots.append(tray_icons(out / "tray-icons.png"))

                tray.stop()
                window.close_to_tray = True
                window.hide()
                await runner.drain()
                for agent in fleet.agents:
                    if not agent.ws.closed:
                        await agent.ws.close()
                window.deleteLater()
                tray.deleteLater()
                menu.deleteLater()
                await _settle(0.2)
        finally:
            bridge.close()
            await cp.stop()
    return shots


def run_async(coro_fn: Callable[[], Any]) -> Any:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        gc.collect()  # on this thread: see app.gui.MainThreadGc


async def _with_ui(fn: Callable[..., Any], out: Path) -> list[Path]:
    """For renderers that want ``(path_dir, ui)``: a fresh control plane and context."""
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane(
            ControlPlaneConfig(
                data_dir=Path(tmp) / "data",
                agent_listen=Endpoint("127.0.0.1", 0),
                api_listen=Endpoint("127.0.0.1", 0),
                keyring_backend=keyring.backends.fail.Keyring(),
                # No bundled agent builds: a local dist/ must not change the pictures.
                agents_dir=Path(tmp) / "agents",
            )
        )
        await cp.start()
        bridge = EventBridge(cp.bus)
        runner = AsyncRunner()
        try:
            ui = UiContext.for_control_plane(
                cp,
                bridge=bridge,
                runner=runner,
                settings=QSettings(str(Path(tmp) / "ui.ini"), QSettings.Format.IniFormat),
            )
            return list(await fn(out, ui))
        finally:
            await runner.drain()
            bridge.close()
            await cp.stop()


def view_shots(out: Path) -> tuple[list[Path], list[str]]:
    shots: list[Path] = []
    failures: list[str] = []
    for path in sorted((ROOT / "tests" / "e2e").glob("screenshot_*.py")):
        name = f"tests.e2e.{path.stem}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            print(f"note: skipping {path.name}: cannot import it ({exc})")
            continue
        fn = getattr(module, "render_standalone", None) or getattr(module, "render", None)
        if fn is None:
            print(f"note: skipping {path.name}: it has no render() function")
            continue
        try:
            if inspect.iscoroutinefunction(fn):
                params = len(inspect.signature(fn).parameters)
                if params >= 2:
                    got = run_async(lambda fn=fn: _with_ui(fn, out))
                else:
                    got = run_async(lambda fn=fn: fn(out))
            else:
                got = fn(out)
                gc.collect()
        except Exception:
            failures.append(path.name)
            print(f"error: {path.name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        shots += [Path(s) for s in (got or [])]
    return shots, failures


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ROOT / "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Collections happen here, on the main thread, between the steps.
    gc.disable()
    app = QApplication.instance() or QApplication(argv[:1])
    app.setApplicationName("restic-manager")
    app.setWindowIcon(QIcon(str(ICONS / "app.svg")))
    print(f"platform: {QApplication.platformName()}; writing to {out}")
    shots: list[Path] = []
    failures: list[str] = []
    try:
        shots += run_async(lambda: main_window_shots(out))
    except Exception:
        failures.append("main window")
        print(f"error: the main window failed:\n{traceback.format_exc()}", file=sys.stderr)
    more, failed = view_shots(out)
    shots += more
    failures += failed
    for shot in shots:
        print(shot)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
