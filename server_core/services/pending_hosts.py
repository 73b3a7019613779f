"""Announce-and-approve: hosts that announced themselves and wait for the operator.

An agent with no token opens the pending WebSocket (see
``AgentListener.announce``), sends its Ed25519 public key, hostname and
versions, and signs the server's nonce. Only then does it appear here. The
public key is the identity (its fingerprint is what the operator compares
with the agent's screen); the hostname is a claim, flagged when it collides
with another pending host or an existing one.

Accepting creates the host with the repository credentials the operator
entered and hands the agent its bearer over the still-open socket: the same
material a token enrolment yields. An acceptance the agent did not confirm
(the socket dropped) is delivered again, with a fresh bearer, when the same
key reconnects. Rejections and expiries reach a disconnected agent the same
way. Floods are held off by a per-IP token bucket, a cap on pending hosts and
on open sockets; requests expire after an hour. Everything is audited.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.protocol import (
    ANNOUNCE_NONCE_BYTES,
    ED25519_PUBLIC_KEY_BYTES,
    ED25519_SIGNATURE_BYTES,
    Announce,
    AnnounceAccepted,
    AnnounceEnrolled,
    AnnouncePending,
    AnnounceRejected,
    Error,
    Message,
    ProtocolError,
    announce_signed_bytes,
    b64decode_exact,
    key_fingerprint,
    version_error,
)
from server_core import audit, maintenance_plan, tokens
from server_core.audit import ActorKind
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import HostChanged, PendingHostsChanged
from server_core.models import Host, PendingHost
from server_core.rate_limit import AuditThrottle, Decision, TokenBucketLimiter
from server_core.services.context import Actor, ServiceContext
from server_core.services.enrolment import (
    HOSTNAME_RE,
    NewHost,
    create_default_group,
    finish_enrolment,
    parse_new_host,
    record_host_created,
    save_credentials,
)

log = logging.getLogger(__name__)

PENDING_TTL_S = 3600.0
MAX_PENDING = 100
RATE_PER_MINUTE = 10
# Sockets open on the announce path at once (handshakes plus waiting hosts).
MAX_OPEN_SOCKETS = 2 * MAX_PENDING
SWEEP_INTERVAL_S = 15.0
ACK_TIMEOUT_S = 10.0
# A refusal that repeats (cap reached, proofs failing) is audited at most this often.
AUDIT_THROTTLE_S = 60.0
MAX_REASON = 500

_WORD = re.compile(r"^[A-Za-z0-9._+~-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class PendingHostView:
    id: int
    fingerprint: str
    hostname: str
    source_ip: str
    os: str | None
    arch: str | None
    agent_version: str | None
    created_at: float
    expires_at: float
    connected: bool  # its announce command is on the line now (accept needs it)
    duplicate: str | None  # why the hostname is flagged, if it is


@dataclass(frozen=True)
class AcceptedHost:
    host_id: int
    hostname: str
    # False when the agent did not confirm in time: it gets its enrolment
    # when it reconnects (its announce command keeps trying).
    delivered: bool
    message: str


@dataclass(frozen=True)
class Refusal:
    """Why a connection to the announce path is refused before the upgrade."""

    status: int
    code: str
    message: str
    retry_after_s: float | None = None


class AnnounceChannel(Protocol):
    """The open pending socket, as the listener hands it over."""

    @property
    def remote(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    async def send(self, message: Message) -> None: ...

    async def close(self, reason: str) -> None: ...


@dataclass(eq=False)
class PendingSession:
    pending_id: int
    fingerprint: str
    hostname: str
    channel: AnnounceChannel
    restic_version: str | None
    busy: bool = False  # an accept or reject is under way
    enrolled: asyncio.Future[AnnounceEnrolled] | None = None


@dataclass(frozen=True)
class CheckedAnnounce:
    """An announce whose fields are valid, with its decoded key."""

    announce: Announce
    public_key: bytes
    fingerprint: str


@dataclass
class _Undelivered:
    """An outcome decided while the agent was not connected."""

    expires_at: float
    verdict: AnnounceRejected | None = None
    host_id: int | None = None  # accepted into this host; the agent did not confirm


@dataclass
class _Throttle:
    last: dict[str, float] = field(default_factory=dict)

    def due(self, key: str, now: float) -> bool:
        if now - self.last.get(key, -AUDIT_THROTTLE_S) < AUDIT_THROTTLE_S:
            return False
        self.last[key] = now
        if len(self.last) > 10_000:
            self.last.clear()
        return True


def verify_proof(public_key: bytes, nonce: bytes, cert_sha256: str, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is the key's signature of this handshake's bytes."""
    try:
        signature = b64decode_exact(signature_b64, ED25519_SIGNATURE_BYTES, "signature")
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, announce_signed_bytes(nonce, public_key, cert_sha256))
    except (ProtocolError, InvalidSignature, ValueError):
        return False
    return True


