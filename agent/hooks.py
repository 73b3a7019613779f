"""Pre/post backup hooks: the operator's shell commands, run around a backup.

A hook runs through the platform shell (``/bin/sh -c`` on Linux and macOS,
``cmd.exe /C`` on Windows) as the agent's own service user, in a process
group of its own so that a timeout or a cancel can stop everything it
started. Its output (stdout and stderr merged, in order) is handed over line
by line. Its environment is the agent's minus anything restic reads: a hook
never sees a repository password.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.restic.runner import read_lines, wait_exit

__all__ = ["HOOK_GRACE_S", "HOOK_TIMEOUT_S", "HookResult", "hook_env", "run_hook"]

# Long enough for a database dump, short enough that a hung hook does not
# block the repository (and every later backup) for a day.
HOOK_TIMEOUT_S = 3600.0
# Between the polite stop and SIGKILL; also how long a background child may
# keep the hook's output open after the shell itself exited.
HOOK_GRACE_S = 5.0
_IS_WINDOWS = sys.platform == "win32"


@dataclass(frozen=True)
class HookResult:
    # The shell's exit code; negative when it died from a signal.
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    def describe(self, timeout: float) -> str:
        if self.cancelled:
            return "was stopped because the job was cancelled"
        if self.timed_out:
            return f"did not finish within {timeout:g} s and was killed"
        if self.exit_code < 0:
            return f"was killed by signal {-self.exit_code}"
        return f"exited with code {self.exit_code}"


def hook_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The hook's environment: the agent's, without restic's variables, plus ``extra``.

    The agent never puts repository secrets in its own environment, but an
    ambient RESTIC_PASSWORD (or _FILE/_COMMAND) set for the service by hand
    must not reach an operator's script either.
    """
    env = {k: v for k, v in base.items() if not k.upper().startswith("RESTIC_")}
    env.update(extra)
    return env


async def run_hook(
    command: str,
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    cancel: asyncio.Event | None = None,
    time_limit: float = HOOK_TIMEOUT_S,
    grace: float = HOOK_GRACE_S,
) -> HookResult:
    """Run ``command`` to its end (or until ``time_limit``/``cancel``), streaming its output."""
    proc = await _spawn(command, env)
    assert proc.stdout is not None
    reader = asyncio.ensure_future(read_lines(proc.stdout, on_line))
    exited = asyncio.ensure_future(wait_exit(proc))
    cancel_wait = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    timed_out = cancelled = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    try:
        waits: set[asyncio.Future[object]] = {exited, reader}  # type: ignore[arg-type]
        if cancel_wait is not None:
            waits.add(cancel_wait)  # type: ignore[arg-type]
        while True:
            done, _ = await asyncio.wait(
                waits,
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if reader in done:
                waits.discard(reader)
                if not reader.cancelled() and reader.exception() is not None:
                    # ``on_line`` failed (the outbox cannot store the line): nobody
                    # reads the pipe any more, and a hook that keeps printing would
                    # block on it until the time limit. Stop it and say why.
                    await _stop(proc, grace)
                    await _discard_output(proc, grace)
                    reader.result()
            if not done or exited in done or (cancel_wait is not None and cancel_wait in done):
                break
        if not exited.done():
            cancelled = cancel_wait is not None and cancel_wait.done()
            timed_out = not cancelled
            await _stop(proc, grace)
        exit_code = await exited
        await _drain(proc, reader, grace)
    except BaseException:
        # Our own task was cancelled: the hook must not outlive the job.
        _kill_tree(proc)
        reader.cancel()
        raise
    finally:
        for waiter in (exited, cancel_wait):
            if waiter is not None and not waiter.done():
                waiter.cancel()
    return HookResult(exit_code=exit_code, timed_out=timed_out, cancelled=cancelled)


async def _spawn(command: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    if _IS_WINDOWS:
        # shell=True runs "%COMSPEC% /c <command>", i.e. cmd.exe /C; a group of
        # its own so that a console Ctrl-Break does not reach the agent.
        return await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )
    return await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        # The shell leads a new process group: killing the group stops
        # whatever the hook started (a dump piped through gzip, say).
        start_new_session=True,
    )


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the hook's process group, SIGKILL after ``grace``."""
    if _IS_WINDOWS:
        _kill_tree(proc)
    else:
        _signal_group(proc, signal.SIGTERM)
        try:
            async with asyncio.timeout(max(grace, 0.0)):
                await wait_exit(proc)
            return
        except TimeoutError:
            _kill_tree(proc)
    await wait_exit(proc)


async def _drain(
    proc: asyncio.subprocess.Process, reader: asyncio.Future[None], grace: float
) -> None:
    """Read the output to its end. A background child that keeps the pipe
    open after the shell exited gets ``grace`` seconds, then its group is killed."""
    try:
        async with asyncio.timeout(max(grace, 0.0)):
            await asyncio.shield(reader)
        return
    except TimeoutError:
        pass
    _kill_tree(proc)
    try:
        async with asyncio.timeout(max(grace, 0.0)):
            await asyncio.shield(reader)
    except TimeoutError:
        # Someone outside the group holds the pipe: stop reading rather than hang.
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    with contextlib.suppress(ProcessLookupError):
        # Both pipes are closed now; let asyncio release the transport.
        await proc.wait()


async def _discard_output(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Read what is left in the pipe to its end, so asyncio can release it."""
    assert proc.stdout is not None
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(max(grace, 0.0)):
            while await proc.stdout.read(1 << 16):
                pass


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    if not _IS_WINDOWS:
        _signal_group(proc, signal.SIGKILL)
        return
    if proc.returncode is None:
        # taskkill /T reaches the children cmd.exe started (it needs cmd.exe
        # alive to find them, so no proc.kill() first). Not waited for: the
        # loop must not block.
        try:
            subprocess.Popen(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
