"""UpdateService against a real control plane (real TLS WebSockets) with
protocol-speaking fake agents that play the agent's side of an update:
receive command.update, go away, and say hello again with some version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest
from aiohttp import web

from agent import protocol as p
from server_core.agent_downloads import AgentDownloads
from server_core.api_common import ACTOR_KEY
from server_core.api_updates import UpdatesApi
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.errors import Conflict, HostOffline, ServiceError
from server_core.events import Event, UpdatesChanged
from server_core.models import AuditEntry, Job
from server_core.services.context import OPERATOR, Actor
from server_core.services.enrolment import parse_new_host
from server_core.services.updates import STALE_JOB_ERROR, UpdateService
from tests.helpers.fake_agent import FakeAgent, enrol

NEW = "0.2.0"
OLD = "0.1.0"
BUILD = b"#!/bin/sh\necho the new agent build\n"


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / "restic-manager-agent-linux-amd64").write_bytes(BUILD)
    (folder / "restic-manager-agent-linux-amd64.json").write_text(json.dumps({"version": NEW}))
    return folder


@dataclass
class World:
    cp: ControlPlane
    updates: UpdateService
    session: aiohttp.ClientSession
    events: list[Event]

    async def host(self, name: str, version: str = OLD, *, connect: bool = True) -> Host:
        new = parse_new_host(
            {
                "hostname": name,
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            }
        )
        grant = await self.cp.enrolment.add_host(new, OPERATOR)
        body = await enrol(self.session, self.cp.agent_url, self.cp.certificate.sha256, grant.token)
        host = Host(self, body["host_id"], name, body["bearer"])
        if connect:
            await host.connect(version)
        return host


@dataclass
class Host:
    world: World
    id: int
    name: str
    bearer: str
    agent: FakeAgent | None = None

    async def connect(self, version: str) -> FakeAgent:
        w = self.world
        agent = await FakeAgent.connect(
            w.session, w.cp.agent_url, w.cp.certificate.sha256, self.bearer, hello=False
        )
        await agent.send(
            p.Hello(
                protocol_version=p.PROTOCOL_VERSION,
                agent_version=version,
                hostname=self.name,
                os="linux",
                arch="amd64",
            )
        )
        self.agent = agent
        await until(lambda: w.cp.hub.is_connected(self.id), what=f"{self.name} online")
        return agent

    async def drop(self) -> None:
        assert self.agent is not None
        await self.agent.ws.close()
        await until(lambda: not self.world.cp.hub.is_connected(self.id), what="offline")

    async def command(self) -> p.CommandUpdate:
        assert self.agent is not None
        command: p.CommandUpdate = await self.agent.expect(p.CommandUpdate)
        return command

    async def restart_as(self, version: str) -> None:
        """What the agent does after installing: exit, come back as ``version``."""
        await self.drop()
        await self.connect(version)


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def hello_timeout() -> float:
    return 10.0


@pytest.fixture
async def world(tmp_path: Path, agents_dir: Path, hello_timeout: float) -> AsyncIterator[World]:
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await cp.start()
    updates = UpdateService(
        cp.ctx, cp.alerts, AgentDownloads(agents_dir, tmp_path), hello_timeout_s=hello_timeout
    )
    await updates.start()
    events: list[Event] = []
    unsubscribe = cp.bus.subscribe(events.append)
    try:
        async with aiohttp.ClientSession() as session:
            yield World(cp, updates, session, events)
    finally:
        unsubscribe()
        await updates.stop()
        await cp.stop()


async def audit_actions(cp: ControlPlane) -> list[str]:
    def run() -> list[str]:
        return [
            e.action for e in AuditEntry.select().order_by(AuditEntry.id) if "update" in e.action
        ]

    return await cp.store.call(run)


async def job(cp: ControlPlane, job_id: str) -> Job:
    found: Job = await cp.store.call(lambda: Job.get_by_id(job_id))
    return found


async def update_alerts(cp: ControlPlane, host_id: int) -> list[Any]:
    return [
        a
        for a in await cp.alerts.list_alerts(host_id=host_id)
        if a.kind == "update_failed" and a.status != "resolved"
    ]


# -- one host --------------------------------------------------------------------


async def test_update_succeeds_when_the_host_says_hello_with_the_new_version(world: World):
    web1 = await world.host("web1")
    assert await world.updates.bundled_versions() == {"linux/amd64": NEW}
    started = await world.updates.update_host(web1.id, OPERATOR)
    assert started.state == "updating" and (started.from_version, started.to_version) == (
        OLD,
        NEW,
    )
    command = await web1.command()
    assert command.job_id == started.job_id and command.version == NEW
    assert command.url == "/agent/binary?os=linux&arch=amd64"
    assert command.sha256 == hashlib.sha256(BUILD).hexdigest()
    row = await job(world.cp, command.job_id)
    assert (row.kind, row.status) == ("update", "running")  # never re-sent as command.run

    # A second click while it runs is refused.
    with pytest.raises(Conflict, match="already being updated"):
        await world.updates.update_host(web1.id, OPERATOR)
    # The agent's job events, then the restart as the new version.
    assert web1.agent is not None
    await web1.agent.send(
        p.JobStarted(
            job_id=command.job_id, seq=1, kind="update", actor="operator", started_at=time.time()
        )
    )
    await web1.restart_as(NEW)
    done = await asyncio.wait_for(world.updates.wait_host(web1.id), 10)
    assert done is not None and done.state == "succeeded", done
    row = await job(world.cp, command.job_id)
    assert row.status == "succeeded" and json.loads(row.summary)["to_version"] == NEW
    assert (await world.cp.hosts.get_host(web1.id)).agent_version == NEW
    assert await update_alerts(world.cp, web1.id) == []
    assert await audit_actions(world.cp) == ["agent.update_requested", "agent.update_succeeded"]
    assert UpdatesChanged(web1.id) in world.events

    with pytest.raises(Conflict, match=f"already runs agent {NEW}"):
        await world.updates.update_host(web1.id, OPERATOR)


async def test_a_failure_the_agent_reports_raises_update_failed(world: World):
    web1 = await world.host("web1")
    await world.updates.update_host(web1.id, Actor("api", "token:3"))
    command = await web1.command()
    assert web1.agent is not None
    await web1.agent.send(
        p.JobFinished(
            job_id=command.job_id,
            seq=2,
            status="failed",
            finished_at=time.time(),
            error="the downloaded binary's SHA-256 is abc, not def: nothing was replaced",
        )
    )
    done = await asyncio.wait_for(world.updates.wait_host(web1.id), 10)
    assert done is not None and done.state == "failed"
    assert "nothing was replaced" in (done.detail or "")
    alerts = await update_alerts(world.cp, web1.id)
    assert len(alerts) == 1 and "web1" in alerts[0].message and NEW in alerts[0].message
    row = await job(world.cp, command.job_id)
    assert row.status == "failed" and "SHA-256" in row.error
    actions = await audit_actions(world.cp)
    assert actions[0] == "agent.update_requested" and "agent.update_failed" in actions


@pytest.mark.parametrize("hello_timeout", [1.0])
async def test_an_agent_that_never_comes_back_fails_after_the_timeout(world: World):
    web1 = await world.host("web1")
    began = time.monotonic()
    await world.updates.update_host(web1.id, OPERATOR)
    await web1.command()
    await web1.drop()  # exits, and its new binary never starts
    done = await asyncio.wait_for(world.updates.wait_host(web1.id), 10)
    assert done is not None and done.state == "failed"
    assert time.monotonic() - began >= 1.0
    assert f"did not come back as version {NEW} within 1 s" in (done.detail or "")
    assert len(await update_alerts(world.cp, web1.id)) == 1

    # It comes back later with the new version after all: the alert clears.
    await web1.connect(NEW)
    await until(
        lambda: world.updates.host_update(web1.id).state == "succeeded",  # type: ignore[union-attr]
        what="late success",
    )
    for _ in range(100):
        if not await update_alerts(world.cp, web1.id):
            break
        await asyncio.sleep(0.05)
    assert await update_alerts(world.cp, web1.id) == []


async def test_an_agent_back_on_its_old_version_fails_at_once(world: World):
    web1 = await world.host("web1")
    await world.updates.update_host(web1.id, OPERATOR)
    await web1.command()
    await web1.restart_as(OLD)
    done = await asyncio.wait_for(world.updates.wait_host(web1.id), 5)
    assert done is not None and done.state == "failed"
    assert f"runs version {OLD}, not {NEW}" in (done.detail or "")


async def test_hosts_that_cannot_take_an_update_are_refused_with_the_reason(
    world: World, agents_dir: Path
):
    web1 = await world.host("web1")
    off = await world.host("off", connect=False)
    with pytest.raises(HostOffline, match="off is offline"):
        await world.updates.update_host(off.id, OPERATOR)

    def running_backup() -> None:
        Job.create(
            id="b1", host=web1.id, kind="backup", status="running", actor="schedule",
            created_at=time.time(),
        )  # fmt: skip

    await world.cp.store.transaction(running_backup)
    with pytest.raises(Conflict, match="web1 is running 1 job"):
        await world.updates.update_host(web1.id, OPERATOR)

    arm = await world.host("arm")
    assert arm.agent is not None
    await arm.drop()
    agent = await FakeAgent.connect(
        world.session, world.cp.agent_url, world.cp.certificate.sha256, arm.bearer, hello=False
    )
    await agent.send(
        p.Hello(
            protocol_version=p.PROTOCOL_VERSION,
            agent_version=OLD,
            hostname="arm",
            os="linux",
            arch="arm64",
        )
    )
    await until(lambda: world.cp.hub.is_connected(arm.id))
    with pytest.raises(Conflict, match=r"no agent build for linux/arm64 is bundled.*linux/amd64"):
        await world.updates.update_host(arm.id, OPERATOR)

    (agents_dir / "restic-manager-agent-linux-amd64.json").unlink()
    web2 = await world.host("web2")
    with pytest.raises(Conflict, match="records no version"):
        await world.updates.update_host(web2.id, OPERATOR)
    assert await audit_actions(world.cp) == []  # nothing was attempted


async def test_stale_update_jobs_fail_when_the_service_starts(world: World, tmp_path: Path):
    web1 = await world.host("web1")

    def stale() -> None:
        Job.create(
            id="u-old", host=web1.id, kind="update", status="running", actor="operator",
            created_at=time.time(),
        )  # fmt: skip

    await world.cp.store.transaction(stale)
    again = UpdateService(
        world.cp.ctx, world.cp.alerts, AgentDownloads(tmp_path / "agents", tmp_path)
    )
    await again.start()
    await again.stop()
    row = await job(world.cp, "u-old")
    assert row.status == "failed" and row.error == STALE_JOB_ERROR


# -- the fleet -------------------------------------------------------------------


async def test_fleet_update_goes_host_by_host_and_halts_at_the_first_failure(world: World):
    alpha = await world.host("alpha")
    bravo = await world.host("bravo")
    charlie = await world.host("charlie")
    current = await world.host("current", NEW)  # already up to date: not part of the run
    # Enrolled on an old version, offline now: in the run, skipped if still away.
    await world.host("delta", connect=False)
    run = await world.updates.update_fleet(None, OPERATOR)
    assert [h.host_name for h in run.hosts] == ["alpha", "bravo", "charlie", "delta"]
    assert current.id not in [h.host_id for h in run.hosts]
    with pytest.raises(Conflict, match="already running"):
        await world.updates.update_fleet(None, OPERATOR)

    await alpha.command()
    # One host at a time: bravo hears nothing until alpha is done.
    assert bravo.agent is not None
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await bravo.agent.expect(p.CommandUpdate, timeout=0.3)
    view = world.updates.current()
    assert view is not None and view.current_host_id == alpha.id
    assert [h.state for h in view.hosts] == ["updating", "pending", "pending", "pending"]
    await alpha.restart_as(NEW)

    await bravo.command()
    await bravo.restart_as(OLD)  # the new binary was not the one that started
    done = await asyncio.wait_for(world.updates.wait_fleet(), 10)
    assert done is not None and done.state == "failed"
    assert [h.state for h in done.hosts] == ["succeeded", "failed", "not_started", "not_started"]
    assert done.message is not None and done.message.startswith("Halted at bravo")
    assert charlie.agent is not None
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await charlie.agent.expect(p.CommandUpdate, timeout=0.3)
    assert len(await update_alerts(world.cp, bravo.id)) == 1
    actions = await audit_actions(world.cp)
    assert actions[0] == "agent.fleet_update_started"
    assert actions[-1] == "agent.fleet_update_finished"


async def test_fleet_update_cancel_stops_before_the_next_host(world: World):
    alpha = await world.host("alpha")
    bravo = await world.host("bravo")
    await world.updates.update_fleet([bravo.id, alpha.id], OPERATOR)
    await alpha.command()
    cancelled = await world.updates.cancel(OPERATOR)
    assert cancelled.message is not None and "alpha" in cancelled.message
    done = await asyncio.wait_for(world.updates.wait_fleet(), 5)
    assert done is not None and done.state == "cancelled"
    assert [h.state for h in done.hosts] == ["updating", "not_started"]
    with pytest.raises(Conflict, match="no fleet update is running"):
        await world.updates.cancel(OPERATOR)
    # The update under way finishes on its own and shows in the run's view.
    await alpha.restart_as(NEW)
    await until(
        lambda: world.updates.current().hosts[0].state == "succeeded",  # type: ignore[union-attr]
        what="alpha's update to finish",
    )
    assert bravo.agent is not None
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await bravo.agent.expect(p.CommandUpdate, timeout=0.3)
    assert "agent.fleet_update_cancelled" in await audit_actions(world.cp)


async def test_fleet_update_skips_hosts_that_cannot_take_one(world: World):
    up = await world.host("up")
    gone = await world.host("gone")
    await gone.drop()
    same = await world.host("same", NEW)
    run = await world.updates.update_fleet([up.id, gone.id, same.id], OPERATOR)
    assert {h.host_name: h.state for h in run.hosts}["same"] == "skipped"
    await up.command()
    await up.restart_as(NEW)
    done = await asyncio.wait_for(world.updates.wait_fleet(), 10)
    assert done is not None and done.state == "succeeded"
    states = {h.host_name: (h.state, h.detail) for h in done.hosts}
    assert states["gone"][0] == "skipped" and "offline" in (states["gone"][1] or "")
    assert states["same"] == ("skipped", f"already runs agent {NEW}")
    assert states["up"][0] == "succeeded"
    assert await update_alerts(world.cp, gone.id) == []  # offline is not a failed update

    with pytest.raises(ServiceError, match="host_ids"):
        await world.updates.update_fleet([0], OPERATOR)
    with pytest.raises(ServiceError, match="do not exist"):
        await world.updates.update_fleet([up.id, 9999], OPERATOR)
    # Every outdated host: only "gone" is left, and it is still away.
    run = await world.updates.update_fleet(None, OPERATOR)
    assert [h.host_name for h in run.hosts] == ["gone"]
    done = await asyncio.wait_for(world.updates.wait_fleet(), 10)
    assert done is not None and done.state == "succeeded" and done.hosts[0].state == "skipped"
    assert done.message is not None and done.message.startswith("no host was updated")
    await gone.connect(NEW)
    with pytest.raises(Conflict, match="no host needs an update"):
        await world.updates.update_fleet(None, OPERATOR)


# -- the API routes --------------------------------------------------------------


@pytest.fixture
async def api(world: World) -> AsyncIterator[Callable[..., Awaitable[tuple[int, Any]]]]:
    """UpdatesApi mounted behind the same error shape and actor as ApiListener's."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        request[ACTOR_KEY] = Actor("api", "token:1")
        try:
            return await handler(request)
        except ServiceError as exc:
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
            return web.json_response({"error": error}, status=exc.status)

    app = web.Application(middlewares=[middleware])
    UpdatesApi(world.updates).routes(app.router)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with world.session.request(
            method, f"http://127.0.0.1:{port}/api/v1{path}", json=body
        ) as resp:
            return resp.status, await resp.json()

    try:
        yield call
    finally:
        await runner.cleanup()


