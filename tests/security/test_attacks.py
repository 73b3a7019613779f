"""Attacks on the control plane, each refused AND audited: a real control plane,
real TLS, hand-driven agents (tests/helpers/fake_agent.py).

What an agent can do with its own bearer against other hosts, stolen or
guessed credentials, floods, and the audit rows they leave (bounded: one row
per source, action and reason a minute, with a count of the ones left out).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

from agent import protocol as p
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import AuditEntry, EnrolmentToken
from server_core.rate_limit import AuditThrottle, FailureGuard
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.views import AuditView
from tests.helpers.announce import connect as announce_connect
from tests.helpers.announce import new_key, raw_public
from tests.helpers.fake_agent import FakeAgent, enrol, pinned, receive_envelope

PASSWORDS = {"alpha": "alpha-repo-secret-1", "bravo": "bravo-repo-secret-2"}
ADMIN_PASSWORD = "bravo-admin-secret-3"


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


def other_source() -> aiohttp.ClientSession:
    """A session from 127.0.0.2: another source address with its own limits."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


async def add_host(cp: ControlPlane, name: str, *, admin: bool = False) -> tuple[int, str]:
    body: dict[str, Any] = {
        "hostname": name,
        "repository": {"url": f"/srv/{name}", "password": PASSWORDS[name]},
        "initial_paths": ["/etc"],
    }
    if admin:
        body["admin_repository"] = {"url": f"/srv/{name}", "password": ADMIN_PASSWORD}
    grant = await cp.enrolment.add_host(parse_new_host(body), OPERATOR)
    return grant.host_id, grant.token


async def enrolled(
    cp: ControlPlane, session: aiohttp.ClientSession, name: str, *, admin: bool = False
) -> tuple[int, str, FakeAgent]:
    _, token = await add_host(cp, name, admin=admin)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, name)
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    return int(body["host_id"]), str(body["bearer"]), agent


async def audit_rows(cp: ControlPlane, action: str) -> list[AuditView]:
    await cp.enrolment.refusals.flush()
    return list(await cp.store.call(list_audit, action=action))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def ws_status(
    session: aiohttp.ClientSession, cp: ControlPlane, bearer: str | None
) -> tuple[int, dict[str, str]]:
    """The HTTP status of an agent WebSocket attempt (101 when upgraded)."""
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    try:
        ws = await session.ws_connect(
            cp.agent_url + p.WS_PATH, headers=headers, ssl=pinned(cp.certificate.sha256)
        )
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, dict(exc.headers or {})
    await ws.close()
    return 101, {}


