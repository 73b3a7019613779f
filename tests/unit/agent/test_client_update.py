"""command.update through the agent runtime: job events over the real pinned
WebSocket, the binary served by the same TLS server, and the exit for restart."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent import protocol
from agent.client import run_agent
from agent.self_update import EXIT_RESTART
from tests.helpers.tls import make_tls
from tests.unit.agent.test_client import FakeServer, start_agent, until, write_enrolment
from tests.unit.agent.test_self_update import script

FAST = {
    "heartbeat_interval": 0.3,
    "backoff_initial": 0.05,
    "backoff_max": 0.3,
    "shutdown_drain_seconds": 2.0,
    "rng": random.Random(1),
}


class Served:
    body = b""
    requests = 0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[FakeServer, Served]]:
    """The fake control plane: its WebSocket and /agent/binary on one TLS port."""
    ctx, pin = make_tls(tmp_path / "tls")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake = FakeServer(url=f"https://127.0.0.1:{sock.getsockname()[1]}", pin=pin)
    served = Served()

    async def binary(request: web.Request) -> web.Response:
        served.requests += 1
        return web.Response(body=served.body)

    app = web.Application()
    app.router.add_get(protocol.WS_PATH, fake.handle)
    app.router.add_get("/agent/binary", binary)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield fake, served
    finally:
        await runner.cleanup()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    path = folder / "restic-manager-agent"
    path.write_bytes(script("1.0.0"))
    path.chmod(0o755)
    return path


def update_command(body: bytes, version: str = "2.0.0") -> protocol.CommandUpdate:
    return protocol.CommandUpdate(
        job_id="upd1",
        version=version,
        url="/agent/binary?os=linux&arch=amd64",
        sha256=hashlib.sha256(body).hexdigest(),
    )


def job_lines(fake: FakeServer, job_id: str) -> list[str]:
    return [
        line.text
        for env in fake.of_type(protocol.JobLog)
        if env.payload.job_id == job_id  # type: ignore[attr-defined]
        for line in env.payload.lines  # type: ignore[attr-defined]
    ]


def finished(fake: FakeServer, job_id: str) -> list[protocol.JobFinished]:
    return [
        env.payload
        for env in fake.of_type(protocol.JobFinished)
        if isinstance(env.payload, protocol.JobFinished) and env.payload.job_id == job_id
    ]


async def test_update_swaps_the_binary_reports_and_exits_for_a_restart(
    server: tuple[FakeServer, Served], tmp_path: Path, target: Path
) -> None:
    fake, served = server
    served.body = script("2.0.0")
    config = write_enrolment(tmp_path, fake)
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_agent(
            config, stop=stop, install_signal_handlers=False, executable=lambda: target, **FAST
        )
    )
    try:
        await until(lambda: fake.connections == 1)
        await fake.send(update_command(served.body))
        # The agent ends by itself, with the code the service manager restarts on.
        code = await asyncio.wait_for(run, 20)
    finally:
        stop.set()
        if not run.done():
            await asyncio.wait_for(run, 20)
    assert code == EXIT_RESTART
    assert target.read_bytes() == script("2.0.0")
    assert target.with_name("restic-manager-agent.old").read_bytes() == script("1.0.0")
    assert served.requests == 1
    started = [e.payload for e in fake.of_type(protocol.JobStarted)]
    assert [(s.job_id, s.kind) for s in started] == [("upd1", "update")]  # type: ignore[attr-defined]
    lines = job_lines(fake, "upd1")
    assert any("verified" in line for line in lines), lines
    # Reported before the exit (drained from the outbox), and not finished: the
    # control plane decides success when the new version says hello.
    assert "restarting as agent 2.0.0" in lines[-1]
    assert finished(fake, "upd1") == []


async def test_a_refused_update_fails_the_job_and_the_agent_keeps_running(
    server: tuple[FakeServer, Served], tmp_path: Path, target: Path
) -> None:
    fake, served = server
    served.body = script("2.0.0")
    run = await start_agent(write_enrolment(tmp_path, fake), executable=lambda: target)
    try:
        await until(lambda: fake.connections == 1)
        # The app named another file's hash: nothing may be replaced.
        await fake.send(update_command(b"another build"))
        await until(lambda: finished(fake, "upd1"))
        error = finished(fake, "upd1")[0].error or ""
        assert "SHA-256" in error and "nothing was replaced" in error
        assert target.read_bytes() == script("1.0.0")
        assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
        assert not run.task.done() and not run.agent.restart_requested
        # The same command again is ignored: that job is done.
        await fake.send(update_command(b"another build"))
        await asyncio.sleep(0.3)
        assert served.requests == 1 and len(finished(fake, "upd1")) == 1
    finally:
        await run.close()


async def test_a_busy_agent_refuses_the_update(
    server: tuple[FakeServer, Served], tmp_path: Path, target: Path
) -> None:
    fake, served = server
    served.body = script("2.0.0")
    run = await start_agent(write_enrolment(tmp_path, fake), executable=lambda: target)
    try:
        await until(lambda: fake.connections == 1)
        run.agent.jobs.running_job_ids = lambda: ["backup-7"]  # type: ignore[method-assign]
        await fake.send(update_command(served.body))
        await until(lambda: finished(fake, "upd1"))
        assert "running 1 job(s) (backup-7)" in (finished(fake, "upd1")[0].error or "")
        assert served.requests == 0 and target.read_bytes() == script("1.0.0")
    finally:
        await run.close()
