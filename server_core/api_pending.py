"""Operator API routes for hosts that announced themselves (mounted by ApiListener).

GET  /api/v1/pending-hosts                 waiting hosts, oldest first
POST /api/v1/pending-hosts/{id}/accept     add-host fields; ``hostname``
                                           defaults to the announced one
POST /api/v1/pending-hosts/{id}/reject     {"reason": "..."} (optional)
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from server_core.api_common import ACTOR_KEY, int_param, read_body
from server_core.errors import InvalidInput
from server_core.services.context import Actor
from server_core.services.pending_hosts import AcceptedHost, PendingHostView
from server_core.views import as_json


class PendingHosts(Protocol):
    async def list_pending(self) -> list[PendingHostView]: ...
    async def accept(self, pending_id: int, body: Any, actor: Actor) -> AcceptedHost: ...
    async def reject(self, pending_id: int, reason: Any, actor: Actor) -> None: ...


class PendingHostsApi:
    def __init__(self, pending: PendingHosts) -> None:
        self._pending = pending

    def routes(self, r: web.UrlDispatcher) -> None:
        base = "/api/v1/pending-hosts"
        r.add_get(base, self.list_pending)
        r.add_post(base + "/{pending_id}/accept", self.accept)
        r.add_post(base + "/{pending_id}/reject", self.reject)

    async def list_pending(self, request: web.Request) -> web.Response:
        return web.json_response(as_json(await self._pending.list_pending()))

    async def accept(self, request: web.Request) -> web.Response:
        pending_id = int_param(request, "pending_id")
        accepted = await self._pending.accept(
            pending_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(accepted), status=201)

    async def reject(self, request: web.Request) -> web.Response:
        pending_id = int_param(request, "pending_id")
        body = await _optional_body(request)
        unknown = sorted(set(body) - {"reason"})
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
        await self._pending.reject(pending_id, body.get("reason"), request[ACTOR_KEY])
        return web.json_response({"rejected": pending_id})


async def _optional_body(request: web.Request) -> dict[str, Any]:
    """The JSON object sent, or {} when nothing was (a reject needs no reason)."""
    if not (await request.read()).strip():
        return {}
    return await read_body(request)
