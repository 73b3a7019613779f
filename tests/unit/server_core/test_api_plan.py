"""The plan API end to end in process: a real control plane (SQLite, API
listener, agent listener over TLS) and a hand-driven agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

from agent import protocol as p
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import Host, Maintenance
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self._s = session
        self._base = base + "/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self._s.request(
            method, self._base + path, json=body, headers=self._headers
        ) as resp:
            data = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, data


@pytest.fixture
async def api(cp: ControlPlane, session: aiohttp.ClientSession) -> Api:
    raw = await cp.store.transaction(create_api_token, "tests", OPERATOR)
    return Api(session, cp.api_url, raw)


async def enrolled(
    cp: ControlPlane, session: aiohttp.ClientSession, admin: bool = False
) -> tuple[int, FakeAgent]:
    body: dict[str, Any] = {
        "hostname": "web1",
        "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
        "initial_paths": ["/etc"],
    }
    if admin:
        body["admin_repository"] = {"url": "/srv/r", "password": "the-admin-pw"}
    grant = await cp.enrolment.add_host(parse_new_host(body), OPERATOR)
    reply = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, "web1")
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, reply["bearer"])
    return int(reply["host_id"]), agent


async def test_new_hosts_get_a_maintenance_plan_and_their_first_hello_gets_the_set(
    cp, session, api
):
    host_id, agent = await enrolled(cp, session)
    assert await cp.store.call(lambda: Maintenance.select().count()) == 1
    plan = await agent.expect(p.ScheduleSet)
    assert plan.version == 1
    assert [g.name for g in plan.source_groups] == ["default"]
    assert plan.maintenance.forget_cron == "30 3 * * *"
    # The agent acks: the host row says it is in sync.
    await agent.send(p.ScheduleAck(version=1))
    for _ in range(100):
        if (await cp.hosts.get_host(host_id)).schedule_acked_version == 1:
            break
        await asyncio.sleep(0.02)
    _, row = await api.call("GET", f"/hosts/{host_id}")
    assert (row["schedule_version"], row["schedule_acked_version"]) == (1, 1)
    assert row["next_run_at"] is None and len(row["size_history"]) == 30


async def test_source_group_and_schedule_routes(cp, session, api):
    host_id, agent = await enrolled(cp, session)
    await agent.expect(p.ScheduleSet)
    base = f"/hosts/{host_id}"
    status, group = await api.call(
        "POST",
        base + "/source-groups",
        {
            "name": "db",
            "includes": ["/var/lib/db", "C:\\Data"],
            "retention": {"keep_hourly": 24, "keep_daily": 7},
            "pre_hook": "pg_dump > /tmp/x",
        },
    )
    assert status == 201, group
    assert group["pre_hook"] == "pg_dump > /tmp/x" and group["retention"]["keep_daily"] == 7
    plan = await agent.expect(p.ScheduleSet)
    assert plan.version == 2 and plan.source_groups[-1].pre_hook == "pg_dump > /tmp/x"

    status, err = await api.call(
        "POST", base + "/source-groups", {"name": "bad", "includes": ["relative/path"]}
    )
    assert status == 400 and err["error"]["field"] == "includes"
    assert "absolute path" in err["error"]["message"]

    status, sched = await api.call(
        "POST", base + "/schedules", {"cron": "0 2 * * *", "source_group_ids": [group["id"]]}
    )
    assert status == 201, sched
    assert sched["description"] == "every day at 02:00"
    assert sched["next_run_at"] and sched["last_run_at"] is None
    status, listed = await api.call("GET", base + "/schedules")
    assert listed == [sched]
    status, one = await api.call("GET", f"{base}/schedules/{sched['id']}")
    assert one == sched
    status, conflicts = await api.call("GET", base + "/conflicts")
    kinds = {c["kind"] for c in conflicts}
    assert "keep_hourly_without_faster_schedule" in kinds and "group_not_scheduled" in kinds

    status, err = await api.call(
        "PUT", f"{base}/schedules/{sched['id']}", {"cron": "0 2 * *", "source_group_ids": [1]}
    )
    assert status == 400 and err["error"]["field"] == "cron"
    status, err = await api.call("DELETE", f"{base}/source-groups/{group['id']}")
    assert status == 409 and f"#{sched['id']}" in err["error"]["message"]

    # PUT what was read back, changed: read-only fields are accepted.
    status, updated = await api.call(
        "PUT", f"{base}/source-groups/{group['id']}", dict(group, excludes=["*.tmp"])
    )
    assert status == 200 and updated["excludes"] == ["*.tmp"]
    status, _ = await api.call("DELETE", f"{base}/schedules/{sched['id']}")
    assert status == 204
    status, _ = await api.call("DELETE", f"{base}/source-groups/{group['id']}")
    assert status == 204
    status, err = await api.call("GET", f"{base}/source-groups/{group['id']}")
    assert status == 404
    status, err = await api.call("GET", f"{base}/schedules/abc")
    assert status == 404
    plan = await agent.expect(p.ScheduleSet)
    while plan.version < 6:
        plan = await agent.expect(p.ScheduleSet)
    assert [g.name for g in plan.source_groups] == ["default"] and plan.schedules == []


async def test_maintenance_routes_and_jobs(cp, session, api):
    host_id, agent = await enrolled(cp, session, admin=True)
    await agent.expect(p.ScheduleSet)
    base = f"/hosts/{host_id}"
    status, maint = await api.call("GET", base + "/maintenance")
    assert status == 200 and maint["prune_cron"] == "30 4 * * 0" and maint["due"] == []
    status, maint = await api.call("PUT", base + "/maintenance", {"check_subset_percent": 10})
    assert status == 200 and maint["check_subset_percent"] == 10
    status, err = await api.call("PUT", base + "/maintenance", {"check_subset_percent": 0})
    assert status == 400 and err["error"]["field"] == "check_subset_percent"

    status, body = await api.call("POST", base + "/jobs", {"kind": "forget"})
    assert status == 202
    run = await agent.expect(p.CommandRun)
    while run.job_id != body["job_id"]:
        run = await agent.expect(p.CommandRun)
    assert run.kind == "forget" and run.credentials is not None
    assert run.credentials.password == "the-admin-pw"
    status, body = await api.call("POST", base + "/jobs", {"kind": "check"})
    run = await agent.expect(p.CommandRun)
    assert run.kind == "check" and run.args == {"read_data_subset_percent": 10}
    assert run.credentials is None
    status, err = await api.call("POST", base + "/jobs", {"kind": "check", "source_group_id": 1})
    assert status == 400 and err["error"]["field"] == "source_group_id"

    group_id = (await cp.sources.list_groups(host_id))[0].id
    status, body = await api.call(
        "POST",
        base + "/jobs",
        {"kind": "backup", "source_group_id": group_id, "upload_kib_s": 64},
    )
    assert status == 202, body
    run = await agent.expect(p.CommandRun)
    assert run.kind == "backup" and run.bandwidth == p.Bandwidth(upload_kib_s=64)
    status, err = await api.call("POST", base + "/jobs", {"kind": "prune", "upload_kib_s": 64})
    assert status == 400

    status, stats = await api.call("GET", base + "/repo-stats?days=30")
    assert status == 200 and stats["history"] == [] and stats["total_size"] is None
    status, err = await api.call("GET", base + "/repo-stats?days=-1")
    assert status == 400 and err["error"]["field"] == "days"

    status, err = await api.call("POST", base + "/repo/reinit", {"confirm": "web2"})
    assert status == 400 and err["error"]["field"] == "confirm"
    status, body = await api.call("POST", base + "/repo/reinit", {"confirm": "web1"})
    assert status == 202 and body["job_id"]


async def test_default_hooks_route(cp, session, api):
    host_id, agent = await enrolled(cp, session)
    await agent.expect(p.ScheduleSet)
    status, hooks = await api.call("PUT", f"/hosts/{host_id}/hooks", {"pre_hook": "sync"})
    assert status == 200 and hooks == {"host_id": host_id, "pre_hook": "sync", "post_hook": None}
    config = await agent.expect(p.ConfigUpdate)
    while config.default_pre_hook != "sync":
        config = await agent.expect(p.ConfigUpdate)
    status, hooks = await api.call("GET", f"/hosts/{host_id}/hooks")
    assert hooks["pre_hook"] == "sync"
    status, err = await api.call("PUT", f"/hosts/{host_id}/hooks", {"pre": "x"})
    assert status == 400 and "unknown field" in err["error"]["message"]


async def test_due_maintenance_runs_when_the_host_comes_online(cp, session, api):
    host_id, agent = await enrolled(cp, session, admin=True)
    await agent.expect(p.ScheduleSet)
    await agent.ws.close()

    def make_due() -> None:
        Host.update(repo_status="ready").where(Host.id == host_id).execute()
        # Prune and check off: their defaults fire at fixed wall-clock times
        # (Sunday 04:30, Saturday 05:30) that a run may fall just after.
        Maintenance.update(
            forget_cron="* * * * *",
            prune_cron=None,
            check_cron=None,
            created_at=time.time() - 600,
        ).where(Maintenance.host == host_id).execute()

    await cp.store.transaction(make_due)
    for _ in range(100):
        if (await cp.hosts.get_host(host_id)).status == "offline":
            break
        await asyncio.sleep(0.02)
    _, maint = await api.call("GET", f"/hosts/{host_id}/maintenance")
    assert maint["due"] == ["forget"]
    bearer_agent = await reconnect(cp, session, host_id)
    run = await bearer_agent.expect(p.CommandRun, timeout=15)
    while run.kind != "forget":
        run = await bearer_agent.expect(p.CommandRun, timeout=15)
    assert run.actor == "system" and run.credentials is not None


async def reconnect(cp: ControlPlane, session: aiohttp.ClientSession, host_id: int) -> FakeAgent:
    from server_core import tokens

    bearer = tokens.new_token("rmb")
    await cp.store.transaction(
        lambda: (
            Host.update(bearer_hash=tokens.hash_token(bearer)).where(Host.id == host_id).execute()
        )
    )
    return await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, bearer)
