"""Snapshot tree indexes: built once per snapshot, read in milliseconds.

The restore browser lists one directory at a time. Running ``restic ls``
for each (seconds per directory on a large snapshot) is what makes other
tools feel slow; instead the first look at a snapshot starts one
``restic ls --json <snapshot>`` stream that is written into an SQLite file
in the state dir (``agent.tree_store``), and every listing after that is an
indexed read. Snapshots never change, so an index never goes stale; the
least recently used ones are deleted beyond a size budget, and those of
snapshots that are gone from the repository as soon as a complete snapshot
list shows it.

Concurrency. A build never blocks the caller: ``status``/``list`` answer at
once with "building" (and how many nodes so far) and the caller polls.
Builds run one at a time on the agent, the restic process on the event
loop (cancel, SIGINT, stderr as for jobs) and its output parsed and
written by a worker thread reading the pipe directly, so a slow disk slows
restic down instead of filling memory.

Builds do not wait for the agent's per-repository job lock: ``restic ls``
takes only a shared repository lock, like a backup, and a browse must not
wait hours behind a running backup. What it must not overlap is a job that
takes restic's exclusive lock (forget, prune, check): the runner tells the
index (``exclusive_started``/``exclusive_finished``) and a build waits for
such a job, while such a job waits for a running build (``wait_idle``)
before it starts restic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent import protocol
from agent import tree_store as store
from agent.restic import errors as rerrors
from agent.restic.commands import ResticCommand
from agent.restic.runner import run_restic

log = logging.getLogger(__name__)

INDEX_DIR_NAME = "tree-index"
SUFFIX = ".sqlite"
DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024
# A failed build is reported to whoever polls for this long; the next
# request after that tries again.
FAILED_TTL_S = 30.0
# An index used this recently is not evicted even over budget, so that a
# search over many snapshots cannot evict what it is waiting for.
EVICT_PROTECT_S = 600.0
# How often the last-used time of an index is written to its file's mtime.
TOUCH_INTERVAL_S = 60.0
MAX_LINE_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
# How long the reader waits after a short read: with a 1 MiB pipe restic
# does not block meanwhile; with the default 64 KiB one, barely.
_NAP_BIG_PIPE_S = 0.005
_NAP_SMALL_PIPE_S = 0.001
SNAPSHOT_ID_RE = re.compile(r"[0-9a-f]{8,64}")
_NOT_FOUND_NEEDLE = "no matching id found"

BuildOrigin = Literal["browse", "search"]


class IndexUnavailable(Exception):
    """No index can be built now (restic missing, no repository yet)."""


class SnapshotNotFound(Exception):
    def __init__(self, snapshot_id: str, detail: str = "") -> None:
        text = f"snapshot {snapshot_id} is not in the repository"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.snapshot_id = snapshot_id


class AmbiguousSnapshot(Exception):
    pass


class BuildFailed(Exception):
    pass


@dataclass
class _Build:
    snapshot_id: str  # as requested (may be a prefix)
    origin: BuildOrigin
    started: float | None = None
    finished: float | None = None
    state: Literal["queued", "building", "ready", "failed"] = "queued"
    error: str | None = None
    not_found: bool = False
    builder: store.IndexBuilder | None = None
    nodes_final: int = 0
    path: Path | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def nodes(self) -> int:
        builder = self.builder
        return builder.nodes if builder is not None else self.nodes_final


LsCommand = Callable[[str], ResticCommand]


class TreeIndexes:
    """All snapshot indexes of this agent, and the one build running."""

    def __init__(
        self,
        directory: Path,
        *,
        ls_command: LsCommand,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        protect_seconds: float = EVICT_PROTECT_S,
        grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = directory
        self._ls_command = ls_command
        self._budget = budget_bytes
        self._protect = protect_seconds
        self._grace = grace_seconds
        self._clock = clock
        self._builds: dict[str, _Build] = {}
        self._queue: list[_Build] = []
        self._active: _Build | None = None
        self._worker: asyncio.Task[None] | None = None
        self._exclusive = 0
        self._exclusive_done = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._touched: dict[str, float] = {}
        self._readers: dict[str, int] = {}
        self._closed = False
        # Reads (listings, searches) and the build's parsing thread never
        # wait for each other.
        self._read_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tree-read")
        self._build_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tree-build")
        self._prepare_dir()

    @property
    def directory(self) -> Path:
        return self._dir

    def _prepare_dir(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self._dir, 0o700)
        # What a crash or a kill left half-built is never used; clear it away.
        for leftover in self._dir.glob(f"*{SUFFIX}.building-*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    # -- finding indexes -------------------------------------------------------

    def ready_path(self, snapshot_id: str) -> Path | None:
        """The finished index of a snapshot (by full id or a unique prefix)."""
        exact = self._dir / f"{snapshot_id}{SUFFIX}"
        if len(snapshot_id) == 64:
            return exact if exact.is_file() else None
        matches = [p for p in self._index_files() if p.stem.startswith(snapshot_id)]
        if len(matches) > 1:
            raise AmbiguousSnapshot(
                f"snapshot id {snapshot_id} matches {len(matches)} snapshots; give more digits"
            )
        return matches[0] if matches else None

    def _index_files(self) -> list[Path]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return [self._dir / n for n in names if n.endswith(SUFFIX)]

    def indexed_snapshots(self) -> list[str]:
        return sorted(p.stem for p in self._index_files())

    def _build_for(self, snapshot_id: str) -> _Build | None:
        for key, build in self._builds.items():
            if key.startswith(snapshot_id) or snapshot_id.startswith(key):
                return build
        return None

    # -- status and building ---------------------------------------------------

    def status(self, snapshot_id: str, origin: BuildOrigin = "browse") -> protocol.IndexStatus:
        """Where the index of ``snapshot_id`` stands; starts building it if
        there is none. Never waits. Raises SnapshotNotFound once a build
        found that restic does not know the snapshot, IndexUnavailable when
        nothing can be built."""
        if not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
            # Callers validate; this one also names files after it.
            raise ValueError(f"invalid snapshot id {snapshot_id[:80]!r}")
        build = self._build_for(snapshot_id)
        now = self._clock()
        if build is not None and build.state == "failed":
            if build.finished is not None and now - build.finished > FAILED_TTL_S:
                self._builds.pop(build.snapshot_id, None)
                build = None
            elif build.not_found:
                raise SnapshotNotFound(snapshot_id)
        if build is None or build.state == "ready":
            path = self.ready_path(snapshot_id)
            if path is not None:
                return protocol.IndexStatus(state="ready")
            if build is not None:
                # Ready but evicted or deleted since: build again.
                self._builds.pop(build.snapshot_id, None)
            build = self._enqueue(snapshot_id, origin)
        return self._status_of(build)

    def _status_of(self, build: _Build) -> protocol.IndexStatus:
        now = self._clock()
        elapsed = now - build.started if build.started is not None else 0.0
        if build.state == "failed":
            return protocol.IndexStatus(
                state="failed", nodes=build.nodes, elapsed_s=round(elapsed, 3), error=build.error
            )
        state: protocol.IndexState = "ready" if build.state == "ready" else "building"
        return protocol.IndexStatus(state=state, nodes=build.nodes, elapsed_s=round(elapsed, 3))

    def _enqueue(self, snapshot_id: str, origin: BuildOrigin) -> _Build:
        if self._closed:
            raise IndexUnavailable("the agent is shutting down")
        # Fails now, not in the worker, when restic or the repository is missing.
        self._ls_command(snapshot_id)
        build = _Build(snapshot_id=snapshot_id, origin=origin)
        self._builds[snapshot_id] = build
        if origin == "browse":
            # Someone is looking at the screen: ahead of builds a search queued.
            position = next(
                (i for i, b in enumerate(self._queue) if b.origin == "search"), len(self._queue)
            )
            self._queue.insert(position, build)
        else:
            self._queue.append(build)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="tree-index-builds")
        return build

    async def ensure(self, snapshot_id: str) -> Path:
        """The ready index of ``snapshot_id``, building it first if needed."""
        while True:
            status = self.status(snapshot_id)
            if status.state == "ready":
                path = self.ready_path(snapshot_id)
                if path is not None:
                    return path
                continue
            if status.state == "failed":
                raise BuildFailed(status.error or "the index could not be built")
            build = self._build_for(snapshot_id)
            assert build is not None
            await build.done.wait()

    async def _work(self) -> None:
        while self._queue and not self._closed:
            while self._exclusive > 0:
                self._exclusive_done.clear()
                await self._exclusive_done.wait()
            if not self._queue:
                break
            build = self._queue.pop(0)
            # Set before any await: an exclusive job starting now sees it.
            self._active = build
            self._idle.clear()
            try:
                await self._run_build(build)
            except Exception as exc:
                log.exception("building the tree index of snapshot %s failed", build.snapshot_id)
                self._fail(build, f"internal agent error: {exc}")
            finally:
                self._active = None
                self._idle.set()
                build.done.set()
            if build.state == "ready":
                # The file speaks for it from now on.
                self._builds.pop(build.snapshot_id, None)
                await self._evict(keep=build.path)

    def _fail(self, build: _Build, error: str, *, not_found: bool = False) -> None:
        build.state = "failed"
        build.error = error
        build.not_found = not_found
        build.finished = self._clock()
        if build.builder is not None:
            build.nodes_final = build.builder.nodes
            build.builder = None

    async def _run_build(self, build: _Build) -> None:
        loop = asyncio.get_running_loop()
        build.state = "building"
        build.started = self._clock()
        try:
            command = self._ls_command(build.snapshot_id)
        except IndexUnavailable as exc:
            self._fail(build, str(exc))
            return
        tmp = self._dir / f"{build.snapshot_id}{SUFFIX}.building-{uuid.uuid4().hex[:8]}"
        try:
            builder = await loop.run_in_executor(self._build_pool, store.IndexBuilder, tmp)
        except (OSError, sqlite3.Error) as exc:
            self._fail(build, f"could not write the index in {self._dir}: {exc}")
            return
        build.builder = builder
        read_fd, write_fd = os.pipe()
        nap = _NAP_BIG_PIPE_S if _enlarge_pipe(write_fd) else _NAP_SMALL_PIPE_S
        consumer: asyncio.Future[BaseException | None] | None = None
        # restic's last words, for the error message.
        stderr: deque[str] = deque(maxlen=50)

        def started(_pid: int) -> None:
            nonlocal consumer
            # restic holds the write end now; ours must go for EOF to come.
            os.close(write_fd)
            consumer = loop.run_in_executor(
                self._build_pool, _consume, read_fd, builder, loop, build.cancel, nap
            )

        try:
            result = await run_restic(
                command,
                on_stdout=None,
                on_stderr=stderr.append,
                cancel=build.cancel,
                grace_seconds=self._grace,
                stdout_fd=write_fd,
                on_start=started,
            )
        except BaseException as exc:
            if consumer is None:
                os.close(write_fd)
                os.close(read_fd)
            else:
                await asyncio.shield(consumer)
            await loop.run_in_executor(self._build_pool, builder.abort)
            if consumer is None and isinstance(exc, OSError):
                self._fail(build, f"could not run restic ({command.argv[0]}): {exc}")
                return
            raise
        assert consumer is not None
        problem = await consumer
        if isinstance(problem, OSError | sqlite3.Error):
            problem = store.IndexBuildError(f"could not write the index in {self._dir}: {problem}")
        stderr_text = "\n".join(stderr)
        if problem is not None or result.cancelled or result.exit_code != 0:
            await loop.run_in_executor(self._build_pool, builder.abort)
            if problem is not None and not isinstance(problem, store.IndexBuildError):
                raise problem
            if problem is not None:
                self._fail(build, str(problem))
            elif result.cancelled and self._closed:
                self._fail(build, "the agent stopped while indexing this snapshot")
            else:
                self._fail_from_restic(build, result.exit_code, stderr_text)
            return
        try:
            meta = await loop.run_in_executor(self._build_pool, builder.finish, build.snapshot_id)
        except store.SnapshotNotListed:
            await loop.run_in_executor(self._build_pool, builder.abort)
            self._fail_from_restic(build, 0, stderr_text)
            return
        except (OSError, sqlite3.Error) as exc:
            await loop.run_in_executor(self._build_pool, builder.abort)
            self._fail(build, f"could not write the index in {self._dir}: {exc}")
            return
        except BaseException:
            await loop.run_in_executor(self._build_pool, builder.abort)
            raise
        final = self._dir / f"{meta.id}{SUFFIX}"
        os.replace(tmp, final)
        build.nodes_final = meta.nodes
        build.builder = None
        build.path = final
        build.state = "ready"
        build.finished = self._clock()
        self._touched[meta.id] = time.time()
        log.info(
            "indexed snapshot %s: %d entries in %.1f s",
            meta.short_id,
            meta.nodes,
            build.finished - (build.started or build.finished),
        )

    def _fail_from_restic(self, build: _Build, exit_code: int, stderr: str) -> None:
        summary = rerrors.error_summary(stderr) or f"restic ls exited with code {exit_code}"
        if _NOT_FOUND_NEEDLE in stderr.lower() or exit_code == 0:
            # 0.14 prints "Ignoring ..." and exits 0 for an unknown snapshot.
            self._fail(build, str(SnapshotNotFound(build.snapshot_id)), not_found=True)
            return
        kind = rerrors.classify(exit_code, stderr, None)
        if kind is rerrors.ResticErrorKind.LOCKED:
            summary = (
                "the repository is locked by another restic process (a forget, prune or "
                f"check from another host?); try again when it is done. restic said: {summary}"
            )
        self._fail(build, f"listing the snapshot failed: {summary}")

    # -- exclusive jobs --------------------------------------------------------

    def exclusive_started(self) -> None:
        """A job that takes restic's exclusive lock is about to run."""
        self._exclusive += 1

    def exclusive_finished(self) -> None:
        self._exclusive = max(0, self._exclusive - 1)
        if self._exclusive == 0:
            self._exclusive_done.set()

    @property
    def building(self) -> bool:
        """A restic ls is running for an index right now."""
        return not self._idle.is_set()

    async def wait_idle(self) -> None:
        """Until no build is running (an exclusive job must not overlap one)."""
        await self._idle.wait()

    # -- reads -------------------------------------------------------------------

    async def read(self, snapshot_id: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` on the ready index, in a reader thread."""
        path = self.ready_path(snapshot_id)
        if path is None:
            raise BuildFailed(f"snapshot {snapshot_id} has no index yet")
        key = path.stem
        self._readers[key] = self._readers.get(key, 0) + 1
        self._note_use(key, path)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_pool, _with_index, path, fn)
        except sqlite3.DatabaseError as exc:
            # A torn or foreign file: drop it; the next request builds anew.
            log.warning("tree index %s is unreadable (%s); it will be rebuilt", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            self._builds.pop(snapshot_id, None)
            raise BuildFailed(
                f"the index of snapshot {snapshot_id} was damaged; try again"
            ) from None
        finally:
            self._readers[key] -= 1
            if not self._readers[key]:
                del self._readers[key]

    def _note_use(self, key: str, path: Path) -> None:
        now = time.time()
        if now - self._touched.get(key, 0.0) >= TOUCH_INTERVAL_S:
            # The file's mtime is its last use, so LRU order survives a restart.
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
        self._touched[key] = now

    # -- housekeeping ----------------------------------------------------------

    async def _evict(self, keep: Path | None) -> None:
        # Deleting a large file can take a while: a thread does it, working
        # on copies of what the loop owns.
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(
            self._read_pool,
            _evict_lru,
            self._index_files(),
            self._budget,
            dict(self._touched),
            set(self._readers) | ({keep.stem} if keep is not None else set()),
            self._protect,
        )
        for stem in removed:
            self._touched.pop(stem, None)
        if removed:
            log.info(
                "evicted %d tree index(es) over the %d MiB budget", len(removed), self._budget >> 20
            )

    def forget_missing(self, snapshot_ids: list[str]) -> list[str]:
        """Delete the indexes of snapshots not in a complete snapshot list."""
        alive = set(snapshot_ids)
        removed = []
        for path in self._index_files():
            if path.stem not in alive and path.stem not in self._readers:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path.stem)
        return removed

    async def close(self) -> None:
        """Stop the running build (restic gets SIGINT) and the threads."""
        self._closed = True
        if self._active is not None:
            self._active.cancel.set()
        for build in self._queue:
            # Whoever waits for these (a restore) must not wait forever.
            self._fail(build, "the agent stopped before this snapshot was indexed")
            build.done.set()
        self._queue.clear()
        worker = self._worker
        if worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._read_pool.shutdown(wait=False, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)


def _evict_lru(
    files: list[Path],
    budget: int,
    touched: dict[str, float],
    busy: set[str],
    protect_seconds: float,
) -> list[str]:
    """Delete least recently used index files until the total fits ``budget``;
    the names of those deleted. The last use is the later of the file's
    mtime (touched on use) and what the loop remembers."""
    entries = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((max(st.st_mtime, touched.get(path.stem, 0.0)), st.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed: list[str] = []
    now = time.time()
    for used, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= budget:
            break
        if path.stem in busy or now - used < protect_seconds:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size
            removed.append(path.stem)
    return removed


def _with_index(path: Path, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    conn = store.open_index(path)
    try:
        return fn(conn)
    finally:
        conn.close()


def _consume(
    fd: int,
    builder: store.IndexBuilder,
    loop: asyncio.AbstractEventLoop,
    cancel: asyncio.Event,
    nap: float,
) -> BaseException | None:
    """Read restic's stdout to EOF into the builder (a worker thread).

    restic writes one line per write(); a reader that wakes for each finds
    one line each time, and the switches cost more CPU than the parsing.
    After a short read it naps instead, so the (enlarged) pipe fills and
    one read takes hundreds of lines. Returns what went wrong instead of
    raising, after asking restic to stop and draining the pipe: restic
    blocked on a full pipe would never exit.
    """
    problem: BaseException | None = None
    lines = store.LineSplitter(MAX_LINE_BYTES)
    try:
        while True:
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                break
            if problem is None:
                try:
                    builder.feed_lines(lines.split(chunk))
                except BaseException as exc:
                    problem = exc
                    loop.call_soon_threadsafe(cancel.set)
            if len(chunk) < _READ_CHUNK // 4:
                time.sleep(nap)
        if problem is None:
            builder.feed(lines.rest())
    except BaseException as exc:
        problem = problem or exc
    finally:
        os.close(fd)
    return problem


def _enlarge_pipe(fd: int) -> bool:
    """Give the pipe 1 MiB (Linux; 64 KiB is the default) so that restic
    keeps writing while the reader naps."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _READ_CHUNK)
    except (ImportError, AttributeError, OSError):
        return False
    return True
