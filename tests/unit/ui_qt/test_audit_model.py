"""The audit table model and the filter helpers: pure, no database, no loop."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QApplication

from server_core.views import AuditView as AuditEntry
from ui_qt.audit_model import (
    ENTRY_ROLE,
    AuditModel,
    AuditSortProxy,
    Column,
    action_choices,
    actor_text,
    build_query,
    entry_time,
    parse_target,
    preset_since,
    pretty_payload,
    summary,
    target_text,
)


@pytest.fixture(scope="module", autouse=True)
def _app() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    return app


def entry(
    id: int,
    ts: float = 1_700_000_000.0,
    *,
    actor_kind: str = "operator",
    actor_id: str | None = None,
    action: str = "host.created",
    target_kind: str | None = "host",
    target_id: str | None = "1",
    payload: dict | None = None,
) -> AuditEntry:
    return AuditEntry(
        id=id,
        ts=ts,
        actor_kind=actor_kind,
        actor_id=actor_id,
        action=action,
        target_kind=target_kind,
        target_id=target_id,
        payload=payload or {},
    )


# -- query building ----------------------------------------------------------------


def test_presets_count_back_from_now_and_all_has_no_bound():
    now = 1_000_000.0
    assert preset_since("hour", now) == now - 3600
    assert preset_since("day", now) == now - 86400
    assert preset_since("week", now) == now - 7 * 86400
    assert preset_since("month", now) == now - 30 * 86400
    assert preset_since("all", now) is None
    with pytest.raises(ValueError):
        preset_since("fortnight", now)


def test_query_from_the_filter_bar():
    q = build_query(
        preset="day",
        now=100_000.0,
        actor_kind="agent",
        action="job.",
        target=" host:3 ",
        text="  wrong password ",
        limit=50,
        before_id=77,
    )
    assert q.since == 100_000.0 - 86400
    assert q.until is None
    assert q.actor_kind == "agent"
    assert q.action == "job."
    assert q.target == "host:3"
    assert q.text == "wrong password"
    assert (q.limit, q.before_id) == (50, 77)


def test_empty_filters_are_none_not_empty_strings():
    q = build_query(preset="all", now=0.0, actor_kind=None, action="", target=" ", text="")
    assert (q.since, q.until, q.actor_kind, q.action, q.target, q.text) == (None,) * 6


def test_custom_range_uses_both_bounds_and_refuses_a_reversed_one():
    q = build_query(preset="custom", now=0.0, custom_from=10.0, custom_to=20.0)
    assert (q.since, q.until) == (10.0, 20.0)
    with pytest.raises(ValueError, match="ends before it starts"):
        build_query(preset="custom", now=0.0, custom_from=20.0, custom_to=10.0)


@pytest.mark.parametrize("text", ["host", "host:3", "job:0a1b-2c", "notification_channel:12"])
def test_targets_that_parse(text):
    assert parse_target(text) == text


@pytest.mark.parametrize("text", ["host:", ":3", "host 3", "host:3:4", "3host"])
def test_targets_that_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match='"host:3"'):
        parse_target(text)


def test_action_choices_group_families_with_a_prefix_entry():
    choices = action_choices(["host.created", "job.finished", "host.deleted", "job.queued"])
    assert choices == [
        ("host.*  (every host action)", "host."),
        ("    host.created", "host.created"),
        ("    host.deleted", "host.deleted"),
        ("job.*  (every job action)", "job."),
        ("    job.finished", "job.finished"),
        ("    job.queued", "job.queued"),
    ]
    # A lone action in its family still gets the prefix (more may come); a
    # dot-less action has none.
    assert action_choices(["login"]) == [("    login", "login")]
    assert action_choices(["alert.raised"])[0] == ("alert.*  (every alert action)", "alert.")


# -- text ---------------------------------------------------------------------------


def test_actor_and_target_text():
    assert actor_text(entry(1)) == "Operator"
    assert actor_text(entry(1, actor_kind="api", actor_id="ci-token")) == "API · ci-token"
    assert target_text(entry(1)) == "host:1"
    assert target_text(entry(1, target_kind="setting", target_id=None)) == "setting"
    assert target_text(entry(1, target_kind=None, target_id=None)) == "—"


def test_summary_is_one_sorted_line_cut_with_an_ellipsis():
    assert summary({}) == ""
    assert summary({"b": 2, "a": "x"}) == "a=x, b=2"
    assert summary({"msg": "line one\nline two"}) == "msg=line one line two"
    assert summary({"list": [1, 2], "obj": {"k": None}}) == 'list=[1,2], obj={"k":null}'
    long = summary({"text": "y" * 500}, limit=40)
    assert len(long) == 40
    assert long.endswith("…")


def test_summary_shows_timestamps_under_time_keys_as_local_times():
    ts = 1_700_000_000.25
    text = summary({"expires_at": ts, "count": 1_700_000_000, "ts": ts, "ok": True})
    assert f"expires_at={entry_time(ts)}" in text
    assert f"ts={entry_time(ts)}" in text
    assert "count=1700000000" in text  # not a time key
    assert "ok=true" in text
    assert summary({"retry_at": 12}) == "retry_at=12"  # too small to be a date


def test_pretty_payload_is_indented_json_and_keeps_unicode():
    text = pretty_payload({"name": "café", "n": 1})
    assert json.loads(text) == {"name": "café", "n": 1}
    assert "café" in text
    assert '\n  "n": 1' in text
    assert pretty_payload({}) == "(no payload)"


# -- the model ---------------------------------------------------------------------


def rows(model) -> list[int]:
    return [model.index(r, 0).data(ENTRY_ROLE).id for r in range(model.rowCount())]


def test_reset_sorts_newest_first_and_shows_columns():
    model = AuditModel()
    model.reset([entry(1), entry(3, action="job.queued", payload={"kind": "backup"}), entry(2)])
    assert rows(model) == [3, 2, 1]
    assert model.columnCount() == 5
    assert model.index(0, Column.ACTION).data() == "job.queued"
    assert model.index(0, Column.SUMMARY).data() == "kind=backup"
    assert model.index(0, Column.TARGET).data() == "host:1"
    assert model.headerData(Column.TIME, Qt.Orientation.Horizontal) == "Time"
    assert (model.newest_id(), model.oldest_id()) == (3, 1)


def test_older_pages_go_below_and_live_entries_on_top_without_duplicates():
    model = AuditModel()
    model.reset([entry(10), entry(9)])
    inserted: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    resets: list[bool] = []
    model.modelReset.connect(lambda: resets.append(True))

    assert model.append_older([entry(9), entry(8), entry(7)]) == 2
    assert rows(model) == [10, 9, 8, 7]
    assert model.merge_newer([entry(12), entry(11), entry(10)]) == 2
    assert rows(model) == [12, 11, 10, 9, 8, 7]
    # An entry older than the newest held is not "new" (it belongs to a page below).
    assert model.merge_newer([entry(5)]) == 0
    assert model.append_older([]) == 0
    assert inserted == [(2, 3), (0, 1)]
    assert resets == []  # rows inserted, never a reset: selection survives


def test_sorting_by_time_uses_the_timestamp_then_the_id():
    model = AuditModel()
    # Same second for 1 and 2; 3 is older by clock although its id is higher
    # (a clock step back must not hide it in the wrong place when sorting by time).
    model.reset([entry(1, 100.0), entry(2, 100.0), entry(3, 50.0)])
    proxy = AuditSortProxy()
    proxy.setSourceModel(model)
    proxy.sort(Column.TIME, Qt.SortOrder.DescendingOrder)
    assert [proxy.index(r, 0).data(ENTRY_ROLE).id for r in range(3)] == [2, 1, 3]
    proxy.sort(Column.TIME, Qt.SortOrder.AscendingOrder)
    assert [proxy.index(r, 0).data(ENTRY_ROLE).id for r in range(3)] == [3, 1, 2]


def test_sorting_targets_compares_ids_as_numbers():
    model = AuditModel()
    model.reset(
        [
            entry(1, target_id="10"),
            entry(2, target_id="9"),
            entry(3, target_kind="job", target_id="abc"),
            entry(4, target_kind=None, target_id=None),
        ]
    )
    proxy = AuditSortProxy()
    proxy.setSourceModel(model)
    proxy.sort(Column.TARGET, Qt.SortOrder.AscendingOrder)
    got = [proxy.index(r, Column.TARGET).data() for r in range(4)]
    assert got == ["—", "host:9", "host:10", "job:abc"]


def test_sorting_by_action_and_actor_is_case_insensitive_text():
    model = AuditModel()
    model.reset(
        [
            entry(1, action="schedule.created", actor_kind="system"),
            entry(2, action="alert.raised", actor_kind="agent"),
            entry(3, action="host.deleted", actor_kind="api", actor_id="Zed"),
        ]
    )
    proxy = AuditSortProxy()
    proxy.setSourceModel(model)
    proxy.sort(Column.ACTION, Qt.SortOrder.AscendingOrder)
    assert [proxy.index(r, Column.ACTION).data() for r in range(3)] == [
        "alert.raised",
        "host.deleted",
        "schedule.created",
    ]
    proxy.sort(Column.ACTOR, Qt.SortOrder.AscendingOrder)
    assert [proxy.index(r, Column.ACTOR).data() for r in range(3)] == [
        "Agent",
        "API · Zed",
        "System",
    ]


def test_the_model_is_read_only():
    model = AuditModel()
    model.reset([entry(1)])
    index = model.index(0, Column.ACTION)
    assert not (model.flags(index) & Qt.ItemFlag.ItemIsEditable)
    assert not model.setData(index, "tampered")
    assert model.index(0, Column.ACTION).data() == "host.created"
    assert model.rowCount(model.index(0, 0)) == 0
    assert model.data(QModelIndex()) is None
