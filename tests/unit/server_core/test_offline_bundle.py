"""Offline bundles: what goes into the file, what is checked before a token is
minted, the token it carries, the audit trail, and the API route.

Real SQLite store, real enrolment service, the real installers/ folder and
small stand-in agent binaries (their bytes are only copied and hashed here;
tests/integration/test_offline_bundle.py installs a real one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server_core.api_bundles import OfflineBundlesApi
from server_core.api_common import ACTOR_KEY, Handler, error_response
from server_core.crypto import SecretBox
from server_core.errors import Conflict, InvalidInput, NotFound, ServiceError
from server_core.events import EventBus
from server_core.models import EnrolmentToken, Host
from server_core.offline_bundle import (
    BundleRequest,
    OfflineBundleService,
    bundle_filename,
    parse_bundle_request,
)
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR, Actor, ServiceContext
from server_core.services.enrolment import AgentEndpoint, EnrolmentService, parse_new_host
from server_core.store import Store
from tests.unit.server_core.conftest import RecordingAgents

ROOT = Path(__file__).resolve().parents[3]
INSTALLERS = ROOT / "installers"
SERVER_URL = "https://backup.example:8765"
PIN = "ab" * 32


def elf(machine: int, size: int = 4096) -> bytes:
    """The start of a 64-bit little-endian ELF executable for ``machine``."""
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 2, machine)
    return header + bytes(size - len(header))


def pe(machine: int, size: int = 4096) -> bytes:
    """The start of a PE (.exe) file for ``machine``."""
    head = bytearray(size)
    head[0:2] = b"MZ"
    head[60:64] = struct.pack("<I", 128)
    head[128:132] = b"PE\0\0"
    head[132:134] = struct.pack("<H", machine)
    return bytes(head)


@dataclass
class Env:
    store: Store
    enrolment: EnrolmentService
    bundles: OfflineBundleService
    agents_dir: Path
    tmp: Path
    host_id: int
    first_token_id: int


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    ctx = ServiceContext(
        store=store, box=SecretBox(os.urandom(32)), bus=EventBus(), agents=RecordingAgents()
    )
    enrolment = EnrolmentService(ctx, install_command=lambda token: f"install {token}")
    agents_dir = tmp_path / "agents"
    agents_dir.mkdir()
    agent = agents_dir / "restic-manager-agent-linux-amd64"
    agent.write_bytes(elf(62, 200_000))
    agent.with_name(agent.name + ".json").write_text(json.dumps({"version": "9.8.7"}))
    bundles = OfflineBundleService(
        ctx,
        enrolment,
        endpoint=lambda: AgentEndpoint(SERVER_URL, PIN),
        agents_dir=agents_dir,
        installers_dir=INSTALLERS,
    )
    grant = await enrolment.add_host(
        parse_new_host(
            {
                "hostname": "vault",
                "repository": {"url": "/srv/restic", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            }
        ),
        OPERATOR,
    )
    assert grant.token_id is not None
    try:
        yield Env(store, enrolment, bundles, agents_dir, tmp_path, grant.host_id, grant.token_id)
    finally:
        await store.close()


async def token_states(env: Env) -> dict[int, str]:
    return {t.id: t.state for t in await env.enrolment.list_tokens(env.host_id)}


def split_sh(data: bytes) -> tuple[str, bytes, int]:
    """(header text, payload, offset) of a self-extracting bundle."""
    offset = int(re.search(rb"^PAYLOAD_OFFSET=(\d+)$", data, re.M).group(1))  # type: ignore[union-attr]
    return data[: offset - 1].decode(), data[offset - 1 :], offset


async def test_a_linux_bundle_carries_the_agent_restic_scripts_and_a_fresh_token(env: Env):
    restic = env.tmp / "restic"
    restic.write_bytes(elf(62, 100_000))
    dest = env.tmp / "out" / "vault.sh"
    dest.parent.mkdir()
    seen: list[tuple[float, str]] = []
    bundle = await env.bundles.build(
        BundleRequest(env.host_id, "linux", "amd64", restic),
        dest,
        OPERATOR,
        progress=lambda fraction, what: seen.append((fraction, what)),
    )

    data = dest.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o600  # it holds a secret
    assert bundle.size == len(data) and bundle.sha256 == hashlib.sha256(data).hexdigest()
    assert bundle.filename == "restic-manager-agent-vault-linux-amd64.sh"
    assert bundle.includes_restic and bundle.agent_version == "9.8.7"
    assert [p.name for p in dest.parent.iterdir()] == ["vault.sh"]  # no partial file left

    header, payload, _ = split_sh(data)
    assert header.startswith("#!/bin/sh\n")
    assert "treat it like a password" in header
    assert f"RM_SERVER={SERVER_URL}\n" in header
    assert f"RM_CERT_SHA256={PIN}\n" in header
    assert f"RM_TOKEN={bundle.grant.token}\n" in header
    assert hashlib.sha256(payload).hexdigest() in header
    assert '\nmain "$@"\nexit $?\n' in header  # the shell never reads the payload

    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            "SHA256SUMS",
            "restic-manager-agent-linux-amd64",
            "restic",
            "install.sh",
            "uninstall.sh",
            "restic-manager-agent.service",
        ]
        files = {name: tar.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
    assert members["restic-manager-agent-linux-amd64"].mode == 0o755
    assert members["restic-manager-agent.service"].mode == 0o644
    assert (
        files["restic-manager-agent-linux-amd64"]
        == (env.agents_dir / "restic-manager-agent-linux-amd64").read_bytes()
    )
    assert files["restic"] == restic.read_bytes()
    assert files["install.sh"] == (INSTALLERS / "install.sh").read_bytes()
    sums = dict(reversed(line.split("  ")) for line in files["SHA256SUMS"].decode().splitlines())
    for name, content in files.items():
        if name != "SHA256SUMS":
            assert sums[name] == hashlib.sha256(content).hexdigest(), name

    # A fresh token: active; the one the Add-host page showed is revoked.
    states = await token_states(env)
    assert states[bundle.grant.token_id] == "active"  # type: ignore[index]
    assert states[env.first_token_id] == "revoked"

    # Audited, without the secret.
    entries = await env.store.call(lambda: list_audit(action="offline_bundle.exported"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry.target_id == str(env.host_id) and entry.actor_kind == "operator"
    assert entry.payload["sha256"] == bundle.sha256 and entry.payload["includes_restic"] is True
    assert bundle.grant.token not in json.dumps(entry.payload)

    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) > 5


async def test_the_bundle_unpacks_itself_and_hands_install_sh_its_arguments(env: Env):
    dest = env.tmp / "vault.sh"
    bundle = await env.bundles.build(BundleRequest(env.host_id, "linux", "amd64"), dest, OPERATOR)
    # install.sh's --help ends the run before it touches anything: what runs it
    # is the header, which checks and unpacks the archive first.
    out = subprocess.run(
        ["sh", str(dest), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "--offline DIR" in out.stdout
    assert bundle.grant.token not in out.stdout + out.stderr

    # A bundle cut short is refused before anything runs.
    short = env.tmp / "short.sh"
    short.write_bytes(dest.read_bytes()[:-1000])
    cut = subprocess.run(["sh", str(short)], capture_output=True, text=True, timeout=30)
    assert cut.returncode == 1 and "damaged or incomplete" in cut.stderr


async def test_a_windows_bundle_is_a_zip_with_the_scripts_and_its_config(env: Env):
    exe = env.agents_dir / "restic-manager-agent-windows-amd64.exe"
    exe.write_bytes(pe(0x8664, 50_000))
    restic = env.tmp / "restic.exe"
    restic.write_bytes(pe(0x8664, 30_000))
    dest = env.tmp / "vault.zip"
    bundle = await env.bundles.build(
        BundleRequest(env.host_id, "windows", "amd64", restic), dest, OPERATOR
    )
    assert bundle.filename == "restic-manager-agent-vault-windows-amd64.zip"
    assert dest.stat().st_mode & 0o777 == 0o600
    assert bundle.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    with zipfile.ZipFile(dest) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert names == {
            "restic-manager-agent.exe",
            "restic.exe",
            "install.ps1",
            "uninstall.ps1",
            "install.cmd",
            "bundle.json",
            "SHA256SUMS",
            "README.txt",
        }
        config = json.loads(zf.read("bundle.json"))
        assert zf.read("restic-manager-agent.exe") == exe.read_bytes()
        assert zf.read("install.ps1") == (INSTALLERS / "install.ps1").read_bytes()
        sums = zf.read("SHA256SUMS").decode()
        cmd = zf.read("install.cmd").decode()
    assert config["server_url"] == SERVER_URL and config["cert_sha256"] == PIN
    assert config["token"] == bundle.grant.token
    assert f"{hashlib.sha256(exe.read_bytes()).hexdigest()}  restic-manager-agent.exe" in sums
    assert "-Offline" in cmd and "\r\n" in cmd


async def test_a_missing_windows_agent_is_named_and_mints_no_token(env: Env):
    before = await token_states(env)
    with pytest.raises(NotFound) as refused:
        await env.bundles.build(
            BundleRequest(env.host_id, "windows", "amd64"), env.tmp / "x.zip", OPERATOR
        )
    message = refused.value.message
    assert "no agent build for windows/amd64" in message
    assert "restic-manager-agent-windows-amd64.exe" in message
    assert "bundled: linux/amd64" in message
    assert await token_states(env) == before  # the install command shown still works
    assert not (env.tmp / "x.zip").exists()


@pytest.mark.parametrize(
    ("os_name", "content", "expected"),
    [
        ("linux", elf(183), "is restic for linux/arm64, but this bundle is for linux/amd64"),
        ("linux", b"#!/bin/sh\necho restic\n" + bytes(100), "is not a Linux (ELF) program"),
        ("linux", pe(0x8664), "is restic for windows/amd64"),
        ("windows", elf(62), "is restic for linux/amd64, but this bundle is for windows/amd64"),
        ("windows", b"PK\x03\x04" + bytes(200), "is not a Windows (.exe) program"),
        ("linux", b"tiny", "does not look like a restic binary"),
    ],
)
async def test_a_wrong_restic_binary_is_refused_before_a_token_is_minted(
    env: Env, os_name: str, content: bytes, expected: str
):
    (env.agents_dir / "restic-manager-agent-windows-amd64.exe").write_bytes(pe(0x8664))
    restic = env.tmp / "picked"
    restic.write_bytes(content)
    before = await token_states(env)
    with pytest.raises(InvalidInput) as refused:
        await env.bundles.build(
            BundleRequest(env.host_id, os_name, "amd64", restic), env.tmp / "b", OPERATOR
        )
    assert expected in refused.value.message and refused.value.field == "restic_path"
    assert await token_states(env) == before


async def test_missing_restic_and_bad_destinations_are_refused(env: Env):
    with pytest.raises(InvalidInput, match="cannot be read"):
        await env.bundles.build(
            BundleRequest(env.host_id, "linux", "amd64", env.tmp / "nope"), env.tmp / "b", OPERATOR
        )
    with pytest.raises(InvalidInput, match="does not exist"):
        await env.bundles.build(
            BundleRequest(env.host_id, "linux", "amd64"), env.tmp / "no" / "b.sh", OPERATOR
        )
    with pytest.raises(InvalidInput, match="is a folder"):
        await env.bundles.build(BundleRequest(env.host_id, "linux", "amd64"), env.tmp, OPERATOR)
    assert set((await token_states(env)).values()) == {"active"}


async def test_enrolled_or_unknown_hosts_get_no_bundle(env: Env):
    await env.store.call(
        lambda: Host.update(enrolled_at=time.time()).where(Host.id == env.host_id).execute()
    )
    with pytest.raises(Conflict, match="already enrolled"):
        await env.bundles.build(
            BundleRequest(env.host_id, "linux", "amd64"), env.tmp / "b.sh", OPERATOR
        )
    with pytest.raises(NotFound, match="host 999 does not exist"):
        await env.bundles.build(BundleRequest(999, "linux", "amd64"), env.tmp / "b.sh", OPERATOR)


async def test_a_failed_write_revokes_the_token_it_minted(env: Env, monkeypatch):
    import server_core.offline_bundle as ob

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ob, "_write_linux", broken)
    with pytest.raises(OSError, match="No space left"):
        await env.bundles.build(
            BundleRequest(env.host_id, "linux", "amd64"), env.tmp / "b.sh", OPERATOR
        )
    rows = await env.store.call(
        lambda: list(EnrolmentToken.select().where(EnrolmentToken.host == env.host_id))
    )
    assert len(rows) == 2 and all(r.revoked_at is not None for r in rows)
    assert list(env.tmp.glob("*b.sh*")) == []


def test_requests_are_validated_at_the_edge():
    assert parse_bundle_request(3, {"os": "linux"}) == BundleRequest(3, "linux", "amd64", None)
    req = parse_bundle_request(3, {"os": "windows", "arch": "arm64", "restic_path": "/x/r.exe"})
    assert req == BundleRequest(3, "windows", "arm64", Path("/x/r.exe"))
    for body, field in [
        ({}, "os"),
        ({"os": "darwin"}, "os"),
        ({"os": "linux", "arch": "AMD 64"}, "arch"),
        ({"os": "linux", "restic_path": "relative/restic"}, "restic_path"),
        ({"os": "linux", "token": "x"}, "token"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            parse_bundle_request(1, body)
        assert refused.value.field == field, body
    assert bundle_filename("a b/../c", "linux", "arm64") == (
        "restic-manager-agent-a_b_.._c-linux-arm64.sh"
    )


# -- the API route ----------------------------------------------------------------------


@web.middleware
async def as_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What ApiListener's middlewares do around a route: an actor, and errors as JSON."""
    request[ACTOR_KEY] = Actor("api", "token:1")
    try:
        return await handler(request)
    except ServiceError as exc:
        return error_response(exc.status, exc.code, exc.message, field=exc.field)


