"""agent/windows_service.py on Linux: pywin32 stays out of reach, the refusal is
clear, and the part that does not need pywin32 (running the agent until the
service manager says stop) works against a fake control plane.

The pywin32 service class itself only runs on Windows and is not exercised
here (installers/README.md says so).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import windows_service
from tests.unit.agent.test_client import FakeServer, server, until, write_enrolment

__all__ = ["server"]  # the fake control plane fixture, shared with test_client

PYWIN32 = ("servicemanager", "win32service", "win32serviceutil", "win32event")


def test_importing_it_pulls_in_no_pywin32():
    code = (
        "import sys, agent.windows_service, agent.cli\n"
        f"print(sorted(m for m in {PYWIN32!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(sys.platform == "win32", reason="the Linux refusal")
def test_off_windows_the_service_is_refused_with_what_to_do(tmp_path: Path):
    reason = windows_service.unavailable_reason()
    assert reason is not None and "only on Windows" in reason and "systemd" in reason
    with pytest.raises(windows_service.ServiceUnavailable, match="only on Windows"):
        windows_service.run_service(tmp_path / "config.toml")


async def test_the_runner_runs_the_agent_until_the_service_manager_stops_it(
    server: FakeServer, tmp_path: Path
):
    config = write_enrolment(tmp_path, server)
    runner = windows_service.AgentServiceRunner(config)
    # The service's own thread, as pywin32 calls SvcDoRun.
    running = asyncio.create_task(asyncio.to_thread(runner.run))
    await until(lambda: server.connections == 1)
    assert not runner.stop_requested

    # SvcStop comes on the SCM's control thread.
    started = time.monotonic()
    await asyncio.to_thread(runner.stop)
    code = await asyncio.wait_for(running, 20)
    assert code == 0 and runner.stop_requested
    assert time.monotonic() - started < 15


async def test_a_stop_before_the_agent_started_ends_it_at_once(tmp_path: Path):
    runner = windows_service.AgentServiceRunner(tmp_path / "missing.toml")
    runner._ready.set()  # as if the loop were up: stop() must not wait 30 s
    runner.stop()
    runner._ready.clear()
    assert await asyncio.to_thread(runner.run) == 0


def test_the_service_log_lives_in_the_state_dir(tmp_path: Path):
    assert windows_service.service_log_path(tmp_path) == tmp_path / "logs" / "agent.log"
    handler = windows_service._file_logging(tmp_path / "state")
    try:
        assert (tmp_path / "state" / "logs").is_dir()
    finally:
        handler.close()
