"""The snapshot index file: building it from ls output and reading it.

The lines fed here have the exact shape restic 0.14 and 0.18 print (captured
from both; see test_tree_index.py for the same code against real restic).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent import tree_store as store

SNAP_ID = "3a355ffc696810f7a1eb935b1c50c71678a0efbc7b2400dae1603cce2f91dd0a"
# One real line of each version, to pin the field order the fast reader relies on.
LINE_018 = (
    '{"name":"f2","type":"file","path":"/tmp/rx/src/a/b/f2","uid":0,"gid":0,"size":6,'
    '"mode":420,"permissions":"-rw-r--r--","mtime":"2026-11-22T01:25:18.53194066Z",'
    '"atime":"2026-11-22T01:25:18.53194066Z","ctime":"2026-11-22T01:25:18.53194066Z",'
    '"inode":2457922,"message_type":"node","struct_type":"node"}'
)
LINE_014 = (
    '{"name":"f2","type":"file","path":"/tmp/rx/src/a/b/f2","uid":0,"gid":0,"size":6,'
    '"mode":420,"permissions":"-rw-r--r--","mtime":"2026-11-22T01:25:18.53194066Z",'
    '"atime":"2026-11-22T01:25:18.53194066Z","ctime":"2026-11-22T01:25:18.53194066Z",'
    '"struct_type":"node"}'
)


def snapshot_line(**extra: Any) -> str:
    data = {
        "time": "2026-11-22T01:25:21.578089412Z",
        "paths": ["/srv"],
        "hostname": "db-02",
        "id": SNAP_ID,
        "short_id": SNAP_ID[:8],
        "struct_type": "snapshot",
    }
    data.update(extra)
    return json.dumps(data, separators=(",", ":"))


def node(path: str, kind: str = "file", size: int | None = None, mtime: str | None = None) -> str:
    # Field order as restic prints it; size omitted for directories and
    # empty files, as restic does.
    data: dict[str, Any] = {"name": path.rsplit("/", 1)[1], "type": kind, "path": path}
    data.update(uid=0, gid=0)
    if size:
        data["size"] = size
    data.update(mode=420, permissions="-rw-r--r--")
    data["mtime"] = mtime or "2024-05-01T10:00:00.5+02:00"
    data.update(atime=data["mtime"], ctime=data["mtime"], struct_type="node")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


TREE = [
    snapshot_line(),
    node("/srv", "dir"),
    node("/srv/app", "dir"),
    node("/srv/app/bin", "dir"),
    node("/srv/app/bin/run", size=100),
    node("/srv/app/config.toml", size=20),
    node("/srv/app/empty", "dir"),
    node("/srv/app/logs", "dir"),
    node("/srv/app/logs/a.log", size=1000),
    node("/srv/app/logs/b.log", size=2000),
    node("/srv/app/logs/current", "symlink"),
    node("/srv/app/zz-readme.md", size=5),
    node("/srv/data", "dir"),
    node("/srv/data/Report 2024.PDF", size=7),
    node("/srv/data/report[1].txt", size=3),
    node('/srv/data/\u00e9t\u00e9 "quoted" \\ back.txt', size=4),
    node("/srv/data/fifo", "fifo"),
]


def build(tmp_path: Path, lines: list[str], name: str = "idx.sqlite") -> Path:
    path = tmp_path / name
    builder = store.IndexBuilder(path)
    builder.feed_lines([line.encode() for line in lines])
    builder.finish(SNAP_ID)
    return path


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = store.open_index(build(tmp_path, TREE))
    yield c  # type: ignore[misc]
    c.close()


def listing(conn: sqlite3.Connection, path: str, **kw: Any) -> list[tuple[str, str, int, int]]:
    entries, _ = store.list_children(
        conn, path, kw.get("offset", 0), kw.get("limit", 100), kw.get("max_bytes", 10**6)
    )
    return [(e.name, e.type, e.size, e.files) for e in entries]


def test_real_lines_of_both_versions_take_the_fast_path(tmp_path: Path) -> None:
    for line in (LINE_014, LINE_018):
        assert store._NODE_RE.match(line.encode()) is not None
    path = build(
        tmp_path, [snapshot_line(), node("/tmp", "dir"), LINE_018.replace("/rx/src/a/b", "")]
    )
    with store.open_index(path) as c:
        assert listing(c, "/tmp") == [("f2", "file", 6, 0)]


def test_directories_first_then_by_name_with_totals(conn: sqlite3.Connection) -> None:
    assert listing(conn, "/") == [("srv", "dir", 3139, 10)]
    assert listing(conn, "/srv") == [("app", "dir", 3125, 6), ("data", "dir", 14, 4)]
    assert listing(conn, "/srv/app") == [
        ("bin", "dir", 100, 1),
        ("empty", "dir", 0, 0),
        ("logs", "dir", 3000, 3),
        ("config.toml", "file", 20, 0),
        ("zz-readme.md", "file", 5, 0),
    ]
    assert listing(conn, "/srv/app/logs") == [
        ("a.log", "file", 1000, 0),
        ("b.log", "file", 2000, 0),
        ("current", "symlink", 0, 0),
    ]
    assert listing(conn, "/srv/app/empty") == []
    # Trailing and doubled slashes name the same directory.
    assert listing(conn, "/srv//app/logs/") == listing(conn, "/srv/app/logs")


def test_names_with_escapes_and_other_types(conn: sqlite3.Connection) -> None:
    names = [(n, t) for n, t, _, _ in listing(conn, "/srv/data")]
    assert names == [
        ("Report 2024.PDF", "file"),
        ("fifo", "other"),
        ("report[1].txt", "file"),
        ('\u00e9t\u00e9 "quoted" \\ back.txt', "file"),
    ]


def test_mtime_is_seconds_since_the_epoch(conn: sqlite3.Connection) -> None:
    entries, _ = store.list_children(conn, "/srv/app/logs", 0, 10, 10**6)
    # 2024-05-01T10:00:00.5+02:00
    assert entries[0].mtime == pytest.approx(1714550400.5)


def test_paging_and_the_byte_budget(tmp_path: Path) -> None:
    lines = [snapshot_line(), node("/d", "dir")]
    lines += [node(f"/d/f{i:03d}", size=i) for i in range(250)]
    lines += [node(f"/d/sub{i}", "dir") for i in range(3)]
    with store.open_index(build(tmp_path, lines)) as c:
        first, total = store.list_children(c, "/d", 0, 100, 10**6)
        assert total == 253
        assert [e.name for e in first[:4]] == ["sub0", "sub1", "sub2", "f000"]
        second, _ = store.list_children(c, "/d", 100, 100, 10**6)
        third, _ = store.list_children(c, "/d", 200, 100, 10**6)
        names = [e.name for e in first + second + third]
        assert len(names) == 253 and len(set(names)) == 253
        # A small byte budget cuts a page short; the caller goes on from there.
        cut, total = store.list_children(c, "/d", 0, 100, 1000)
        assert 0 < len(cut) < 100 and total == 253


def test_unknown_paths_and_files_are_not_found(conn: sqlite3.Connection) -> None:
    with pytest.raises(store.PathNotFound, match="/srv/nope is not in this snapshot"):
        store.list_children(conn, "/srv/nope/deeper", 0, 10, 10**6)
    with pytest.raises(store.PathNotFound, match="is a file, not a directory"):
        store.list_children(conn, "/srv/app/config.toml", 0, 10, 10**6)
    with pytest.raises(store.PathNotFound, match="not an absolute path"):
        store.list_children(conn, "srv", 0, 10, 10**6)


def test_find_by_word_glob_and_class(conn: sqlite3.Connection) -> None:
    def paths(pattern: str, limit: int = 50) -> list[str]:
        found, _ = store.find(conn, pattern, limit)
        return sorted(p for p, *_ in found)

    # A word: contained in the name, any ASCII case.
    assert paths("report") == ["/srv/data/Report 2024.PDF", "/srv/data/report[1].txt"]
    assert paths("LOG") == ["/srv/app/logs", "/srv/app/logs/a.log", "/srv/app/logs/b.log"]
    # * and ?: the whole name.
    assert paths("*.log") == ["/srv/app/logs/a.log", "/srv/app/logs/b.log"]
    assert paths("?.LOG") == ["/srv/app/logs/a.log", "/srv/app/logs/b.log"]
    assert paths("bin") == ["/srv/app/bin"]
    # LIKE's own wildcards are plain characters in a pattern.
    assert paths("%") == [] and paths("_") == []
    # A class: GLOB, case-sensitive.
    assert paths("[ab].log") == ["/srv/app/logs/a.log", "/srv/app/logs/b.log"]
    assert paths("[R]*") == ["/srv/data/Report 2024.PDF"]
    found, truncated = store.find(conn, "*", 3)
    assert len(found) == 3 and truncated
    assert store.find(conn, "no-such", 3) == ([], False)


def test_totals_count_each_file_once(conn: sqlite3.Connection) -> None:
    assert store.totals(conn, ["/srv/app/logs"]) == (3, 3000)
    assert store.totals(conn, ["/srv/app/logs/a.log", "/srv/app/bin"]) == (2, 1100)
    # A path inside another selected one adds nothing.
    assert store.totals(conn, ["/srv/app", "/srv/app/logs/a.log"]) == (6, 3125)
    assert store.totals(conn, ["/"]) == (10, 3139)
    with pytest.raises(store.PathNotFound):
        store.totals(conn, ["/srv/missing"])


def test_outermost() -> None:
    assert store.outermost(["/a/b", "/a", "/a/b/c", "/ab", "/x/"]) == ["/a", "/ab", "/x"]
    assert store.outermost(["/a", "/"]) == ["/"]


def test_meta(conn: sqlite3.Connection) -> None:
    meta = store.read_meta(conn)
    assert meta.id == SNAP_ID and meta.short_id == SNAP_ID[:8]
    assert meta.paths == ["/srv"] and meta.hostname == "db-02"
    assert (meta.nodes, meta.files, meta.bytes) == (16, 10, 3139)


def test_listing_out_of_walk_order_is_refused(tmp_path: Path) -> None:
    builder = store.IndexBuilder(tmp_path / "x.sqlite")
    builder.feed_lines([snapshot_line().encode(), node("/a", "dir").encode()])
    with pytest.raises(store.IndexBuildError, match="depth-first"):
        builder.feed(node("/b/c").encode())
    builder.abort()
    assert not (tmp_path / "x.sqlite").exists()


def test_no_snapshot_line_means_restic_did_not_know_the_snapshot(tmp_path: Path) -> None:
    builder = store.IndexBuilder(tmp_path / "x.sqlite")
    with pytest.raises(store.SnapshotNotListed):
        builder.finish("deadbeef")
    builder.abort()


def test_stray_lines_are_ignored_and_other_field_orders_still_read(tmp_path: Path) -> None:
    reordered = json.dumps(
        {"struct_type": "node", "path": "/d/x", "name": "x", "type": "file", "size": 9}
    )
    path = build(
        tmp_path, [snapshot_line(), "not json", "[1, 2]", "", node("/d", "dir"), reordered]
    )
    with store.open_index(path) as c:
        assert listing(c, "/d") == [("x", "file", 9, 0)]


def test_an_unfinished_or_foreign_file_is_refused(tmp_path: Path) -> None:
    # Half-built: what the builder has written before finish().
    builder = store.IndexBuilder(tmp_path / "half.sqlite")
    builder.feed_lines([line.encode() for line in TREE])
    builder._flush()
    builder._conn.execute("COMMIT")
    builder._conn.close()
    with pytest.raises(sqlite3.DatabaseError):
        store.open_index(tmp_path / "half.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        store.open_index(tmp_path / "junk.sqlite")


def test_index_file_is_private(tmp_path: Path) -> None:
    path = build(tmp_path, TREE)
    assert path.stat().st_mode & 0o777 == 0o600


def test_line_splitter_drops_monster_lines() -> None:
    splitter = store.LineSplitter(max_line=10)
    assert splitter.split(b"ab\ncd") == [b"ab"]
    assert splitter.split(b"e\n0123456789ABC") == [b"cde"]
    # The 13-byte line is over the limit: dropped up to its newline.
    assert splitter.split(b"DEF\nok\nrest") == [b"ok"]
    assert splitter.rest() == b"rest"


def test_many_directories_and_deep_nesting(tmp_path: Path) -> None:
    # More directory rows than one batch, and a path 60 levels deep.
    lines = [snapshot_line(), node("/many", "dir")]
    lines += [node(f"/many/d{i:05d}", "dir") for i in range(store.BATCH_ROWS + 50)]
    deep = ""
    for level in range(60):
        deep += f"/l{level}"
        lines.append(node(deep, "dir"))
    lines.append(node(deep + "/leaf.txt", size=11))
    with store.open_index(build(tmp_path, lines)) as c:
        _, total = store.list_children(c, "/many", 0, 1, 10**6)
        assert total == store.BATCH_ROWS + 50
        assert listing(c, deep) == [("leaf.txt", "file", 11, 0)]
        assert listing(c, "/") == [("l0", "dir", 11, 1), ("many", "dir", 0, 0)]
        found, _ = store.find(c, "leaf.txt", 5)
        assert [p for p, *_ in found] == [deep + "/leaf.txt"]


def test_memory_stays_flat_while_building(tmp_path: Path) -> None:
    # The builder keeps one batch of rows and the open directories, nothing
    # that grows with the snapshot (a leak of 30 bytes a node would show).
    import tracemalloc

    builder = store.IndexBuilder(tmp_path / "big.sqlite")
    builder.feed_lines([snapshot_line().encode(), node("/d", "dir").encode()])
    line = node("/d/x").encode()
    tracemalloc.start()
    try:
        for batch in range(20):
            builder.feed_lines(
                [
                    line.replace(b'"x"', b'"f%d-%d"' % (batch, i)).replace(
                        b"/d/x", b"/d/f%d-%d" % (batch, i)
                    )
                    for i in range(2000)
                ]
            )
            if batch == 3:
                early = tracemalloc.get_traced_memory()[1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    meta = builder.finish(SNAP_ID)
    assert meta.nodes == 40_001
    assert peak < early + 1024 * 1024, (early, peak)
