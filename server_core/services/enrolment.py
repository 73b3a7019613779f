"""Adding hosts: one-time enrolment tokens and the agent bearers they turn into."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import EnrolRequest, EnrolResponse, RepoCredentials, redact_url
from server_core import audit, credentials, maintenance_plan, tokens
from server_core.audit import ActorKind
from server_core.crypto import SecretBox
from server_core.errors import Conflict, InvalidInput, NotFound, ServiceError, Unauthorized
from server_core.events import HostChanged
from server_core.models import EnrolmentToken, Host, SourceGroup
from server_core.rate_limit import AuditThrottle, FailureGuard, retry_after_header
from server_core.services.context import SYSTEM, Actor, ServiceContext
from server_core.services.jobs import create_job
from server_core.views import EnrolmentTokenView

log = logging.getLogger(__name__)

TOKEN_TTL_S = 3600.0
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
DEFAULT_GROUP = "default"


@dataclass(frozen=True)
class NewHost:
    """A validated add-host request."""

    hostname: str
    repository: RepoCredentials
    admin_repository: RepoCredentials | None = None
    initial_paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EnrolmentGrant:
    token: str
    host_id: int
    expires_at: float
    token_id: int | None = None  # the EnrolmentTokenView.id of ``token``


@dataclass(frozen=True)
class InstallCommands:
    """What the operator pastes on the new host: one line per platform."""

    linux: str
    windows: str


@dataclass(frozen=True)
class AgentEndpoint:
    """Where agents reach the control plane, and the certificate they must pin."""

    server_url: str
    cert_sha256: str


TOKEN_STATES = ("active", "used", "expired", "revoked")


class RateLimited(ServiceError):
    """A source that failed to authenticate too often, held off before any check."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after_header(retry_after_s)


@dataclass(frozen=True)
class AuthRefused:
    """Why an agent's connection is refused before the WebSocket upgrade."""

    status: int
    code: str
    message: str
    reason: str  # for the log and the audit row
    retry_after: str | None = None


