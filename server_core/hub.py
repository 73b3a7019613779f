"""Live agent connections: who is online, sending to them, presence upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, web

from agent.protocol import OFFLINE_AFTER_S, Message, encode
from server_core import audit
from server_core.events import EventBus, HostChanged
from server_core.models import Host
from server_core.store import Store

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
_TOUCH_LAST_SEEN = 'UPDATE "host" SET "last_seen_at" = ? WHERE "id" = ?'


@dataclass(eq=False)
class AgentConnection:
    host_id: int
    ws: web.WebSocketResponse
    remote: str | None
    connected_at: float = field(default_factory=time.monotonic)
    last_message_at: float = field(default_factory=time.monotonic)
    last_seen_wall: float = field(default_factory=time.time)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_message_at = time.monotonic()
        self.last_seen_wall = time.time()

    async def send(self, message: Message, *, msg_id: str | None = None) -> None:
        text = encode(message, msg_id=msg_id)
        # Frames from concurrent senders must not interleave on the socket.
        async with self.send_lock:
            await self.ws.send_str(text)


class AgentHub:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        offline_after_s: float = OFFLINE_AFTER_S,
        sweep_interval_s: float = 5.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self._offline_after = offline_after_s
        self._sweep_interval = sweep_interval_s
        self._connections: dict[int, AgentConnection] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._departure_listeners: list[Callable[[AgentConnection], None]] = []

    # -- AgentLink -------------------------------------------------------

    def is_connected(self, host_id: int) -> bool:
        return host_id in self._connections

    def is_current(self, conn: AgentConnection) -> bool:
        return self._connections.get(conn.host_id) is conn

    async def send(self, host_id: int, message: Message) -> bool:
        conn = self._connections.get(host_id)
        if conn is None:
            return False
        try:
            await conn.send(message)
        except (ConnectionError, RuntimeError) as exc:
            log.info("could not send %s to host %s: %s", message.TYPE, host_id, exc)
            return False
        return True

    async def send_on_connection(
        self, host_id: int, message: Message, *, msg_id: str
    ) -> AgentConnection | None:
        """Send on the host's live connection and say which one carried it
        (an answer can only come back on that socket); None if not sent."""
        conn = self._connections.get(host_id)
        if conn is None:
            return None
        try:
            await conn.send(message, msg_id=msg_id)
        except (ConnectionError, RuntimeError) as exc:
            log.info("could not send %s to host %s: %s", message.TYPE, host_id, exc)
            return None
        return conn

    def on_departure(self, listener: Callable[[AgentConnection], None]) -> None:
        """Call ``listener`` (synchronously, once per connection) when a
        connection stops being its host's: replaced, timed out or closed."""
        self._departure_listeners.append(listener)

    def _departed(self, conn: AgentConnection) -> None:
        for listener in self._departure_listeners:
            try:
                listener(conn)
            except Exception:
                log.exception("a departure listener failed for host %s", conn.host_id)

    async def disconnect(self, host_id: int, reason: str) -> None:
        conn = self._connections.get(host_id)
        if conn is not None:
            await self.close(conn, reason, code=WSCloseCode.POLICY_VIOLATION)

    async def close(
        self, conn: AgentConnection, reason: str, *, code: int = WSCloseCode.GOING_AWAY
    ) -> None:
        """Close a socket without letting a dead peer hold up the caller."""
        try:
            await asyncio.wait_for(
                conn.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("closing the connection of host %s: %s", conn.host_id, exc)

    def _close_later(self, conn: AgentConnection, reason: str) -> None:
        task = asyncio.create_task(self.close(conn, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- connection lifecycle (called by the listener) -------------------

    def connected_count(self) -> int:
        return len(self._connections)

    def register(self, conn: AgentConnection) -> None:
        """Make ``conn`` the host's connection at once (no await: no window
        in which an older connection's departure could mark the host offline)."""
        old = self._connections.get(conn.host_id)
        self._connections[conn.host_id] = conn
        if old is not None:
            self._departed(old)
            self._close_later(old, "replaced by a newer connection")

    async def unregister(self, conn: AgentConnection, reason: str) -> None:
        if self._connections.get(conn.host_id) is not conn:
            return  # a newer connection took over; the host is still online
        del self._connections[conn.host_id]
        self._departed(conn)

        def run() -> None:
            changed = (
                Host.update(online=False, last_seen_at=conn.last_seen_wall)
                .where((Host.id == conn.host_id) & (Host.online == True))  # noqa: E712
                .execute()
            )
            if changed:
                audit.record(
                    "system",
                    "host.offline",
                    target_kind="host",
                    target_id=conn.host_id,
                    payload={"reason": reason},
                )

        try:
            await self._store.transaction(run)
        except Exception:
            log.exception("could not record host %s going offline", conn.host_id)
        self._bus.publish(HostChanged(conn.host_id))

    # -- upkeep ------------------------------------------------------------

    async def mark_all_offline(self) -> None:
        """At start-up nobody is connected yet, whatever the last run recorded."""

        def run() -> None:
            for host in Host.select().where(Host.online == True):  # noqa: E712
                host.online = False
                host.save()
                audit.record(
                    "system",
                    "host.offline",
                    target_kind="host",
                    target_id=host.id,
                    payload={"reason": "control plane restarted"},
                )

        await self._store.transaction(run)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_loop(), name="agent-hub-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(
            *(self.close(c, "control plane shutting down") for c in self._connections.values()),
            *self._closing,
            return_exceptions=True,
        )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("presence sweep failed")

    async def sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self._connections.values()):
            if now - conn.last_message_at > self._offline_after:
                log.info(
                    "host %s silent for %.0f s: offline", conn.host_id, now - conn.last_message_at
                )
                # Offline first; the (possibly slow) close happens on the side.
                await self.unregister(conn, "no heartbeat within the timeout")
                self._close_later(conn, "no heartbeat within the timeout")
        rows = [(c.last_seen_wall, c.host_id) for c in self._connections.values()]
        if rows:
            # Heartbeats only touch memory; the database learns about them here,
            # in one statement: a peewee update per host held the store thread
            # (and every dispatch queued behind it) ~60-110 ms at 1,000 agents.
            def run() -> None:
                Host._meta.database.connection().executemany(_TOUCH_LAST_SEEN, rows)

            await self._store.transaction(run)
