"""Announce-and-approve in tests: a real control plane whose agent listener
serves the pending WebSocket with a PendingHostService tuned per test (cap,
rate, TTL), and a hand-driven announcing client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol as p
from server_core.agent_listener import AgentListener
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.services.pending_hosts import PendingHostService
from server_core.tls import ssl_context


@dataclass
class AnnounceServer:
    cp: ControlPlane
    pending: PendingHostService
    url: str
    pin: str


@asynccontextmanager
async def announce_server(data_dir: Path, **service: Any) -> AsyncIterator[AnnounceServer]:
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=data_dir,
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await cp.start()
    # This test's service is the only one expiring requests: stop the control
    # plane's own sweeper.
    await cp.pending_hosts.stop()
    pending = PendingHostService(cp.ctx, cert_sha256=cp.certificate.sha256, **service)
    pending.start()
    listener = AgentListener(
        cp.ctx, cp.enrolment, cp.hub, cp.ingestor, cp.rpc, pending_hosts=pending
    )
    runner = web.AppRunner(
        listener.app(), handle_signals=False, access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(cp.certificate))
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield AnnounceServer(cp, pending, f"https://127.0.0.1:{port}", cp.certificate.sha256)
    finally:
        await pending.stop()
        await runner.cleanup()
        await cp.stop()


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class Announcing:
    """One crafted announcing connection."""

    ws: aiohttp.ClientWebSocketResponse
    key: Ed25519PrivateKey
    challenge: p.AnnounceChallenge | None = None

    @property
    def fingerprint(self) -> str:
        return p.key_fingerprint(raw_public(self.key))

    async def send(self, message: p.Message) -> None:
        await self.ws.send_str(p.encode(message))

    async def receive(self, timeout: float = 5.0) -> p.Message | None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        return p.decode_announce(msg.data, allowed=p.ANNOUNCE_SERVER_MESSAGES).payload

    async def expect(self, kind: type, timeout: float = 5.0) -> Any:
        got = await self.receive(timeout)
        assert isinstance(got, kind), f"expected {kind.__name__}, got {got!r}"
        return got

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the socket (text frames before it are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    return True

    def sign(self, nonce: bytes, pin: str, key: Ed25519PrivateKey | None = None) -> str:
        signed = p.announce_signed_bytes(nonce, raw_public(self.key), pin)
        return b64((key or self.key).sign(signed))


async def connect(
    session: aiohttp.ClientSession, server: AnnounceServer
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(
        server.url + p.ANNOUNCE_PATH, ssl=aiohttp.Fingerprint(bytes.fromhex(server.pin))
    )


def announce_message(
    key: Ed25519PrivateKey, hostname: str = "web1", *, resume: bool = False, **extra: Any
) -> p.Announce:
    fields: dict[str, Any] = {
        "protocol_version": p.PROTOCOL_VERSION,
        "public_key": b64(raw_public(key)),
        "hostname": hostname,
        "os": "linux",
        "arch": "amd64",
        "agent_version": "0.1.0",
        "restic_version": "0.18.0",
        "resume": resume,
    }
    fields.update(extra)
    return p.Announce(**fields)


async def start_announce(
    session: aiohttp.ClientSession,
    server: AnnounceServer,
    key: Ed25519PrivateKey | None = None,
    hostname: str = "web1",
    *,
    resume: bool = False,
) -> Announcing:
    """Connect, announce and read the challenge (no proof yet)."""
    key = key or new_key()
    client = Announcing(await connect(session, server), key)
    await client.send(announce_message(key, hostname, resume=resume))
    client.challenge = await client.expect(p.AnnounceChallenge)
    return client


async def prove(client: Announcing, server: AnnounceServer) -> p.Message | None:
    """Answer the challenge correctly; the server's next frame."""
    assert client.challenge is not None
    nonce = base64.b64decode(client.challenge.nonce)
    await client.send(p.AnnounceProof(signature=client.sign(nonce, server.pin)))
    return await client.receive()


async def announced(
    session: aiohttp.ClientSession,
    server: AnnounceServer,
    key: Ed25519PrivateKey | None = None,
    hostname: str = "web1",
    *,
    resume: bool = False,
) -> tuple[Announcing, p.AnnouncePending]:
    client = await start_announce(session, server, key, hostname, resume=resume)
    pending = await prove(client, server)
    assert isinstance(pending, p.AnnouncePending), pending
    return client, pending