class RefusalAudit:
    """Refusals on record, one audit row per action, source and reason a minute
    (``AuditThrottle``): the row carries ``repeats``, the refusals left out since
    the previous one, so a flood costs a row a minute, not a row a request.

    The row is written in the background: a refusal is answered at once, even
    while the store is busy."""

    def __init__(self, ctx: ServiceContext, throttle: AuditThrottle | None = None) -> None:
        self._ctx = ctx
        self.throttle = throttle if throttle is not None else AuditThrottle()
        self._writes: set[asyncio.Task[None]] = set()

    def record(
        self,
        actor_kind: ActorKind,
        action: str,
        source: str | None,
        payload: dict[str, Any],
    ) -> None:
        key = "|".join((action, source or "unknown", str(payload.get("reason", ""))))
        repeats = self.throttle.admit(key)
        if repeats is None:
            return
        row = {**payload, "source_ip": source, "repeats": repeats}
        task = asyncio.get_running_loop().create_task(self._write(actor_kind, action, row))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def flush(self) -> None:
        """Wait for the rows under way (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _write(self, actor_kind: ActorKind, action: str, payload: dict[str, Any]) -> None:
        try:
            await self._ctx.store.transaction(audit.record, actor_kind, action, payload=payload)
        except Exception as exc:  # the store closed under us, or is broken: say so, go on
            log.warning("could not audit %s from %s: %s", action, payload.get("source_ip"), exc)


def token_state(row: EnrolmentToken, now: float) -> str:
    """A token is spent once used or revoked; otherwise it lives until it expires."""
    if row.used_at is not None:
        return "used"
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at < now:
        return "expired"
    return "active"


def token_view(row: EnrolmentToken, now: float) -> EnrolmentTokenView:
    return EnrolmentTokenView(
        id=int(row.id),
        host_id=int(row.host_id),
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        state=token_state(row, now),
    )


def parse_new_host(body: Any) -> NewHost:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    allowed = {"hostname", "repository", "admin_repository", "initial_paths", "tags"}
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    hostname = body.get("hostname")
    if not isinstance(hostname, str) or not HOSTNAME_RE.match(hostname):
        raise InvalidInput(
            "'hostname' must be a host name (letters, digits, '.', '-', '_')", field="hostname"
        )
    repository = credentials.parse_repository(body.get("repository"), "repository")
    admin = None
    if body.get("admin_repository") is not None:
        admin = credentials.parse_repository(body["admin_repository"], "admin_repository")
    paths = body.get("initial_paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InvalidInput("'initial_paths' must be a list of paths", field="initial_paths")
    for p in paths:
        if not (p.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", p)) or "\0" in p:
            raise InvalidInput(
                f"'initial_paths' entry {p!r} must be an absolute path", field="initial_paths"
            )
    if len(paths) > 1000:
        raise InvalidInput("'initial_paths' has more than 1000 entries", field="initial_paths")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and _TAG.match(t) for t in tags):
        raise InvalidInput(
            "'tags' must be a list of short words (letters, digits, '.', '_', ':', '/', '-')",
            field="tags",
        )
    return NewHost(
        hostname=hostname,
        repository=repository,
        admin_repository=admin,
        initial_paths=list(dict.fromkeys(paths)),
        tags=list(dict.fromkeys(tags)),
    )


class EnrolmentService:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        install_command: Callable[[str], str],
        agent_endpoint: Callable[[], AgentEndpoint] | None = None,
    ) -> None:
        self._ctx = ctx
        self._install_command = install_command
        self._agent_endpoint = agent_endpoint
        # Wrong enrolment tokens and bearers, per source address.
        self.failures = FailureGuard()
        self.refusals = RefusalAudit(ctx)

    def install_command(self, token: str) -> str:
        return self._install_command(token)

    def install_commands(self, token: str) -> InstallCommands:
        """The Linux command (as ``install_command``) and its Windows PowerShell twin."""
        linux = self._install_command(token)
        if self._agent_endpoint is not None:
            endpoint = self._agent_endpoint()
        else:
            endpoint = endpoint_from_command(linux)
        return InstallCommands(
            linux=linux,
            windows=windows_install_command(endpoint.server_url, endpoint.cert_sha256, token),
        )

    async def list_tokens(self, host_id: int) -> list[EnrolmentTokenView]:
        """Every enrolment token minted for a host, newest first."""

        def run() -> list[EnrolmentTokenView]:
            _require_host(host_id)
            now = time.time()
            rows = (
                EnrolmentToken.select()
                .where(EnrolmentToken.host == host_id)
                .order_by(EnrolmentToken.created_at.desc(), EnrolmentToken.id.desc())
            )
            return [token_view(row, now) for row in rows]

        return await self._ctx.store.call(run)

    async def regenerate_token(self, host_id: int, actor: Actor) -> EnrolmentGrant:
        """A fresh one-time token for a host that has not enrolled yet; its other
        active tokens are revoked, so only the newest install command works."""
        token = tokens.new_token("rme")
        now = time.time()

        def run() -> EnrolmentGrant:
            host = _require_host(host_id)
            if host.enrolled_at is not None:
                raise Conflict(
                    f"{host.name} is already enrolled: enrolment tokens are only for hosts "
                    "whose agent has not connected yet (delete the host and add it again "
                    "to re-install its agent)"
                )
            rows = list(
                EnrolmentToken.select()
                .where(EnrolmentToken.host == host_id)
                .order_by(EnrolmentToken.id.desc())
            )
            # The newest token carries what the operator asked for at Add host.
            initial_paths = rows[0].initial_paths if rows else "[]"
            revoked = [
                int(row.id)
                for row in rows
                if row.used_at is None and row.revoked_at is None and row.expires_at >= now
            ]
            if revoked:
                EnrolmentToken.update(revoked_at=now).where(
                    EnrolmentToken.id.in_(revoked)
                ).execute()
            row = EnrolmentToken.create(
                host=host_id,
                token_hash=tokens.hash_token(token),
                created_at=now,
                expires_at=now + TOKEN_TTL_S,
                initial_paths=initial_paths,
            )
            audit.record(
                actor.kind,
                "enrolment_token.regenerated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={
                    "token_id": int(row.id),
                    "expires_at": now + TOKEN_TTL_S,
                    "revoked_token_ids": revoked,
                },
            )
            return EnrolmentGrant(
                token=token, host_id=host_id, expires_at=now + TOKEN_TTL_S, token_id=int(row.id)
            )

        grant = await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(host_id))
        return grant

    async def revoke_token(self, token_id: int, actor: Actor) -> EnrolmentTokenView:
        """Make a token unusable. Revoking a revoked token changes nothing; a used
        one cannot be revoked (the host's bearer is what it turned into)."""

        def run() -> EnrolmentTokenView:
            now = time.time()
            row: EnrolmentToken | None = EnrolmentToken.get_or_none(EnrolmentToken.id == token_id)
            if row is None:
                raise NotFound(f"enrolment token {token_id} does not exist")
            if row.used_at is not None:
                raise Conflict(
                    f"enrolment token {token_id} was already used to enrol its host; "
                    "delete the host to cut its agent off"
                )
            if row.revoked_at is None:
                row.revoked_at = now
                row.save()
                audit.record(
                    actor.kind,
                    "enrolment_token.revoked",
                    actor_id=actor.id,
                    target_kind="host",
                    target_id=int(row.host_id),
                    payload={"token_id": token_id, "expired": row.expires_at < now},
                )
            return token_view(row, now)

        view = await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(view.host_id))
        return view

    async def add_host(self, new: NewHost, actor: Actor) -> EnrolmentGrant:
        token = tokens.new_token("rme")
        now = time.time()

        def run() -> EnrolmentGrant:
            if Host.get_or_none(Host.name == new.hostname) is not None:
                raise Conflict(
                    f"a host named {new.hostname} already exists: regenerate its token or "
                    "delete it first",
                    field="hostname",
                )
            host = Host.create(name=new.hostname, created_at=now, tags=json.dumps(new.tags))
            save_credentials(self._ctx.box, host.id, new)
            maintenance_plan.ensure_row(host.id, now)
            row = EnrolmentToken.create(
                host=host,
                token_hash=tokens.hash_token(token),
                created_at=now,
                expires_at=now + TOKEN_TTL_S,
                initial_paths=json.dumps(new.initial_paths),
            )
            record_host_created(actor, host.id, new)
            audit.record(
                actor.kind,
                "enrolment_token.created",
                actor_id=actor.id,
                target_kind="host",
                target_id=host.id,
                payload={"expires_at": now + TOKEN_TTL_S},
            )
            return EnrolmentGrant(
                token=token, host_id=host.id, expires_at=now + TOKEN_TTL_S, token_id=int(row.id)
            )

        grant = await self._ctx.store.transaction(run)
        self._ctx.bus.publish(HostChanged(grant.host_id))
        return grant

    async def redeem(self, req: EnrolRequest, source_ip: str | None) -> EnrolResponse:
        """An agent trades a one-time token for its host id and a persistent bearer."""
        source = source_ip or "unknown"
        held = self.failures.check(source)
        if not held.allowed:
            self.refusals.record(
                "agent", "enrolment.rate_limited", source_ip, {"reason": "too many failures"}
            )
            raise RateLimited(
                f"too many failed enrolments from {source}; wait a minute and try again",
                retry_after_s=held.retry_after_s,
            )
        bearer = tokens.new_token("rmb")
        now = time.time()

        def run() -> EnrolResponse | str:
            row = EnrolmentToken.get_or_none(
                EnrolmentToken.token_hash == tokens.hash_token(req.token)
            )
            if row is None or not tokens.token_matches(req.token, row.token_hash):
                return "unknown token"
            if row.used_at is not None:
                return "token already used"
            if row.revoked_at is not None:
                return "token revoked"
            if row.expires_at < now:
                return "token expired"
            host = Host.get_by_id(row.host_id)
            row.used_at = now
            row.save()
            host.bearer_hash = tokens.hash_token(bearer)
            host.enrolled_at = now
            host.os = req.os[:32]
            host.arch = req.arch[:32]
            host.agent_version = req.agent_version[:64]
            host.restic_version = (req.restic_version or "")[:64] or None
            host.last_ip = source_ip
            host.repo_status = "unknown"
            # A fresh agent holds plan version 0: a new version makes its first
            # hello fetch the groups and the maintenance cadences below.
            host.schedule_version = host.schedule_version + 1
            host.save()
            maintenance_plan.ensure_row(host.id, now)
            paths = json.loads(row.initial_paths)
            has_group = SourceGroup.select().where(SourceGroup.host == host.id).exists()
            if paths and not has_group:
                create_default_group(host.id, paths, now)
            finish_enrolment(
                host.id,
                {
                    "reported_hostname": req.hostname,
                    "os": req.os,
                    "arch": req.arch,
                    "agent_version": req.agent_version,
                    "source_ip": source_ip,
                },
            )
            return EnrolResponse(host_id=host.id, bearer=bearer, hostname=host.name)

        outcome = await self._ctx.store.transaction(run)
        if isinstance(outcome, str):
            self.failures.failed(source)
            # Its own transaction: the refusal is what must be kept.
            self.refusals.record(
                "agent",
                "enrolment.refused",
                source_ip,
                {"reason": outcome, "hostname": req.hostname[:255]},
            )
            raise Unauthorized(
                f"enrolment refused: {outcome}; create a new token in the app "
                "(Add host, or Regenerate on the host)"
            )
        self._ctx.bus.publish(HostChanged(outcome.host_id))
        return outcome

    async def authenticate_agent(self, authorization: str, source: str | None) -> int | AuthRefused:
        """The host an agent's ``Authorization`` header names, or why it is refused
        (audited). A valid bearer always gets in: many agents share one source
        address behind NAT, and a few revoked ones (or a stranger on the same
        network) must not lock the others out. Failures are what is limited: a
        source that keeps failing gets 429 with ``Retry-After`` instead of 401,
        which slows a guesser down and keeps its audit rows few."""
        where = source or "unknown"
        scheme, _, bearer = authorization.partition(" ")
        host_id = None
        reason = "no bearer"
        if scheme.lower() == "bearer" and bearer.strip():
            host_id = await self.authenticate(bearer.strip())
            reason = "unknown or revoked bearer"
        if host_id is not None:
            return host_id
        held = self.failures.check(where)
        if not held.allowed:
            self.refusals.record(
                "agent", "agent.rate_limited", source, {"reason": "too many failures"}
            )
            return AuthRefused(
                429,
                "rate_limited",
                f"too many failed agent logins from {where}; wait a minute",
                "rate limited",
                retry_after_header(held.retry_after_s),
            )
        self.failures.failed(where)
        self.refusals.record("agent", "agent.auth_refused", source, {"reason": reason})
        return AuthRefused(
            401,
            "unauthorized",
            "unknown or revoked agent credentials: re-enrol this host",
            reason,
        )

    async def authenticate(self, bearer: str) -> int | None:
        """The host a bearer belongs to, or None."""

        def run() -> int | None:
            row = Host.get_or_none(Host.bearer_hash == tokens.hash_token(bearer))
            if row is None or not tokens.token_matches(bearer, row.bearer_hash):
                return None
            return int(row.id)

        return await self._ctx.store.call(run)


