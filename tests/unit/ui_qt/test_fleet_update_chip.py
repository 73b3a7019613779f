"""The "update available" chip of the fleet table and the fleet update preview
(synthetic HostViews, no server)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtGui import QFont, QFontMetrics

from server_core.events import EventBus, UpdatesChanged
from server_core.update_views import available_update
from tests.unit.ui_qt.test_fleet_model import view
from ui_qt.bridge import EventBridge
from ui_qt.fleet_model import UPDATE_ROLE, Column, FleetModel
from ui_qt.fleet_update_dialog import preview_rows
from ui_qt.widgets.update_chip import chip_text

BUNDLED = {"linux/amd64": "0.2.0", "windows/amd64": "0.2.0"}


def test_a_host_is_outdated_when_its_platform_has_another_bundled_version() -> None:
    assert available_update("linux", "amd64", "0.1.0", BUNDLED) == "0.2.0"
    assert available_update("linux", "amd64", "0.3.0", BUNDLED) == "0.2.0"  # the app's wins
    assert available_update("linux", "amd64", "0.2.0", BUNDLED) is None
    assert available_update("linux", "arm64", "0.1.0", BUNDLED) is None  # no build for it
    assert available_update(None, None, None, BUNDLED) is None  # never connected
    assert available_update("linux", "amd64", "0.1.0", {}) is None


def test_the_agent_column_carries_the_chip_and_repaints_only_itself(qapp) -> None:
    model = FleetModel(tick_ms=10**9)
    model.apply([view(1, "a"), view(2, "b", agent_version="0.2.0"), view(3, "c", arch="arm64")])
    agent = int(Column.AGENT)
    assert [model.index(r, agent).data(UPDATE_ROLE) for r in range(3)] == [None, None, None]
    changed: list[tuple[int, int, list[int]]] = []
    model.dataChanged.connect(
        lambda tl, br, roles: changed.append((tl.column(), br.column(), roles))
    )
    model.set_bundled_versions({"linux/amd64": "0.2.0"})
    assert changed == [(agent, agent, [UPDATE_ROLE])]
    assert [model.index(r, agent).data(UPDATE_ROLE) for r in range(3)] == ["0.2.0", None, None]
    assert [v.name for v in model.outdated()] == ["a"]
    assert "update available" in model.index(0, agent).data(3)
    assert "update" not in model.index(1, agent).data(3)
    changed.clear()
    model.set_bundled_versions({"linux/amd64": "0.2.0"})  # the same: nothing repaints
    assert changed == []
    # A host that reports another platform gets its chip cell repainted.
    model.apply(
        [
            view(1, "a", arch="arm64"),
            view(2, "b", agent_version="0.2.0"),
            view(3, "c", arch="arm64"),
        ]
    )
    assert any(first <= agent <= last for first, last, _ in changed)
    assert model.outdated() == []


def test_the_preview_lists_outdated_hosts_in_update_order() -> None:
    rows = preview_rows(
        [
            view(1, "zeta"),
            view(2, "Alpha", status="offline"),
            view(3, "beta", agent_version="0.2.0"),
            view(4, "gamma", os=None, arch=None, agent_version=None),
        ],
        BUNDLED,
    )
    assert [(r.host_name, r.from_version, r.to_version) for r in rows] == [
        ("Alpha", "0.1.0", "0.2.0"),
        ("zeta", "0.1.0", "0.2.0"),
    ]
    assert rows[0].detail is not None and "offline" in rows[0].detail and rows[1].detail is None


def test_the_chip_label_shrinks_to_fit(qapp) -> None:
    fm = QFontMetrics(QFont())
    assert chip_text("0.2.0", fm, 500) == "update → 0.2.0"
    assert chip_text("0.2.0", fm, fm.horizontalAdvance("update") + 14) == "update"
    assert chip_text("0.2.0", fm, 5) is None


def test_update_events_reach_the_ui_coalesced(qapp) -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    got: list[object] = []
    bridge.updates_changed.connect(got.append)
    try:
        for _ in range(20):
            bus.publish(UpdatesChanged(1))
        bus.publish(UpdatesChanged(None))
        assert got == []
        bridge.flush()
        assert got == [{1, None}]
        bridge.flush()
        assert got == [{1, None}]
    finally:
        bridge.close()
