"""Repository credentials: validation at the edge, sealing at rest."""

from __future__ import annotations

import re
import time
from typing import Any

from agent.protocol import RepoCredentials, redact_url
from server_core.crypto import SecretBox, row_aad
from server_core.errors import InvalidInput
from server_core.models import HostCredential

SLOTS = ("everyday", "admin")
MIN_PASSWORD_LEN = 4
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_RESERVED_ENV = frozenset(
    {"RESTIC_REPOSITORY", "RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"}
)


def parse_repository(data: Any, field: str = "repository") -> RepoCredentials:
    """Validate an operator-supplied repository object; errors name the field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"'{field}' must be an object", field=field)
    unknown = set(data) - {"url", "password", "username", "backend_password", "env"}
    if unknown:
        raise InvalidInput(
            f"'{field}' has unknown field(s): {', '.join(sorted(unknown))}", field=field
        )
    url = data.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(f"'{field}.url' is required", field=f"{field}.url")
    if len(url) > 2048 or any(c in url for c in "\r\n\0"):
        raise InvalidInput(f"'{field}.url' is not a valid repository URL", field=f"{field}.url")
    password = data.get("password")
    if not isinstance(password, str) or password == "":
        raise InvalidInput(f"'{field}.password' is required", field=f"{field}.password")
    if len(password) > 4096 or "\0" in password:
        raise InvalidInput(f"'{field}.password' is too long", field=f"{field}.password")
    if len(password) < MIN_PASSWORD_LEN:
        # Shorter ones could not be told apart from ordinary text when the
        # agent scrubs secrets out of log lines.
        raise InvalidInput(
            f"'{field}.password' must have at least {MIN_PASSWORD_LEN} characters",
            field=f"{field}.password",
        )
    optional: dict[str, str | None] = {}
    for name in ("username", "backend_password"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 1024):
            raise InvalidInput(f"'{field}.{name}' must be a string", field=f"{field}.{name}")
        optional[name] = value or None
    env = data.get("env")
    if env is None:  # only null (or no field) means "no variables"
        env = {}
    if not isinstance(env, dict):
        raise InvalidInput(f"'{field}.env' must be an object", field=f"{field}.env")
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key) or key in _RESERVED_ENV:
            raise InvalidInput(
                f"'{field}.env' has an invalid variable name {key!r} (use A-Z, 0-9 and _; "
                "the repository and password have their own fields)",
                field=f"{field}.env",
            )
        if not isinstance(value, str) or len(value) > 8192 or "\0" in value:
            raise InvalidInput(f"'{field}.env.{key}' must be a string", field=f"{field}.env")
    return RepoCredentials(
        url=url.strip(),
        password=password,
        username=optional["username"],
        backend_password=optional["backend_password"],
        env={str(k): str(v) for k, v in env.items()},
    )


def _aad(host_id: int, slot: str) -> str:
    return row_aad("host_credential", host_id, f"{slot}:secret")


def save(box: SecretBox, host_id: int, slot: str, creds: RepoCredentials) -> None:
    """Seal and upsert a credential slot (call on the store thread)."""
    blob = box.seal_json(
        {
            "url": creds.url,
            "password": creds.password,
            "username": creds.username,
            "backend_password": creds.backend_password,
            "env": dict(creds.env),
        },
        _aad(host_id, slot),
    )
    now = time.time()
    (
        HostCredential.insert(
            host=host_id,
            slot=slot,
            secret_enc=blob,
            url_display=redact_url(creds.url),
            updated_at=now,
        )
        .on_conflict(
            conflict_target=[HostCredential.host, HostCredential.slot],
            update={
                HostCredential.secret_enc: blob,
                HostCredential.url_display: redact_url(creds.url),
                HostCredential.updated_at: now,
            },
        )
        .execute()
    )


def load(box: SecretBox, host_id: int, slot: str) -> RepoCredentials | None:
    row = HostCredential.get_or_none(
        (HostCredential.host == host_id) & (HostCredential.slot == slot)
    )
    if row is None:
        return None
    data = box.open_json(bytes(row.secret_enc), _aad(host_id, slot))
    return RepoCredentials(
        url=data["url"],
        password=data["password"],
        username=data.get("username"),
        backend_password=data.get("backend_password"),
        env=dict(data.get("env") or {}),
    )