def _require_host(host_id: int) -> Host:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    if host is None:
        raise NotFound(f"host {host_id} does not exist")
    return host


# Store-thread pieces shared by the two ways a host comes in: a token it
# redeems (above) and an announce the operator accepts (pending_hosts.py).


def save_credentials(box: SecretBox, host_id: int, new: NewHost) -> None:
    credentials.save(box, host_id, "everyday", new.repository)
    if new.admin_repository is not None:
        credentials.save(box, host_id, "admin", new.admin_repository)


def record_host_created(actor: Actor, host_id: int, new: NewHost, **extra: Any) -> None:
    audit.record(
        actor.kind,
        "host.created",
        actor_id=actor.id,
        target_kind="host",
        target_id=host_id,
        payload={
            "name": new.hostname,
            "url": redact_url(new.repository.url),
            "admin_slot": new.admin_repository is not None,
            "initial_paths": new.initial_paths,
            "tags": new.tags,
            **extra,
        },
    )


def create_default_group(host_id: int, paths: list[str], now: float) -> None:
    """The source group the initial paths of Add host become."""
    group = SourceGroup.create(
        host=host_id,
        name=DEFAULT_GROUP,
        includes=json.dumps(paths),
        created_at=now,
        updated_at=now,
    )
    audit.record(
        "system",
        "source_group.created",
        target_kind="source_group",
        target_id=group.id,
        payload={"host_id": host_id, "name": DEFAULT_GROUP, "includes": paths},
    )


