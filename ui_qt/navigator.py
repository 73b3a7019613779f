"""How views ask the main window to show something else, without importing it."""

from __future__ import annotations

from typing import Protocol


class Navigator(Protocol):
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...
