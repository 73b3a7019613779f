"""FleetModel diffing and FleetFilterProxy filtering, with synthetic HostViews (no server)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import dataclasses
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt

from server_core.views import HostView
from ui_qt.fleet_model import (
    FIELD_COLUMNS,
    HOST_ID_ROLE,
    HOST_ROLE,
    SORT_ROLE,
    SPARKLINE_ROLE,
    Column,
    FleetFilterProxy,
    FleetModel,
    host_state,
    natural_key,
    repo_needs_attention,
)

NOW = 1_700_000_000.0


def view(id_: int, name: str | None = None, **kw: Any) -> HostView:
    base: dict[str, Any] = {
        "status": "online",
        "enrolled": True,
        "os": "linux",
        "arch": "amd64",
        "agent_version": "0.1.0",
        "restic_version": "0.18.0",
        "last_seen_at": NOW - 10,
        "last_backup_at": None,
        "last_backup_status": None,
        "repo_status": "ready",
        "repo_status_error": None,
        "snapshot_count": 0,
        "repo_size_bytes": None,
        "open_alerts": 0,
        "tags": [],
        "presence_mode": "always_on",
        "created_at": NOW - 1000,
    }
    base.update(kw)
    return HostView(id=id_, name=name or f"host-{id_}", **base)


class Spy:
    """Records a model's structural and data signals."""

    def __init__(self, model: FleetModel) -> None:
        self.resets = 0
        self.changed: list[tuple[int, int, int, int]] = []
        self.inserted: list[tuple[int, int]] = []
        self.removed: list[tuple[int, int]] = []
        model.modelReset.connect(self._reset)
        model.dataChanged.connect(self._changed)
        model.rowsInserted.connect(lambda _p, a, b: self.inserted.append((a, b)))
        model.rowsRemoved.connect(lambda _p, a, b: self.removed.append((a, b)))

    def _reset(self) -> None:
        self.resets += 1

    def _changed(self, tl: QModelIndex, br: QModelIndex, _roles: object = None) -> None:
        self.changed.append((tl.row(), tl.column(), br.row(), br.column()))


@pytest.fixture
def model(qapp: Any) -> FleetModel:
    return FleetModel(now=lambda: NOW)


def ids(model: FleetModel) -> list[int]:
    return [model.host_at(r).id for r in range(model.rowCount())]


def test_first_load_resets_once_then_never(model: FleetModel) -> None:
    spy = Spy(model)
    model.apply([view(1), view(2)])
    assert spy.resets == 1
    assert model.loaded() and model.rowCount() == 2
    model.apply([view(1), view(2), view(3)])
    model.apply([view(1), view(3)])
    model.apply([])
    model.apply([view(4)])
    assert spy.resets == 1


def test_an_empty_first_load_counts_as_the_load(model: FleetModel) -> None:
    spy = Spy(model)
    model.apply([])
    model.apply([view(1)])
    assert spy.resets == 1
    assert spy.inserted == [(0, 0)]


def test_changed_row_emits_data_changed_for_that_row_only(model: FleetModel) -> None:
    model.apply([view(1), view(2), view(3)])
    spy = Spy(model)
    model.apply([view(1), view(2, status="offline"), view(3)])
    status = int(Column.STATUS)
    assert spy.changed == [(1, status, 1, status)]
    assert (spy.resets, spy.inserted, spy.removed) == (0, [], [])
    assert model.host_at(1).status == "offline"


def test_only_the_changed_cells_are_signalled(model: FleetModel) -> None:
    model.apply([view(1), view(2)])
    spy = Spy(model)
    # Adjacent columns go in one signal, others in their own.
    model.apply(
        [
            view(1),
            view(2, last_backup_at=NOW - 60, next_run_at=NOW + 60, os="windows", tags=["x"]),
        ]
    )
    platform, agent, tags = int(Column.PLATFORM), int(Column.AGENT), int(Column.TAGS)
    last_backup, next_run = int(Column.LAST_BACKUP), int(Column.NEXT_RUN)
    assert spy.changed == [
        # The platform decides the agent cell's "update available" chip too.
        (1, platform, 1, agent),
        (1, last_backup, 1, next_run),
        (1, tags, 1, tags),
    ]


