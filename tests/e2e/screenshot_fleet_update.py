"""Screenshots of agent updates: the fleet table's chip, the fleet update dialog
(before, while updating, halted at a failure) and the host page's button.

A real embedded control plane with UpdateService; the hosts are
protocol-speaking fake agents that play the agent's side of an update.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python \\
        tests/e2e/screenshot_fleet_update.py /tmp/shots

Files: update-fleet.png, update-preview.png, update-running.png,
update-halted.png, update-host.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import aiohttp
import qasync
from PySide6.QtWidgets import QApplication

from agent import protocol as p
from server_core.agent_downloads import AgentDownloads
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.services.updates import UpdateService
from tests.helpers.embedded_ui import embedded_ui
from tests.helpers.fake_agent import FakeAgent, enrol
from tests.helpers.update_context import with_updates
from ui_qt.fleet_update_dialog import FleetUpdateDialog
from ui_qt.fleet_view import FleetView
from ui_qt.host_view import HostView

NEW = "0.2.0"
OLD = "0.1.0"


class _Navigator:
    def show_fleet(self) -> None: ...
    def open_host(self, host_id: int) -> None: ...
    def open_job(self, job_id: str) -> None: ...
    def add_host(self) -> None: ...


async def _until(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the screen did not reach the expected state")
        await asyncio.sleep(0.05)


async def _settle() -> None:
    for _ in range(5):
        QApplication.processEvents()
        await asyncio.sleep(0.05)


async def _main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    async with embedded_ui(prefix="rm-update-shots-") as env, aiohttp.ClientSession() as session:
        cp = env.cp
        agents_dir = env.workdir / "agents"
        agents_dir.mkdir()
        (agents_dir / "restic-manager-agent-linux-amd64").write_bytes(b"#!/bin/sh\n")
        (agents_dir / "restic-manager-agent-linux-amd64.json").write_text(
            json.dumps({"version": NEW})
        )
        updates = UpdateService(cp.ctx, cp.alerts, AgentDownloads(agents_dir, env.workdir))
        await updates.start()
        ui = with_updates(env.ui, updates)
        socks: dict[str, tuple[int, str, FakeAgent]] = {}

        async def connect(name: str, bearer: str, host_id: int, version: str) -> None:
            ws = await FakeAgent.connect(
                session, cp.agent_url, cp.certificate.sha256, bearer, hello=False
            )
            await ws.send(
                p.Hello(
                    protocol_version=p.PROTOCOL_VERSION,
                    agent_version=version,
                    hostname=name,
                    os="linux",
                    arch="amd64",
                )
            )
            socks[name] = (host_id, bearer, ws)
            await _until(lambda: cp.hub.is_connected(host_id))

        for name, version in (
            ("backup-nas-01", NEW),
            ("db-primary", OLD),
            ("mail-gw", OLD),
            ("web-frontend-1", OLD),
            ("web-frontend-2", OLD),
        ):
            new = parse_new_host(
                {
                    "hostname": name,
                    "repository": {"url": "/srv/restic/" + name, "password": "hunter2hunter2"},
                    "initial_paths": ["/etc"],
                }
            )
            grant = await cp.enrolment.add_host(new, OPERATOR)
            body = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, name)
            await connect(name, body["bearer"], body["host_id"], version)

        fleet = FleetView(ui, _Navigator())
        fleet.resize(1400, 520)
        fleet.show()
        await _until(lambda: fleet.update_button.text().startswith("Update agents (4)"))
        await _settle()
        paths.append(out / "update-fleet.png")
        fleet.grab().save(str(paths[-1]))

        fleet.open_fleet_update()
        dialog = fleet._update_dialog
        assert isinstance(dialog, FleetUpdateDialog)
        dialog.resize(860, 420)
        await _until(lambda: dialog.start_button.isEnabled())
        await _settle()
        paths.append(out / "update-preview.png")
        dialog.grab().save(str(paths[-1]))

        async def restart(name: str, version: str) -> None:
            host_id, bearer, ws = socks[name]
            await ws.ws.close()
            await _until(lambda: not cp.hub.is_connected(host_id))
            await connect(name, bearer, host_id, version)

        dialog.start_button.click()
        await socks["db-primary"][2].expect(p.CommandUpdate)
        await restart("db-primary", NEW)
        command = await socks["mail-gw"][2].expect(p.CommandUpdate)
        await socks["mail-gw"][2].send(
            p.JobProgress(
                job_id=command.job_id,
                seq=2,
                progress=p.Progress(percent=45.0, bytes_done=6_500_000, bytes_total=14_500_000),
            )
        )
        await _until(lambda: "45 %" in dialog.status.text())
        await _settle()
        paths.append(out / "update-running.png")
        dialog.grab().save(str(paths[-1]))

        await socks["mail-gw"][2].send(
            p.JobFinished(
                job_id=command.job_id,
                seq=3,
                status="failed",
                finished_at=time.time(),
                error=(
                    "cannot write next to the agent in /usr/local/bin: Read-only file system; "
                    "the service must be allowed to write there (systemd: ReadWritePaths= in "
                    "the unit)"
                ),
            )
        )
        await _until(lambda: "stopped" in dialog.status.text())
        await _settle()
        paths.append(out / "update-halted.png")
        dialog.grab().save(str(paths[-1]))
        dialog.close()

        host_id = socks["web-frontend-1"][0]
        page = HostView(ui, _Navigator(), host_id)  # type: ignore[arg-type]
        page.resize(1300, 640)
        page.show()
        await _until(lambda: page.update_button.isVisible())
        await _settle()
        paths.append(out / "update-host.png")
        page.grab().save(str(paths[-1]))

        for _host_id, _bearer, ws in socks.values():
            await ws.ws.close()
        page.close()
        fleet.close()
        await env.ui.runner.drain()
        await updates.stop()
    return paths


def render(path_dir: str | Path) -> list[Path]:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(Path(path_dir)))
    finally:
        loop.close()


if __name__ == "__main__":
    for path in render(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
