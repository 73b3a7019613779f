"""The restore browser and the diff action against a real in-process control plane.

A protocol-speaking fake agent answers tree.list / tree.find from a fake
snapshot index (tests/helpers/fake_agent.py: the real agent's index is tested
on its own with real restic); everything between the widgets and that agent
is real: RestoreService, the RPC broker, the hub, TLS WebSockets, SQLite.

Waiting is bounded asyncio polling (never qtbot.waitUntil inside an async test)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import shiboken6
from PySide6.QtCore import QModelIndex, Qt

from agent import protocol as p
from server_core.control_plane import ControlPlane
from tests.e2e.test_host_view import Agents, FakeNavigator, add_host, finish_job, make_view, until
from tests.helpers.fake_agent import FakeAgent, FakeIndex, IndexAnswerer
from ui_qt.context import UiContext
from ui_qt.host_view import HostView
from ui_qt.job_window import JobWindow
from ui_qt.restore.browse_page import search_pattern
from ui_qt.restore.browser import RestoreBrowser
from ui_qt.restore.target_page import target_dir_problem
from ui_qt.restore.tree_model import CHECKED, PARTIAL, UNCHECKED, Node

KiB = 1024
MiB = 1024**2
T0 = 1_714_550_400.0  # 2024-05-01

FILES = {
    "/etc/hosts": (220, T0),
    "/etc/fstab": (640, T0),
    "/etc/nginx/nginx.conf": (2 * KiB, T0),
    "/home/alice/docs/report-2024.pdf": (2 * MiB, T0),
    "/home/alice/docs/notes.txt": (1 * KiB, T0),
    "/home/alice/docs/old/report-2019.pdf": (500 * KiB, T0),
    "/home/alice/photos/a.jpg": (3 * MiB, T0),
    "/home/alice/photos/b.jpg": (4 * MiB, T0),
    "/home/bob/todo.txt": (300, T0),
    **{f"/srv/big/file{n:02d}.dat": (100 * KiB, T0) for n in range(12)},
    **{f"/srv/many/f{n:03d}.txt": (1 * KiB, T0) for n in range(300)},
}


def snapshot(n: int, hours_ago: float, host: str = "web1") -> p.SnapshotInfo:
    full = hashlib.sha256(f"{host}/{n}".encode()).hexdigest()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - hours_ago * 3600))
    return p.SnapshotInfo(
        id=full,
        short_id=full[:8],
        time=f"{stamp[:-2]}:{stamp[-2:]}",
        hostname=host,
        paths=["/etc", "/home", "/srv"],
        tags=["daily"],
    )


OLD = snapshot(1, 30)
NEW = snapshot(2, 6)


@dataclass
class Rig:
    host_id: int
    agent: FakeAgent
    answers: IndexAnswerer
    view: HostView


@pytest.fixture
async def agents(control_plane: ControlPlane) -> AsyncIterator[Agents]:
    async with aiohttp.ClientSession() as session:
        fleet = Agents(control_plane, session)
        yield fleet
        await fleet.close()


@pytest.fixture
def navigator() -> FakeNavigator:
    return FakeNavigator()


@pytest.fixture
async def views(ui: UiContext) -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for widget in made:
        if shiboken6.isValid(widget):
            widget.hide()  # not close(): closing the last window would quit the app
            widget.deleteLater()
    await asyncio.sleep(0.05)


@pytest.fixture
async def answerers() -> AsyncIterator[list[IndexAnswerer]]:
    made: list[IndexAnswerer] = []
    yield made
    for answers in made:
        await answers.stop()


@pytest.fixture
async def rig(ui, agents, navigator, views, answerers) -> Rig:
    return await make_rig(ui, agents, navigator, views, answerers)


async def make_rig(
    ui: UiContext,
    agents: Agents,
    navigator: FakeNavigator,
    views: list[Any],
    answerers: list[IndexAnswerer],
    indexes: dict[str, FakeIndex] | None = None,
) -> Rig:
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    probe = await agent.expect(p.CommandRun)
    await finish_job(agent, probe, status="succeeded", exit_code=0, repo_status="ready")
    ids = {await agent.send(p.SnapshotsReport(collected_at=time.time(), snapshots=[OLD, NEW]))}
    await agent.acked(ids)
    if indexes is None:
        indexes = {OLD.id: FakeIndex(FILES), NEW.id: FakeIndex(FILES)}
    answers = IndexAnswerer(agent, indexes).start()
    answerers.append(answers)
    view = make_view(views, ui, navigator, host_id)
    tab = view.snapshots_tab
    await until(lambda: len(tab.model.rows) == 2, "the snapshot rows")
    return Rig(host_id, agent, answers, view)


def open_browser(
    rig: Rig, views: list[Any], snap: p.SnapshotInfo = NEW, **kw: Any
) -> RestoreBrowser:
    tab = rig.view.snapshots_tab
    tab.select_snapshots([snap.id])
    browser = (
        RestoreBrowser(tab.ctx, tab.navigator, rig.host_id, snap.id, tab, **kw)
        if kw
        else tab.open_restore(snap.id)
    )
    if kw:
        tab.restore_browser = browser
        browser.show()
    assert isinstance(browser, RestoreBrowser)
    views.append(browser)
    return browser


def find_row(browser: RestoreBrowser, *names: str) -> QModelIndex:
    """The proxy index of the entry at names[0]/names[1]/… (listed already)."""
    proxy = browser.browse.proxy
    parent = QModelIndex()
    index = QModelIndex()
    for name in names:
        for row in range(proxy.rowCount(parent)):
            candidate = proxy.index(row, 0, parent)
            if candidate.data().rstrip("/") == name:
                index = candidate
                break
        else:
            raise LookupError(f"{name} is not listed under {parent.data()!r}")
        parent = index
    return index


def node(browser: RestoreBrowser, *names: str) -> Node:
    model = browser.browse.model
    assert model is not None
    return model.node(browser.browse.proxy.mapToSource(find_row(browser, *names)))


async def expand(browser: RestoreBrowser, *names: str) -> Node:
    index = find_row(browser, *names)
    browser.browse.tree.expand(index)
    found = node(browser, *names)
    await until(lambda: found.children is not None and not found.loading, f"/{'/'.join(names)}")
    return found


def tick(browser: RestoreBrowser, *names: str, state: Qt.CheckState = CHECKED) -> None:
    index = find_row(browser, *names)
    assert browser.browse.proxy.setData(index, state, Qt.ItemDataRole.CheckStateRole)


async def tree_shown(browser: RestoreBrowser) -> None:
    page = browser.browse
    await until(lambda: page.stack.currentWidget() is page.tree, "the tree")


# -- browsing -------------------------------------------------------------------------


async def test_the_tree_opens_lazily_three_levels_deep(qtbot, rig, views):
    tab = rig.view.snapshots_tab
    tab.select_snapshots([NEW.id])
    qtbot.mouseClick(tab.restore_button, Qt.MouseButton.LeftButton)
    browser = tab.restore_browser
    assert isinstance(browser, RestoreBrowser) and browser.isVisible()
    views.append(browser)
    await tree_shown(browser)
    page = browser.browse
    assert page.snapshot is not None and page.snapshot.id == NEW.id
    assert page.picker.currentText().count(NEW.short_id) == 1
    assert "tags: daily" in page.picker.currentText()
    await until(lambda: browser.windowTitle() == "Restore from web1", "the title")
    assert [page.proxy.index(r, 0).data() for r in range(page.proxy.rowCount())] == [
        "etc/",
        "home/",
        "srv/",
    ]
    assert rig.answers.listed() == ["/"]  # nothing below is listed before it is opened

    home = await expand(browser, "home")
    assert [c.name for c in home.children or []] == ["alice", "bob"]
    alice = await expand(browser, "home", "alice")
    assert [c.name for c in alice.children or []] == ["docs", "photos"]
    docs = await expand(browser, "home", "alice", "docs")
    assert [c.name for c in docs.children or []] == ["old", "notes.txt", "report-2024.pdf"]
    assert rig.answers.listed() == ["/", "/home", "/home/alice", "/home/alice/docs"]

    # Sizes and file counts are the directories' aggregates.
    model = page.model
    assert model is not None
    row = find_row(browser, "home", "alice")
    assert row.siblingAtColumn(model.FILES).data() == "5"
    assert row.siblingAtColumn(model.SIZE).data() == "9.5 MiB"
    pdf = find_row(browser, "home", "alice", "docs", "report-2024.pdf")
    assert pdf.siblingAtColumn(model.SIZE).data() == "2.0 MiB"
    assert pdf.siblingAtColumn(model.MODIFIED).data().startswith("2024-05-0")
    assert not model.hasChildren(page.proxy.mapToSource(pdf))

    # Collapsing and opening again does not list again.
    page.tree.collapse(find_row(browser, "home"))
    page.tree.expand(find_row(browser, "home"))
    await asyncio.sleep(0.1)
    assert len(rig.answers.listed()) == 4


async def test_ticks_propagate_down_and_up_with_exact_totals(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    page = browser.browse
    assert "Nothing selected" in page.totals.text()
    assert not browser.next_button.isEnabled()
    await expand(browser, "home")
    await expand(browser, "home", "alice")
    docs = await expand(browser, "home", "alice", "docs")

    # Ticking a folder ticks everything listed below it; ancestors go partial.
    tick(browser, "home", "alice", "docs")
    assert all(c.check == CHECKED for c in docs.children or [])
    assert node(browser, "home", "alice").check == PARTIAL
    assert node(browser, "home").check == PARTIAL
    assert node(browser, "etc").check == UNCHECKED
    assert page.totals.text() == "Selected: 1 item · 3 files · 2.5 MiB"
    assert browser.next_button.isEnabled()

    # Unticking one child leaves the folder partial, and the totals follow.
    tick(browser, "home", "alice", "docs", "report-2024.pdf", state=UNCHECKED)
    assert docs.check == PARTIAL
    assert page.totals.text() == "Selected: 2 items · 2 files · 501.0 KiB"

    # Ticking the rest makes the parents whole again, up to /home.
    tick(browser, "home", "alice", "docs", "report-2024.pdf")
    tick(browser, "home", "alice", "photos")
    tick(browser, "home", "bob")
    assert node(browser, "home", "alice").check == CHECKED
    assert node(browser, "home").check == CHECKED
    paths, unresolved = page.model.selected_paths()  # type: ignore[union-attr]
    assert paths == ["/home"] and unresolved == []
    assert page.totals.text() == "Selected: 1 item · 6 files · 9.5 MiB"

    # A folder never opened is ticked whole; its aggregate gives the totals.
    tick(browser, "etc")
    assert node(browser, "etc").children is None
    assert page.totals.text() == "Selected: 2 items · 9 files · 9.5 MiB"
    assert page.model.selected_paths()[0] == ["/etc", "/home"]  # type: ignore[union-attr]

    # Ticking a partial folder selects all of it; unticking /home clears below.
    await expand(browser, "home", "alice", "photos")
    tick(browser, "home", "alice", "photos", "a.jpg", state=UNCHECKED)
    assert node(browser, "home").check == PARTIAL
    tick(browser, "home", state=UNCHECKED)
    assert all(c.check == UNCHECKED for c in page.model.iter_loaded() if c.path != "/etc")  # type: ignore[union-attr]


async def test_keyboard_moves_with_arrows_and_space_ticks(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    tree = browser.browse.tree
    tree.setFocus()
    assert tree.currentIndex() == find_row(browser, "etc")
    qtbot.keyClick(tree, Qt.Key.Key_Down)
    assert tree.currentIndex() == find_row(browser, "home")
    qtbot.keyClick(tree, Qt.Key.Key_Right)  # opens /home, listed on demand
    home = node(browser, "home")
    await until(lambda: home.children is not None, "/home to be listed")
    qtbot.keyClick(tree, Qt.Key.Key_Down)
    assert tree.currentIndex() == find_row(browser, "home", "alice")
    qtbot.keyClick(tree, Qt.Key.Key_Space)
    assert node(browser, "home", "alice").check == CHECKED
    assert home.check == PARTIAL
    qtbot.keyClick(tree, Qt.Key.Key_Space)
    assert node(browser, "home", "alice").check == UNCHECKED
    assert home.check == UNCHECKED


async def test_a_building_index_shows_progress_then_the_tree(
    qtbot, ui, agents, navigator, views, answerers
):
    slow = FakeIndex(FILES, building_polls=3)
    rig = await make_rig(
        ui, agents, navigator, views, answerers, {NEW.id: slow, OLD.id: FakeIndex(FILES)}
    )
    browser = open_browser(rig, views, poll_s=0.3)
    page = browser.browse
    await until(lambda: "Indexing snapshot" in page.opening_label.text(), "the indexing note")
    assert page.stack.currentWidget() is page.opening and page.opening_bar.isVisible()
    assert "entries read so far" in page.opening_label.text()
    assert NEW.short_id in page.opening_label.text()
    seen = {page.opening_label.text()}
    while page.stack.currentWidget() is page.opening:  # the count grows while it builds
        seen.add(page.opening_label.text())
        await asyncio.sleep(0.05)
    assert any("120,000 entries" in text for text in seen), seen
    await tree_shown(browser)
    assert page.proxy.rowCount() == 3
    assert rig.answers.listed() == ["/"] * 4  # three polls answered "building", then the list


async def test_a_large_folder_is_paged_and_a_partial_pick_is_named_in_full(qtbot, rig, views):
    browser = open_browser(rig, views, page=40)
    await tree_shown(browser)
    page = browser.browse
    model = page.model
    assert model is not None
    await expand(browser, "srv")
    many = await expand(browser, "srv", "many")
    await asyncio.sleep(0.2)  # the view asks for pages only while it has room to show them
    listed = len(many.children or [])
    assert many.total == 300 and 40 <= listed < 300 and listed % 40 == 0
    offsets = [c["offset"] for m, c in rig.answers.calls if c.get("path") == "/srv/many"]
    assert offsets == list(range(0, listed, 40)) and len(set(offsets)) == len(offsets)
    # Scrolling to the end fetches the next page.
    model.fetchMore(page.proxy.mapToSource(find_row(browser, "srv", "many")))
    await until(lambda: len(many.children or []) == listed + 40, "the next page")

    tick(browser, "srv", "many")
    tick(browser, "srv", "many", "f005.txt", state=UNCHECKED)
    assert many.check == PARTIAL and many.incomplete
    assert page.totals.text() == "Selected: 299 items · 299 files · 299.0 KiB"
    _paths, unresolved = model.selected_paths()
    assert unresolved == [many]  # the pages never listed are wanted too

    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    assert browser.selection is not None
    assert browser.selection.paths == [f"/srv/many/f{n:03d}.txt" for n in range(300) if n != 5]
    assert browser.selection.totals.files == 299


async def test_search_finds_names_in_the_whole_snapshot_and_ticks_them(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    page = browser.browse
    qtbot.keyClicks(page.filter, "report")
    # Typing filters only what is listed: nothing under the unopened /home yet.
    assert page.proxy.rowCount() == 0
    qtbot.keyClick(page.filter, Qt.Key.Key_Return)
    await until(lambda: page.results.model.rowCount() == 2, "the matches")
    assert page.stack.currentWidget() is page.results
    finds = [params for method, params in rig.answers.calls if method == p.TREE_FIND]
    assert finds == [{"pattern": "*report*", "snapshot_id": NEW.id, "limit": 500}]
    assert "2 matches for *report*" in page.results.status.text()
    item = page.results.item_for("/home/alice/docs/old/report-2019.pdf")
    assert item is not None and item.checkState() == UNCHECKED

    # Ticking a match lists its folders and ticks it in the tree.
    item.setCheckState(CHECKED)
    model = page.model
    assert model is not None
    await until(
        lambda: model.effective_state(item.data(Qt.ItemDataRole.UserRole)) == CHECKED, "the tick"
    )
    assert page.totals.text() == "Selected: 1 item · 1 file · 500.0 KiB"
    assert set(rig.answers.listed()) >= {"/home", "/home/alice", "/home/alice/docs/old"}

    # A ticked folder ticks the matches inside it.
    docs = await model.reveal("/home/alice/docs")
    assert docs is not None
    model.set_checked(docs, CHECKED)
    other = page.results.item_for("/home/alice/docs/report-2024.pdf")
    assert other is not None and other.checkState() == CHECKED

    # Back to the tree: the filter now shows the listed matches with their folders.
    qtbot.mouseClick(page.results.back, Qt.MouseButton.LeftButton)
    assert page.stack.currentWidget() is page.tree
    assert find_row(browser, "home", "alice", "docs", "report-2024.pdf").isValid()


async def test_the_target_page_validates_and_in_place_needs_the_exact_host_name(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    await expand(browser, "home")
    tick(browser, "home", "bob")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    target = browser.target_page
    assert target.new_dir.isChecked() and browser.next_button.isEnabled()  # empty = default
    assert NEW.short_id in target.target_dir.placeholderText()

    qtbot.keyClicks(target.target_dir, "restored/here")
    assert not browser.next_button.isEnabled()
    assert "absolute path" in target.dir_error.text() and target.dir_error.isVisibleTo(browser)
    target.target_dir.setText("/")
    assert not browser.next_button.isEnabled() and "In place" in target.dir_error.text()
    target.target_dir.setText("~/restored")
    assert browser.next_button.isEnabled() and not target.dir_error.isVisibleTo(browser)

    target.in_place.click()
    assert target.in_place.isChecked()
    assert target.warning.isVisibleTo(browser)
    assert "overwrites files on web1" in target.warning.text()
    assert not browser.next_button.isEnabled()
    qtbot.keyClicks(target.confirm, "WEB1")
    assert not browser.next_button.isEnabled()  # exact, not just case-insensitive
    assert "must match exactly" in target.confirm_note.text()
    target.confirm.clear()
    qtbot.keyClicks(target.confirm, "web")
    assert not browser.next_button.isEnabled()
    qtbot.keyClicks(target.confirm, "1")
    assert browser.next_button.isEnabled()

    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    assert browser.step == 2
    assert browser.next_button.text() == "Restore in place"
    assert "in place on web1" in browser.confirm_page.target.text()
    qtbot.mouseClick(browser.back_button, Qt.MouseButton.LeftButton)
    assert browser.step == 1 and target.confirm.text() == "web1"


async def test_confirm_starts_the_restore_and_opens_its_job_window(
    qtbot, rig, views, navigator, ui
):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    await expand(browser, "home")
    await expand(browser, "home", "alice")
    tick(browser, "etc")
    tick(browser, "home", "alice", "docs")
    tick(browser, "home", "bob")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    qtbot.keyClicks(browser.target_page.target_dir, "~/restore-test")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    assert browser.step == 2
    confirm = browser.confirm_page
    assert confirm.host.text() == "web1"
    assert confirm.snapshot.text().startswith(NEW.short_id)
    assert "3 selected paths" in confirm.paths.text()
    assert "/home/alice/docs" in confirm.paths.text() and "/home/bob" in confirm.paths.text()
    assert confirm.files.text() == "7"
    assert confirm.size_value.text() == "2.5 MiB"
    assert "~/restore-test on web1" in confirm.target.text()
    assert browser.next_button.text() == "Restore"

    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    command = await rig.answers.expect(p.CommandRun)
    assert command.kind == "restore" and command.actor == "operator"
    args = p.from_dict(p.RestoreArgs, command.args)
    assert args == p.RestoreArgs(
        snapshot_id=NEW.id,
        paths=["/etc", "/home/alice/docs", "/home/bob"],
        target_dir="~/restore-test",
        in_place=False,
    )
    await until(lambda: navigator.jobs == [command.job_id], "the job window to be opened")
    await until(
        lambda: not shiboken6.isValid(browser) or not browser.isVisible(), "the browser to close"
    )

    # The job window the navigator opens shows this restore.
    window = JobWindow(ui, command.job_id)
    views.append(window)
    window.show()
    await until(lambda: window.heading.text() == "Restore on web1", "the job heading")

    # The header's latest restore follows the job, and links to it.
    await finish_job(
        rig.agent,
        command,
        status="succeeded",
        exit_code=0,
        summary={"files_restored": 7, "bytes_restored": 2621740, "target": "/root/restore-test"},
    )
    view = rig.view
    await until(lambda: "succeeded" in view.last_restore.text(), "the header's last restore")
    assert "open job" in view.last_restore.text()
    view.last_restore.linkActivated.emit(f"job:{command.job_id}")
    assert navigator.jobs == [command.job_id, command.job_id]


async def test_an_in_place_restore_sends_in_place_with_the_host_name(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    tick(browser, "etc")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    browser.target_page.in_place.setChecked(True)
    qtbot.keyClicks(browser.target_page.confirm, "web1")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    command = await rig.answers.expect(p.CommandRun)
    assert p.from_dict(p.RestoreArgs, command.args) == p.RestoreArgs(
        snapshot_id=NEW.id, paths=["/etc"], target_dir=None, in_place=True
    )


async def test_diff_of_two_selected_rows_starts_a_diff_job(qtbot, rig, navigator):
    tab = rig.view.snapshots_tab
    tab.select_snapshots([NEW.id])
    assert tab.restore_button.isEnabled() and not tab.diff_button.isEnabled()
    tab.select_snapshots([NEW.id, OLD.id])
    assert tab.diff_button.isEnabled() and not tab.restore_button.isEnabled()
    qtbot.mouseClick(tab.diff_button, Qt.MouseButton.LeftButton)
    command = await rig.answers.expect(p.CommandRun)
    assert command.kind == "diff"
    # Older first: "added" means added since the older snapshot.
    assert p.from_dict(p.DiffArgs, command.args) == p.DiffArgs(snapshot_a=OLD.id, snapshot_b=NEW.id)
    await until(lambda: navigator.jobs == [command.job_id], "the job window")


# -- errors ---------------------------------------------------------------------------


async def test_errors_are_shown_with_what_to_do(qtbot, rig, views):
    rig.answers.fail[(p.TREE_LIST, "/home/alice")] = p.RpcError(
        code="failed", message="restic ls failed: repository is locked"
    )
    browser = open_browser(rig, views)
    await tree_shown(browser)
    page = browser.browse
    await expand(browser, "home")
    alice_row = find_row(browser, "home", "alice")
    page.tree.expand(alice_row)
    await until(lambda: page.tree_error.isVisibleTo(browser), "the folder's error")
    assert "Could not open /home/alice" in page.tree_error.text()
    assert "repository is locked" in page.tree_error.text()
    assert alice_row.siblingAtColumn(1).data() == "could not list"

    # Retried on the next expand, once the agent answers.
    del rig.answers.fail[(p.TREE_LIST, "/home/alice")]
    page.tree.collapse(alice_row)
    page.tree.expand(alice_row)
    alice = node(browser, "home", "alice")
    await until(lambda: alice.children is not None, "the retried listing")
    assert not page.tree_error.isVisibleTo(browser)

    # The host goes offline: the whole browser says so and what to do.
    page.picker.setCurrentIndex(1)  # the other snapshot, not listed yet
    await rig.agent.ws.close()
    await until(lambda: page.stack.currentWidget() is page.failure, "the error panel")
    assert "offline" in page.failure_problem.text()
    assert "Start the agent" in page.failure_hint.text()
    assert page.retry_button.isVisibleTo(browser)
    assert not browser.next_button.isEnabled()


async def test_a_missing_snapshot_says_to_pick_another(
    qtbot, ui, agents, navigator, views, answerers
):
    rig = await make_rig(ui, agents, navigator, views, answerers, {OLD.id: FakeIndex(FILES)})
    browser = open_browser(rig, views)  # NEW is not in the agent's repository any more
    page = browser.browse
    await until(lambda: page.stack.currentWidget() is page.failure, "the error panel")
    assert f"snapshot {NEW.short_id} not found" in page.failure_problem.text()
    assert "Pick another snapshot" in page.failure_hint.text()
    page.picker.setCurrentIndex(1)
    await tree_shown(browser)


async def test_a_refused_restore_is_shown_on_the_confirm_page(qtbot, rig, views, ui):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    tick(browser, "etc")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await rig.agent.ws.close()
    for _ in range(250):
        if (await ui.hosts.get_host(rig.host_id)).status == "offline":
            break
        await asyncio.sleep(0.02)
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    error = browser.confirm_page.error
    await until(lambda: error.isVisibleTo(browser), "the refusal")
    assert "The restore was not started" in error.text() and "offline" in error.text()
    assert browser.isVisible() and browser.next_button.isEnabled()


async def test_a_new_snapshot_report_keeps_the_open_snapshot_and_its_ticks(qtbot, rig, views):
    browser = open_browser(rig, views)
    await tree_shown(browser)
    tick(browser, "etc")
    newest = snapshot(3, 1)
    await rig.agent.send(p.SnapshotsReport(collected_at=time.time(), snapshots=[OLD, NEW, newest]))
    page = browser.browse
    await until(lambda: page.picker.count() == 3, "the new snapshot in the picker")
    assert page.snapshot is not None and page.snapshot.id == NEW.id
    assert page.picker.currentData() == NEW.id
    assert node(browser, "etc").check == CHECKED


def test_target_directories_and_search_patterns_are_checked_as_typed() -> None:
    assert target_dir_problem("") is None  # the agent's default
    for good in ("/srv/restore", "~", "~/restored", "$HOME/x", "C:\\restore", "D:/r"):
        assert target_dir_problem(good) is None, good
    for bad in ("restored", "./x", "~user/x", "$HOMEX", "a\tb"):
        assert target_dir_problem(bad) is not None, bad
    for root in ("/", "//", "C:\\", "C:/"):
        assert "In place" in (target_dir_problem(root) or ""), root
    assert search_pattern("report") == "*report*"
    assert search_pattern(" *.pdf ") == "*.pdf"
    assert search_pattern("IMG_41[0-9]?.jpg") == "IMG_41[0-9]?.jpg"


async def test_more_paths_than_one_restore_takes_are_refused_before_listing_them(
    qtbot, ui, agents, navigator, views, answerers
):
    huge = {f"/data/huge/f{n:04d}": (10, T0) for n in range(1200)}
    index = FakeIndex({**FILES, **huge})
    rig = await make_rig(ui, agents, navigator, views, answerers, {NEW.id: index, OLD.id: index})
    browser = open_browser(rig, views, page=100)
    await tree_shown(browser)
    await expand(browser, "data")
    folder = await expand(browser, "data", "huge")
    tick(browser, "data", "huge")
    tick(browser, "data", "huge", "f0000", state=UNCHECKED)
    assert browser.browse.totals.text() == "Selected: 1,199 items · 1,199 files · 11.7 KiB"
    pages = len(rig.answers.listed())
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    error = browser.browse.selection_error
    assert error.isVisibleTo(browser) and "1,199 separate paths" in error.text()
    assert browser.step == 0
    await asyncio.sleep(0.2)
    assert len(rig.answers.listed()) == pages and folder.incomplete  # nothing more was listed
    tick(browser, "data", "huge")  # the whole folder is one path
    assert not error.isVisibleTo(browser)
    qtbot.mouseClick(browser.next_button, Qt.MouseButton.LeftButton)
    await until(lambda: browser.step == 1, "the target page")
    assert browser.selection is not None and browser.selection.paths == ["/data"]  # all of it
