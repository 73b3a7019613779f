"""Token enrolment: trade a one-time token for this host's bearer and id.

The exchange runs over TLS pinned to the server certificate's SHA-256
(shown in the app and embedded in its install commands), so a machine in
the middle cannot collect the token or hand out a fake identity. Nothing
is written unless the server accepted the token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent import platform_info, protocol
from agent.config import AgentConfig, ConfigError, save_config, validate_config
from agent.secrets_file import SecretsError, SecretsFile
from agent.version import __version__

log = logging.getLogger(__name__)

SECRETS_FILE_NAME = "secrets.bin"
OUTBOX_FILE_NAME = "outbox.sqlite3"
CACHE_DIR_NAME = "cache"
ENROL_TIMEOUT_S = 30.0

EXIT_USAGE = 2
EXIT_FAILURE = 1


class EnrolError(Exception):
    """Enrolment failed; ``str()`` is the one line to show, ``exit_code`` the status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class EnrolResult:
    host_id: int
    hostname: str
    config_path: Path
    state_dir: Path


def key_path_for(config_path: Path) -> Path:
    """The secrets key lives beside the config, away from the encrypted file."""
    return config_path.with_name(config_path.name + ".key")


def secrets_path_for(state_dir: Path) -> Path:
    return state_dir / SECRETS_FILE_NAME


def secrets_file_for(config_path: Path, state_dir: Path) -> SecretsFile:
    return SecretsFile(secrets_path_for(state_dir), key_path_for(config_path))


