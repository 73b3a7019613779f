"""The fleet view against a real embedded control plane (offscreen widgets, qasync loop).

Waiting is done by polling with ``asyncio.sleep`` (never qtbot.waitUntil in
an async test: it blocks the shared loop and teardown hangs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PySide6.QtCore import QPoint, Qt

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.views import HostView
from tests.e2e.screenshot_fleet import render_async
from tests.helpers.fake_agent import FakeAgent, enrol
from ui_qt.context import UiContext
from ui_qt.fleet_model import Column
from ui_qt.fleet_view import FULL_READ_ABOVE, FleetView


class FakeNavigator:
    def __init__(self) -> None:
        self.opened: list[int] = []
        self.adds = 0

    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None:
        self.opened.append(host_id)

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None:
        self.adds += 1


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def add_host(ui: UiContext, name: str, tags: list[str] | None = None) -> tuple[int, str]:
    grant = await ui.enrolment.add_host(
        parse_new_host(
            {
                "hostname": name,
                "repository": {"url": "/srv/restic/" + name, "password": "hunter2hunter2"},
                "tags": tags or [],
            }
        ),
        OPERATOR,
    )
    return grant.host_id, grant.token


async def connect(
    cp: ControlPlane, session: aiohttp.ClientSession, token: str, name: str
) -> FakeAgent:
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, name)
    return await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])


async def open_view(ui: UiContext, qtbot: Any, nav: FakeNavigator | None = None) -> FleetView:
    view = FleetView(ui, nav or FakeNavigator())
    qtbot.addWidget(view)
    view.resize(1100, 600)
    view.show()
    await until(lambda: view.model.loaded() and not view.refreshing(), "the first load")
    return view


def names(view: FleetView) -> list[str]:
    col = int(Column.NAME)
    return [view.proxy.index(r, col).data() for r in range(view.proxy.rowCount())]


def cell(view: FleetView, host_id: int, column: Column) -> Any:
    row = view.model.row_of(host_id)
    assert row is not None, f"host {host_id} is not in the table"
    return view.model.index(row, int(column)).data()


async def test_a_host_appears_and_changes_state_in_place(ui, control_plane, session, qtbot):
    view = await open_view(ui, qtbot)
    resets: list[int] = []
    changed: list[tuple[int, int]] = []
    inserted: list[tuple[int, int]] = []
    view.model.modelReset.connect(lambda: resets.append(1))
    view.model.dataChanged.connect(lambda tl, br, _roles=None: changed.append((tl.row(), br.row())))
    view.model.rowsInserted.connect(lambda _p, a, b: inserted.append((a, b)))

    host_id, token = await add_host(ui, "web-1", ["prod"])
    await until(lambda: view.model.rowCount() == 1, "the new host to appear")
    assert inserted == [(0, 0)]
    assert view.pages.currentWidget() is view.fleet_page
    assert cell(view, host_id, Column.STATUS) == "Never connected"
    assert view.tag_chips.tags() == ["prod"]
    assert view.tile_online.value() == "0 / 1"

    agent = await connect(control_plane, session, token, "web-1")
    await until(lambda: cell(view, host_id, Column.STATUS) == "Online", "the host to go online")
    assert cell(view, host_id, Column.PLATFORM) == "linux/amd64"
    assert cell(view, host_id, Column.AGENT) == "0.0.1"
    assert view.tile_online.value() == "1 / 1"
    assert (0, 0) in changed

    changed.clear()
    mid = await agent.send(p.RepoStatsReport(collected_at=time.time(), total_size=3 * 1024**3))
    await agent.acked({mid})
    await until(lambda: cell(view, host_id, Column.SIZE) == "3.0 GiB", "the repo size")
    assert changed and all(c == (0, 0) for c in changed)

    await agent.ws.close()
    await until(lambda: cell(view, host_id, Column.STATUS) == "Offline", "the host to go offline")
    assert resets == [], "updates must never reset the model"
    assert inserted == [(0, 0)]


async def test_a_deleted_host_disappears_without_a_reload(ui, qtbot):
    keep, _ = await add_host(ui, "keep")
    gone, _ = await add_host(ui, "gone")
    view = await open_view(ui, qtbot)
    assert sorted(names(view)) == ["gone", "keep"]
    resets: list[int] = []
    view.model.modelReset.connect(lambda: resets.append(1))
    await ui.hosts.delete_host(gone, OPERATOR)
    await until(lambda: view.model.rowCount() == 1, "the deleted host to go")
    assert names(view) == ["keep"] and view.model.row_of(keep) == 0
    assert resets == []


async def test_filters_narrow_rows_and_persist(ui, control_plane, session, qtbot):
    _, token = await add_host(ui, "alpha", ["prod", "web"])
    await add_host(ui, "beta", ["prod", "db"])
    await add_host(ui, "gamma", ["staging"])
    agent = await connect(control_plane, session, token, "alpha")
    view = await open_view(ui, qtbot)
    await until(lambda: view.tile_online.value() == "1 / 3", "alpha online")
    assert names(view) == ["alpha", "beta", "gamma"]
    assert view.tag_chips.tags() == ["db", "prod", "staging", "web"]

    qtbot.keyClicks(view.filter_edit, "ET")
    assert names(view) == ["beta"]
    assert view.count_label.text() == "Showing 1 of 3"
    view.filter_edit.clear()

    view.status_combo.setCurrentIndex(view.status_combo.findData("online"))
    assert names(view) == ["alpha"]
    view.status_combo.setCurrentIndex(view.status_combo.findData("never"))
    assert names(view) == ["beta", "gamma"]

    chip = view.tag_chips.chip("prod")
    assert chip is not None
    qtbot.mouseClick(chip, Qt.MouseButton.LeftButton)
    assert names(view) == ["beta"]

    qtbot.keyClicks(view.filter_edit, "zzz")
    assert names(view) == [] and not view.no_match.isHidden()
    view.filter_edit.clear()
    assert view.no_match.isHidden()

    view.table.sortByColumn(int(Column.NAME), Qt.SortOrder.DescendingOrder)
    state = view.filter_state()
    assert state["status"] == "never" and state["tags"] == ["prod"]

    # A new view over the same settings (the next launch) restores everything.
    again = await open_view(ui, qtbot)
    assert again.filter_state() == state
    assert again.tag_chips.chip("prod") is not None
    assert again.tag_chips.chip("prod").isChecked()  # type: ignore[union-attr]
    assert names(again) == ["beta"]
    again.tag_chips.clear_selection()
    again.status_combo.setCurrentIndex(again.status_combo.findData("all"))
    assert names(again) == ["gamma", "beta", "alpha"]  # descending, as saved
    await agent.ws.close()


async def test_clear_filters_and_live_rows_respect_the_filter(ui, qtbot):
    await add_host(ui, "web-1", ["web"])
    view = await open_view(ui, qtbot)
    qtbot.keyClicks(view.filter_edit, "web")
    await add_host(ui, "db-1", ["db"])
    await add_host(ui, "web-2", ["web"])
    await until(lambda: view.model.rowCount() == 3, "both new hosts")
    assert names(view) == ["web-1", "web-2"]
    view.clear_filters()
    assert names(view) == ["db-1", "web-1", "web-2"]
    assert ui.settings.value("fleet/filter_text") == ""


async def test_empty_state_explains_and_its_button_adds_a_host(ui, qtbot):
    nav = FakeNavigator()
    view = await open_view(ui, qtbot, nav)
    assert view.pages.currentWidget() is view.empty_page
    assert view.empty_page.isVisible() and not view.table.isVisible()
    assert view.empty_add_button.isVisible()
    assert ui.server_info().agent_url in view.empty_hint.text()
    qtbot.mouseClick(view.empty_add_button, Qt.MouseButton.LeftButton)
    assert nav.adds == 1

    await add_host(ui, "first")
    await until(lambda: view.pages.currentWidget() is view.fleet_page, "the table to replace it")
    assert view.table.isVisible()
    qtbot.mouseClick(view.add_button, Qt.MouseButton.LeftButton)
    assert nav.adds == 2


async def test_sorting_by_repo_size_is_numeric(ui, control_plane, session, qtbot):
    sizes = {"small": 900, "huge": 5 * 1024**3, "medium": 20 * 1024**2, "tiny": 3 * 1024}
    agents = []
    for name, size in sizes.items():
        _, token = await add_host(ui, name)
        agent = await connect(control_plane, session, token, name)
        mid = await agent.send(p.RepoStatsReport(collected_at=time.time(), total_size=size))
        await agent.acked({mid})
        agents.append(agent)
    view = await open_view(ui, qtbot)
    col = int(Column.SIZE)

    def shown() -> list[str]:
        return [view.proxy.index(r, col).data() for r in range(view.proxy.rowCount())]

    await until(lambda: "—" not in shown() and len(shown()) == 4, "all repo sizes")
    header = view.table.horizontalHeader()
    pos = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos, 5))
    if header.sortIndicatorOrder() != Qt.SortOrder.AscendingOrder:
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos, 5))
    assert header.sortIndicatorSection() == col
    assert shown() == ["900 B", "3.0 KiB", "20.0 MiB", "5.0 GiB"]
    assert names(view) == ["small", "tiny", "medium", "huge"]
    assert int(ui.settings.value("fleet/sort_column")) == col
    for agent in agents:
        await agent.ws.close()


async def test_a_locked_repository_counts_as_needing_attention(ui, control_plane, session, qtbot):
    _, token = await add_host(ui, "locked1")
    agent = await connect(control_plane, session, token, "locked1")
    view = await open_view(ui, qtbot)
    now = time.time()
    mids = {
        await agent.send(p.JobStarted("lockjob", 1, "backup", "schedule", now)),
        await agent.send(
            p.JobFinished(
                "lockjob",
                2,
                "failed",
                now + 1,
                error="repository is already locked",
                repo_status="locked",
            )
        ),
    }
    await agent.acked(mids)
    await until(
        lambda: "locked" in view.tile_repos.detail_label.text(), "the locked repo on the tile"
    )
    assert view.tile_repos.value() == "1"
    await agent.ws.close()


async def test_double_click_and_enter_open_the_host(ui, qtbot):
    a, _ = await add_host(ui, "aaa")
    b, _ = await add_host(ui, "bbb")
    nav = FakeNavigator()
    view = await open_view(ui, qtbot, nav)
    rect = view.table.visualRect(view.proxy.index(1, int(Column.NAME)))
    qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert nav.opened == [b]
    view.table.setCurrentIndex(view.proxy.index(0, int(Column.TAGS)))
    qtbot.keyClick(view.table, Qt.Key.Key_Return)
    assert nav.opened == [b, a]
    assert view.selected_host_id() == a


async def test_ctrl_f_focuses_the_filter(ui, qtbot):
    await add_host(ui, "one")
    view = await open_view(ui, qtbot)
    view.activateWindow()
    view.table.setFocus()
    await asyncio.sleep(0.05)
    qtbot.keyClick(view.table, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    await until(lambda: view.filter_edit.hasFocus(), "the filter box to take focus", 2)
    qtbot.keyClicks(view.filter_edit, "x")
    qtbot.keyClick(view.filter_edit, Qt.Key.Key_Escape)
    assert view.filter_edit.text() == ""


async def test_refreshes_coalesce_to_one_in_flight(ui, qtbot):
    calls: list[float] = []
    gate = asyncio.Event()

    class SlowHosts:
        async def list_hosts(self, host_ids: list[int] | None = None) -> list[HostView]:
            calls.append(time.monotonic())
            await gate.wait()
            return await ui.hosts.list_hosts(host_ids)

    ctx = dataclasses.replace(ui, hosts=SlowHosts())
    view = FleetView(ctx, FakeNavigator())
    qtbot.addWidget(view)
    try:
        await asyncio.sleep(0.05)
        for _ in range(5):
            view.reload()
        ui.bridge.hosts_changed.emit({1})
        await asyncio.sleep(0.05)
        assert len(calls) == 1, "one refresh in flight at a time"
    finally:
        gate.set()  # never leave a refresh hanging: fixture teardown drains the runner
    await until(lambda: len(calls) == 2 and not view.refreshing(), "exactly one follow-up")
    await asyncio.sleep(0.1)
    assert len(calls) == 2
    assert view.model.loaded()


async def test_a_failed_load_shows_an_error_and_f5_recovers(ui, qtbot):
    fail = [True]

    class FlakyHosts:
        async def list_hosts(self, host_ids: list[int] | None = None) -> list[HostView]:
            if fail[0]:
                raise RuntimeError("database is locked")
            return await ui.hosts.list_hosts(host_ids)

    await add_host(ui, "one")
    view = FleetView(dataclasses.replace(ui, hosts=FlakyHosts()), FakeNavigator())
    qtbot.addWidget(view)
    view.show()
    await until(lambda: not view.error_label.isHidden(), "the error")
    assert "database is locked" in view.error_label.text()
    fail[0] = False
    view.reload()
    await until(lambda: view.model.rowCount() == 1, "the retry")
    assert view.error_label.isHidden()


class RecordingHosts:
    """The real HostService, recording what each refresh asked for; with a
    gate, a refresh reads the database at once but delivers only when the
    gate opens (a slow refresh whose result is already stale)."""

    def __init__(self, real: Any, gate: asyncio.Event | None = None) -> None:
        self.real = real
        self.gate = gate
        self.asked: list[list[int] | None] = []
        self.fail = False

    async def list_hosts(self, host_ids: list[int] | None = None) -> list[HostView]:
        self.asked.append(None if host_ids is None else sorted(host_ids))
        if self.fail:
            raise RuntimeError("database is locked")
        rows = await self.real.list_hosts(host_ids)
        if self.gate is not None:
            await self.gate.wait()
        return rows  # type: ignore[no-any-return]


async def test_a_change_reads_only_the_changed_hosts(ui, qtbot):
    a, _ = await add_host(ui, "alpha")
    b, _ = await add_host(ui, "beta")
    await add_host(ui, "gamma")
    hosts = RecordingHosts(ui.hosts)
    view = await open_view(dataclasses.replace(ui, hosts=hosts), qtbot)
    await asyncio.sleep(0.3)  # the enrolment events, already covered by the first load
    del hosts.asked[:]

    await ui.hosts.set_tags(b, ["db"], OPERATOR)
    await until(lambda: cell(view, b, Column.TAGS) == "db", "the new tag")
    assert hosts.asked == [[b]]
    assert view.tag_chips.tags() == ["db"]

    d, _ = await add_host(ui, "delta")
    await until(lambda: view.model.rowCount() == 4, "the new host")
    assert hosts.asked[-1] == [d]
    assert cell(view, d, Column.NAME) == "delta"

    mark = len(hosts.asked)
    await ui.hosts.set_tags(a, ["web"], OPERATOR)
    await ui.hosts.set_tags(b, ["web"], OPERATOR)
    await until(lambda: cell(view, b, Column.TAGS) == "web", "both tags")
    assert cell(view, a, Column.TAGS) == "web"
    # Usually one refresh for the burst; never the whole fleet.
    burst = hosts.asked[mark:]
    assert None not in burst and sorted(i for ask in burst for i in ask or []) == [a, b]

    view.reload()  # F5: the whole fleet
    await until(lambda: not view.refreshing(), "the reload")
    assert hosts.asked[-1] is None and view.model.rowCount() == 4

    # Most of a big fleet at once (everyone went offline): one whole-fleet read.
    mark = len(hosts.asked)
    ui.bridge.hosts_changed.emit(set(range(1, FULL_READ_ABOVE + 2)))
    await until(lambda: len(hosts.asked) > mark and not view.refreshing(), "the big refresh")
    assert hosts.asked[mark:] == [None] and view.model.rowCount() == 4


async def test_a_host_deleted_while_a_refresh_is_in_flight_stays_gone(ui, qtbot):
    keep, _ = await add_host(ui, "keep")
    gone, _ = await add_host(ui, "gone")
    gate = asyncio.Event()
    gate.set()
    hosts = RecordingHosts(ui.hosts, gate)
    view = await open_view(dataclasses.replace(ui, hosts=hosts), qtbot)
    await asyncio.sleep(0.3)
    inserted: list[tuple[int, int]] = []
    view.model.rowsInserted.connect(lambda _p, a, b: inserted.append((a, b)))

    gate.clear()
    await ui.hosts.set_tags(gone, ["old"], OPERATOR)
    await until(lambda: view.refreshing(), "the refresh of 'gone' to start")
    await asyncio.sleep(0.1)  # it has read the row; its result waits at the gate
    await ui.hosts.delete_host(gone, OPERATOR)
    await until(lambda: view.model.row_of(gone) is None, "the deletion")
    gate.set()
    await until(lambda: not view.refreshing(), "the stale refresh to land")
    await asyncio.sleep(0.2)
    assert view.model.row_of(gone) is None, "the stale row came back"
    assert inserted == []
    assert names(view) == ["keep"] and view.model.row_of(keep) == 0


async def test_hosts_of_a_failed_refresh_are_read_with_the_next_one(ui, qtbot):
    a, _ = await add_host(ui, "alpha")
    b, _ = await add_host(ui, "beta")
    hosts = RecordingHosts(ui.hosts)
    view = await open_view(dataclasses.replace(ui, hosts=hosts), qtbot)
    await asyncio.sleep(0.3)

    hosts.fail = True
    await ui.hosts.set_tags(b, ["db"], OPERATOR)
    await until(lambda: not view.error_label.isHidden(), "the error")
    assert "database is locked" in view.error_label.text()
    hosts.fail = False
    await ui.hosts.set_tags(a, ["web"], OPERATOR)
    await until(lambda: cell(view, b, Column.TAGS) == "db", "the missed change")
    assert cell(view, a, Column.TAGS) == "web"
    assert hosts.asked[-1] == [a, b]
    assert view.error_label.isHidden()


async def test_hosts_whose_next_run_passed_are_read_again(ui, qtbot):
    a, _ = await add_host(ui, "alpha")
    b, _ = await add_host(ui, "beta")
    hosts = RecordingHosts(ui.hosts)
    view = await open_view(dataclasses.replace(ui, hosts=hosts), qtbot)
    await asyncio.sleep(0.3)
    del hosts.asked[:]
    # As the table would hold it an hour after the last refresh of alpha.
    stale = dataclasses.replace(view.model.host(a), next_run_at=time.time() - 60)  # type: ignore[arg-type]
    view.model.apply([stale], only={a})
    assert cell(view, a, Column.NEXT_RUN) == "due"

    view.refresh_due()
    await until(lambda: hosts.asked and not view.refreshing(), "the refresh")
    assert hosts.asked == [[a]]
    # No schedule: the server says there is no next run.
    assert cell(view, a, Column.NEXT_RUN) == "—"
    assert view.model.host(b) is not None


class FixedHosts:
    """A fleet of synthetic rows (no database): for layout tests only."""

    def __init__(self, views: list[HostView]) -> None:
        self.views = views

    async def list_hosts(self, host_ids: list[int] | None = None) -> list[HostView]:
        return [v for v in self.views if host_ids is None or v.id in host_ids]


def synthetic_fleet(count: int, last_name: str) -> list[HostView]:
    now = time.time()
    return [
        HostView(
            id=i,
            name=last_name if i == count else f"h{i:04d}",
            status="online",
            enrolled=True,
            os="linux",
            arch="amd64",
            agent_version="0.1.0",
            restic_version="0.18.0",
            last_seen_at=now,
            last_backup_at=None,
            last_backup_status=None,
            repo_status="ready",
            repo_status_error=None,
            snapshot_count=0,
            repo_size_bytes=None,
            open_alerts=0,
            tags=[],
            presence_mode="always_on",
            created_at=now,
        )
        for i in range(1, count + 1)
    ]


async def test_columns_are_sized_from_the_rows_on_screen(ui, qtbot):
    # The long name sorts last, far below the visible rows: measuring every
    # row (Qt's default, a second's stall with 1,000 hosts) would widen the
    # name column for it.
    long_name = "zz-" + "x" * 30
    ctx = dataclasses.replace(ui, hosts=FixedHosts(synthetic_fleet(400, long_name)))
    view = FleetView(ctx, FakeNavigator())
    qtbot.addWidget(view)
    view.resize(1100, 600)
    view.show()
    await until(lambda: view.model.rowCount() == 400, "the fleet")
    header = view.table.horizontalHeader()
    assert header.resizeContentsPrecision() == 0
    needed = view.table.fontMetrics().horizontalAdvance(long_name)
    assert header.sectionSize(int(Column.NAME)) < needed
    assert header.sectionSize(int(Column.NAME)) > view.table.fontMetrics().horizontalAdvance(
        "h0001"
    )


async def test_a_fleet_loaded_while_hidden_is_sized_when_shown(ui, qtbot):
    ctx = dataclasses.replace(ui, hosts=FixedHosts(synthetic_fleet(50, "last")))
    view = FleetView(ctx, FakeNavigator())
    qtbot.addWidget(view)
    await until(lambda: view.model.rowCount() == 50 and not view.refreshing(), "the fleet")
    assert not view._sized  # hidden: Qt would measure every row
    view.resize(1100, 600)
    view.show()
    await until(lambda: view._sized, "the columns to be sized")


async def test_screenshots_render(tmp_path: Path, qapp):
    paths = await render_async(tmp_path)
    assert [p.name for p in paths] == ["fleet.png", "fleet-empty.png", "fleet-dark.png"]
    for path in paths:
        assert path.stat().st_size > 5_000, path
