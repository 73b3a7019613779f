"""The agent's durable outbox: events survive crashes until the server acks them.

Every job event is written here (and committed, fsynced) before it is sent;
it is deleted only when the server's ``ack`` covers it, and replayed after a
reconnect or restart. The server applies events idempotently by
``(job_id, seq)``, so sending one twice is harmless; losing one is not.

When the state dir refuses writes while the agent runs (disk full, file
system remounted read-only), the outbox does not fail its callers: it keeps
what it could not write in memory (new events, acks, event numbers, running
jobs), says so in the log, still hands the held events to the sender (an
event the server acknowledged needs no disk at all), and writes the rest
out once the disk takes writes again. Only a process that dies meanwhile
loses what was held, and never an event the server acknowledged.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_ACK_CHUNK = 500  # stays below SQLite's host-parameter limit on old builds
# Events held in memory while the disk refuses writes; beyond this a put fails.
MAX_HELD_BYTES = 64 * 1024 * 1024
# While writes fail: how often to try the disk again, and to say so again.
RETRY_WRITE_S = 1.0
REMIND_S = 300.0
# What SQLite says when the file system, not the data, is the problem.
_STORAGE_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        -- SQLite only autoincrements an INTEGER PRIMARY KEY, so the envelope
        -- id is UNIQUE instead. AUTOINCREMENT (not plain rowid) so positions
        -- are never reused, even after acks have emptied the table.
        ord INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        job_id TEXT NULL,
        seq INTEGER NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id, seq) WHERE job_id IS NOT NULL",
    """
    CREATE TABLE IF NOT EXISTS running_jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS job_seq (
        job_id TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL
    )
    """,
)


class OutboxError(Exception):
    pass


# An outbox row as inserted: id, created_at, type, payload, job_id, seq.
_Row = tuple[str, float, str, str, str | None, int | None]


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    type: str
    payload: dict[str, Any]
    created_at: float


class Outbox:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        # check_same_thread is off so the agent may call from executor threads;
        # this lock serialises use of the one connection instead.
        self._lock = threading.Lock()
        # What the disk refused (see the module docstring), oldest first.
        self._held: dict[str, _Row] = {}
        self._held_bytes = 0
        self._acked_unsaved: set[str] = set()
        self._seqs_unsaved: dict[str, int] = {}
        self._running_unsaved: dict[str, tuple[str, float] | None] = {}
        self._refused_since: float | None = None
        self._last_try = 0.0
        self._last_remind = 0.0
        try:
            _precreate_private(path)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(_cannot_open(path, exc)) from exc
        try:
            self._setup(self._conn)
        except sqlite3.Error as exc:
            self._conn.close()
            self._conn = None
            raise OutboxError(_cannot_open(path, exc)) from exc
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def held(self) -> int:
        """How many events wait in memory because the disk refused them."""
        with self._lock:
            return len(self._held)

    def put(self, type: str, payload: dict[str, Any], *, msg_id: str | None = None) -> str:
        """Store one envelope; it is on disk when this returns (or, while the
        disk refuses writes, held in memory and logged; see the module docstring).

        Re-putting the same ``msg_id`` with the same content is a no-op, so a
        caller that crashed between commit and bookkeeping can simply retry.
        """
        if not type:
            raise ValueError("outbox entry type must not be empty")
        entry_id = msg_id if msg_id is not None else uuid.uuid4().hex
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False, sort_keys=True)
        job_id = payload.get("job_id")
        seq = payload.get("seq")
        row: _Row = (
            entry_id,
            self._clock(),
            type,
            body,
            job_id if isinstance(job_id, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )
        with self._lock:
            conn = self._db()
            held = self._held.get(entry_id)
            if held is not None:
                if (held[2], held[3]) != (type, body):
                    raise OutboxError(
                        f"outbox already holds a different message with id {entry_id!r}"
                    )
                return entry_id
            if self._refusing() and not self._write_held(conn):
                self._hold(conn, row)
                return entry_id
            try:
                conn.execute(
                    "INSERT INTO outbox (id, created_at, type, payload, job_id, seq)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.IntegrityError:
                existing = conn.execute(
                    "SELECT type, payload FROM outbox WHERE id = ?", (entry_id,)
                ).fetchone()
                if existing != (type, body):
                    raise OutboxError(
                        f"outbox already holds a different message with id {entry_id!r}"
                    ) from None
            except sqlite3.Error as exc:
                if not _storage_failure(exc):
                    raise
                self._refused(exc)
                self._hold(conn, row)
        return entry_id

    def pending(self, limit: int = 500, after_id: str | None = None) -> list[OutboxEntry]:
        """Unacked entries in insertion order, at most ``limit``.

        With ``after_id``, only entries stored after that one. If it was acked
        in the meantime its position is gone and every pending entry is
        returned: re-sending is harmless, silently skipping would not be.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock:
            conn = self._db()
            # (id, created_at, type, payload) of the held entries, which come
            # after everything on disk.
            held = [r[:4] for r in self._held.values()]
            rows: list[tuple[str, float, str, str]]
            if after_id is not None and after_id in self._held:
                rows = held[[r[0] for r in held].index(after_id) + 1 :][:limit]
            else:
                after = 0
                if after_id is not None:
                    found = conn.execute(
                        "SELECT ord FROM outbox WHERE id = ?", (after_id,)
                    ).fetchone()
                    after = found[0] if found is not None else 0
                skip = self._acked_unsaved
                stored = conn.execute(
                    "SELECT id, created_at, type, payload FROM outbox"
                    " WHERE ord > ? ORDER BY ord LIMIT ?",
                    (after, limit + len(skip)),
                ).fetchall()
                rows = [tuple(r) for r in stored if r[0] not in skip][:limit]
                rows += held[: limit - len(rows)]
        return [
            OutboxEntry(id=r[0], type=r[2], payload=json.loads(r[3]), created_at=r[1]) for r in rows
        ]

    def ack(self, ids: Iterable[str]) -> int:
        """Delete the given entries; unknown ids are ignored. Returns how many went."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        removed = 0
        with self._lock:
            conn = self._db()
            on_disk = []
            for entry_id in wanted:
                row = self._held.pop(entry_id, None)
                if row is None:
                    on_disk.append(entry_id)
                else:
                    self._held_bytes -= len(row[3])
                    removed += 1
            if not on_disk:
                return removed
            if self._refusing() and not self._write_held(conn):
                return removed + self._defer_ack(conn, on_disk)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(on_disk), _ACK_CHUNK):
                        chunk = on_disk[start : start + _ACK_CHUNK]
                        marks = ",".join("?" * len(chunk))
                        cur = conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
                        removed += cur.rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                if not _storage_failure(exc):
                    raise
                self._refused(exc)
                removed += self._defer_ack(conn, on_disk)
        return removed

    def count(self) -> int:
        with self._lock:
            row = self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()
            return int(row[0]) - len(self._acked_unsaved) + len(self._held)

    def next_seq(self, job_id: str) -> int:
        """The next event number of ``job_id``: 1, 2, 3, … across restarts."""
        return self.reserve_seqs(job_id, 1)

    def knows_job(self, job_id: str) -> bool:
        """Whether this agent ever numbered an event of ``job_id`` (i.e. started it)."""
        with self._lock:
            if job_id in self._seqs_unsaved:
                return True
            row = self._db().execute("SELECT 1 FROM job_seq WHERE job_id = ?", (job_id,)).fetchone()
        return row is not None

    def reserve_seqs(self, job_id: str, count: int) -> int:
        """Reserve ``count`` consecutive event numbers of ``job_id``; returns the first.

        A chatty job numbers its log lines from a reserved block in memory
        instead of paying one synchronous commit per line; numbers left
        unused by a crash are simply skipped, so order is kept across restarts.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            conn = self._db()
            if self._refusing() and not self._write_held(conn):
                return self._reserve_unsaved(conn, job_id, count)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    seq = self._stored_next_seq(conn, job_id)
                    conn.execute(
                        "INSERT INTO job_seq (job_id, next_seq) VALUES (?, ?)"
                        " ON CONFLICT (job_id) DO UPDATE SET next_seq = excluded.next_seq",
                        (job_id, seq + count),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                if not _storage_failure(exc):
                    raise
                self._refused(exc)
                return self._reserve_unsaved(conn, job_id, count)
        return seq

    def mark_running(self, job_id: str, kind: str) -> None:
        """Record a started job, so a restart can report it as interrupted.

        Marking an already running job again keeps its original start time.
        """
        with self._lock:
            conn = self._db()
            if not self._refusing() or self._write_held(conn):
                try:
                    conn.execute(
                        "INSERT INTO running_jobs (job_id, kind, started_at) VALUES (?, ?, ?)"
                        " ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind",
                        (job_id, kind, self._clock()),
                    )
                    return
                except sqlite3.Error as exc:
                    if not _storage_failure(exc):
                        raise
                    self._refused(exc)
            known = dict((r[0], r[2]) for r in self._running_rows(conn))
            self._running_unsaved[job_id] = (kind, known.get(job_id, self._clock()))

    def clear_running(self, job_id: str) -> None:
        with self._lock:
            conn = self._db()
            if not self._refusing() or self._write_held(conn):
                try:
                    conn.execute("DELETE FROM running_jobs WHERE job_id = ?", (job_id,))
                    return
                except sqlite3.Error as exc:
                    if not _storage_failure(exc):
                        raise
                    self._refused(exc)
            self._running_unsaved[job_id] = None

    def running(self) -> list[tuple[str, str, float]]:
        """``(job_id, kind, started_at)`` of jobs marked running, oldest first."""
        with self._lock:
            rows = self._running_rows(self._db())
        return sorted(rows, key=lambda r: (r[2], r[0]))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._refusing() and not self._write_held(self._conn, force=True):
                    log.error(
                        "the agent stopped with %d event(s) not written to its state dir %s: "
                        "those the control plane had not acknowledged are lost",
                        len(self._held),
                        self._path.parent,
                    )
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self._path} is closed")
        return self._conn

    # -- while the disk refuses writes (all called with the lock held) --------

    def _refusing(self) -> bool:
        return bool(
            self._held or self._acked_unsaved or self._seqs_unsaved or self._running_unsaved
        )

    def _refused(self, exc: sqlite3.Error) -> None:
        now = time.monotonic()
        self._last_try = now
        if self._refused_since is None:
            self._refused_since = now
            self._last_remind = now
            log.error(
                "cannot write to the agent's state dir %s (%s): new job events are kept in "
                "memory and still sent to the control plane, and written to disk once it "
                "takes writes again. Free space on that file system (or make it writable) "
                "now: events the control plane has not acknowledged are lost if the agent "
                "stops before then.",
                self._path.parent,
                exc,
            )
        elif now - self._last_remind >= REMIND_S:
            self._last_remind = now
            log.error(
                "the agent's state dir %s still refuses writes (%s) since %.0f s: %d event(s) "
                "(%.1f MiB) wait in memory",
                self._path.parent,
                exc,
                now - self._refused_since,
                len(self._held),
                self._held_bytes / 2**20,
            )

    def _hold(self, conn: sqlite3.Connection, row: _Row) -> None:
        if self._held_bytes + len(row[3]) > MAX_HELD_BYTES:
            raise OutboxError(
                f"the agent's state dir {self._path.parent} refuses writes and "
                f"{len(self._held)} events ({self._held_bytes / 2**20:.0f} MiB) already wait "
                "in memory: free space on that file system"
            )
        existing = conn.execute(
            "SELECT type, payload FROM outbox WHERE id = ?", (row[0],)
        ).fetchone()
        if existing is not None:
            if existing != (row[2], row[3]):
                raise OutboxError(f"outbox already holds a different message with id {row[0]!r}")
            return
        self._held[row[0]] = row
        self._held_bytes += len(row[3])

    def _defer_ack(self, conn: sqlite3.Connection, ids: list[str]) -> int:
        """Remember acks the disk refused (only for entries that are on disk)."""
        found = 0
        for start in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[start : start + _ACK_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id FROM outbox WHERE id IN ({marks})",  # noqa: S608
                chunk,
            ).fetchall()
            fresh = {r[0] for r in rows} - self._acked_unsaved
            self._acked_unsaved |= fresh
            found += len(fresh)
        return found

    def _stored_next_seq(self, conn: sqlite3.Connection, job_id: str) -> int:
        row = conn.execute("SELECT next_seq FROM job_seq WHERE job_id = ?", (job_id,)).fetchone()
        return 1 if row is None else int(row[0])

    def _reserve_unsaved(self, conn: sqlite3.Connection, job_id: str, count: int) -> int:
        seq = self._seqs_unsaved.get(job_id) or self._stored_next_seq(conn, job_id)
        self._seqs_unsaved[job_id] = seq + count
        return seq

    def _running_rows(self, conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
        rows = {
            str(r[0]): (str(r[1]), float(r[2]))
            for r in conn.execute("SELECT job_id, kind, started_at FROM running_jobs")
        }
        for job_id, state in self._running_unsaved.items():
            if state is None:
                rows.pop(job_id, None)
            else:
                rows[job_id] = state
        return [(job_id, kind, started) for job_id, (kind, started) in rows.items()]

    def _write_held(self, conn: sqlite3.Connection, *, force: bool = False) -> bool:
        """Try to write out everything held, in one transaction; True if done.

        Tried at most every RETRY_WRITE_S (unless ``force``), so a full disk
        costs a failed write a second, not one per event."""
        now = time.monotonic()
        if not force and now - self._last_try < RETRY_WRITE_S:
            return False
        self._last_try = now
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO outbox (id, created_at, type, payload, job_id, seq)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    list(self._held.values()),
                )
                conn.executemany(
                    "INSERT INTO job_seq (job_id, next_seq) VALUES (?, ?) ON CONFLICT (job_id)"
                    " DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
                    list(self._seqs_unsaved.items()),
                )
                for job_id, state in self._running_unsaved.items():
                    if state is None:
                        conn.execute("DELETE FROM running_jobs WHERE job_id = ?", (job_id,))
                    else:
                        conn.execute(
                            "INSERT INTO running_jobs (job_id, kind, started_at) VALUES (?, ?, ?)"
                            " ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind",
                            (job_id, *state),
                        )
                acked = list(self._acked_unsaved)
                for start in range(0, len(acked), _ACK_CHUNK):
                    chunk = acked[start : start + _ACK_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            if not _storage_failure(exc):
                raise
            self._refused(exc)
            return False
        since = self._refused_since
        log.warning(
            "the agent's state dir %s takes writes again after %.0f s: %d held event(s) "
            "written to disk",
            self._path.parent,
            now - since if since is not None else 0.0,
            len(self._held),
        )
        self._held.clear()
        self._held_bytes = 0
        self._acked_unsaved.clear()
        self._seqs_unsaved.clear()
        self._running_unsaved.clear()
        self._refused_since = None
        return True

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(
                f"cannot use write-ahead logging for {self._path} (journal mode {mode!r});"
                " the state dir must be on a local file system"
            )
        # FULL fsyncs the WAL on every commit: an event the agent was told is
        # stored must survive a power cut, not just a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self._path} was written by a newer agent (schema {version}, this "
                f"agent knows {SCHEMA_VERSION}); upgrade the agent or move the file aside"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _precreate_private(path: Path) -> None:
    # SQLite gives new -wal/-shm files the main file's mode, so creating the
    # database ourselves as 0600 keeps event payloads (paths, log lines) private.
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _storage_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because of the file system (full, read-only, I/O)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _STORAGE_CODES
    return "disk is full" in str(exc) or "readonly" in str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    # After some errors (SQLITE_FULL during COMMIT among them) SQLite has
    # already rolled back; a second ROLLBACK then fails, harmlessly.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)


def _cannot_open(path: Path, exc: BaseException) -> str:
    """Why the outbox cannot be opened, and what to do about it."""
    where = path.parent
    code = getattr(exc, "sqlite_errorcode", None)
    err = getattr(exc, "errno", None)
    if err == errno.ENOSPC or (isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL):
        problem = f"the file system holding {where} is full"
        fix = f"free space there (df -h {where}); the agent starts once it can write"
    elif err == errno.EROFS or (
        isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)
    ):
        problem = f"{where} cannot be written (read-only file system or no permission)"
        fix = (
            "the agent needs to write its state dir: remount it read-write, or give the "
            "agent's user ownership of it (the service unit's ReadWritePaths must list it)"
        )
    elif err in (errno.EACCES, errno.EPERM):
        problem = f"permission denied on {where}"
        fix = "give the agent's user ownership of its state dir (chown -R)"
    else:
        problem = f"{path} cannot be used"
        fix = "check that the state dir is on a local, writable file system with free space"
    return f"{problem} ({exc}); {fix}"
