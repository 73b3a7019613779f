"""The host header's presence-mode combo, and how an offline laptop reads
("asleep · last seen …") in the header and the fleet table — real control
plane, real HostService, a protocol-speaking fake agent."""

from __future__ import annotations

from typing import Any

import aiohttp
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox

from server_core.control_plane import ControlPlane
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol
from tests.helpers.gui import RecordingNavigator, until
from ui_qt.context import UiContext
from ui_qt.fleet_model import Column
from ui_qt.fleet_view import FleetView
from ui_qt.host_view import HostView


async def connect_agent(
    cp: ControlPlane, session: aiohttp.ClientSession, name: str
) -> tuple[int, FakeAgent]:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": f"/srv/restic/{name}", "password": "hunter2hunter2"},
            "initial_paths": ["/home"],
        }
    )
    grant = await cp.enrolment.add_host(new, OPERATOR)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, name)
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    return grant.host_id, agent


def status_cell(view: FleetView, host_id: int) -> str:
    row = view.model.row_of(host_id)
    assert row is not None
    return str(view.model.index(row, int(Column.STATUS)).data())


async def test_presence_combo_switches_the_mode_and_an_offline_laptop_is_asleep(
    control_plane: ControlPlane, ui: UiContext, qtbot: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        host_id, agent = await connect_agent(control_plane, session, "laptop1")
        try:
            await check_presence(control_plane, ui, qtbot, host_id, agent)
        finally:
            await agent.ws.close()
            await ui.runner.drain()


async def check_presence(
    control_plane: ControlPlane, ui: UiContext, qtbot: Any, host_id: int, agent: FakeAgent
) -> None:
    view = HostView(ui, RecordingNavigator(), host_id)
    fleet = FleetView(ui, RecordingNavigator())
    qtbot.addWidget(view)
    qtbot.addWidget(fleet)
    view.show()
    await until(lambda: view.host is not None and view.host.status == "online", what="online")
    combo = view.presence
    assert combo.isEnabled()
    assert combo.currentText() == "Always on"
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Always on",
        "Laptop (intermittent)",
    ]
    assert "no offline alerts" in combo.toolTip()

    # The operator picks Laptop with the keyboard.
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key.Key_Down)
    await until(
        lambda: view.host is not None and view.host.presence_mode == "laptop", what="laptop mode"
    )
    assert (await ui.hosts.get_host(host_id)).presence_mode == "laptop"
    entries = await control_plane.store.call(lambda: list_audit(action="host.presence_changed"))
    assert [(e.payload["before"], e.payload["after"]) for e in entries] == [("always_on", "laptop")]
    assert combo.currentText() == "Laptop (intermittent)" and combo.isEnabled()

    # Its agent goes to sleep: the header and the fleet table say so, calmly.
    await agent.ws.close()
    await until(lambda: "asleep" in view.status.text(), what="asleep in the header")
    assert "asleep · last seen just now" in view.status.text()
    assert "no offline alert" in view.status.toolTip()
    await until(
        lambda: (
            fleet.model.row_of(host_id) is not None
            and status_cell(fleet, host_id).startswith("Asleep")
        ),
        what="asleep in the fleet table",
    )
    assert status_cell(fleet, host_id) == "Asleep · last seen just now"

    # A refused change: the error is shown and the combo keeps the stored mode.
    view.set_presence_mode("sometimes")
    box = await until(
        lambda: next((w for w in view.findChildren(QMessageBox) if w.isVisible()), None),
        what="the error dialog",
    )
    assert box.windowTitle() == "Could not change the presence mode"
    assert "'mode' must be" in box.text() and "keeps its previous mode" in box.text()
    box.close()
    assert combo.currentText() == "Laptop (intermittent)" and combo.isEnabled()

    # Back to always on: an offline always-on host is plainly offline.
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key.Key_Up)
    await until(lambda: "offline" in view.status.text(), what="offline again")
    await until(lambda: status_cell(fleet, host_id) == "Offline", what="offline in the table")