async def test_api_routes(world: World, api: Callable[..., Awaitable[tuple[int, Any]]]):
    web1 = await world.host("web1")
    assert await api("GET", "/agent-updates/current") == (
        404,
        {
            "error": {
                "code": "not_found",
                "message": "no fleet update has run since the app started",
                "field": None,
            }
        },
    )
    status, bundled = await api("GET", "/agent-updates/bundled")
    assert status == 200 and bundled == [
        {"os": "linux", "arch": "amd64", "version": NEW, "platform": "linux/amd64"}
    ]
    status, body = await api("POST", "/agent-updates", {"host_ids": "all"})
    assert status == 400 and body["error"]["field"] == "host_ids"
    status, body = await api("POST", "/agent-updates", {"hosts": [1]})
    assert status == 400 and body["error"]["field"] == "hosts"
    status, body = await api("POST", "/hosts/abc/update")
    assert status == 404

    status, body = await api("POST", f"/hosts/{web1.id}/update")
    assert status == 202 and body["state"] == "updating" and body["to_version"] == NEW
    await web1.command()
    await web1.restart_as(NEW)
    await world.updates.wait_host(web1.id)
    status, body = await api("GET", f"/hosts/{web1.id}/update")
    assert status == 200 and body["state"] == "succeeded"

    web2 = await world.host("web2")
    status, body = await api("POST", "/agent-updates")  # no body: every outdated host
    assert status == 202 and [h["host_id"] for h in body["hosts"]] == [web2.id]
    await web2.command()
    status, body = await api("POST", "/agent-updates/current/cancel")
    assert status == 200 and "cancelled by api" in body["message"]
    await world.updates.wait_fleet()
    status, body = await api("GET", "/agent-updates/current")
    assert status == 200 and body["state"] == "cancelled"
    status, body = await api("POST", "/agent-updates/current/cancel")
    assert status == 409
    # The actor is recorded as the API token.
    rows = await world.cp.store.call(
        lambda: [
            (e.actor_kind, e.actor_id)
            for e in AuditEntry.select().where(AuditEntry.action == "agent.update_requested")
        ]
    )
    assert ("api", "token:1") in rows
