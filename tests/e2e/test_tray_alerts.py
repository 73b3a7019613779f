"""Tray notifications for alerts, the tray's alert count and icon, and the main
window's Alerts navigation — on a real control plane with the real AlertService.

Offscreen there is no system tray: the tray records the notifications it
requests (``Tray.notifications``), which is what these tests assert.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol
from tests.helpers.gui import StandInWindow, add_host, until
from ui_qt.alerts_model import OPEN
from ui_qt.context import UiContext
from ui_qt.fleet_health import CRITICAL, OK, WARNING
from ui_qt.main_window import MainWindow
from ui_qt.tray import Tray


async def settle(cp: ControlPlane, host_id: int) -> None:
    """Let the control plane record the disconnect (and the alert engine look at
    it) before the test ends and the control plane stops."""
    for _ in range(100):
        if (await cp.hosts.get_host(host_id)).status != "online":
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


@pytest.fixture
async def tray(ui: UiContext) -> AsyncIterator[tuple[Tray, StandInWindow]]:
    window = StandInWindow()
    t = Tray(ui, window)
    t.start()
    try:
        await until(lambda: t.alert_counts is not None, what="the first count")
        yield t, window
    finally:
        t.stop()
        await ui.runner.drain()
        t.menu.deleteLater()
        t.deleteLater()


async def test_one_notification_per_new_alert_and_none_for_a_refire(
    control_plane: ControlPlane, ui: UiContext, tray: tuple[Tray, StandInWindow]
) -> None:
    t, window = tray
    assert t.available is False  # offscreen: requests are recorded only
    assert t.alerts_action.text() == "No open alerts"
    web = await add_host(control_plane, "web1")
    await until(lambda: t.refreshes >= 1 and t.health.total == 1, what="the host")
    assert t.level == OK

    a = await ui.alerts.fire(
        "backup_failed", web, "Backup of 'etc' failed: Fatal: wrong password", key_suffix=1
    )
    await until(lambda: t.notifications, what="the notification")
    note = t.notifications[0]
    assert note.title == "Critical: Backup failed"
    assert note.message == "web1: Backup of 'etc' failed: Fatal: wrong password"
    assert (note.level, note.alert_id, note.host_id) == ("critical", a.id, web)
    # The icon follows the worst unresolved alert, though no backup has failed.
    await until(lambda: t.level == CRITICAL, what="the critical icon")
    assert t.health.failing == 0
    assert t.alerts_action.text() == "1 open alert"
    assert t.icon.toolTip().endswith("\n1 open alert")

    # Re-fired: count bumped, nothing new to tell, and nothing to count again.
    await until(lambda: not t.counts_loader.busy, what="the count to settle")
    counted = t.counts_loader.fetches
    for _ in range(3):
        await ui.alerts.fire("backup_failed", web, "failed again", key_suffix=1)
    await asyncio.sleep(0.5)
    assert len(t.notifications) == 1
    assert t.counts_loader.fetches == counted

    # Clicking the notification opens the Alerts view on that alert.
    t.message_clicked()
    assert window.calls[-2:] == [("show_alerts", a.id), ("bring_to_front", None)]

    await ui.alerts.acknowledge([a.id], OPERATOR)
    await until(
        lambda: t.alerts_action.text() == "1 open alert (1 acknowledged)", what="acked count"
    )
    await ui.alerts.resolve([a.id], OPERATOR)
    await until(lambda: t.alerts_action.text() == "No open alerts", what="resolved count")
    await until(lambda: t.level == OK, what="back to the fleet's own health")
    assert "open alert" not in t.icon.toolTip()
    assert len(t.notifications) == 1  # acknowledging and resolving are not new alerts


async def test_several_new_alerts_in_one_flush_are_one_summary(
    control_plane: ControlPlane, ui: UiContext, tray: tuple[Tray, StandInWindow]
) -> None:
    t, window = tray
    hosts = [await add_host(control_plane, f"web{n}") for n in range(1, 6)]
    # Published back to back: one bridge flush carries all five raises.
    await asyncio.gather(
        *(ui.alerts.fire("agent_offline", h, "silent for 2 min") for h in hosts[:4]),
        ui.alerts.fire("check_failed", hosts[4], "Check failed"),
    )
    await until(lambda: t.notifications, what="the summary")
    await asyncio.sleep(0.5)
    assert len(t.notifications) == 1, [n.title for n in t.notifications]
    note = t.notifications[0]
    assert note.title == "5 new alerts"
    # The worst first; three named, the rest counted.
    assert note.message.startswith("web5: Check failed, web1: Agent offline, web2: Agent offline")
    assert note.message.endswith(" and 2 more.")
    assert (note.level, note.alert_id, note.opens_alerts) == ("critical", None, True)
    t.message_clicked()
    assert window.calls[-2:] == [("show_alerts", None), ("bring_to_front", None)]
    await until(lambda: t.alerts_action.text() == "5 open alerts", what="the count")
    t.alerts_action.trigger()
    assert window.calls[-2:] == [("show_alerts", None), ("bring_to_front", None)]


async def test_a_warning_alert_makes_the_icon_warning(
    control_plane: ControlPlane, ui: UiContext, tray: tuple[Tray, StandInWindow]
) -> None:
    t, _window = tray
    web = await add_host(control_plane, "web1")
    await ui.alerts.fire("stale_backup", web, "No successful backup for 3 days")
    await until(lambda: t.notifications, what="the notification")
    assert t.notifications[0].title == "Warning: No recent backup"
    assert t.notifications[0].level == "warning"
    await until(lambda: t.level == WARNING, what="the warning icon")


async def test_a_failed_backup_is_one_notification_from_its_alert(
    control_plane: ControlPlane, ui: UiContext, tray: tuple[Tray, StandInWindow]
) -> None:
    """The alert engine raises backup_failed; the tray tells it once (not also as a
    failed job). A failed restore raises no alert: the tray still tells it."""
    t, window = tray
    async with aiohttp.ClientSession() as session:
        new = parse_new_host(
            {
                "hostname": "web1",
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            }
        )
        grant = await control_plane.enrolment.add_host(new, OPERATOR)
        cp = control_plane
        body = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, "web1")
        agent = await FakeAgent.connect(
            session, cp.agent_url, cp.certificate.sha256, body["bearer"]
        )
        try:

            async def job(job_id: str, kind: str, error: str) -> None:
                ids = {
                    await agent.send(
                        p.JobStarted(
                            job_id=job_id, seq=1, kind=kind, actor="operator", started_at=1.0
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

            started = time.monotonic()
            await job("b" * 32, "backup", "Fatal: wrong password or no key found")
            await until(lambda: t.notifications, what="the backup alert's notification")
            assert time.monotonic() - started < 2.0
            note = t.notifications[0]
            assert note.title == "Critical: Backup failed"
            # The engine's message names the host already: not repeated.
            assert note.message == (
                "Ad-hoc backup on web1 failed: Fatal: wrong password or no key found"
            )
            assert note.alert_id is not None and note.host_id == grant.host_id
            t.message_clicked()
            assert ("show_alerts", note.alert_id) in window.calls

            await job("c" * 32, "restore", "Fatal: no space left on device")
            await until(lambda: len(t.notifications) == 2, what="the restore failure")
            await asyncio.sleep(0.6)
            titles = [n.title for n in t.notifications]
            assert titles == ["Critical: Backup failed", "Restore failed on web1"]
            assert t.notifications[1].alert_id is None
        finally:
            await agent.ws.close()
            await settle(control_plane, grant.host_id)


# -- the main window -------------------------------------------------------------


@pytest.fixture
async def window(ui: UiContext, qtbot: Any) -> AsyncIterator[MainWindow]:
    w = MainWindow(ui)
    qtbot.addWidget(w)
    # pytest-qt closes the window after the test: that close must not quit the app.
    w._quitting = True
    w.show()
    yield w
    await ui.runner.drain()


def nav_texts(w: MainWindow) -> list[str]:
    return [w.nav.item(i).text() for i in range(w.nav.count())]


async def test_navigation_counts_unresolved_alerts_and_a_click_opens_the_alert(
    control_plane: ControlPlane, ui: UiContext, window: MainWindow
) -> None:
    w = window
    await until(lambda: w.alert_counts is not None, what="the first count")
    assert nav_texts(w) == ["Fleet", "Alerts", "Audit log", "Settings"]
    web = await add_host(control_plane, "web1")
    a = await ui.alerts.fire("backup_failed", web, "Backup failed", key_suffix=1)
    b = await ui.alerts.fire("agent_offline", web, "web1 silent for 2 min")
    await until(lambda: w.alerts_item.text() == "Alerts (2)", what="two unresolved")
    # The worst severity's badge instead of the blank that keeps the items aligned.
    assert w.alerts_item.icon().cacheKey() != w._blank_icon().cacheKey()
    assert "2 open" in w.alerts_item.toolTip() and "critical" in w.alerts_item.toolTip()
    await ui.alerts.acknowledge([b.id], OPERATOR)
    await asyncio.sleep(0.4)
    assert w.alerts_item.text() == "Alerts (2)"  # acknowledged is still unresolved
    await ui.alerts.resolve([b.id], OPERATOR)
    await until(lambda: w.alerts_item.text() == "Alerts (1)", what="one unresolved")
    await ui.alerts.resolve([a.id], OPERATOR)
    await until(lambda: w.alerts_item.text() == "Alerts", what="none unresolved")
    assert w.alerts_item.icon().cacheKey() == w._blank_icon().cacheKey()
    assert w.alerts_item.toolTip() == "No unresolved alerts"

    # What the tray does when its notification is clicked.
    tray = Tray(ui, w, fleet=w.fleet.model)
    try:
        c = await ui.alerts.fire("check_failed", web, "Check failed: pack damaged")
        await until(lambda: tray.notifications, what="the notification")
        tray.message_clicked()
        assert w.current_page() is w.alerts
        assert w.nav.currentItem() is w.alerts_item
        await until(lambda: [x.id for x in w.alerts.selected_alerts()] == [c.id], what="selected")
        assert w.alerts.tabs.currentWidget() is w.alerts.tab[OPEN]
    finally:
        tray.stop()
        tray.menu.deleteLater()
        tray.deleteLater()

    # From a host page, the navigation still leads back (the current item is re-clicked).
    w.open_host(web)
    assert w.nav.currentItem().text() == "Fleet"
    w.show_alerts(a.id)
    assert w.current_page() is w.alerts
    w.show_audit()
    assert w.current_page() is w.audit and w.audit is not None
    w.show_settings()
    assert w.current_page() is w.settings_page and w.settings_page is not None
    w.show_fleet()
    assert w.current_page() is w.fleet
    await ui.runner.drain()
