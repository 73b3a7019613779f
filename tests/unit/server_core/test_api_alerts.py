"""Operator API routes for alerts, channels, audit, presence, metrics settings
and GET /metrics: aiohttp's test client against an ApiListener on a real
store, with the real services behind it and a real local webhook sink."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from server_core import audit
from server_core.api_listener import ApiListener
from server_core.hub import AgentHub
from server_core.models import Job
from server_core.rpc import RpcBroker
from server_core.services.alerts import AlertService
from server_core.services.api_tokens import create_api_token
from server_core.services.audit_log import AuditService
from server_core.services.context import OPERATOR
from server_core.services.enrolment import EnrolmentService
from server_core.services.notifications import NotificationService
from server_core.services.restore import RestoreService
from server_core.services.settings import SettingsService
from server_core.views import ServerInfo
from tests.helpers.notify_sinks import HttpSink, http_sink

from .conftest import Services, add_host

SECRET_HEADER = "X-Hook-Token: s3cr3t-hook-value"


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    svc: Services
    alerts: AlertService
    settings: SettingsService
    token: str

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        """(status, JSON or None, raw text)"""
        h = {"Authorization": f"Bearer {self.token}"} if headers is None else headers
        async with self.client.request(method, path, json=body, headers=h) as resp:
            text = await resp.text()
            data = json.loads(text) if resp.content_type == "application/json" else None
            return resp.status, data, text


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    """A real webhook receiver on 127.0.0.1."""
    async with http_sink() as receiver:
        yield receiver


@pytest.fixture
async def api(svc: Services) -> AsyncIterator[Api]:
    ctx = svc.ctx
    alerts = AlertService(ctx)
    notifications = NotificationService(ctx, timeout_s=5)
    settings = SettingsService(ctx)
    listener = ApiListener(
        ctx,
        hosts=svc.hosts,
        jobs=svc.jobs,
        sources=svc.sources,
        schedules=svc.schedules,
        maintenance=svc.maintenance,
        restore=RestoreService(ctx, svc.jobs, RpcBroker(AgentHub(svc.store, ctx.bus), svc.store)),
        enrolment=EnrolmentService(ctx, install_command=lambda token: f"install {token}"),
        server_info=lambda: ServerInfo("t", "https://a:1", "00", "/d", "test"),
        alerts=alerts,
        notifications=notifications,
        audit=AuditService(ctx),
        settings=settings,
    )
    token = await svc.store.transaction(create_api_token, "tests", OPERATOR)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(listener.app(), host="127.0.0.1", port=0)
    )
    await client.start_server()
    try:
        yield Api(client, svc, alerts, settings, token)
    finally:
        await client.close()
        await notifications.stop()


def is_error(data: Any, code: str, field: str | None = None) -> bool:
    err = data["error"]
    return err["code"] == code and isinstance(err["message"], str) and err.get("field") == field


# -- alerts ----------------------------------------------------------------------


async def test_alert_routes_list_get_ack_resolve(api: Api) -> None:
    web1 = await add_host(api.svc, "web1")
    db1 = await add_host(api.svc, "db1")
    a = await api.alerts.fire("backup_failed", web1, "backup of etc failed", key_suffix=1)
    b = await api.alerts.fire("agent_offline", db1, "db1 is silent")
    c = await api.alerts.fire("stale_backup", web1, "no backup for 3 days")

    status, rows, _ = await api.call("GET", "/api/v1/alerts")
    assert status == 200 and {r["id"] for r in rows} == {a.id, b.id, c.id}
    assert set(rows[0]) >= {
        "id", "kind", "severity", "host_id", "status", "message",
        "first_seen_at", "last_seen_at", "count",
    }  # fmt: skip
    _, rows, _ = await api.call("GET", f"/api/v1/alerts?host_id={web1}")
    assert {r["id"] for r in rows} == {a.id, c.id}

    status, one, _ = await api.call("POST", f"/api/v1/alerts/{a.id}/ack")
    assert status == 200 and one["status"] == "acknowledged" and one["id"] == a.id
    status, one, _ = await api.call("GET", f"/api/v1/alerts/{a.id}")
    assert status == 200 and one["status"] == "acknowledged" and one["severity"] == "critical"
    _, rows, _ = await api.call("GET", "/api/v1/alerts?status=open")
    assert {r["id"] for r in rows} == {b.id, c.id}

    status, one, _ = await api.call("POST", f"/api/v1/alerts/{b.id}/resolve")
    assert status == 200 and one["status"] == "resolved"
    status, many, _ = await api.call("POST", "/api/v1/alerts/resolve", {"ids": [a.id, c.id]})
    assert status == 200 and [r["status"] for r in many] == ["resolved", "resolved"]
    _, counts, _ = await api.call("GET", "/api/v1/alerts/counts")
    assert counts == {"open": 0, "acknowledged": 0, "worst_severity": None}

    # The API token is the actor in the audit log.
    _, page, _ = await api.call("GET", "/api/v1/audit?action=alert.resolved")
    assert len(page["entries"]) == 3
    assert {e["actor_kind"] for e in page["entries"]} == {"api"}


async def test_alert_route_errors(api: Api) -> None:
    web1 = await add_host(api.svc, "web1")
    a = await api.alerts.fire("backup_failed", web1, "failed", key_suffix=1)
    await api.call("POST", f"/api/v1/alerts/{a.id}/resolve")

    status, data, _ = await api.call("GET", "/api/v1/alerts/999")
    assert status == 404 and is_error(data, "not_found")
    status, data, _ = await api.call("GET", "/api/v1/alerts/abc")
    assert status == 404 and is_error(data, "not_found")
    status, data, _ = await api.call("POST", f"/api/v1/alerts/{a.id}/ack")  # resolved already
    assert (
        status == 409
        and is_error(data, "conflict")
        and "already resolved" in data["error"]["message"]
    )
    status, data, _ = await api.call("POST", "/api/v1/alerts/999/ack")
    assert status == 404 and is_error(data, "not_found")
    b = await api.alerts.fire("stale_backup", web1, "no backup")
    status, data, _ = await api.call("POST", "/api/v1/alerts/ack", {"ids": [b.id, 999]})
    assert status == 404 and is_error(data, "not_found")
    assert (await api.alerts.get_alert(b.id)).status == "open"  # all or none
    status, data, _ = await api.call("GET", "/api/v1/alerts?status=closed")
    assert status == 400 and is_error(data, "invalid", "status")
    status, data, _ = await api.call("GET", "/api/v1/alerts?host_id=x")
    assert status == 400 and is_error(data, "invalid", "host_id")
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": ["1"]}, "ids"),
        ({"ids": [True]}, "ids"),
        ({"ids": [1], "x": 1}, "x"),
    ]
    for body, field in bad:
        status, data, _ = await api.call("POST", "/api/v1/alerts/ack", body)
        assert status == 400 and is_error(data, "invalid", field), body
    status, data, _ = await api.call("POST", "/api/v1/alerts/ack", "[1]")
    assert status == 400 and is_error(data, "invalid")


async def test_every_route_needs_the_api_token(api: Api) -> None:
    for method, path in (
        ("GET", "/api/v1/alerts"),
        ("POST", "/api/v1/alerts/1/ack"),
        ("GET", "/api/v1/notification-channels"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/audit?format=csv"),
        ("PUT", "/api/v1/hosts/1/presence"),
        ("GET", "/api/v1/settings/metrics"),
        ("POST", "/api/v1/settings/metrics/token"),
    ):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            status, data, _ = await api.call(method, path, {}, headers=headers)
            assert status == 401 and is_error(data, "unauthorized"), (method, path)


# -- notification channels ---------------------------------------------------------


async def test_channels_crud_test_and_deliveries_never_show_the_secret(
    api: Api, sink: HttpSink
) -> None:
    url, hits = sink.url(), sink.posts
    body = {
        "kind": "webhook",
        "name": "ops hook",
        "enabled": True,
        "min_severity": "warning",
        "config": {"url": url, "secret_header": SECRET_HEADER},
    }
    status, created, text = await api.call("POST", "/api/v1/notification-channels", body)
    assert status == 201, created
    cid = created["id"]
    assert created["secret_fields"] == ["secret_header"]
    responses = [text]

    status, result, text = await api.call("POST", f"/api/v1/notification-channels/{cid}/test")
    responses.append(text)
    assert status == 200 and result["ok"] is True, result
    assert isinstance(result["latency_ms"], int) and "204" in result["detail"]
    assert len(hits) == 1 and hits[0].headers["X-Hook-Token"] == "s3cr3t-hook-value"

    # A partial update keeps the stored secret.
    status, updated, text = await api.call(
        "PUT", f"/api/v1/notification-channels/{cid}", {"min_severity": "critical"}
    )
    responses.append(text)
    assert status == 200 and updated["min_severity"] == "critical"
    assert updated["secret_fields"] == ["secret_header"]

    for path in (
        "/api/v1/notification-channels",
        f"/api/v1/notification-channels/{cid}",
        f"/api/v1/notification-channels/{cid}/deliveries",
    ):
        status, _, text = await api.call("GET", path)
        assert status == 200
        responses.append(text)
    _, deliveries, _ = await api.call("GET", f"/api/v1/notification-channels/{cid}/deliveries")
    assert [(d["event"], d["ok"]) for d in deliveries] == [("test", True)]

    status, unsaved, text = await api.call(
        "POST",
        "/api/v1/notification-channels/test",
        {"kind": "webhook", "config": {"url": url}},
    )
    responses.append(text)
    assert status == 200 and unsaved["ok"] is True and len(hits) == 2

    _, audit_page, text = await api.call("GET", "/api/v1/audit?target=notification_channel")
    responses.append(text)
    assert {e["action"] for e in audit_page["entries"]} >= {
        "notification_channel.created",
        "notification_channel.updated",
        "notification_channel.tested",
    }
    _, _, text = await api.call("GET", "/api/v1/audit?format=csv")
    responses.append(text)
    assert not [r for r in responses if "s3cr3t-hook-value" in r]

    status, _, _ = await api.call("DELETE", f"/api/v1/notification-channels/{cid}")
    assert status == 204
    status, data, _ = await api.call("GET", f"/api/v1/notification-channels/{cid}")
    assert status == 404 and is_error(data, "not_found")


async def test_channel_errors_name_the_field(api: Api) -> None:
    status, data, _ = await api.call(
        "POST",
        "/api/v1/notification-channels",
        {"kind": "webhook", "name": "x", "config": {"url": "ftp://nope"}},
    )
    assert status == 400 and data["error"]["field"].endswith("url"), data
    status, data, _ = await api.call(
        "POST", "/api/v1/notification-channels", {"kind": "pager", "name": "x", "config": {}}
    )
    assert status == 400 and data["error"]["field"] == "kind"
    status, data, _ = await api.call("POST", "/api/v1/notification-channels/77/test")
    assert status == 404 and is_error(data, "not_found")
    status, data, _ = await api.call("GET", "/api/v1/notification-channels/77/deliveries")
    assert status == 404 and is_error(data, "not_found")
    status, data, _ = await api.call("DELETE", "/api/v1/notification-channels/77")
    assert status == 404


# -- audit -----------------------------------------------------------------------------


async def seed_audit(svc: Services) -> None:
    def run() -> None:
        t0 = 1_700_000_000.0
        audit.record("operator", "host.deleted", target_kind="host", target_id=3, ts=t0)
        audit.record("api", "alert.acknowledged", target_kind="alert", target_id=1, ts=t0 + 10)
        audit.record(
            "system",
            "alert.raised",
            target_kind="alert",
            target_id=2,
            payload={"message": "=cmd|' /C calc'!A0"},
            ts=t0 + 20,
        )
        audit.record("agent", "host.online", target_kind="host", target_id=3, ts=t0 + 30)

    await svc.store.transaction(run)


async def test_audit_filters_paging_and_errors(api: Api) -> None:
    await seed_audit(api.svc)
    base = "/api/v1/audit"
    status, page, _ = await api.call("GET", base + "?action=alert.&actor=system")
    assert status == 200 and [e["action"] for e in page["entries"]] == ["alert.raised"]
    assert page["more"] is False and page["next_before_id"] is None
    assert page["entries"][0]["payload"] == {"message": "=cmd|' /C calc'!A0"}
    _, page, _ = await api.call("GET", base + "?target=host:3")
    assert [e["action"] for e in page["entries"]] == ["host.online", "host.deleted"]
    _, page, _ = await api.call("GET", base + "?q=CALC")
    assert [e["action"] for e in page["entries"]] == ["alert.raised"]
    # ISO-8601 and Unix seconds both work; until is exclusive.
    _, page, _ = await api.call(
        "GET", base + "?since=2023-11-14T22:13:30Z&until=1700000030&target=alert"
    )
    assert [e["action"] for e in page["entries"]] == ["alert.raised", "alert.acknowledged"]

    # Paging: newest first, then older by before_id.
    seeded = "?limit=2&since=1700000000&until=1700000031"
    _, first, _ = await api.call("GET", base + seeded)
    assert first["more"] is True and len(first["entries"]) == 2
    _, second, _ = await api.call("GET", base + seeded + f"&before_id={first['next_before_id']}")
    ids = [e["id"] for e in first["entries"] + second["entries"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4 and second["more"] is False

    for query, field in (
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("since=yesterday", "since"),
        ("actor=robot", "actor"),
        ("target=:3", "target"),
        ("before_id=-1", "before_id"),
        ("format=xml", "format"),
        ("since=20&until=10", "until"),
    ):
        status, data, _ = await api.call("GET", base + "?" + query)
        assert status == 400 and is_error(data, "invalid", field), query

    status, actions, _ = await api.call("GET", base + "/actions")
    assert status == 200 and "alert.raised" in actions and actions == sorted(actions)


async def test_audit_csv_export(api: Api) -> None:
    await seed_audit(api.svc)
    async with api.client.get(
        "/api/v1/audit?format=csv&target=alert&limit=1",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="audit-')
        text = await resp.text()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0][:5] == ["id", "time_utc", "actor_kind", "actor_id", "action"]
    # Every match, not one page: `limit` does not cut an export.
    assert [r[4] for r in rows[1:]] == ["alert.raised", "alert.acknowledged"]
    assert rows[1][1] == "2023-11-14T22:13:40.000Z"
    assert rows[1][7] == '{"message":"=cmd|\' /C calc\'!A0"}'  # JSON: starts with "{"
    status, data, _ = await api.call("GET", "/api/v1/audit?format=csv&actor=robot")
    assert status == 400 and is_error(data, "invalid", "actor")


# -- presence ----------------------------------------------------------------------


async def test_presence_mode(api: Api) -> None:
    web1 = await add_host(api.svc, "web1")
    status, host, _ = await api.call("PUT", f"/api/v1/hosts/{web1}/presence", {"mode": "laptop"})
    assert status == 200 and host["presence_mode"] == "laptop" and host["id"] == web1
    _, host, _ = await api.call("GET", f"/api/v1/hosts/{web1}")
    assert host["presence_mode"] == "laptop"
    _, page, _ = await api.call(
        "GET", f"/api/v1/audit?action=host.presence_changed&target=host:{web1}"
    )
    assert page["entries"][0]["payload"] == {"before": "always_on", "after": "laptop"}

    for body, field in (({"mode": "sometimes"}, "mode"), ({}, "mode"), ({"mode": 1}, "mode"),
                        ({"mode": "laptop", "extra": 1}, "extra")):  # fmt: skip
        status, data, _ = await api.call("PUT", f"/api/v1/hosts/{web1}/presence", body)
        assert status == 400 and is_error(data, "invalid", field), body
    status, data, _ = await api.call("PUT", "/api/v1/hosts/999/presence", {"mode": "laptop"})
    assert status == 404 and is_error(data, "not_found")


# -- metrics -----------------------------------------------------------------------


async def test_metrics_settings_routes(api: Api) -> None:
    status, view, _ = await api.call("GET", "/api/v1/settings/metrics")
    assert status == 200 and view == {"enabled": False, "token_set": False}
    status, view, _ = await api.call("PUT", "/api/v1/settings/metrics", {"enabled": True})
    assert status == 200 and view == {"enabled": True, "token_set": False}
    status, created, _ = await api.call("POST", "/api/v1/settings/metrics/token")
    assert status == 201 and created["token"].startswith("rmmetrics_")
    status, view, text = await api.call("GET", "/api/v1/settings/metrics")
    assert view == {"enabled": True, "token_set": True} and created["token"] not in text
    # A GET answer can be sent back as is.
    status, view, _ = await api.call("PUT", "/api/v1/settings/metrics", view)
    assert status == 200
    for body, field in (({}, "enabled"), ({"enabled": "yes"}, "enabled"),
                        ({"enabled": True, "token": "x"}, "token")):  # fmt: skip
        status, data, _ = await api.call("PUT", "/api/v1/settings/metrics", body)
        assert status == 400 and is_error(data, "invalid", field), body
    _, page, _ = await api.call("GET", "/api/v1/audit?action=settings.")
    assert {e["action"] for e in page["entries"]} == {
        "settings.metrics_updated",
        "settings.metrics_token_created",
    }


async def scrape(api: Api, token: str | None) -> tuple[int, str, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with api.client.get("/metrics", headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_metrics_endpoint_gates_and_reflects_the_fleet(api: Api) -> None:
    web1 = await add_host(api.svc, "web1", online=True)

    def job() -> None:
        now = time.time()
        Job.create(
            id="j1",
            host=web1,
            kind="backup",
            status="failed",
            actor="schedule",
            created_at=now - 100,
            started_at=now - 90,
            finished_at=now - 10,
        )

    await api.svc.store.transaction(job)
    await api.alerts.fire("backup_failed", web1, "backup failed", key_suffix=1)

    # Off: 404, whatever the token; the API token does not open it either.
    status, _, text = await scrape(api, None)
    assert status == 404 and json.loads(text)["error"]["code"] == "not_found"
    status, _, _ = await scrape(api, api.token)
    assert status == 404

    await api.settings.set_metrics(True, OPERATOR)
    status, _, text = await scrape(api, None)
    assert status == 401 and json.loads(text)["error"]["code"] == "unauthorized"
    token = await api.settings.new_metrics_token(OPERATOR)
    for wrong in (None, "", api.token, token + "x", token[:-1]):
        status, _, _ = await scrape(api, wrong)
        assert status == 401, wrong

    status, ctype, text = await scrape(api, token)
    assert status == 200
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("restic_manager_host_online", (("host", "web1"),))] == 1
    assert found[("restic_manager_host_open_alerts", (("host", "web1"),))] == 1
    assert found[("restic_manager_host_last_backup_success", (("host", "web1"),))] == 0
    assert found[("restic_manager_alerts", (("severity", "critical"), ("status", "open")))] == 1
    key = ("restic_manager_job_duration_seconds_bucket",
           (("kind", "backup"), ("le", "300.0"), ("status", "failed")))  # fmt: skip
    assert found[key] == 1

    # Turned off again: gone.
    await api.settings.set_metrics(False, OPERATOR)
    status, _, _ = await scrape(api, token)
    assert status == 404
