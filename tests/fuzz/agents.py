"""Agents for the hostile-input tests, driven on the live plane's loop: a
well-behaved one whose events must keep being acknowledged, and a hostile one
that sends whatever it is given and reconnects whenever it is thrown out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from agent import protocol as p
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.fuzz.frames import Frame
from tests.fuzz.live import LivePlane
from tests.helpers.fake_agent import FakeAgent, enrol, pinned


async def enrolled_bearer(live: LivePlane, session: aiohttp.ClientSession, name: str) -> str:
    cp = live.cp
    new = parse_new_host(
        {"hostname": name, "repository": {"url": "/srv/r", "password": "pw-" + name}}
    )
    grant = await cp.enrolment.add_host(new, OPERATOR)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, name)
    return str(body["bearer"])


@dataclass
class GoodAgent:
    """Sends one log line per probe and waits for its ack: the server is
    serving other agents only as long as these keep coming back."""

    agent: FakeAgent
    job_id: str = "good0c0ffee0c0ffee0c0ffee0c0ffee"
    seq: int = 0
    latencies: list[float] = field(default_factory=list)
    acks: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    def start(self) -> GoodAgent:
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        while True:
            msg = await self.agent.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            env = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
            if isinstance(env.payload, p.Ack):
                for mid in env.payload.ids:
                    fut = self.acks.pop(mid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

    async def probe(self, timeout: float = 10.0) -> float:
        self.seq += 1
        line = p.LogLine(seq=self.seq, ts=time.time(), stream="stdout", text=f"line {self.seq}")
        mid = p.new_id()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks[mid] = fut
        started = time.monotonic()
        await self.agent.send(p.JobLog(job_id=self.job_id, seq=self.seq, lines=[line]), mid)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(
                f"the well-behaved agent got no ack within {timeout} s "
                f"(reader {'dead' if self.reader and self.reader.done() else 'alive'})"
            ) from None
        elapsed = time.monotonic() - started
        self.latencies.append(elapsed)
        return elapsed


SEGMENT = 40


def _size(frame: Frame) -> int:
    data = frame.data
    return len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)


def _refused_by_websocket_layer(frame: Frame) -> bool:
    if frame.kind == "raw_text":
        try:
            assert isinstance(frame.data, bytes)
            frame.data.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return _size(frame) > p.MAX_FRAME_BYTES


def _expected_errors(frame: Frame) -> int:
    """How many bad_frame errors the server must answer this frame with."""
    if frame.kind == "binary":
        return 1
    try:
        env = p.decode(frame.data, allowed=p.AGENT_MESSAGES)
    except p.ProtocolError:
        return 1
    return 1 if isinstance(env.payload, p.Hello) else 0  # "hello was already received"


@dataclass
class HostileAgent:
    session: aiohttp.ClientSession
    url: str
    pin: str
    bearer: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    connections: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    marker_seq: int = 0
    # Set when this connection carried a frame the WebSocket layer itself
    # refuses (over the size cap, or text that is not UTF-8): aiohttp then
    # drops the TCP connection without a close frame, which the client sees as 1006.
    _expect_drop: bool = False
    on_connection: int = 0
    _leaving: bool = False
    # Frames sent on the current connection, and those of connections that
    # ended without a reason (to say what to look at when one does).
    _history: list[Frame] = field(default_factory=list)
    unexplained: list[list[Frame]] = field(default_factory=list)
    # Bad-frame errors the server owes for the paced frames sent, and frames
    # that ended their connection instead (refused below the protocol).
    expected_errors: int = 0
    dropped: int = 0
    _reader: asyncio.Task[None] | None = None
    _markers: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        await self.disconnect()
        ws = await self.session.ws_connect(
            self.url + p.WS_PATH,
            headers={"Authorization": f"Bearer {self.bearer}"},
            ssl=pinned(self.pin),
            max_msg_size=0,
        )
        self.connections += 1
        self.ws = ws
        self._expect_drop = False
        self._leaving = False
        self.on_connection = 0
        self._history = []
        await ws.send_str(
            p.encode(
                p.Hello(
                    protocol_version=p.PROTOCOL_VERSION,
                    agent_version="0.0.1",
                    hostname="evil",
                    os="linux",
                    arch="amd64",
                )
            )
        )
        self._reader = asyncio.ensure_future(self._read(ws))
        return ws

    async def disconnect(self) -> None:
        self._leaving = True
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5)
        self.ws = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                env = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
                payload = env.payload
                if isinstance(payload, p.Error):
                    self.replies[f"error:{payload.code}"] += 1
                elif isinstance(payload, p.Ack):
                    self.replies["ack"] += len(payload.ids)
                    for mid in payload.ids:
                        fut = self._markers.pop(mid, None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                else:
                    self.replies[payload.TYPE] += 1
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                code = str(ws.close_code)
                if code == "1006" and self._expect_drop:
                    code = "1006 after a frame the WebSocket layer refuses"
                if not self._leaving:
                    self.closes[code] += 1
                    if code == "1006":
                        self.unexplained.append(list(self._history))
            elif msg.type == aiohttp.WSMsgType.ERROR:
                self.closes[f"error:{type(ws.exception()).__name__}"] += 1
            else:
                continue
            for fut in self._markers.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError("closed"))
            self._markers.clear()
            return

    def _usable(self) -> bool:
        return (
            self.ws is not None
            and not self.ws.closed
            and self._reader is not None
            and (not self._reader.done())
        )

    async def send(self, frame: Frame, *, paced: bool = True) -> None:
        """Send one frame on a live connection (reconnecting if thrown out).

        Paced, no frame is lost on a connection the server is closing: a
        connection carries at most SEGMENT frames (the server closes after
        MAX_BAD_FRAMES bad ones), and a frame the WebSocket layer refuses is
        followed by waiting for the drop. Unpaced (floods), frames go out
        as fast as the socket takes them."""
        refused_by_ws = _refused_by_websocket_layer(frame)
        if paced and self._usable() and (refused_by_ws or self.on_connection >= SEGMENT):
            # Collect every answer owed on this connection before it ends
            # (a closing client discards what is still in flight).
            await self.settle()
            await self.connect()
        for _ in range(3):
            if not self._usable():
                await self.connect()
            assert self.ws is not None
            if refused_by_ws:
                self._expect_drop = True
            try:
                if frame.kind == "text":
                    assert isinstance(frame.data, str)
                    await self.ws.send_str(frame.data)
                elif frame.kind == "binary":
                    assert isinstance(frame.data, bytes)
                    await self.ws.send_bytes(frame.data)
                else:
                    assert isinstance(frame.data, bytes)
                    await self.ws.send_frame(frame.data, aiohttp.WSMsgType.TEXT)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                await self.disconnect()
                continue
            self.on_connection += 1
            self._history.append(frame)
            self.sent[frame.label.split(" ")[0]] += 1
            if paced and refused_by_ws:
                assert self._reader is not None
                await asyncio.wait_for(asyncio.shield(self._reader), 10)
                self.dropped += 1
            elif paced:
                self.expected_errors += _expected_errors(frame)
            return
        raise AssertionError("the hostile agent could not send at all: is the server up?")

    async def settle(self, timeout: float = 15.0) -> None:
        """Wait until the server has dealt with everything sent: a durable
        marker is acknowledged only after every earlier frame was read. If the
        connection was closed meanwhile, prove a fresh one is served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._usable():
                await self.connect()
            assert self.ws is not None
            self.marker_seq += 1
            mid = p.new_id()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._markers[mid] = fut
            marker = p.JobLog(job_id="evilmarker", seq=self.marker_seq, lines=[])
            try:
                await self.ws.send_str(p.encode(marker, msg_id=mid))
                await asyncio.wait_for(fut, max(0.1, deadline - time.monotonic()))
                return
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                await self.disconnect()
            except TimeoutError:
                break
        raise AssertionError("the server never acknowledged the hostile agent's marker")
