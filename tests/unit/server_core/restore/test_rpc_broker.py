"""RPC calls to agents over a real control plane and real TLS WebSockets:
answers, agent errors, timeouts, offline hosts, departures mid-call, and
answers from the wrong host."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agent import protocol as p
from server_core.errors import (
    AgentFailed,
    AgentTimeout,
    Busy,
    Conflict,
    HostOffline,
    InvalidInput,
    NotFound,
)
from server_core.rpc import MAX_PENDING_PER_HOST

from .agents import enrolled, failed, ok, reconnect


def echo(call_id: str, call: p.RpcCall) -> p.RpcResult:
    return p.RpcResult(call_id=call_id, ok=True, result={"method": call.method, **call.params})


async def test_a_call_returns_the_agents_result_under_a_fresh_id(cp, session):
    agent, _ = await enrolled(cp, session, answer=echo)
    first = await cp.rpc.call(agent.host_id, "tree.list", {"snapshot_id": "ab" * 32, "path": "/"})
    second = await cp.rpc.call(agent.host_id, "tree.list", {"path": "/etc"})
    assert first == {"method": "tree.list", "snapshot_id": "ab" * 32, "path": "/"}
    assert second == {"method": "tree.list", "path": "/etc"}
    (id1, call1), (id2, _) = agent.calls
    assert id1 != id2 and call1 == p.RpcCall(
        method="tree.list", params={"snapshot_id": "ab" * 32, "path": "/"}
    )
    assert cp.rpc.pending_count() == 0


async def test_agent_errors_are_mapped_to_service_errors(cp, session):
    codes = iter(["not_found", "bad_params", "failed", "unsupported", "busy"])

    def answer(call_id: str, call: p.RpcCall) -> p.RpcResult:
        code = next(codes, None)
        if code is None:
            return p.RpcResult(call_id=call_id, ok=False)
        return failed(call_id, code, f"agent says {code}")

    agent, _ = await enrolled(cp, session, answer=answer)
    call = cp.rpc.call
    with pytest.raises(NotFound, match="agent says not_found") as nf:
        await call(agent.host_id, "tree.list", {})
    assert nf.value.status == 404
    with pytest.raises(InvalidInput, match="agent says bad_params") as bad:
        await call(agent.host_id, "tree.list", {})
    assert bad.value.status == 400
    for code in ("failed", "unsupported", "busy"):
        with pytest.raises(AgentFailed, match=f"agent says {code}") as exc:
            await call(agent.host_id, "tree.list", {})
        assert (exc.value.status, exc.value.code) == (502, code)
    with pytest.raises(AgentFailed, match="without saying why") as bare:
        await call(agent.host_id, "tree.list", {})
    assert (bare.value.status, bare.value.code) == (502, "failed")


async def test_an_unanswered_call_times_out_and_a_late_answer_is_dropped(cp, session, caplog):
    agent, _ = await enrolled(cp, session)
    started = time.monotonic()
    with pytest.raises(AgentTimeout) as exc:
        await cp.rpc.call(agent.host_id, "tree.find", {}, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert (exc.value.status, exc.value.code) == (504, "timeout")
    assert exc.value.message == "host web1 did not answer tree.find within 0.3 s"
    assert cp.rpc.pending_count() == 0
    # The answer comes after all: nothing waits for it, nothing breaks.
    ((late_id, _),) = agent.calls
    with caplog.at_level(logging.DEBUG, logger="server_core.rpc"):
        await agent.agent.send(ok(late_id, {"late": True}))
        agent.answer = echo
        assert await cp.rpc.call(agent.host_id, "ping", {"n": 1}) == {"method": "ping", "n": 1}
    assert any("answers no waiting call" in r.message for r in caplog.records)


async def test_an_offline_host_is_refused_at_once_naming_it(cp, session):
    agent, _ = await enrolled(cp, session)
    await agent.stop()
    async with asyncio.timeout(5):
        while cp.hub.is_connected(agent.host_id):
            await asyncio.sleep(0.01)
    with pytest.raises(HostOffline) as exc:
        await cp.rpc.call(agent.host_id, "tree.list", {})
    assert isinstance(exc.value, Conflict)
    assert (exc.value.status, exc.value.code) == (409, "offline")
    assert "host web1 is offline" in exc.value.message
    with pytest.raises(NotFound, match="host 999 does not exist"):
        await cp.rpc.call(999, "tree.list", {})


async def test_a_disconnect_mid_call_fails_the_call_at_once(cp, session):
    agent, _ = await enrolled(cp, session)
    call = asyncio.create_task(cp.rpc.call(agent.host_id, "tree.list", {}, timeout_s=30))
    await agent.wait_calls(1)
    started = time.monotonic()
    await agent.stop()
    with pytest.raises(HostOffline, match=r"host web1 went offline before answering tree\.list"):
        await call
    assert time.monotonic() - started < 3.0
    assert cp.rpc.pending_count() == 0


async def test_a_replaced_connection_fails_the_calls_it_carried(cp, session):
    agent, bearer = await enrolled(cp, session)
    call = asyncio.create_task(cp.rpc.call(agent.host_id, "tree.list", {}, timeout_s=30))
    await agent.wait_calls(1)
    # The agent reconnects (say, after a network change) without closing the old socket.
    newer = await reconnect(cp, session, agent.host_id, bearer, echo)
    with pytest.raises(HostOffline, match="went offline before answering"):
        await asyncio.wait_for(call, 3.0)
    assert await cp.rpc.call(agent.host_id, "ping", {}) == {"method": "ping"}
    await newer.stop()


async def test_an_answer_from_another_host_is_ignored(cp, session, caplog):
    web1, _ = await enrolled(cp, session, "web1")
    web2, _ = await enrolled(cp, session, "web2")
    call = asyncio.create_task(cp.rpc.call(web1.host_id, "tree.list", {"path": "/"}))
    await web1.wait_calls(1)
    ((call_id, _),) = web1.calls
    with caplog.at_level(logging.WARNING, logger="server_core.rpc"):
        await web2.agent.send(ok(call_id, {"forged": True}))
        await asyncio.sleep(0.2)
    assert not call.done()
    assert any(
        f"host {web2.host_id} sent a result for call {call_id}, which was made to host "
        f"{web1.host_id}: ignored" in r.message
        for r in caplog.records
    )
    await web1.agent.send(ok(call_id, {"genuine": True}))
    assert await asyncio.wait_for(call, 3.0) == {"genuine": True}


async def test_pending_calls_per_host_are_bounded(cp, session):
    web1, _ = await enrolled(cp, session, "web1")
    web2, _ = await enrolled(cp, session, "web2", answer=echo)
    calls = [
        asyncio.create_task(cp.rpc.call(web1.host_id, "tree.list", {}, timeout_s=30))
        for _ in range(MAX_PENDING_PER_HOST)
    ]
    await web1.wait_calls(MAX_PENDING_PER_HOST)
    assert cp.rpc.pending_count(web1.host_id) == MAX_PENDING_PER_HOST
    with pytest.raises(Busy) as exc:
        await cp.rpc.call(web1.host_id, "tree.list", {})
    assert (exc.value.status, exc.value.code) == (503, "busy")
    # Another host is not held up by the first one's backlog.
    assert await cp.rpc.call(web2.host_id, "ping", {}) == {"method": "ping"}
    # A caller that gives up (an HTTP client gone) frees its slot.
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert cp.rpc.pending_count() == 0
