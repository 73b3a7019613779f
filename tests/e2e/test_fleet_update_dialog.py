"""Agent updates in the GUI: the fleet update dialog, the fleet table's chip and
"Update agents…" button, and the host page's "Update agent" — against a real
control plane and UpdateService, with protocol-speaking fake agents playing
the agent's side (receive command.update, restart as some version, or report
the update failed). Waiting is bounded asyncio polling, never qtbot.waitUntil.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent import protocol as p
from server_core.agent_downloads import AgentDownloads
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.services.updates import UpdateService
from tests.helpers.fake_agent import FakeAgent, enrol
from tests.helpers.update_context import with_updates
from ui_qt.context import UiContext
from ui_qt.fleet_model import UPDATE_ROLE, Column
from ui_qt.fleet_update_dialog import FleetUpdateDialog
from ui_qt.fleet_view import FleetView
from ui_qt.host_view import HostView

NEW = "0.2.0"
OLD = "0.1.0"


class Navigator:
    def show_fleet(self) -> None: ...
    def open_host(self, host_id: int) -> None: ...
    def open_job(self, job_id: str) -> None: ...
    def add_host(self) -> None: ...


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclasses.dataclass
class Agent:
    cp: ControlPlane
    session: aiohttp.ClientSession
    id: int
    name: str
    bearer: str
    ws: FakeAgent | None = None

    async def connect(self, version: str) -> None:
        self.ws = await FakeAgent.connect(
            self.session, self.cp.agent_url, self.cp.certificate.sha256, self.bearer, hello=False
        )
        await self.ws.send(
            p.Hello(
                protocol_version=p.PROTOCOL_VERSION,
                agent_version=version,
                hostname=self.name,
                os="linux",
                arch="amd64",
            )
        )
        await until(lambda: self.cp.hub.is_connected(self.id), f"{self.name} online")

    async def command(self) -> p.CommandUpdate:
        assert self.ws is not None
        command: p.CommandUpdate = await self.ws.expect(p.CommandUpdate)
        return command

    async def restart_as(self, version: str) -> None:
        assert self.ws is not None
        await self.ws.ws.close()
        await until(lambda: not self.cp.hub.is_connected(self.id), f"{self.name} offline")
        await self.connect(version)

    async def report_failure(self, job_id: str, error: str) -> None:
        assert self.ws is not None
        await self.ws.send(
            p.JobFinished(
                job_id=job_id, seq=5, status="failed", finished_at=time.time(), error=error
            )
        )


@dataclasses.dataclass
class Setup:
    cp: ControlPlane
    ui: UiContext
    updates: UpdateService
    session: aiohttp.ClientSession

    async def agent(self, name: str, version: str = OLD) -> Agent:
        new = parse_new_host(
            {
                "hostname": name,
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            }
        )
        grant = await self.cp.enrolment.add_host(new, OPERATOR)
        body = await enrol(self.session, self.cp.agent_url, self.cp.certificate.sha256, grant.token)
        agent = Agent(self.cp, self.session, body["host_id"], name, body["bearer"])
        await agent.connect(version)
        return agent


@pytest.fixture
async def setup(control_plane: ControlPlane, ui: UiContext, tmp_path: Path) -> AsyncIterator[Setup]:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "restic-manager-agent-linux-amd64").write_bytes(b"#!/bin/sh\n")
    (agents / "restic-manager-agent-linux-amd64.json").write_text(json.dumps({"version": NEW}))
    updates = UpdateService(
        control_plane.ctx, control_plane.alerts, AgentDownloads(agents, tmp_path)
    )
    await updates.start()
    ctx = with_updates(ui, updates)
    try:
        async with aiohttp.ClientSession() as session:
            yield Setup(control_plane, ctx, updates, session)
    finally:
        await ctx.runner.drain()
        await updates.stop()


def states(dialog: FleetUpdateDialog) -> list[str]:
    return [dialog.table.item(r, 2).text() for r in range(dialog.table.rowCount())]


def names(dialog: FleetUpdateDialog) -> list[str]:
    return [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())]


async def open_dialog(setup: Setup, qtbot: Any) -> FleetUpdateDialog:
    hosts = await setup.cp.hosts.list_hosts()
    dialog = FleetUpdateDialog(setup.updates, setup.ui.runner, setup.ui.bridge, lambda: hosts)
    qtbot.addWidget(dialog)
    dialog.show()
    await until(lambda: dialog.start_button.isEnabled(), "the preview")
    return dialog


async def test_the_dialog_updates_host_by_host_and_halts_at_the_first_failure(setup, qtbot):
    alpha = await setup.agent("alpha")
    bravo = await setup.agent("bravo")
    charlie = await setup.agent("charlie")
    await setup.agent("current", NEW)
    dialog = await open_dialog(setup, qtbot)
    assert names(dialog) == ["alpha", "bravo", "charlie"]
    assert states(dialog) == ["Waiting"] * 3
    assert "3 hosts run another agent version" in dialog.status.text()
    assert f"bundles agent {NEW} (linux/amd64)" in dialog.intro.text()
    assert not dialog.cancel_button.isEnabled()

    dialog.start_button.click()
    await until(lambda: "Updating alpha (1 of 3)" in dialog.status.text(), "alpha's turn")
    assert dialog.cancel_button.isEnabled() and not dialog.start_button.isEnabled()
    await alpha.command()
    await alpha.restart_as(NEW)
    await until(lambda: states(dialog)[:2] == ["Updated", "Updating…"], "bravo's turn")
    assert dialog.progress.isVisible() and dialog.progress.value() == 1
    command = await bravo.command()
    await bravo.report_failure(command.job_id, "the downloaded binary's SHA-256 is abc, not def")

    await until(lambda: states(dialog) == ["Updated", "Failed", "Not started"], "the halt")
    status = dialog.status.text()
    assert "The update stopped" in status and "Halted at bravo" in status
    assert "SHA-256 is abc, not def" in status
    assert "SHA-256 is abc" in dialog.table.item(1, 3).text()
    assert dialog.progress.format() == "2 of 3 hosts"
    assert not dialog.cancel_button.isEnabled()
    assert charlie.ws is not None
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await charlie.ws.expect(p.CommandUpdate, timeout=0.3)
    alerts = await setup.cp.alerts.list_alerts(host_id=bravo.id)
    assert [a.kind for a in alerts] == ["update_failed"]


async def test_cancel_stops_before_the_next_host(setup, qtbot):
    alpha = await setup.agent("alpha")
    bravo = await setup.agent("bravo")
    dialog = await open_dialog(setup, qtbot)
    dialog.start_button.click()
    await alpha.command()
    await until(lambda: dialog.cancel_button.isEnabled(), "cancel to be offered")
    dialog.cancel_button.click()
    await until(lambda: "Cancelled" in dialog.status.text(), "the cancel")
    assert states(dialog) == ["Updating…", "Not started"]
    assert "alpha was already under way" in dialog.status.text()
    # The host already updating finishes on its own, and the dialog shows it.
    await alpha.restart_as(NEW)
    await until(lambda: states(dialog)[0] == "Updated", "alpha to finish")
    assert bravo.ws is not None
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await bravo.ws.expect(p.CommandUpdate, timeout=0.3)


async def test_nothing_to_update_says_so(setup, qtbot):
    await setup.agent("alpha", NEW)
    hosts = await setup.cp.hosts.list_hosts()
    dialog = FleetUpdateDialog(setup.updates, setup.ui.runner, setup.ui.bridge, lambda: hosts)
    qtbot.addWidget(dialog)
    await until(lambda: "nothing to update" in dialog.status.text(), "the preview")
    assert dialog.table.rowCount() == 0 and not dialog.start_button.isEnabled()


async def test_fleet_table_chip_and_button_open_the_dialog(setup, qtbot):
    await setup.agent("alpha")
    await setup.agent("bravo", NEW)
    view = FleetView(setup.ui, Navigator())
    qtbot.addWidget(view)
    view.show()
    await until(lambda: view.update_button.text() == "Update agents (1)…", "the outdated count")
    model = view.model
    chips = {
        model.host_at(r).name: model.index(r, int(Column.AGENT)).data(UPDATE_ROLE)
        for r in range(model.rowCount())
    }
    assert chips == {"alpha": NEW, "bravo": None}
    row = next(r for r in range(model.rowCount()) if model.host_at(r).name == "alpha")
    tip = model.index(row, int(Column.AGENT)).data(0x03)  # ToolTipRole
    assert "update available" in tip and NEW in tip
    view.update_button.click()
    dialog = view._update_dialog
    assert dialog is not None and dialog.isVisible()
    await until(lambda: names(dialog) == ["alpha"], "the dialog's preview")


async def test_host_view_updates_its_agent(setup, qtbot):
    alpha = await setup.agent("alpha")
    view = HostView(setup.ui, Navigator(), alpha.id)  # type: ignore[arg-type]
    qtbot.addWidget(view)
    view.show()
    await until(lambda: view.update_button.isVisible(), "the Update agent button")
    assert view.update_button.text() == f"Update agent to {NEW}"
    assert f"update available: {NEW}" in view.agent_version.text()
    view.update_button.click()
    await alpha.command()
    await until(lambda: view.update_button.text() == "Updating agent…", "the updating state")
    assert not view.update_button.isEnabled()
    await alpha.restart_as(NEW)
    await until(lambda: not view.update_button.isVisible(), "the button to go away")
    assert view.agent_version.text() == NEW
