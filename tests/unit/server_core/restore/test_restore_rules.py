"""The restore edge rules on their own (paths, targets, the agent's tree
pages) and the latest restore in fleet rows, built in a fixed number of
queries (real SQLite)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent import protocol as p
from server_core.api_listener import tree_listing_json
from server_core.errors import AgentFailed, InvalidInput
from server_core.models import Host, Job
from server_core.services.hosts import host_views
from server_core.services.restore import (
    decode_tree_list,
    restore_paths,
    snapshot_path,
    target_directory,
)
from server_core.views import TreeListing, as_json

from ..conftest import Services


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("/", "/"),
        ("//", "/"),
        ("//srv//data/", "/srv/data"),
        ("/a/./b/../c", "/a/c"),
        ("/../..", "/"),
        ("/C/Users/Ann", "/C/Users/Ann"),
        ("/dir with spaces/ü", "/dir with spaces/ü"),
    ],
)
def test_snapshot_paths_are_normalised(raw: str, clean: str) -> None:
    assert snapshot_path(raw, "path") == clean


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("", "non-empty"),
        ("etc", "absolute"),
        ("C:\\Users", "absolute"),
        ("/a\x00b", "NUL"),
        ("/" + "x" * 4096, "longer than 4096"),
        (None, "non-empty"),
    ],
)
def test_bad_snapshot_paths_are_refused(raw: object, text: str) -> None:
    with pytest.raises(InvalidInput, match=text) as exc:
        snapshot_path(raw, "path")
    assert exc.value.field == "path"


def test_restore_paths_are_deduplicated_and_bounded() -> None:
    assert restore_paths(["/etc/", "/etc", "/home//a"]) == ["/etc", "/home/a"]
    assert len(restore_paths([f"/f{i}" for i in range(1000)])) == 1000
    with pytest.raises(InvalidInput, match="KiB in all"):
        restore_paths(["/" + str(i) + "x" * 4000 for i in range(100)])


@pytest.mark.parametrize(
    "good", ["/srv/restore", "~", "~/restores", "$HOME", "$HOME/r", "C:\\Restore", "D:/r"]
)
def test_target_directories_that_are_accepted(good: str) -> None:
    assert target_directory(good) == good


@pytest.mark.parametrize(
    "bad", ["restores", "./r", "~bob", "$HOMEX/r", "${HOME}/r", "/", "///", "/..", "C:\\", "c:", ""]
)
def test_target_directories_that_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        target_directory(bad)
    assert exc.value.field == "target_dir"


def seed(count: int) -> None:
    for i in range(count):
        host = Host.create(name=f"h{i:03d}", created_at=0, tags="[]")
        for n, (status, created, started, finished) in enumerate(
            (
                ("succeeded", 10.0, 11.0, 12.0),
                ("running", 20.0 + i, 21.0 + i, None),  # the newest: shown while it runs
                ("failed", 15.0, 16.0, 30.0),  # finished later, but older
            )
        ):
            Job.create(
                id=f"r{i}-{n}",
                host=host,
                kind="restore",
                status=status,
                actor="operator",
                created_at=created,
                started_at=started,
                finished_at=finished,
            )
        Job.create(
            id=f"b{i}", host=host, kind="diff", status="queued", actor="operator", created_at=99.0
        )
    Host.create(name="zz-never-restored", created_at=0, tags="[]")


def count_queries(svc: Services) -> tuple[int, list]:
    statements: list[str] = []
    conn = svc.store.db.connection()
    conn.set_trace_callback(statements.append)
    try:
        views = host_views()
    finally:
        conn.set_trace_callback(None)
    return len(statements), views


async def test_fleet_rows_show_the_latest_restore_in_a_fixed_number_of_queries(
    svc: Services,
) -> None:
    await svc.store.transaction(seed, 1)
    one, views = await svc.store.call(count_queries, svc)
    first, never = views
    assert (first.latest_restore_job_id, first.latest_restore_status) == ("r0-1", "running")
    assert first.latest_restore_at == 21.0  # started; not finished yet
    assert (never.latest_restore_job_id, never.latest_restore_status) == (None, None)
    assert never.latest_restore_at is None

    def more() -> None:
        Host.delete().execute()
        seed(30)

    await svc.store.transaction(more)
    thirty, views = await svc.store.call(count_queries, svc)
    assert len(views) == 31
    assert 0 < thirty == one
    assert [v.latest_restore_job_id for v in views[:3]] == ["r0-1", "r1-1", "r2-1"]
    assert views[5].latest_restore_at == 26.0


def page(count: int) -> dict[str, Any]:
    return p.to_dict(
        p.TreeListResult(
            snapshot_id="ab" * 32,
            path="/srv",
            index=p.IndexStatus(state="ready", nodes=count, elapsed_s=1.0),
            entries=[
                p.TreeEntry(name=f"d{i}", type="dir", size=i, mtime=1.7e9, files=i)
                if i % 3 == 0
                else p.TreeEntry(name=f"f{i}", type="file", size=i)
                for i in range(count)
            ],
            total=count,
        )
    )


def test_the_fast_tree_decoder_agrees_with_from_dict() -> None:
    raw = page(50)
    raw["entries"][1]["mtime"] = 5  # an integral number is a float too
    head, entries = decode_tree_list(raw)
    strict = p.from_dict(p.TreeListResult, raw)
    assert head.index == strict.index and head.total == 50 and head.entries == []
    assert [as_json(e) for e in entries] == [p.to_dict(e) for e in strict.entries]
    assert entries[1].mtime == 5.0 and isinstance(entries[1].mtime, float)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"size": True}, "expected an integer"),
        ({"size": 1.5}, "expected an integer"),
        ({"files": None}, "must not be null"),
        ({"type": "pipe"}, "must be one of"),
        ({"type": ["dir"]}, "must be one of"),
        ({"name": 7}, "expected a string"),
        ({"mtime": "yesterday"}, "expected a number"),
        ({"mtime": False}, "expected a number"),
        ({"owner": "root"}, "unknown field(s) owner"),
    ],
)
def test_the_fast_tree_decoder_refuses_what_from_dict_refuses(
    change: dict[str, Any], text: str
) -> None:
    raw = page(5)
    raw["entries"][3].update(change)
    with pytest.raises(AgentFailed) as exc:
        decode_tree_list(raw)
    assert exc.value.code == "bad_reply" and text in exc.value.message
    assert "tree.list.entries[3]" in exc.value.message


def test_a_missing_name_or_a_non_list_is_refused() -> None:
    raw = page(2)
    del raw["entries"][0]["name"]
    with pytest.raises(AgentFailed, match="missing field 'name'"):
        decode_tree_list(raw)
    with pytest.raises(AgentFailed, match="expected a list"):
        decode_tree_list(dict(page(1), entries={"a": 1}))


def test_the_api_spells_a_listing_as_as_json_would() -> None:
    _, entries = decode_tree_list(page(7))
    listing = TreeListing(
        snapshot_id="ab" * 32,
        path="/srv",
        state="ready",
        nodes=7,
        elapsed_s=1.0,
        error=None,
        entries=entries,
        total=7,
    )
    assert tree_listing_json(listing) == as_json(listing)


def test_decoding_a_full_page_is_quick() -> None:
    raw = page(5000)

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    fast = best(lambda: decode_tree_list(raw))
    strict = best(lambda: p.from_dict(p.TreeListResult, raw))
    assert fast < strict / 3, (fast, strict)
