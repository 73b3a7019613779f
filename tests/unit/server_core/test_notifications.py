"""NotificationService against real servers: an aiohttp sink on 127.0.0.1
for webhook and ntfy, aiosmtpd for SMTP (plain, STARTTLS with login, TLS),
a closed port and a server that never answers for broken channels."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from server_core.crypto import SecretBox
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import AlertChanged, ChannelsChanged, Event, EventBus
from server_core.models import Alert, AuditEntry, Host, NotificationAttempt, NotificationChannel
from server_core.services.context import OPERATOR, ServiceContext
from server_core.services.notifications import NotificationService
from server_core.store import Store
from tests.helpers.notify_sinks import HttpSink, MailSink, http_sink, smtp_sink
from tests.helpers.tls import make_tls
from tests.unit.server_core.conftest import RecordingAgents

FAST = (0.01, 0.01, 0.01)


# -- real servers ------------------------------------------------------------


class Blackhole:
    """Accepts TCP connections and never answers (a hung server)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Blackhole:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await asyncio.Event().wait()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # Server.close() leaves accepted connections open on Python 3.11.
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def until_async(
    pred: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- fixtures ------------------------------------------------------------------


@dataclass
class Env:
    store: Store
    ctx: ServiceContext
    events: list[Event]
    make: Callable[..., NotificationService]
    sink: Callable[..., Awaitable[HttpSink]]

    async def attempts(self, channel_id: int) -> list[NotificationAttempt]:
        return await self.store.call(
            lambda: list(
                NotificationAttempt.select()
                .where(NotificationAttempt.channel == channel_id)
                .order_by(NotificationAttempt.id)
            )
        )

    async def alert(
        self,
        transition: str = "raised",
        *,
        severity: str = "critical",
        kind: str = "backup_failed",
        host: str = "web1",
        alert_id: int | None = None,
    ) -> int:
        """Write (or update) an Alert row as the alert engine would, then
        publish its AlertChanged."""
        status = {"acknowledged": "acknowledged", "resolved": "resolved"}.get(transition, "open")

        def run() -> int:
            now = time.time()
            if alert_id is not None:
                Alert.update(status=status, last_seen_at=now).where(Alert.id == alert_id).execute()
                return alert_id
            row, _ = Host.get_or_create(name=host, defaults={"created_at": now})
            return int(
                Alert.create(
                    host=row.id,
                    kind=kind,
                    severity=severity,
                    dedup_key=f"{kind}:{row.id}:{now}",
                    status=status,
                    message=f"{kind} on {host}: repository password is wrong",
                    first_seen_at=now,
                    last_seen_at=now,
                ).id
            )

        aid = await self.store.transaction(run)
        host_id = await self.store.call(lambda: Alert.get_by_id(aid).host_id)
        self.ctx.bus.publish(AlertChanged(aid, host_id, transition, severity))
        return aid


@pytest.fixture
async def env(plan_store: Store) -> AsyncIterator[Env]:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    ctx = ServiceContext(
        store=plan_store, box=SecretBox(os.urandom(32)), bus=bus, agents=RecordingAgents()
    )
    services: list[NotificationService] = []

    def make(**kw: Any) -> NotificationService:
        kw.setdefault("retry_delays_s", FAST)
        kw.setdefault("timeout_s", 5.0)
        service = NotificationService(ctx, **kw)
        service.start()
        services.append(service)
        return service

    async with contextlib.AsyncExitStack() as sinks:

        async def sink(**kw: Any) -> HttpSink:
            return await sinks.enter_async_context(http_sink(**kw))

        yield Env(plan_store, ctx, events, make, sink)
        for service in services:
            await service.stop()


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[MailSink, int]]]:
    with contextlib.ExitStack() as servers:
        yield lambda **options: servers.enter_context(smtp_sink(**options))


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, Callable[[], ssl.SSLContext]]:
    server_ctx, _ = make_tls(tmp_path / "tls")

    def client_ctx() -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem"))

    return server_ctx, client_ctx


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    config = {"url": url, **extra.pop("config", {})}
    return {"kind": "webhook", "name": extra.pop("name", "hook"), "config": config, **extra}