def normalize_server_url(url: str) -> str:
    """``https://host:port`` without a trailing slash; anything else is a usage error."""
    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise EnrolError(
            f"--server {url!r} is not a valid URL; use https://HOST:PORT as shown in the app",
            EXIT_USAGE,
        ) from None
    if parts.scheme != "https" or not parts.hostname:
        raise EnrolError(
            f"--server must be an https://HOST:PORT URL (got {url!r}); "
            "copy it from the install command shown in the app",
            EXIT_USAGE,
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise EnrolError(
            "--server must not contain credentials, a query or a fragment; use https://HOST:PORT",
            EXIT_USAGE,
        )
    return text


def pin_ssl(cert_sha256: str) -> aiohttp.Fingerprint:
    """TLS settings that trust exactly the pinned certificate, and nothing else."""
    return aiohttp.Fingerprint(bytes.fromhex(protocol.normalize_fingerprint(cert_sha256)))


def mismatch_message(exc: aiohttp.ServerFingerprintMismatch) -> str:
    return (
        f"the server's certificate does not match --cert-sha256 (expected {exc.expected.hex()}, "
        f"{exc.host}:{exc.port} presented {exc.got.hex()}); check the fingerprint shown in "
        "the app (Settings → certificate) and that --server points at restic-manager"
    )


@dataclass(frozen=True)
class EnrolPlan:
    """Validated arguments of ``enrol`` / ``announce``: what gets written on success."""

    server: str
    pin: str
    token: str  # empty for announce, which needs none
    config_path: Path
    state_dir: Path
    restic_path: str | None
    hostname: str


def plan_enrolment(
    server_url: str,
    cert_sha256: str,
    config_path: Path,
    state_dir: Path | None,
    restic_path: str | None,
    hostname: str | None,
    *,
    token: str = "",
    require_token: bool = False,
) -> EnrolPlan:
    """Validate everything before anything leaves the host; usage errors exit 2."""
    server = normalize_server_url(server_url)
    try:
        pin = protocol.normalize_fingerprint(cert_sha256)
    except ValueError as exc:
        raise EnrolError(f"--cert-sha256: {exc}", EXIT_USAGE) from None
    token = token.strip()
    if require_token and not token:
        raise EnrolError("--token must not be empty", EXIT_USAGE)
    state = (state_dir or platform_info.default_state_dir()).expanduser().absolute()
    config_path = config_path.expanduser().absolute()
    if config_path.is_dir():
        raise EnrolError(f"--config {config_path} is a directory; give a file path", EXIT_USAGE)
    return EnrolPlan(
        server=server,
        pin=pin,
        token=token,
        config_path=config_path,
        state_dir=state,
        restic_path=restic_path,
        hostname=platform_info.hostname(hostname),
    )


def write_enrolment(plan: EnrolPlan, response: protocol.EnrolResponse) -> EnrolResult:
    """Write the config and secrets the server's enrolment grants; raises EnrolError."""
    cfg = AgentConfig(
        server_url=plan.server,
        cert_sha256=plan.pin,
        host_id=response.host_id,
        state_dir=str(plan.state_dir),
        restic_path=plan.restic_path,
        hostname=response.hostname or plan.hostname,
    )
    problems = validate_config(cfg)
    if problems:
        raise EnrolError("cannot write the agent config: " + "; ".join(problems), EXIT_USAGE)
    try:
        # Secrets first: a config on disk means "enrolled", so it must never
        # exist without the bearer that goes with it.
        secrets_file_for(plan.config_path, plan.state_dir).save({"bearer": response.bearer})
        save_config(plan.config_path, cfg)
    except (OSError, SecretsError, ConfigError) as exc:
        raise EnrolError(
            f"the server accepted the token but writing {plan.config_path} / {plan.state_dir} "
            f"failed: {exc}; fix the paths or permissions and enrol again with a new token"
        ) from exc
    return EnrolResult(
        host_id=response.host_id,
        hostname=cfg.hostname or plan.hostname,
        config_path=plan.config_path,
        state_dir=plan.state_dir,
    )


async def enrol(
    *,
    server_url: str,
    token: str,
    cert_sha256: str,
    config_path: Path,
    state_dir: Path | None = None,
    restic_path: str | None = None,
    hostname: str | None = None,
    restic_version: str | None = None,
    timeout_seconds: float = ENROL_TIMEOUT_S,
) -> EnrolResult:
    """Enrol this host and write its config and secrets; raises EnrolError."""
    plan = plan_enrolment(
        server_url,
        cert_sha256,
        config_path,
        state_dir,
        restic_path,
        hostname,
        token=token,
        require_token=True,
    )
    request = protocol.EnrolRequest(
        token=plan.token,
        hostname=plan.hostname,
        os=platform_info.os_name(),
        arch=platform_info.arch(),
        agent_version=__version__,
        restic_version=restic_version,
    )
    body = await _post_enrol(plan.server, plan.pin, request, timeout_seconds)
    return write_enrolment(plan, _parse_response(body))


async def _post_enrol(
    server: str, pin: str, request: protocol.EnrolRequest, timeout_seconds: float
) -> tuple[int, bytes]:
    url = server + protocol.ENROL_PATH
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds)) as session,
            session.post(url, json=protocol.to_dict(request), ssl=pin_ssl(pin)) as resp,
        ):
            return resp.status, await resp.read()
    except aiohttp.ServerFingerprintMismatch as exc:
        raise EnrolError(mismatch_message(exc)) from None
    except aiohttp.ClientConnectorError as exc:
        raise EnrolError(
            f"cannot connect to {server}: {exc.os_error.strerror or exc}; check --server and "
            "that restic-manager is running and reachable from this host"
        ) from None
    except TimeoutError:
        raise EnrolError(
            f"{server} did not answer within {timeout_seconds:.0f} s; "
            "check --server and the network"
        ) from None
    except aiohttp.ClientError as exc:
        raise EnrolError(f"enrolment request to {server} failed: {exc}") from None


def _parse_response(result: tuple[int, bytes]) -> protocol.EnrolResponse:
    status, raw = result
    data: Any
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if status != 200:
        message = _server_error_message(data) or f"HTTP {status}"
        if status == 401:
            raise EnrolError(
                f"the server rejected the enrolment token ({message}); tokens are single-use "
                "and expire after an hour: create a new one in the app (host → Regenerate token)"
            )
        if status == 400:
            raise EnrolError(f"the server refused the enrolment request: {message}")
        raise EnrolError(f"enrolment failed: the server answered HTTP {status}: {message}")
    try:
        return protocol.from_dict(protocol.EnrolResponse, data)
    except protocol.ProtocolError as exc:
        raise EnrolError(
            f"the server's enrolment answer is not understood ({exc}); is the desktop app "
            "a compatible version?"
        ) from None


def _server_error_message(data: Any) -> str | None:
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            code = err.get("code")
            return f"{code}: {err['message']}" if isinstance(code, str) else str(err["message"])
    return None
