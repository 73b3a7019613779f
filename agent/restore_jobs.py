"""The ``restore`` and ``diff`` job kinds.

Restore: the selected snapshot paths become ``--include``s, the target is a
new directory (created owner-only; by default under the agent's restore dir)
or ``/`` for an in-place restore. Progress comes from ``restore --json`` on
restic 0.16+. restic 0.14 prints nothing while it works, so there the agent
measures it: the bytes restic has written (``/proc/<pid>/io``; 0.14
preallocates files at full size, so their sizes say nothing) against the
selection's size from the snapshot index, and files landed in the target
(changed since the job began) from a periodic scan. The summary's file and
byte counts are the selection's, from the index: restic's own counters
include directories.

Diff: ``restic diff --json`` (0.14 and 0.18 both honour it), each change as a
``+ /path``, ``- /path`` or ``M /path`` log line, the counts in the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent import protocol
from agent import tree_store as store
from agent.job_types import JobCancelled, JobFailed, Outcome
from agent.restic import commands as rc
from agent.restic.runner import ResticResult
from agent.restic.version import ResticVersion
from agent.tree_index import (
    SNAPSHOT_ID_RE,
    AmbiguousSnapshot,
    BuildFailed,
    IndexUnavailable,
    SnapshotNotFound,
    TreeIndexes,
)

MAX_PATHS = 1000
MAX_PATH_CHARS = 4096
# restic 0.14 progress: how often the bytes written are sampled, and the
# shortest pause between two scans of the target (a scan that took long
# spaces the next one out: SCAN_COST_FACTOR times its own duration).
MEASURE_INTERVAL_S = 1.0
SCAN_INTERVAL_S = 2.0
SCAN_COST_FACTOR = 5.0
_PATTERN_SPECIALS = re.compile(r"([\\*?\[])")
_MODIFIED = ("M", "T", "U", "?")
_NO_COUNT = "restoring without a file count"


class JobHandle(Protocol):
    """The running job as restore/diff see it (``agent.jobs._Job``)."""

    job_id: str
    cmd: protocol.CommandRun
    cancel: asyncio.Event

    def log(self, stream: protocol.LogStream, text: str) -> None: ...

    def progress(self, progress: protocol.Progress) -> None: ...


class ResticAccess(Protocol):
    """restic against this job's repository, as the runner provides it."""

    @property
    def version(self) -> ResticVersion: ...

    def build(
        self, builder: Callable[..., rc.ResticCommand], **kwargs: Any
    ) -> rc.ResticCommand: ...

    def lock(self) -> AbstractAsyncContextManager[None]: ...

    async def run(
        self,
        command: rc.ResticCommand,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> ResticResult: ...

    def failure(self, result: ResticResult, prefix: str | None = None) -> JobFailed: ...


# -- restore -----------------------------------------------------------------


async def run_restore(
    job: JobHandle,
    access: ResticAccess,
    indexes: TreeIndexes,
    restore_root: str,
    *,
    clock: Callable[[], float] = time.time,
    scan_interval: float = SCAN_INTERVAL_S,
) -> Outcome:
    args = _restore_args(job.cmd.args)
    snapshot_id = _snapshot_id(args.snapshot_id, "snapshot_id")
    paths = _selected_paths(args.paths)
    if args.in_place and args.target_dir is not None:
        raise JobFailed("give either target_dir or in_place, not both")
    if args.in_place and sys.platform == "win32":
        raise JobFailed("in-place restore is not supported on Windows agents: pick a directory")
    selection = await _selection_totals(job, indexes, snapshot_id, paths)
    target, created = _create_target(args, restore_root, snapshot_id, clock)
    includes = [] if paths == ["/"] else [_include_pattern(p) for p in paths]
    command = access.build(
        rc.restore_cmd, snapshot_id=snapshot_id, target=str(target), includes=includes
    )
    what = "the whole snapshot" if not includes else f"{len(paths)} path(s)"
    size = f" ({selection[0]} files, {_human_bytes(selection[1])})" if selection else ""
    job.log(
        "agent",
        f"restoring {what} of snapshot {snapshot_id[:8]}{size} "
        + ("in place, over the files on this host" if args.in_place else f"to {target}"),
    )
    began = clock()
    try:
        async with access.lock():
            if access.version.restore_json:
                counts = await _restore_json(job, access, command)
            else:
                roots = _landing_roots(target, paths)
                counts = await _restore_measured(
                    job, access, command, selection, roots, began, scan_interval
                )
    except (JobFailed, JobCancelled):
        _tidy_target(job, target, created)
        raise
    files, size_done = selection if selection is not None else counts
    job.progress(
        protocol.Progress(
            percent=100.0,
            files_done=files,
            files_total=files,
            bytes_done=size_done,
            bytes_total=size_done,
        )
    )
    job.log("agent", f"restored {files} files ({_human_bytes(size_done)}) to {target}")
    return Outcome(
        status="succeeded",
        exit_code=0,
        summary={"files_restored": files, "bytes_restored": size_done, "target": str(target)},
    )


def _restore_args(raw: dict[str, Any]) -> protocol.RestoreArgs:
    # A one-off bandwidth cap travels in the same args (see jobs.run_bandwidth).
    fields = {k: v for k, v in raw.items() if k != "bandwidth"}
    try:
        return protocol.from_dict(protocol.RestoreArgs, fields, path="args")
    except protocol.ProtocolError as exc:
        raise JobFailed(f"invalid restore request: {exc}") from None


def _snapshot_id(value: str, name: str) -> str:
    snapshot_id = value.strip().lower()
    if not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise JobFailed(f"{name} must be 8 to 64 hexadecimal digits, got {value[:80]!r}")
    return snapshot_id


def _selected_paths(paths: list[str]) -> list[str]:
    if not paths:
        raise JobFailed("choose at least one path to restore")
    if len(paths) > MAX_PATHS:
        raise JobFailed(f"at most {MAX_PATHS} paths can be restored at once, got {len(paths)}")
    for path in paths:
        if not path.startswith("/") or "\0" in path or len(path) > MAX_PATH_CHARS:
            raise JobFailed(f"restore path {path[:200]!r} must be an absolute snapshot path")
    return store.outermost(paths)


async def _selection_totals(
    job: JobHandle, indexes: TreeIndexes, snapshot_id: str, paths: list[str]
) -> tuple[int, int] | None:
    """(files, bytes) of the selection from the snapshot's index, built
    first if needed; None (with a log line) when no index can be had."""
    job.log("agent", f"reading the tree of snapshot {snapshot_id[:8]}")
    ensure = asyncio.ensure_future(indexes.ensure(snapshot_id))
    cancelled = asyncio.ensure_future(job.cancel.wait())
    try:
        await asyncio.wait([ensure, cancelled], return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if not ensure.done():
        # The build goes on for the browser; this job no longer waits for it.
        ensure.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ensure
        raise JobCancelled()
    try:
        ensure.result()
    except SnapshotNotFound as exc:
        raise JobFailed(str(exc)) from None
    except AmbiguousSnapshot as exc:
        raise JobFailed(str(exc)) from None
    except (BuildFailed, IndexUnavailable) as exc:
        job.log("agent", f"the snapshot could not be indexed ({exc}); {_NO_COUNT}")
        return None
    try:
        result: tuple[int, int] = await indexes.read(
            snapshot_id, lambda conn: store.totals(conn, paths)
        )
    except store.PathNotFound as exc:
        raise JobFailed(
            f"{exc.reason} (snapshot {snapshot_id[:8]}); nothing was restored"
        ) from None
    except BuildFailed as exc:
        job.log("agent", f"the snapshot index could not be read ({exc}); {_NO_COUNT}")
        return None
    return result


def _expand(path: str) -> str:
    home = os.path.expanduser("~")
    for token in ("${HOME}", "$HOME"):
        if path == token or path.startswith(token + "/") or path.startswith(token + os.sep):
            path = home + path[len(token) :]
    return os.path.expanduser(path)


def _tidy_target(job: JobHandle, target: Path, created: bool) -> None:
    """After a failed or cancelled restore: a directory the job made and
    nothing landed in goes; anything else stays, and the log says so."""
    if created:
        with contextlib.suppress(OSError):
            target.rmdir()
            return
    if target != Path("/") and target.exists():
        job.log("agent", f"what was restored before the end is left in {target}")


def _create_target(
    args: protocol.RestoreArgs, restore_root: str, snapshot_id: str, clock: Callable[[], float]
) -> tuple[Path, bool]:
    """The restore target, created (owner-only) if missing; (path, created)."""
    if args.in_place:
        return Path("/"), False
    if args.target_dir is not None:
        raw = args.target_dir.strip()
        if not raw or "\0" in raw:
            raise JobFailed("target_dir must name a directory")
        target = Path(_expand(raw))
        if not target.is_absolute():
            raise JobFailed(
                f"target_dir {raw!r} must be an absolute path (or start with ~ or $HOME)"
            )
    else:
        root = Path(_expand(restore_root))
        if not root.is_absolute():
            raise JobFailed(f"the restore dir {restore_root!r} is not an absolute path")
        stamp = datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        target = root / f"{snapshot_id[:8]}-{stamp}"
        suffix = 2
        while target.exists():
            target = root / f"{snapshot_id[:8]}-{stamp}-{suffix}"
            suffix += 1
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise JobFailed(f"the restore target {target} exists and is not a directory") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise JobFailed(f"cannot create the restore target {target}: {reason}") from None
    if not target.is_dir():
        raise JobFailed(f"the restore target {target} exists and is not a directory")
    return target, created


def _include_pattern(path: str) -> str:
    # restic reads --include as a pattern: a name with *, ? or [ in it must
    # match itself, not a family of names.
    return _PATTERN_SPECIALS.sub(r"\\\1", path)


def _landing_roots(target: Path, paths: list[str]) -> list[Path]:
    if paths == ["/"]:
        return [target]
    return [target / p.lstrip("/") for p in paths]


async def _restore_json(
    job: JobHandle,
    access: ResticAccess,
    command: rc.ResticCommand,
) -> tuple[int, int]:
    """restic 0.16+: progress from its status lines; (files, bytes) it reported."""
    summary: dict[str, Any] = {}

    def on_stdout(line: str) -> None:
        data = _json_object(line)
        kind = data.get("message_type") if data is not None else None
        if data is not None and kind == "status":
            job.progress(_json_progress(data))
        elif data is not None and kind == "summary":
            summary.update(data)
        elif data is not None and kind == "verbose_status":
            return
        elif line.strip():
            job.log("stdout", _message_of(data) or line)

    def on_stderr(line: str) -> None:
        data = _json_object(line)
        if data is not None and data.get("message_type") == "error":
            job.log("stderr", _error_line(data))
        elif line.strip():
            job.log("stderr", _message_of(data) or line)

    result = await access.run(command, on_stdout=on_stdout, on_stderr=on_stderr)
    if result.exit_code != 0:
        raise access.failure(result, "restore failed")
    return _count(summary, "files_restored") + _count(summary, "files_skipped"), _count(
        summary, "bytes_restored"
    ) + _count(summary, "bytes_skipped")


def _json_progress(data: dict[str, Any]) -> protocol.Progress:
    fraction = data.get("percent_done")
    percent = float(fraction) * 100 if isinstance(fraction, int | float) else 0.0
    elapsed = data.get("seconds_elapsed")
    eta = data.get("seconds_remaining")
    if not isinstance(eta, int) and isinstance(elapsed, int) and 0 < percent < 100:
        eta = int(elapsed * (100 - percent) / percent)
    return protocol.Progress(
        percent=round(max(0.0, min(100.0, percent)), 2),
        files_done=_count(data, "files_restored") + _count(data, "files_skipped"),
        files_total=_count(data, "total_files"),
        bytes_done=_count(data, "bytes_restored") + _count(data, "bytes_skipped"),
        bytes_total=_count(data, "total_bytes"),
        eta_seconds=eta if isinstance(eta, int) else None,
    )


async def _restore_measured(
    job: JobHandle,
    access: ResticAccess,
    command: rc.ResticCommand,
    selection: tuple[int, int] | None,
    roots: list[Path],
    began: float,
    scan_interval: float,
) -> tuple[int, int]:
    """restic 0.14: run restore while measuring what has landed; returns
    the last (files, bytes) measured."""
    meter = _LandingMeter(roots, since=began - 1.0, selection=selection)

    def on_output(stream: protocol.LogStream, line: str) -> None:
        if line.strip():
            job.log(stream, line)

    watcher: asyncio.Task[None] | None = None

    def started(pid: int) -> None:
        nonlocal watcher
        meter.pid = pid
        watcher = asyncio.create_task(meter.watch(job, scan_interval), name="restore-progress")

    try:
        result = await access.run(
            command,
            on_stdout=lambda line: on_output("stdout", line),
            on_stderr=lambda line: on_output("stderr", line),
            on_start=started,
        )
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    if result.exit_code != 0:
        raise access.failure(result, "restore failed")
    return meter.files, meter.bytes


class _LandingMeter:
    def __init__(self, roots: list[Path], since: float, selection: tuple[int, int] | None) -> None:
        self.roots = roots
        self.since = since
        self.pid: int | None = None
        self.files_total, self.bytes_total = selection or (0, 0)
        self.files = 0
        self.bytes = 0

    async def watch(self, job: JobHandle, scan_interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_scan = began = 0.0
        scan: asyncio.Future[int] | None = None
        while True:
            now = loop.time()
            if scan is None and now >= next_scan:
                began = now
                scan = loop.run_in_executor(None, _count_landed, self.roots, self.since)
            if scan is not None and scan.done():
                with contextlib.suppress(OSError):
                    self.files = scan.result()
                took = loop.time() - began
                next_scan = loop.time() + max(scan_interval, took * SCAN_COST_FACTOR)
                scan = None
            written = _bytes_written(self.pid) if self.pid is not None else None
            if written is not None:
                self.bytes = written
            job.progress(self.progress())
            await asyncio.sleep(MEASURE_INTERVAL_S)

    def progress(self) -> protocol.Progress:
        files = min(self.files, self.files_total) if self.files_total else self.files
        size = min(self.bytes, self.bytes_total) if self.bytes_total else self.bytes
        if self.bytes_total and self.bytes:
            percent = 100.0 * size / self.bytes_total
        elif self.files_total:
            percent = 100.0 * files / self.files_total
        else:
            percent = 0.0
        # 100 only once restic is done: its last writes and metadata follow.
        return protocol.Progress(
            percent=round(min(percent, 99.9), 2),
            files_done=files,
            files_total=self.files_total,
            bytes_done=size,
            bytes_total=self.bytes_total,
        )


def _count_landed(roots: list[Path], since: float) -> int:
    """Non-directory entries under ``roots`` changed since ``since`` (ctime:
    creation, truncation and every write move it, in place too)."""
    count = 0
    stack = [str(r) for r in roots]
    while stack:
        top = stack.pop()
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if not os.path.isdir(top) or os.path.islink(top):
            count += st.st_ctime >= since
            continue
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.stat(follow_symlinks=False).st_ctime >= since:
                            count += 1
                    except OSError:
                        continue
        except OSError:
            continue
    return count


def _bytes_written(pid: int) -> int | None:
    """What the process has written so far (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/io", "rb") as fh:
            for line in fh:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- diff --------------------------------------------------------------------


async def run_diff(job: JobHandle, access: ResticAccess) -> Outcome:
    fields = {k: v for k, v in job.cmd.args.items() if k != "bandwidth"}
    try:
        args = protocol.from_dict(protocol.DiffArgs, fields, path="args")
    except protocol.ProtocolError as exc:
        raise JobFailed(f"invalid diff request: {exc}") from None
    first = _snapshot_id(args.snapshot_a, "snapshot_a")
    second = _snapshot_id(args.snapshot_b, "snapshot_b")
    command = access.build(rc.diff_cmd, snapshot_a=first, snapshot_b=second, json_output=True)
    counts = {"+": 0, "-": 0, "M": 0, "T": 0, "U": 0, "?": 0}
    statistics: dict[str, Any] = {}

    def on_stdout(line: str) -> None:
        data = _json_object(line)
        kind = data.get("message_type") if data is not None else None
        if data is not None and kind == "change":
            modifier = str(data.get("modifier") or "?")
            counts[modifier] = counts.get(modifier, 0) + 1
            job.log("stdout", f"{modifier} {data.get('path', '')}")
        elif data is not None and kind == "statistics":
            statistics.update(data)
        elif line.strip():
            job.log("stdout", _message_of(data) or line)

    job.log("agent", f"comparing snapshot {first[:8]} to {second[:8]}")
    async with access.lock():
        result = await access.run(command, on_stdout=on_stdout)
    if result.exit_code != 0:
        raise access.failure(result, "diff failed")
    added = _section(statistics, "added")
    removed = _section(statistics, "removed")
    summary: dict[str, object] = {
        "added": counts["+"],
        "removed": counts["-"],
        "modified": sum(counts.get(m, 0) for m in _MODIFIED),
        "bytes_added": _count(added, "bytes"),
        "bytes_removed": _count(removed, "bytes"),
    }
    job.log(
        "agent",
        f"{summary['added']} added, {summary['removed']} removed, {summary['modified']} "
        f"modified; {_human_bytes(_count(added, 'bytes'))} of data added, "
        f"{_human_bytes(_count(removed, 'bytes'))} removed",
    )
    return Outcome(status="succeeded", exit_code=0, summary=summary)


# -- helpers -----------------------------------------------------------------


def _json_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _message_of(data: dict[str, Any] | None) -> str | None:
    if data is not None and isinstance(data.get("message"), str):
        return str(data["message"])
    return None


def _error_line(data: dict[str, Any]) -> str:
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    item = data.get("item")
    where = f"{item}: " if isinstance(item, str) and item else ""
    return f"error: {where}{message if message else 'unknown error'}"


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
