"""Attacks on the transport: an impostor server for a real agent process,
plain HTTP on the TLS agent port, and the operator API beyond loopback
(refused without a flag; with it, warned about and held off per source)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import keyring.backends.fail
import pytest

from agent import protocol as p
from agent.config import AgentConfig, save_config
from agent.enrol import secrets_file_for
from app import autostart
from server_core.control_plane import (
    ALLOW_REMOTE_API_FLAG,
    ControlPlane,
    ControlPlaneConfig,
    Endpoint,
    UnsafeApiListen,
)
from server_core.models import Host
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import enrol
from tests.helpers.fleet import BIN, child_env, free_port
from tests.helpers.tls import make_tls

BEARER = "rmb_" + "S3cretBearerNeverOnTheWire" * 2


def plane_config(tmp_path: Path, **extra: object) -> ControlPlaneConfig:
    return ControlPlaneConfig(
        data_dir=tmp_path / "data",
        agent_listen=Endpoint("127.0.0.1", 0),
        api_listen=extra.pop("api_listen", Endpoint("127.0.0.1", 0)),  # type: ignore[arg-type]
        keyring_backend=keyring.backends.fail.Keyring(),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(plane_config(tmp_path))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


# -- an agent pinned to one certificate meets another ------------------------------------


class Impostor:
    """A TLS server with a certificate of its own that records every byte it
    receives after the handshake."""

    def __init__(self, directory: Path) -> None:
        self.ssl, self.pin = make_tls(directory)
        self.handshakes = 0
        self.received = b""

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.ssl)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            while data := await reader.read(65536):
                self.received += data
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def test_a_real_agent_refuses_a_server_that_does_not_match_its_pin(tmp_path):
    impostor = Impostor(tmp_path / "impostor")
    server = await impostor.start()
    config_path = tmp_path / "etc" / "agent.toml"
    state = tmp_path / "state"
    genuine_pin = "ab" * 32  # the control plane it enrolled with
    save_config(
        config_path,
        AgentConfig(
            server_url=f"https://127.0.0.1:{impostor.port}",
            cert_sha256=genuine_pin,
            host_id=3,
            state_dir=str(state),
            hostname="db-02",
        ),
    )
    secrets_file_for(config_path, state).save({"bearer": BEARER})
    err_path = tmp_path / "agent.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(BIN / "restic-manager-agent"), "run", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=child_env(),
        )
    try:
        deadline = time.monotonic() + 30
        while "does not match" not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything it would send after the handshake
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        server.close()
        await server.wait_closed()
    text = err_path.read_text()
    assert impostor.handshakes >= 1  # it did reach the impostor ...
    assert impostor.received == b""  # ... and sent it nothing: no request, no bearer
    assert f"expected {genuine_pin}" in text and impostor.pin in text
    assert "the bearer was not sent" in text
    assert BEARER not in text


# -- plain HTTP on the TLS port --------------------------------------------------------------


async def plaintext(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_plain_http_to_the_agent_port_is_refused_without_harm(cp, tmp_path):
    grant = await cp.enrolment.add_host(
        parse_new_host({"hostname": "web1", "repository": {"url": "/srv/r", "password": "pw-1"}}),
        OPERATOR,
    )
    body = json.dumps(
        p.to_dict(
            p.EnrolRequest(
                token=grant.token, hostname="web1", os="linux", arch="amd64", agent_version="1"
            )
        )
    ).encode()
    answers = [
        await plaintext(
            cp.agent_port,
            b"POST " + p.ENROL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body,
        ),
        await plaintext(
            cp.agent_port,
            b"GET " + p.WS_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Authorization: Bearer rmb_whatever\r\n\r\n",
        ),
    ]
    # Never an HTTP answer: the bytes were not a TLS handshake, nothing read them as a request.
    assert all(not a.startswith(b"HTTP/") for a in answers), answers
    # The token sent in the clear was not redeemed: it still enrols over TLS.
    async with aiohttp.ClientSession() as session:
        reply = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, "web1")
    assert reply["host_id"] == grant.host_id
    host = await cp.store.call(Host.get_by_id, grant.host_id)
    assert host.last_ip == "127.0.0.1" and not host.online
    assert await cp.store.call(list_audit, action="enrolment.refused") == []


# -- the operator API stays on loopback unless told otherwise ------------------------------


def lan_address() -> str | None:
    """A non-loopback IPv4 address of this machine, or None."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else None


