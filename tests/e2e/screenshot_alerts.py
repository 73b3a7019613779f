"""Screenshots of the Alerts view, its navigation count, the presence mode and a
tray notification, with alerts made by a real control plane.

Entry points:

* ``async def render(path_dir, ui, cp=None)`` — ``ui`` is a ``UiContext`` on a
  *running* control plane (on a qasync loop). Hosts come through the real
  enrolment service and protocol-speaking fake agents; a failing backup
  reported by an agent raises its alert through the real alert engine; other
  alerts are raised, acknowledged and resolved through the real
  AlertService. With ``cp`` (the ``ControlPlane``) the older alerts are made
  by an AlertService on the same store whose clock is set back, so first /
  last seen read "2 d ago" rather than all "just now".
* ``render_standalone(path_dir)`` — a temporary control plane around
  ``render``. ``python -m tests.e2e.screenshot_alerts [DIR]`` runs it; under
  ``xvfb-run -a`` it starts ``trayer`` (if installed) so a real system tray
  shows the notification balloon, grabbed from the screen. Without a tray
  the notification is only requested (and listed in the output).

Files: alerts-empty.png, alerts-open.png, alerts-open-dark.png,
alerts-acknowledged.png, alerts-resolved.png, alerts-main-window.png,
alerts-host-asleep.png, alerts-fleet-asleep.png, and with a real tray
alerts-tray-notification.png (a close-up of the tray icon and the balloon),
alerts-tray-notification-screen.png (the whole screen) and alerts-tray-menu.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.palettes import dark_palette

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import aiohttp
from PySide6.QtCore import QItemSelectionModel, QPoint, QRect
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from agent import protocol as p
from server_core import alert_rules
from server_core.control_plane import ControlPlane
from server_core.services.alerts import AlertService
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.embedded_ui import run_with_embedded_ui
from tests.helpers.fake_agent import FakeAgent, enrol, pinned
from ui_qt.alerts_model import ACKNOWLEDGED, OPEN, RESOLVED
from ui_qt.alerts_view import AlertsView
from ui_qt.context import UiContext
from ui_qt.host_view import HostView
from ui_qt.main_window import MainWindow
from ui_qt.tray import Tray

H = 3600.0
D = 86400.0


class _Navigator:
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...

    def show_alerts(self, alert_id: int | None = None) -> None: ...

    def show_audit(self) -> None: ...

    def show_settings(self) -> None: ...


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _agent(
    ui: UiContext, session: aiohttp.ClientSession, name: str, os_name: str = "linux"
) -> tuple[int, FakeAgent]:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": f"sftp:backup@nas:/srv/restic/{name}", "password": "x" * 16},
            "initial_paths": ["/etc", "/home"],
        }
    )
    grant = await ui.enrolment.add_host(new, OPERATOR)
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
            os=os_name,
            arch="amd64",
            restic_version="0.18.0",
        )
    )
    return grant.host_id, agent


async def _failed_backup(agent: FakeAgent, job_id: str, error: str) -> None:
    """A backup as the agent reports it: started, then failed."""
    ids = {
        await agent.send(
            p.JobStarted(
                job_id=job_id, seq=1, kind="backup", actor="schedule", started_at=time.time() - 40
            )
        ),
        await agent.send(
            p.JobFinished(
                job_id=job_id,
                seq=2,
                status="failed",
                finished_at=time.time(),
                exit_code=1,
                error=error,
            )
        ),
    }
    await agent.acked(ids)


def _aged(cp: ControlPlane | None, ui: UiContext, at: list[float]) -> AlertService:
    """The real AlertService on the same store, with its clock at ``at[0]``."""
    if cp is None:
        return ui.alerts
    return AlertService(cp.ctx, clock=lambda: at[0])


def _save(widget: QWidget, path: Path) -> Path:
    QApplication.processEvents()
    widget.grab().save(str(path))
    return path


def _select(view: AlertsView, status: str, rows: list[int]) -> None:
    tab = view.tab[status]
    view.tabs.setCurrentWidget(tab)
    selection = tab.table.selectionModel()
    selection.clearSelection()
    for row in rows:
        selection.select(
            tab.proxy.index(row, 0),
            QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
        )


async def _populate(
    ui: UiContext, cp: ControlPlane | None, session: aiohttp.ClientSession, agents: list[FakeAgent]
) -> dict[str, int]:
    now = time.time()
    ids: dict[str, int] = {}
    for name, os_name in (
        ("db-prod-1", "linux"),
        ("web-1", "linux"),
        ("nas", "linux"),
        ("build-runner", "linux"),
        ("laptop-anna", "windows"),
    ):
        ids[name], agent = await _agent(ui, session, name, os_name)
        agents.append(agent)
    await ui.hosts.set_presence_mode(ids["laptop-anna"], "laptop", OPERATOR)
    # nas and the laptop go quiet: the laptop is asleep, nas is offline.
    for name in ("nas", "laptop-anna"):
        await agents[list(ids).index(name)].ws.close()

    clock = [now]
    aged = _aged(cp, ui, clock)

    async def fire(at: float, kind: str, host: str, message: str, suffix: Any = None) -> int:
        clock[0] = at
        return (await aged.fire(kind, ids[host], message, key_suffix=suffix)).id

    # Resolved history.
    prune = await fire(
        now - 6 * D,
        "prune_failed",
        "web-1",
        alert_rules.job_failed_message(
            "prune", "web-1", error="Fatal: repository is already locked by PID 4121 on web-1"
        ),
    )
    update = await fire(
        now - 4 * D,
        "update_failed",
        "nas",
        "Agent update to 0.3.1 on nas failed: the new binary did not start (exit code 127)",
    )
    clock[0] = now - 5 * D
    await aged.resolve([prune], OPERATOR)
    clock[0] = now - 4 * D + 900
    await aged.clear("update_failed", ids["nas"], reason="the agent reported 0.3.1")
    del update

    # Acknowledged: a check that keeps failing (re-fired three times).
    check = 0
    for n, at in enumerate((now - 2 * D, now - 1 * D, now - 11 * H, now - 5 * H)):
        check = await fire(
            at,
            "check_failed",
            "web-1",
            alert_rules.job_failed_message(
                "check",
                "web-1",
                error=f"Fatal: pack 3f2a9c{n} contains 1 error: ciphertext verification failed",
            ),
        )
    await ui.alerts.acknowledge([check], OPERATOR)

    # Open.
    await fire(
        now - 1 * D,
        "stale_backup",
        "laptop-anna",
        alert_rules.stale_message(
            "laptop-anna",
            last_success_at=now - 8 * D,
            since=now - 8 * D,
            now=now - 1 * D,
            presence_mode="laptop",
            min_interval_s=D,
            horizon_s=7 * D,
        ),
    )
    await fire(
        now - 95 * 60,
        "agent_offline",
        "nas",
        alert_rules.offline_message("nas", now - 97 * 60, now - 97 * 60, now - 95 * 60),
    )
    await fire(
        now - 20 * 60,
        "repo_init_failed",
        "build-runner",
        alert_rules.repo_status_message(
            "build-runner", "Fatal: unable to open config file: Stat: ssh: handshake failed"
        ),
    )
    # The newest comes from the alert engine: an agent reports a failing backup (twice).
    db = agents[0]
    for n in range(2):
        await _failed_backup(
            db, f"{n + 1:032x}", "Fatal: wrong password or no key found\nexit status 12"
        )
    return ids


async def _settle_view(view: AlertsView, open_rows: int) -> None:
    await _until(lambda: view.model.loaded(), "the alerts to load")
    await _until(lambda: len(view.ids_in(OPEN)) >= open_rows, "the open alerts")
    await _until(lambda: not view.loader.busy, "the last read")
    await asyncio.sleep(0.15)
    QApplication.processEvents()


def _start_trayer() -> subprocess.Popen[bytes] | None:
    """A system tray on a bare X server (Xvfb), so the tray icon can show balloons."""
    if QSystemTrayIcon.isSystemTrayAvailable() or not os.environ.get("DISPLAY"):
        return None
    trayer = shutil.which("trayer")
    if trayer is None:
        return None
    return subprocess.Popen(
        [trayer, "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "28"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _tray_shots(ui: UiContext, window: MainWindow, out: Path, db_id: int) -> list[Path]:
    shots: list[Path] = []
    trayer = _start_trayer()
    try:
        if trayer is not None:
            deadline = time.monotonic() + 5
            while not QSystemTrayIcon.isSystemTrayAvailable() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        tray = Tray(ui, window, fleet=window.fleet.model)
        tray.start()
        await _until(lambda: tray.alert_counts is not None, "the tray's count")
        await asyncio.sleep(0.5)  # the icon embeds in the tray
        before = len(tray.notifications)
        await ui.alerts.fire(
            "backup_failed",
            db_id,
            alert_rules.job_failed_message(
                "backup",
                "db-prod-1",
                group_name="postgres",
                error="Fatal: unable to save snapshot: sftp: no space left on device",
            ),
            key_suffix="postgres",
        )
        await _until(lambda: len(tray.notifications) > before, "the tray notification")
        note = tray.notifications[-1]
        print(f"tray notification requested: {note.title} — {note.message}")
        if tray.available and tray.icon.isVisible():
            await asyncio.sleep(1.0)  # the balloon fades in
            screen = QGuiApplication.primaryScreen()
            full = screen.grabWindow(0)
            path = out / "alerts-tray-notification-screen.png"
            full.save(str(path))
            shots.append(path)
            # The tray sits top right (trayer --edge top --align right): a close-up.
            width = full.width() / full.devicePixelRatio()
            close_up = full.copy(QRect(int(width) - 900, 0, 900, 140))
            path = out / "alerts-tray-notification.png"
            close_up.save(str(path))
            shots.append(path)
            tray.menu.popup(QPoint(screen.geometry().width() - 300, 32))
            await asyncio.sleep(0.3)
            shots.append(_save(tray.menu, out / "alerts-tray-menu.png"))
            tray.menu.hide()
        else:
            print("no system tray: the notification was requested, not shown")
        tray.stop()
        tray.menu.deleteLater()
        tray.deleteLater()
    finally:
        if trayer is not None:
            trayer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                trayer.wait(5)
    return shots


async def render(path_dir: str | Path, ui: UiContext, cp: ControlPlane | None = None) -> list[Path]:
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    shots: list[Path] = []
    agents: list[FakeAgent] = []
    try:
        async with aiohttp.ClientSession() as session:
            view = AlertsView(ui, _Navigator())
            view.resize(1320, 520)
            view.show()
            await _until(lambda: view.model.loaded(), "the first load")
            await asyncio.sleep(0.1)
            shots.append(_save(view, out / "alerts-empty.png"))

            ids = await _populate(ui, cp, session, agents)
            await _settle_view(view, 4)
            _select(view, OPEN, [0, 1])
            shots.append(_save(view, out / "alerts-open.png"))
            light = app.palette()
            app.setPalette(dark_palette())
            try:
                await asyncio.sleep(0.05)
                shots.append(_save(view, out / "alerts-open-dark.png"))
            finally:
                app.setPalette(light)
            _select(view, ACKNOWLEDGED, [0])
            shots.append(_save(view, out / "alerts-acknowledged.png"))
            _select(view, RESOLVED, [])
            shots.append(_save(view, out / "alerts-resolved.png"))
            view.close()
            view.deleteLater()

            window = MainWindow(ui)
            window.close_to_tray = False
            window.resize(1400, 640)
            window.show()
            window.show_alerts()
            await _settle_view(window.alerts, 4)
            await _until(lambda: window.alert_counts is not None, "the navigation count")
            await asyncio.sleep(0.2)
            shots.append(_save(window, out / "alerts-main-window.png"))
            window.show_fleet()
            await _until(lambda: window.fleet.model.loaded(), "the fleet")
            await asyncio.sleep(0.3)
            shots.append(_save(window, out / "alerts-fleet-asleep.png"))

            laptop = HostView(ui, _Navigator(), ids["laptop-anna"])
            laptop.resize(1180, 330)
            laptop.show()
            await _until(lambda: "asleep" in laptop.status.text(), "the laptop to sleep")
            await asyncio.sleep(0.2)
            shots.append(_save(laptop, out / "alerts-host-asleep.png"))
            laptop.close()
            laptop.deleteLater()

            shots += await _tray_shots(ui, window, out, ids["db-prod-1"])
            window._quitting = True
            window.close()
            window.deleteLater()
            for agent in agents:
                await agent.ws.close()
            await ui.runner.drain()
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)
    return shots


def render_standalone(path_dir: str | Path) -> list[Path]:
    return run_with_embedded_ui(lambda env: render(Path(path_dir), env.ui, env.cp))


if __name__ == "__main__":
    for path in render_standalone(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