def test_a_change_no_cell_shows_is_signalled_for_the_host_role_only(
    model: FleetModel,
) -> None:
    model.apply([view(1)])
    roles: list[list[int]] = []
    spans: list[tuple[int, int]] = []

    def changed(tl: QModelIndex, br: QModelIndex, r: list[int]) -> None:
        spans.append((tl.column(), br.column()))
        roles.append(list(r))

    model.dataChanged.connect(changed)
    model.apply([view(1, schedule_version=4)])
    assert spans == [(0, 0)] and roles == [[HOST_ROLE]]
    assert model.host(1).schedule_version == 4  # type: ignore[union-attr]


def test_every_field_a_cell_shows_is_a_real_field() -> None:
    fields = {f.name for f in dataclasses.fields(HostView)}
    assert set(FIELD_COLUMNS) <= fields
    # Each column is drawn from at least one field.
    assert {c for cols in FIELD_COLUMNS.values() for c in cols} == set(Column)


def test_column_count_is_constant_and_zero_under_a_parent(model: FleetModel) -> None:
    assert model.columnCount() == len(Column)
    model.apply([view(1)])
    assert model.columnCount(model.index(0, 0)) == 0


def test_a_partial_refresh_touches_only_the_hosts_it_asked_for(model: FleetModel) -> None:
    model.apply([view(1), view(2), view(3), view(4)])
    spy = Spy(model)
    # Asked for 2, 3, 9: 2 changed, 3 is gone, 9 is new; 1 and 4 are not in
    # the result and stay as they are.
    model.apply([view(2, snapshot_count=5), view(9)], only={2, 3, 9})
    assert sorted(ids(model)) == [1, 2, 4, 9]
    assert model.host(2).snapshot_count == 5  # type: ignore[union-attr]
    assert spy.removed == [(2, 2)]
    assert spy.inserted == [(3, 3)]
    snaps = int(Column.SNAPSHOTS)
    assert spy.changed == [(1, snaps, 1, snaps)]
    assert spy.resets == 0
    # Asking for hosts that neither exist nor are shown changes nothing.
    model.apply([], only={77})
    assert sorted(ids(model)) == [1, 2, 4, 9]


def test_the_first_load_must_be_the_whole_fleet(model: FleetModel) -> None:
    with pytest.raises(ValueError, match="whole fleet"):
        model.apply([view(1)], only={1})
    assert not model.loaded()


def test_the_proxy_repaints_only_the_changed_cell_and_resorts_on_the_sort_key(
    model: FleetModel,
) -> None:
    model.apply([view(i, f"web-{i}") for i in (1, 2, 10)])
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)
    proxy.sort(int(Column.NAME), Qt.SortOrder.AscendingOrder)
    spans: list[tuple[int, int]] = []
    proxy.dataChanged.connect(lambda tl, br, *_: spans.append((tl.column(), br.column())))

    def order() -> list[int]:
        return [proxy.index(r, 0).data(HOST_ID_ROLE) for r in range(proxy.rowCount())]

    assert order() == [1, 2, 10]  # natural: web-2 before web-10
    model.apply([view(2, "web-2", snapshot_count=7)], only={2})
    snaps = int(Column.SNAPSHOTS)
    assert spans == [(snaps, snaps)] and order() == [1, 2, 10]
    model.apply([view(2, "web-20")], only={2})
    assert order() == [1, 10, 2]


def test_unchanged_fleet_emits_nothing(model: FleetModel) -> None:
    model.apply([view(1, tags=["a"]), view(2)])
    spy = Spy(model)
    model.apply([view(1, tags=["a"]), view(2)])
    assert (spy.resets, spy.changed, spy.inserted, spy.removed) == (0, [], [], [])


def test_new_hosts_are_inserted_in_one_batch(model: FleetModel) -> None:
    model.apply([view(1)])
    spy = Spy(model)
    model.apply([view(5), view(1), view(7)])
    assert spy.inserted == [(1, 2)]
    assert ids(model) == [1, 5, 7]
    assert model.row_of(7) == 2


