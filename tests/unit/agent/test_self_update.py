"""The agent's self-update: download over the pinned TLS connection, SHA-256
check, the new binary's --version check, and the swap that keeps ``.old``."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agent import protocol, self_update
from agent.self_update import SelfUpdateError
from tests.helpers.tls import make_tls


def script(version: str, *, exit_code: int = 0) -> bytes:
    """A stand-in "agent binary": answers --version like the real one."""
    return (
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "restic-manager-agent {version}"; '
        f"exit {exit_code}; fi\nexit 1\n"
    ).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@dataclass
class BinaryServer:
    url: str
    pin: str
    body: bytes = b""
    status: int = 200
    header_sha: str | None = None
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        if self.status != 200:
            return web.json_response(
                {"error": {"code": "not_bundled", "message": "no agent build for linux/amd64"}},
                status=self.status,
            )
        headers = {"X-Content-SHA256": self.header_sha} if self.header_sha else {}
        return web.Response(body=self.body, headers=headers)


@pytest.fixture
async def binary_server(tmp_path: Path) -> AsyncIterator[BinaryServer]:
    ctx, pin = make_tls(tmp_path / "tls")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = BinaryServer(url=f"https://127.0.0.1:{sock.getsockname()[1]}", pin=pin)
    app = web.Application()
    app.router.add_get("/agent/binary", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    target = folder / "restic-manager-agent"
    target.write_bytes(script("1.0.0"))
    target.chmod(0o755)
    return target


# -- the swap -------------------------------------------------------------------


def test_install_keeps_the_previous_binary_as_old(installed: Path) -> None:
    new = installed.with_name(".new")
    new.write_bytes(script("2.0.0"))
    result = self_update.install(new, installed)
    assert result.target == installed
    assert result.previous == installed.with_name("restic-manager-agent.old")
    assert installed.read_bytes() == script("2.0.0")
    assert result.previous.read_bytes() == script("1.0.0")
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert leftovers(installed.parent, {installed.name, result.previous.name}) == []

    # A second update: .old is the binary it replaced, not the first one.
    newer = installed.with_name(".newer")
    newer.write_bytes(script("3.0.0"))
    self_update.install(newer, installed)
    assert installed.read_bytes() == script("3.0.0")
    assert result.previous.read_bytes() == script("2.0.0")


def test_the_executable_path_never_misses_or_holds_a_partial_binary(installed: Path) -> None:
    """Readers racing the swap always find one complete binary, old or new."""
    a = b"A" * 300_000
    b = b"B" * 500_000
    installed.write_bytes(a)
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = installed.read_bytes()
            except FileNotFoundError:
                problems.append("missing")
                continue
            if data == a:
                seen.append("a")
            elif data == b:
                seen.append("b")
            else:
                problems.append(f"partial ({len(data)} bytes)")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(150):
            new = installed.with_name(f".new{n}")
            new.write_bytes(b if n % 2 == 0 else a)
            self_update.install(new, installed)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert {"a", "b"} <= set(seen)


def test_a_failed_rename_leaves_the_running_binary_in_place(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = installed.with_name(".new")
    new.write_bytes(script("2.0.0"))
    real_replace = os.replace

    def failing_replace(src: object, dst: object) -> None:
        if Path(str(dst)) == installed:
            raise OSError(30, "Read-only file system")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(self_update.os, "replace", failing_replace)
    with pytest.raises(SelfUpdateError, match="Read-only file system"):
        self_update.install(new, installed)
    assert installed.read_bytes() == script("1.0.0")


# -- the download ---------------------------------------------------------------


async def test_download_checks_the_hash_while_writing_next_to_the_agent(
    binary_server: BinaryServer, installed: Path
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    binary_server.body = body
    binary_server.header_sha = sha(body)
    progress: list[tuple[int, int | None]] = []
    path = await self_update.download(
        binary_server.url + "/agent/binary?os=linux&arch=amd64",
        cert_sha256=binary_server.pin,
        expected_sha256=sha(body).upper(),  # case does not matter
        dest_dir=installed.parent,
        name=installed.name,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert path.parent == installed.parent and path.read_bytes() == body
    assert progress[-1] == (len(body), len(body))


async def test_a_hash_mismatch_is_refused_and_leaves_nothing_behind(
    binary_server: BinaryServer, installed: Path
) -> None:
    binary_server.body = script("2.0.0")
    with pytest.raises(SelfUpdateError, match="nothing was replaced") as info:
        await self_update.download(
            binary_server.url + "/agent/binary",
            cert_sha256=binary_server.pin,
            expected_sha256=sha(b"something else"),
            dest_dir=installed.parent,
            name=installed.name,
        )
    assert sha(script("2.0.0")) in str(info.value)
    assert leftovers(installed.parent, {installed.name}) == []


async def test_a_certificate_other_than_the_pin_is_refused(
    binary_server: BinaryServer, installed: Path, tmp_path: Path
) -> None:
    binary_server.body = script("2.0.0")
    _, other_pin = make_tls(tmp_path / "other")
    with pytest.raises(SelfUpdateError, match="does not match the pin"):
        await self_update.download(
            binary_server.url + "/agent/binary",
            cert_sha256=other_pin,
            expected_sha256=sha(binary_server.body),
            dest_dir=installed.parent,
            name=installed.name,
        )
    assert binary_server.requests == []  # nothing was asked over the wrong certificate
    assert leftovers(installed.parent, {installed.name}) == []


async def test_http_errors_oversize_and_a_changed_build_are_refused(
    binary_server: BinaryServer, installed: Path
) -> None:
    async def fetch(expected: str, **kwargs: int) -> None:
        await self_update.download(
            binary_server.url + "/agent/binary",
            cert_sha256=binary_server.pin,
            expected_sha256=expected,
            dest_dir=installed.parent,
            name=installed.name,
            **kwargs,  # type: ignore[arg-type]
        )

    binary_server.status = 404
    with pytest.raises(SelfUpdateError, match=r"HTTP 404.*no agent build for linux/amd64"):
        await fetch(sha(b"x"))
    binary_server.status = 200
    binary_server.body = b"x" * 5000
    with pytest.raises(SelfUpdateError, match="more than the 1000"):
        await fetch(sha(binary_server.body), max_bytes=1000)
    binary_server.header_sha = sha(b"a different build")
    with pytest.raises(SelfUpdateError, match="changed since the update was sent"):
        await fetch(sha(binary_server.body))
    assert leftovers(installed.parent, {installed.name}) == []


def test_the_download_must_come_from_the_control_plane() -> None:
    server = "https://10.0.0.5:8765"
    assert (
        self_update.download_url("/agent/binary?os=linux&arch=amd64", server)
        == "https://10.0.0.5:8765/agent/binary?os=linux&arch=amd64"
    )
    assert self_update.download_url(server + "/agent/binary", server + "/")
    for foreign in ("https://evil.example:8765/agent/binary", "http://10.0.0.5:8765/a"):
        with pytest.raises(SelfUpdateError, match="must come from the control plane"):
            self_update.download_url(foreign, server)
    with pytest.raises(SelfUpdateError, match="64 hex digits"):
        self_update.normalize_sha256("abc")


# -- running the new binary -----------------------------------------------------


async def test_the_new_binary_must_run_and_be_the_announced_version(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(script("2.0.0"))
    await self_update.check_runs(good, "2.0.0")
    with pytest.raises(SelfUpdateError, match=r"is version 2\.0\.0, not the 3\.0\.0"):
        await self_update.check_runs(good, "3.0.0")
    broken = tmp_path / "broken"
    broken.write_bytes(script("2.0.0", exit_code=3))
    with pytest.raises(SelfUpdateError, match=r"does not run here.*exited 3"):
        await self_update.check_runs(broken, "2.0.0")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    with pytest.raises(SelfUpdateError, match=r"cannot be started here|does not run here"):
        await self_update.check_runs(garbage, "2.0.0")


async def test_update_installs_a_verified_build(
    binary_server: BinaryServer, installed: Path
) -> None:
    binary_server.body = script("2.0.0")
    said: list[str] = []
    command = protocol.CommandUpdate(
        job_id="u1",
        version="2.0.0",
        url="/agent/binary?os=linux&arch=amd64",
        sha256=sha(binary_server.body),
    )
    result = await self_update.update(
        command,
        server_url=binary_server.url,
        cert_sha256=binary_server.pin,
        target=installed,
        say=said.append,
    )
    assert installed.read_bytes() == script("2.0.0")
    assert result.previous.read_bytes() == script("1.0.0")
    assert binary_server.requests == ["/agent/binary?os=linux&arch=amd64"]
    assert any("verified" in line for line in said) and "kept as" in said[-1]


@pytest.mark.parametrize(
    ("served", "announced", "error"),
    [
        (script("2.0.0"), None, "SHA-256"),  # a different file than the command named
        (script("2.0.0", exit_code=1), "ok", "does not run here"),  # will not start
        (script("9.9.9"), "ok", "is version 9.9.9"),  # not the announced version
    ],
    ids=["sha-mismatch", "does-not-run", "wrong-version"],
)
async def test_a_refused_update_replaces_nothing(
    binary_server: BinaryServer,
    installed: Path,
    served: bytes,
    announced: str | None,
    error: str,
) -> None:
    binary_server.body = served
    command = protocol.CommandUpdate(
        job_id="u1",
        version="2.0.0",
        url="/agent/binary",
        sha256=sha(served) if announced else sha(b"the build the app meant"),
    )
    with pytest.raises(SelfUpdateError, match=error):
        await self_update.update(
            command, server_url=binary_server.url, cert_sha256=binary_server.pin, target=installed
        )
    assert installed.read_bytes() == script("1.0.0")
    assert leftovers(installed.parent, {installed.name}) == []  # no .old, no temp file


def test_only_the_packaged_agent_updates_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(sys, "frozen", raising=False)
    with pytest.raises(SelfUpdateError, match="self-update needs the packaged agent"):
        self_update.running_executable()
    link = tmp_path / "link"
    real = tmp_path / "real-agent"
    real.write_bytes(b"x")
    link.symlink_to(real)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(link))
    # The file behind a symlink is what gets replaced.
    assert self_update.running_executable() == real
