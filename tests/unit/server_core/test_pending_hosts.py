"""Announce-and-approve on the server: the pending WebSocket over real TLS with
crafted clients, the service's accept/reject/expiry, rate limit and cap."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent import protocol as p
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import PendingHostsChanged
from server_core.models import AuditEntry, Host, PendingHost
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.announce import (
    AnnounceServer,
    announce_message,
    announce_server,
    announced,
    connect,
    new_key,
    prove,
    raw_public,
    start_announce,
)
from tests.helpers.fake_agent import FakeAgent

REPO = {"url": "/srv/restic/web1", "password": "correct horse battery"}


@pytest.fixture
def service_options() -> dict[str, object]:
    return {}


@pytest.fixture
async def server(
    tmp_path: Path, service_options: dict[str, object]
) -> AsyncIterator[AnnounceServer]:
    async with announce_server(tmp_path / "data", **service_options) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def audit_actions(server: AnnounceServer) -> list[tuple[str, dict]]:
    def run() -> list[tuple[str, dict]]:
        return [
            (str(e.action), json.loads(e.payload))
            for e in AuditEntry.select().order_by(AuditEntry.id)
        ]

    return await server.cp.store.call(run)


async def wait_until(predicate, what: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the handshake ---------------------------------------------------------------


async def test_announce_is_listed_under_its_key_fingerprint(server, session):
    events: list[object] = []
    server.cp.bus.subscribe(events.append)
    key = new_key()
    client, pending = await announced(session, server, key, "web1")
    fingerprint = p.key_fingerprint(raw_public(key))
    assert client.challenge is not None and client.challenge.fingerprint == fingerprint
    assert pending.fingerprint == fingerprint and pending.duplicate is None
    assert pending.expires_at == pytest.approx(time.time() + 3600, abs=5)

    (view,) = await server.pending.list_pending()
    assert view.id == pending.pending_id
    assert view.fingerprint == fingerprint and fingerprint.startswith("SHA256:")
    assert len(fingerprint) == len("SHA256:") + 43  # unpadded base64 of 32 bytes
    assert (view.hostname, view.source_ip, view.os, view.arch) == (
        "web1",
        "127.0.0.1",
        "linux",
        "amd64",
    )
    assert view.connected and view.duplicate is None
    assert any(isinstance(e, PendingHostsChanged) for e in events)
    actions = await audit_actions(server)
    assert any(
        a == "pending_host.announced" and d["fingerprint"] == fingerprint for a, d in actions
    )

    await client.ws.close()
    await wait_until(
        lambda: _connected(server, view.id, False), "the listing to show it disconnected"
    )


async def _connected(server: AnnounceServer, pending_id: int, want: bool) -> bool:
    views = {v.id: v for v in await server.pending.list_pending()}
    return pending_id in views and views[pending_id].connected is want


async def test_a_wrong_signature_is_refused_listed_nowhere_and_audited(server, session):
    client = await start_announce(session, server, hostname="mallory")
    assert client.challenge is not None
    nonce = base64.b64decode(client.challenge.nonce)
    # Signed with a key other than the one announced.
    forged = client.sign(nonce, server.pin, key=new_key())
    await client.send(p.AnnounceProof(signature=forged))
    error = await client.expect(p.Error)
    assert error.code == "unauthorized" and "wrong signature" in error.message
    assert await client.closed()
    assert await server.pending.list_pending() == []
    count = await server.cp.store.call(lambda: PendingHost.select().count())
    assert count == 0
    refused = [d for a, d in await audit_actions(server) if a == "pending_host.proof_refused"]
    assert refused == [
        {
            "source_ip": "127.0.0.1",
            "fingerprint": client.fingerprint,
            "hostname": "mallory",
            "reason": "wrong signature",
        }
    ]


async def test_the_signature_is_bound_to_the_pinned_certificate(server, session):
    client = await start_announce(session, server)
    assert client.challenge is not None
    nonce = base64.b64decode(client.challenge.nonce)
    # A proof made for another server (another certificate) does not pass here.
    await client.send(p.AnnounceProof(signature=client.sign(nonce, "ab" * 32)))
    assert (await client.expect(p.Error)).code == "unauthorized"
    assert await server.pending.list_pending() == []


async def test_a_nonce_is_good_for_one_proof_on_one_connection(server, session):
    key = new_key()
    first = await start_announce(session, server, key)
    assert first.challenge is not None
    old_nonce = base64.b64decode(first.challenge.nonce)
    good = first.sign(old_nonce, server.pin)
    await first.ws.close()

    # Replaying a valid proof of an earlier handshake fails: the nonce is new.
    second = await start_announce(session, server, key)
    assert second.challenge is not None and second.challenge.nonce != first.challenge.nonce
    await second.send(p.AnnounceProof(signature=good))
    assert (await second.expect(p.Error)).code == "unauthorized"
    assert await server.pending.list_pending() == []


async def test_garbage_signature_and_bad_frames_are_refused(server, session):
    client = await start_announce(session, server)
    await client.send(p.AnnounceProof(signature="not base64!"))
    assert (await client.expect(p.Error)).code == "unauthorized"

    # A frame of the agent socket is not an announce.
    ws = await connect(session, server)
    await ws.send_str(p.encode(p.Heartbeat()))
    msg = await ws.receive(timeout=5)
    error = p.decode_announce(msg.data, allowed=p.ANNOUNCE_SERVER_MESSAGES).payload
    assert isinstance(error, p.Error) and error.code == "bad_frame"


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"hostname": "bad host;rm"}, "bad_frame", "--hostname"),
        ({"public_key": base64.b64encode(b"short").decode()}, "bad_frame", "32 bytes"),
        ({"protocol_version": 99}, "protocol_too_new", "update the desktop app"),
        ({"protocol_version": 0}, "protocol_too_old", "update the agent"),
    ],
)
async def test_invalid_announces_get_a_clear_error(server, session, fields, code, text):
    ws = await connect(session, server)
    await ws.send_str(p.encode(announce_message(new_key(), **fields)))
    msg = await ws.receive(timeout=5)
    error = p.decode_announce(msg.data, allowed=p.ANNOUNCE_SERVER_MESSAGES).payload
    assert isinstance(error, p.Error) and error.code == code and text in error.message
    assert await server.pending.list_pending() == []


# -- accept ------------------------------------------------------------------------


async def test_accept_enrols_the_agent_over_its_socket(server, session):
    client, pending = await announced(session, server, hostname="web1")

    async def agent_side() -> p.AnnounceAccepted:
        grant = await client.expect(p.AnnounceAccepted)
        await client.send(p.AnnounceEnrolled(ok=True))
        return grant

    agent = asyncio.create_task(agent_side())
    body = {"repository": REPO, "initial_paths": ["/etc"], "tags": ["lab"]}
    accepted = await server.pending.accept(pending.pending_id, body, OPERATOR)
    grant = await agent
    assert accepted.delivered and accepted.hostname == "web1"
    assert grant.host_id == accepted.host_id and grant.hostname == "web1"
    assert "bearer=<redacted>" in repr(grant)
    assert await client.closed()

    assert await server.cp.enrolment.authenticate(grant.bearer) == accepted.host_id
    host = await server.cp.hosts.get_host(accepted.host_id)
    assert host.enrolled and host.os == "linux" and host.tags == ["lab"]
    assert await server.pending.list_pending() == []
    status = await server.cp.store.call(lambda: PendingHost.get_by_id(pending.pending_id).status)
    assert status == "accepted"

    # The bearer works like a token enrolment's: hello gets the credentials and the probe.
    fake = await FakeAgent.connect(session, server.url, server.pin, grant.bearer)
    config = await fake.expect(p.ConfigUpdate)
    assert config.repository.password == REPO["password"]
    assert (await fake.expect(p.CommandRun)).kind == "init"
    groups = await server.cp.sources.list_groups(accepted.host_id)
    assert [(g.name, g.includes) for g in groups] == [("default", ["/etc"])]

    actions = [a for a, _ in await audit_actions(server)]
    for expected in ("pending_host.accepted", "host.created", "host.enrolled", "job.queued"):
        assert expected in actions
    dumped = json.dumps(await audit_actions(server))
    assert REPO["password"] not in dumped and grant.bearer not in dumped


async def test_accept_under_another_name_and_name_clashes(server, session):
    client, pending = await announced(session, server, hostname="localhost")
    with pytest.raises(InvalidInput) as bad:
        await server.pending.accept(pending.pending_id, {"repository": {"url": "x"}}, OPERATOR)
    assert bad.value.field == "repository.password"

    await server.cp.enrolment.add_host(
        parse_new_host({"hostname": "taken", "repository": REPO}), OPERATOR
    )
    with pytest.raises(Conflict) as clash:
        await server.pending.accept(
            pending.pending_id, {"hostname": "taken", "repository": REPO}, OPERATOR
        )
    assert clash.value.field == "hostname"

    async def agent_side() -> p.AnnounceAccepted:
        grant = await client.expect(p.AnnounceAccepted)
        await client.send(p.AnnounceEnrolled(ok=True))
        return grant

    agent = asyncio.create_task(agent_side())
    accepted = await server.pending.accept(
        pending.pending_id, {"hostname": "db2", "repository": REPO}, OPERATOR
    )
    assert (await agent).hostname == "db2" == accepted.hostname


async def test_accept_needs_the_agent_on_the_line(server, session):
    client, pending = await announced(session, server)
    await client.ws.close()
    await wait_until(lambda: _connected(server, pending.pending_id, False), "the disconnect")
    with pytest.raises(Conflict, match="not connected"):
        await server.pending.accept(pending.pending_id, {"repository": REPO}, OPERATOR)
    with pytest.raises(NotFound):
        await server.pending.accept(9999, {"repository": REPO}, OPERATOR)
    count = await server.cp.store.call(lambda: Host.select().count())
    assert count == 0


@pytest.mark.parametrize("service_options", [{"ack_timeout_s": 0.5}])
async def test_an_unconfirmed_acceptance_is_delivered_again_with_a_new_bearer(server, session):
    key = new_key()
    client, pending = await announced(session, server, key)

    async def lose_it() -> p.AnnounceAccepted:
        grant = await client.expect(p.AnnounceAccepted)
        await client.ws.close()  # gone before confirming
        return grant

    agent = asyncio.create_task(lose_it())
    accepted = await server.pending.accept(pending.pending_id, {"repository": REPO}, OPERATOR)
    lost = await agent
    assert not accepted.delivered and "did not confirm" in accepted.message

    # The same key comes back: it is enrolled with a fresh bearer, the lost one is void.
    again = await start_announce(session, server, key, resume=True)
    grant = await prove(again, server)
    assert isinstance(grant, p.AnnounceAccepted) and grant.host_id == accepted.host_id
    await again.send(p.AnnounceEnrolled(ok=True))
    assert await again.closed()
    assert await server.cp.enrolment.authenticate(grant.bearer) == accepted.host_id
    assert await server.cp.enrolment.authenticate(lost.bearer) is None
    actions = [a for a, _ in await audit_actions(server)]
    assert "pending_host.delivery_pending" in actions and "pending_host.redelivered" in actions


async def test_an_agent_that_cannot_write_its_config_is_enrolled_on_its_next_run(server, session):
    key = new_key()
    client, pending = await announced(session, server, key)

    async def fail() -> None:
        await client.expect(p.AnnounceAccepted)
        await client.send(p.AnnounceEnrolled(ok=False, message="permission denied"))

    agent = asyncio.create_task(fail())
    accepted = await server.pending.accept(pending.pending_id, {"repository": REPO}, OPERATOR)
    await agent
    assert not accepted.delivered and "permission denied" in accepted.message

    again = await start_announce(session, server, key)  # a fresh run, not a resume
    grant = await prove(again, server)
    assert isinstance(grant, p.AnnounceAccepted) and grant.host_id == accepted.host_id


# -- reject and expiry ----------------------------------------------------------------


async def test_reject_tells_the_waiting_agent_why(server, session):
    client, pending = await announced(session, server, hostname="intruder")
    await server.pending.reject(pending.pending_id, "  not one of ours  ", OPERATOR)
    verdict = await client.expect(p.AnnounceRejected)
    assert verdict.outcome == "rejected"
    assert verdict.message == "the operator rejected this host in restic-manager: not one of ours"
    assert await client.closed()
    assert await server.pending.list_pending() == []
    rejected = [d for a, d in await audit_actions(server) if a == "pending_host.rejected"]
    assert rejected[0]["reason"] == "not one of ours"
    assert rejected[0]["hostname"] == "intruder"
    with pytest.raises(NotFound):
        await server.pending.reject(pending.pending_id, None, OPERATOR)
    with pytest.raises(InvalidInput):
        await server.pending.reject(pending.pending_id, "two\nlines", OPERATOR)


async def test_a_rejection_reaches_an_agent_that_was_away(server, session):
    key = new_key()
    client, pending = await announced(session, server, key)
    await client.ws.close()
    await wait_until(lambda: _connected(server, pending.pending_id, False), "the disconnect")
    await server.pending.reject(pending.pending_id, None, OPERATOR)

    back = await start_announce(session, server, key, resume=True)
    verdict = await prove(back, server)
    assert isinstance(verdict, p.AnnounceRejected) and verdict.outcome == "rejected"
    assert await server.pending.list_pending() == []

    # Running announce again later is a new request.
    _, fresh = await announced(session, server, key)
    assert fresh.pending_id == pending.pending_id
    assert [v.id for v in await server.pending.list_pending()] == [pending.pending_id]


async def test_a_reconnect_keeps_the_place_and_the_expiry(server, session):
    key = new_key()
    client, first = await announced(session, server, key)
    await client.ws.close()
    await wait_until(lambda: _connected(server, first.pending_id, False), "the disconnect")
    _, second = await announced(session, server, key, resume=True)
    assert second.pending_id == first.pending_id
    assert second.expires_at == first.expires_at
    actions = [a for a, _ in await audit_actions(server)]
    assert actions.count("pending_host.announced") == 1
    assert actions.count("pending_host.reconnected") == 1


async def test_a_second_connection_with_the_same_key_takes_over(server, session):
    key = new_key()
    old, first = await announced(session, server, key)
    new, second = await announced(session, server, key)
    assert second.pending_id == first.pending_id
    verdict = await old.expect(p.AnnounceRejected)
    assert verdict.outcome == "refused" and "took over" in verdict.message
    assert await _connected(server, first.pending_id, True)
    assert not new.ws.closed


@pytest.mark.parametrize("service_options", [{"ttl_s": 0.6, "sweep_interval_s": 0.05}])
async def test_an_unanswered_request_expires_and_the_agent_is_told(server, session):
    client, pending = await announced(session, server)
    verdict = await client.expect(p.AnnounceRejected, timeout=5)
    assert verdict.outcome == "expired" and "run announce again" in verdict.message.lower()
    assert await client.closed()
    status = await server.cp.store.call(lambda: PendingHost.get_by_id(pending.pending_id).status)
    assert status == "expired"
    assert await server.pending.list_pending() == []
    assert "pending_host.expired" in [a for a, _ in await audit_actions(server)]
    with pytest.raises(NotFound):
        await server.pending.accept(pending.pending_id, {"repository": REPO}, OPERATOR)


# -- duplicates -------------------------------------------------------------------------


async def test_duplicate_hostnames_are_flagged(server, session):
    await server.cp.enrolment.add_host(
        parse_new_host({"hostname": "web1", "repository": REPO}), OPERATOR
    )
    _, a = await announced(session, server, hostname="WEB1")
    _, b = await announced(session, server, hostname="db1")
    _, c = await announced(session, server, hostname="db1")
    _, d = await announced(session, server, hostname="mail")
    assert a.duplicate == "a host named WEB1 already exists"
    assert b.duplicate is None  # the first of its name had no twin yet
    assert c.duplicate == "1 other pending host(s) also claim db1"
    flags = {v.id: v.duplicate for v in await server.pending.list_pending()}
    assert flags == {
        a.pending_id: "a host named WEB1 already exists",
        b.pending_id: "1 other pending host(s) also claim db1",
        c.pending_id: "1 other pending host(s) also claim db1",
        d.pending_id: None,
    }


# -- floods ------------------------------------------------------------------------------


async def _try_connect(session: aiohttp.ClientSession, server: AnnounceServer) -> object:
    try:
        return await connect(session, server)
    except aiohttp.WSServerHandshakeError as exc:
        return exc


async def test_per_ip_rate_limit_under_a_flood(server, session):
    # 30 connections at once from one address: a burst of 10 gets through.
    results = await asyncio.gather(*(_try_connect(session, server) for _ in range(30)))
    upgraded = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
    refused = [r for r in results if isinstance(r, aiohttp.WSServerHandshakeError)]
    assert len(upgraded) == 10 and len(refused) == 20
    assert {r.status for r in refused} == {429}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # Another source address has its own bucket (127.0.0.2 is loopback too).
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        _, pending = await announced(other, server, hostname="elsewhere")
    assert (await server.pending.get_pending(pending.pending_id)).source_ip == "127.0.0.2"
    # One audit line for the whole flood, not twenty.
    limited = [d for a, d in await audit_actions(server) if a == "pending_host.rate_limited"]
    assert limited == [{"source_ip": "127.0.0.1", "limit_per_minute": 10.0}]
    for ws in upgraded:
        await ws.close()


@pytest.mark.parametrize("service_options", [{"rate_per_minute": 100_000}])
async def test_global_cap_under_a_flood_of_distinct_keys(server, session):
    async def one(i: int) -> p.Message | None:
        client = await start_announce(session, server, hostname=f"h{i}")
        return await prove(client, server)

    answers = await asyncio.gather(*(one(i) for i in range(110)))
    listed = [a for a in answers if isinstance(a, p.AnnouncePending)]
    refused = [a for a in answers if isinstance(a, p.AnnounceRejected)]
    assert len(listed) == server.pending.max_pending == 100
    assert len(refused) == 10
    assert {r.outcome for r in refused} == {"refused"}
    assert "100 hosts are already waiting" in refused[0].message
    assert len(await server.pending.list_pending()) == 100
    refusals = [d for a, d in await audit_actions(server) if a == "pending_host.refused"]
    assert len(refusals) == 1  # throttled: one line per minute


@pytest.mark.parametrize("service_options", [{"max_open_sockets": 5, "rate_per_minute": 1000}])
async def test_open_socket_cap_holds_off_idle_connections(server, session):
    held = [await connect(session, server) for _ in range(5)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(session, server)
    assert refused.value.status == 503
    await held.pop().close()

    async def slot_free() -> bool:
        return server.pending.open_sockets < 5

    await wait_until(slot_free, "the slot to be released")
    held.append(await connect(session, server))
    for ws in held:
        await ws.close()
