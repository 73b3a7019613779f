"""AlertsModel diffing and the per-tab status proxies, with synthetic AlertViews (no server)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import dataclasses
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QImage

from server_core.views import AlertView
from ui_qt.alerts_model import (
    ACKNOWLEDGED,
    ALERT_ROLE,
    FIELD_COLUMNS,
    OPEN,
    RESOLVED,
    SORT_ROLE,
    AlertsModel,
    AlertsStatusProxy,
    Column,
    kind_label,
    lifecycle,
    severity_icon,
)

NOW = 1_700_000_000.0


def alert(id_: int, **kw: Any) -> AlertView:
    base: dict[str, Any] = {
        "kind": "backup_failed",
        "severity": "critical",
        "host_id": 1,
        "host_name": "web1",
        "status": OPEN,
        "message": "Backup of 'etc' failed: wrong password",
        "first_seen_at": NOW - 3600,
        "last_seen_at": NOW - 60,
        "count": 1,
    }
    base.update(kw)
    return AlertView(id=id_, **base)


class Spy:
    def __init__(self, model: AlertsModel) -> None:
        self.resets = 0
        self.inserted: list[tuple[int, int]] = []
        self.removed: list[tuple[int, int]] = []
        self.changed: list[tuple[int, int, int, int, list[int]]] = []
        model.modelReset.connect(self._reset)
        model.rowsInserted.connect(lambda _p, a, b: self.inserted.append((a, b)))
        model.rowsRemoved.connect(lambda _p, a, b: self.removed.append((a, b)))
        model.dataChanged.connect(
            lambda tl, br, roles: self.changed.append(
                (tl.row(), tl.column(), br.row(), br.column(), list(roles))
            )
        )

    def _reset(self) -> None:
        self.resets += 1


@pytest.fixture
def model(qapp: Any) -> AlertsModel:
    return AlertsModel(now=lambda: NOW, tick_ms=3_600_000)


def display(model: AlertsModel, row: int, col: Column) -> Any:
    return model.index(row, int(col)).data(Qt.ItemDataRole.DisplayRole)


def proxy_ids(proxy: AlertsStatusProxy) -> list[int | None]:
    return [proxy.alert_id(r) for r in range(proxy.rowCount())]


def test_a_bump_changes_only_count_last_seen_and_message_cells(model: AlertsModel) -> None:
    model.apply([alert(1), alert(2, kind="agent_offline", severity="warning")])
    spy = Spy(model)
    bumped = dataclasses.replace(
        alert(1), count=2, last_seen_at=NOW - 5, message="Backup failed again"
    )
    model.apply([bumped, alert(2, kind="agent_offline", severity="warning")])
    assert spy.resets == 0 and spy.inserted == [] and spy.removed == []
    msg, last, count = int(Column.MESSAGE), int(Column.LAST_SEEN), int(Column.COUNT)
    assert [(c[1], c[3]) for c in spy.changed] == [(msg, msg), (last, last), (count, count)]
    assert all(c[0] == c[2] == 0 for c in spy.changed)
    assert display(model, 0, Column.COUNT) == "2"
    assert display(model, 0, Column.LAST_SEEN) == "just now"


def test_only_the_first_load_resets(model: AlertsModel) -> None:
    spy = Spy(model)
    model.apply([alert(1)])
    model.apply([alert(1), alert(2)])
    model.apply([alert(2)])
    assert spy.resets == 1
    assert spy.inserted == [(1, 1)]
    assert spy.removed == [(0, 0)]
    assert [a.id for a in model.alerts()] == [2]


def test_a_partial_refresh_touches_only_the_alerts_it_asked_for(model: AlertsModel) -> None:
    model.apply([alert(1), alert(2), alert(3)])
    with pytest.raises(ValueError):
        AlertsModel(now=lambda: NOW).apply([alert(1)], only={1})
    spy = Spy(model)
    # Asked for 2, 3, 9: 2 changed, 3 vanished, 9 is new; 1 stays as it is.
    model.apply([alert(2, count=4), alert(9)], only={2, 3, 9})
    assert [a.id for a in model.alerts()] == [1, 2, 9]
    assert spy.removed == [(2, 2)] and spy.inserted == [(2, 2)]
    assert model.alert(2).count == 4  # type: ignore[union-attr]


def test_acknowledging_moves_the_row_between_tab_proxies_without_a_reset(
    model: AlertsModel,
) -> None:
    tabs = {s: AlertsStatusProxy(s) for s in (OPEN, ACKNOWLEDGED, RESOLVED)}
    for proxy in tabs.values():
        proxy.setSourceModel(model)
        proxy.sort(int(Column.LAST_SEEN), Qt.SortOrder.DescendingOrder)
    model.apply([alert(1), alert(2, last_seen_at=NOW - 10), alert(3, status=RESOLVED)])
    assert proxy_ids(tabs[OPEN]) == [2, 1]  # newest last seen first
    assert proxy_ids(tabs[RESOLVED]) == [3]
    spy = Spy(model)
    model.apply([alert(2, status=ACKNOWLEDGED, acknowledged_at=NOW)], only={2})
    assert spy.resets == 0 and spy.removed == [] and spy.inserted == []
    assert proxy_ids(tabs[OPEN]) == [1]
    assert proxy_ids(tabs[ACKNOWLEDGED]) == [2]
    model.apply([alert(1, status=RESOLVED, resolved_at=NOW)], only={1})
    assert proxy_ids(tabs[OPEN]) == []
    assert sorted(proxy_ids(tabs[RESOLVED])) == [1, 3]  # type: ignore[type-var]
    assert model.count(RESOLVED) == 2


def test_severity_is_text_icon_and_colour_and_sorts_by_rank(model: AlertsModel) -> None:
    model.apply(
        [
            alert(1, severity="warning"),
            alert(2, severity="critical"),
            alert(3, severity="info", kind="update_failed", host_id=None, host_name=None),
        ]
    )
    sev = int(Column.SEVERITY)
    assert [display(model, r, Column.SEVERITY) for r in range(3)] == ["Warning", "Critical", "Info"]
    assert [model.index(r, sev).data(SORT_ROLE) for r in range(3)] == [1, 2, 0]
    icons = [model.index(r, sev).data(Qt.ItemDataRole.DecorationRole) for r in range(3)]
    assert all(not i.isNull() for i in icons)
    assert model.index(0, sev).data(Qt.ItemDataRole.ForegroundRole) is not None
    assert model.index(1, sev).data(Qt.ItemDataRole.FontRole).bold()
    assert display(model, 2, Column.HOST) == "—"
    assert display(model, 2, Column.KIND) == "Agent update failed"
    assert "double-click" not in model.index(2, int(Column.HOST)).data(Qt.ItemDataRole.ToolTipRole)


def test_severity_badges_differ_in_shape_not_only_colour(qapp: Any) -> None:
    def mask(severity: str) -> list[bool]:
        image = severity_icon(severity, 32).pixmap(32, 32).toImage()
        image = image.convertToFormat(QImage.Format.Format_ARGB32)
        return [image.pixelColor(x, y).alpha() > 128 for y in range(32) for x in range(32)]

    shapes = {s: mask(s) for s in ("critical", "warning", "info")}
    # Opaque where the badge is: three different silhouettes.
    assert shapes["critical"] != shapes["warning"] != shapes["info"] != shapes["critical"]
    # Near a corner: the critical square is filled, the info circle and the
    # warning triangle are not.
    corner = 4 * 32 + 4
    assert shapes["critical"][corner]
    assert not shapes["info"][corner] and not shapes["warning"][corner]


def test_relative_times_tick_without_a_reload(qapp: Any) -> None:
    clock = [NOW]
    model = AlertsModel(now=lambda: clock[0], tick_ms=3_600_000)
    model.apply([alert(1, last_seen_at=NOW - 30)])
    assert display(model, 0, Column.LAST_SEEN) == "just now"
    spy = Spy(model)
    clock[0] += 3 * 3600
    model.tick()
    first, changed = int(Column.FIRST_SEEN), int(Column.CHANGED)
    assert spy.changed == [
        (0, first, 0, changed, [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole])
    ]
    assert display(model, 0, Column.LAST_SEEN) == "3 h ago"
    assert display(model, 0, Column.FIRST_SEEN) == "4 h ago"


def test_tooltips_say_what_to_do_and_where_the_alert_stands(model: AlertsModel) -> None:
    model.apply(
        [
            alert(1, message="line one\nline two", count=3),
            alert(2, status=ACKNOWLEDGED, acknowledged_at=NOW - 7200),
        ]
    )
    tip = model.index(0, int(Column.MESSAGE)).data(Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("line one\nline two") and "Open since 1 h ago" in tip
    assert display(model, 0, Column.MESSAGE) == "line one"
    assert "Jobs tab" in model.index(0, int(Column.KIND)).data(Qt.ItemDataRole.ToolTipRole)
    assert "3 times" in model.index(0, int(Column.COUNT)).data(Qt.ItemDataRole.ToolTipRole)
    assert lifecycle(model.alert(2), NOW) == "Acknowledged 2 h ago, not resolved yet"  # type: ignore[arg-type]
    assert model.index(1, 0).data(ALERT_ROLE).id == 2
    assert kind_label("something_new") == "Something new"


def test_every_field_a_column_shows_is_a_real_field() -> None:
    fields = {f.name for f in dataclasses.fields(AlertView)}
    assert set(FIELD_COLUMNS) <= fields
    assert {c for cols in FIELD_COLUMNS.values() for c in cols} == set(Column)


def test_no_rows_under_a_parent(model: AlertsModel) -> None:
    model.apply([alert(1)])
    assert model.rowCount(model.index(0, 0)) == 0
    assert model.columnCount(model.index(0, 0)) == 0
    assert model.index(5, 0).data() is None
    assert model.rowCount(QModelIndex()) == 1


def test_the_changed_column_says_when_it_was_acknowledged_or_resolved(
    model: AlertsModel,
) -> None:
    model.apply(
        [
            alert(1),
            alert(2, status=ACKNOWLEDGED, acknowledged_at=NOW - 300),
            alert(3, status=RESOLVED, acknowledged_at=NOW - 7200, resolved_at=NOW - 3 * 86400),
        ]
    )
    assert [display(model, r, Column.CHANGED) for r in range(3)] == ["", "5 min ago", "3 d ago"]
    headers = {}
    for status in (ACKNOWLEDGED, RESOLVED):
        proxy = AlertsStatusProxy(status)
        proxy.setSourceModel(model)
        headers[status] = proxy.headerData(int(Column.CHANGED), Qt.Orientation.Horizontal)
        assert proxy.headerData(0, Qt.Orientation.Horizontal) == "Severity"
    assert headers == {ACKNOWLEDGED: "Acknowledged", RESOLVED: "Resolved"}
    spy = Spy(model)
    model.apply([alert(2, status=ACKNOWLEDGED, acknowledged_at=NOW - 60)], only={2})
    assert [(c[1], c[3]) for c in spy.changed] == [(int(Column.CHANGED), int(Column.CHANGED))]
