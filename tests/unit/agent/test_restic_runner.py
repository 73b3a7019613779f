"""run_restic against small stand-in processes (sh, python) whose behaviour we
control: output volume, signal handling, orphaned children."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

import agent.restic.runner as runner_module
from agent.restic.commands import ResticCommand
from agent.restic.runner import STDERR_TAIL_CHARS, RepoLocks, run_restic

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def sh(script: str, *, secrets: tuple[str, ...] = ()) -> ResticCommand:
    return ResticCommand(argv=("/bin/sh", "-c", script), env=ENV, secrets=secrets)


def py(code: str) -> ResticCommand:
    return ResticCommand(argv=(sys.executable, "-c", code), env=ENV)


class Lines:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []


async def run(cmd: ResticCommand, **kw: object) -> tuple[runner_module.ResticResult, Lines]:
    lines = Lines()
    result = await run_restic(
        cmd,
        on_stdout=lines.out.append,
        on_stderr=lines.err.append,
        **kw,  # type: ignore[arg-type]
    )
    return result, lines


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def alive(pid: int) -> bool:
    """Whether `pid` is still running a moment from now.

    A SIGKILLed process closes its pipes before the kernel marks it a zombie,
    so right after we saw EOF it may briefly still look alive.
    """
    deadline = time.monotonic() + 2.0
    while _running(pid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.01)
    return False


async def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


async def test_lines_exit_code_and_tail() -> None:
    result, lines = await run(sh("echo out1; echo err1 >&2; printf 'out2\\r\\n'; exit 3"))
    assert lines.out == ["out1", "out2"]
    assert lines.err == ["err1"]
    assert result.exit_code == 3
    assert result.partial and not result.ok
    assert result.stderr_tail == "err1"
    assert result.cancelled is False


async def test_last_line_without_newline() -> None:
    _, lines = await run(sh("printf 'a\\nb'; printf 'c' >&2"))
    assert lines.out == ["a", "b"]
    assert lines.err == ["c"]


async def test_callbacks_optional_and_stdin_is_devnull() -> None:
    # `cat` would block forever on an inherited terminal/pipe stdin.
    result = await asyncio.wait_for(
        run_restic(sh("cat; echo done >&2"), on_stdout=None, on_stderr=None), 10
    )
    assert result.exit_code == 0
    assert result.stderr_tail == "done"


async def test_env_and_cwd(tmp_path: Path) -> None:
    cmd = ResticCommand(argv=("/usr/bin/env",), env={"ONLY": "this"})
    _, lines = await run(cmd)
    assert lines.out == ["ONLY=this"]
    _, lines = await run(sh("pwd"), cwd=str(tmp_path))
    assert lines.out == [str(tmp_path)]


async def test_new_session() -> None:
    _, lines = await run(py("import os; print(os.getsid(0) == os.getpid())"))
    assert lines.out == ["True"]


async def test_huge_line_is_chunked_not_fatal() -> None:
    size = 20 * 1024 * 1024
    _, lines = await run(
        py(f"import sys; sys.stdout.write('x' * {size} + '\\nafter\\n'); sys.stdout.flush()")
    )
    assert [len(line) for line in lines.out] == [16 * 1024 * 1024, 4 * 1024 * 1024, 5]
    assert lines.out[-1] == "after"


async def test_chunking_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "MAX_LINE_BYTES", 1000)
    _, lines = await run(py("print('y' * 2500); print('z')"))
    assert [len(line) for line in lines.out] == [1000, 1000, 500, 1]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
async def test_line_splitting_across_chunk_boundaries(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_READ_CHUNK", chunk)
    monkeypatch.setattr(runner_module, "MAX_LINE_BYTES", 10)
    data = (
        b"a\r\n\nbc\r\r\n"
        + b"x" * 25
        + b"\n"
        + b"y" * 10
        + b"\n"
        + b"z" * 10
        + b"\r\n"
        + b"w" * 11
        + b"\r\nlast\r"
    )
    _, lines = await run(py(f"import sys; sys.stdout.buffer.write({data!r})"))
    assert lines.out == [
        "a",
        "",
        "bc\r",
        "x" * 10,
        "x" * 10,
        "x" * 5,
        "y" * 10,
        "z" * 10,
        "w" * 10,
        "w",
        "last",
    ]


async def test_heavy_output_on_both_pipes_does_not_deadlock() -> None:
    code = (
        "import sys\n"
        "for i in range(200000):\n"
        "    sys.stdout.write(f'o{i}\\n')\n"
        "    sys.stderr.write(f'e{i}\\n')\n"
    )
    result, lines = await asyncio.wait_for(run(py(code)), 60)
    assert result.exit_code == 0
    assert len(lines.out) == len(lines.err) == 200000
    assert lines.out[-1] == "o199999"
    assert lines.err[-1] == "e199999"
    assert len(result.stderr_tail) <= STDERR_TAIL_CHARS
    assert result.stderr_tail.endswith("e199998\ne199999")


async def test_tail_keeps_end_of_one_huge_stderr_line() -> None:
    result, _ = await run(py("import sys; sys.stderr.write('a' * 100000 + 'END')"))
    assert len(result.stderr_tail) == STDERR_TAIL_CHARS
    assert result.stderr_tail.endswith("aEND")


async def test_utf8_and_invalid_bytes() -> None:
    _, lines = await run(py("import sys; sys.stdout.buffer.write('ü/é\\n'.encode() + b'\\xff\\n')"))
    assert lines.out == ["ü/é", "\ufffd"]


async def test_secrets_scrubbed_from_stderr_only_and_ansi_removed() -> None:
    cmd = sh(
        "echo 'file-hunter2'; printf '\\033[2Kpassword hunter2 leaked\\n' >&2",
        secrets=("hunter2",),
    )
    result, lines = await run(cmd)
    assert lines.out == ["file-hunter2"]
    assert lines.err == ["password *** leaked"]
    assert "hunter2" not in result.stderr_tail


async def test_cancel_sends_sigint_first(tmp_path: Path) -> None:
    marker = tmp_path / "signal"
    ready = tmp_path / "ready"
    cmd = sh(
        f"trap 'echo INT > {marker}; exit 130' INT; trap 'echo TERM > {marker}; exit 143' TERM;"
        f"echo $$ > {ready}; while :; do sleep 0.05; done"
    )
    cancel = asyncio.Event()
    task = asyncio.create_task(run(cmd, cancel=cancel, grace_seconds=5))
    pid = int(await wait_for_file(ready))
    cancel.set()
    result, _ = await asyncio.wait_for(task, 10)
    assert result.cancelled is True
    assert result.exit_code == 130
    # SIGINT is the signal every restic version cleans its lock up on.
    assert marker.read_text().strip() == "INT"
    assert not alive(pid)


async def test_cancel_escalates_to_sigkill_for_group(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = tmp_path / "child"
    # Ignores SIGINT and has a child that would keep the pipes open.
    cmd = sh(
        f"trap '' INT TERM; sleep 60 & echo $! > {child}; echo $$ > {ready}; "
        "while :; do sleep 0.05; done"
    )
    cancel = asyncio.Event()
    task = asyncio.create_task(run(cmd, cancel=cancel, grace_seconds=0.3))
    pid = int(await wait_for_file(ready))
    child_pid = int(await wait_for_file(child))
    started = time.monotonic()
    cancel.set()
    result, _ = await asyncio.wait_for(task, 10)
    assert result.cancelled is True
    assert result.exit_code == -9
    assert time.monotonic() - started < 5
    assert not alive(pid)
    assert not alive(child_pid)


async def test_cancel_already_set() -> None:
    cancel = asyncio.Event()
    cancel.set()
    result, _ = await asyncio.wait_for(run(sh("exec sleep 30"), cancel=cancel, grace_seconds=1), 10)
    assert result.cancelled is True


async def test_cancel_not_set_means_not_cancelled() -> None:
    result, _ = await run(sh("exit 0"), cancel=asyncio.Event())
    assert result.cancelled is False
    assert result.ok


async def test_task_cancellation_stops_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    marker = tmp_path / "signal"
    cmd = sh(
        f"trap 'echo INT > {marker}; exit 130' INT; echo $$ > {ready}; while :; do sleep 0.05; done"
    )
    task = asyncio.create_task(run(cmd, grace_seconds=5))
    pid = int(await wait_for_file(ready))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert marker.read_text().strip() == "INT"
    assert not alive(pid)


async def test_repeated_task_cancellation_still_kills(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    cmd = sh(f"trap '' INT; echo $$ > {ready}; while :; do sleep 0.05; done")
    task = asyncio.create_task(run(cmd, grace_seconds=0.5))
    pid = int(await wait_for_file(ready))
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert not alive(pid)


async def test_callback_exception_stops_process_and_propagates(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    cmd = sh(f"echo $$ > {ready}; echo first; while :; do echo more; sleep 0.01; done")

    def explode(line: str) -> None:
        raise RuntimeError(f"bad line {line}")

    with pytest.raises(RuntimeError, match="bad line first"):
        await asyncio.wait_for(
            run_restic(cmd, on_stdout=explode, on_stderr=None, grace_seconds=1), 10
        )
    assert not alive(int(ready.read_text()))


async def test_orphan_holding_pipe_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_ORPHAN_PIPE_SECONDS", 0.3)
    child = tmp_path / "child"
    # The leader exits at once; its background child keeps stdout open.
    cmd = sh(f"sleep 60 & echo $! > {child}; echo bye")
    started = time.monotonic()
    result, lines = await asyncio.wait_for(run(cmd), 10)
    assert result.exit_code == 0
    assert lines.out == ["bye"]
    assert time.monotonic() - started < 5
    assert not alive(int(child.read_text()))


async def test_missing_binary_raises() -> None:
    cmd = ResticCommand(argv=("/nonexistent/restic", "version"), env=ENV)
    with pytest.raises(FileNotFoundError):
        await run_restic(cmd, on_stdout=None, on_stderr=None)


async def test_repo_locks_serialise_per_key() -> None:
    locks = RepoLocks()
    assert locks.lock("a") is locks.lock("a")
    assert locks.lock("a") is not locks.lock("b")

    order: list[str] = []

    async def job(key: str, name: str) -> None:
        async with locks.lock(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    await asyncio.gather(job("a", "1"), job("a", "2"), job("b", "3"))
    # 1 and 2 share a repository: never interleaved. 3 runs alongside.
    assert order.index("1-") < order.index("2+") or order.index("2-") < order.index("1+")
    assert order.index("3+") < order.index("1-")


async def test_cancelled_while_spawning_still_gets_the_graceful_stop(tmp_path: Path) -> None:
    # The task is cancelled after restic exists but before the spawn returned
    # (asyncio is still connecting the pipes). asyncio would SIGKILL the
    # process there, leaving restic no chance to remove its lock.
    ready = tmp_path / "ready"
    marker = tmp_path / "signal"
    cmd = sh(
        f"trap 'echo INT > {marker}; exit 130' INT; echo $$ > {ready}; while :; do sleep 0.05; done"
    )
    task = asyncio.create_task(run(cmd, grace_seconds=5))
    # One loop step at a time until the fork has happened; each wait for the
    # shell is done without yielding to the loop, so the spawn cannot finish.
    for _ in range(10):
        await asyncio.sleep(0)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not (ready.exists() and ready.read_text().strip()):
            time.sleep(0.01)
        if ready.exists() and ready.read_text().strip():
            break
    else:
        task.cancel()
        raise AssertionError("the shell never started")
    pid = int(ready.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert marker.exists() and marker.read_text().strip() == "INT"
    assert not alive(pid)