def check_announce(announce: Announce) -> CheckedAnnounce:
    """Validate what the agent claims; ProtocolError names what is wrong."""
    mismatch = version_error(announce.protocol_version)
    if mismatch is not None:
        raise ProtocolError(mismatch.message, code=mismatch.code)
    key = b64decode_exact(announce.public_key, ED25519_PUBLIC_KEY_BYTES, "public_key")
    if not HOSTNAME_RE.match(announce.hostname):
        raise ProtocolError(
            f"hostname {announce.hostname[:80]!r} is not a host name (letters, digits, '.', "
            "'-', '_'); run announce with --hostname NAME"
        )
    for name in ("os", "arch", "agent_version"):
        if not _WORD.match(getattr(announce, name)):
            raise ProtocolError(f"{name} must be a short word")
    if announce.restic_version is not None and not _WORD.match(announce.restic_version):
        raise ProtocolError("restic_version must be a short word")
    return CheckedAnnounce(announce, key, key_fingerprint(key))


def parse_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidInput("'reason' must be text", field="reason")
    text = reason.strip()
    if len(text) > MAX_REASON:
        raise InvalidInput(f"'reason' is longer than {MAX_REASON} characters", field="reason")
    if _CONTROL.search(text):
        raise InvalidInput("'reason' must be one line of plain text", field="reason")
    return text or None


def rejection_message(reason: str | None) -> str:
    text = "the operator rejected this host in restic-manager"
    return f"{text}: {reason}" if reason else text


