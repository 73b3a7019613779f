"""Running one restic process: streaming its output, cancelling it, reaping it.

Stopping restic. restic removes its repository lock when it gets SIGINT (every
version) or SIGTERM (0.17+ only: 0.14 dies at once on SIGTERM and leaves a
stale lock that blocks the next forget/prune/check). So the polite stop is
SIGINT, sent to restic alone so that an ssh child of the sftp backend stays up
while restic removes its lock. After the grace period the whole process group
gets SIGKILL: 0.18 was seen to hang in its clean-up under --limit-upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.restic.commands import ResticCommand

__all__ = [
    "MAX_LINE_BYTES",
    "STDERR_TAIL_CHARS",
    "RepoLocks",
    "ResticResult",
    "read_lines",
    "run_restic",
    "wait_exit",
]

# A line longer than this (an `ls --json` node with a huge name, a runaway
# progress line) is delivered in pieces of this size instead of growing a
# buffer without bound.
MAX_LINE_BYTES = 16 * 1024 * 1024
STDERR_TAIL_CHARS = 8 * 1024
_READ_CHUNK = 256 * 1024
# After restic itself exited, how long a surviving child (ssh, a rclone
# backend) may keep our pipes open before it is killed.
_ORPHAN_PIPE_SECONDS = 5.0
_EXIT_POLL_SECONDS = 0.05
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_IS_WINDOWS = sys.platform == "win32"

LineCallback = Callable[[str], None]


@dataclass
class ResticResult:
    # Negative when the process died from a signal (-9 after SIGKILL).
    exit_code: int
    stderr_tail: str
    cancelled: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.cancelled

    @property
    def partial(self) -> bool:
        """Exit 3: the snapshot was made but some files could not be read."""
        return self.exit_code == 3 and not self.cancelled


class _Tail:
    """The last STDERR_TAIL_CHARS characters of stderr, kept line-wise."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: deque[str] = deque()
        self._size = 0

    def add(self, line: str) -> None:
        if len(line) > self._limit:
            line = line[-self._limit :]
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size > self._limit and len(self._lines) > 1:
            self._size -= len(self._lines.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self._lines)


