"""An offline laptop reads "asleep · last seen 3 h ago" (host header, fleet
status column), and that time keeps moving; always-on hosts are unchanged."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from PySide6.QtCore import Qt

from server_core.views import HostView
from ui_qt import host_view
from ui_qt.fleet_model import Column, FleetModel, asleep

NOW = 1_700_000_000.0


def view(id_: int, **kw: Any) -> HostView:
    base: dict[str, Any] = {
        "status": "offline",
        "enrolled": True,
        "os": "linux",
        "arch": "amd64",
        "agent_version": "0.1.0",
        "restic_version": "0.18.0",
        "last_seen_at": NOW - 3 * 3600,
        "last_backup_at": None,
        "last_backup_status": None,
        "repo_status": "ready",
        "repo_status_error": None,
        "snapshot_count": 0,
        "repo_size_bytes": None,
        "open_alerts": 0,
        "tags": [],
        "presence_mode": "laptop",
        "created_at": NOW - 10 * 86400,
    }
    base.update(kw)
    return HostView(id=id_, name=f"host-{id_}", **base)


def status(model: FleetModel, row: int, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
    return model.index(row, int(Column.STATUS)).data(role)


def test_header_state_of_a_sleeping_laptop() -> None:
    label, colour = host_view.host_state(view(1), NOW)
    assert label == "asleep · last seen 3 h ago"
    assert colour == host_view.GREY  # calm, not the amber of an offline server
    assert host_view.host_state(view(1, presence_mode="always_on"), NOW) == (
        "offline",
        host_view.AMBER,
    )
    assert host_view.host_state(view(1, status="online"), NOW)[0] == "online"
    assert host_view.host_state(view(1, last_seen_at=None), NOW)[0] == "never connected"


def test_fleet_status_column_reads_asleep_and_ticks(qapp: Any) -> None:
    clock = [NOW]
    model = FleetModel(now=lambda: clock[0], tick_ms=3_600_000)
    model.apply([view(1), view(2, presence_mode="always_on"), view(3, status="online")])
    assert [status(model, r) for r in range(3)] == [
        "Asleep · last seen 3 h ago",
        "Offline",
        "Online",
    ]
    assert asleep(model.host_at(0)) and not asleep(model.host_at(1))
    assert "no offline alert" in status(model, 0, Qt.ItemDataRole.ToolTipRole)
    changed: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda tl, br, _r: changed.append((tl.column(), br.column())))
    clock[0] += 2 * 86400
    model.tick()
    assert (int(Column.STATUS), int(Column.STATUS)) in changed
    assert status(model, 0) == "Asleep · last seen 2 d ago"


def test_switching_a_host_to_laptop_repaints_its_status_cell(qapp: Any) -> None:
    model = FleetModel(now=lambda: NOW, tick_ms=3_600_000)
    model.apply([view(1, presence_mode="always_on")])
    changed: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda tl, br, _r: changed.append((tl.column(), br.column())))
    model.apply([view(1)])
    assert changed == [(int(Column.STATUS), int(Column.STATUS))]
    assert status(model, 0).startswith("Asleep")
    # No sleeping host: the tick leaves the status column alone.
    model.apply([view(1, status="online")])
    changed.clear()
    model.tick()
    assert (int(Column.STATUS), int(Column.STATUS)) not in changed