def smtp(port: int, **config: Any) -> dict[str, Any]:
    return {
        "kind": "smtp",
        "name": config.pop("name", "mail"),
        "min_severity": "info",
        "config": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from": "restic-manager@example.com",
            "to": ["ops@example.com", "oncall@example.com"],
            **config,
        },
    }


# -- delivery --------------------------------------------------------------------


async def test_webhook_gets_json_and_secret_header(env: Env) -> None:
    sink = await env.sink()
    service = env.make()
    channel = await service.create_channel(
        webhook(sink.url(), config={"secret_header": "X-Token: hdr-s3cret-77"}), OPERATOR
    )
    alert_id = await env.alert()
    await until(lambda: len(sink.posts) == 1, what="the webhook")
    body = sink.posts[0].json()
    assert body["event"] == "raised"
    assert body["alert"]["id"] == alert_id
    assert body["alert"]["host_name"] == "web1"
    assert body["alert"]["kind"] == "backup_failed"
    assert body["alert"]["severity"] == "critical"
    assert body["alert"]["status"] == "open"
    assert abs(body["sent_at"] - time.time()) < 60
    assert sink.posts[0].headers["X-Token"] == "hdr-s3cret-77"
    assert sink.posts[0].headers["Content-Type"] == "application/json"

    await until_async(lambda: _has_attempts(env, channel.id, 1), what="the stored attempt")
    (delivery,) = await service.list_deliveries(channel.id)
    assert (delivery.ok, delivery.detail, delivery.event, delivery.attempt) == (
        True,
        "HTTP 204",
        "raised",
        1,
    )
    assert delivery.alert_id == alert_id and delivery.channel_name == "hook"
    assert delivery.latency_ms is not None and delivery.latency_ms >= 0
    assert ChannelsChanged(channel.id) in env.events


async def _has_attempts(env: Env, channel_id: int, n: int) -> bool:
    return len(await env.attempts(channel_id)) >= n


async def test_ntfy_gets_title_priority_tags_and_bearer_token(env: Env) -> None:
    sink = await env.sink(status=200)
    service = env.make()
    await service.create_channel(
        {
            "kind": "ntfy",
            "name": "phone",
            "min_severity": "info",
            "config": {"topic_url": sink.url("/backups"), "token": "tk_ntfy_secret_1"},
        },
        OPERATOR,
    )
    await env.alert(severity="warning", kind="stale_backup", host="laptop")
    await until(lambda: len(sink.posts) == 1, what="the ntfy post")
    hit = sink.posts[0]
    assert hit.path == "/backups"
    assert hit.headers["Title"] == "WARNING laptop: stale_backup"
    assert hit.headers["Priority"] == "4"
    assert hit.headers["Tags"] == "warning,stale_backup"
    assert hit.headers["Authorization"] == "Bearer tk_ntfy_secret_1"
    assert "stale_backup on laptop: repository password is wrong" in hit.body.decode()


async def test_smtp_mail_reaches_the_server(env: Env, smtp_server: Any) -> None:
    mails, port = smtp_server()
    service = env.make()
    channel = await service.create_channel(smtp(port), OPERATOR)
    await env.alert()
    await until(lambda: len(mails.mails) == 1, what="the mail")
    mail = mails.mails[0]
    assert mail.mail_from == "restic-manager@example.com"
    assert mail.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    msg = mail.message()
    assert msg["Subject"] == "[restic-manager] CRITICAL web1: backup_failed"
    assert "backup_failed on web1: repository password is wrong" in msg.get_content()
    await until_async(lambda: _has_attempts(env, channel.id, 1), what="the stored attempt")
    (delivery,) = await service.list_deliveries(channel.id)
    assert delivery.ok and delivery.detail == "250 2.0.0 Ok: queued as T3ST"