def test_removed_hosts_in_runs_keep_the_others_intact(model: FleetModel) -> None:
    model.apply([view(i) for i in range(1, 8)])
    spy = Spy(model)
    model.apply([view(1), view(4), view(6, snapshot_count=3)])
    # rows 1-2 (ids 2,3), 4 (id 5), 6 (id 7) removed bottom-up
    assert spy.removed == [(6, 6), (4, 4), (1, 2)]
    assert ids(model) == [1, 4, 6]
    assert {model.row_of(h) for h in (1, 4, 6)} == {0, 1, 2}
    assert model.row_of(2) is None
    # the changed host is reported at its row after the removals
    snaps = int(Column.SNAPSHOTS)
    assert spy.changed == [(2, snaps, 2, snaps)]
    assert model.host(6) is not None and model.host(6).snapshot_count == 3  # type: ignore[union-attr]


def test_mixed_update_matches_the_input_set(model: FleetModel) -> None:
    model.apply([view(i) for i in range(10)])
    fresh = [view(i, open_alerts=i % 3) for i in range(3, 15)]
    model.apply(fresh)
    assert sorted(ids(model)) == list(range(3, 15))
    for v in fresh:
        row = model.row_of(v.id)
        assert row is not None and model.host_at(row) == v
        assert model.index(row, 0).data(HOST_ID_ROLE) == v.id


def test_remove_ids_drops_rows_without_a_reset(model: FleetModel) -> None:
    model.apply([view(1), view(2), view(3)])
    spy = Spy(model)
    model.remove_ids({2, 99})
    assert spy.removed == [(1, 1)] and spy.resets == 0
    assert ids(model) == [1, 3]


def test_tick_repaints_only_the_relative_time_columns(model: FleetModel) -> None:
    model.apply([view(1, last_backup_at=NOW - 600), view(2)])
    spy = Spy(model)
    model.tick()
    assert spy.changed == [(0, int(Column.LAST_BACKUP), 1, int(Column.NEXT_RUN))]


def test_tick_timer_runs(qapp: Any) -> None:
    m = FleetModel(tick_ms=5)
    assert m._ticker.isActive() and m._ticker.interval() == 5


def test_host_state() -> None:
    assert host_state(view(1)) == "online"
    assert host_state(view(1, status="offline")) == "offline"
    assert host_state(view(1, status="offline", last_seen_at=None)) == "never"
    assert host_state(view(1, status="offline", enrolled=False, last_seen_at=None)) == "never"


def test_repo_attention() -> None:
    assert repo_needs_attention(view(1, repo_status="init_failed"))
    assert repo_needs_attention(view(1, repo_status="unknown"))
    assert not repo_needs_attention(view(1, repo_status="unknown", enrolled=False))
    assert not repo_needs_attention(view(1, repo_status="ready"))


def test_sort_role_is_numeric_for_sizes_and_times(model: FleetModel) -> None:
    model.apply(
        [
            view(1, repo_size_bytes=900, last_backup_at=NOW - 10),
            view(2, repo_size_bytes=5 * 1024**3, last_backup_at=NOW - 86400 * 3),
            view(3, repo_size_bytes=None),
        ]
    )
    size = [model.index(r, int(Column.SIZE)).data(SORT_ROLE) for r in range(3)]
    assert size == [900, 5 * 1024**3, -1]
    assert model.index(1, int(Column.SIZE)).data() == "5.0 GiB"
    when = [model.index(r, int(Column.LAST_BACKUP)).data(SORT_ROLE) for r in range(3)]
    assert when == [NOW - 10, NOW - 86400 * 3, -1.0]


def test_proxy_sorts_sizes_numerically(model: FleetModel) -> None:
    sizes = [900, 5 * 1024**3, 20 * 1024**2, 3 * 1024]
    model.apply([view(i, repo_size_bytes=s) for i, s in enumerate(sizes)])
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)
    proxy.sort(int(Column.SIZE), Qt.SortOrder.AscendingOrder)
    shown = [proxy.index(r, int(Column.SIZE)).data() for r in range(proxy.rowCount())]
    assert shown == ["900 B", "3.0 KiB", "20.0 MiB", "5.0 GiB"]
    # Text order would have been different: proves the sort role is used.
    assert sorted(shown) != shown