def finish_enrolment(host_id: int, payload: dict[str, Any]) -> None:
    """Audit the agent's enrolment and probe its repository."""
    audit.record(
        "agent",
        "host.enrolled",
        actor_id=host_id,
        target_kind="host",
        target_id=host_id,
        payload=payload,
    )
    # Probe the repository at once so a wrong password or URL shows
    # up now, not as a silent missed backup days later.
    create_job(host_id, "init", SYSTEM)


WINDOWS_CONFIG = r"$env:ProgramData\restic-manager-agent\config.toml"
_BARE_PS_WORD = re.compile(r"^[A-Za-z0-9:._-]+$")


def _ps_quote(value: str) -> str:
    """A PowerShell literal: single quotes, embedded quotes doubled (no expansion)."""
    if _BARE_PS_WORD.match(value) and not value.startswith("-"):
        return value
    return "'" + value.replace("'", "''") + "'"


def windows_install_command(server_url: str, cert_sha256: str, token: str) -> str:
    """One line for an elevated Windows PowerShell (5.1, the one every Windows ships),
    the twin of the Linux command: fetch install.ps1 over TLS pinned to the
    certificate (the callback accepts exactly that certificate and nothing else),
    then run it with the server URL, token and pin. Wrapped in ``& { }`` so that
    its variables and settings stay out of the operator's session."""
    pin = cert_sha256.replace(":", "").lower()
    script_url = server_url.rstrip("/") + "/install/install.ps1"
    return (
        "& { $ErrorActionPreference='Stop'; "
        "[Net.ServicePointManager]::SecurityProtocol='Tls12'; "
        "[Net.ServicePointManager]::ServerCertificateValidationCallback={param($s,$c) "
        "([BitConverter]::ToString([Security.Cryptography.SHA256]::Create()"
        f".ComputeHash($c.GetRawCertData())) -replace '-','') -eq '{pin}'}}; "
        "$f=Join-Path $env:TEMP 'restic-manager-install.ps1'; "
        f"try {{ (New-Object Net.WebClient).DownloadFile({_ps_quote(script_url)},$f) }} "
        "finally { [Net.ServicePointManager]::ServerCertificateValidationCallback=$null }; "
        "powershell.exe -NoProfile -ExecutionPolicy Bypass -File $f "
        f"-Server {_ps_quote(server_url)} -Token {_ps_quote(token)} -CertSha256 {pin} }}"
    )


