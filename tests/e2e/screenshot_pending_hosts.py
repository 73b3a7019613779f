"""Screenshots of hosts waiting for approval, for people to look at.

    python -m tests.e2e.screenshot_pending_hosts [DIR]     (default: screenshots/)

Against a real embedded control plane, with hosts announcing themselves over
TLS the way ``restic-manager-agent announce`` does:
- pending-fleet.png     the fleet with three waiting hosts: one clean, one whose
                        name is already taken (flagged), one disconnected
- pending-accept.png    the Accept dialog, filled in
- pending-reject.png    the Reject dialog with a reason
- pending-accepted.png  the fleet after accepting: the outcome notice, the new host
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import aiohttp
import qasync
from PySide6.QtWidgets import QApplication, QWidget

from agent import protocol as p
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.announce import AnnounceServer, announced
from tests.helpers.embedded_ui import embedded_ui
from ui_qt.context import UiContext
from ui_qt.fleet_view import FleetView
from ui_qt.pending_host_dialogs import AcceptPendingDialog, RejectPendingDialog


class _Navigator:
    def show_fleet(self) -> None: ...
    def open_host(self, host_id: int) -> None: ...
    def open_job(self, job_id: str) -> None: ...
    def add_host(self) -> None: ...


async def _until(predicate, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _grab(widget: QWidget, path: Path) -> Path:
    await asyncio.sleep(0.4)  # layouts and repaints
    QApplication.processEvents()
    widget.grab().save(str(path))
    return path


async def render_with(ui: UiContext, server: AnnounceServer, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    assert ui.pending_hosts is not None
    for name in ("db1", "mail-01"):
        await ui.enrolment.add_host(
            parse_new_host(
                {
                    "hostname": name,
                    "repository": {"url": f"/srv/restic/{name}", "password": "pw-" + name},
                }
            ),
            OPERATOR,
        )
    view = FleetView(ui, _Navigator())
    view.resize(1280, 760)
    view.show()
    panel = view.pending_panel
    assert panel is not None
    paths: list[Path] = []
    async with aiohttp.ClientSession() as session:
        web3, web3_pending = await announced(session, server, hostname="web3")
        _db1, _ = await announced(session, server, hostname="db1")  # held: stays connected
        laptop, laptop_pending = await announced(session, server, hostname="laptop-anna")
        await laptop.ws.close()
        await _until(
            lambda: (
                len(panel.cards) == 3
                and not panel.cards[laptop_pending.pending_id].accept_button.isEnabled()
            ),
            "three cards, one disconnected",
        )
        await _until(lambda: view.model.rowCount() == 2, "the fleet table")
        paths.append(await _grab(view, out / "pending-fleet.png"))

        dialog = panel.open_accept(web3_pending.pending_id)
        assert isinstance(dialog, AcceptPendingDialog)
        dialog.repo_url.setText("sftp:backup@nas:/restic/web3")
        dialog.repo_password.edit.setText("correct horse battery staple")
        dialog.paths.setPlainText("/etc\n/srv/www")
        dialog.tags.setText("web, production")
        paths.append(await _grab(dialog, out / "pending-accept.png"))
        dialog.close()

        rejecting = panel.open_reject(laptop_pending.pending_id)
        assert isinstance(rejecting, RejectPendingDialog)
        rejecting.reason.setText("personal laptop, back it up with the office policy instead")
        paths.append(await _grab(rejecting, out / "pending-reject.png"))
        rejecting.close()

        dialog = panel.open_accept(web3_pending.pending_id)
        assert isinstance(dialog, AcceptPendingDialog)
        dialog.repo_url.setText("/srv/restic/web3")
        dialog.repo_password.edit.setText("correct horse battery staple")
        dialog.paths.setPlainText("/etc")

        async def agent_side() -> None:
            await web3.expect(p.AnnounceAccepted, timeout=15)
            await web3.send(p.AnnounceEnrolled(ok=True))

        agent = asyncio.create_task(agent_side())
        dialog.submit()
        await agent
        await _until(lambda: panel.notice.isVisible(), "the notice")
        await _until(lambda: len(panel.cards) == 2 and view.model.rowCount() == 3, "the new host")
        paths.append(await _grab(view, out / "pending-accepted.png"))
    view.close()
    view.deleteLater()
    return paths


async def _main(out: Path) -> list[Path]:
    async with embedded_ui(prefix="rm-shots-") as env:
        cp = env.cp
        server = AnnounceServer(cp, cp.pending_hosts, cp.agent_url, cp.certificate.sha256)
        return await render_with(env.ui, server, out)


def render(path_dir: str | Path) -> list[Path]:
    """Write the pending-host screenshots into ``path_dir``; returns the files written."""
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
