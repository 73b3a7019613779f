from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    ConfigError,
    create_private_file,
    load_config,
    save_config,
    toml_dumps,
    write_private_file_atomic,
)

PIN = "ab" * 32


def _cfg(**overrides: object) -> AgentConfig:
    base = AgentConfig(
        server_url="https://desk.lan:8765",
        cert_sha256=PIN,
        host_id=7,
        state_dir="/var/lib/restic-manager-agent",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_round_trip_minimal_and_full(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    minimal = _cfg()
    save_config(path, minimal)
    assert load_config(path) == minimal

    full = _cfg(
        restic_path="C:\\Program Files\\restic\\restic.exe",
        hostname="web-01",
        restore_dir="~/restores",
        log_level="debug",
    )
    save_config(path, full)
    assert load_config(path) == full


def test_saved_file_is_readable_toml_without_null_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    save_config(path, _cfg())
    data = tomllib.loads(path.read_text())
    assert data == {
        "server_url": "https://desk.lan:8765",
        "cert_sha256": PIN,
        "host_id": 7,
        "state_dir": "/var/lib/restic-manager-agent",
        "log_level": "info",
    }
    assert path.read_text().startswith("# restic-manager agent configuration.")


@pytest.mark.parametrize(
    "text",
    [
        'quote " and backslash \\ and \\n literal',
        "newline\nand tab\tand cr\r",
        "control \x00\x01\x1f and DEL \x7f",
        "unicode é ✓ and astral 🔑",
        "'single' ''' \"\"\" [brackets] # not a comment = x",
    ],
)
def test_toml_strings_round_trip(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.toml"
    cfg = _cfg(hostname=text, restore_dir=text)
    save_config(path, cfg)
    assert load_config(path) == cfg


def test_toml_dumps_types() -> None:
    out = toml_dumps({"s": "x", "i": -3, "t": True, "f": False, "l": ["a", 'b"'], "e": []})
    assert tomllib.loads(out) == {
        "s": "x",
        "i": -3,
        "t": True,
        "f": False,
        "l": ["a", 'b"'],
        "e": [],
    }
    with pytest.raises(ConfigError):
        toml_dumps({"bad key": "x"})
    with pytest.raises(ConfigError):
        toml_dumps({"x": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="Unicode"):
        toml_dumps({"x": "\ud800"})


def test_fingerprint_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    colons = ":".join(["AB"] * 32)
    save_config(path, _cfg(cert_sha256=colons))
    assert load_config(path).cert_sha256 == PIN
    path.write_text(
        f'server_url = "https://h:1"\ncert_sha256 = "{colons}"\nhost_id = 1\nstate_dir = "/s"\n'
    )
    assert load_config(path).cert_sha256 == PIN


def test_save_is_0600_in_new_0700_dir_regardless_of_umask(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "etc" / "restic-manager-agent" / "agent.toml"
    save_config(path, _cfg())
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    save_config(path, _cfg(host_id=8))
    assert _mode(path) == 0o600
    assert load_config(path).host_id == 8
    assert [p.name for p in path.parent.iterdir()] == ["agent.toml"]


def test_save_leaves_existing_dir_mode_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    save_config(tmp_path / "agent.toml", _cfg())
    assert _mode(tmp_path) == 0o755


def test_save_refuses_invalid_config_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    save_config(path, _cfg())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="server_url"):
        save_config(path, _cfg(server_url="http://desk:8765"))
    assert path.read_bytes() == before


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*Enrol"):
        load_config(tmp_path / "nope.toml")


def test_bad_toml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('server_url = "https://h:1"\ncert_sha256 = \nhost_id = 1\n')
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_missing_and_unknown_keys_listed_together(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('server_url = "https://h:1"\ntoken = "secret"\n[extra]\nx = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "unknown key(s) extra, token" in msg
    assert "missing required key(s) cert_sha256, host_id, state_dir" in msg
    assert "secret" not in msg


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("host_id = true", "host_id must be an integer, got a boolean"),
        ('host_id = "7"', "host_id must be an integer, got a string"),
        ("host_id = 7.0", "host_id must be an integer, got a float"),
        ("host_id = 0", "host_id must be a positive integer"),
        ("hostname = 5", "hostname must be a string, got an integer"),
        ("hostname = []", "hostname must be a string, got an array"),
        ('hostname = ""', "hostname must not be empty"),
        ('log_level = "verbose"', "log_level must be one of debug, info"),
        ('state_dir = " "', "state_dir must not be empty"),
        ("state_dir = 2024-01-01", "state_dir must be a string, got a date/time"),
        ('server_url = "http://h:1"', "server_url must be an https:// or wss:// URL"),
        ('server_url = "https://"', "server_url must be an https:// or wss:// URL"),
        ('cert_sha256 = "abc"', "cert_sha256 must be the 64 hex digits"),
    ],
)
def test_wrong_values(tmp_path: Path, line: str, expected: str) -> None:
    good = {
        "server_url": '"https://h:8765"',
        "cert_sha256": f'"{PIN}"',
        "host_id": "3",
        "state_dir": '"/s"',
    }
    key = line.split(" = ")[0]
    good.pop(key, None)
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(f"{k} = {v}" for k, v in good.items()) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match="is invalid") as err:
        load_config(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_wss_url_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    save_config(path, _cfg(server_url="wss://10.0.0.2:8765/ws/agent"))
    assert load_config(path).server_url == "wss://10.0.0.2:8765/ws/agent"


def test_write_private_file_atomic_replaces_and_cleans_up(tmp_path: Path, umask_zero: None) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_private_file_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_create_private_file_never_replaces(tmp_path: Path, umask_zero: None) -> None:
    target = tmp_path / "sub" / "key"
    assert create_private_file(target, b"first") is True
    assert create_private_file(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["key"]
