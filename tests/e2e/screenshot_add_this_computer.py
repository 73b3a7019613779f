"""Screenshots of "Add this computer", for people to look at (`make screenshots`).

    python -m tests.e2e.screenshot_add_this_computer [DIR]     (default: screenshots/)

Renders against a real embedded control plane in a temporary data dir, with a
home directory in that temporary dir:
- fleet-empty-this-computer.png  the empty fleet offering "Add this computer"
- add-this-computer-form.png     the form: how the agent will run here (this
                                 machine has no systemd user session, so the
                                 fallback is explained), a generated password
- add-this-computer-form-dark.png  the same form on a dark palette
- add-this-computer-failed.png   a failed enrolment (wrong certificate pin):
                                 the host removed again, Back to the form
- add-this-computer-done.png     (with restic 0.18 installed) after the whole
                                 setup for real: a detached agent enrolled,
                                 connected, the repository initialised and the
                                 first backup finished with its snapshot
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app import local_agent as la
from server_core.control_plane import ControlPlane
from server_core.services.enrolment import AgentEndpoint
from tests.helpers.embedded_ui import embedded_ui
from tests.helpers.fleet import make_tree
from tests.helpers.palettes import dark_palette
from tests.helpers.restic_bins import RESTIC_BINARIES
from ui_qt.add_this_computer import DONE, FAILED, AddThisComputerDialog
from ui_qt.context import UiContext
from ui_qt.fleet_view import FleetView

SIZE = (760, 740)


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dialog did not get there in time: {what}")
        await asyncio.sleep(0.05)


async def _settle() -> None:
    await asyncio.sleep(0.3)
    QApplication.processEvents()


class _Navigator:
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    home = root / "home" / "alex"
    make_tree(home / "Documents", files=60, size=8192)
    (home / "Pictures").mkdir(exist_ok=True)
    env.update(
        HOME=str(home), XDG_CONFIG_HOME=str(root / "config"), XDG_DATA_HOME=str(root / "data")
    )
    return env


def _launcher(cp: ControlPlane, env: dict[str, str], pin: str | None = None) -> la.LocalAgent:
    return la.LocalAgent(
        endpoint=lambda: AgentEndpoint(
            la.local_server_url("127.0.0.1", cp.agent_port), pin or cp.certificate.sha256
        ),
        env=env,
        platform="linux",
        restic=RESTIC_BINARIES.get("0.18"),
        hostname="alex-laptop",
    )


def _dialog(ui: UiContext, launcher: la.LocalAgent) -> AddThisComputerDialog:
    dialog = AddThisComputerDialog(ui, launcher, _Navigator())
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
    dialog.resize(*SIZE)
    dialog.show()
    return dialog


async def render_with(cp: ControlPlane, ui: UiContext, out: Path, workdir: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = _env(workdir)
    launcher = _launcher(cp, env)
    shots: list[Path] = []

    fleet = FleetView(ui, _Navigator())
    fleet.offer_this_computer(launcher)
    fleet.resize(1100, 700)
    fleet.show()
    await _until(lambda: fleet.model.loaded(), 10, "the fleet")
    await _settle()
    shots.append(out / "fleet-empty-this-computer.png")
    fleet.grab().save(str(shots[-1]))
    fleet.close()
    fleet.deleteLater()

    dialog = _dialog(ui, launcher)
    await _until(lambda: dialog.plan is not None, 15, "the detection")
    dialog.generate()
    dialog.tags.setText("laptop, home")
    await _settle()
    shots.append(out / "add-this-computer-form.png")
    dialog.grab().save(str(shots[-1]))

    app = QApplication.instance()
    assert isinstance(app, QApplication)
    light = app.palette()
    app.setPalette(dark_palette())
    try:
        dark = _dialog(ui, launcher)
        await _until(lambda: dark.plan is not None, 15, "the detection")
        dark.generate()
        await _settle()
        shots.append(out / "add-this-computer-form-dark.png")
        dark.grab().save(str(shots[-1]))
        dark.close()
        dark.deleteLater()
    finally:
        app.setPalette(light)

    # A wrong certificate pin: the enrolment fails and the host goes again.
    failing = _dialog(ui, _launcher(cp, env, pin="00" * 32))
    await _until(lambda: failing.plan is not None, 15, "the detection")
    failing.generate()
    failing.submit()
    await _until(lambda: failing.back_button.isVisible(), 30, "the failure")
    await _settle()
    shots.append(out / "add-this-computer-failed.png")
    failing.grab().save(str(shots[-1]))
    failing.close()
    failing.deleteLater()

    if RESTIC_BINARIES.get("0.18"):
        try:
            dialog.submit()
            await _until(lambda: dialog.step_state("repo") in (DONE, FAILED), 120, "the repo")
            await _until(lambda: dialog.backup_button.isEnabled(), 15, "Back up now")
            dialog.back_up_now()
            await _until(lambda: dialog.step_state("backup") in (DONE, FAILED), 120, "backup")
            await _settle()
            shots.append(out / "add-this-computer-done.png")
            dialog.grab().save(str(shots[-1]))
        finally:
            await launcher.stop_detached()
    dialog.close()
    dialog.deleteLater()
    return shots


async def _main(out: Path) -> list[Path]:
    async with embedded_ui(prefix="rm-this-computer-") as env:
        return await render_with(env.cp, env.ui, out, env.workdir)


def render(path_dir: str | Path) -> list[Path]:
    """Write the Add this computer screenshots into ``path_dir``; returns the files."""
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