class PendingHostService:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        cert_sha256: str,
        ttl_s: float = PENDING_TTL_S,
        max_pending: int = MAX_PENDING,
        max_open_sockets: int = MAX_OPEN_SOCKETS,
        rate_per_minute: float = RATE_PER_MINUTE,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ctx = ctx
        self._cert_sha256 = cert_sha256
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.max_open_sockets = max_open_sockets
        self._sweep_interval_s = sweep_interval_s
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._limiter = TokenBucketLimiter(
            capacity=max(1.0, rate_per_minute), per_s=rate_per_minute / 60.0
        )
        self._open = 0
        self._sessions: dict[int, PendingSession] = {}
        self._undelivered: dict[str, _Undelivered] = {}
        self._throttle = _Throttle()
        self._proof_audit = AuditThrottle(window_s=AUDIT_THROTTLE_S)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        """Stop expiring requests and hang up on waiting agents (they reconnect)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        # All at once: each close may wait out its peer's close handshake.
        await asyncio.gather(
            *(
                s.channel.close("the control plane is shutting down")
                for s in self._sessions.values()
            ),
            return_exceptions=True,
        )
        self._sessions.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def cert_sha256(self) -> str:
        return self._cert_sha256

    @property
    def open_sockets(self) -> int:
        return self._open

    def is_connected(self, pending_id: int) -> bool:
        session = self._sessions.get(pending_id)
        return session is not None and not session.channel.closed

    # -- before the upgrade ------------------------------------------------------

    def admit(self, remote: str | None) -> Refusal | None:
        """Take a token for ``remote`` and a socket slot, or say why not.

        Admitted callers must call ``release()`` when the socket is gone."""
        source = remote or "unknown"
        decision = self._limiter.take(source)
        if not decision.allowed:
            self._audit_rate_limited(source, decision)
            return Refusal(
                429,
                "rate_limited",
                f"too many announcements from {source}; wait a minute and run announce again",
                decision.retry_after_s,
            )
        if self._open >= self.max_open_sockets:
            self._audit_once(
                "cap:sockets",
                "pending_host.refused",
                {"reason": "too many open announce connections", "source_ip": source},
            )
            return Refusal(
                503,
                "busy",
                "too many hosts are announcing themselves right now; try again in a minute",
                60.0,
            )
        self._open += 1
        return None

    def release(self) -> None:
        self._open = max(0, self._open - 1)

    def _audit_rate_limited(self, source: str, decision: Decision) -> None:
        if decision.first_refusal:
            self._spawn(
                self._record(
                    "system",
                    "pending_host.rate_limited",
                    payload={
                        "source_ip": source,
                        "limit_per_minute": round(self._limiter.per_s * 60, 3),
                    },
                )
            )

    def _audit_once(self, key: str, action: str, payload: dict[str, Any]) -> None:
        if self._throttle.due(key, time.monotonic()):
            self._spawn(self._record("system", action, payload=payload))

    # -- the handshake -------------------------------------------------------------

    async def proof_refused(self, checked: CheckedAnnounce, remote: str, reason: str) -> None:
        """A wrong signature (or no proof): refused, and on record: one row per
        source and reason a minute, which counts the refusals left out before it
        (``repeats``), so a stream of forged proofs cannot fill the audit log."""
        log.warning("refused an announce from %s: %s (key %s)", remote, reason, checked.fingerprint)
        repeats = self._proof_audit.admit(f"{remote}|{reason}")
        if repeats is None:
            return
        payload: dict[str, Any] = {
            "source_ip": remote,
            "fingerprint": checked.fingerprint,
            "hostname": checked.announce.hostname,
            "reason": reason,
        }
        if repeats:
            payload["repeats"] = repeats
        await self._record("system", "pending_host.proof_refused", payload=payload)

    def verify(self, checked: CheckedAnnounce, nonce: bytes, signature_b64: str) -> bool:
        if len(nonce) != ANNOUNCE_NONCE_BYTES:
            return False
        return verify_proof(checked.public_key, nonce, self._cert_sha256, signature_b64)

    async def register(
        self, checked: CheckedAnnounce, channel: AnnounceChannel
    ) -> PendingSession | None:
        """A proven announce: list it (or find it listed) and tell the agent.

        Returns the session to wait on, or None when the agent was given its
        outcome instead (an undelivered verdict or acceptance, or the cap) and
        the socket closed."""
        announce = checked.announce
        fingerprint = checked.fingerprint
        now = self._clock()
        held = self._undelivered.pop(fingerprint, None)
        if held is not None and held.expires_at < now:
            held = None
        if held is not None and held.host_id is not None:
            redelivery = await self._redeliver(checked, channel, held.host_id)
            if redelivery is not None:
                return redelivery
        elif held is not None and held.verdict is not None and announce.resume:
            await self._finish(channel, held.verdict)
            return None

        def run() -> tuple[int, float, str | None] | str:
            row: PendingHost | None = PendingHost.get_or_none(
                PendingHost.fingerprint == fingerprint
            )
            live = row is not None and row.status == "pending" and row.expires_at >= now
            if not live:
                waiting = (
                    PendingHost.select()
                    .where((PendingHost.status == "pending") & (PendingHost.expires_at >= now))
                    .count()
                )
                if waiting >= self.max_pending:
                    return "cap"
            fields = {
                "public_key": checked.public_key,
                "hostname": announce.hostname,
                "source_ip": channel.remote,
                "os": announce.os,
                "arch": announce.arch,
                "agent_version": announce.agent_version,
            }
            if row is None:
                row = PendingHost.create(
                    fingerprint=fingerprint,
                    created_at=now,
                    expires_at=now + self.ttl_s,
                    status="pending",
                    **fields,
                )
                action = "pending_host.announced"
            elif live:
                # A reconnect (or a re-run) keeps its place and its expiry.
                PendingHost.update(**fields).where(PendingHost.id == row.id).execute()
                action = "pending_host.reconnected"
            else:
                PendingHost.update(
                    created_at=now, expires_at=now + self.ttl_s, status="pending", **fields
                ).where(PendingHost.id == row.id).execute()
                action = "pending_host.announced"
            expires_at = now + self.ttl_s if action == "pending_host.announced" else row.expires_at
            audit.record(
                "system",
                action,
                target_kind="pending_host",
                target_id=int(row.id),
                payload={
                    "fingerprint": fingerprint,
                    "hostname": announce.hostname,
                    "source_ip": channel.remote,
                    "os": announce.os,
                    "arch": announce.arch,
                    "agent_version": announce.agent_version,
                },
            )
            return int(row.id), float(expires_at), _duplicate(int(row.id), announce.hostname, now)

        outcome = await self._ctx.store.transaction(run)
        if outcome == "cap":
            self._audit_once(
                "cap:pending",
                "pending_host.refused",
                {
                    "reason": f"{self.max_pending} hosts are already waiting for approval",
                    "source_ip": channel.remote,
                    "fingerprint": fingerprint,
                },
            )
            await self._finish(
                channel,
                AnnounceRejected(
                    outcome="refused",
                    message=(
                        f"{self.max_pending} hosts are already waiting for approval in "
                        "restic-manager; ask the operator to accept or reject them, then run "
                        "announce again"
                    ),
                ),
            )
            return None
        assert not isinstance(outcome, str)
        pending_id, expires_at, duplicate = outcome
        session = PendingSession(
            pending_id=pending_id,
            fingerprint=fingerprint,
            hostname=announce.hostname,
            channel=channel,
            restic_version=announce.restic_version,
        )
        # Told before it is visible, so no accept can overtake this frame.
        await channel.send(
            AnnouncePending(
                pending_id=pending_id,
                fingerprint=fingerprint,
                expires_at=expires_at,
                duplicate=duplicate,
            )
        )
        previous = self._sessions.get(pending_id)
        self._sessions[pending_id] = session
        if previous is not None and not previous.channel.closed:
            self._spawn(
                self._finish(
                    previous.channel,
                    AnnounceRejected(
                        outcome="refused",
                        message="another announce with the same key took over; this one stops",
                    ),
                )
            )
        self._ctx.bus.publish(PendingHostsChanged(pending_id))
        return session

    def enrolled(self, session: PendingSession, message: AnnounceEnrolled) -> None:
        future = session.enrolled
        if future is not None and not future.done():
            future.set_result(message)

    async def disconnected(self, session: PendingSession) -> None:
        # An accept waiting for this agent's confirmation stops waiting now.
        self.enrolled(session, AnnounceEnrolled(ok=False, message="the connection dropped"))
        if self._sessions.get(session.pending_id) is session:
            del self._sessions[session.pending_id]
            self._ctx.bus.publish(PendingHostsChanged(session.pending_id))

    # -- the operator's side -------------------------------------------------------

    async def list_pending(self) -> list[PendingHostView]:
        """Hosts waiting for approval, oldest first (expired ones are expired first)."""
        await self.expire_due()
        now = self._clock()

        def run() -> list[PendingHostView]:
            rows = list(
                PendingHost.select()
                .where((PendingHost.status == "pending") & (PendingHost.expires_at >= now))
                .order_by(PendingHost.created_at, PendingHost.id)
            )
            flags = _duplicates([(int(r.id), str(r.hostname)) for r in rows])
            return [
                PendingHostView(
                    id=int(r.id),
                    fingerprint=str(r.fingerprint),
                    hostname=str(r.hostname),
                    source_ip=str(r.source_ip),
                    os=r.os,
                    arch=r.arch,
                    agent_version=r.agent_version,
                    created_at=float(r.created_at),
                    expires_at=float(r.expires_at),
                    connected=self.is_connected(int(r.id)),
                    duplicate=flags.get(int(r.id)),
                )
                for r in rows
            ]

        return await self._ctx.store.call(run)

    async def get_pending(self, pending_id: int) -> PendingHostView:
        for view in await self.list_pending():
            if view.id == pending_id:
                return view
        raise NotFound(f"pending host {pending_id} does not exist or is no longer waiting")

    async def accept(self, pending_id: int, body: Any, actor: Actor) -> AcceptedHost:
        """Create the host from ``body`` (the add-host fields; ``hostname`` defaults
        to the announced one) and enrol the waiting agent over its socket."""
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        view = await self.get_pending(pending_id)
        new = parse_new_host({"hostname": view.hostname, **body})
        session = self._sessions.get(pending_id)
        if session is None or session.channel.closed:
            raise Conflict(
                f"{view.hostname} is not connected right now; its announce command reconnects "
                "by itself (or run it again on the host), then accept it"
            )
        if session.busy:
            raise Conflict(f"{view.hostname} is already being accepted or rejected")
        session.busy = True
        try:
            return await self._accept(session, view, new, actor)
        finally:
            session.busy = False

    async def _accept(
        self, session: PendingSession, view: PendingHostView, new: NewHost, actor: Actor
    ) -> AcceptedHost:
        bearer = tokens.new_token("rmb")
        now = self._clock()

        def run() -> int:
            row: PendingHost | None = PendingHost.get_or_none(PendingHost.id == view.id)
            if row is None or row.status != "pending" or row.expires_at < now:
                raise Conflict(f"{view.hostname} is no longer waiting for approval")
            if Host.get_or_none(Host.name == new.hostname) is not None:
                raise Conflict(
                    f"a host named {new.hostname} already exists: accept this one under "
                    "another name, or delete the existing host first",
                    field="hostname",
                )
            host = Host.create(
                name=new.hostname,
                created_at=now,
                enrolled_at=now,
                bearer_hash=tokens.hash_token(bearer),
                tags=json.dumps(new.tags),
                os=row.os,
                arch=row.arch,
                agent_version=row.agent_version,
                restic_version=session.restic_version,
                last_ip=row.source_ip,
                repo_status="unknown",
                # A fresh agent holds plan version 0: its first hello fetches the plan.
                schedule_version=1,
            )
            host_id = int(host.id)
            save_credentials(self._ctx.box, host_id, new)
            maintenance_plan.ensure_row(host_id, now)
            row.status = "accepted"
            row.save()
            record_host_created(
                actor, host_id, new, via="announce", fingerprint=session.fingerprint
            )
            audit.record(
                actor.kind,
                "pending_host.accepted",
                actor_id=actor.id,
                target_kind="pending_host",
                target_id=view.id,
                payload={
                    "fingerprint": session.fingerprint,
                    "announced_hostname": row.hostname,
                    "hostname": new.hostname,
                    "host_id": host_id,
                    "source_ip": row.source_ip,
                },
            )
            if new.initial_paths:
                create_default_group(host_id, new.initial_paths, now)
            finish_enrolment(
                host_id,
                {
                    "reported_hostname": row.hostname,
                    "os": row.os,
                    "arch": row.arch,
                    "agent_version": row.agent_version,
                    "source_ip": row.source_ip,
                    "fingerprint": session.fingerprint,
                    "via": "announce",
                },
            )
            return host_id

        host_id = await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(host_id))
        self._ctx.bus.publish(PendingHostsChanged(view.id))
        grant = AnnounceAccepted(host_id=host_id, bearer=bearer, hostname=new.hostname)
        confirmed, problem = await self._deliver(session, grant)
        if confirmed:
            return AcceptedHost(
                host_id, new.hostname, True, f"{new.hostname} was added and its agent enrolled"
            )
        self._undelivered[session.fingerprint] = _Undelivered(
            expires_at=self._clock() + self.ttl_s, host_id=host_id
        )
        await self._record(
            "system",
            "pending_host.delivery_pending",
            target_kind="host",
            target_id=host_id,
            payload={"fingerprint": session.fingerprint, "problem": problem},
        )
        return AcceptedHost(
            host_id,
            new.hostname,
            False,
            f"{new.hostname} was added, but its agent did not confirm ({problem}); it receives "
            "its enrolment when its announce command reconnects, or run announce on the host "
            "again",
        )

    async def _deliver(
        self, session: PendingSession, grant: AnnounceAccepted
    ) -> tuple[bool, str | None]:
        """Send the enrolment and wait for the agent to say it is on disk."""
        future: asyncio.Future[AnnounceEnrolled] = asyncio.get_running_loop().create_future()
        session.enrolled = future
        try:
            await session.channel.send(grant)
            reply = await asyncio.wait_for(future, self._ack_timeout_s)
        except (ConnectionError, RuntimeError):
            return False, "the connection dropped"
        except TimeoutError:
            return False, f"no answer within {self._ack_timeout_s:.0f} s"
        finally:
            session.enrolled = None
        if not reply.ok:
            return False, (reply.message or "it could not write its configuration")[:MAX_REASON]
        await self._finish(session.channel, None)
        return True, None

    async def _redeliver(
        self, checked: CheckedAnnounce, channel: AnnounceChannel, host_id: int
    ) -> PendingSession | None:
        """The key of an accepted host that never confirmed is back: enrol it now
        with a fresh bearer (the old one never reached a config file). Returns the
        session the listener serves while the delivery runs, or None when there
        is nothing to deliver any more."""
        bearer = tokens.new_token("rmb")

        def run() -> str | None:
            host: Host | None = Host.get_or_none(Host.id == host_id)
            if host is None or host.last_seen_at is not None:
                return None  # deleted meanwhile, or its agent did get through
            host.bearer_hash = tokens.hash_token(bearer)
            host.save()
            audit.record(
                "system",
                "pending_host.redelivered",
                target_kind="host",
                target_id=host_id,
                payload={"fingerprint": checked.fingerprint, "source_ip": channel.remote},
            )
            return str(host.name)

        name = await self._ctx.store.transaction(run)
        if name is None:
            return None
        session = PendingSession(
            pending_id=0,  # not listed: the request was accepted already
            fingerprint=checked.fingerprint,
            hostname=name,
            channel=channel,
            restic_version=checked.announce.restic_version,
            busy=True,
        )
        grant = AnnounceAccepted(host_id=host_id, bearer=bearer, hostname=name)

        async def deliver() -> None:
            confirmed, problem = await self._deliver(session, grant)
            if not confirmed:
                self._undelivered[checked.fingerprint] = _Undelivered(
                    expires_at=self._clock() + self.ttl_s, host_id=host_id
                )
                log.info("enrolment of host %s still not confirmed: %s", host_id, problem)
                await self._finish(channel, None)

        self._spawn(deliver())
        return session

    async def reject(self, pending_id: int, reason: Any, actor: Actor) -> None:
        """Refuse the request; the agent prints ``reason`` and exits."""
        text = parse_reason(reason)
        now = self._clock()
        session = self._sessions.get(pending_id)
        if session is not None and session.busy:
            raise Conflict(f"{session.hostname} is already being accepted or rejected")

        def run() -> str:
            row: PendingHost | None = PendingHost.get_or_none(PendingHost.id == pending_id)
            if row is None or row.status != "pending" or row.expires_at < now:
                raise NotFound(f"pending host {pending_id} does not exist or is no longer waiting")
            row.status = "rejected"
            row.save()
            audit.record(
                actor.kind,
                "pending_host.rejected",
                actor_id=actor.id,
                target_kind="pending_host",
                target_id=pending_id,
                payload={
                    "fingerprint": row.fingerprint,
                    "hostname": row.hostname,
                    "source_ip": row.source_ip,
                    "reason": text,
                },
            )
            return str(row.fingerprint)

        fingerprint = await self._ctx.store.transaction(run)
        verdict = AnnounceRejected(outcome="rejected", message=rejection_message(text))
        self._conclude(pending_id, fingerprint, verdict)
        self._ctx.bus.publish(PendingHostsChanged(pending_id))

    async def expire_due(self) -> int:
        """Expire requests older than the TTL; their agents are told. Returns how many."""
        now = self._clock()

        def due() -> bool:
            return bool(
                PendingHost.select()
                .where((PendingHost.status == "pending") & (PendingHost.expires_at < now))
                .exists()
            )

        # A read first: most sweeps find nothing, and need no write lock.
        if not await self._ctx.store.call(due):
            return 0

        def run() -> list[tuple[int, str]]:
            rows = list(
                PendingHost.select().where(
                    (PendingHost.status == "pending") & (PendingHost.expires_at < now)
                )
            )
            for row in rows:
                row.status = "expired"
                row.save()
                audit.record(
                    "system",
                    "pending_host.expired",
                    target_kind="pending_host",
                    target_id=int(row.id),
                    payload={"fingerprint": row.fingerprint, "hostname": row.hostname},
                )
            return [(int(r.id), str(r.fingerprint)) for r in rows]

        expired = await self._ctx.store.transaction(run)
        hours = self.ttl_s / 3600
        span = f"{hours:g} hour{'s' if hours != 1 else ''}" if hours >= 1 else f"{self.ttl_s:g} s"
        for pending_id, fingerprint in expired:
            verdict = AnnounceRejected(
                outcome="expired",
                message=(
                    f"nobody accepted this host within {span}; the request expired. Run "
                    "announce again and accept it in restic-manager (Fleet → Pending hosts)"
                ),
            )
            self._conclude(pending_id, fingerprint, verdict)
        if expired:
            self._ctx.bus.publish(PendingHostsChanged(None))
        return len(expired)

    def _conclude(self, pending_id: int, fingerprint: str, verdict: AnnounceRejected) -> None:
        session = self._sessions.pop(pending_id, None)
        if session is not None and not session.channel.closed:
            self._spawn(self._finish(session.channel, verdict))
        else:
            self._undelivered[fingerprint] = _Undelivered(
                expires_at=self._clock() + self.ttl_s, verdict=verdict
            )
        now = self._clock()
        for key in [k for k, v in self._undelivered.items() if v.expires_at < now]:
            del self._undelivered[key]

    # -- helpers -------------------------------------------------------------------

    async def _finish(self, channel: AnnounceChannel, verdict: Message | None) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            if verdict is not None and not channel.closed:
                await channel.send(verdict)
            reason = verdict.outcome if isinstance(verdict, AnnounceRejected) else "enrolled"
            await channel.close(reason)

    async def refuse(self, channel: AnnounceChannel, error: Error) -> None:
        await self._finish(channel, error)

    async def _record(
        self,
        actor_kind: ActorKind,
        action: str,
        *,
        target_kind: str | None = None,
        target_id: int | None = None,
        payload: dict[str, Any],
    ) -> None:
        await self._ctx.store.transaction(
            audit.record,
            actor_kind,
            action,
            target_kind=target_kind,
            target_id=target_id,
            payload=payload,
        )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.expire_due()
            except Exception:
                log.exception("expiring pending hosts failed")


def new_nonce() -> bytes:
    return secrets.token_bytes(ANNOUNCE_NONCE_BYTES)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _duplicate(pending_id: int, hostname: str, now: float) -> str | None:
    """Why ``hostname`` is flagged for this pending host (store thread)."""
    rows = [
        (int(r.id), str(r.hostname))
        for r in PendingHost.select(PendingHost.id, PendingHost.hostname).where(
            (PendingHost.status == "pending") & (PendingHost.expires_at >= now)
        )
    ]
    if not any(i == pending_id for i, _ in rows):
        rows.append((pending_id, hostname))
    return _duplicates(rows).get(pending_id)


def _duplicates(rows: list[tuple[int, str]]) -> dict[int, str]:
    """pending id -> why its hostname is flagged: it names an existing host, or
    another pending host claims the same name (case-insensitive, as DNS)."""
    names = {str(h.name).lower() for h in Host.select(Host.name)}
    claims: dict[str, int] = {}
    for _, name in rows:
        claims[name.lower()] = claims.get(name.lower(), 0) + 1
    flags: dict[int, str] = {}
    for pending_id, name in rows:
        key = name.lower()
        if key in names:
            flags[pending_id] = f"a host named {name} already exists"
        elif claims[key] > 1:
            flags[pending_id] = f"{claims[key] - 1} other pending host(s) also claim {name}"
    return flags
