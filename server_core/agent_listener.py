"""Listener A: what agents talk to (TLS). Enrolment and the agent WebSocket."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from agent.protocol import (
    AGENT_MESSAGES,
    ENROL_PATH,
    MAX_FRAME_BYTES,
    WS_PATH,
    Ack,
    CommandCancel,
    EnrolRequest,
    Envelope,
    Error,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    RpcResult,
    ScheduleAck,
    decode,
    encode,
    from_dict,
    parse_frame,
    peek_protocol_version,
    to_dict,
    version_error,
)
from server_core import agent_sync, audit
from server_core.agent_downloads import AgentDownloads
from server_core.errors import ServiceError
from server_core.events import HostChanged
from server_core.hub import AgentConnection, AgentHub
from server_core.ingest import AgentSink, EventIngestor, Incoming
from server_core.models import Host
from server_core.rpc import RpcBroker
from server_core.services.context import ServiceContext
from server_core.services.enrolment import EnrolmentService
from server_core.services.jobs import mark_dispatched

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 2.0
MAX_BAD_FRAMES = 50


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class AgentListener:
    def __init__(
        self,
        ctx: ServiceContext,
        enrolment: EnrolmentService,
        hub: AgentHub,
        ingestor: EventIngestor,
        rpc: RpcBroker,
        downloads: AgentDownloads | None = None,
    ) -> None:
        self._ctx = ctx
        self._downloads = downloads if downloads is not None else AgentDownloads()
        self._enrolment = enrolment
        self._hub = hub
        self._ingestor = ingestor
        self._rpc = rpc

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post(ENROL_PATH, self.enrol)
        app.router.add_get(WS_PATH, self.websocket)
        # Agent binaries and install files: fetched before a host is enrolled.
        self._downloads.routes(app.router)
        return app

    async def enrol(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return json_error(400, "bad_request", "the body must be JSON")
        try:
            req = from_dict(EnrolRequest, body)
        except ProtocolError as exc:
            return json_error(400, "bad_request", str(exc))
        try:
            response = await self._enrolment.redeem(req, request.remote)
        except ServiceError as exc:
            return json_error(exc.status, exc.code, exc.message)
        log.info("host %s enrolled from %s", response.hostname, request.remote)
        return web.json_response(to_dict(response))

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, bearer = header.partition(" ")
        host_id = None
        if scheme.lower() == "bearer" and bearer.strip():
            host_id = await self._enrolment.authenticate(bearer.strip())
        if host_id is None:
            log.info("refused an agent connection from %s: bad bearer", request.remote)
            return json_error(
                401, "unauthorized", "unknown or revoked agent credentials: re-enrol this host"
            )
        # A short close timeout: a dead peer must not hold up whoever closes it.
        ws = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES, heartbeat=None, timeout=CLOSE_TIMEOUT_S
        )
        await ws.prepare(request)
        hello = await self._receive_hello(ws)
        if hello is None:
            return ws
        conn = AgentConnection(host_id=host_id, ws=ws, remote=request.remote)
        # Registered before any await, so a previous connection of this host
        # that is still winding down can no longer mark it offline.
        self._hub.register(conn)
        reason = "connection closed"
        try:
            await self._on_hello(conn, hello)
            reason = await self._serve(conn)
        except Exception:
            log.exception("agent connection of host %s failed", host_id)
            reason = "internal error"
            await self._hub.close(conn, "internal error in the control plane")
        finally:
            await self._hub.unregister(conn, reason)
        return ws

    async def _receive_hello(self, ws: web.WebSocketResponse) -> Hello | None:
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._refuse(ws, Error(code="bad_frame", message="no hello received in time"))
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None  # the peer left before saying hello
        if msg.type != WSMsgType.TEXT:
            await self._refuse(ws, Error(code="bad_frame", message="expected a hello text frame"))
            return None
        try:
            frame = parse_frame(msg.data)
            version = peek_protocol_version(frame)
            if version is None:
                raise ProtocolError("the first frame must be a hello with a protocol_version")
            mismatch = version_error(version)
            if mismatch is not None:
                await self._refuse(ws, mismatch)
                return None
            envelope = decode(msg.data, allowed=(Hello,))
        except ProtocolError as exc:
            await self._refuse(ws, Error(code="bad_frame", message=str(exc)))
            return None
        assert isinstance(envelope.payload, Hello)
        return envelope.payload

    async def _refuse(self, ws: web.WebSocketResponse, error: Error) -> None:
        log.info("closing an agent connection: %s", error.message)
        try:
            await ws.send_str(encode(error))
        finally:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=error.code.encode())

    async def _on_hello(self, conn: AgentConnection, hello: Hello) -> None:
        now = time.time()

        def run() -> None:
            host = Host.get_by_id(conn.host_id)
            changes: dict[str, Any] = {}
            for name, value in (
                ("os", hello.os[:32]),
                ("arch", hello.arch[:32]),
                ("agent_version", hello.agent_version[:64]),
                ("restic_version", (hello.restic_version or "")[:64] or None),
            ):
                if getattr(host, name) != value:
                    changes[name] = value
                    setattr(host, name, value)
            was_online = host.online
            host.online = True
            host.last_seen_at = now
            host.last_ip = conn.remote
            host.save()
            audit.record(
                "agent",
                "host.online",
                actor_id=conn.host_id,
                target_kind="host",
                target_id=conn.host_id,
                payload={"remote": conn.remote, "was_online": was_online, "changed": changes},
            )

        await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(conn.host_id))
        box = self._ctx.box
        config = await self._ctx.store.call(agent_sync.config_update, box, conn.host_id)
        schedules = await self._ctx.store.call(agent_sync.schedule_set, box, conn.host_id)
        commands, cancels = await self._ctx.store.call(
            agent_sync.pending_for_agent, box, conn.host_id
        )
        try:
            await conn.send(config)
            if schedules.version != hello.schedule_version:
                await conn.send(schedules)
            for command in commands:
                await conn.send(command)
            for job_id in cancels:
                await conn.send(CommandCancel(job_id=job_id))
        except (ConnectionError, RuntimeError):
            log.info("host %s went away during hello", conn.host_id)
            return
        await self._ctx.store.transaction(mark_dispatched, [c.job_id for c in commands])

    async def _serve(self, conn: AgentConnection) -> str:
        bad_frames = 0
        sink = _ConnectionSink(conn)

        async for msg in conn.ws:
            conn.touch()
            if msg.type == WSMsgType.TEXT:
                try:
                    envelope = decode(msg.data, allowed=AGENT_MESSAGES)
                except ProtocolError as exc:
                    bad_frames += 1
                    log.warning("bad frame from host %s: %s", conn.host_id, exc)
                    await conn.send(Error(code="bad_frame", message=str(exc)[:500]))
                    if bad_frames > MAX_BAD_FRAMES:
                        await conn.ws.close(
                            code=WSCloseCode.POLICY_VIOLATION, message=b"too many bad frames"
                        )
                        return "too many bad frames"
                    continue
                await self._handle(conn, envelope.payload, envelope, sink)
                # Frames already buffered come back without a pause: yield so a
                # backlog is decoded one frame per loop step, not in one long one.
                await asyncio.sleep(0)
            elif msg.type == WSMsgType.BINARY:
                bad_frames += 1
                await conn.send(Error(code="bad_frame", message="binary frames are not accepted"))
                if bad_frames > MAX_BAD_FRAMES:
                    await conn.ws.close(
                        code=WSCloseCode.POLICY_VIOLATION, message=b"too many bad frames"
                    )
                    return "too many bad frames"
            elif msg.type == WSMsgType.ERROR:
                return f"connection error: {conn.ws.exception()}"
        return "connection closed"

    async def _handle(
        self, conn: AgentConnection, payload: Message, envelope: Envelope, sink: AgentSink
    ) -> None:
        if payload.DURABLE:
            await self._ingestor.submit(Incoming(conn.host_id, envelope, sink))
        elif isinstance(payload, Heartbeat):
            pass  # touch() already recorded it
        elif isinstance(payload, ScheduleAck):
            await self._schedule_acked(conn.host_id, payload.version)
        elif isinstance(payload, RpcResult):
            self._rpc.resolve(conn, payload)
        elif isinstance(payload, Error):
            log.warning(
                "agent on host %s reported: %s %s", conn.host_id, payload.code, payload.message
            )
        elif isinstance(payload, Hello):
            await conn.send(Error(code="bad_frame", message="hello was already received"))

    async def _schedule_acked(self, host_id: int, version: int) -> None:
        def run() -> None:
            changed = (
                Host.update(schedule_acked_version=version)
                .where((Host.id == host_id) & (Host.schedule_acked_version != version))
                .execute()
            )
            if changed:
                audit.record(
                    "agent",
                    "host.schedule_acked",
                    actor_id=host_id,
                    target_kind="host",
                    target_id=host_id,
                    payload={"version": version},
                )

        await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(host_id))


class _ConnectionSink:
    def __init__(self, conn: AgentConnection) -> None:
        self._conn = conn

    async def ack(self, ids: list[str]) -> None:
        if not self._conn.ws.closed:
            await self._conn.send(Ack(ids=ids))

    async def abort(self, reason: str) -> None:
        await self._conn.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=reason.encode()[:120])
