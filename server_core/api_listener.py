"""Listener B: the operator API (`/api/v1`, loopback by default, bearer API tokens)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server_core import metrics, openapi
from server_core.api_alerts import Alerts, AlertsApi, Notifications
from server_core.api_bundles import OfflineBundles, OfflineBundlesApi
from server_core.api_common import (
    ACTOR_KEY,
    Handler,
    error_response,
    int_param,
    is_loopback_host,
    is_whole_number,
    optional_id,
    query_int,
    read_body,
)
from server_core.api_pending import PendingHosts, PendingHostsApi
from server_core.api_updates import Updates, UpdatesApi
from server_core.errors import InvalidInput, ServiceError
from server_core.rate_limit import FailureGuard, retry_after_header
from server_core.services.api_tokens import authenticate_api_token
from server_core.services.audit_log import AuditService
from server_core.services.context import Actor, ServiceContext
from server_core.services.enrolment import EnrolmentService, parse_new_host
from server_core.services.hosts import HostService
from server_core.services.jobs import JobService
from server_core.services.maintenance import RUN_NOW_KINDS, MaintenanceService
from server_core.services.restore import RestoreService
from server_core.services.schedules import ScheduleService
from server_core.services.settings import MetricsAccess, SettingsService
from server_core.services.sources import SourceService
from server_core.views import ServerInfo, TreeListing, as_json

log = logging.getLogger(__name__)

METRICS_ROUTE = "metrics"


# Jobs described by an object named after their kind, and that object's fields.
JOB_SPECS: dict[str, tuple[str, ...]] = {
    "restore": ("snapshot_id", "paths", "target_dir", "in_place", "confirm_hostname"),
    "diff": ("snapshot_a", "snapshot_b"),
}


def tree_listing_json(listing: TreeListing) -> dict[str, Any]:
    """as_json(listing), spelled out: a 5000-entry page is built on the loop
    the desktop app's window shares, and this is five times faster."""
    return {
        "snapshot_id": listing.snapshot_id,
        "path": listing.path,
        "state": listing.state,
        "nodes": listing.nodes,
        "elapsed_s": listing.elapsed_s,
        "error": listing.error,
        "entries": [
            {"name": e.name, "type": e.type, "size": e.size, "mtime": e.mtime, "files": e.files}
            for e in listing.entries
        ],
        "total": listing.total,
    }


