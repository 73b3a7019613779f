"""The pending hosts panel and its Accept/Reject dialogs, live against a real
control plane with announcing clients over TLS (offscreen widgets, qasync loop).

Waiting is polling with ``asyncio.sleep`` (never qtbot.waitUntil in an async test).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontInfo, QGuiApplication

from agent import protocol as p
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.announce import AnnounceServer, announce_server, announced
from ui_qt.bridge import EventBridge
from ui_qt.pending_host_dialogs import AcceptPendingDialog, RejectPendingDialog
from ui_qt.pending_hosts_panel import PendingHostsPanel
from ui_qt.tasks import AsyncRunner


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AnnounceServer]:
    async with announce_server(tmp_path / "data") as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def panel(server: AnnounceServer, qtbot) -> AsyncIterator[PendingHostsPanel]:  # type: ignore[no-untyped-def]
    bridge = EventBridge(server.cp.bus)
    runner = AsyncRunner()
    widget = PendingHostsPanel(
        server.pending,
        runner,
        bridge,
        sources=server.cp.sources,
        schedules=server.cp.schedules,
    )
    qtbot.addWidget(widget)
    widget.resize(1000, 400)
    widget.show()
    await until(lambda: not widget.refreshing(), "the first load")
    try:
        yield widget
    finally:
        if widget.dialog is not None and shiboken6.isValid(widget.dialog):
            widget.dialog.close()
        await runner.drain()
        bridge.close()


async def test_hidden_until_a_host_announces_then_shows_it_live(panel, server, session):
    assert panel.isHidden() and panel.views == []
    client, pending = await announced(session, server, hostname="web7")
    card = await until(lambda: panel.cards.get(pending.pending_id), "the card")
    assert panel.isVisible()
    assert panel.title.text() == "1 host asking to be added"
    assert card.fingerprint_label.text() == client.fingerprint == pending.fingerprint
    font = QFontInfo(card.fingerprint_label.font())
    assert font.fixedPitch()
    assert font.pointSizeF() > QFontInfo(card.hostname_label.font()).pointSizeF()
    assert card.hostname_label.text() == "web7"
    details = card.details_label.text()
    assert "127.0.0.1 · linux/amd64 · agent 0.1.0 · announced just now" in details
    assert "expires in 60 min" in details
    assert card.duplicate_label.isHidden()
    assert card.accept_button.isEnabled()

    card.copy_button.click()
    assert QGuiApplication.clipboard().text() == pending.fingerprint
    assert card.copy_button.text() == "Copied"

    # The host goes away: the card says so and Accept waits for it.
    await client.ws.close()
    await until(lambda: not card.accept_button.isEnabled(), "the disconnect to show")
    assert "needs the host connected" in card.accept_button.toolTip()
    assert "not connected" in card.dot.toolTip()


async def test_duplicate_names_are_flagged_on_the_card(panel, server, session):
    await server.cp.enrolment.add_host(
        parse_new_host(
            {"hostname": "db1", "repository": {"url": "/r", "password": "pw-db1-pw-db1"}}
        ),
        OPERATOR,
    )
    _, a = await announced(session, server, hostname="db1")
    _, b = await announced(session, server, hostname="mail")
    _, c = await announced(session, server, hostname="mail")
    await until(lambda: len(panel.cards) == 3, "three cards")
    await until(lambda: panel.cards[b.pending_id].duplicate_label.isVisible(), "the flag")
    assert panel.cards[a.pending_id].duplicate_label.text() == "⚠ a host named db1 already exists"
    assert "also claim mail" in panel.cards[c.pending_id].duplicate_label.text()
    assert panel.title.text() == "3 hosts asking to be added"


async def test_accept_dialog_checks_the_form_then_enrols_and_plans_backups(panel, server, session):
    client, pending = await announced(session, server, hostname="web7")
    card = await until(lambda: panel.cards.get(pending.pending_id), "the card")
    card.accept_button.click()
    dialog = panel.dialog
    assert isinstance(dialog, AcceptPendingDialog) and dialog.isVisible()
    assert dialog.hostname.text() == "web7"
    assert dialog.findChild(type(card.fingerprint_label), "dialogFingerprint").text() == (
        pending.fingerprint
    )

    # Nothing typed: the refusal is shown next to the field it concerns.
    dialog.submit_button.click()
    assert list(dialog.shown_errors()) == ["repo_url"]
    dialog.repo_url.setText("/srv/restic/web7")
    dialog.repo_password.edit.setText("s3cret-s3cret")
    dialog.submit_button.click()
    assert "schedule" in dialog.shown_errors()  # daily backups need paths
    dialog.paths.setPlainText("/etc\n/srv/www")
    dialog.tags.setText("web, lab")

    async def agent_side() -> p.AnnounceAccepted:
        grant = await client.expect(p.AnnounceAccepted, timeout=10)
        await client.send(p.AnnounceEnrolled(ok=True))
        return grant

    agent = asyncio.create_task(agent_side())
    dialog.submit_button.click()
    assert dialog.submit_button.text() == "Enrolling…"
    grant = await agent
    await until(lambda: panel.notice.isVisible(), "the outcome notice")
    assert panel.notice.text() == "web7 was added and its agent enrolled."
    await until(lambda: pending.pending_id not in panel.cards, "the card to go")
    assert panel.isVisible()  # the notice keeps it open
    panel.clear_notice()
    assert panel.isHidden()

    host = await server.cp.hosts.get_host(grant.host_id)
    assert host.name == "web7" and host.tags == ["web", "lab"]
    (group,) = await server.cp.sources.list_groups(grant.host_id)
    assert group.includes == ["/etc", "/srv/www"] and group.retention["keep_daily"] == 7
    (schedule,) = await server.cp.schedules.list_schedules(grant.host_id)
    assert schedule.cron == "0 2 * * *" and schedule.source_group_ids == [group.id]


async def test_accept_shows_a_name_clash_next_to_the_hostname(panel, server, session):
    await server.cp.enrolment.add_host(
        parse_new_host(
            {"hostname": "taken", "repository": {"url": "/r", "password": "pw-pw-pw-pw"}}
        ),
        OPERATOR,
    )
    _, pending = await announced(session, server, hostname="taken")
    card = await until(lambda: panel.cards.get(pending.pending_id), "the card")
    card.accept_button.click()
    dialog = panel.dialog
    assert isinstance(dialog, AcceptPendingDialog)
    dialog.repo_url.setText("/srv/r")
    dialog.repo_password.edit.setText("pw-pw-pw-pw")
    dialog.auto_backup.setChecked(False)
    dialog.submit_button.click()
    await until(lambda: "hostname" in dialog.shown_errors(), "the clash")
    assert "already exists" in dialog.shown_errors()["hostname"]
    assert dialog.submit_button.isEnabled() and dialog.isVisible()


async def test_reject_dialog_sends_the_reason_to_the_host(panel, server, session):
    client, pending = await announced(session, server, hostname="stranger")
    card = await until(lambda: panel.cards.get(pending.pending_id), "the card")
    card.reject_button.click()
    dialog = panel.dialog
    assert isinstance(dialog, RejectPendingDialog) and dialog.isVisible()
    dialog.reason.setText("unknown machine")
    dialog.submit_button.click()
    verdict = await client.expect(p.AnnounceRejected, timeout=10)
    assert verdict.message.endswith(": unknown machine")
    await until(lambda: pending.pending_id not in panel.cards, "the card to go")
    assert "stranger was rejected" in panel.notice.text()
    # Closed on success (and deleted: WA_DeleteOnClose).
    assert not shiboken6.isValid(dialog) or not dialog.isVisible()


def test_fingerprint_is_selectable_text(qtbot) -> None:  # type: ignore[no-untyped-def]
    from server_core.services.pending_hosts import PendingHostView
    from ui_qt.pending_hosts_panel import PendingHostCard

    view = PendingHostView(
        id=1,
        fingerprint="SHA256:" + "A" * 43,
        hostname="h",
        source_ip="192.0.2.1",
        os=None,
        arch=None,
        agent_version=None,
        created_at=time.time() - 120,
        expires_at=time.time() + 30,
        connected=True,
        duplicate=None,
    )
    card = PendingHostCard(view, time.time())
    qtbot.addWidget(card)
    flags = card.fingerprint_label.textInteractionFlags()
    assert flags & Qt.TextInteractionFlag.TextSelectableByMouse
    assert card.details_label.text() == "192.0.2.1 · announced 2 min ago · expires in a moment"


class _Navigator:
    def show_fleet(self) -> None: ...
    def open_host(self, host_id: int) -> None: ...
    def open_job(self, job_id: str) -> None: ...
    def add_host(self) -> None: ...


async def test_the_fleet_view_shows_waiting_hosts_above_the_table(
    ui, control_plane, session, qtbot
):
    # Needs the wiring: UiContext.pending_hosts from the control plane's own service.
    from ui_qt.fleet_view import FleetView

    view = FleetView(ui, _Navigator())
    qtbot.addWidget(view)
    view.resize(1200, 700)
    view.show()
    panel = view.pending_panel
    assert panel is not None
    await until(lambda: not panel.refreshing() and not view.refreshing(), "the first load")
    assert panel.isHidden()
    assert view.pages.currentWidget() is view.empty_page

    cp = control_plane
    server = AnnounceServer(cp, cp.pending_hosts, cp.agent_url, cp.certificate.sha256)
    _, pending = await announced(session, server, hostname="first-host")
    await until(lambda: pending.pending_id in panel.cards and panel.isVisible(), "the panel")
    # An empty fleet still shows who is waiting, above its welcome page.
    assert view.pages.currentWidget() is view.empty_page
    assert panel.geometry().bottom() < view.pages.geometry().top()
