"""Announce-and-approve: ask to be added, without a token.

The agent creates (once) an Ed25519 key, prints its fingerprint, opens the
pending WebSocket over TLS pinned to the server certificate (as ``enrol``
does), announces this host and signs the server's nonce with the key. Then
it waits for the operator. Accepted: the server sends the same enrolment a
token would have bought (host id, bearer) and this writes the config and
secrets exactly as ``enrol`` does, so ``run --config`` works next. Rejected
or expired: the server's message is shown and the command fails. A dropped
connection is retried while the request is pending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hmac
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from agent import platform_info, protocol
from agent.enrol import (
    EXIT_FAILURE,
    EXIT_USAGE,
    EnrolError,
    EnrolPlan,
    EnrolResult,
    mismatch_message,
    pin_ssl,
    plan_enrolment,
    write_enrolment,
)
from agent.identity import Identity, IdentityError, identity_path_for, load_or_create
from agent.version import __version__

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
STEP_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 20.0
HEARTBEAT_S = 30.0
# How long past the server's expiry an agent that cannot reach it keeps trying.
EXPIRY_GRACE_S = 60.0
RULE = "=" * 72


class _Retry(Exception):
    """This connection failed in a way worth retrying while the request is pending."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class AnnouncePlan:
    plan: EnrolPlan
    identity: Identity
    created_key: bool


def prepare(
    *,
    server_url: str,
    cert_sha256: str,
    config_path: Path,
    state_dir: Path | None,
    restic_path: str | None,
    hostname: str | None,
) -> AnnouncePlan:
    """Validate the arguments and load (or create) the host key; usage errors exit 2."""
    plan = plan_enrolment(server_url, cert_sha256, config_path, state_dir, restic_path, hostname)
    config = plan.config_path
    if config.exists():
        raise EnrolError(
            f"{config} exists: this host is enrolled already. Start it with "
            f"'restic-manager-agent run --config {config}', or remove the file to announce "
            "it again",
            EXIT_USAGE,
        )
    try:
        identity, created = load_or_create(identity_path_for(plan.state_dir))
    except IdentityError as exc:
        raise EnrolError(str(exc), EXIT_FAILURE) from None
    return AnnouncePlan(plan=plan, identity=identity, created_key=created)


def banner(fingerprint: str, hostname: str, server: str, key_path: Path, created: bool) -> str:
    """What the operator compares with the app: the fingerprint alone on its line."""
    key_note = "new key created" if created else "existing key"
    return "\n".join(
        [
            RULE,
            f"  Asking {server} to add this host: {hostname}",
            "",
            "  Host key fingerprint (compare it with Fleet → Pending hosts in the app):",
            "",
            f"    {fingerprint}",
            "",
            f"  Key: {key_path} ({key_note})",
            "  Accept the host in restic-manager only if the fingerprint there is",
            "  exactly this one. This command waits, then writes the agent's config.",
            RULE,
        ]
    )


