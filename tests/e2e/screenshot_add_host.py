"""Screenshots of the Add host dialog, for people to look at (`make screenshots`).

    python -m tests.e2e.screenshot_add_host [DIR]     (default: screenshots/)

Renders against a real embedded control plane in a temporary data dir:
- add-host-form.png      the form, filled in, with an inline error on a relative path
- add-host-keep-error.png  its "Schedule and retention" section refusing all-zero retention
- add-host-result.png    the result page: commands, pin, countdown, awaiting agent, tokens
- add-host-enrolled.png  (when restic 0.18 and the agent are installed) the same page after
                         a real agent enrolled: green panel, "Repository ready", token used
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from tests.helpers.embedded_ui import embedded_ui
from tests.helpers.fleet import BIN, AgentProcess
from tests.helpers.restic_bins import RESTIC_BINARIES
from ui_qt.add_host import AddHostDialog
from ui_qt.context import UiContext

SIZE = (760, 960)  # tall enough for the whole form


async def _until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the dialog did not get there in time")
        await asyncio.sleep(0.05)


async def _settle() -> None:
    """Let layouts, the bridge and pending reads run before grabbing."""
    await asyncio.sleep(0.3)
    QApplication.processEvents()


async def render_with(
    ui: UiContext,
    out: Path,
    *,
    agent_url: str | None = None,
    workdir: Path | None = None,
) -> list[Path]:
    """Render into ``out``; with ``agent_url`` and ``workdir`` also enrol a real agent."""
    out.mkdir(parents=True, exist_ok=True)
    workdir = workdir or out
    repo = workdir / "repositories" / "web1"
    dialog = AddHostDialog(ui, None)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
    dialog.resize(*SIZE)
    dialog.show()
    dialog.hostname.setText("web1.example.org")
    dialog.tags.setText("production, web")
    dialog.repo_url.setText(str(repo))
    dialog.repo_password.edit.setText("correct-horse-battery")
    dialog.env.add_row("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    dialog.env.add_row("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    dialog.admin_group.setChecked(True)
    dialog.admin_url.setText(str(repo))
    dialog.admin_password.edit.setText("correct-horse-battery")
    dialog.paths.setPlainText("/etc\n/home\nvar/www")
    dialog.submit()  # refused: var/www is relative
    await _settle()
    paths = [out / "add-host-form.png"]
    dialog.grab().save(str(paths[-1]))

    # A working setup for the rest: no env, no admin slot (local repository).
    dialog.env.table.setRowCount(0)
    dialog.admin_group.setChecked(False)
    dialog.paths.setPlainText("/etc\n/home\n/var/www")
    # Automatic backups on with nothing to keep: refused at the Keep row.
    for spin in dialog.keep.values():
        spin.setValue(0)
    dialog.submit()
    await _settle()
    paths.append(out / "add-host-keep-error.png")
    dialog.grab().save(str(paths[-1]))

    for spin, value in zip(dialog.keep.values(), (7, 4, 12), strict=True):
        spin.setValue(value)
    dialog.submit()
    await _until(lambda: bool(dialog.tokens), 15)
    await _settle()
    paths.append(out / "add-host-result.png")
    dialog.grab().save(str(paths[-1]))

    restic = RESTIC_BINARIES.get("0.18")
    if agent_url and restic and (BIN / "restic-manager-agent").exists():
        assert dialog.grant is not None
        agent = AgentProcess(workdir / "agent", restic, "web1.example.org")
        try:
            result = await asyncio.to_thread(
                agent.enrol, agent_url, dialog.grant.token, dialog.cert_pin()
            )
            if result.returncode != 0:
                raise RuntimeError(f"the agent did not enrol: {result.stderr}")
            agent.start()
            await _until(lambda: dialog.repo_state() in ("ready", "failed"), 90)
            await _until(lambda: bool(dialog.tokens) and dialog.tokens[0].state == "used", 10)
            await _settle()
            paths.append(out / "add-host-enrolled.png")
            dialog.grab().save(str(paths[-1]))
        finally:
            agent.stop()
    dialog.close()
    dialog.deleteLater()
    return paths


async def _main(out: Path) -> list[Path]:
    async with embedded_ui(prefix="rm-shots-") as env:
        return await render_with(env.ui, out, agent_url=env.cp.agent_url, workdir=env.workdir)


def render(path_dir: str | Path) -> list[Path]:
    """Write the Add host screenshots into ``path_dir``; returns the files written."""
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    # As in the app (a tray app): closing the dialog must not end the loop.
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
