"""Running server_core coroutines from Qt slots without losing them or their errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncRunner(QObject):
    """Schedules coroutines on the shared loop and keeps a reference until
    they finish (an unreferenced task can be garbage-collected mid-flight).
    Failures are logged and announced through ``failed`` for an error dialog,
    unless the caller handles them itself."""

    failed = Signal(str, str)  # what was being done, the error message

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        what: str,
        on_done: Callable[[T], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is None:
                if on_done is not None:
                    on_done(t.result())
                return
            if on_error is not None and isinstance(exc, Exception):
                on_error(exc)
                return
            log.error("%s failed", what, exc_info=exc)
            self.failed.emit(what, str(exc) or type(exc).__name__)

        task.add_done_callback(finished)
        return task

    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task started so far (used at shutdown and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