def test_serve_refuses_an_api_beyond_loopback_without_the_flag(tmp_path):
    api_port = free_port()
    run = subprocess.run(
        [
            str(BIN / "restic-manager"),
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--agent-listen",
            f"127.0.0.1:{free_port()}",
            "--api-listen",
            f"0.0.0.0:{api_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert ALLOW_REMOTE_API_FLAG in run.stderr and "plain HTTP" in run.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_desktop_app_refuses_an_api_beyond_loopback_before_qt(tmp_path):
    run = subprocess.run(
        [
            str(BIN / "restic-manager"),
            "--data-dir",
            str(tmp_path / "data"),
            "--api-listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(QT_QPA_PLATFORM="offscreen"),
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert ALLOW_REMOTE_API_FLAG in run.stderr
    assert not (tmp_path / "data").exists()


def app_env(tmp_path: Path) -> dict[str, str]:
    return child_env(
        QT_QPA_PLATFORM="offscreen",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_RUNTIME_DIR=str(tmp_path),
    )


@pytest.mark.parametrize("mode", ["serve", "desktop"])
async def test_with_the_flag_the_api_listens_beyond_loopback_and_says_so(tmp_path, mode):
    """The same flag for ``serve`` and the desktop app; both log the warning
    (the desktop app also shows it in its status bar, from ``warnings``)."""
    api_port = free_port()
    argv = [str(BIN / "restic-manager")]
    argv += ["serve", "--data-dir"] if mode == "serve" else ["--data-dir"]
    argv += [
        str(tmp_path / "data"),
        "--agent-listen",
        "127.0.0.1:0",
        "--api-listen",
        f"0.0.0.0:{api_port}",
        ALLOW_REMOTE_API_FLAG,
    ]
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=app_env(tmp_path))
    try:
        ready = "control plane is running" if mode == "serve" else "desktop app ready"
        deadline = time.monotonic() + 60
        while ready not in (text := log.read_text(errors="replace")):
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            await asyncio.sleep(0.1)
        assert f"listens on 0.0.0.0:{api_port}, not on loopback" in text
        assert "plain HTTP" in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_defaults_keep_the_api_on_loopback():
    from app.cli import build_parser

    parser = build_parser()
    gui = parser.parse_args([])
    serve = parser.parse_args(["serve"])
    assert gui.gui_api_listen.host == "127.0.0.1" and not gui.gui_allow_remote_api
    assert serve.api_listen.host == "127.0.0.1" and not serve.allow_remote_api
    assert ControlPlaneConfig(data_dir=Path("/nonexistent")).api_listen.host == "127.0.0.1"


async def test_a_control_plane_refuses_a_remote_api_unless_allowed(tmp_path):
    plane = ControlPlane(plane_config(tmp_path, api_listen=Endpoint("0.0.0.0", 0)))
    with pytest.raises(UnsafeApiListen):
        await plane.start()
    assert not (tmp_path / "data").exists()


async def test_an_allowed_remote_api_warns_and_holds_off_guessers(tmp_path):
    """With the flag the API listens beyond loopback, the app shows a warning
    (the GUI lists ``warnings`` in its status bar), start-at-login keeps the flag,
    and a remote source guessing tokens is rate limited and audited."""
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    plane = ControlPlane(
        plane_config(tmp_path, api_listen=Endpoint("0.0.0.0", 0), api_allow_remote=True)
    )
    await plane.start()
    try:
        assert any(ALLOW_REMOTE_API_FLAG in w and "plain HTTP" in w for w in plane.warnings)
        url = f"http://{address}:{plane.api_port}/api/v1/hosts"
        async with aiohttp.ClientSession() as session:
            statuses = []
            for i in range(14):
                headers = {"Authorization": f"Bearer rma_guess{i}"}
                async with session.get(url, headers=headers) as resp:
                    statuses.append(resp.status)
                    retry_after = resp.headers.get("Retry-After")
            # Loopback callers are not held off (the local scripts' own mistakes).
            for _ in range(14):
                async with session.get(plane.api_url + "/api/v1/hosts") as resp:
                    assert resp.status == 401
        assert statuses == [401] * 10 + [429] * 4
        assert retry_after is not None and int(retry_after) >= 1
        await asyncio.sleep(0.2)
        refused = await plane.store.call(list_audit, action="api.auth_refused")
        limited = await plane.store.call(list_audit, action="api.rate_limited")
        sources = sorted(r.payload["source_ip"] for r in refused)
        assert sources == sorted([address, "127.0.0.1"])
        assert [r.payload["source_ip"] for r in limited] == [address]
    finally:
        await plane.stop()
    command = autostart.launch_command(tmp_path, api_listen="0.0.0.0:8766", allow_remote_api=True)
    assert command[command.index("--api-listen") + 1] == "0.0.0.0:8766"
    assert ALLOW_REMOTE_API_FLAG in command
