"""The event bridge coalesces alert and channel events: one signal per flush,
carrying each alert's latest transition (a re-fire never hides another)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from server_core.events import AlertChanged, ChannelsChanged, EventBus
from ui_qt.bridge import EventBridge, alters_counts


def test_alert_transitions_are_coalesced_per_flush(qapp: Any) -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    alerts: list[object] = []
    channels: list[bool] = []
    bridge.alerts_changed.connect(alerts.append)
    bridge.channels_changed.connect(lambda: channels.append(True))
    try:
        bus.publish(AlertChanged(1, 7, "raised", "critical"))
        for _ in range(9):
            bus.publish(AlertChanged(1, 7, "bumped", "critical"))  # still new: raised
        bus.publish(AlertChanged(2, 7, "bumped", "warning"))
        bus.publish(AlertChanged(3, 8, "raised", "warning"))
        bus.publish(AlertChanged(3, 8, "acknowledged", "warning"))  # the latest wins
        bus.publish(AlertChanged(4, 8, "acknowledged", "warning"))
        bus.publish(AlertChanged(4, 8, "bumped", "warning"))  # nor an acknowledgement
        for n in range(5):
            bus.publish(ChannelsChanged(n))
        assert alerts == [] and channels == []  # nothing before the flush
        bridge.flush()
        assert alerts == [{1: "raised", 2: "bumped", 3: "acknowledged", 4: "acknowledged"}]
        assert channels == [True]
        bridge.flush()  # nothing new: nothing emitted
        assert len(alerts) == 1 and len(channels) == 1
        bus.publish(AlertChanged(1, 7, "bumped", "critical"))
        bridge.flush()
        assert alerts[-1] == {1: "bumped"}  # a later interval: a plain re-fire
        # Only a re-fire leaves the counts as they were: listeners need not re-count.
        assert not alters_counts({1: "bumped", 2: "bumped"})
        assert alters_counts({1: "bumped", 3: "acknowledged"})
    finally:
        bridge.close()
