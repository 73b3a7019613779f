"""A real control plane on its own event loop in a background thread.

Hypothesis and schemathesis drive tests synchronously (schemathesis through
`requests`); the control plane needs a running loop. Running it on a thread
of its own lets a sync test talk to it over real sockets, and lets the test
ask the plane's loop to do things (``run``) without sharing it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import keyring.backends.fail
from aiohttp.http_exceptions import HttpProcessingError

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR

T = TypeVar("T")


class ErrorLog(logging.Handler):
    """Collects ERROR records of the control plane's loggers: a handler that
    died with a traceback is a crash for these tests, even if the process lives."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.malformed_http = 0

    def emit(self, record: logging.LogRecord) -> None:
        if _malformed_http(record):
            # aiohttp answers 400 and logs the parser's complaint with a
            # traceback at ERROR: noise (see RELIABILITY.md), not a crash.
            self.malformed_http += 1
            return
        self.records.append(record)

    def describe(self) -> str:
        return "\n".join(
            f"{r.name}: {r.getMessage()}\n{self.format(r) if r.exc_info else ''}"
            for r in self.records
        )


def _malformed_http(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError)


class LivePlane:
    def __init__(self, data_dir: Path, **config: Any) -> None:
        self.config = ControlPlaneConfig(
            data_dir=data_dir,
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
            **config,
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-plane")
        self.errors = ErrorLog()
        self.plane: ControlPlane | None = None

    @property
    def cp(self) -> ControlPlane:
        assert self.plane is not None
        return self.plane

    def start(self) -> LivePlane:
        logging.getLogger("server_core").addHandler(self.errors)
        logging.getLogger("aiohttp").addHandler(self.errors)
        self._thread.start()
        self.plane = ControlPlane(self.config)
        self.run(self.plane.start(), timeout=60)
        return self

    def stop(self) -> None:
        try:
            if self.plane is not None:
                self.run(self.plane.stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()
            logging.getLogger("server_core").removeHandler(self.errors)
            logging.getLogger("aiohttp").removeHandler(self.errors)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)

    def api_token(self) -> str:
        return self.run(self.cp.store.transaction(create_api_token, "fuzz", OPERATOR))