async def enrol_status(
    session: aiohttp.ClientSession, cp: ControlPlane, token: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = p.EnrolRequest(token=token, hostname="x", os="linux", arch="amd64", agent_version="1")
    async with session.post(
        cp.agent_url + p.ENROL_PATH, json=p.to_dict(req), ssl=pinned(cp.certificate.sha256)
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def drain(agent: FakeAgent, seconds: float) -> list[str]:
    """Every text frame the agent receives within ``seconds``."""
    frames: list[str] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            msg = await agent.ws.receive(timeout=left)
        except TimeoutError:
            break
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frames.append(msg.data)
    return frames


# -- one host's bearer against another host ------------------------------------------


async def test_agent_a_cannot_start_or_advance_host_bs_dispatched_job(cp, session):
    """test_agent_listener covers a forged finish and log; here the job is one
    the control plane dispatched to B, and A tries to start it and move it."""
    b_id, _, agent_b = await enrolled(cp, session, "bravo")
    probe = await agent_b.expect(p.CommandRun)  # B's own job: the repository probe
    _, _, agent_a = await enrolled(cp, session, "alpha")
    before = await cp.jobs.get_job(probe.job_id)
    forged = [
        p.JobStarted(job_id=probe.job_id, seq=1, kind="init", actor="agent", started_at=1.0),
        p.JobProgress(job_id=probe.job_id, seq=2, progress=p.Progress(percent=99.0)),
    ]
    await agent_a.acked({await agent_a.send(m) for m in forged})
    after = await cp.jobs.get_job(probe.job_id)
    assert (after.status, after.host_id, after.started_at) == (
        before.status,
        b_id,
        before.started_at,
    )
    refused = await audit_rows(cp, "agent.event_refused")
    assert sorted(r.payload["type"] for r in refused) == ["job.progress", "job.started"]
    assert all("belongs to another host" in r.payload["reason"] for r in refused)


async def test_snapshot_reports_only_touch_the_reporting_host(cp, session):
    b_id, _, agent_b = await enrolled(cp, session, "bravo")
    a_id, _, agent_a = await enrolled(cp, session, "alpha")
    snap = p.SnapshotInfo(
        id="b" * 64,
        short_id="bbbbbbbb",
        time="2025-01-01T00:00:00Z",
        hostname="bravo",
        paths=["/etc"],
        tags=["default"],
        tree="c" * 64,
    )
    await agent_b.acked({await agent_b.send(p.SnapshotsReport(collected_at=1.0, snapshots=[snap]))})
    # A claims B's snapshot (same id, B's hostname), then reports a complete
    # empty list: both land on A's own list, B's is untouched.
    claim = p.SnapshotsReport(collected_at=2.0, snapshots=[snap])
    await agent_a.acked({await agent_a.send(claim)})
    assert [s.id for s in await cp.hosts.list_snapshots(a_id)] == [snap.id]
    wipe = p.SnapshotsReport(collected_at=3.0, snapshots=[], complete=True)
    await agent_a.acked({await agent_a.send(wipe)})
    assert [s.id for s in await cp.hosts.list_snapshots(b_id)] == [snap.id]
    assert await cp.hosts.list_snapshots(a_id) == []


async def test_agent_a_cannot_answer_or_read_a_call_made_to_host_b(cp, session):
    """Browsing B's snapshot goes to B's connection only; A answering B's call
    (with B's call id) is refused, leaves B's answer intact and is audited."""
    b_id, _, agent_b = await enrolled(cp, session, "bravo")
    a_id, _, agent_a = await enrolled(cp, session, "alpha")
    params = {"snapshot_id": "b" * 64, "path": "/", "offset": 0, "limit": 100}
    call = asyncio.ensure_future(cp.rpc.call(b_id, p.TREE_LIST, params, timeout_s=5))
    # The call reaches B, never A.
    while True:
        envelope = await receive_envelope(agent_b)
        assert envelope is not None
        if isinstance(envelope.payload, p.RpcCall):
            break
    assert not [f for f in await drain(agent_a, 0.3) if p.RpcCall.TYPE in f]
    spoofed = p.RpcResult(call_id=envelope.id, ok=True, result={"entries": ["forged"]})
    await agent_a.send(spoofed)

    async def refusal_recorded() -> bool:
        return bool(await audit_rows(cp, "agent.rpc_result_refused"))

    await eventually(refusal_recorded, "the refused rpc result to be audited")
    assert not call.done()
    await agent_b.send(p.RpcResult(call_id=envelope.id, ok=True, result={"entries": []}))
    assert await call == {"entries": []}
    (row,) = await audit_rows(cp, "agent.rpc_result_refused")
    assert (row.actor_id, row.target_id) == (str(a_id), str(b_id))
    assert row.payload["method"] == p.TREE_LIST


async def test_credentials_are_pushed_only_to_their_own_host(cp, session):
    """A's session sees its own password and nothing of B's: not at hello, not
    when the operator changes B's credentials, not B's admin slot for a prune."""
    b_id, _, agent_b = await enrolled(cp, session, "bravo", admin=True)
    _, _, agent_a = await enrolled(cp, session, "alpha")
    # A's hello named "h" (FakeAgent); claiming B's name in hello changes nothing.
    frames = await drain(agent_a, 0.5)
    assert any(PASSWORDS["alpha"] in f for f in frames)
    await cp.hosts.set_credentials(
        b_id, "everyday", {"url": "/srv/bravo", "password": "bravo-new-secret-4"}, OPERATOR
    )
    b_config = await agent_b.expect(p.ConfigUpdate)  # the one of its hello
    while b_config.repository.password != "bravo-new-secret-4":
        b_config = await agent_b.expect(p.ConfigUpdate)
    await cp.maintenance.run_now(b_id, "prune", OPERATOR)
    prune = await agent_b.expect(p.CommandRun)
    while prune.kind != "prune":
        prune = await agent_b.expect(p.CommandRun)
    # B gets its admin slot for the prune; A does not.
    assert prune.credentials is not None and prune.credentials.password == ADMIN_PASSWORD
    frames += await drain(agent_a, 0.5)
    seen = "\n".join(frames)
    for secret in (PASSWORDS["bravo"], "bravo-new-secret-4", ADMIN_PASSWORD, "/srv/bravo"):
        assert secret not in seen


async def test_an_agent_bearer_does_not_open_the_operator_api(cp, session):
    _, bearer, _ = await enrolled(cp, session, "alpha")
    for path in ("/api/v1/hosts", "/api/v1/hosts/1/snapshots", "/api/v1/server"):
        async with session.get(
            cp.api_url + path, headers={"Authorization": f"Bearer {bearer}"}
        ) as resp:
            assert resp.status == 401
    # Nor does the agent listener serve anything to read with it.
    async with session.get(
        cp.agent_url + "/api/v1/hosts",
        headers={"Authorization": f"Bearer {bearer}"},
        ssl=pinned(cp.certificate.sha256),
    ) as resp:
        assert resp.status == 404

    async def audited() -> bool:
        return bool(await cp.store.call(list_audit, action="api.auth_refused"))

    await eventually(audited, "the API refusal to be audited")
    (row,) = await cp.store.call(list_audit, action="api.auth_refused")
    assert row.actor_kind == "api"
    assert row.payload["reason"] == "unknown or revoked API token"
    assert row.payload["source_ip"] == "127.0.0.1"
    # One row a minute for the source: the two other refusals are counted, not written.
    assert row.payload["repeats"] == 0
    assert bearer not in str(row.payload)


# -- enrolment tokens and bearers -------------------------------------------------------


async def test_reused_expired_and_revoked_tokens_are_refused_and_audited(cp, session):
    _, used = await add_host(cp, "alpha")
    assert (await enrol_status(session, cp, used))[0] == 200
    _, expired = await add_host(cp, "bravo")

    def expire() -> None:
        EnrolmentToken.update(expires_at=time.time() - 1).where(
            EnrolmentToken.used_at.is_null()
        ).execute()

    await cp.store.transaction(expire)
    c_id, _ = await add_host_named(cp, "charlie")
    revoked_token = await cp.enrolment.regenerate_token(c_id, OPERATOR)
    await cp.enrolment.revoke_token(revoked_token.token_id or 0, OPERATOR)
    for token, reason in (
        (used, "token already used"),
        (expired, "token expired"),
        (revoked_token.token, "token revoked"),
        ("rme_" + "A" * 43, "unknown token"),
    ):
        status, body, _ = await enrol_status(session, cp, token)
        assert (status, body["error"]["code"]) == (401, "unauthorized"), reason
        assert reason in body["error"]["message"]
    rows = await audit_rows(cp, "enrolment.refused")
    assert sorted(r.payload["reason"] for r in rows) == sorted(
        ["token already used", "token expired", "token revoked", "unknown token"]
    )
    assert {r.payload["source_ip"] for r in rows} == {"127.0.0.1"}
    assert all(r.payload["repeats"] == 0 for r in rows)
    for token in (used, expired, revoked_token.token):
        assert all(token not in str(r.payload) for r in rows)


async def add_host_named(cp: ControlPlane, name: str) -> tuple[int, str]:
    grant = await cp.enrolment.add_host(
        parse_new_host({"hostname": name, "repository": {"url": "/srv/c", "password": "pw-c1"}}),
        OPERATOR,
    )
    return grant.host_id, grant.token


async def test_a_deleted_hosts_bearer_is_refused_and_audited(cp, session):
    host_id, bearer, agent = await enrolled(cp, session, "alpha")
    await agent.expect(p.ConfigUpdate)
    await cp.hosts.delete_host(host_id, OPERATOR)
    assert (await ws_status(session, cp, bearer))[0] == 401
    assert (await ws_status(session, cp, None))[0] == 401
    rows = await audit_rows(cp, "agent.auth_refused")
    assert sorted(r.payload["reason"] for r in rows) == ["no bearer", "unknown or revoked bearer"]
    assert all(bearer not in str(r.payload) for r in rows)


async def test_guessing_bearers_is_rate_limited_per_source_and_audited_once(cp, session):
    _, bearer, agent = await enrolled(cp, session, "alpha")
    await agent.ws.close()
    statuses = [(await ws_status(session, cp, f"rmb_guess{i}"))[0] for i in range(25)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    status, headers = await ws_status(session, cp, "rmb_guess99")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    # A valid bearer from the same address (another agent behind the same NAT)
    # still gets in: only failures are held off.
    assert (await ws_status(session, cp, bearer))[0] == 101
    refused = await audit_rows(cp, "agent.auth_refused")
    limited = await audit_rows(cp, "agent.rate_limited")
    assert len(refused) == 1 and len(limited) == 1
    assert limited[0].payload["source_ip"] == "127.0.0.1"
    # Another source is not affected: its first wrong guess is a plain 401.
    async with other_source() as other:
        assert (await ws_status(other, cp, "rmb_other"))[0] == 401


async def test_guessing_enrolment_tokens_is_rate_limited_and_audited_once(cp, session):
    _, good = await add_host(cp, "alpha")
    results = [await enrol_status(session, cp, f"rme_guess{i}") for i in range(15)]
    assert [s for s, _, _ in results[:10]] == [401] * 10
    assert {s for s, _, _ in results[10:]} == {429}
    status, body, headers = await enrol_status(session, cp, good)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    async with other_source() as other:
        assert (await enrol_status(other, cp, good))[0] == 200
    refused = await audit_rows(cp, "enrolment.refused")
    limited = await audit_rows(cp, "enrolment.rate_limited")
    assert len(refused) == 1 and len(limited) == 1
    assert refused[0].payload["reason"] == "unknown token"


async def test_a_flood_of_refusals_costs_a_bounded_number_of_audit_rows(cp, session):
    """Hundreds of refused requests from one source: a handful of rows in all."""
    before = await cp.store.call(lambda: AuditEntry.select().count())
    for i in range(100):
        await ws_status(session, cp, f"rmb_flood{i}")
        await enrol_status(session, cp, f"rme_flood{i}")
    async with session.get(cp.api_url + "/api/v1/hosts") as resp:
        assert resp.status == 401
    await cp.enrolment.refusals.flush()

    async def rows() -> int:
        return int(await cp.store.call(lambda: AuditEntry.select().count())) - before

    # agent.auth_refused, agent.rate_limited, enrolment.refused,
    # enrolment.rate_limited, api.auth_refused (written in the background).
    async def five() -> bool:
        return await rows() >= 5

    await eventually(five, "the five audit rows")
    await asyncio.sleep(0.2)
    assert await rows() == 5


# -- announce flood -------------------------------------------------------------------


async def test_an_announce_flood_with_forged_proofs_is_bounded_and_audited(cp, session):
    """test_pending_hosts covers the rate limit and the cap with good proofs;
    here every proof is forged: nothing is listed, and the refusals cost one
    audit row per source a minute, not one each."""
    refused_upgrades = 0
    forged = 0
    for _ in range(20):
        try:
            ws = await announce_connect(session, _as_announce_server(cp))
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 429
            refused_upgrades += 1
            continue
        key = new_key()
        await ws.send_str(p.encode(_announce(key)))
        msg = await ws.receive(timeout=5)
        challenge = p.decode_announce(msg.data, allowed=p.ANNOUNCE_SERVER_MESSAGES).payload
        assert isinstance(challenge, p.AnnounceChallenge)
        nonce = base64.b64decode(challenge.nonce)
        wrong = new_key().sign(
            p.announce_signed_bytes(nonce, raw_public(key), cp.certificate.sha256)
        )
        await ws.send_str(p.encode(p.AnnounceProof(signature=base64.b64encode(wrong).decode())))
        answer = await ws.receive(timeout=5)
        error = p.decode_announce(answer.data, allowed=p.ANNOUNCE_SERVER_MESSAGES).payload
        assert isinstance(error, p.Error) and error.code == "unauthorized"
        forged += 1
        await ws.close()
    assert (forged, refused_upgrades) == (10, 10)
    assert await cp.pending_hosts.list_pending() == []

    async def recorded() -> bool:
        rows = await cp.store.call(list_audit, action="pending_host.rate_limited")
        return bool(rows)

    await eventually(recorded, "the rate limit to be audited")
    proofs = await cp.store.call(list_audit, action="pending_host.proof_refused")
    assert len(proofs) == 1
    assert proofs[0].payload["source_ip"] == "127.0.0.1"


def _announce(key: Any) -> p.Announce:
    return p.Announce(
        protocol_version=p.PROTOCOL_VERSION,
        public_key=base64.b64encode(raw_public(key)).decode(),
        hostname="flood",
        os="linux",
        arch="amd64",
        agent_version="0.1.0",
        restic_version="0.18.0",
        resume=False,
    )


class _AnnounceTarget:
    def __init__(self, url: str, pin: str) -> None:
        self.url = url
        self.pin = pin


def _as_announce_server(cp: ControlPlane) -> Any:
    return _AnnounceTarget(cp.agent_url, cp.certificate.sha256)


# -- the throttles themselves, with a hand-driven clock -------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_audit_throttle_one_row_per_key_a_minute_with_the_count_left_out() -> None:
    clock = Clock()
    throttle = AuditThrottle(window_s=60, clock=clock)
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(5)] == [None] * 5
    assert throttle.admit("b") == 0  # another source has its own row
    clock.now += 59
    assert throttle.admit("a") is None
    clock.now += 1
    assert throttle.admit("a") == 6  # the six refusals not written since the last row
    assert throttle.admit("a") is None


def test_audit_throttle_bounds_rows_from_many_sources() -> None:
    clock = Clock()
    throttle = AuditThrottle(window_s=60, rows_per_window=3, clock=clock)
    admitted = [throttle.admit(f"src{i}") for i in range(10)]
    assert admitted[:3] == [0, 0, 0] and admitted[3:] == [None] * 7
    clock.now += 60
    assert throttle.admit("src5") == 1  # its refusal of the last window is counted


def test_failure_guard_spends_on_failures_only() -> None:
    clock = Clock()
    guard = FailureGuard(burst=3, per_minute=6, clock=clock)
    for _ in range(100):
        assert guard.check("ok").allowed  # checks alone cost nothing
    for _ in range(3):
        guard.failed("bad")
    held = guard.check("bad")
    assert not held.allowed and held.retry_after_s == pytest.approx(10.0)
    clock.now += 10
    assert guard.check("bad").allowed
