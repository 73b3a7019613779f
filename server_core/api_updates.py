"""Operator API routes for agent self-updates (mounted by ApiListener).

    POST /api/v1/hosts/{host_id}/update        update one host's agent    202 HostUpdateView
    GET  /api/v1/hosts/{host_id}/update        its latest update          200 / 404
    GET  /api/v1/agent-updates/bundled         the builds the app serves  200 [BundledAgentView]
    POST /api/v1/agent-updates                 fleet update {host_ids?}   202 FleetUpdateView
    GET  /api/v1/agent-updates/current         the running (or last) run  200 / 404
    POST /api/v1/agent-updates/current/cancel  stop before the next host  200 FleetUpdateView

Without ``host_ids`` a fleet update takes every host whose agent differs from
the bundled build. Updates finish asynchronously: poll the GET routes (a
host's update also shows as its ``update`` job).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from server_core.api_common import ACTOR_KEY, int_param, read_body
from server_core.errors import InvalidInput, NotFound
from server_core.services.context import Actor
from server_core.update_views import BundledAgentView, FleetUpdateView, HostUpdateView
from server_core.views import as_json


class Updates(Protocol):
    """What the routes need from server_core.services.updates.UpdateService."""

    async def bundled(self) -> list[BundledAgentView]: ...
    async def update_host(self, host_id: int, actor: Actor) -> HostUpdateView: ...
    def host_update(self, host_id: int) -> HostUpdateView | None: ...
    async def update_fleet(self, host_ids: list[int] | None, actor: Actor) -> FleetUpdateView: ...
    def current(self) -> FleetUpdateView | None: ...
    async def cancel(self, actor: Actor) -> FleetUpdateView: ...


class UpdatesApi:
    def __init__(self, updates: Updates) -> None:
        self._updates = updates

    def routes(self, r: web.UrlDispatcher) -> None:
        v1 = "/api/v1"
        r.add_post(v1 + "/hosts/{host_id}/update", self.update_host)
        r.add_get(v1 + "/hosts/{host_id}/update", self.host_update)
        r.add_get(v1 + "/agent-updates/bundled", self.bundled)
        r.add_post(v1 + "/agent-updates", self.update_fleet)
        r.add_get(v1 + "/agent-updates/current", self.current)
        r.add_post(v1 + "/agent-updates/current/cancel", self.cancel)

    async def update_host(self, request: web.Request) -> web.Response:
        view = await self._updates.update_host(int_param(request, "host_id"), request[ACTOR_KEY])
        return web.json_response(as_json(view), status=202)

    async def host_update(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        view = self._updates.host_update(host_id)
        if view is None:
            raise NotFound(f"host {host_id} has not been updated since the app started")
        return web.json_response(as_json(view))

    async def bundled(self, request: web.Request) -> web.Response:
        views = await self._updates.bundled()
        return web.json_response(
            [{**as_json(v), "platform": v.platform} for v in views],
        )

    async def update_fleet(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await read_body(request) if request.can_read_body else {}
        unknown = sorted(set(body) - {"host_ids"})
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
        # The service checks the list and names the field.
        view = await self._updates.update_fleet(body.get("host_ids"), request[ACTOR_KEY])
        return web.json_response(as_json(view), status=202)

    async def current(self, request: web.Request) -> web.Response:
        view = self._updates.current()
        if view is None:
            raise NotFound("no fleet update has run since the app started")
        return web.json_response(as_json(view))

    async def cancel(self, request: web.Request) -> web.Response:
        view = await self._updates.cancel(request[ACTOR_KEY])
        return web.json_response(as_json(view))
