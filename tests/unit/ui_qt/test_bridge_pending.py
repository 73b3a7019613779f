"""The event bridge coalesces pending-host events: a burst (a flood of
announcements) is one ``pending_hosts_changed`` per flush."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from server_core.events import EventBus, PendingHostsChanged
from ui_qt.bridge import EventBridge


def test_pending_host_events_are_coalesced_per_flush(qapp: Any) -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    seen: list[bool] = []
    bridge.pending_hosts_changed.connect(lambda: seen.append(True))
    try:
        for n in range(100):
            bus.publish(PendingHostsChanged(n))
        bus.publish(PendingHostsChanged(None))
        assert seen == []
        bridge.flush()
        assert seen == [True]
        bridge.flush()
        assert seen == [True]
        bus.publish(PendingHostsChanged(3))
        bridge.flush()
        assert seen == [True, True]
    finally:
        bridge.close()
