"""What GUI tests on the qasync loop share: a bounded wait, stand-ins for the
main window (as the navigator and as the tray's window), and a host added
through the real enrolment service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host


async def until(predicate: Callable[[], Any], what: str = "", timeout: float = 10.0) -> Any:
    """Poll on the running (qasync) loop until ``predicate()`` is truthy and return
    it; never qtbot.waitUntil in an async test (it deadlocks the shared loop)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what or predicate} (last: {last!r})"
    )


class RecordingNavigator:
    """A ui_qt.navigator.Navigator that records where the view sent the operator."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def show_fleet(self) -> None:
        self.calls.append(("show_fleet", None))

    def open_host(self, host_id: int) -> None:
        self.calls.append(("open_host", host_id))

    def open_job(self, job_id: str) -> None:
        self.calls.append(("open_job", job_id))

    def add_host(self) -> None:
        self.calls.append(("add_host", None))

    def show_alerts(self, alert_id: int | None = None) -> None:
        self.calls.append(("show_alerts", alert_id))

    def show_audit(self) -> None:
        self.calls.append(("show_audit", None))

    def show_settings(self) -> None:
        self.calls.append(("show_settings", None))


class StandInWindow:
    """A ui_qt.tray.TrayWindow that records what the tray asked of the main window."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def bring_to_front(self) -> None:
        self.calls.append(("bring_to_front", None))

    def open_host(self, host_id: int) -> None:
        self.calls.append(("open_host", host_id))

    def show_alerts(self, alert_id: int | None = None) -> None:
        self.calls.append(("show_alerts", alert_id))

    def quit_app(self) -> None:
        self.calls.append(("quit_app", None))


async def add_host(cp: ControlPlane, name: str) -> int:
    """A host added by the operator (not enrolled yet); returns its id."""
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": f"/srv/restic/{name}", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    return (await cp.enrolment.add_host(new, OPERATOR)).host_id