async def test_the_api_answers_the_bundle_as_an_attachment(env: Env):
    app = web.Application(middlewares=[as_api])
    OfflineBundlesApi(env.bundles).routes(app.router)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            f"/api/v1/hosts/{env.host_id}/offline-bundle", json={"os": "linux"}
        )
        assert resp.status == 200, await resp.text()
        body = await resp.read()
        assert resp.headers["Content-Disposition"] == (
            'attachment; filename="restic-manager-agent-vault-linux-amd64.sh"'
        )
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-SHA256"] == hashlib.sha256(body).hexdigest()
        header, _, _ = split_sh(body)
        token = re.search(r"^RM_TOKEN=(\S+)$", header, re.M).group(1)  # type: ignore[union-attr]
        states = {t.id: t.state for t in await env.enrolment.list_tokens(env.host_id)}
        assert list(states.values()).count("active") == 1

        missing = await client.post(
            f"/api/v1/hosts/{env.host_id}/offline-bundle", json={"os": "windows"}
        )
        assert missing.status == 404
        assert "windows/amd64" in (await missing.json())["error"]["message"]
        bad = await client.post(f"/api/v1/hosts/{env.host_id}/offline-bundle", json={"os": "x"})
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "os"

    entries = await env.store.call(lambda: list_audit(action="offline_bundle.exported"))
    assert [e.actor_id for e in entries] == ["token:1"]
    assert token not in json.dumps([e.payload for e in entries])