def _scrub(line: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in line:
            line = line.replace(secret, "***")
    return line


async def read_lines(stream: asyncio.StreamReader, deliver: Callable[[str], None]) -> None:
    """Read `stream` to EOF, handing over complete lines without their newline.

    Reads fixed-size chunks instead of readline(): StreamReader's line limit
    raises on long lines, and a growing bytes buffer would be copied again on
    every chunk. A partial line is kept as a list of chunks instead.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            break
        if b"\n" not in chunk:
            parts.append(chunk)
            size += len(chunk)
            # Keep a non-empty remainder (not counting a trailing CR): a line
            # of exactly MAX_LINE_BYTES must not be followed by a phantom "".
            if size > MAX_LINE_BYTES + 1:
                pending = b"".join(parts)
                body = len(pending) - pending.endswith(b"\r")
                cut = (body - 1) // MAX_LINE_BYTES * MAX_LINE_BYTES
                _deliver_pieces(pending[:cut], deliver)
                parts, size = [pending[cut:]], len(pending) - cut
            continue
        first, *middle, last = chunk.split(b"\n")
        parts.append(first)
        _deliver_line(b"".join(parts), deliver)
        for raw in middle:
            _deliver_line(raw, deliver)
        parts, size = ([last], len(last)) if last else ([], 0)
    if parts:
        _deliver_line(b"".join(parts), deliver)


def _deliver_line(raw: bytes, deliver: Callable[[str], None]) -> None:
    _deliver_pieces(raw[:-1] if raw.endswith(b"\r") else raw, deliver)


def _deliver_pieces(raw: bytes, deliver: Callable[[str], None]) -> None:
    limit = MAX_LINE_BYTES
    if len(raw) <= limit:
        deliver(raw.decode("utf-8", "replace"))
        return
    for start in range(0, len(raw), limit):
        deliver(raw[start : start + limit].decode("utf-8", "replace"))


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    # start_new_session made restic the leader of a group whose id is its pid;
    # the group outlives restic while a child of it still runs.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if _IS_WINDOWS:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    else:
        _signal_group(proc, signal.SIGKILL)


async def wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Wait until the process has exited.

    Process.wait() on Python 3.11 returns only once the pipes are closed as
    well, which a surviving child (ssh, a backend helper) can delay forever.
    The return code is set as soon as the child watcher reaps the process;
    there is no public hook to await that moment, hence the polling.
    """
    while proc.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(_EXIT_POLL_SECONDS)
    return proc.returncode


async def _stop(proc: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """Ask restic to stop; kill it and its children after the grace period."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if _IS_WINDOWS:
            proc.terminate()
        else:
            proc.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(max(grace_seconds, 0.0)):
            await wait_exit(proc)
        return
    except TimeoutError:
        pass
    _kill(proc)
    await wait_exit(proc)


async def _finish_readers(proc: asyncio.subprocess.Process, readers: asyncio.Future[Any]) -> None:
    """Wait for EOF on both pipes; kill orphaned pipe holders if it never comes."""
    try:
        async with asyncio.timeout(_ORPHAN_PIPE_SECONDS):
            await asyncio.shield(readers)
        return
    except TimeoutError:
        pass
    _kill(proc)
    try:
        async with asyncio.timeout(_ORPHAN_PIPE_SECONDS):
            await asyncio.shield(readers)
    except TimeoutError:
        # Someone outside our process group holds the pipe; give up on the
        # rest of the output rather than hang the job forever.
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers


class _Streams:
    """Line handling shared by both pipes; a failing callback is remembered,
    not raised inside the reader, so the pipe keeps being drained."""

    def __init__(
        self,
        on_stdout: LineCallback | None,
        on_stderr: LineCallback | None,
        secrets: tuple[str, ...],
    ) -> None:
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._secrets = secrets
        self.tail = _Tail(STDERR_TAIL_CHARS)
        self.error: Exception | None = None
        self.failed = asyncio.Event()

    def _call(self, callback: LineCallback | None, line: str) -> None:
        if callback is None or self.error is not None:
            return
        try:
            callback(line)
        except Exception as exc:
            self.error = exc
            self.failed.set()

    def stdout(self, line: str) -> None:
        self._call(self._on_stdout, line)

    def stderr(self, line: str) -> None:
        if "\x1b" in line:
            line = _ANSI_RE.sub("", line)
        if self._secrets:
            line = _scrub(line, self._secrets)
        self.tail.add(line)
        self._call(self._on_stderr, line)


async def _spawn(
    cmd: ResticCommand, cwd: str | None, stdout_fd: int | None
) -> tuple[asyncio.subprocess.Process, bool]:
    """Start the process; also say whether the caller was cancelled meanwhile.

    Cancelled inside ``create_subprocess_exec`` after the fork, asyncio kills
    the child outright (SIGKILL), and a restic killed that way leaves its
    repository lock behind. The spawn is let finish instead, so the caller
    can stop the process gracefully and then raise CancelledError.
    """
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *cmd.argv,
            env=dict(cmd.env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_fd is None else stdout_fd,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=not _IS_WINDOWS,
        )
    )
    cancelled = False
    while True:
        try:
            return await asyncio.shield(spawning), cancelled
        except asyncio.CancelledError:
            if not spawning.done():
                cancelled = True
                continue
            # Cancelled just as the spawn finished: the process exists and
            # must get the same graceful stop.
            if spawning.cancelled() or spawning.exception() is not None:
                raise
            return spawning.result(), True


async def run_restic(
    cmd: ResticCommand,
    *,
    on_stdout: LineCallback | None,
    on_stderr: LineCallback | None,
    cancel: asyncio.Event | None = None,
    grace_seconds: float = 10.0,
    cwd: str | None = None,
    stdout_fd: int | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ResticResult:
    """Run `cmd`, streaming stdout/stderr lines to the callbacks.

    With `stdout_fd`, restic writes its stdout straight to that descriptor
    (the write end of a pipe another thread reads, say) and `on_stdout` is
    not used: a reader that cannot keep up then slows restic down instead of
    piling lines up in memory. `on_start` gets restic's process id.

    stderr lines have the command's secrets scrubbed and terminal escape
    sequences removed; stdout lines are passed unchanged (they are data, such
    as file names, that scrubbing could corrupt).

    Setting `cancel` stops restic (SIGINT, SIGKILL after `grace_seconds`) and
    returns with cancelled=True. If the awaiting task is cancelled, restic is
    stopped the same way before CancelledError propagates. If a callback
    raises, restic is stopped, its output drained, then the exception raised.
    """
    streams = _Streams(on_stdout, on_stderr, cmd.secrets)
    proc, cancelled_while_spawning = await _spawn(cmd, cwd, stdout_fd)
    assert proc.stderr is not None
    pipes = [read_lines(proc.stderr, streams.stderr)]
    if proc.stdout is not None:
        pipes.append(read_lines(proc.stdout, streams.stdout))
    readers = asyncio.gather(*pipes)
    exited: asyncio.Future[int] = asyncio.ensure_future(wait_exit(proc))
    failed_wait = asyncio.ensure_future(streams.failed.wait())
    cancel_wait = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    triggers: set[asyncio.Future[Any]] = {exited, failed_wait}
    if cancel_wait is not None:
        triggers.add(cancel_wait)
    cancelled = False
    try:
        if cancelled_while_spawning:
            raise asyncio.CancelledError
        if on_start is not None:
            on_start(proc.pid)
        while not exited.done():
            done, _ = await asyncio.wait(triggers, return_when=asyncio.FIRST_COMPLETED)
            triggers -= done
            if exited.done():
                break
            if cancel_wait in done:
                cancelled = True
            await _stop(proc, grace_seconds)
        await _finish_readers(proc, readers)
    except BaseException:
        # The awaiting task was cancelled: the process must not outlive the
        # job that owns it, even if we are cancelled again while stopping it.
        cleanup = asyncio.ensure_future(_cleanup(proc, readers, grace_seconds))
        while not cleanup.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(cleanup)
        raise
    finally:
        for waiter in (failed_wait, cancel_wait, exited):
            if waiter is not None and not waiter.done():
                waiter.cancel()
    if streams.error is not None:
        raise streams.error
    if not readers.cancelled():
        readers.result()
        # Both pipes are closed now, so this returns at once and lets asyncio
        # release the transport.
        await proc.wait()
    return ResticResult(
        exit_code=exited.result(), stderr_tail=streams.tail.text(), cancelled=cancelled
    )


async def _cleanup(
    proc: asyncio.subprocess.Process, readers: asyncio.Future[Any], grace_seconds: float
) -> None:
    await _stop(proc, grace_seconds)
    if not readers.done():
        await _finish_readers(proc, readers)
    # Retrieve a reader failure here so asyncio does not log it as unhandled.
    if readers.done() and not readers.cancelled():
        readers.exception()


class RepoLocks:
    """One restic process per repository at a time on this agent.

    Keys are chosen by the caller from the repository URL (hash it: the URL
    can contain a REST password and must not reach logs).
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, repo_key: str) -> asyncio.Lock:
        lock = self._locks.get(repo_key)
        if lock is None:
            lock = self._locks[repo_key] = asyncio.Lock()
        return lock