class Announcer:
    def __init__(
        self,
        prepared: AnnouncePlan,
        *,
        say: Callable[[str], None],
        restic_version: str | None = None,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        step_timeout: float = STEP_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self._plan = prepared.plan
        self._identity = prepared.identity
        self._say = say
        self._restic_version = restic_version
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._step_timeout = step_timeout
        self._rng = rng or random.Random()
        self.pending_id: int | None = None
        self.expires_at: float | None = None
        self.connections = 0

    @property
    def url(self) -> str:
        return self._plan.server + protocol.ANNOUNCE_PATH

    async def run(self) -> EnrolResult:
        """Announce and wait; the enrolment on acceptance, else EnrolError."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
        )
        attempt = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    return await self._once(session)
                except _Retry as retry:
                    if self.pending_id is None:
                        # Never listed: nothing to come back to, say why and stop.
                        raise EnrolError(str(retry)) from None
                    if self.expires_at is not None and time.time() > (
                        self.expires_at + EXPIRY_GRACE_S
                    ):
                        raise EnrolError(
                            f"{retry}; the request has expired meanwhile: run announce "
                            "again when restic-manager is reachable"
                        ) from None
                    ceiling = min(self._backoff_max, self._backoff_initial * 2**attempt)
                    delay = max(retry.retry_after_s, self._rng.uniform(ceiling / 2, ceiling))
                    attempt += 1
                    self._say(f"{retry}; reconnecting in {delay:.0f} s (still pending)…")
                    await asyncio.sleep(delay)

    async def _once(self, session: aiohttp.ClientSession) -> EnrolResult:
        ws = await self._connect(session)
        self.connections += 1
        try:
            return await self._converse(ws)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        server = self._plan.server
        try:
            return await session.ws_connect(
                self.url,
                ssl=pin_ssl(self._plan.pin),
                heartbeat=HEARTBEAT_S,
                max_msg_size=protocol.WS_MAX_MSG_SIZE,
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise EnrolError(mismatch_message(exc)) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise self._refused(exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise _Retry(
                f"cannot connect to {server}: {exc.os_error.strerror or exc}; check --server "
                "and that restic-manager is running and reachable from this host"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Retry(f"cannot connect to {server}: {exc or type(exc).__name__}") from None

    def _refused(self, exc: aiohttp.WSServerHandshakeError) -> Exception:
        retry_after = 0.0
        if exc.headers is not None:
            with contextlib.suppress(ValueError, TypeError):
                retry_after = float(exc.headers.get("Retry-After", "0"))
        if exc.status == 429:
            return _Retry(
                "the server refused: too many announcements from this address; wait a "
                "minute and run announce again",
                retry_after,
            )
        if exc.status == 503:
            return _Retry(
                "the server refused: too many hosts are announcing themselves right now; "
                "try again in a minute",
                retry_after,
            )
        if exc.status == 404:
            return EnrolError(
                f"{self._plan.server} does not take announcements (an older restic-manager?); "
                "enrol with a token from Add host instead"
            )
        return _Retry(f"the server refused the connection (HTTP {exc.status} {exc.message})")

    async def _converse(self, ws: aiohttp.ClientWebSocketResponse) -> EnrolResult:
        identity = self._identity
        await ws.send_str(
            protocol.encode(
                protocol.Announce(
                    protocol_version=protocol.PROTOCOL_VERSION,
                    public_key=_b64(identity.public_bytes),
                    hostname=self._plan.hostname,
                    os=platform_info.os_name(),
                    arch=platform_info.arch(),
                    agent_version=__version__,
                    restic_version=self._restic_version,
                    resume=self.pending_id is not None,
                )
            )
        )
        challenge = await self._receive(ws, self._step_timeout)
        if not isinstance(challenge, protocol.AnnounceChallenge):
            self._unexpected(challenge)
        # The server's reading of our key must be our key: anything else means
        # the frame was mangled, and a proof for it would prove nothing.
        if not hmac.compare_digest(challenge.fingerprint, identity.fingerprint):
            raise EnrolError(
                f"the server read this host's key as {challenge.fingerprint}, not "
                f"{identity.fingerprint}; is --server really restic-manager?"
            )
        try:
            nonce = protocol.b64decode_exact(
                challenge.nonce, protocol.ANNOUNCE_NONCE_BYTES, "nonce"
            )
        except protocol.ProtocolError as exc:
            raise EnrolError(f"the server's challenge is not understood: {exc}") from None
        signed = protocol.announce_signed_bytes(nonce, identity.public_bytes, self._plan.pin)
        await ws.send_str(
            protocol.encode(protocol.AnnounceProof(signature=_b64(identity.sign(signed))))
        )
        while True:
            # No deadline while pending: heartbeats notice a dead connection.
            message = await self._receive(ws, None)
            if isinstance(message, protocol.AnnouncePending):
                self._pending(message)
            elif isinstance(message, protocol.AnnounceAccepted):
                return await self._enrol(ws, message)
            else:
                self._unexpected(message)

    def _pending(self, message: protocol.AnnouncePending) -> None:
        first = self.pending_id is None
        self.pending_id = message.pending_id
        self.expires_at = message.expires_at
        if first:
            until = dt.datetime.fromtimestamp(message.expires_at).strftime("%H:%M")
            self._say(
                f"Listed in restic-manager as a pending host (request #{message.pending_id}, "
                f"expires at {until}). Waiting for the operator to accept it…"
            )
            if message.duplicate:
                self._say(f"Note: the app flags this host's name: {message.duplicate}.")
        else:
            self._say("Reconnected; still waiting for the operator…")

    async def _enrol(
        self, ws: aiohttp.ClientWebSocketResponse, grant: protocol.AnnounceAccepted
    ) -> EnrolResult:
        response = protocol.EnrolResponse(
            host_id=grant.host_id, bearer=grant.bearer, hostname=grant.hostname
        )
        try:
            result = write_enrolment(self._plan, response)
        except EnrolError as exc:
            cause = exc.__cause__ or exc
            with contextlib.suppress(Exception):
                await ws.send_str(
                    protocol.encode(protocol.AnnounceEnrolled(ok=False, message=f"{cause}"[:500]))
                )
            raise EnrolError(
                f"the host was accepted, but writing {self._plan.config_path} failed: {cause}; "
                "fix the path or its permissions and run announce again with the same "
                "--state-dir: the app sends the enrolment again to the same key",
                exc.exit_code,
            ) from None
        with contextlib.suppress(Exception):
            await ws.send_str(protocol.encode(protocol.AnnounceEnrolled(ok=True)))
            # Let the server close: it has then seen the confirmation.
            await ws.receive(timeout=5.0)
        return result

    async def _receive(
        self, ws: aiohttp.ClientWebSocketResponse, wait_s: float | None
    ) -> protocol.Message:
        try:
            msg = await ws.receive(timeout=wait_s)
        except TimeoutError:
            raise _Retry("the server did not answer in time") from None
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                envelope = protocol.decode_announce(
                    msg.data, allowed=protocol.ANNOUNCE_SERVER_MESSAGES
                )
            except protocol.ProtocolError as exc:
                raise EnrolError(
                    f"the server's answer is not understood ({exc}); is the desktop app a "
                    "compatible version?"
                ) from None
            return envelope.payload
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            raise _Retry(f"the server closed the connection ({_close_reason(ws, msg)})")
        raise _Retry("the connection to the server was lost")

    def _unexpected(self, message: Any) -> NoReturn:
        if isinstance(message, protocol.AnnounceRejected):
            if message.outcome == "rejected":
                raise EnrolError(f"rejected: {message.message}")
            if message.outcome == "expired":
                raise EnrolError(f"expired: {message.message}")
            raise EnrolError(f"refused: {message.message}")
        if isinstance(message, protocol.Error):
            if message.code in ("protocol_too_old", "protocol_too_new"):
                raise EnrolError(f"incompatible versions: {message.message}")
            raise EnrolError(f"the server refused this announce: {message.message}")
        raise EnrolError(f"unexpected {getattr(message, 'TYPE', message)!r} from the server")


def _close_reason(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
    extra = msg.extra if isinstance(msg.extra, str) and msg.extra else None
    return extra or f"code {ws.close_code}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
