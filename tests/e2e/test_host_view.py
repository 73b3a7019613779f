"""The host view against a real in-process control plane and a protocol-speaking fake agent.

Waiting is done with bounded asyncio polling (never qtbot.waitUntil inside an
async test: see ENGINEERING.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontInfo
from PySide6.QtWidgets import QApplication

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.errors import NotFound
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol
from ui_qt.context import UiContext
from ui_qt.host_tabs.jobs_tab import JobModel
from ui_qt.host_tabs.snapshots_tab import SnapshotModel
from ui_qt.host_view import HostView

PASSWORD = "hunter2hunter2"


@dataclass
class FakeNavigator:
    fleet: int = 0
    hosts: list[int] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def show_fleet(self) -> None:
        self.fleet += 1

    def open_host(self, host_id: int) -> None:
        self.hosts.append(host_id)

    def open_job(self, job_id: str) -> None:
        self.jobs.append(job_id)

    def add_host(self) -> None:
        pass


async def until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    # Generous: on 2 loaded cores a view that shows in 50 ms alone has been
    # seen to need more than 10 s. A pass costs only the time it takes.
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (LookupError, AttributeError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Agents:
    """Fake agents of one test; they say goodbye while the loop still runs."""

    cp: ControlPlane
    session: aiohttp.ClientSession
    connected: list[FakeAgent] = field(default_factory=list)

    async def connect(self, token: str, name: str = "web1") -> FakeAgent:
        body = await enrol(self.session, self.cp.agent_url, self.cp.certificate.sha256, token, name)
        agent = await FakeAgent.connect(
            self.session, self.cp.agent_url, self.cp.certificate.sha256, body["bearer"]
        )
        self.connected.append(agent)
        # What every hello gets first: the credential (then the queued probe).
        await agent.expect(p.ConfigUpdate)
        return agent

    async def close(self) -> None:
        for agent in self.connected:
            await agent.ws.close()
        # The control plane records them offline before it stops.
        await until(lambda: self.cp.hub.connected_count() == 0, "the agents to leave")
        for _ in range(100):
            if all(h.status == "offline" for h in await self.cp.hosts.list_hosts()):
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def agents(control_plane: ControlPlane) -> AsyncIterator[Agents]:
    async with aiohttp.ClientSession() as session:
        fleet = Agents(control_plane, session)
        yield fleet
        await fleet.close()


@pytest.fixture
def navigator() -> FakeNavigator:
    return FakeNavigator()


async def add_host(ui: UiContext, name: str = "web1", tags: list[str] | None = None) -> tuple:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": "/srv/restic/" + name, "password": PASSWORD},
            "initial_paths": ["/etc", "/home"],
            "tags": tags or [],
        }
    )
    grant = await ui.enrolment.add_host(new, OPERATOR)
    return grant.host_id, grant.token


@pytest.fixture
async def views(ui: UiContext) -> AsyncIterator[list[HostView]]:
    """Views of one test, deleted at a safe point of the running loop.

    (Left to Python's garbage collector, a widget with reference cycles is
    destroyed whenever a collection happens to run, possibly in the middle
    of Qt dispatching an event to it.)"""
    made: list[HostView] = []
    yield made
    for view in made:
        if shiboken6.isValid(view):
            view.hide()  # not close(): closing the last window would quit the app
            view.deleteLater()
    await asyncio.sleep(0.05)  # the loop runs the deferred deletes


def make_view(views: list[HostView], ui: UiContext, navigator: FakeNavigator, host_id: int):
    view = HostView(ui, navigator, host_id)
    views.append(view)
    view.resize(1100, 700)
    view.show()
    return view


def cell(model, row: int, col: int, role=Qt.ItemDataRole.DisplayRole) -> Any:
    return model.data(model.index(row, col), role)


async def finish_job(agent: FakeAgent, command: p.CommandRun, **finished: Any) -> None:
    now = time.time()
    await agent.send(
        p.JobStarted(
            job_id=command.job_id,
            seq=1,
            kind=command.kind,
            actor=command.actor,
            started_at=now - 42,
            source_group_id=command.source_group.id if command.source_group else None,
        )
    )
    await agent.send(
        p.JobFinished(job_id=command.job_id, seq=2, finished_at=now, log_lines=0, **finished)
    )


# -- header ---------------------------------------------------------------------------


async def test_header_shows_the_host_and_follows_it_live(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui, tags=["prod", "db"])
    view = make_view(views, ui, navigator, host_id)
    assert view.host_id == host_id
    await until(lambda: view.name.text() == "web1", "the host name")
    assert "never connected" in view.status.text()
    assert view.tags.text() == "prod, db"
    assert "not probed yet" in view.repo_status.text()
    assert view.last_seen.text() == "never"

    agent = await agents.connect(token)
    await until(lambda: "online" in view.status.text(), "the header to flip to online")
    assert view.os_arch.text() == "linux / amd64"
    assert view.agent_version.text() == "0.0.1"
    assert view.last_seen.text() == "connected now"

    # The probe fails: status and restic's error in red, with a retry.
    probe = await agent.expect(p.CommandRun)
    assert probe.kind == "init"
    await finish_job(
        agent,
        probe,
        status="failed",
        exit_code=1,
        error="Fatal: unable to open config file: Stat: permission denied",
        repo_status="init_failed",
    )
    await until(lambda: view.repo_error.isVisibleTo(view), "the init error")
    assert "init failed" in view.repo_status.text()
    assert "permission denied" in view.repo_error.text()
    assert view.retry_probe.text() == "Retry probe"

    qtbot.mouseClick(view.retry_probe, Qt.MouseButton.LeftButton)
    retry = await agent.expect(p.CommandRun)
    assert retry.kind == "init" and retry.actor == "operator"
    await until(lambda: "Probe sent" in view.probe_note.text(), "the probe note")

    # Offline: a retry is refused with the service's reason, shown inline.
    await agent.ws.close()
    await until(lambda: "offline" in view.status.text(), "the header to flip to offline")
    assert view.last_seen.text() == "just now"
    qtbot.mouseClick(view.retry_probe, Qt.MouseButton.LeftButton)
    await until(lambda: "offline" in view.probe_note.text(), "the Conflict message")
    assert "the agent must be connected" in view.probe_note.text()
    assert view.retry_probe.isEnabled()

    qtbot.mouseClick(view.back, Qt.MouseButton.LeftButton)
    assert navigator.fleet == 1


async def test_tags_are_edited_in_place(qtbot, views, ui, navigator):
    host_id, _token = await add_host(ui, tags=["prod"])
    view = make_view(views, ui, navigator, host_id)
    await until(lambda: view.tags.text() == "prod", "the tags")
    assert not view.save_tags_button.isEnabled()

    view.tags.clear()
    qtbot.keyClicks(view.tags, "prod, db site:fra-1")
    assert view.save_tags_button.isEnabled()
    qtbot.mouseClick(view.save_tags_button, Qt.MouseButton.LeftButton)
    await until(
        lambda: (
            not view.save_tags_button.isEnabled() and view.tags.text() == "prod, db, site:fra-1"
        ),
        "the save",
    )
    assert (await ui.hosts.get_host(host_id)).tags == ["prod", "db", "site:fra-1"]

    # An invalid tag: the service's message next to the field, nothing stored.
    qtbot.keyClicks(view.tags, ", bad;tag")
    qtbot.mouseClick(view.save_tags_button, Qt.MouseButton.LeftButton)
    await until(lambda: view.tags_error.isVisibleTo(view), "the tag error")
    assert "'tags' must be a list of short words" in view.tags_error.text()
    assert (await ui.hosts.get_host(host_id)).tags == ["prod", "db", "site:fra-1"]
    # What the operator typed is kept for them to fix, even across a reload.
    view.reload()
    await until(lambda: not view.loader.busy, "the reload")
    assert view.tags.text().endswith("bad;tag")


# -- snapshots ------------------------------------------------------------------------


async def test_a_snapshots_report_appears_in_the_snapshots_tab(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    view = make_view(views, ui, navigator, host_id)
    tab = view.snapshots_tab
    await until(lambda: tab.loader.fetches and not tab.loader.busy, "the first load")
    assert tab.stack.currentWidget() is tab.empty

    agent = await agents.connect(token)
    now = time.time()
    snaps = [
        p.SnapshotInfo(
            id=f"{i:02d}" + "ab12cd34" * 7 + "ef",
            short_id=f"{i:02d}ab12cd",
            time=time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime(now - 3600 * i - 300)),
            hostname="web1",
            paths=["/etc", "/home"],
            tags=["default"],
        )
        for i in range(1, 4)
    ]
    await agent.send(p.SnapshotsReport(collected_at=now, snapshots=snaps))
    await until(lambda: tab.model.rowCount() == 3, "the reported snapshots")
    assert tab.stack.currentWidget() is tab.table
    proxy = tab.proxy
    # Newest first, local time and a humanised age; short id in monospace.
    assert cell(proxy, 0, SnapshotModel.ID) == "01ab12cd"
    assert "(1 h ago)" in cell(proxy, 0, SnapshotModel.TIME)
    assert cell(proxy, 0, SnapshotModel.PATHS) == "/etc, /home"
    assert cell(proxy, 0, SnapshotModel.TAGS) == "default"
    font = cell(proxy, 0, SnapshotModel.ID, Qt.ItemDataRole.FontRole)
    assert QFontInfo(font).fixedPitch()
    assert tab.summary.text() == "3 snapshots · latest 1 h ago"

    qtbot.keyClicks(tab.filter, "03ab")
    assert proxy.rowCount() == 1


# -- sources and jobs ---------------------------------------------------------------------


async def test_back_up_now_dispatches_and_the_job_shows_in_the_jobs_tab(
    qtbot, views, ui, agents, navigator
):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    probe = await agent.expect(p.CommandRun)
    await finish_job(agent, probe, status="succeeded", exit_code=0, repo_status="ready")
    view = make_view(views, ui, navigator, host_id)
    sources = view.sources_tab
    await until(lambda: sources.backup_buttons, "the source groups")
    (group,) = sources.groups
    assert group.name == "default"
    assert sources.table.item(0, sources.INCLUDES).text() == "/etc\n/home"

    view.tabs.setCurrentWidget(sources)
    qtbot.mouseClick(sources.backup_buttons[group.id], Qt.MouseButton.LeftButton)
    command = await agent.expect(p.CommandRun)
    assert command.kind == "backup" and command.actor == "operator"
    assert command.source_group is not None and command.source_group.id == group.id
    assert command.source_group.includes == ["/etc", "/home"]
    await until(lambda: navigator.jobs == [command.job_id], "open_job with the new job")

    jobs = view.jobs_tab
    model = jobs.model
    await until(lambda: command.job_id in [j.id for j in model.rows], "the job in the Jobs tab")
    row = [j.id for j in model.rows].index(command.job_id)
    assert cell(model, row, JobModel.KIND) == "backup · default"
    assert cell(model, row, JobModel.ACTOR) == "operator"

    await finish_job(
        agent,
        command,
        status="failed",
        exit_code=1,
        error="Fatal: unable to create lock in backend: repository is already locked",
    )
    await until(lambda: cell(model, row, JobModel.STATUS) == "failed", "the failed status")
    assert cell(model, row, JobModel.DURATION) == "42 s"
    assert "already locked" in cell(model, row, JobModel.RESULT)
    red = cell(model, row, JobModel.STATUS, Qt.ItemDataRole.ForegroundRole)
    assert red.name() == "#d64541"

    # Double-click opens the job window.
    view.tabs.setCurrentWidget(jobs)
    index = model.index(row, JobModel.STATUS)
    QApplication.processEvents()
    pos = jobs.table.visualRect(index).center()
    qtbot.mouseClick(jobs.table.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseDClick(jobs.table.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert navigator.jobs == [command.job_id, command.job_id]


async def test_back_up_now_on_an_offline_host_says_why(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)  # enrolment makes the group
    await agent.ws.close()
    view = make_view(views, ui, navigator, host_id)
    await until(lambda: "offline" in view.status.text(), "the host to be offline")
    sources = view.sources_tab
    await until(lambda: sources.backup_buttons, "the source groups")
    (group_id,) = sources.backup_buttons
    qtbot.mouseClick(sources.backup_buttons[group_id], Qt.MouseButton.LeftButton)

    def error_box() -> Any:
        return [w for w in QApplication.topLevelWidgets() if w.objectName() == "hostViewMessage"]

    (box,) = await until(error_box, "the error box")
    assert "offline" in box.text() and "web1" in box.text()
    assert sources.backup_buttons[group_id].isEnabled() and navigator.jobs == []
    box.close()


async def test_a_burst_of_job_changes_costs_at_most_two_fetches(qtbot, views, ui, navigator):
    host_id, _token = await add_host(ui)
    view = make_view(views, ui, navigator, host_id)
    jobs = view.jobs_tab
    await until(lambda: jobs.loader.fetches and not jobs.loader.busy, "the first load")
    before = jobs.loader.fetches
    for i in range(50):
        ui.bridge.jobs_changed.emit({f"other-{i}"})
    await until(lambda: not jobs.loader.busy, "the fetches")
    assert jobs.loader.fetches - before == 2
    # Those ids proved to be other hosts' jobs: they no longer cause queries.
    ui.bridge.jobs_changed.emit({"other-7"})
    assert not jobs.loader.busy and jobs.loader.fetches - before == 2


# -- credentials ------------------------------------------------------------------------


async def test_credentials_edit(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    await agent.expect(p.CommandRun)  # the first probe
    view = make_view(views, ui, navigator, host_id)
    box = view.credentials_tab.slots["everyday"]
    admin = view.credentials_tab.slots["admin"]
    await until(lambda: box.current is not None, "the credential summary")
    assert box.url.text() == "/srv/restic/web1"
    assert "set" in box.password.text()
    assert admin.current is None and admin.edit.text() == "Set up…"

    view.tabs.setCurrentWidget(view.credentials_tab)
    qtbot.mouseClick(box.edit, Qt.MouseButton.LeftButton)
    form = box.form
    assert box.editing
    # Nothing secret is ever put into the form.
    assert form.password.text() == "" and form.backend_password.text() == ""
    assert form.env.toPlainText() == ""
    assert form.password.echoMode() == form.password.EchoMode.Password

    # Invalid: the service's message next to the field it names.
    form.url.clear()
    qtbot.keyClicks(form.url, "/srv/restic/web1-new")
    qtbot.keyClicks(form.password, "abc")
    qtbot.mouseClick(form.save, Qt.MouseButton.LeftButton)
    await until(lambda: form.errors["password"].isVisibleTo(view), "the password error")
    assert "at least 4 characters" in form.errors["password"].text()
    assert not form.errors["url"].isVisibleTo(view)
    # A malformed environment line is caught before the service is asked.
    qtbot.keyClicks(form.env, "AWS_REGION")
    qtbot.mouseClick(form.save, Qt.MouseButton.LeftButton)
    assert "line 1: expected NAME=value" in form.errors["env"].text()
    form.env.clear()

    # Valid: the agent gets the new URL at once and a probe is queued.
    form.password.clear()
    qtbot.keyClicks(form.password, "correct horse battery")
    qtbot.mouseClick(form.save, Qt.MouseButton.LeftButton)
    config = await agent.expect(p.ConfigUpdate)
    assert config.repository.url == "/srv/restic/web1-new"
    assert config.repository.password == "correct horse battery"
    probe = await agent.expect(p.CommandRun)
    assert probe.kind == "init"
    await until(lambda: not box.editing, "the form to close")
    assert "probe is queued" in box.status.text() and "runs now" in box.status.text()
    await until(lambda: box.url.text() == "/srv/restic/web1-new", "the new summary")
    assert form.password.text() == ""  # nothing typed stays in memory of the widget

    # Reopened: still nothing pre-filled that is secret.
    qtbot.mouseClick(box.edit, Qt.MouseButton.LeftButton)
    assert form.password.text() == "" and form.url.text() == "/srv/restic/web1-new"
    qtbot.mouseClick(form.cancel, Qt.MouseButton.LeftButton)
    assert not box.editing


async def test_a_url_with_a_hidden_password_must_be_retyped(qtbot, views, ui, navigator):
    host_id, _token = await add_host(ui)
    await ui.hosts.set_credentials(
        host_id,
        "admin",
        {
            "url": "rest:https://admin:s3cret-pw@backup.example:8000/web1",
            "password": PASSWORD,
            "env": {"AWS_REGION": "eu-west-1"},
        },
        OPERATOR,
    )
    view = make_view(views, ui, navigator, host_id)
    box = view.credentials_tab.slots["admin"]
    await until(lambda: box.current is not None, "the admin summary")
    assert box.url.text() == "rest:https://admin:***@backup.example:8000/web1"
    assert box.env_keys.text() == "AWS_REGION"
    qtbot.mouseClick(box.edit, Qt.MouseButton.LeftButton)
    assert "s3cret-pw" not in box.form.url.text()
    assert "AWS_REGION" in box.form.env_hint.text()
    qtbot.keyClicks(box.form.password, PASSWORD)
    qtbot.mouseClick(box.form.save, Qt.MouseButton.LeftButton)
    assert "***" in box.form.errors["url"].text()
    assert box.editing and not box.saving


# -- deletion -------------------------------------------------------------------------------


async def test_danger_zone_deletes_only_after_the_exact_name(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    view = make_view(views, ui, navigator, host_id)
    danger = view.danger_tab
    await until(lambda: danger.host_name == "web1", "the host name")
    view.tabs.setCurrentWidget(danger)
    assert not danger.delete_button.isEnabled()
    for wrong in ("web", "WEB1", "web1 "):
        danger.confirm.clear()
        qtbot.keyClicks(danger.confirm, wrong)
        assert not danger.delete_button.isEnabled(), wrong
    danger.confirm.clear()
    qtbot.keyClicks(danger.confirm, "web1")
    assert danger.delete_button.isEnabled()

    async def read_until_closed() -> aiohttp.WSMsgType:
        # Like a real agent, keep reading: the server's close waits for our reply.
        while True:
            msg = await agent.ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return msg.type

    closed = asyncio.create_task(read_until_closed())
    qtbot.mouseClick(danger.delete_button, Qt.MouseButton.LeftButton)
    await until(lambda: navigator.fleet == 1, "the way back to the fleet")
    # The control plane closed the agent's connection.
    assert await asyncio.wait_for(closed, 10) in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    )
    with pytest.raises(NotFound):
        await ui.hosts.get_host(host_id)
    # The removal event arrives too; the operator is not told twice.
    await asyncio.sleep(0.3)
    assert view.gone and view.removed_notice is None and navigator.fleet == 1


async def test_a_host_deleted_elsewhere_sends_the_view_back_to_the_fleet(
    qtbot, views, ui, navigator
):
    host_id, _token = await add_host(ui)
    view = make_view(views, ui, navigator, host_id)
    await until(lambda: view.host is not None, "the host")
    await ui.hosts.delete_host(host_id, OPERATOR)
    await until(lambda: navigator.fleet == 1, "the way back to the fleet")
    assert view.gone
    assert view.removed_notice is not None
    assert "was deleted" in view.removed_notice.text()
    assert "web1 was deleted" in view.banner.text()
    view.removed_notice.close()
    # Nothing keeps asking for a host that is gone.
    fetches = view.loader.fetches
    view.reload()
    ui.bridge.hosts_changed.emit({host_id})
    assert view.loader.fetches == fetches
