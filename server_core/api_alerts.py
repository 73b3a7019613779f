"""Operator API routes for alerts, notification channels, the audit log, host
presence and the metrics settings (mounted by ApiListener)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Protocol

from aiohttp import web

from server_core.api_common import ACTOR_KEY, MAX_ID, int_param, query_int, read_body
from server_core.errors import InvalidInput
from server_core.services.audit_log import AuditService, validate_query
from server_core.services.context import Actor
from server_core.services.settings import SettingsService
from server_core.views import (
    AlertCounts,
    AlertView,
    AuditQuery,
    ChannelView,
    DeliveryView,
    HostView,
    TestResult,
    as_json,
)

MAX_BULK = 1000


# What the routes need from the alert, notification and host services
# (server_core.services.alerts / notifications / hosts).
class Alerts(Protocol):
    async def list_alerts(
        self, status: str | None = None, host_id: int | None = None, limit: int = 1000
    ) -> list[AlertView]: ...
    async def get_alert(self, alert_id: int) -> AlertView: ...
    async def counts(self) -> AlertCounts: ...
    async def acknowledge(self, alert_ids: list[int], actor: Actor) -> list[AlertView]: ...
    async def resolve(self, alert_ids: list[int], actor: Actor) -> list[AlertView]: ...


class Notifications(Protocol):
    async def list_channels(self) -> list[ChannelView]: ...
    async def get_channel(self, channel_id: int) -> ChannelView: ...
    async def create_channel(self, body: dict[str, Any], actor: Actor) -> ChannelView: ...
    async def update_channel(
        self, channel_id: int, body: dict[str, Any], actor: Actor
    ) -> ChannelView: ...
    async def delete_channel(self, channel_id: int, actor: Actor) -> None: ...
    async def test_channel(self, channel_id: int, actor: Actor) -> TestResult: ...
    async def test_config(self, body: dict[str, Any]) -> TestResult: ...
    async def list_deliveries(
        self, channel_id: int | None = None, limit: int = 200
    ) -> list[DeliveryView]: ...


class Presence(Protocol):
    async def set_presence_mode(self, host_id: int, mode: str, actor: Actor) -> HostView: ...


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])


def _ids(body: dict[str, Any]) -> list[int]:
    _only(body, {"ids"})
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_BULK
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i <= MAX_ID for i in ids)
    ):
        raise InvalidInput(
            f"'ids' must be a list of 1-{MAX_BULK} alert ids (positive integers)", field="ids"
        )
    return list(dict.fromkeys(ids))


def _time_param(request: web.Request, name: str) -> float | None:
    """Unix seconds, or an ISO-8601 time (UTC when it names no offset)."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidInput(
                f"'{name}' must be Unix seconds or an ISO-8601 time (2024-05-01T12:00:00Z)",
                field=name,
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise InvalidInput(f"'{name}' must be a finite time", field=name)
    return value


def audit_query(request: web.Request) -> AuditQuery:
    q = request.query
    before = q.get("before_id", "")
    query = AuditQuery(
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        actor_kind=q.get("actor") or None,
        action=q.get("action") or None,
        target=q.get("target") or None,
        text=q.get("q") or None,
        limit=query_int(request, "limit", 500),
        before_id=query_int(request, "before_id", 0) if before else None,
    )
    # Checked here as well as in the service: a CSV export has sent its
    # headers (status 200) before the service reads the first page.
    validate_query(query)
    return query