def endpoint_from_command(command: str) -> AgentEndpoint:
    """The server URL and pin inside an install command built by
    ``default_install_command`` (used when no ``agent_endpoint`` was wired)."""
    words = shlex.split(command)
    found: dict[str, str] = {}
    for flag, value in itertools.pairwise(words):
        if flag in ("--server", "--cert-sha256"):
            found.setdefault(flag, value)
    if "--server" not in found or "--cert-sha256" not in found:
        raise ValueError("the install command names no --server and --cert-sha256")
    return AgentEndpoint(server_url=found["--server"], cert_sha256=found["--cert-sha256"])


# Run by ``sh -c`` with the arguments of install.sh ($1 --server, $2 URL, …,
# $6 pin): fetch the server's certificate, compare its SHA-256 with the pin,
# then download install.sh with that certificate as the only CA (under the
# name "localhost", which the app's certificate always carries, whatever name
# or address reaches it) and run it. No ``-k``; nothing runs on a mismatch.
LINUX_BOOTSTRAP = (
    'set -e; u=${2#https://}; d=$(mktemp -d); trap "rm -rf $d" EXIT; '
    'openssl s_client -connect "$u" -servername localhost </dev/null 2>/dev/null'
    ' | openssl x509 -out "$d/c.pem" 2>/dev/null'
    ' || { echo "restic-manager: cannot reach $2 over TLS" >&2; exit 1; }; '
    '[ "$(openssl x509 -in "$d/c.pem" -noout -fingerprint -sha256'
    ' | cut -d= -f2 | tr -d : | tr A-F a-f)" = "$6" ]'
    ' || { echo "restic-manager: the certificate of $2 does not match --cert-sha256;'
    ' nothing was installed" >&2; exit 1; }; '
    'curl -q -fsS --cacert "$d/c.pem" --connect-to "localhost:${u##*:}:$u"'
    ' -o "$d/install.sh" "https://localhost:${u##*:}/install/install.sh"; '
    'sh "$d/install.sh" "$@"'
)


def default_install_command(server_url: str, cert_sha256: str) -> Callable[[str], str]:
    """``sudo sh -c '<LINUX_BOOTSTRAP>' - --server URL --token TOKEN --cert-sha256 PIN``:
    one paste that installs, enrols and starts the agent (installers/install.sh).
    Options added at the end (``--no-systemd``, ``--force-reenrol``) reach install.sh."""
    pin = cert_sha256.replace(":", "").lower()

    def command(token: str) -> str:
        return (
            f"sudo sh -c {shlex.quote(LINUX_BOOTSTRAP)} - "
            f"--server {shlex.quote(server_url)} --token {shlex.quote(token)} "
            f"--cert-sha256 {pin}"
        )

    return command