def test_versions_and_names_sort_naturally() -> None:
    assert natural_key("0.9.0") < natural_key("0.14.0") < natural_key("0.18.0")
    assert natural_key("web-2") < natural_key("web-10")
    assert natural_key(None) == ""


def test_display_tooltips_and_colours(model: FleetModel) -> None:
    model.apply(
        [
            view(1, last_backup_at=NOW - 3 * 3600, last_backup_status="failed"),
            view(2, last_backup_at=NOW - 120, last_backup_status="succeeded_with_warnings"),
            view(3, last_backup_at=NOW - 120, last_backup_status="succeeded"),
            view(4, repo_status="init_failed", repo_status_error="Fatal: access denied"),
            view(5, status="offline", enrolled=False, last_seen_at=None, os=None, arch=None),
        ]
    )
    col = int(Column.LAST_BACKUP)
    fg = [model.index(r, col).data(Qt.ItemDataRole.ForegroundRole) for r in range(3)]
    assert fg[0] != fg[1] != fg[2] != fg[0]
    assert model.index(0, col).data() == "3 h ago · failed"
    assert model.index(2, col).data() == "2 min ago"
    assert "failed" in model.index(0, col).data(Qt.ItemDataRole.ToolTipRole)
    repo = model.index(3, int(Column.REPO))
    assert repo.data() == "Init failed"
    assert "Fatal: access denied" in repo.data(Qt.ItemDataRole.ToolTipRole)
    status = model.index(4, int(Column.STATUS))
    assert status.data() == "Never connected"
    assert not status.data(Qt.ItemDataRole.DecorationRole).isNull()
    assert model.index(4, int(Column.PLATFORM)).data() == "—"
    for c in Column:
        tip = model.headerData(int(c), Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
        assert tip, c


def test_relative_time_moves_on_with_the_clock(qapp: Any) -> None:
    clock = [NOW]
    m = FleetModel(now=lambda: clock[0])
    m.apply([view(1, last_backup_at=NOW - 60, last_backup_status="succeeded")])
    idx = m.index(0, int(Column.LAST_BACKUP))
    assert idx.data() == "1 min ago"
    clock[0] += 3600
    assert idx.data() == "1 h ago"


def test_proxy_filters_text_status_and_tags(model: FleetModel) -> None:
    model.apply(
        [
            view(1, "web-01", tags=["prod", "web"]),
            view(2, "web-02", tags=["staging", "web"], status="offline"),
            view(3, "db-01", tags=["prod", "db"], last_backup_status="failed"),
            view(4, "laptop", status="offline", enrolled=False, last_seen_at=None),
            view(5, "ci", repo_status="init_failed"),
        ]
    )
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)

    def names() -> list[str]:
        return sorted(proxy.index(r, int(Column.NAME)).data() for r in range(proxy.rowCount()))

    assert len(names()) == 5
    proxy.set_text("WEB")
    assert names() == ["web-01", "web-02"]
    proxy.set_text("web 02")
    assert names() == ["web-02"]
    proxy.set_text("")
    proxy.set_status("offline")
    assert names() == ["web-02"]
    proxy.set_status("never")
    assert names() == ["laptop"]
    proxy.set_status("failing")
    assert names() == ["db-01"]
    proxy.set_status("attention")
    assert names() == ["ci"]
    proxy.set_status("all")
    proxy.set_tags({"prod"})
    assert names() == ["db-01", "web-01"]
    proxy.set_tags({"prod", "web"})
    assert names() == ["web-01"]
    assert proxy.is_filtering()
    # Live: a host gaining the tag appears without touching the filter.
    model.apply(
        [
            view(1, "web-01", tags=["prod", "web"]),
            view(2, "web-02", tags=["prod", "web"], status="offline"),
            view(3, "db-01", tags=["prod", "db"], last_backup_status="failed"),
        ]
    )
    assert names() == ["web-01", "web-02"]
    proxy.set_status("bogus")
    assert proxy.status() == "all"