class AlertsApi:
    def __init__(
        self,
        alerts: Alerts,
        notifications: Notifications,
        audit: AuditService,
        settings: SettingsService,
        hosts: Presence,
    ) -> None:
        self._alerts = alerts
        self._notifications = notifications
        self._audit = audit
        self._settings = settings
        self._hosts = hosts

    def routes(self, r: web.UrlDispatcher) -> None:
        v1 = "/api/v1"
        # Fixed paths before the {id} ones they would otherwise match.
        r.add_get(v1 + "/alerts", self.list_alerts)
        r.add_get(v1 + "/alerts/counts", self.alert_counts)
        r.add_post(v1 + "/alerts/ack", self.ack_many)
        r.add_post(v1 + "/alerts/resolve", self.resolve_many)
        r.add_get(v1 + "/alerts/{alert_id}", self.get_alert)
        r.add_post(v1 + "/alerts/{alert_id}/ack", self.ack_one)
        r.add_post(v1 + "/alerts/{alert_id}/resolve", self.resolve_one)
        channels = v1 + "/notification-channels"
        r.add_get(channels, self.list_channels)
        r.add_post(channels, self.create_channel)
        r.add_post(channels + "/test", self.test_config)
        r.add_get(channels + "/{channel_id}", self.get_channel)
        r.add_put(channels + "/{channel_id}", self.update_channel)
        r.add_delete(channels + "/{channel_id}", self.delete_channel)
        r.add_post(channels + "/{channel_id}/test", self.test_channel)
        r.add_get(channels + "/{channel_id}/deliveries", self.list_deliveries)
        r.add_get(v1 + "/audit", self.audit)
        r.add_get(v1 + "/audit/actions", self.audit_actions)
        r.add_put(v1 + "/hosts/{host_id}/presence", self.put_presence)
        r.add_get(v1 + "/settings/metrics", self.get_metrics_settings)
        r.add_put(v1 + "/settings/metrics", self.put_metrics_settings)
        r.add_post(v1 + "/settings/metrics/token", self.new_metrics_token)

    # -- alerts --------------------------------------------------------------

    async def list_alerts(self, request: web.Request) -> web.Response:
        # The service checks status, host_id and limit and names the field.
        host = request.query.get("host_id") or None
        views = await self._alerts.list_alerts(
            request.query.get("status") or None,
            query_int(request, "host_id", 0) if host else None,
            query_int(request, "limit", 1000),
        )
        return web.json_response(as_json(views))

    async def alert_counts(self, request: web.Request) -> web.Response:
        return web.json_response(as_json(await self._alerts.counts()))

    async def get_alert(self, request: web.Request) -> web.Response:
        view = await self._alerts.get_alert(int_param(request, "alert_id"))
        return web.json_response(as_json(view))

    async def ack_one(self, request: web.Request) -> web.Response:
        alert_id = int_param(request, "alert_id")
        views = await self._alerts.acknowledge([alert_id], request[ACTOR_KEY])
        return web.json_response(as_json(views[0]))

    async def resolve_one(self, request: web.Request) -> web.Response:
        alert_id = int_param(request, "alert_id")
        views = await self._alerts.resolve([alert_id], request[ACTOR_KEY])
        return web.json_response(as_json(views[0]))

    async def ack_many(self, request: web.Request) -> web.Response:
        ids = _ids(await read_body(request))
        views = await self._alerts.acknowledge(ids, request[ACTOR_KEY])
        return web.json_response(as_json(views))

    async def resolve_many(self, request: web.Request) -> web.Response:
        ids = _ids(await read_body(request))
        views = await self._alerts.resolve(ids, request[ACTOR_KEY])
        return web.json_response(as_json(views))

    # -- notification channels -------------------------------------------------

    async def list_channels(self, request: web.Request) -> web.Response:
        return web.json_response(as_json(await self._notifications.list_channels()))

    async def create_channel(self, request: web.Request) -> web.Response:
        view = await self._notifications.create_channel(
            await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view), status=201)

    async def get_channel(self, request: web.Request) -> web.Response:
        view = await self._notifications.get_channel(int_param(request, "channel_id"))
        return web.json_response(as_json(view))

    async def update_channel(self, request: web.Request) -> web.Response:
        channel_id = int_param(request, "channel_id")
        view = await self._notifications.update_channel(
            channel_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view))

    async def delete_channel(self, request: web.Request) -> web.Response:
        await self._notifications.delete_channel(
            int_param(request, "channel_id"), request[ACTOR_KEY]
        )
        return web.Response(status=204)

    async def test_channel(self, request: web.Request) -> web.Response:
        result = await self._notifications.test_channel(
            int_param(request, "channel_id"), request[ACTOR_KEY]
        )
        return web.json_response(as_json(result))

    async def test_config(self, request: web.Request) -> web.Response:
        result = await self._notifications.test_config(await read_body(request))
        return web.json_response(as_json(result))

    async def list_deliveries(self, request: web.Request) -> web.Response:
        channel_id = int_param(request, "channel_id")
        limit = query_int(request, "limit", 200)
        if not 1 <= limit <= 5000:
            raise InvalidInput("'limit' must be between 1 and 5000", field="limit")
        await self._notifications.get_channel(channel_id)  # 404 for an unknown channel, not []
        views = await self._notifications.list_deliveries(channel_id, limit)
        return web.json_response(as_json(views))

    # -- audit -------------------------------------------------------------------

    async def audit(self, request: web.Request) -> web.StreamResponse:
        query = audit_query(request)
        fmt = request.query.get("format", "json")
        if fmt == "csv":
            return await self._audit_csv(request, query)
        if fmt != "json":
            raise InvalidInput("'format' must be json or csv", field="format")
        page = await self._audit.search(query)
        return web.json_response(
            {
                "entries": as_json(page.entries),
                "more": page.more,
                "next_before_id": page.entries[-1].id if page.more else None,
            }
        )

    async def _audit_csv(self, request: web.Request, query: AuditQuery) -> web.StreamResponse:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="audit-{stamp}.csv"',
            }
        )
        await response.prepare(request)
        async for chunk in self._audit.csv_chunks(query):
            await response.write(chunk.encode("utf-8"))
        await response.write_eof()
        return response

    async def audit_actions(self, request: web.Request) -> web.Response:
        return web.json_response(await self._audit.actions())

    # -- hosts ---------------------------------------------------------------------

    async def put_presence(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        body = await read_body(request)
        _only(body, {"mode"})
        mode = body.get("mode")
        if not isinstance(mode, str):
            raise InvalidInput("'mode' must be 'always_on' or 'laptop'", field="mode")
        view = await self._hosts.set_presence_mode(host_id, mode, request[ACTOR_KEY])
        return web.json_response(as_json(view))

    # -- settings --------------------------------------------------------------------

    async def get_metrics_settings(self, request: web.Request) -> web.Response:
        return web.json_response(as_json(await self._settings.metrics_settings()))

    async def put_metrics_settings(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        _only(body, {"enabled", "token_set"})  # token_set: a GET answer sent back
        if "enabled" not in body:
            raise InvalidInput("'enabled' is required (true or false)", field="enabled")
        view = await self._settings.set_metrics(body["enabled"], request[ACTOR_KEY])
        return web.json_response(as_json(view))

    async def new_metrics_token(self, request: web.Request) -> web.Response:
        token = await self._settings.new_metrics_token(request[ACTOR_KEY])
        return web.json_response({"token": token}, status=201)
