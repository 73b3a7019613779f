"""The audit log view against the real embedded control plane: entries written
by real services and by ``server_core.audit.record`` into the real store, read
back through AuditService; filters, sorting, details, paging, live refresh and
CSV export driven through the widgets.

Waits are bounded asyncio polls (never qtbot.waitUntil in an async test)."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QAbstractItemView, QFileDialog, QPushButton

from server_core import audit
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.gui import RecordingNavigator, until
from ui_qt.audit_model import ENTRY_ROLE, Column
from ui_qt.audit_view import AuditView
from ui_qt.context import UiContext

NOW = time.time()


async def settled(view: AuditView) -> None:
    """The view asked for its rows and shows the answer (no query in flight)."""
    await until(lambda: not view._loading and not view._typing.isActive(), "the query")
    await until(lambda: view.ctx.runner.pending() == 0, "pending reads")


def shown(view: AuditView, col: int = Column.ACTION) -> list[str]:
    return [view.proxy.index(r, col).data() for r in range(view.proxy.rowCount())]


def shown_ids(view: AuditView) -> list[int]:
    return [view.proxy.index(r, 0).data(ENTRY_ROLE).id for r in range(view.proxy.rowCount())]


async def seed(cp: ControlPlane, rows: list[dict[str, Any]]) -> None:
    def run() -> None:
        for row in rows:
            audit.record(**row)

    await cp.store.transaction(run)


STANDARD = [
    # Oldest first; ts relative to NOW.
    dict(
        actor_kind="operator",
        action="host.created",
        target_kind="host",
        target_id=1,
        payload={"hostname": "web1"},
        ts=NOW - 40 * 86400,
    ),
    dict(
        actor_kind="agent",
        actor_id="web1",
        action="job.finished",
        target_kind="job",
        target_id="j-1",
        payload={"status": "failed", "error": "wrong password"},
        ts=NOW - 3 * 86400,
    ),
    dict(
        actor_kind="system",
        action="alert.raised",
        target_kind="alert",
        target_id=7,
        payload={"kind": "backup_failed", "message": "web1: repository password is wrong"},
        ts=NOW - 2 * 3600,
    ),
    dict(
        actor_kind="api",
        actor_id="ci",
        action="host.tags_updated",
        target_kind="host",
        target_id=2,
        payload={"before": [], "after": ["prod", "café"]},
        ts=NOW - 600,
    ),
    dict(
        actor_kind="operator",
        action="alert.acknowledged",
        target_kind="alert",
        target_id=7,
        payload={"note": "looking"},
        ts=NOW - 60,
    ),
]


@pytest.fixture
async def views(ui: UiContext) -> AsyncIterator[list[AuditView]]:
    made: list[AuditView] = []
    yield made
    for view in made:
        if shiboken6.isValid(view):
            view.hide()
            view.deleteLater()
    await ui.runner.drain()
    await asyncio.sleep(0)


async def open_view(
    ui: UiContext, qtbot, views: list[AuditView], **kwargs: Any
) -> tuple[AuditView, RecordingNavigator]:
    nav = RecordingNavigator()
    view = AuditView(ui, nav, **kwargs)
    qtbot.addWidget(view)
    views.append(view)
    view.resize(1300, 700)
    view.show()
    await settled(view)
    return view, nav


# -- filters -------------------------------------------------------------------------


async def test_default_range_is_the_last_day_newest_first_with_the_payload_shown(
    qtbot, ui, control_plane, views
):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    assert shown(view) == ["alert.acknowledged", "host.tags_updated", "alert.raised"]
    assert view.status.text().startswith("3 entries")
    assert "updating live" in view.status.text()
    # The newest is selected and its payload is pretty JSON in a monospace pane.
    assert json.loads(view.payload_text()) == {"note": "looking"}
    assert view.payload.font().fixedPitch() or "mono" in view.payload.font().family().lower()
    view.select_entry(shown_ids(view)[1])
    text = view.payload_text()
    assert json.loads(text) == {"after": ["prod", "café"], "before": []}
    assert '\n  "after": [' in text and "café" in text
    assert "API · ci" in view.details_header.text()


async def test_each_filter_narrows_the_rows(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    view.set_preset("all")
    await settled(view)
    assert len(shown(view)) == 5

    view.set_actor("agent")
    await settled(view)
    assert shown(view) == ["job.finished"]
    view.set_actor(None)

    # The action combo lists what the log holds, with a prefix entry per family.
    await until(lambda: "alert." in view.action_values(), "the action list")
    assert {"host.created", "job.finished", "alert.raised", "host."} <= set(view.action_values())
    view.set_action("alert.")
    await settled(view)
    assert shown(view) == ["alert.acknowledged", "alert.raised"]
    view.set_action("alert.raised")
    await settled(view)
    assert shown(view) == ["alert.raised"]
    view.set_action(None)
    await settled(view)

    qtbot.keyClicks(view.target, "host:2")
    await settled(view)
    assert shown(view) == ["host.tags_updated"]
    view.target.setText("host")
    await settled(view)
    assert shown(view) == ["host.tags_updated", "host.created"]
    view.target.clear()

    # Free text: over payloads too, after a short pause in typing.
    qtbot.keyClicks(view.text, "wrong password")
    assert view._typing.isActive()
    await settled(view)
    assert shown(view) == ["job.finished"]
    view.text.setText("CAFÉ".lower())
    await settled(view)
    assert shown(view) == ["host.tags_updated"]


async def test_time_presets_and_a_custom_range(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    view.set_preset("hour")
    await settled(view)
    assert shown(view) == ["alert.acknowledged", "host.tags_updated"]
    view.set_preset("week")
    await settled(view)
    assert len(shown(view)) == 4
    view.set_preset("month")
    await settled(view)
    assert len(shown(view)) == 4
    view.set_preset("all")
    await settled(view)
    assert len(shown(view)) == 5

    # Custom: the from/to pickers appear; a closed range is not followed live.
    view.set_custom_range(NOW - 4 * 86400, NOW - 3600)
    await settled(view)
    assert view.from_edit.isVisible() and view.to_edit.isVisible()
    assert shown(view) == ["alert.raised", "job.finished"]
    assert not view.is_live()
    assert "updating live" not in view.status.text()

    # A reversed range is refused at the filter bar, naming what to do.
    view.to_edit.setDateTime(view.from_edit.dateTime().addDays(-1))
    view.apply_filters()
    assert "ends before it starts" in view.filter_error.text()
    assert view.filter_error.isVisible()


async def test_a_malformed_target_is_refused_before_querying(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    fetches = view.fetches
    qtbot.keyClicks(view.target, "host 3")
    await until(lambda: view.filter_error.isVisible(), "the target error")
    assert '"host:3"' in view.filter_error.text()
    assert view.fetches == fetches
    assert len(shown(view)) == 3  # what was shown stays


async def test_empty_log_and_no_match_states(qtbot, ui, control_plane, views):
    # A control plane just started has logged nothing.
    view, _ = await open_view(ui, qtbot, views)
    assert view.empty_text() == "Nothing recorded in the last 24 hours."
    assert view.empty_clear.isVisible() and view.empty_clear.text() == "Show all time"
    qtbot.mouseClick(view.empty_clear, Qt.MouseButton.LeftButton)
    await settled(view)
    assert view.preset.currentData() == "all"
    assert view.empty_text().startswith("Nothing recorded yet.")
    assert not view.empty_clear.isVisible()
    assert view.status.text().startswith("0 entries")

    await seed(control_plane, STANDARD)
    view.reload()
    await settled(view)
    assert view.empty_text() == "" and len(shown(view)) == 5
    qtbot.keyClicks(view.text, "zz-no-such-thing-zz")
    await settled(view)
    assert view.empty_text() == "No entries match these filters."
    assert view.empty_clear.isVisible() and view.empty_clear.text() == "Clear filters"
    assert view.details_header.text() == "Select an entry to see its details."
    assert view.payload_text() == ""
    qtbot.mouseClick(view.empty_clear, Qt.MouseButton.LeftButton)
    await settled(view)
    assert view.text.text() == ""
    assert view.preset.currentData() == "day"
    assert len(shown(view)) == 3


# -- sorting, details, navigation ---------------------------------------------------


async def test_columns_sort_by_clicking_the_header(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    view.set_preset("all")
    await settled(view)
    header = view.table.horizontalHeader()

    def click(col: int) -> None:
        x = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, 5))

    click(Column.ACTION)
    assert shown(view) == sorted(shown(view))
    first = shown(view)[0]
    click(Column.ACTION)
    assert shown(view) == sorted(shown(view), reverse=True)
    assert shown(view)[-1] == first
    click(Column.TIME)
    times = [view.proxy.index(r, 0).data(ENTRY_ROLE).ts for r in range(view.proxy.rowCount())]
    assert times == sorted(times) or times == sorted(times, reverse=True)
    assert len(set(shown(view, Column.ACTOR))) == 4


async def test_double_click_opens_the_host_or_job_an_entry_names(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, nav = await open_view(ui, qtbot, views)
    view.set_preset("all")
    await settled(view)
    by_action = {view.proxy.index(r, 0).data(ENTRY_ROLE).action: r for r in range(5)}

    view.table.selectRow(by_action["host.tags_updated"])
    assert view.open_target_button.isVisible()
    assert view.open_target_button.text() == "Open host 2"
    view.table.doubleClicked.emit(view.proxy.index(by_action["host.tags_updated"], 0))
    assert nav.calls == [("open_host", 2)]
    view.table.selectRow(by_action["job.finished"])
    qtbot.mouseClick(view.open_target_button, Qt.MouseButton.LeftButton)
    assert nav.calls[1:] == [("open_job", "j-1")]
    view.table.selectRow(by_action["alert.raised"])
    assert not view.open_target_button.isVisible()


async def test_nothing_in_the_view_can_edit_or_delete_an_entry(qtbot, ui, control_plane, views):
    await seed(control_plane, STANDARD)
    view, _ = await open_view(ui, qtbot, views)
    assert view.table.editTriggers() == QAbstractItemView.EditTrigger.NoEditTriggers
    index = view.proxy.index(0, Column.ACTION)
    assert not (view.proxy.flags(index) & Qt.ItemFlag.ItemIsEditable)
    labels = [b.text().lower() for b in view.findChildren(QPushButton)]
    assert not [t for t in labels if "delete" in t or "edit" in t or "remove" in t]
    assert not view.table.actions() and not view.actions()
    assert view.payload.isReadOnly()


# -- paging and live ------------------------------------------------------------------


async def test_load_older_pages_through_everything_once(qtbot, ui, control_plane, views):
    rows = [
        dict(
            actor_kind="system",
            action="test.bulk",
            target_kind="host",
            target_id=i,
            payload={"i": i},
            ts=NOW - 1000 + i,
        )
        for i in range(23)
    ]
    await seed(control_plane, rows)
    view, _ = await open_view(ui, qtbot, views, page_size=10)
    view.set_action("test.bulk")
    await settled(view)
    assert len(shown(view)) == 10
    assert view.has_more() and view.load_older_button.isEnabled()
    assert "older entries match too" in view.status.text()
    selected = view.selected_entry()
    qtbot.mouseClick(view.load_older_button, Qt.MouseButton.LeftButton)
    await settled(view)
    assert len(shown(view)) == 20
    assert view.selected_entry() == selected  # appending keeps the selection
    view.load_older()
    await settled(view)
    ids = shown_ids(view)
    assert len(ids) == 23 == len(set(ids))
    assert not view.has_more() and not view.load_older_button.isEnabled()
    payloads = sorted(view.proxy.index(r, 0).data(ENTRY_ROLE).payload["i"] for r in range(23))
    assert payloads == list(range(23))


async def test_new_entries_appear_live_on_top_without_losing_the_selection(
    qtbot, ui, control_plane, views
):
    await seed(control_plane, STANDARD)
    new = parse_new_host(
        {
            "hostname": "live1",
            "repository": {"url": "/srv/restic/live1", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    grant = await ui.enrolment.add_host(new, OPERATOR)
    view, _ = await open_view(ui, qtbot, views)
    view.set_action("host.")
    await settled(view)
    before = shown(view)
    view.table.selectRow(len(before) - 1)
    selected = view.selected_entry()
    fetches = view.fetches

    # A real change through a service: audited, and announced on the bus.
    await ui.hosts.set_tags(grant.host_id, ["live", "e2e"], OPERATOR)
    await until(lambda: len(shown(view)) == len(before) + 1, "the live entry")
    assert shown(view)[0] == "host.tags_updated"
    assert view.selected_entry() == selected
    # A burst of changes costs a throttled refresh or two, not one per change.
    for i in range(5):
        await ui.hosts.set_tags(grant.host_id, [f"t{i}"], OPERATOR)
    await until(lambda: len(shown(view)) == len(before) + 6, "the burst")
    await settled(view)
    assert view.fetches - fetches <= 4

    # An entry that does not match the filters does not appear.
    await seed(control_plane, [dict(actor_kind="system", action="job.queued", ts=time.time())])
    await ui.hosts.set_tags(grant.host_id, ["last"], OPERATOR)
    await until(lambda: len(shown(view)) == len(before) + 7, "the last tag change")
    assert "job.queued" not in shown(view)


async def test_a_hidden_view_catches_up_when_shown_again(qtbot, ui, control_plane, views):
    new = parse_new_host(
        {
            "hostname": "away1",
            "repository": {"url": "/srv/restic/away1", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    grant = await ui.enrolment.add_host(new, OPERATOR)
    view, _ = await open_view(ui, qtbot, views)
    count = len(shown(view))
    view.hide()  # another page is shown
    fetches = view.fetches
    await ui.hosts.set_tags(grant.host_id, ["hidden"], OPERATOR)
    ui.bridge.flush()
    await asyncio.sleep(0.05)
    assert not view._live_timer.isActive()
    assert view.fetches == fetches  # no query while nobody looks
    view.show()
    await until(lambda: len(shown(view)) == count + 1, "the catch-up")
    assert shown(view)[0] == "host.tags_updated"


async def test_a_closed_custom_range_is_not_refreshed(qtbot, ui, control_plane, views):
    new = parse_new_host(
        {
            "hostname": "still1",
            "repository": {"url": "/srv/restic/still1", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    grant = await ui.enrolment.add_host(new, OPERATOR)
    view, _ = await open_view(ui, qtbot, views)
    view.set_custom_range(NOW - 86400, NOW + 3600)
    await settled(view)
    count, fetches = len(shown(view)), view.fetches
    await ui.hosts.set_tags(grant.host_id, ["x"], OPERATOR)
    ui.bridge.flush()
    await asyncio.sleep(0.05)
    assert not view._live_timer.isActive()
    assert (len(shown(view)), view.fetches) == (count, fetches)


# -- CSV --------------------------------------------------------------------------------


async def test_csv_export_through_the_file_dialog_writes_every_match(
    qtbot, ui, control_plane, views, tmp_path: Path
):
    rows = [
        dict(
            actor_kind="operator",
            action="test.export",
            target_kind="host",
            target_id=i,
            payload={"i": i, "note": "=cmd()" if i == 0 else f"line\nbreak {i}"},
            ts=NOW - 100 + i,
        )
        for i in range(12)
    ]
    await seed(control_plane, [*rows, dict(actor_kind="system", action="test.other", ts=NOW)])
    view, _ = await open_view(ui, qtbot, views, page_size=5)
    view.set_action("test.export")
    await settled(view)
    assert len(shown(view)) == 5  # one page shown; the export has them all

    dialog = view.export_csv()
    assert isinstance(dialog, QFileDialog)
    assert dialog.isVisible() and dialog.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    target = tmp_path / "out" / "audit.csv"
    target.parent.mkdir()
    done = asyncio.get_running_loop().create_future()
    view.exported.connect(lambda p: done.done() or done.set_result(p))
    dialog.selectFile(str(target))
    dialog.accept()
    assert await asyncio.wait_for(done, 10) == str(target)

    with target.open(newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 12
    assert {r["action"] for r in records} == {"test.export"}
    assert sorted(json.loads(r["payload"])["i"] for r in records) == list(range(12))
    assert "Exported 12 entries" in view.export_status.text()
    assert not (tmp_path / "out" / "audit.csv.part").exists()
    assert view.export_button.isEnabled()


async def test_a_failed_export_says_so_and_leaves_no_file(
    qtbot, ui, control_plane, views, tmp_path: Path
):
    view, _ = await open_view(ui, qtbot, views)
    target = tmp_path / "missing-dir" / "audit.csv"
    view.export_to(target)
    await until(lambda: view.error.isVisible(), "the export error")
    assert "Could not export" in view.error.text() and str(target) in view.error.text()
    assert not target.exists()
    assert view.export_button.isEnabled()
