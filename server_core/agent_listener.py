"""Listener A: what agents talk to (TLS). Enrolment, the agent WebSocket and
the pending WebSocket of hosts that announce themselves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, get_args

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from agent.protocol import (
    AGENT_MESSAGES,
    ANNOUNCE_PATH,
    ENROL_PATH,
    WS_MAX_MSG_SIZE,
    WS_PATH,
    Ack,
    Announce,
    AnnounceChallenge,
    AnnounceEnrolled,
    AnnounceProof,
    CommandCancel,
    EnrolRequest,
    Envelope,
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    RpcResult,
    ScheduleAck,
    decode,
    decode_announce,
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
from server_core.rate_limit import retry_after_header
from server_core.rpc import RpcBroker
from server_core.services.context import ServiceContext
from server_core.services.enrolment import EnrolmentService, RateLimited
from server_core.services.jobs import mark_dispatched
from server_core.services.pending_hosts import (
    CheckedAnnounce,
    PendingHostService,
    PendingSession,
    b64,
    check_announce,
    new_nonce,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 2.0
MAX_BAD_FRAMES = 50
# Announce frames are small; a waiting host sends almost nothing.
ANNOUNCE_MAX_FRAME = 16 * 1024
ANNOUNCE_STEP_TIMEOUT_S = 30.0
ANNOUNCE_HEARTBEAT_S = 30.0
ANNOUNCE_MAX_BAD_FRAMES = 5
# Fairness between agents: a connection has at most this much in the shared
# ingest queue that is not yet stored and acknowledged; past it, its socket
# is not read (TCP pushes back on that agent alone). One chatty agent then
# delays another's events by the time to write one such window, not by
# whatever it managed to queue.
MAX_UNACKED_EVENTS = 64
MAX_UNACKED_BYTES = 1024 * 1024
# Frames larger than this are decoded on a worker thread: building a large
# report's dataclasses is pure Python (tens of ms for 700 KB), which would
# otherwise hold the loop the desktop window shares. On the thread it gives
# the loop the interpreter back every few ms.
DECODE_OFF_LOOP_CHARS = 64 * 1024


HTTP_LOGGER = "server_core.agent_listener.http"


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs every malformed HTTP request it refuses (400) at ERROR with
    a traceback; on the agent port anyone on the LAN can send one at will.
    This turns such a record into one WARNING line that says who and why;
    any other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.WARNING:
            reason = str(exc.message or type(exc).__name__).strip().splitlines() or ["?"]
            said = record.getMessage()  # "Error handling request from <address>"
            record.msg = "%s: malformed HTTP request refused (%s): %s"
            record.args = (said, exc.code, reason[0][:200].rstrip(":"))
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            record.exc_info = None
            record.exc_text = None
        return True


def http_logger() -> logging.Logger:
    """The logger for aiohttp's own server records on the agent port (give it
    to the AppRunner as ``logger=``): malformed requests come out as one line."""
    logger = logging.getLogger(HTTP_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
    return logger


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
        *,
        pending_hosts: PendingHostService | None = None,
    ) -> None:
        self._ctx = ctx
        self._downloads = downloads if downloads is not None else AgentDownloads()
        self._enrolment = enrolment
        self._hub = hub
        self._ingestor = ingestor
        self._rpc = rpc
        self._pending = pending_hosts

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post(ENROL_PATH, self.enrol)
        app.router.add_get(WS_PATH, self.websocket)
        app.router.add_get(ANNOUNCE_PATH, self.announce)
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
            refused = json_error(exc.status, exc.code, exc.message)
            if isinstance(exc, RateLimited):
                refused.headers["Retry-After"] = exc.retry_after
            return refused
        log.info("host %s enrolled from %s", response.hostname, request.remote)
        return web.json_response(to_dict(response))

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        host_id = await self._enrolment.authenticate_agent(
            request.headers.get("Authorization", ""), request.remote
        )
        if not isinstance(host_id, int):
            log.info("refused an agent connection from %s: %s", request.remote, host_id.reason)
            refused = json_error(host_id.status, host_id.code, host_id.message)
            if host_id.retry_after is not None:
                refused.headers["Retry-After"] = host_id.retry_after
            return refused
        # A short close timeout: a dead peer must not hold up whoever closes it.
        ws = web.WebSocketResponse(
            max_msg_size=WS_MAX_MSG_SIZE, heartbeat=None, timeout=CLOSE_TIMEOUT_S
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
        except ConnectionError as exc:
            # The peer vanished while we answered it (e.g. a reset right after
            # a bad frame): the connection is lost, nothing failed here.
            log.info("agent connection of host %s lost: %s", host_id, exc)
            reason = "connection lost"
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
                    envelope = await _decode(msg.data)
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
                if envelope.payload.DURABLE:
                    await sink.reserve(envelope.id, len(msg.data))
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
        def run() -> bool:
            # Only the plan version this control plane holds can be acknowledged:
            # an older one is stale, any other was never sent.
            changed = (
                Host.update(schedule_acked_version=version)
                .where(
                    (Host.id == host_id)
                    & (Host.schedule_version == version)
                    & (Host.schedule_acked_version != version)
                )
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
            return bool(changed)

        if await self._ctx.store.transaction(run):
            self._ctx.bus.publish(HostChanged(host_id))

    # -- announce-and-approve ------------------------------------------------------

    async def announce(self, request: web.Request) -> web.StreamResponse:
        """The pending WebSocket: announce, prove the key, wait for the operator."""
        pending = self._pending
        if pending is None:
            return json_error(
                404, "not_found", "this control plane does not take announcements; use a token"
            )
        remote = request.remote or "unknown"
        refusal = pending.admit(remote)
        if refusal is not None:
            log.info("refused an announce from %s: %s", remote, refusal.message)
            response = json_error(refusal.status, refusal.code, refusal.message)
            if refusal.retry_after_s is not None:
                response.headers["Retry-After"] = retry_after_header(refusal.retry_after_s)
            return response
        try:
            ws = web.WebSocketResponse(
                max_msg_size=ANNOUNCE_MAX_FRAME,
                heartbeat=ANNOUNCE_HEARTBEAT_S,
                timeout=CLOSE_TIMEOUT_S,
            )
            await ws.prepare(request)
            channel = _AnnounceChannel(ws, remote)
            session = await self._announce_handshake(pending, channel)
            if session is not None:
                try:
                    await self._wait_pending(pending, session, channel)
                finally:
                    await pending.disconnected(session)
        finally:
            pending.release()
        return ws

    async def _announce_handshake(
        self, pending: PendingHostService, channel: _AnnounceChannel
    ) -> PendingSession | None:
        try:
            checked = await self._receive_announce(channel)
            if checked is None:
                return None
            nonce = new_nonce()
            await channel.send(AnnounceChallenge(nonce=b64(nonce), fingerprint=checked.fingerprint))
            proof = await channel.receive_proof()
            # Single use: the nonce lives in this handshake only and is checked once.
            verified = proof is not None and pending.verify(checked, nonce, proof.signature)
            del nonce
            if not verified:
                reason = "no proof received" if proof is None else "wrong signature"
                await pending.proof_refused(checked, channel.remote, reason)
                await pending.refuse(
                    channel,
                    Error(
                        code="unauthorized",
                        message=(
                            f"{reason}: the announce was not signed with the key it names; "
                            "nothing was listed"
                        ),
                    ),
                )
                return None
            return await pending.register(checked, channel)
        except _ChannelFailed as exc:
            await pending.refuse(channel, Error(code=exc.code, message=str(exc)))
            return None
        except (ConnectionError, RuntimeError):
            return None

    async def _receive_announce(self, channel: _AnnounceChannel) -> CheckedAnnounce | None:
        raw = await channel.receive_raw()
        if raw is None:
            return None
        try:
            frame = parse_frame(raw)
            # An agent of another protocol version hears so, not a parse error.
            version = frame["payload"].get("protocol_version")
            if frame["type"] == Announce.TYPE and type(version) is int:
                mismatch = version_error(version)
                if mismatch is not None:
                    raise _ChannelFailed(mismatch.message, mismatch.code)
            envelope = decode_announce(raw, allowed=(Announce,))
            assert isinstance(envelope.payload, Announce)
            return check_announce(envelope.payload)
        except ProtocolError as exc:
            raise _ChannelFailed(str(exc), _error_code(exc.code)) from None

    async def _wait_pending(
        self, pending: PendingHostService, session: PendingSession, channel: _AnnounceChannel
    ) -> None:
        bad = 0
        async for msg in channel.ws:
            if msg.type == WSMsgType.ERROR:
                return
            if msg.type != WSMsgType.TEXT:
                bad += 1
            else:
                try:
                    envelope = decode_announce(msg.data, allowed=(AnnounceEnrolled, Error))
                except ProtocolError as exc:
                    bad += 1
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await channel.send(Error(code="bad_frame", message=str(exc)[:500]))
                else:
                    payload = envelope.payload
                    if isinstance(payload, AnnounceEnrolled):
                        pending.enrolled(session, payload)
                    elif isinstance(payload, Error):
                        log.info("pending host %s reported: %s", session.hostname, payload.message)
            if bad > ANNOUNCE_MAX_BAD_FRAMES:
                await channel.close("too many bad frames")
                return


class _ChannelFailed(Exception):
    def __init__(self, message: str, code: ErrorCode = "bad_frame") -> None:
        super().__init__(message)
        self.code: ErrorCode = code


class _AnnounceChannel:
    """The pending socket as PendingHostService sees it; sends are serialised."""

    def __init__(self, ws: web.WebSocketResponse, remote: str) -> None:
        self.ws = ws
        self._remote = remote
        self._lock = asyncio.Lock()

    @property
    def remote(self) -> str:
        return self._remote

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send(self, message: Message) -> None:
        async with self._lock:
            if self.ws.closed:
                raise ConnectionError("the pending socket is closed")
            await self.ws.send_str(encode(message))

    async def close(self, reason: str) -> None:
        code = WSCloseCode.OK if reason == "enrolled" else WSCloseCode.POLICY_VIOLATION
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def receive_raw(self) -> str | None:
        """The next text frame within the step timeout; None if the peer left."""
        try:
            msg = await self.ws.receive(timeout=ANNOUNCE_STEP_TIMEOUT_S)
        except TimeoutError:
            raise _ChannelFailed("the announce handshake timed out") from None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        if msg.type != WSMsgType.TEXT:
            raise _ChannelFailed("expected a text frame")
        return str(msg.data)

    async def receive_proof(self) -> AnnounceProof | None:
        raw = await self.receive_raw()
        if raw is None:
            return None
        try:
            envelope = decode_announce(raw, allowed=(AnnounceProof,))
        except ProtocolError as exc:
            raise _ChannelFailed(str(exc), _error_code(exc.code)) from None
        assert isinstance(envelope.payload, AnnounceProof)
        return envelope.payload


async def _decode(data: str) -> Envelope:
    if len(data) > DECODE_OFF_LOOP_CHARS:
        return await asyncio.to_thread(decode, data, allowed=AGENT_MESSAGES)
    return decode(data, allowed=AGENT_MESSAGES)


def _error_code(code: str) -> ErrorCode:
    return code if code in get_args(ErrorCode) else "bad_frame"  # type: ignore[return-value]


class _ConnectionSink:
    """Where a connection's events are acknowledged, and its window of events
    submitted but not yet acknowledged (MAX_UNACKED_*)."""

    def __init__(self, conn: AgentConnection) -> None:
        self._conn = conn
        self._unacked: dict[str, int] = {}
        self._unacked_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._aborted = False

    def _full(self) -> bool:
        # One event always fits, however large: an empty window never blocks.
        return bool(self._unacked) and (
            len(self._unacked) >= MAX_UNACKED_EVENTS or self._unacked_bytes >= MAX_UNACKED_BYTES
        )

    async def reserve(self, msg_id: str, size: int) -> None:
        """Wait until the window has room, then count the event in it; called
        before the event is submitted to the ingestor."""
        while self._full() and not self._aborted:
            self._room.clear()
            await self._room.wait()
        self._unacked[msg_id] = self._unacked.get(msg_id, 0) + size
        self._unacked_bytes += size

    def _release(self, ids: list[str]) -> None:
        for msg_id in ids:
            self._unacked_bytes -= self._unacked.pop(msg_id, 0)
        if not self._full():
            self._room.set()

    async def ack(self, ids: list[str]) -> None:
        self._release(ids)
        if not self._conn.ws.closed:
            await self._conn.send(Ack(ids=ids))

    async def abort(self, reason: str) -> None:
        self._aborted = True
        self._room.set()
        await self._conn.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=reason.encode()[:120])
