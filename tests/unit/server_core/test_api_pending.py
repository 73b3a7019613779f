"""The operator API for pending hosts, on the control plane's own listeners:
an announcing client on listener A, the API on listener B (needs the
control plane wiring of PendingHostService)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

from agent import protocol as p
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import AuditEntry
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR
from tests.helpers.announce import AnnounceServer, announced

REPO = {"url": "/srv/restic/api1", "password": "api-secret-pw"}


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
def server(cp: ControlPlane) -> AnnounceServer:
    # The control plane's own listener and service, as the app runs them.
    return AnnounceServer(cp, cp.pending_hosts, cp.agent_url, cp.certificate.sha256)


@pytest.fixture
async def api(cp: ControlPlane) -> AsyncIterator[Any]:
    token = await cp.store.transaction(create_api_token, "tests", OPERATOR)
    async with aiohttp.ClientSession(
        base_url=cp.api_url, headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(api: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with api.request(method, "/api/v1" + path, **kw) as resp:
        return resp.status, await resp.json()


async def test_list_accept_and_reject_through_the_api(cp, server, api, session):
    assert await call(api, "GET", "/pending-hosts") == (200, [])
    client, pending = await announced(session, server, hostname="api1")
    other, second = await announced(session, server, hostname="api2")

    status, listed = await call(api, "GET", "/pending-hosts")
    assert status == 200 and [h["id"] for h in listed] == [pending.pending_id, second.pending_id]
    first = listed[0]
    assert first["fingerprint"] == client.fingerprint and first["hostname"] == "api1"
    assert first["source_ip"] == "127.0.0.1" and first["connected"] is True
    assert set(first) == {
        "id",
        "fingerprint",
        "hostname",
        "source_ip",
        "os",
        "arch",
        "agent_version",
        "created_at",
        "expires_at",
        "connected",
        "duplicate",
    }

    async def agent_side() -> p.AnnounceAccepted:
        grant = await client.expect(p.AnnounceAccepted, timeout=10)
        await client.send(p.AnnounceEnrolled(ok=True))
        return grant

    agent = asyncio.create_task(agent_side())
    status, body = await call(
        api,
        "POST",
        f"/pending-hosts/{pending.pending_id}/accept",
        json={"repository": REPO, "tags": ["api"]},
    )
    grant = await agent
    assert status == 201, body
    assert body == {
        "host_id": grant.host_id,
        "hostname": "api1",
        "delivered": True,
        "message": "api1 was added and its agent enrolled",
    }
    status, host = await call(api, "GET", f"/hosts/{grant.host_id}")
    assert status == 200 and host["enrolled"] and host["tags"] == ["api"]

    status, body = await call(
        api, "POST", f"/pending-hosts/{second.pending_id}/reject", json={"reason": "spare"}
    )
    assert (status, body) == (200, {"rejected": second.pending_id})
    verdict = await other.expect(p.AnnounceRejected)
    assert verdict.message.endswith(": spare")
    assert await call(api, "GET", "/pending-hosts") == (200, [])

    def actors() -> set[tuple[str, str]]:
        rows = AuditEntry.select().where(AuditEntry.action.startswith("pending_host."))
        return {(str(r.action), str(r.actor_kind)) for r in rows}

    found = await cp.store.call(actors)
    assert ("pending_host.accepted", "api") in found and ("pending_host.rejected", "api") in found


async def test_api_refusals_name_the_problem(cp, server, api, session):
    _, pending = await announced(session, server, hostname="api3")
    base = f"/pending-hosts/{pending.pending_id}"
    status, body = await call(api, "POST", base + "/accept", json={"repository": REPO, "x": 1})
    assert status == 400 and "unknown field(s): x" in body["error"]["message"]
    status, body = await call(api, "POST", base + "/accept", json={"repository": {"url": "/r"}})
    assert status == 400 and body["error"]["field"] == "repository.password"
    status, body = await call(api, "POST", base + "/accept", data=b"{nope")
    assert status == 400 and body["error"]["code"] == "invalid"
    status, body = await call(api, "POST", "/pending-hosts/999/accept", json={"repository": REPO})
    assert status == 404
    status, body = await call(api, "POST", "/pending-hosts/abc/reject")
    assert status == 404
    status, body = await call(api, "POST", base + "/reject", json={"why": "x"})
    assert status == 400 and body["error"]["field"] == "why"
    status, body = await call(api, "POST", base + "/reject", json={"reason": 5})
    assert status == 400 and body["error"]["field"] == "reason"
    # No body at all is a reject without a reason.
    assert await call(api, "POST", base + "/reject") == (200, {"rejected": pending.pending_id})
    async with (
        aiohttp.ClientSession(base_url=cp.api_url) as anonymous,
        anonymous.get("/api/v1/pending-hosts") as resp,
    ):
        assert resp.status == 401


async def test_the_agent_listener_serves_the_pending_socket(cp, server, session):
    # Rate limit and cap at the shipped values on the real listener.
    assert cp.pending_hosts.max_pending == 100
    assert cp.pending_hosts.ttl_s == 3600
    client, pending = await announced(session, server)
    assert pending.fingerprint == client.fingerprint
