"""Hand-driven agents that answer `rpc.call` frames, and an API client,
for the RPC broker and the restore service (fixtures in conftest.py).

The agents are protocol-speaking WebSocket clients (tests/helpers/fake_agent):
the real agent's snapshot index is not what these tests exercise, the
control plane's side of the exchange is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol

# What a test's agent does with a call: an RpcResult to send back, or None
# to leave it unanswered.
Answer = Callable[[str, p.RpcCall], p.RpcResult | None]


def silent(call_id: str, call: p.RpcCall) -> p.RpcResult | None:
    return None


def ok(call_id: str, result: Any) -> p.RpcResult:
    body = result if isinstance(result, dict) else p.to_dict(result)
    return p.RpcResult(call_id=call_id, ok=True, result=body)


def failed(call_id: str, code: str, message: str) -> p.RpcResult:
    return p.RpcResult(call_id=call_id, ok=False, error=p.RpcError(code=code, message=message))


@dataclass
class RpcAgent:
    """A fake agent whose reader answers RPCs and queues everything else."""

    agent: FakeAgent
    host_id: int
    answer: Answer = silent
    calls: list[tuple[str, p.RpcCall]] = field(default_factory=list)
    inbox: asyncio.Queue[p.Message] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> RpcAgent:
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.agent.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                envelope = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
                if isinstance(envelope.payload, p.RpcCall):
                    self.calls.append((envelope.id, envelope.payload))
                    reply = self.answer(envelope.id, envelope.payload)
                    if reply is not None:
                        await self.agent.send(reply)
                else:
                    self.inbox.put_nowait(envelope.payload)
        finally:
            self.closed.set()

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                got = await self.inbox.get()
                if isinstance(got, kind):
                    return got

    async def wait_calls(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                await asyncio.sleep(0.01)

    async def send_acked(self, message: p.Message) -> None:
        """Send a durable event and wait until the control plane acked it."""
        mid = await self.agent.send(message)
        async with asyncio.timeout(5.0):
            while True:
                ack = await self.expect(p.Ack)
                if mid in ack.ids:
                    return

    async def stop(self) -> None:
        await self.agent.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def add_host(cp: ControlPlane, name: str) -> str:
    grant = await cp.enrolment.add_host(
        parse_new_host(
            {
                "hostname": name,
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            }
        ),
        OPERATOR,
    )
    return grant.token


async def enrolled(
    cp: ControlPlane, session: aiohttp.ClientSession, name: str = "web1", answer: Answer = silent
) -> tuple[RpcAgent, str]:
    """An enrolled, connected agent (reader started) and its bearer."""
    token = await add_host(cp, name)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, name)
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    rpc_agent = RpcAgent(agent, int(body["host_id"]), answer).start()
    await rpc_agent.expect(p.ConfigUpdate)  # hello handled: the host is registered
    return rpc_agent, str(body["bearer"])


async def reconnect(
    cp: ControlPlane, session: aiohttp.ClientSession, host_id: int, bearer: str, answer: Answer
) -> RpcAgent:
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, bearer)
    rpc_agent = RpcAgent(agent, host_id, answer).start()
    await rpc_agent.expect(p.ConfigUpdate)
    return rpc_agent


def snapshot(snapshot_id: str, time_: str = "2024-05-01T02:00:00Z") -> p.SnapshotInfo:
    return p.SnapshotInfo(
        id=snapshot_id, short_id=snapshot_id[:8], time=time_, hostname="web1", paths=["/etc"]
    )


async def report_snapshots(agent: RpcAgent, ids: list[str]) -> None:
    await agent.send_acked(
        p.SnapshotsReport(collected_at=1000.0, snapshots=[snapshot(i) for i in ids])
    )


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