async def test_smtp_starttls_with_login(env: Env, smtp_server: Any, tls_files: Any) -> None:
    server_ctx, client_ctx = tls_files
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: aiosmtpd answers 535 itself on a failure.
        return AuthResult(success=data.password == b"mail-pw-5150", handled=False)

    mails, port = smtp_server(
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    service = env.make(smtp_ssl_context=client_ctx)
    body = smtp(port, security="starttls", username="ops", password="mail-pw-5150")
    channel = await service.create_channel(body, OPERATOR)
    result = await service.test_channel(channel.id, OPERATOR)
    assert result.ok, result.detail
    assert result.detail.startswith("250 ")
    assert logins == [(b"ops", b"mail-pw-5150")]
    assert mails.mails[0].tls and mails.mails[0].authenticated
    assert mails.mails[0].message()["Subject"] == "[restic-manager] TEST restic-manager: test"

    # A wrong password is refused with the server's reply, not the password.
    await service.update_channel(channel.id, {"config": {"password": "wrong-pw-0000"}}, OPERATOR)
    refused = await service.test_channel(channel.id, OPERATOR)
    assert not refused.ok
    assert refused.detail.startswith("login refused: 535"), refused.detail
    assert "wrong-pw-0000" not in refused.detail


async def test_smtp_implicit_tls_and_untrusted_certificate(
    env: Env, smtp_server: Any, tls_files: Any
) -> None:
    server_ctx, client_ctx = tls_files
    mails, port = smtp_server(ssl_context=server_ctx)
    trusting = env.make(smtp_ssl_context=client_ctx)
    ok = await trusting.test_config(smtp(port, security="tls"))
    assert ok.ok, ok.detail
    assert mails.mails[0].tls

    # The system trust store does not know the test certificate.
    default = env.make()
    untrusted = await default.test_config(smtp(port, security="tls"))
    assert not untrusted.ok
    assert "not trusted" in untrusted.detail, untrusted.detail
    assert len(mails.mails) == 1


async def test_raise_acknowledge_resolve_are_sent_in_order_and_bumped_is_not(env: Env) -> None:
    sink = await env.sink()
    service = env.make()
    await service.create_channel(webhook(sink.url()), OPERATOR)
    alert_id = await env.alert()
    await env.alert("bumped", alert_id=alert_id)
    await env.alert("acknowledged", alert_id=alert_id)
    await env.alert("resolved", alert_id=alert_id)
    await until(lambda: len(sink.posts) == 3, what="three notifications")
    assert [h.json()["event"] for h in sink.posts] == ["raised", "acknowledged", "resolved"]
    assert sink.posts[2].json()["alert"]["status"] == "resolved"


async def test_severity_filter_and_disabled_channels(env: Env) -> None:
    critical_only, everything, disabled = await env.sink(), await env.sink(), await env.sink()
    service = env.make()
    await service.create_channel(
        webhook(critical_only.url(), name="crit", min_severity="critical"), OPERATOR
    )
    await service.create_channel(
        webhook(everything.url(), name="all", min_severity="info"), OPERATOR
    )
    off = await service.create_channel(
        webhook(disabled.url(), name="off", min_severity="info", enabled=False), OPERATOR
    )
    await env.alert(severity="warning", kind="prune_failed")
    await env.alert(severity="info", kind="update_failed")
    await until(lambda: len(everything.posts) == 2, what="the unfiltered channel")
    await service.update_channel(off.id, {"enabled": True}, OPERATOR)
    await env.alert(severity="critical", kind="check_failed")
    await until(lambda: len(everything.posts) == 3, what="the critical alert")
    await until(lambda: len(critical_only.posts) == 1 and len(disabled.posts) == 1)
    # Each channel delivers in order: anything filtered wrongly would have come first.
    assert critical_only.posts[0].json()["alert"]["kind"] == "check_failed"
    assert disabled.posts[0].json()["alert"]["kind"] == "check_failed"


async def test_dead_and_hanging_channels_do_not_delay_the_others(env: Env) -> None:
    good = await env.sink()
    async with Blackhole() as blackhole:
        service = env.make(retry_delays_s=(0.05, 0.05, 60), timeout_s=5.0)
        dead = await service.create_channel(
            webhook(f"http://127.0.0.1:{closed_port()}/x", name="dead"), OPERATOR
        )
        hanging = await service.create_channel(
            webhook(f"http://127.0.0.1:{blackhole.port}/x", name="hanging"), OPERATOR
        )
        await service.create_channel(webhook(good.url(), name="good"), OPERATOR)
        published = time.monotonic()
        await env.alert()
        await env.alert(kind="check_failed")
        await until(lambda: len(good.posts) == 2, what="the good channel")
        assert good.posts[1].at - published < 1.0
        await until_async(lambda: _has_attempts(env, dead.id, 3), what="the dead channel's retries")
        dead_attempts = await env.attempts(dead.id)
        assert not any(a.ok for a in dead_attempts)
        assert "cannot connect to 127.0.0.1" in dead_attempts[0].detail
        assert [d.attempt for d in await service.list_deliveries(dead.id)] == [3, 2, 1]
        # The hanging channel is still waiting on its first answer.
        assert await env.attempts(hanging.id) == []

        started = time.monotonic()
        await service.stop()
        assert time.monotonic() - started < 1.0
        # Stopped: nothing is sent or retried any more.
        hits = len(good.posts)
        await env.alert(kind="prune_failed")
        await asyncio.sleep(0.2)  # a quiet period, not a wait for something to happen
        assert len(good.posts) == hits
        assert len(await env.attempts(dead.id)) == 3


async def test_hanging_channel_times_out_per_attempt(env: Env) -> None:
    async with Blackhole() as blackhole:
        service = env.make(timeout_s=0.3)
        result = await service.test_config(webhook(f"http://127.0.0.1:{blackhole.port}/"))
        assert not result.ok
        assert result.detail == "timed out after 0.3 s"
        assert 250 <= result.latency_ms < 2000


async def test_retries_until_the_sink_recovers(env: Env) -> None:
    sink = await env.sink(fail_first=2)
    service = env.make(retry_delays_s=(0.01, 0.01, 0.01))
    channel = await service.create_channel(
        webhook(sink.url(), config={"secret_header": "X-Token: echoed-secret"}), OPERATOR
    )
    await env.alert()
    await until_async(lambda: _has_attempts(env, channel.id, 3), what="three attempts")
    deliveries = list(reversed(await service.list_deliveries(channel.id)))
    assert [(d.attempt, d.ok) for d in deliveries] == [(1, False), (2, False), (3, True)]
    assert deliveries[0].detail == "HTTP 500 Internal Server Error"
    assert deliveries[2].detail == "HTTP 204"
    assert len(sink.posts) == 3


async def test_gives_up_after_the_last_retry(env: Env) -> None:
    sink = await env.sink(fail_first=100)
    service = env.make(retry_delays_s=(0.01, 0.01))
    channel = await service.create_channel(webhook(sink.url()), OPERATOR)
    await env.alert()
    await env.alert(kind="check_failed")
    # The second alert starts only once the first one is given up.
    await until(lambda: len(sink.posts) == 6, what="two alerts × three attempts")
    await until_async(lambda: _has_attempts(env, channel.id, 6))
    kinds = [h.json()["alert"]["kind"] for h in sink.posts]
    assert kinds == ["backup_failed"] * 3 + ["check_failed"] * 3


async def test_redirects_are_not_followed(env: Env) -> None:
    sink = await env.sink(status=302)
    service = env.make()
    result = await service.test_config(
        webhook(sink.url(), config={"secret_header": "X-Token: redirected-secret"})
    )
    assert not result.ok
    assert result.detail.startswith("HTTP 302 Found (redirects are not followed")
    assert len(sink.posts) == 1


# -- test sends --------------------------------------------------------------------


async def test_test_channel_goes_out_at_once_past_a_retrying_queue(env: Env) -> None:
    sink = await env.sink(fail_first=1)
    service = env.make(retry_delays_s=(60,))
    channel = await service.create_channel(webhook(sink.url()), OPERATOR)
    await env.alert()
    await until_async(lambda: _has_attempts(env, channel.id, 1), what="the failed attempt")
    # The alert now waits 60 s for its retry; the test send must not.
    started = time.monotonic()
    result = await service.test_channel(channel.id, OPERATOR)
    assert time.monotonic() - started < 1.0
    assert (result.ok, result.detail) == (True, "HTTP 204")
    assert 0 <= result.latency_ms < 1000
    assert sink.posts[-1].json()["event"] == "test"
    assert sink.posts[-1].json()["alert"]["kind"] == "test"
    newest = (await service.list_deliveries(channel.id))[0]
    assert (newest.event, newest.ok, newest.alert_id) == ("test", True, None)
    tested = await env.store.call(
        lambda: AuditEntry.get(AuditEntry.action == "notification_channel.tested")
    )
    assert json.loads(tested.payload)["detail"] == "HTTP 204"
    assert tested.target_id == str(channel.id)


async def test_test_config_of_an_unsaved_or_edited_channel(env: Env) -> None:
    sink = await env.sink()
    service = env.make()
    dead = await service.test_config(
        {"kind": "webhook", "config": {"url": f"http://127.0.0.1:{closed_port()}/"}}
    )
    assert not dead.ok and dead.detail.startswith("cannot connect to 127.0.0.1:")
    assert await env.store.call(lambda: NotificationAttempt.select().count()) == 0

    channel = await service.create_channel(
        webhook(sink.url(), config={"secret_header": "X-Token: kept-secret"}), OPERATOR
    )
    # Editing: the dialog sends the changed URL and no secret; the stored one is used.
    edited = await service.test_config(
        {"config": {"url": sink.url("/edited")}}, channel_id=channel.id
    )
    assert edited.ok
    assert (sink.posts[-1].path, sink.posts[-1].headers["X-Token"]) == ("/edited", "kept-secret")
    assert (await service.get_channel(channel.id)).config["url"] == sink.url()
    with pytest.raises(InvalidInput) as err:
        await service.test_config({"kind": "webhook", "config": {"url": "gopher://x"}})
    assert err.value.field == "config.url"


# -- channels and secrets ----------------------------------------------------------


async def test_secrets_are_write_only_and_sealed_at_rest(env: Env) -> None:
    service = env.make()
    secrets = {
        "hdr": "HDR-PLAINTEXT-4b1d",
        "tok": "TOK-PLAINTEXT-77aa",
        "pw": "PW-PLAINTEXT-9c3e",
    }
    views = [
        await service.create_channel(
            webhook("http://127.0.0.1:9/", config={"secret_header": f"X-Key: {secrets['hdr']}"}),
            OPERATOR,
        ),
        await service.create_channel(
            {
                "kind": "ntfy",
                "name": "n",
                "config": {"topic_url": "https://ntfy.example/t", "token": secrets["tok"]},
            },
            OPERATOR,
        ),
        await service.create_channel(
            smtp(587, security="starttls", username="u", password=secrets["pw"]), OPERATOR
        ),
    ]
    assert [v.secret_fields for v in views] == [["secret_header"], ["token"], ["password"]]
    listed = await service.list_channels()
    got = [await service.get_channel(v.id) for v in views]
    updated = await service.update_channel(views[2].id, {"name": "mail2"}, OPERATOR)
    assert updated.secret_fields == ["password"]
    await service.delete_channel(views[0].id, OPERATOR)
    shown = json.dumps([dataclasses.asdict(v) for v in [*views, *listed, *got, updated]])
    audit = await env.store.call(lambda: [a.payload for a in AuditEntry.select()])
    assert len(audit) == 5
    blobs = await env.store.call(
        lambda: [bytes(c.secret_enc) for c in NotificationChannel.select()]
    )
    assert len(blobs) == 2 and all(blobs)
    db = b"".join(
        p.read_bytes() for p in env.store.path.parent.iterdir() if p.name.startswith("db.sqlite3")
    )
    assert b"ntfy.example" in db  # the grep does see the database's text
    for secret in secrets.values():
        assert secret not in shown
        assert not any(secret in a for a in audit)
        assert secret.encode() not in db
        assert not any(secret.encode() in b for b in blobs)


async def test_update_keeps_an_omitted_secret_and_null_clears_it(env: Env) -> None:
    sink = await env.sink()
    service = env.make()
    channel = await service.create_channel(
        webhook(sink.url(), config={"secret_header": "X-Token: keep-me-1"}), OPERATOR
    )
    await service.update_channel(channel.id, {"name": "renamed", "min_severity": "info"}, OPERATOR)
    await service.test_channel(channel.id, OPERATOR)
    assert sink.posts[-1].headers["X-Token"] == "keep-me-1"

    cleared = await service.update_channel(
        channel.id, {"config": {"secret_header": None}}, OPERATOR
    )
    assert cleared.secret_fields == [] and cleared.name == "renamed"
    await service.test_channel(channel.id, OPERATOR)
    assert "X-Token" not in sink.posts[-1].headers
    payloads = await env.store.call(
        lambda: [
            json.loads(a.payload)
            for a in AuditEntry.select().where(AuditEntry.action == "notification_channel.updated")
        ]
    )
    assert payloads[0]["changes"] == {"name": "renamed", "min_severity": "info"}
    assert payloads[1]["changes"] == {"secrets_changed": ["secret_header"]}


async def test_names_are_unique_and_missing_channels_are_not_found(env: Env) -> None:
    service = env.make()
    first = await service.create_channel(webhook("http://a.example/", name="Ops"), OPERATOR)
    with pytest.raises(Conflict) as err:
        await service.create_channel(webhook("http://b.example/", name="ops"), OPERATOR)
    assert err.value.field == "name"
    other = await service.create_channel(webhook("http://b.example/", name="other"), OPERATOR)
    with pytest.raises(Conflict):
        await service.update_channel(other.id, {"name": "OPS"}, OPERATOR)
    assert (await service.update_channel(first.id, {"name": "OPS"}, OPERATOR)).name == "OPS"
    with pytest.raises(InvalidInput) as bad:
        await service.update_channel(first.id, {"config": {"url": "ftp://x/"}}, OPERATOR)
    assert bad.value.field == "config.url"
    for call in (
        service.get_channel(999),
        service.update_channel(999, {}, OPERATOR),
        service.delete_channel(999, OPERATOR),
        service.test_channel(999, OPERATOR),
        service.list_deliveries(999),
    ):
        with pytest.raises(NotFound):
            await call
    assert [c.name for c in await service.list_channels()] == ["OPS", "other"]


async def test_deleting_a_channel_stops_its_retries(env: Env) -> None:
    sink = await env.sink(fail_first=100)
    service = env.make(retry_delays_s=(0.05,) * 50)
    channel = await service.create_channel(webhook(sink.url()), OPERATOR)
    await env.alert()
    await until(lambda: len(sink.posts) >= 2, what="retries")
    await service.delete_channel(channel.id, OPERATOR)
    hits = len(sink.posts)
    await asyncio.sleep(0.3)  # a quiet period: retries would have come every 50 ms
    assert len(sink.posts) == hits
    assert await env.store.call(lambda: NotificationAttempt.select().count()) == 0


async def test_alerts_of_removed_hosts_are_skipped(env: Env) -> None:
    sink = await env.sink()
    service = env.make()
    await service.create_channel(webhook(sink.url()), OPERATOR)
    env.ctx.bus.publish(AlertChanged(12345, None, "raised", "critical"))
    await env.alert(kind="check_failed")
    await until(lambda: len(sink.posts) == 1)
    assert sink.posts[0].json()["alert"]["kind"] == "check_failed"


async def test_owned_session_is_closed_and_borrowed_one_is_not(env: Env) -> None:
    import aiohttp

    sink = await env.sink()
    owned = env.make()
    assert (await owned.test_config(webhook(sink.url()))).ok
    session = owned._session_obj
    assert session is not None
    await owned.stop()
    assert session.closed

    async with aiohttp.ClientSession() as borrowed:
        service = env.make(http=borrowed)
        assert (await service.test_config(webhook(sink.url()))).ok
        await service.stop()
        assert not borrowed.closed
