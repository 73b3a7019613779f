"""Real receivers for notification channels: an HTTP server that records
webhook POSTs and an SMTP server (aiosmtpd) that records mails, both on
127.0.0.1 with a port the OS picks."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpSink:
    """Keeps every request it is sent; answers 500 to the first ``fail_first``
    (with a body echoing a secret, which must never reach the operator), then
    ``status`` (a 3xx one with a Location elsewhere)."""

    posts: list[Post] = field(default_factory=list)
    fail_first: int = 0
    status: int = 204
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append(Post(request.path, dict(request.headers), body, time.monotonic()))
        if len(self.posts) <= self.fail_first:
            return web.Response(status=500, text="X-Token: echoed-secret would leak")
        if 300 <= self.status < 400:
            return web.Response(status=self.status, headers={"Location": "http://elsewhere/"})
        return web.Response(status=self.status)


@asynccontextmanager
async def http_sink(*, fail_first: int = 0, status: int = 204) -> AsyncIterator[HttpSink]:
    sink = HttpSink(fail_first=fail_first, status=status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sink._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sink.port = int(runner.addresses[0][1])
    try:
        yield sink
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    at: float  # time.monotonic() when it arrived
    tls: bool  # over implicit TLS or after STARTTLS
    authenticated: bool | None

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.message()["Subject"])


class MailSink:
    """aiosmtpd handler keeping every accepted mail (it runs on the
    controller's own thread; list.append is atomic enough for tests)."""

    REPLY = "250 2.0.0 Ok: queued as T3ST"

    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(
            Mail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
                time.monotonic(),
                server.transport.get_extra_info("ssl_object") is not None,
                session.authenticated,
            )
        )
        return self.REPLY


class _Port0Controller(Controller):
    # aiosmtpd's Controller connects to its own port once started: learn the
    # port the OS picked before it does.
    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@contextmanager
def smtp_sink(**options: Any) -> Iterator[tuple[MailSink, int]]:
    """An SMTP server, plain unless ``options`` ask aiosmtpd's Controller for
    TLS or a login (tls_context=, ssl_context=, authenticator=, …): yields
    the sink and its port."""
    sink = MailSink()
    controller = _Port0Controller(sink, hostname="127.0.0.1", port=0, **options)
    controller.start()
    try:
        yield sink, int(controller.port)
    finally:
        controller.stop()
