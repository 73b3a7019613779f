"""Calls to an agent that expect an answer (`rpc.call` -> `rpc.result`).

A call goes out on the host's live connection with a fresh envelope id; the
agent answers with that id as `call_id`. Only an answer from the host the
call went to resolves it: an agent must not be able to answer (or spoil)
calls made to another host. Pending calls are bounded per host and fail at
once when the connection that carried them goes away, so a caller never
waits for an answer that cannot come.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from agent.protocol import ProtocolError, RpcCall, RpcResult, new_id
from server_core import audit
from server_core.errors import (
    AgentFailed,
    AgentTimeout,
    Busy,
    HostOffline,
    InvalidInput,
    NotFound,
    ServiceError,
)
from server_core.hub import AgentConnection, AgentHub
from server_core.models import Host
from server_core.store import Store

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
MAX_PENDING_PER_HOST = 64
MAX_AGENT_MESSAGE = 1000


@dataclass(eq=False)
class _Pending:
    host_id: int
    method: str
    # None: the connection that carried the call went away before the answer.
    future: asyncio.Future[RpcResult | None]
    conn: AgentConnection | None = None


def _host_name(host_id: int) -> str | None:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    return None if host is None else str(host.name)


class RpcBroker:
    def __init__(
        self, hub: AgentHub, store: Store, *, max_pending_per_host: int = MAX_PENDING_PER_HOST
    ) -> None:
        self._hub = hub
        self._store = store
        self._max_pending = max_pending_per_host
        self._pending: dict[str, _Pending] = {}
        self._per_host: dict[int, int] = {}
        self._audits: set[asyncio.Task[None]] = set()
        hub.on_departure(self._connection_departed)

    def pending_count(self, host_id: int | None = None) -> int:
        if host_id is None:
            return len(self._pending)
        return self._per_host.get(host_id, 0)

    async def call(
        self,
        host_id: int,
        method: str,
        params: dict[str, Any],
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send ``method`` to the host's agent and return its result object.

        Raises HostOffline (409, code "offline"), Busy (503), AgentTimeout
        (504), or the agent's error mapped: not_found -> NotFound,
        bad_params -> InvalidInput, anything else -> AgentFailed (502)
        carrying the agent's code and message.
        """
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if not self._hub.is_connected(host_id):
            raise await self._offline(host_id, method)
        if self._per_host.get(host_id, 0) >= self._max_pending:
            raise Busy(
                f"{self._max_pending} calls to this host are still waiting for an answer: "
                "try again in a moment"
            )
        call_id = new_id()
        pending = _Pending(host_id, method, asyncio.get_running_loop().create_future())
        self._pending[call_id] = pending
        self._per_host[host_id] = self._per_host.get(host_id, 0) + 1
        try:
            try:
                conn = await self._hub.send_on_connection(
                    host_id, RpcCall(method=method, params=params), msg_id=call_id
                )
            except ProtocolError as exc:
                raise InvalidInput(f"the {method} call cannot be sent: {exc}") from None
            # A connection that departed during the send cannot carry the answer.
            if conn is None or not self._hub.is_current(conn):
                raise await self._offline(host_id, method)
            pending.conn = conn
            try:
                result = await asyncio.wait_for(pending.future, timeout_s)
            except TimeoutError:
                name = await self._name(host_id)
                raise AgentTimeout(
                    f"host {name} did not answer {method} within {timeout_s:g} s"
                ) from None
            if result is None:
                name = await self._name(host_id)
                raise HostOffline(
                    f"host {name} went offline before answering {method}: try again when it is back"
                )
        finally:
            self._forget(call_id)
        return _unwrap(result)

    def resolve(self, conn: AgentConnection, result: RpcResult) -> None:
        """Hand an `rpc.result` that arrived on ``conn`` to its caller."""
        pending = self._pending.get(result.call_id)
        if pending is None:
            log.debug(
                "rpc result %s from host %s answers no waiting call (late or unknown)",
                result.call_id,
                conn.host_id,
            )
            return
        if pending.host_id != conn.host_id:
            log.warning(
                "host %s sent a result for call %s, which was made to host %s: ignored",
                conn.host_id,
                result.call_id,
                pending.host_id,
            )
            # Call ids are random: only an agent that learnt another host's call
            # id gets here, which is worth a row (and cannot be a flood).
            self._audit_refused(conn.host_id, pending)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    async def flush(self) -> None:
        """Wait for the audit rows under way (shutdown)."""
        while self._audits:
            await asyncio.gather(*list(self._audits), return_exceptions=True)

    def _audit_refused(self, host_id: int, pending: _Pending) -> None:
        task = asyncio.get_running_loop().create_task(self._write_refusal(host_id, pending))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _write_refusal(self, host_id: int, pending: _Pending) -> None:
        try:
            await self._store.transaction(
                audit.record,
                "agent",
                "agent.rpc_result_refused",
                actor_id=host_id,
                target_kind="host",
                target_id=pending.host_id,
                payload={"method": pending.method, "reason": "the call went to another host"},
            )
        except Exception as exc:  # the store closed under us: the log line above stays
            log.warning("could not audit a refused rpc result of host %s: %s", host_id, exc)

    def _connection_departed(self, conn: AgentConnection) -> None:
        for pending in self._pending.values():
            if pending.conn is conn and not pending.future.done():
                pending.future.set_result(None)

    def _forget(self, call_id: str) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        left = self._per_host.get(pending.host_id, 1) - 1
        if left > 0:
            self._per_host[pending.host_id] = left
        else:
            self._per_host.pop(pending.host_id, None)

    async def _name(self, host_id: int) -> str:
        name = await self._store.call(_host_name, host_id)
        return name if name is not None else str(host_id)

    async def _offline(self, host_id: int, method: str) -> ServiceError:
        name = await self._store.call(_host_name, host_id)
        if name is None:
            return NotFound(f"host {host_id} does not exist")
        return HostOffline(
            f"host {name} is offline: its agent must be connected to answer {method}"
        )


def _unwrap(result: RpcResult) -> dict[str, Any]:
    if result.ok:
        return result.result or {}
    if result.error is None:
        raise AgentFailed("the agent reported a failure without saying why")
    code, message = result.error.code, result.error.message[:MAX_AGENT_MESSAGE]
    if code == "not_found":
        raise NotFound(message)
    if code == "bad_params":
        raise InvalidInput(message)
    raise AgentFailed(message, code=code[:64] or "failed")
