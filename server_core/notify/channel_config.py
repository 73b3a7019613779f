"""A notification channel's settings as the operator sends them: validated at
the edge (every error names its field) and split into the part that may be
shown and the secrets that are sealed and never shown again."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from server_core.alert_rules import SEVERITIES
from server_core.errors import InvalidInput

KINDS = ("webhook", "ntfy", "smtp")
SECURITIES = ("starttls", "tls", "none")
DEFAULT_MIN_SEVERITY = "warning"

CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "webhook": ("url", "secret_header"),
    "ntfy": ("topic_url", "token"),
    "smtp": ("host", "port", "security", "username", "password", "from", "to"),
}
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "webhook": ("secret_header",),
    "ntfy": ("token",),
    "smtp": ("password",),
}
DEFAULT_SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}

_TOP_FIELDS = frozenset({"kind", "name", "enabled", "min_severity", "config"})
MAX_NAME_LEN = 100
MAX_URL_LEN = 2048
MAX_RECIPIENTS = 50
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Headers the sender sets itself, or that would break the request's framing.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection"}
)
_TOKEN = re.compile(r"^[\x21-\x7e]{1,1024}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})*$")


def severity_rank(severity: str) -> int:
    # An unknown severity ranks highest so a new one is sent rather than dropped.
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


@dataclass(frozen=True)
class ChannelSpec:
    """A validated channel; ``secrets`` holds only the secret fields that are set."""

    kind: str
    name: str
    enabled: bool
    min_severity: str
    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The default repr would print secrets into any log line or traceback.
        return (
            f"ChannelSpec(kind={self.kind!r}, name={self.name!r}, enabled={self.enabled!r}, "
            f"min_severity={self.min_severity!r}, config={self.config!r}, "
            f"secrets=<{', '.join(sorted(self.secrets)) or 'none'}>)"
        )

    @property
    def secret_fields(self) -> list[str]:
        return sorted(self.secrets)

    def wants(self, severity: str) -> bool:
        return self.enabled and severity_rank(severity) >= severity_rank(self.min_severity)


def parse_new(body: Any, *, name_required: bool = True) -> ChannelSpec:
    """A channel from a create (or an unsaved test) body."""
    _require_object(body, "the channel", None)
    _refuse_unknown(body, _TOP_FIELDS, "the channel", None)
    kind = _kind(body.get("kind"))
    raw_name = body.get("name")
    if name_required or (isinstance(raw_name, str) and raw_name.strip()):
        name = _name(raw_name)
    else:
        # A test of a form not filled in yet needs no name.
        name = "unsaved channel"
    enabled = _bool(body.get("enabled", True), "enabled")
    min_severity = _severity(body.get("min_severity", DEFAULT_MIN_SEVERITY))
    raw = body.get("config")
    _require_object(raw, "'config'", "config")
    config, secrets = _validate_config(kind, _without_nulls(raw))
    return ChannelSpec(kind, name, enabled, min_severity, config, secrets)


def parse_update(current: ChannelSpec, body: Any) -> ChannelSpec:
    """Apply a partial update: absent fields keep their value, ``null`` clears
    an optional one (secrets included), a changed kind needs a whole config."""
    _require_object(body, "the channel", None)
    _refuse_unknown(body, _TOP_FIELDS, "the channel", None)
    kind = current.kind if body.get("kind") is None else _kind(body["kind"])
    name = current.name if body.get("name") is None else _name(body["name"])
    enabled = current.enabled if body.get("enabled") is None else _bool(body["enabled"], "enabled")
    min_severity = (
        current.min_severity
        if body.get("min_severity") is None
        else _severity(body["min_severity"])
    )
    same_kind = kind == current.kind
    base: dict[str, Any] = {**current.config, **current.secrets} if same_kind else {}
    raw = body.get("config")
    if raw is None:
        if not same_kind:
            raise InvalidInput(
                f"changing the kind to {kind} needs the whole {kind} config", field="config"
            )
        raw = {}
    _require_object(raw, "'config'", "config")
    merged = _without_nulls({**base, **raw})
    config, secrets = _validate_config(kind, merged, unknown_from=raw)
    return ChannelSpec(kind, name, enabled, min_severity, config, secrets)


def config_changes(before: ChannelSpec, after: ChannelSpec) -> dict[str, Any]:
    """What an update changed, for the audit log: values of the visible
    fields, only the names of the secret ones."""
    changes: dict[str, Any] = {}
    for attr in ("kind", "name", "enabled", "min_severity"):
        if getattr(before, attr) != getattr(after, attr):
            changes[attr] = getattr(after, attr)
    if before.config != after.config:
        changes["config"] = after.config
    secrets_changed = sorted(
        k
        for k in set(before.secrets) | set(after.secrets)
        if before.secrets.get(k) != after.secrets.get(k)
    )
    if secrets_changed:
        changes["secrets_changed"] = secrets_changed
    return changes


# -- per kind ------------------------------------------------------------


def _validate_config(
    kind: str, raw: dict[str, Any], *, unknown_from: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    allowed = CONFIG_FIELDS[kind]
    _refuse_unknown(raw if unknown_from is None else unknown_from, allowed, "'config'", "config")
    if kind == "webhook":
        return _webhook(raw)
    if kind == "ntfy":
        return _ntfy(raw)
    return _smtp(raw)


def _webhook(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    url = _http_url(raw.get("url"), "config.url", "put a credential in the secret header")
    secrets: dict[str, str] = {}
    if raw.get("secret_header") is not None:
        secrets["secret_header"] = _secret_header(raw["secret_header"])
    return {"url": url}, secrets


def _ntfy(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    url = _http_url(raw.get("topic_url"), "config.topic_url", "use the token field")
    parts = urlsplit(url)
    if parts.path.strip("/") == "":
        raise InvalidInput(
            "'config.topic_url' must name the topic, like https://ntfy.sh/my-backups",
            field="config.topic_url",
        )
    secrets: dict[str, str] = {}
    token = raw.get("token")
    if token is not None:
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise InvalidInput(
                "'config.token' must be an access token without spaces (up to 1024 characters)",
                field="config.token",
            )
        secrets["token"] = token
    return {"topic_url": url}, secrets


def _smtp(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    host = raw.get("host")
    if not isinstance(host, str) or not _HOSTNAME.match(host.strip()):
        raise InvalidInput(
            "'config.host' must be the SMTP server's host name or IP address",
            field="config.host",
        )
    security = raw.get("security", "starttls")
    if security not in SECURITIES:
        raise InvalidInput(
            f"'config.security' must be one of {', '.join(SECURITIES)}",
            field="config.security",
        )
    port = raw.get("port", DEFAULT_SMTP_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(
            "'config.port' must be a port number from 1 to 65535 (usually 587 for "
            "STARTTLS, 465 for TLS)",
            field="config.port",
        )
    username = raw.get("username")
    if username is not None and (
        not isinstance(username, str) or not username or len(username) > 256 or _has_ctl(username)
    ):
        raise InvalidInput(
            "'config.username' must be a non-empty user name", field="config.username"
        )
    password = raw.get("password")
    if password is not None and (
        not isinstance(password, str) or not password or len(password) > 1024 or _has_ctl(password)
    ):
        raise InvalidInput(
            "'config.password' must be a non-empty password of up to 1024 characters",
            field="config.password",
        )
    if password is not None and username is None:
        raise InvalidInput(
            "'config.username' is required when a password is set", field="config.username"
        )
    if username is not None and password is None:
        raise InvalidInput(
            "'config.password' is required when a user name is set", field="config.password"
        )
    if password is not None and security == "none":
        raise InvalidInput(
            "a password is only sent over an encrypted connection: set 'config.security' "
            "to starttls or tls",
            field="config.security",
        )
    sender = _address(raw.get("from"), "config.from")
    to = raw.get("to")
    if not isinstance(to, list) or not to:
        raise InvalidInput(
            "'config.to' must list at least one recipient address", field="config.to"
        )
    if len(to) > MAX_RECIPIENTS:
        raise InvalidInput(
            f"'config.to' may list at most {MAX_RECIPIENTS} recipients", field="config.to"
        )
    recipients = [_address(item, "config.to") for item in to]
    config: dict[str, Any] = {
        "host": host.strip(),
        "port": port,
        "security": security,
        "from": sender,
        "to": recipients,
    }
    if username is not None:
        config["username"] = username
    secrets = {"password": password} if password is not None else {}
    return config, secrets


# -- fields ----------------------------------------------------------------


def _kind(value: Any) -> str:
    if value not in KINDS:
        raise InvalidInput(f"'kind' must be one of {', '.join(KINDS)}", field="kind")
    return str(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("'name' is required", field="name")
    name = value.strip()
    if len(name) > MAX_NAME_LEN or _has_ctl(name):
        raise InvalidInput(
            f"'name' must be at most {MAX_NAME_LEN} printable characters", field="name"
        )
    return name


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"'{name}' must be true or false", field=name)
    return value


def _severity(value: Any) -> str:
    if value not in SEVERITIES:
        raise InvalidInput(
            f"'min_severity' must be one of {', '.join(SEVERITIES)}", field="min_severity"
        )
    return str(value)


def _http_url(value: Any, name: str, credentials_hint: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"'{name}' is required", field=name)
    url = value.strip()
    if len(url) > MAX_URL_LEN or any(c.isspace() or _is_ctl(c) for c in url):
        raise InvalidInput(
            f"'{name}' must be a URL without spaces (up to {MAX_URL_LEN} characters)", field=name
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError on a port out of range
    except ValueError:
        raise InvalidInput(f"'{name}' is not a valid URL", field=name) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"'{name}' must start with http:// or https://", field=name)
    if not parts.hostname:
        raise InvalidInput(f"'{name}' must name a host, like https://host/path", field=name)
    if "@" in parts.netloc:
        # Config is shown and logged; a password in it would leak.
        raise InvalidInput(
            f"'{name}' must not contain a user name or password: {credentials_hint}", field=name
        )
    return url


def _secret_header(value: Any) -> str:
    fmt = "'config.secret_header' must look like 'Name: value' (e.g. 'X-Token: s3cret')"
    if not isinstance(value, str) or len(value) > 4096 or _has_ctl(value):
        raise InvalidInput(fmt, field="config.secret_header")
    name, sep, secret = value.partition(":")
    name, secret = name.strip(), secret.strip()
    if not sep or not _HEADER_NAME.match(name) or not secret:
        raise InvalidInput(fmt, field="config.secret_header")
    if name.lower() in _RESERVED_HEADERS:
        raise InvalidInput(
            f"'config.secret_header' cannot set the {name} header; use a header of its own",
            field="config.secret_header",
        )
    return f"{name}: {secret}"


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value.strip()) > 254 or not _ADDRESS.match(value.strip()):
        shown = value if isinstance(value, str) and len(value) <= 80 else None
        what = f"{shown!r} is not" if shown is not None else "must be"
        raise InvalidInput(f"'{name}': {what} an e-mail address like ops@example.com", field=name)
    return value.strip()


def secret_header_parts(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()


def _without_nulls(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v is not None}


def _require_object(value: Any, what: str, name: str | None) -> None:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object", field=name)


def _refuse_unknown(value: dict[str, Any], allowed: Any, what: str, name: str | None) -> None:
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{what} has unknown field(s): {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})",
            field=unknown[0] if name is None else f"{name}.{unknown[0]}",
        )


def _is_ctl(c: str) -> bool:
    return ord(c) < 0x20 or ord(c) == 0x7F


def _has_ctl(text: str) -> bool:
    return any(_is_ctl(c) for c in text)
