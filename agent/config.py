"""The agent's configuration file (TOML), and private-file helpers.

The config holds no secret: the bearer token and repository credentials
live in the encrypted secrets file (see ``agent.secrets_file``), so this
file can be shown, diffed and copied freely. Standard library only, since
the agent is built into a standalone binary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_HEX64 = re.compile(r"[0-9a-f]{64}")

TomlValue = str | int | bool | Sequence[str]


class ConfigError(Exception):
    """The config file is missing or invalid; the message says what to fix."""


# What to do about a config file that is there but unusable.
_FIX = (
    " Correct the file, or enrol this host again to write a new one "
    "(run the install command from restic-manager's Add host page)."
)


@dataclass
class AgentConfig:
    server_url: str
    cert_sha256: str
    host_id: int
    state_dir: str
    restic_path: str | None = None
    hostname: str | None = None
    restore_dir: str | None = None
    log_level: str = "info"


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
_REQUIRED = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING]
_INT_FIELDS = {"host_id"}


def normalize_fingerprint(value: str) -> str:
    """Accept the pin as printed by other tools (upper case, ':'-separated)."""
    return value.strip().replace(":", "").lower()


def load_config(path: Path) -> AgentConfig:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"Agent config {path} does not exist. Enrol this host first: run the install "
            "command shown in restic-manager (Add host), or pass --config with the right path."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot read agent config {path}: {exc}. The agent's user must be able to read it."
        ) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Agent config {path} is not UTF-8 text (invalid byte at offset {exc.start}): "
            "it is damaged." + _FIX
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"Agent config {path} is not valid TOML: {exc}." + _FIX) from None

    problems: list[str] = []
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (valid keys: {', '.join(_FIELDS)})")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        problems.append(f"missing required key(s) {', '.join(missing)}")

    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _FIELDS:
            continue
        if name in _INT_FIELDS:
            # bool is a subclass of int; "host_id = true" must not pass as 1.
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} must be an integer, got {_toml_type(value)}")
                continue
        elif not isinstance(value, str):
            problems.append(f"{name} must be a string, got {_toml_type(value)}")
            continue
        values[name] = value
    if problems:
        raise ConfigError(f"Agent config {path} is invalid: " + "; ".join(problems) + "." + _FIX)

    cfg = AgentConfig(**values)
    cfg.cert_sha256 = normalize_fingerprint(cfg.cert_sha256)
    problems = validate_config(cfg)
    if problems:
        raise ConfigError(f"Agent config {path} is invalid: " + "; ".join(problems) + "." + _FIX)
    return cfg


def validate_config(cfg: AgentConfig) -> list[str]:
    """Value checks shared by load and save, so a bad config is never written."""
    problems: list[str] = []
    url = urlsplit(cfg.server_url)
    # Plain http/ws would put the bearer token on the LAN in clear text.
    if url.scheme not in ("https", "wss") or not url.hostname:
        problems.append(
            f"server_url must be an https:// or wss:// URL with a host, got {cfg.server_url!r}"
        )
    if not _HEX64.fullmatch(cfg.cert_sha256):
        problems.append(
            "cert_sha256 must be the 64 hex digits of the server certificate's SHA-256 "
            f"(as shown in restic-manager's Settings), got {cfg.cert_sha256!r}"
        )
    if cfg.host_id < 1:
        problems.append(f"host_id must be a positive integer, got {cfg.host_id}")
    if not cfg.state_dir.strip():
        problems.append("state_dir must not be empty")
    for name in ("restic_path", "hostname", "restore_dir"):
        value = getattr(cfg, name)
        if value is not None and not value.strip():
            problems.append(f"{name} must not be empty (leave it out to use the default)")
    if cfg.log_level not in LOG_LEVELS:
        problems.append(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    return problems


def save_config(path: Path, cfg: AgentConfig) -> None:
    cfg = dataclasses.replace(cfg, cert_sha256=normalize_fingerprint(cfg.cert_sha256))
    problems = validate_config(cfg)
    if problems:
        raise ConfigError("Refusing to write an invalid agent config: " + "; ".join(problems))
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    text = (
        "# restic-manager agent configuration.\n"
        "# No secrets here: the token and repository credentials are in the encrypted\n"
        "# secrets file in state_dir, whose key is kept beside this file.\n" + toml_dumps(values)
    )
    write_private_file_atomic(path, text.encode("utf-8"))


def toml_dumps(values: Mapping[str, TomlValue]) -> str:
    """Serialise a flat table of strings, ints, bools and lists of strings."""
    lines = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ConfigError(f"cannot write TOML key {key!r}: only bare keys are supported")
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_toml_string(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def _toml_string(value: str) -> str:
    # JSON's escapes (\" \\ \b \f \n \r \t \uXXXX) are all valid in a TOML basic
    # string. ensure_ascii stays off because JSON would write astral characters
    # as surrogate pairs, which TOML forbids; DEL is the one control character
    # JSON leaves raw and TOML does not accept.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"cannot write {value!r} to TOML: not valid Unicode text") from None
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, label in names.items():
        if type(value) is kind:
            return label
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _open_flags() -> int:
    return (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        # Without O_BINARY, Windows would translate "\n" in what we write.
        | getattr(os, "O_BINARY", 0)
    )


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` as 0700 if missing; an existing one is left alone."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask.
        directory.chmod(0o700)


def write_private_file_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is 0600 whatever the umask.

    Readers see the old or the new content, never a mix, even across a crash
    or power loss (temp file in the same dir, fsync, rename, fsync dir).
    """
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _open_flags(), 0o600)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) with ``data`` unless it exists; True if we created it.

    Never replaces an existing file and never leaves a partial one behind:
    the bytes are written to a temp file and hard-linked into place.
    """
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _open_flags(), 0o600)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # File systems without hard links (FAT, some network shares):
            # O_EXCL on the final name still guarantees we never replace a key.
            try:
                fd = os.open(path, _open_flags(), 0o600)
            except FileExistsError:
                return False
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _write_all(fd: int, data: bytes) -> None:
    if hasattr(os, "fchmod"):
        # The mode given to open() is filtered by the umask; this is not.
        os.fchmod(fd, 0o600)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":
        # Windows cannot open a directory for fsync; NTFS journals the rename.
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