class ApiListener:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        hosts: HostService,
        jobs: JobService,
        sources: SourceService,
        schedules: ScheduleService,
        maintenance: MaintenanceService,
        restore: RestoreService,
        enrolment: EnrolmentService,
        server_info: Callable[[], ServerInfo],
        alerts: Alerts,
        notifications: Notifications,
        audit: AuditService,
        settings: SettingsService,
        offline_bundles: OfflineBundles | None = None,
        pending_hosts: PendingHosts | None = None,
        updates: Updates | None = None,
    ) -> None:
        self._ctx = ctx
        self._hosts = hosts
        self._jobs = jobs
        self._sources = sources
        self._schedules = schedules
        self._maintenance = maintenance
        self._restore = restore
        self._enrolment = enrolment
        self._server_info = server_info
        self._settings = settings
        self._alerts_api = AlertsApi(alerts, notifications, audit, settings, hosts)
        self._offline_bundles = offline_bundles
        self._pending_hosts = pending_hosts
        self._updates = updates
        # Wrong API tokens: audited (a row per source a minute), and held off per
        # source when the API is reachable from other machines.
        self._refusals = enrolment.refusals
        self._failures = FailureGuard()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=1024 * 1024)
        r = app.router
        r.add_get("/api/v1/server", self.server)
        r.add_get(openapi.PATH, openapi.OpenApiRoute(self._server_info).get)
        r.add_post("/api/v1/enrolment-tokens", self.create_enrolment_token)
        r.add_get("/api/v1/hosts", self.list_hosts)
        r.add_get("/api/v1/hosts/{host_id}", self.get_host)
        r.add_delete("/api/v1/hosts/{host_id}", self.delete_host)
        r.add_put("/api/v1/hosts/{host_id}/credentials", self.put_credentials)
        r.add_put("/api/v1/hosts/{host_id}/bandwidth", self.put_bandwidth)
        r.add_get("/api/v1/hosts/{host_id}/enrolment-tokens", self.list_enrolment_tokens)
        r.add_post("/api/v1/hosts/{host_id}/enrolment-tokens", self.regenerate_enrolment_token)
        r.add_delete("/api/v1/enrolment-tokens/{token_id}", self.revoke_enrolment_token)
        groups = "/api/v1/hosts/{host_id}/source-groups"
        r.add_get(groups, self.list_source_groups)
        r.add_post(groups, self.create_source_group)
        r.add_get(groups + "/{source_group_id}", self.get_source_group)
        r.add_put(groups + "/{source_group_id}", self.put_source_group)
        r.add_delete(groups + "/{source_group_id}", self.delete_source_group)
        schedules = "/api/v1/hosts/{host_id}/schedules"
        r.add_get(schedules, self.list_schedules)
        r.add_post(schedules, self.create_schedule)
        r.add_get(schedules + "/{schedule_id}", self.get_schedule)
        r.add_put(schedules + "/{schedule_id}", self.put_schedule)
        r.add_delete(schedules + "/{schedule_id}", self.delete_schedule)
        r.add_get("/api/v1/hosts/{host_id}/conflicts", self.list_conflicts)
        r.add_get("/api/v1/hosts/{host_id}/hooks", self.get_default_hooks)
        r.add_put("/api/v1/hosts/{host_id}/hooks", self.put_default_hooks)
        r.add_get("/api/v1/hosts/{host_id}/maintenance", self.get_maintenance)
        r.add_put("/api/v1/hosts/{host_id}/maintenance", self.put_maintenance)
        r.add_get("/api/v1/hosts/{host_id}/repo-stats", self.repo_stats)
        r.add_post("/api/v1/hosts/{host_id}/repo/reinit", self.reinit_repo)
        r.add_get("/api/v1/hosts/{host_id}/snapshots", self.list_snapshots)
        snapshot = "/api/v1/hosts/{host_id}/snapshots/{snapshot_id}"
        r.add_get(snapshot + "/tree", self.snapshot_tree)
        r.add_get(snapshot + "/find", self.snapshot_find)
        r.add_get("/api/v1/hosts/{host_id}/find", self.host_find)
        r.add_get("/api/v1/hosts/{host_id}/jobs", self.list_jobs)
        r.add_post("/api/v1/hosts/{host_id}/jobs", self.create_job)
        r.add_get("/api/v1/jobs/{job_id}", self.get_job)
        r.add_get("/api/v1/jobs/{job_id}/log.ndjson", self.job_log_ndjson)
        r.add_get("/api/v1/jobs/{job_id}/log.txt", self.job_log_txt)
        r.add_post("/api/v1/jobs/{job_id}/cancel", self.cancel_job)
        self._alerts_api.routes(r)
        if self._offline_bundles is not None:
            OfflineBundlesApi(self._offline_bundles).routes(r)
        if self._pending_hosts is not None:
            PendingHostsApi(self._pending_hosts).routes(r)
        if self._updates is not None:
            UpdatesApi(self._updates).routes(r)
        r.add_get("/metrics", self.metrics, name=METRICS_ROUTE)
        return app

    # -- middlewares -------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServiceError as exc:
            return error_response(exc.status, exc.code, exc.message, field=exc.field)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise
        except Exception:
            log.exception("API request %s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; see the application log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name == METRICS_ROUTE:
            return await handler(request)  # its own token, checked by the handler
        source = request.remote or "unknown"
        limited = not is_loopback_host(source)
        held = self._failures.check(source) if limited else None
        if held is not None and not held.allowed:
            self._refusals.record(
                "api", "api.rate_limited", source, {"reason": "too many failures"}
            )
            response = error_response(
                429, "rate_limited", f"too many requests with a bad API token from {source}"
            )
            response.headers["Retry-After"] = retry_after_header(held.retry_after_s)
            return response
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        token_id = None
        reason = "no API token"
        if scheme.lower() == "bearer" and raw.strip():
            token_id = await self._ctx.store.call(authenticate_api_token, raw.strip())
            reason = "unknown or revoked API token"
        if token_id is None:
            if limited:
                self._failures.failed(source)
            self._refusals.record(
                "api",
                "api.auth_refused",
                source,
                {"reason": reason, "method": request.method, "path": request.path[:200]},
            )
            return error_response(401, "unauthorized", "missing or invalid API token")
        request[ACTOR_KEY] = Actor("api", f"token:{token_id}")
        return await handler(request)

    # -- handlers ------------------------------------------------------------

    async def server(self, request: web.Request) -> web.Response:
        info = self._server_info()
        return web.json_response(
            {"version": info.version, "agent_url": info.agent_url, "cert_sha256": info.cert_sha256}
        )

    async def create_enrolment_token(self, request: web.Request) -> web.Response:
        new = parse_new_host(await read_body(request))
        grant = await self._enrolment.add_host(new, request[ACTOR_KEY])
        return web.json_response(
            {
                "host_id": grant.host_id,
                "token": grant.token,
                "expires_at": grant.expires_at,
                "install_command": self._enrolment.install_command(grant.token),
            },
            status=201,
        )

    async def list_enrolment_tokens(self, request: web.Request) -> web.Response:
        views = await self._enrolment.list_tokens(int_param(request, "host_id"))
        return web.json_response(as_json(views))

    async def regenerate_enrolment_token(self, request: web.Request) -> web.Response:
        grant = await self._enrolment.regenerate_token(
            int_param(request, "host_id"), request[ACTOR_KEY]
        )
        commands = self._enrolment.install_commands(grant.token)
        return web.json_response(
            {
                "host_id": grant.host_id,
                "token_id": grant.token_id,
                "token": grant.token,
                "expires_at": grant.expires_at,
                "install_command": commands.linux,
                "install_commands": as_json(commands),
            },
            status=201,
        )

    async def revoke_enrolment_token(self, request: web.Request) -> web.Response:
        await self._enrolment.revoke_token(int_param(request, "token_id"), request[ACTOR_KEY])
        return web.Response(status=204)

    async def list_hosts(self, request: web.Request) -> web.Response:
        return web.json_response(as_json(await self._hosts.list_hosts()))

    async def get_host(self, request: web.Request) -> web.Response:
        host = await self._hosts.get_host(int_param(request, "host_id"))
        return web.json_response(as_json(host))

    async def delete_host(self, request: web.Request) -> web.Response:
        await self._hosts.delete_host(int_param(request, "host_id"), request[ACTOR_KEY])
        return web.Response(status=204)

    async def put_credentials(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        body = await read_body(request)
        unknown = set(body) - {"slot", "repository"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        slot = body.get("slot")
        if not isinstance(slot, str):
            raise InvalidInput("'slot' must be 'everyday' or 'admin'", field="slot")
        await self._hosts.set_credentials(host_id, slot, body.get("repository"), request[ACTOR_KEY])
        return web.Response(status=204)

    async def put_bandwidth(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        unknown = set(body) - {"upload_kib_s", "download_kib_s"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        await self._hosts.set_bandwidth(
            int_param(request, "host_id"),
            body.get("upload_kib_s"),
            body.get("download_kib_s"),
            request[ACTOR_KEY],
        )
        return web.Response(status=204)

    async def list_source_groups(self, request: web.Request) -> web.Response:
        groups = await self._sources.list_groups(int_param(request, "host_id"))
        return web.json_response(as_json(groups))

    async def create_source_group(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        view = await self._sources.create_group(
            host_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view), status=201)

    async def get_source_group(self, request: web.Request) -> web.Response:
        view = await self._sources.get_group(
            int_param(request, "host_id"), int_param(request, "source_group_id")
        )
        return web.json_response(as_json(view))

    async def put_source_group(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        group_id = int_param(request, "source_group_id")
        view = await self._sources.update_group(
            host_id, group_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view))

    async def delete_source_group(self, request: web.Request) -> web.Response:
        await self._sources.delete_group(
            int_param(request, "host_id"),
            int_param(request, "source_group_id"),
            request[ACTOR_KEY],
        )
        return web.Response(status=204)

    async def list_schedules(self, request: web.Request) -> web.Response:
        views = await self._schedules.list_schedules(int_param(request, "host_id"))
        return web.json_response(as_json(views))

    async def create_schedule(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        view = await self._schedules.create_schedule(
            host_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view), status=201)

    async def get_schedule(self, request: web.Request) -> web.Response:
        view = await self._schedules.get_schedule(
            int_param(request, "host_id"), int_param(request, "schedule_id")
        )
        return web.json_response(as_json(view))

    async def put_schedule(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        schedule_id = int_param(request, "schedule_id")
        view = await self._schedules.update_schedule(
            host_id, schedule_id, await read_body(request), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view))

    async def delete_schedule(self, request: web.Request) -> web.Response:
        await self._schedules.delete_schedule(
            int_param(request, "host_id"), int_param(request, "schedule_id"), request[ACTOR_KEY]
        )
        return web.Response(status=204)

    async def list_conflicts(self, request: web.Request) -> web.Response:
        views = await self._schedules.conflicts(int_param(request, "host_id"))
        return web.json_response(as_json(views))

    async def get_default_hooks(self, request: web.Request) -> web.Response:
        view = await self._sources.default_hooks(int_param(request, "host_id"))
        return web.json_response(as_json(view))

    async def put_default_hooks(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        body = await read_body(request)
        unknown = set(body) - {"pre_hook", "post_hook", "host_id"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        view = await self._sources.set_default_hooks(
            host_id, body.get("pre_hook"), body.get("post_hook"), request[ACTOR_KEY]
        )
        return web.json_response(as_json(view))

    async def get_maintenance(self, request: web.Request) -> web.Response:
        view = await self._maintenance.get(int_param(request, "host_id"))
        return web.json_response(as_json(view))

    async def put_maintenance(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        view = await self._maintenance.update(host_id, await read_body(request), request[ACTOR_KEY])
        return web.json_response(as_json(view))

    async def repo_stats(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        raw = request.query.get("days", "365")
        if not is_whole_number(raw) or len(raw) > 6:
            raise InvalidInput("'days' must be a whole number of days", field="days")
        view = await self._maintenance.repo_stats(host_id, int(raw))
        return web.json_response(as_json(view))

    async def reinit_repo(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        body = await read_body(request)
        unknown = set(body) - {"confirm"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        host = await self._hosts.get_host(host_id)
        if body.get("confirm") != host.name:
            raise InvalidInput(
                f"'confirm' must be the host's name ({host.name}) to re-initialise its repository",
                field="confirm",
            )
        job_id = await self._maintenance.reinit(host_id, request[ACTOR_KEY])
        return web.json_response({"job_id": job_id}, status=202)

    async def list_snapshots(self, request: web.Request) -> web.Response:
        snaps = await self._hosts.list_snapshots(int_param(request, "host_id"))
        return web.json_response(as_json(snaps))

    async def snapshot_tree(self, request: web.Request) -> web.Response:
        listing = await self._restore.tree_list(
            int_param(request, "host_id"),
            request.match_info["snapshot_id"],
            request.query.get("path") or "/",
            offset=query_int(request, "offset", 0),
            limit=query_int(request, "limit", 5000),
        )
        return web.json_response(tree_listing_json(listing))

    async def snapshot_find(self, request: web.Request) -> web.Response:
        return await self._find(request, request.match_info["snapshot_id"])

    async def host_find(self, request: web.Request) -> web.Response:
        return await self._find(request, None)

    async def _find(self, request: web.Request, snapshot_id: str | None) -> web.Response:
        results = await self._restore.find(
            int_param(request, "host_id"),
            request.query.get("q", ""),
            snapshot_id,
            limit=query_int(request, "limit", 500),
        )
        return web.json_response(as_json(results))

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = await self._jobs.list_jobs(int_param(request, "host_id"))
        return web.json_response(as_json(jobs))

    async def create_job(self, request: web.Request) -> web.Response:
        host_id = int_param(request, "host_id")
        body = await read_body(request)
        unknown = set(body) - {
            "kind",
            "source_group_id",
            "upload_kib_s",
            "download_kib_s",
            *JOB_SPECS,
        }
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind = body.get("kind")
        if kind is None:
            raise InvalidInput("'kind' is required", field="kind")
        if not isinstance(kind, str):
            raise InvalidInput("'kind' must be a string", field="kind")
        if kind in JOB_SPECS:
            job_id = await self._start_with_spec(host_id, kind, body, request[ACTOR_KEY])
            return web.json_response({"job_id": job_id}, status=202)
        for name in JOB_SPECS:
            if name in body:
                raise InvalidInput(f"'{name}' only applies to a {name} job", field=name)
        group = optional_id(body, "source_group_id")
        actor = request[ACTOR_KEY]
        upload, download = body.get("upload_kib_s"), body.get("download_kib_s")
        if (upload is not None or download is not None) and kind != "backup":
            raise InvalidInput(
                "a bandwidth override ('upload_kib_s', 'download_kib_s') is only for backups",
                field="upload_kib_s" if upload is not None else "download_kib_s",
            )
        if kind == "backup" and group is not None:
            job_id = await self._sources.backup_now(
                host_id, group, actor, upload_kib_s=upload, download_kib_s=download
            )
        elif kind in RUN_NOW_KINDS:
            if group is not None:
                raise InvalidInput(
                    f"'source_group_id' does not apply to {kind}: it covers the whole repository",
                    field="source_group_id",
                )
            job_id = await self._maintenance.run_now(host_id, kind, actor)
        else:
            job_id = await self._jobs.dispatch(host_id, kind, actor=actor, source_group_id=group)
        return web.json_response({"job_id": job_id}, status=202)

    async def _start_with_spec(
        self, host_id: int, kind: str, body: dict[str, Any], actor: Actor
    ) -> str:
        """A restore or diff job, described by the object named after its kind."""
        extra = sorted(set(body) - {"kind", kind})
        if extra:
            raise InvalidInput(
                f"a {kind} job takes only 'kind' and '{kind}', not "
                f"{', '.join(repr(e) for e in extra)}",
                field=extra[0],
            )
        spec = body.get(kind)
        if not isinstance(spec, dict):
            raise InvalidInput(
                f"'{kind}' must be an object with {', '.join(JOB_SPECS[kind])}", field=kind
            )
        unknown = sorted(set(spec) - set(JOB_SPECS[kind]))
        if unknown:
            raise InvalidInput(
                f"unknown field(s) in '{kind}': {', '.join(unknown)}", field=unknown[0]
            )
        if kind == "restore":
            return await self._restore.start_restore(
                host_id,
                spec.get("snapshot_id", ""),  # types are checked by the service
                spec.get("paths", []),
                target_dir=spec.get("target_dir"),
                in_place=spec.get("in_place", False),
                confirm_hostname=spec.get("confirm_hostname"),
                actor=actor,
            )
        return await self._restore.start_diff(
            host_id, spec.get("snapshot_a", ""), spec.get("snapshot_b", ""), actor
        )

    async def get_job(self, request: web.Request) -> web.Response:
        job = await self._jobs.get_job(request.match_info["job_id"])
        return web.json_response(as_json(job))

    async def _stream_log(
        self, request: web.Request, content_type: str, render: Callable[[Any], str]
    ) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        await self._jobs.get_job(job_id)  # 404 before any byte is sent
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        after = 0
        # Page through the log so a million-line job never sits in memory at once.
        while True:
            page = await self._jobs.log(job_id, after_seq=after, limit=5000)
            if not page:
                break
            await response.write("".join(render(line) for line in page).encode())
            after = page[-1].seq
        await response.write_eof()
        return response

    async def job_log_ndjson(self, request: web.Request) -> web.StreamResponse:
        return await self._stream_log(
            request,
            "application/x-ndjson; charset=utf-8",
            lambda line: json.dumps(as_json(line), ensure_ascii=False) + "\n",
        )

    async def job_log_txt(self, request: web.Request) -> web.StreamResponse:
        def render(line: Any) -> str:
            stamp = dt.datetime.fromtimestamp(line.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return f"{stamp} [{line.stream}] {line.text}\n"

        return await self._stream_log(request, "text/plain; charset=utf-8", render)

    async def cancel_job(self, request: web.Request) -> web.Response:
        await self._jobs.cancel(request.match_info["job_id"], request[ACTOR_KEY])
        return web.json_response({"status": "cancel requested"}, status=202)

    async def metrics(self, request: web.Request) -> web.Response:
        access = await self._settings.metrics_access(request.headers.get("Authorization"))
        if access is MetricsAccess.DISABLED:
            return error_response(
                404, "not_found", "metrics are disabled; turn them on in Settings → Metrics"
            )
        if access is MetricsAccess.DENIED:
            response = error_response(401, "unauthorized", "missing or invalid metrics token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="restic-manager metrics"'
            return response
        body = await metrics.render(self._ctx.store)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
