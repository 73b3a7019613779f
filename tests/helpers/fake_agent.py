"""A protocol-speaking WebSocket client standing in for an agent, for tests of the server side."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent import protocol as p


def pinned(cert_sha256: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(cert_sha256))


async def enrol(
    session: aiohttp.ClientSession, url: str, pin: str, token: str, hostname: str = "h"
) -> dict[str, Any]:
    req = p.EnrolRequest(
        token=token, hostname=hostname, os="linux", arch="amd64", agent_version="0.0.1"
    )
    async with session.post(url + p.ENROL_PATH, json=p.to_dict(req), ssl=pinned(pin)) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise AssertionError(f"enrol failed: {resp.status} {body}")
        return dict(body)


@dataclass
class FakeAgent:
    ws: aiohttp.ClientWebSocketResponse

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, url: str, pin: str, bearer: str, *, hello: bool = True
    ) -> FakeAgent:
        ws = await session.ws_connect(
            url + p.WS_PATH, headers={"Authorization": f"Bearer {bearer}"}, ssl=pinned(pin)
        )
        agent = cls(ws)
        if hello:
            await agent.send(
                p.Hello(
                    protocol_version=p.PROTOCOL_VERSION,
                    agent_version="0.0.1",
                    hostname="h",
                    os="linux",
                    arch="amd64",
                )
            )
        return agent

    async def send(self, message: p.Message, msg_id: str | None = None) -> str:
        mid = msg_id or p.new_id()
        await self.ws.send_str(p.encode(message, msg_id=mid))
        return mid

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive(self, timeout: float = 5.0) -> p.Message | None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        return p.decode(msg.data, allowed=p.SERVER_MESSAGES).payload

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        """Skip other messages until one of ``kind`` arrives."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} received")
            try:
                got = await self.receive(timeout=left)
            except TimeoutError:
                raise AssertionError(f"no {kind.__name__} received") from None
            if got is None:
                raise AssertionError(f"connection closed while waiting for {kind.__name__}")
            if isinstance(got, kind):
                return got

    async def acked(self, ids: set[str], timeout: float = 5.0) -> None:
        pending = set(ids)
        while pending:
            ack = await self.expect(p.Ack, timeout)
            pending -= set(ack.ids)


def raw_frame(type_: str, payload: Any) -> str:
    return json.dumps({"type": type_, "id": p.new_id(), "ts": 1.0, "payload": payload})
