"""Agent binaries and install files over real HTTP, from real files on disk."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server_core import agent_downloads
from server_core.agent_downloads import (
    AgentDownloads,
    agent_file_name,
    bundled_agents_dir,
    bundled_installers_dir,
    list_bundled,
)

LINUX_BYTES = b"\x7fELF linux amd64 build " * 1000
WINDOWS_BYTES = b"MZ windows build " * 500


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    d = tmp_path / "agents"
    d.mkdir()
    (d / "restic-manager-agent-linux-amd64").write_bytes(LINUX_BYTES)
    (d / "restic-manager-agent-linux-amd64.json").write_text(json.dumps({"version": "1.2.3"}))
    (d / "restic-manager-agent-windows-amd64.exe").write_bytes(WINDOWS_BYTES)
    # Names the module must never serve.
    (d / "restic-manager-agent-windows-arm64").write_bytes(b"no .exe")
    (d / "restic-manager-agent-linux-arm64.exe").write_bytes(b"stray .exe")
    (d / "restic-manager-agent-linux-amd64.sha256").write_text("sidecar\n")
    (d / "README").write_text("not an agent")
    return d


@pytest.fixture
def installers_dir(tmp_path: Path) -> Path:
    d = tmp_path / "installers"
    d.mkdir()
    (d / "install.sh").write_text("#!/bin/sh\necho install\n")
    (d / "restic-manager-agent.service").write_text("[Unit]\nDescription=agent\n")
    (d / "secret.txt").write_text("not served")
    return d


@pytest.fixture
async def client(
    agents_dir: Path, installers_dir: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, AgentDownloads]]:
    downloads = AgentDownloads(agents_dir, installers_dir)
    app = web.Application()
    downloads.routes(app.router)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield session, str(server.make_url("")), downloads
    finally:
        await server.close()


async def test_serves_the_bundled_binary_with_its_hash(client):
    session, base, _ = client
    async with session.get(f"{base}/agent/binary?os=linux&arch=amd64") as resp:
        assert resp.status == 200
        body = await resp.read()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "restic-manager-agent-linux-amd64" in resp.headers["Content-Disposition"]
        assert resp.headers["X-Content-SHA256"] == hashlib.sha256(LINUX_BYTES).hexdigest()
    assert body == LINUX_BYTES


async def test_sha256_is_in_sha256sum_format(client):
    session, base, _ = client
    async with session.get(f"{base}/agent/binary.sha256?os=windows&arch=amd64") as resp:
        assert resp.status == 200
        text = await resp.text()
    digest = hashlib.sha256(WINDOWS_BYTES).hexdigest()
    assert text == f"{digest}  restic-manager-agent-windows-amd64.exe\n"


async def test_head_answers_without_a_body(client):
    session, base, _ = client
    async with session.head(f"{base}/agent/binary?os=linux&arch=amd64") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(LINUX_BYTES)


async def test_missing_build_names_what_is_bundled(client, agents_dir: Path):
    session, base, _ = client
    for path in ("/agent/binary", "/agent/binary.sha256"):
        async with session.get(f"{base}{path}?os=linux&arch=arm64") as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
        assert error["code"] == "not_bundled"
        assert error["bundled"] == ["linux/amd64", "windows/amd64"]
        assert "linux/arm64" in error["message"]
        assert "bundled: linux/amd64, windows/amd64" in error["message"]
        assert "packaging/build.py agent" in error["message"]
        # Anyone on the LAN may ask: no server path in the answer.
        assert str(agents_dir) not in error["message"]


async def test_nothing_bundled_says_none(tmp_path: Path):
    downloads = AgentDownloads(tmp_path / "does-not-exist", tmp_path)
    app = web.Application()
    downloads.routes(app.router)
    async with (
        TestServer(app, host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/agent/binary?os=linux&arch=amd64")) as resp,
    ):
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert error["bundled"] == []
    assert "(bundled: none)" in error["message"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("arch=amd64", "os"),
        ("os=linux", "arch"),
        ("os=Linux&arch=amd64", "os"),
        ("os=linux&arch=../../etc/passwd", "arch"),
        ("os=linux&arch=" + "a" * 17, "arch"),
    ],
)
async def test_bad_platform_is_refused_naming_the_field(client, query: str, field: str):
    session, base, _ = client
    async with session.get(f"{base}/agent/binary?{query}") as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["field"] == field
    assert f"'{field}'" in error["message"]


async def test_a_replaced_binary_is_hashed_again(client, agents_dir: Path):
    session, base, _ = client
    url = f"{base}/agent/binary.sha256?os=linux&arch=amd64"
    async with session.get(url) as resp:
        first = (await resp.text()).split()[0]
    new = agents_dir / "new"
    new.write_bytes(b"a newer build")
    os.replace(new, agents_dir / "restic-manager-agent-linux-amd64")
    async with session.get(url) as resp:
        second = (await resp.text()).split()[0]
    assert first == hashlib.sha256(LINUX_BYTES).hexdigest()
    assert second == hashlib.sha256(b"a newer build").hexdigest()


async def test_install_files_are_served_from_the_installers_dir(client):
    session, base, _ = client
    async with session.get(f"{base}/install/install.sh") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/x-shellscript")
        assert await resp.text() == "#!/bin/sh\necho install\n"
    async with session.get(f"{base}/install/restic-manager-agent.service") as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith("[Unit]")


async def test_absent_install_file_is_a_clear_404(client, installers_dir: Path):
    session, base, _ = client
    async with session.get(f"{base}/install/install.ps1") as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert error["code"] == "not_bundled"
    assert "install.ps1 is not bundled" in error["message"]
    assert str(installers_dir) not in error["message"]


@pytest.mark.parametrize("name", ["secret.txt", "..%2Fagents%2Frestic-manager-agent-linux-amd64"])
async def test_only_the_known_install_files_are_served(client, name: str):
    session, base, _ = client
    async with session.get(f"{base}/install/{name}") as resp:
        assert resp.status == 404
        body = await resp.text()
    assert "not served" not in body and "ELF" not in body
    assert (
        "install.ps1, install.sh, restic-manager-agent.service"
        in json.loads(body)["error"]["message"]
    )


def test_list_bundled_reads_versions_and_skips_strays(agents_dir: Path):
    (agents_dir / "restic-manager-agent-windows-amd64.exe.json").write_text("{not json")
    found = list_bundled(agents_dir)
    assert [(a.platform, a.path.name, a.version) for a in found] == [
        ("linux/amd64", "restic-manager-agent-linux-amd64", "1.2.3"),
        ("windows/amd64", "restic-manager-agent-windows-amd64.exe", None),
    ]


def test_file_names():
    assert agent_file_name("linux", "arm64") == "restic-manager-agent-linux-arm64"
    assert agent_file_name("windows", "amd64") == "restic-manager-agent-windows-amd64.exe"


def test_bundled_dirs_in_a_checkout_and_in_the_packaged_app(monkeypatch, tmp_path: Path):
    checkout = Path(agent_downloads.__file__).resolve().parents[1]
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert bundled_agents_dir() == checkout / "dist" / "agents"
    assert bundled_installers_dir() == checkout / "installers"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert bundled_agents_dir() == tmp_path / "agents"
    assert bundled_installers_dir() == tmp_path / "installers"
