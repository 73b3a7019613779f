"""The Alerts view and the main window's navigation, on a real control plane.

Alerts are raised, re-fired, acknowledged and resolved through the real
AlertService; the view follows through the event bridge like in the app.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox

from server_core.control_plane import ControlPlane
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from tests.helpers.gui import RecordingNavigator, add_host, until
from ui_qt.alerts_model import ACKNOWLEDGED, OPEN, RESOLVED, Column
from ui_qt.alerts_view import AlertsView
from ui_qt.context import UiContext


@pytest.fixture
async def view(ui: UiContext, qtbot: Any) -> AsyncIterator[tuple[AlertsView, RecordingNavigator]]:
    nav = RecordingNavigator()
    v = AlertsView(ui, nav)
    qtbot.addWidget(v)
    v.resize(1100, 600)
    v.show()
    await until(v.model.loaded, what="the first load")
    yield v, nav


def select_rows(v: AlertsView, status: str, alert_ids: list[int]) -> None:
    v.tabs.setCurrentWidget(v.tab[status])
    tab = v.tab[status]
    sel = tab.table.selectionModel()
    sel.clearSelection()
    for row in range(tab.proxy.rowCount()):
        if tab.proxy.alert_id(row) in alert_ids:
            sel.select(
                tab.proxy.index(row, 0),
                QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
            )


def cell(v: AlertsView, status: str, alert_id: int, column: Column) -> Any:
    proxy = v.tab[status].proxy
    for row in range(proxy.rowCount()):
        if proxy.alert_id(row) == alert_id:
            return proxy.index(row, int(column)).data()
    raise AssertionError(f"alert {alert_id} is not on the {status} tab")


def tab_titles(v: AlertsView) -> list[str]:
    return [v.tabs.tabText(i) for i in range(v.tabs.count())]


async def test_empty_tabs_each_say_why(view: tuple[AlertsView, RecordingNavigator]) -> None:
    v, _nav = view
    assert tab_titles(v) == ["Open (0)", "Acknowledged (0)", "Resolved"]
    texts = {}
    for status in (OPEN, ACKNOWLEDGED, RESOLVED):
        v.tabs.setCurrentWidget(v.tab[status])
        assert v.tab[status].showing_empty()
        texts[status] = v.tab[status].empty.text()
    assert "No open alerts" in texts[OPEN] and "within seconds" in texts[OPEN]
    assert "Acknowledge an open alert" in texts[ACKNOWLEDGED]
    assert "resolve themselves" in texts[RESOLVED]
    assert not v.ack_button.isEnabled() and not v.resolve_button.isEnabled()
    assert v.summary.text() == "No unresolved alerts"


async def test_alerts_arrive_live_and_a_refire_updates_the_row_in_place(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, _nav = view
    web = await add_host(control_plane, "web1")
    db = await add_host(control_plane, "db1")
    failed = await ui.alerts.fire(
        "backup_failed", web, "Backup of 'etc' failed: wrong password", key_suffix=1
    )
    offline = await ui.alerts.fire("agent_offline", db, "db1 has not been seen for 2 min")
    await until(lambda: len(v.ids_in(OPEN)) == 2, what="both alerts on the Open tab")
    assert not v.tab[OPEN].showing_empty()
    assert tab_titles(v) == ["Open (2)", "Acknowledged (0)", "Resolved"]
    assert cell(v, OPEN, failed.id, Column.SEVERITY) == "Critical"
    assert cell(v, OPEN, failed.id, Column.KIND) == "Backup failed"
    assert cell(v, OPEN, failed.id, Column.HOST) == "web1"
    assert cell(v, OPEN, offline.id, Column.SEVERITY) == "Warning"
    assert cell(v, OPEN, offline.id, Column.COUNT) == "1"

    select_rows(v, OPEN, [offline.id])
    resets: list[bool] = []
    v.model.modelReset.connect(lambda: resets.append(True))
    fetches = v.loader.fetches
    for _ in range(3):
        await ui.alerts.fire("agent_offline", db, "db1 has not been seen for 5 min")
    await until(lambda: cell(v, OPEN, offline.id, Column.COUNT) == "4", what="the count bump")
    assert cell(v, OPEN, offline.id, Column.MESSAGE) == "db1 has not been seen for 5 min"
    assert resets == []  # updated in place
    assert v.loader.fetches - fetches <= 2  # coalesced, not one read per re-fire
    assert [a.id for a in v.selected_alerts()] == [offline.id]  # the selection survived
    assert v.ids_in(OPEN) == [offline.id, failed.id]  # newest last seen first


async def test_multi_select_acknowledge_then_resolve(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, _nav = view
    web = await add_host(control_plane, "web1")
    a = await ui.alerts.fire("backup_failed", web, "Backup failed", key_suffix=1)
    b = await ui.alerts.fire("check_failed", web, "Check failed: pack 3f2a is damaged")
    c = await ui.alerts.fire("stale_backup", web, "No successful backup for 3 days")
    await until(lambda: len(v.ids_in(OPEN)) == 3, what="three open alerts")

    select_rows(v, OPEN, [])
    assert not v.ack_button.isEnabled() and not v.resolve_button.isEnabled()
    select_rows(v, OPEN, [a.id, b.id])
    assert v.ack_button.isEnabled() and v.resolve_button.isEnabled()
    assert v.ack_button.text() == "Acknowledge (2)"
    QTest.mouseClick(v.ack_button, Qt.MouseButton.LeftButton)
    await until(lambda: sorted(v.ids_in(ACKNOWLEDGED)) == sorted([a.id, b.id]), what="acked")
    assert v.ids_in(OPEN) == [c.id]
    assert tab_titles(v) == ["Open (1)", "Acknowledged (2)", "Resolved"]
    assert {x.status for x in await ui.alerts.list_alerts(status=ACKNOWLEDGED)} == {ACKNOWLEDGED}

    # On the Acknowledged tab only Resolve applies.
    select_rows(v, ACKNOWLEDGED, [b.id])
    assert not v.ack_button.isEnabled() and v.resolve_button.isEnabled()
    QTest.mouseClick(v.resolve_button, Qt.MouseButton.LeftButton)
    await until(lambda: v.ids_in(RESOLVED) == [b.id], what="b resolved")
    assert (await ui.alerts.get_alert(b.id)).status == RESOLVED
    select_rows(v, RESOLVED, [b.id])
    assert not v.ack_button.isEnabled() and not v.resolve_button.isEnabled()
    assert v.open_host_button.isEnabled()
    # Both actions are audited by the service.
    entries = await control_plane.store.call(lambda: list_audit(action=None, limit=50))
    actions = [e.action for e in entries]
    assert "alert.acknowledged" in actions and "alert.resolved" in actions


async def test_a_failed_action_shows_an_error_and_rereads(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, _nav = view
    web = await add_host(control_plane, "web1")
    a = await ui.alerts.fire("backup_failed", web, "Backup failed", key_suffix=1)
    await until(lambda: v.ids_in(OPEN) == [a.id], what="the alert")
    select_rows(v, OPEN, [a.id])
    # Resolved elsewhere (the API) a moment before the operator's click: the
    # view has not heard yet, the service refuses, the operator is told.
    await ui.alerts.resolve([a.id], OPERATOR)
    assert v.ack_button.isEnabled()
    v.acknowledge_selected()
    box = await until(
        lambda: next((w for w in v.findChildren(QMessageBox) if w.isVisible()), None),
        what="the error dialog",
    )
    assert box.windowTitle() == "Could not finish acknowledging alerts"
    assert "already resolved" in box.text()
    box.close()
    await until(lambda: v.ids_in(RESOLVED) == [a.id], what="the re-read")
    assert v.ids_in(OPEN) == []


async def test_deleting_a_host_drops_its_alerts_in_place(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, _nav = view
    web = await add_host(control_plane, "web1")
    db = await add_host(control_plane, "db1")
    await ui.alerts.fire("backup_failed", web, "Backup failed", key_suffix=1)
    kept = await ui.alerts.fire("agent_offline", db, "db1 has not been seen for 2 min")
    old = await ui.alerts.fire("check_failed", web, "Check failed: pack 3f2a is damaged")
    await ui.alerts.resolve([old.id], OPERATOR)
    await until(
        lambda: len(v.ids_in(OPEN)) == 2 and v.ids_in(RESOLVED) == [old.id], what="the alerts"
    )
    await until(lambda: not v.loader.busy, what="the reads to finish")
    fetches = v.loader.fetches
    resets: list[bool] = []
    v.model.modelReset.connect(lambda: resets.append(True))

    await control_plane.hosts.delete_host(web, OPERATOR)
    await until(lambda: v.ids_in(OPEN) == [kept.id], what="web1's alerts gone")
    assert v.ids_in(RESOLVED) == []
    assert tab_titles(v) == ["Open (1)", "Acknowledged (0)", "Resolved"]
    assert [a.id for a in await ui.alerts.list_alerts(status=None)] == [kept.id]
    # Dropped from the rows the view holds: no read, no reset.
    assert v.loader.fetches == fetches and resets == []


async def test_select_alert_opens_its_tab_and_double_click_opens_the_host(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, nav = view
    web = await add_host(control_plane, "web1")
    a = await ui.alerts.fire("prune_failed", web, "Prune failed: repository is locked")
    await ui.alerts.fire("agent_offline", web, "web1 has not been seen for 2 min")
    await ui.alerts.resolve([a.id], OPERATOR)
    await until(lambda: v.ids_in(RESOLVED) == [a.id], what="the resolved alert")
    v.tabs.setCurrentWidget(v.tab[OPEN])
    v.select_alert(a.id)
    assert v.tabs.currentWidget() is v.tab[RESOLVED]
    assert [x.id for x in v.selected_alerts()] == [a.id]
    table = v.tab[RESOLVED].table
    index = table.currentIndex()
    rect = table.visualRect(index)
    # A press first: Qt's item views act on a double-click of the pressed index.
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert nav.calls[-1] == ("open_host", web)

    # An alert the view has not listed yet (raised a moment ago) is read and selected.
    fresh = await ui.alerts.fire("update_failed", web, "Agent update failed")
    v.select_alert(fresh.id)
    await until(lambda: [x.id for x in v.selected_alerts()] == [fresh.id], what="fresh")
    assert v.tabs.currentWidget() is v.tab[OPEN]


async def test_relative_times_tick(
    control_plane: ControlPlane, ui: UiContext, view: tuple[AlertsView, RecordingNavigator]
) -> None:
    v, _nav = view
    web = await add_host(control_plane, "web1")
    a = await ui.alerts.fire("backup_failed", web, "Backup failed", key_suffix=1)
    await until(lambda: v.ids_in(OPEN) == [a.id], what="the alert")
    assert cell(v, OPEN, a.id, Column.LAST_SEEN) == "just now"
    later = time.time() + 2 * 3600
    v.model._now = lambda: later
    painted: list[tuple[int, int]] = []
    v.model.dataChanged.connect(lambda tl, br, _r: painted.append((tl.column(), br.column())))
    v.model.tick()
    assert painted == [(int(Column.FIRST_SEEN), int(Column.CHANGED))]
    assert cell(v, OPEN, a.id, Column.LAST_SEEN) == "2 h ago"
