"""Remember a quit signal that arrives while the desktop app is still starting.

Importing Qt, aiohttp and the control plane takes about a second. Until the
event loop installs its own handlers, SIGTERM's default action would kill the
process mid-start (exit 143) with the database possibly half-open; this guard
turns it into an ordinary quit request that the app honours once it runs.
"""

from __future__ import annotations

import signal
from types import FrameType

QUIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EarlyQuit:
    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def install(self) -> EarlyQuit:
        for sig in QUIT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Give the signals back, for commands that do not start the app."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
