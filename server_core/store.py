"""The SQLite store: one connection on one dedicated thread.

Every database call runs on that thread through :meth:`Store.call`, so the
shared event loop never waits on SQLite and writes are naturally
serialised (SQLite allows one writer anyway).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import peewee as pw

from server_core.migrations import migrate
from server_core.models import ALL_MODELS

P = ParamSpec("P")
T = TypeVar("T")

_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    # NORMAL in WAL mode loses at most the last transactions on power loss,
    # never consistency; the agent replays anything not acknowledged.
    "synchronous": "normal",
    "busy_timeout": 10_000,
    "cache_size": -16_000,
}


class Store:
    """Owns the database file and the thread that talks to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = pw.SqliteDatabase(str(path), pragmas=_PRAGMAS, check_same_thread=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._thread: threading.Thread | None = None
        self.schema_version = 0

    def open_sync(self) -> None:
        """Open and migrate from the calling thread (CLI tools, tests)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            # SQLite gives -wal and -shm the main file's mode: make it private.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        # Binding the model classes is peewee's way of choosing a database;
        # a process runs one store at a time.
        self.db.bind(ALL_MODELS, bind_refs=False, bind_backrefs=False)
        self.db.connect(reuse_if_open=True)
        self.schema_version = migrate(self.db)

    async def open(self) -> None:
        await self.call(self.open_sync)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(
            self._executor, functools.partial(ctx.run, fn, *args, **kwargs)
        )

    async def transaction(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` inside one transaction on the store thread."""

        def run() -> T:
            # IMMEDIATE takes the write lock up front, so a concurrent writer
            # (another process) makes us wait out busy_timeout instead of
            # failing at the first write after a read.
            with self.db.atomic(lock_type="IMMEDIATE"):
                return fn(*args, **kwargs)

        return await self.call(run)

    def close_sync(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    async def close(self) -> None:
        await self.call(self.close_sync)
        self._executor.shutdown(wait=True)