def test_all_tags(model: FleetModel) -> None:
    model.apply([view(1, tags=["b", "A"]), view(2, tags=["b", "c"])])
    assert model.all_tags() == ["A", "b", "c"]


def test_rows_are_hostviews_equal_by_value() -> None:
    a = view(1, tags=["x"])
    assert a == dataclasses.replace(a)
    assert a != dataclasses.replace(a, tags=["x", "y"])


# -- issue 4: next run, locked repositories, the size trend ------------------------------


def test_next_run_column_ticks_and_sorts(qapp: Any) -> None:
    clock = [NOW]
    model = FleetModel(now=lambda: clock[0])
    model.apply(
        [
            view(1, next_run_at=NOW + 3 * 3600),
            view(2, next_run_at=None),
            view(3, next_run_at=NOW + 600),
        ]
    )
    col = int(Column.NEXT_RUN)
    assert model.index(0, col).data() == "in 3 h"
    assert model.index(2, col).data() == "in 10 min"
    assert model.index(1, col).data() == "—"
    assert "No enabled schedule" in model.index(1, col).data(Qt.ItemDataRole.ToolTipRole)
    # Time passes without a refresh: the text follows the clock, and a passed
    # run reads "due" rather than a time in the past.
    clock[0] = NOW + 660
    assert model.index(2, col).data() == "due"
    assert "missed schedule once" in model.index(2, col).data(Qt.ItemDataRole.ToolTipRole)
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)
    proxy.sort(col, Qt.SortOrder.AscendingOrder)
    order = [proxy.index(r, 0).data(HOST_ID_ROLE) for r in range(3)]
    assert order == [3, 1, 2]  # soonest first, never last


def test_a_locked_repository_has_its_own_label_and_needs_attention(model: FleetModel) -> None:
    model.apply([view(1, repo_status="locked"), view(2, repo_status="ready")])
    repo = model.index(0, int(Column.REPO))
    assert repo.data() == "Locked"
    assert "Repo tab to unlock" in repo.data(Qt.ItemDataRole.ToolTipRole)
    colour = repo.data(Qt.ItemDataRole.ForegroundRole)
    assert colour is not None and colour != model.index(1, int(Column.REPO)).data(
        Qt.ItemDataRole.ForegroundRole
    )
    assert repo_needs_attention(view(1, repo_status="locked"))
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_status("attention")
    assert proxy.rowCount() == 1 and proxy.host_id(0) == 1


def test_size_history_reaches_the_delegate_and_the_tooltip(model: FleetModel) -> None:
    gib = 1024**3
    history: list[int | None] = [None] * 27 + [4 * gib, None, 5 * gib]
    model.apply([view(1, repo_size_bytes=5 * gib, size_history=history)])
    size = model.index(0, int(Column.SIZE))
    assert size.data(SPARKLINE_ROLE) == history
    assert model.index(0, int(Column.NAME)).data(SPARKLINE_ROLE) is None
    tip = size.data(Qt.ItemDataRole.ToolTipRole)
    assert "30 days: 4.0 GiB → 5.0 GiB (+1.0 GiB)" in tip


def test_sort_keys_follow_every_version_of_a_row(model: FleetModel) -> None:
    model.apply([view(1, "b"), view(2, "c"), view(3, "a")])
    proxy = FleetFilterProxy()
    proxy.setSourceModel(model)
    proxy.sort(int(Column.NAME), Qt.SortOrder.AscendingOrder)

    def order() -> list[int]:
        return [proxy.index(r, 0).data(HOST_ID_ROLE) for r in range(proxy.rowCount())]

    assert order() == [3, 1, 2]
    model.apply([view(1, "z")], only={1})  # renamed
    assert order() == [3, 2, 1]
    model.remove_ids({3})
    model.apply([view(3, "m")], only={3})  # gone, then back under another name
    assert order() == [2, 3, 1]
    model.apply([view(1, "a"), view(2, "c"), view(3, "b")])  # a whole-fleet refresh
    assert order() == [1, 3, 2]
    assert model.index(model.row_of(3) or 0, int(Column.NAME)).data(SORT_ROLE) == natural_key("b")
