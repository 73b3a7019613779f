"""One attempt to send one notification over one channel.

Every attempt ends in a :class:`SendResult` — never an exception — whose
detail is what the operator sees ("HTTP 204", "250 2.0.0 Ok", or the error)
with every secret of the channel scrubbed out.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp

from server_core.notify import message
from server_core.notify.channel_config import ChannelSpec, secret_header_parts
from server_core.views import AlertView

log = logging.getLogger(__name__)

MAX_DETAIL_LEN = 300
USER_AGENT = "restic-manager-notify"
SslContextFactory = Callable[[], ssl.SSLContext]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str
    latency_ms: int


class SendError(Exception):
    """A failure whose message is already fit for the operator."""


class Senders:
    """Sends over HTTP (webhook, ntfy) with a shared session and over SMTP in
    worker threads, each attempt bounded by ``timeout_s``."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout_s: float,
        smtp_executor: Callable[[], Executor],
        ssl_context: SslContextFactory = ssl.create_default_context,
    ) -> None:
        self._session = session
        self._timeout_s = timeout_s
        self._executor = smtp_executor
        self._ssl_context = ssl_context

    async def send(self, spec: ChannelSpec, event: str, alert: AlertView) -> SendResult:
        started = time.perf_counter()
        try:
            # The HTTP and SMTP timeouts bound each step; this bounds the whole.
            detail = await asyncio.wait_for(self._send(spec, event, alert), self._timeout_s + 1.0)
            ok = True
        except SendError as exc:
            detail, ok = str(exc), False
        except TimeoutError:
            detail, ok = f"timed out after {self._timeout_s:g} s", False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("notification on %r failed", spec.name, exc_info=True)
            detail, ok = _describe(exc, self._timeout_s), False
        latency_ms = int((time.perf_counter() - started) * 1000)
        return SendResult(ok, scrub(detail, spec.secrets), latency_ms)

    async def _send(self, spec: ChannelSpec, event: str, alert: AlertView) -> str:
        if spec.kind == "webhook":
            return await self._webhook(spec, event, alert)
        if spec.kind == "ntfy":
            return await self._ntfy(spec, event, alert)
        if spec.kind == "smtp":
            return await self._smtp(spec, event, alert)
        raise SendError(f"unknown channel kind {spec.kind!r}")

    async def _webhook(self, spec: ChannelSpec, event: str, alert: AlertView) -> str:
        payload = message.webhook_payload(event, alert, time.time())
        headers = {"Content-Type": "application/json"}
        if "secret_header" in spec.secrets:
            name, value = secret_header_parts(spec.secrets["secret_header"])
            headers[name] = value
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return await self._post(str(spec.config["url"]), body, headers)

    async def _ntfy(self, spec: ChannelSpec, event: str, alert: AlertView) -> str:
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            **message.ntfy_headers(event, alert),
        }
        if "token" in spec.secrets:
            headers["Authorization"] = f"Bearer {spec.secrets['token']}"
        body = message.text_body(event, alert).encode("utf-8")
        return await self._post(str(spec.config["topic_url"]), body, headers)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        headers = {"User-Agent": USER_AGENT, **headers}
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        # A redirect would carry the secret header to wherever it points.
        async with self._session().post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            # Only the status is kept: a body could echo the secret header back.
            status, reason = resp.status, resp.reason or ""
        if 200 <= status < 300:
            return f"HTTP {status}"
        hint = " (redirects are not followed; use the final URL)" if 300 <= status < 400 else ""
        raise SendError(f"HTTP {status} {reason}".rstrip() + hint)

    async def _smtp(self, spec: ChannelSpec, event: str, alert: AlertView) -> str:
        cfg = spec.config
        mail = _email(
            sender=str(cfg["from"]),
            to=[str(a) for a in cfg["to"]],
            subject=message.subject(event, alert),
            body=message.text_body(event, alert),
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor(),
            lambda: send_mail_blocking(
                host=str(cfg["host"]),
                port=int(cfg["port"]),
                security=str(cfg["security"]),
                username=cfg.get("username"),
                password=spec.secrets.get("password"),
                mail=mail,
                timeout_s=self._timeout_s,
                ssl_context=self._ssl_context,
            ),
        )


