"""Hooks run as real shell processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agent.hooks import hook_env, run_hook

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX shell semantics")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_output_is_streamed_in_order_and_the_exit_code_kept() -> None:
    lines: list[str] = []
    result = await run_hook(
        "echo one; echo two >&2; printf 'no newline'; exit 3",
        env=hook_env(os.environ, {}),
        on_line=lines.append,
    )
    assert lines == ["one", "two", "no newline"]
    assert result.exit_code == 3 and not result.ok
    assert result.describe(10) == "exited with code 3"


async def test_environment_has_the_job_variables_and_no_restic_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "ambient-secret-pw")
    monkeypatch.setenv("restic_password_command", "cat /secret")
    lines: list[str] = []
    result = await run_hook(
        "env",
        env=hook_env(os.environ, {"RM_JOB_ID": "j1", "RM_JOB_STATUS": "failed"}),
        on_line=lines.append,
    )
    assert result.ok
    assert "RM_JOB_ID=j1" in lines and "RM_JOB_STATUS=failed" in lines
    assert not [line for line in lines if line.upper().startswith("RESTIC")]
    assert not [line for line in lines if "ambient-secret-pw" in line]
    assert any(line.startswith("PATH=") for line in lines)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    result = await run_hook(
        f"sleep 300 & echo $! > {pidfile}; wait",
        env=hook_env(os.environ, {}),
        on_line=lambda _: None,
        time_limit=0.5,
        grace=0.5,
    )
    assert result.timed_out and not result.ok
    assert "did not finish within" in result.describe(0.5)
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    await asyncio.sleep(0.2)
    assert not alive(child)


async def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    result = await run_hook(
        "trap '' TERM; sleep 30",
        env=hook_env(os.environ, {}),
        on_line=lambda _: None,
        time_limit=0.3,
        grace=0.5,
    )
    assert result.timed_out and result.exit_code < 0


async def test_cancel_stops_the_hook() -> None:
    cancel = asyncio.Event()
    lines: list[str] = []
    asyncio.get_running_loop().call_later(0.3, cancel.set)
    started = time.monotonic()
    result = await run_hook(
        "echo started; sleep 60",
        env=hook_env(os.environ, {}),
        on_line=lines.append,
        cancel=cancel,
        grace=1.0,
    )
    assert result.cancelled and not result.timed_out
    assert lines == ["started"]
    assert time.monotonic() - started < 5


async def test_a_background_child_holding_the_output_does_not_hang_the_hook(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    result = await run_hook(
        f"sleep 120 & echo $! > {pidfile}; echo done",
        env=hook_env(os.environ, {}),
        on_line=lambda _: None,
        grace=0.5,
    )
    assert result.ok
    assert time.monotonic() - started < 5
    await asyncio.sleep(0.2)
    assert not alive(int(pidfile.read_text()))


async def test_a_detached_child_is_left_alone(tmp_path: Path) -> None:
    # A hook may start a service on purpose; with its output redirected it
    # does not hold the hook's pipe and must survive the hook.
    pidfile = tmp_path / "svc.pid"
    result = await run_hook(
        f"sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}",
        env=hook_env(os.environ, {}),
        on_line=lambda _: None,
        grace=0.5,
    )
    assert result.ok
    pid = int(pidfile.read_text())
    try:
        assert alive(pid)
    finally:
        os.kill(pid, 9)
