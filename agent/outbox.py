"""The agent's durable outbox: events survive crashes until the server acks them.

Every job event is written here (and committed, fsynced) before it is sent;
it is deleted only when the server's ``ack`` covers it, and replayed after a
reconnect or restart. The server applies events idempotently by
``(job_id, seq)``, so sending one twice is harmless; losing one is not.
"""

from __future__ import annotations

import json
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

SCHEMA_VERSION = 1
_ACK_CHUNK = 500  # stays below SQLite's host-parameter limit on old builds

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
        _precreate_private(path)
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            self._setup(self._conn)
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

    def put(self, type: str, payload: dict[str, Any], *, msg_id: str | None = None) -> str:
        """Store one envelope; it is on disk when this returns.

        Re-putting the same ``msg_id`` with the same content is a no-op, so a
        caller that crashed between commit and bookkeeping can simply retry.
        """
        if not type:
            raise ValueError("outbox entry type must not be empty")
        entry_id = msg_id if msg_id is not None else uuid.uuid4().hex
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False, sort_keys=True)
        job_id = payload.get("job_id")
        seq = payload.get("seq")
        row = (
            entry_id,
            self._clock(),
            type,
            body,
            job_id if isinstance(job_id, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )
        with self._lock:
            conn = self._db()
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
            after = 0
            if after_id is not None:
                found = conn.execute("SELECT ord FROM outbox WHERE id = ?", (after_id,)).fetchone()
                after = found[0] if found is not None else 0
            rows = conn.execute(
                "SELECT id, type, payload, created_at FROM outbox"
                " WHERE ord > ? ORDER BY ord LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            OutboxEntry(id=r[0], type=r[1], payload=json.loads(r[2]), created_at=r[3]) for r in rows
        ]

    def ack(self, ids: Iterable[str]) -> int:
        """Delete the given entries; unknown ids are ignored. Returns how many went."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        removed = 0
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(wanted), _ACK_CHUNK):
                    chunk = wanted[start : start + _ACK_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    cur = conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
                    removed += cur.rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return removed

    def count(self) -> int:
        with self._lock:
            row = self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(row[0])

    def next_seq(self, job_id: str) -> int:
        """The next event number of ``job_id``: 1, 2, 3, … across restarts."""
        return self.reserve_seqs(job_id, 1)

    def knows_job(self, job_id: str) -> bool:
        """Whether this agent ever numbered an event of ``job_id`` (i.e. started it)."""
        with self._lock:
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
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT next_seq FROM job_seq WHERE job_id = ?", (job_id,)
                ).fetchone()
                seq = 1 if row is None else int(row[0])
                conn.execute(
                    "INSERT INTO job_seq (job_id, next_seq) VALUES (?, ?)"
                    " ON CONFLICT (job_id) DO UPDATE SET next_seq = excluded.next_seq",
                    (job_id, seq + count),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return seq

    def mark_running(self, job_id: str, kind: str) -> None:
        """Record a started job, so a restart can report it as interrupted.

        Marking an already running job again keeps its original start time.
        """
        with self._lock:
            self._db().execute(
                "INSERT INTO running_jobs (job_id, kind, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind",
                (job_id, kind, self._clock()),
            )

    def clear_running(self, job_id: str) -> None:
        with self._lock:
            self._db().execute("DELETE FROM running_jobs WHERE job_id = ?", (job_id,))

    def running(self) -> list[tuple[str, str, float]]:
        """``(job_id, kind, started_at)`` of jobs marked running, oldest first."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT job_id, kind, started_at FROM running_jobs ORDER BY started_at, job_id"
                )
                .fetchall()
            )
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self._path} is closed")
        return self._conn

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