def _email(*, sender: str, to: list[str], subject: str, body: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Subject"] = subject
    mail["Date"] = email.utils.formatdate(usegmt=True)
    # make_msgid() without a domain asks DNS for our FQDN: slow and not needed.
    mail["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    mail.set_content(body, cte=None if body.isascii() else "quoted-printable")
    return mail


def send_mail_blocking(
    *,
    host: str,
    port: int,
    security: str,
    username: Any,
    password: str | None,
    mail: EmailMessage,
    timeout_s: float,
    ssl_context: SslContextFactory,
) -> str:
    """Deliver ``mail`` and return the server's reply to the message data
    (worker thread: smtplib blocks)."""
    sender = str(mail["From"])
    recipients = [a.strip() for a in str(mail["To"]).split(",")]
    data = mail.as_bytes(policy=email.policy.SMTP)
    try:
        if security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                host, port, timeout=timeout_s, context=ssl_context()
            )
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout_s)
    except TimeoutError:
        raise SendError(f"timed out connecting to {host}:{port}") from None
    except ssl.SSLCertVerificationError as exc:
        raise SendError(_tls_untrusted(host, exc)) from None
    except ConnectionRefusedError:
        raise SendError(
            f"connection refused by {host}:{port}: is the SMTP server running?"
        ) from None
    except OSError as exc:
        raise SendError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    with smtp:
        try:
            return _converse(
                smtp, host, security, username, password, sender, recipients, data, ssl_context
            )
        except smtplib.SMTPResponseException as exc:
            raise SendError(_smtp_reply(exc.smtp_code, exc.smtp_error)) from None


def _converse(
    smtp: smtplib.SMTP,
    host: str,
    security: str,
    username: Any,
    password: str | None,
    sender: str,
    recipients: list[str],
    data: bytes,
    ssl_context: SslContextFactory,
) -> str:
    smtp.ehlo_or_helo_if_needed()
    if security == "starttls":
        if not smtp.has_extn("starttls"):
            raise SendError(
                f"{host} does not offer STARTTLS: choose security 'tls' (usually port 465) "
                "or 'none'"
            )
        try:
            smtp.starttls(context=ssl_context())
        except ssl.SSLCertVerificationError as exc:
            raise SendError(_tls_untrusted(host, exc)) from None
        smtp.ehlo()
    if username is not None:
        if not smtp.has_extn("auth"):
            raise SendError(f"{host} does not accept a login (no AUTH offered)")
        try:
            smtp.login(str(username), password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                "login refused: " + _smtp_reply(exc.smtp_code, exc.smtp_error)
            ) from None
    code, reply = smtp.mail(sender)
    if code != 250:
        raise SendError(f"sender {sender} refused: {_smtp_reply(code, reply)}")
    refused: list[str] = []
    for rcpt in recipients:
        code, reply = smtp.rcpt(rcpt)
        if code not in (250, 251):
            refused.append(f"{rcpt} ({_smtp_reply(code, reply)})")
    if len(refused) == len(recipients):
        smtp.rset()
        raise SendError("all recipients refused: " + "; ".join(refused))
    code, reply = smtp.data(data)
    if code != 250:
        raise SendError(f"message refused: {_smtp_reply(code, reply)}")
    detail = _smtp_reply(code, reply)
    if refused:
        detail += " (refused: " + "; ".join(refused) + ")"
    return detail


def _smtp_reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}".strip()


def _tls_untrusted(host: str, exc: ssl.SSLCertVerificationError) -> str:
    return f"the TLS certificate of {host} is not trusted: {exc.verify_message or exc.reason}"


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {exc.host} is not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a read timeout mid-conversation as a disconnect too.
        return f"SMTP connection lost: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def scrub(detail: str, secrets: dict[str, str]) -> str:
    """Remove every secret (and a secret header's value alone) from ``detail``."""
    values: list[str] = []
    for name, secret in secrets.items():
        values.append(secret)
        if name == "secret_header":
            values.append(secret_header_parts(secret)[1])
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 3:
            detail = detail.replace(value, "***")
    detail = " ".join(detail.split())
    if len(detail) > MAX_DETAIL_LEN:
        detail = detail[: MAX_DETAIL_LEN - 1] + "…"
    return detail
