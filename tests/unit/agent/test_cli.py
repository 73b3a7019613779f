"""The agent's command line, including enrolment against a real TLS server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import cli, protocol
from agent.config import AgentConfig, load_config, save_config
from agent.secrets_file import SecretsFile
from agent.version import __version__
from tests.helpers.tls import make_tls

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "one-time-token-abcdef"
BEARER = "bearer-0123456789-very-secret"


@dataclass
class EnrolServer:
    url: str
    pin: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
async def enrol_server(tmp_path: Path) -> AsyncIterator[EnrolServer]:
    ctx, pin = make_tls(tmp_path / "tls")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = EnrolServer(url=f"https://127.0.0.1:{sock.getsockname()[1]}", pin=pin)

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        server.requests.append(body)
        if server.status == 401 or body.get("token") != TOKEN:
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "token invalid or expired"}},
                status=401,
            )
        if server.status != 200:
            return web.json_response(
                {"error": {"code": "internal", "message": "boom"}}, status=server.status
            )
        return web.json_response({"host_id": 7, "bearer": BEARER, "hostname": body["hostname"]})

    app = web.Application()
    app.router.add_post(protocol.ENROL_PATH, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def enrol_args(server: EnrolServer, tmp_path: Path, **overrides: str) -> list[str]:
    values = {
        "--server": server.url,
        "--token": TOKEN,
        "--cert-sha256": server.pin,
        "--config": str(tmp_path / "etc" / "agent.toml"),
        "--state-dir": str(tmp_path / "state"),
        "--restic": "/usr/bin/restic",
        "--hostname": "web-01",
    }
    values.update(overrides)
    args = ["enrol"]
    for k, v in values.items():
        args += [k, v]
    return args


def _colon_upper(pin: str) -> str:
    return ":".join(pin[i : i + 2] for i in range(0, len(pin), 2)).upper()


async def test_enrol_writes_private_config_and_encrypted_secrets(
    enrol_server: EnrolServer, tmp_path: Path
) -> None:
    # The pin as other tools print it (colons, upper case) must be accepted.
    code, out, err = await run_cli(
        *enrol_args(enrol_server, tmp_path, **{"--cert-sha256": _colon_upper(enrol_server.pin)})
    )
    assert code == 0, err
    assert err == ""
    assert "Enrolled as host 'web-01' (id 7)" in out
    assert BEARER not in out

    (req,) = enrol_server.requests
    assert req["token"] == TOKEN
    assert req["hostname"] == "web-01"
    assert req["agent_version"] == __version__
    assert req["restic_version"] == "0.14.0"
    assert req["os"] == "linux"

    config_path = tmp_path / "etc" / "agent.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    cfg = load_config(config_path)
    assert cfg.server_url == enrol_server.url
    assert cfg.cert_sha256 == enrol_server.pin
    assert cfg.host_id == 7
    assert cfg.hostname == "web-01"
    assert cfg.restic_path == "/usr/bin/restic"
    assert cfg.state_dir == str(tmp_path / "state")

    secrets_path = tmp_path / "state" / "secrets.bin"
    key_path = tmp_path / "etc" / "agent.toml.key"
    assert stat.S_IMODE(secrets_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for path in (config_path, secrets_path, key_path):
        assert BEARER.encode() not in path.read_bytes()
    assert SecretsFile(secrets_path, key_path).load() == {"bearer": BEARER}


async def test_enrol_takes_the_token_from_the_environment(
    enrol_server: EnrolServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = enrol_args(enrol_server, tmp_path)
    i = args.index("--token")
    del args[i : i + 2]
    code, _out, err = await run_cli(*args)
    assert code == 2 and "RM_ENROL_TOKEN" in err and enrol_server.requests == []
    monkeypatch.setenv("RM_ENROL_TOKEN", TOKEN)
    code, _out, err = await run_cli(*args)
    assert code == 0, err
    (req,) = enrol_server.requests
    assert req["token"] == TOKEN


async def test_enrol_with_wrong_pin_fails_clearly_and_writes_nothing(
    enrol_server: EnrolServer, tmp_path: Path
) -> None:
    wrong = "ab" * 32
    code, out, err = await run_cli(*enrol_args(enrol_server, tmp_path, **{"--cert-sha256": wrong}))
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "does not match --cert-sha256" in err
    assert "check the fingerprint shown in the app" in err
    assert enrol_server.pin in err  # what the server presented, to compare
    assert enrol_server.requests == []  # the token never left this host
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "state").exists()


async def test_enrol_with_rejected_token_writes_nothing(
    enrol_server: EnrolServer, tmp_path: Path
) -> None:
    code, _out, err = await run_cli(*enrol_args(enrol_server, tmp_path, **{"--token": "nope"}))
    assert code == 1
    assert "rejected the enrolment token" in err
    assert "token invalid or expired" in err
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "state").exists()


async def test_enrol_server_error_is_reported(enrol_server: EnrolServer, tmp_path: Path) -> None:
    enrol_server.status = 500
    code, _out, err = await run_cli(*enrol_args(enrol_server, tmp_path))
    assert code == 1
    assert "HTTP 500" in err
    assert not (tmp_path / "etc").exists()


async def test_enrol_unreachable_server(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    code, _out, err = await run_cli(
        "enrol", "--server", f"https://127.0.0.1:{port}", "--token", TOKEN,
        "--cert-sha256", "ab" * 32, "--config", str(tmp_path / "a.toml"),
        "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert code == 1
    assert "cannot connect to" in err
    assert not (tmp_path / "a.toml").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"--cert-sha256": "not-hex"}, "64 hexadecimal digits"),
        ({"--server": "http://127.0.0.1:1"}, "https://HOST:PORT"),
        ({"--token": "  "}, "--token must not be empty"),
        ({"--restic": "/nonexistent/restic"}, "--restic"),
    ],
)
async def test_enrol_usage_errors_exit_2(
    enrol_server: EnrolServer, tmp_path: Path, override: dict[str, str], expected: str
) -> None:
    code, _out, err = await run_cli(*enrol_args(enrol_server, tmp_path, **override))
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert enrol_server.requests == []


def test_missing_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = io.StringIO()
    assert cli.main(["enrol", "--server", "https://x:1"], stderr=err) == 2
    assert "required" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    err = io.StringIO()
    assert cli.main([], stderr=err) == 2
    assert "missing command" in err.getvalue()
    err = io.StringIO()
    assert cli.main(["frobnicate"], stderr=err) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"restic-manager-agent {__version__}"


def test_run_without_config_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert cli.main(["run", "--config", str(tmp_path / "missing.toml")], stderr=err) == 2
    assert "does not exist" in err.getvalue()
    assert "Enrol this host first" in err.getvalue()


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('server_url = "http://plain"\n')
    err = io.StringIO()
    assert cli.main(["run", "--config", str(path)], stderr=err) == 2
    assert "invalid" in err.getvalue()


def test_python_dash_m_agent_is_the_same_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"restic-manager-agent {__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    json.dumps(done.stderr)  # one printable line, no traceback
    assert "Traceback" not in done.stderr


def test_run_logs_to_stderr_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    # Nothing listens on the port: the agent keeps retrying, and a service
    # manager's SIGTERM must still stop it cleanly.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config_path = tmp_path / "agent.toml"
    state = tmp_path / "state"
    save_config(
        config_path,
        AgentConfig(
            server_url=f"https://127.0.0.1:{port}",
            cert_sha256="ab" * 32,
            host_id=1,
            state_dir=str(state),
            restic_path="/usr/bin/restic",
        ),
    )
    SecretsFile(state / "secrets.bin", tmp_path / "agent.toml.key").save({"bearer": BEARER})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "cannot reach the control plane" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = "".join(seen) + rest
    assert proc.returncode == 0, log_text
    assert "agent stopped" in log_text
    assert "Traceback" not in log_text
    assert BEARER not in log_text
    # "2025-01-01 12:00:00,123 INFO message"
    first = seen[0].split()
    assert first[2] in ("INFO", "WARNING", "ERROR"), seen[0]


def test_default_state_dir_per_platform() -> None:
    from agent.platform_info import default_state_dir

    assert default_state_dir({}, system="linux", root=True) == Path("/var/lib/restic-manager-agent")
    assert default_state_dir(
        {"XDG_STATE_HOME": "/home/u/.st", "HOME": "/home/u"}, system="linux", root=False
    ) == Path("/home/u/.st/restic-manager-agent")
    assert default_state_dir({"HOME": "/home/u"}, system="linux", root=False) == Path(
        "/home/u/.local/state/restic-manager-agent"
    )
    assert (
        default_state_dir({"ProgramData": r"D:\PD"}, system="windows", root=False)
        == Path(r"D:\PD") / "restic-manager-agent"
    )


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("ARM64", "arm64")],
)
def test_arch_is_normalised(machine: str, expected: str) -> None:
    from agent.platform_info import normalize_arch

    assert normalize_arch(machine) == expected
