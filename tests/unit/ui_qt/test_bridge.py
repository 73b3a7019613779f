"""The event bridge coalesces the issue-4 events like the others: one signal per
kind per interval, carrying the set of hosts that changed."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from server_core.events import EventBus, HostChanged, RepoStatsChanged, SourcesChanged
from ui_qt.bridge import EventBridge


def test_sources_and_repo_stats_are_coalesced_per_flush(qapp: Any) -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    got: dict[str, list[object]] = {"sources": [], "stats": [], "hosts": []}
    bridge.sources_changed.connect(got["sources"].append)
    bridge.repo_stats_changed.connect(got["stats"].append)
    bridge.hosts_changed.connect(got["hosts"].append)
    try:
        for _ in range(50):
            bus.publish(SourcesChanged(1))
            bus.publish(RepoStatsChanged(1))
        bus.publish(SourcesChanged(2))
        bus.publish(HostChanged(3))
        assert got == {"sources": [], "stats": [], "hosts": []}  # nothing before the flush
        bridge.flush()
        assert got == {"sources": [{1, 2}], "stats": [{1}], "hosts": [{3}]}
        bridge.flush()  # nothing new: nothing emitted
        assert len(got["sources"]) == 1 and len(got["stats"]) == 1
    finally:
        bridge.close()
