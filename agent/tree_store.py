"""One snapshot's tree index on disk: building it from ``restic ls --json``
and reading directory listings and name searches from it.

Everything here is synchronous and runs in worker threads (the async side
is ``agent.tree_index``). An index is one SQLite file per snapshot:

    nodes(id, parent, name, type, size, mtime, files, children)

``type`` is 0 for a directory (so "directories first, then by name" is one
ordered index scan), 1 file, 2 symlink, 3 anything else. For a directory,
``size`` is the bytes of every file below it and ``files`` how many
non-directory entries are below it; ``children`` is its direct entry count.
The root ``/`` is node 1.

Building streams: ``restic ls`` walks the tree depth-first (a directory,
then its entries, sorted), so a stack of the open directories is all the
state needed to give every node its parent id and every directory its
totals; memory stays bounded by the tree's depth whatever its size. A
directory's row is written when it closes (its totals known), so nothing
is ever updated. The file is written under a temporary name and only
renamed into place once complete (see ``agent.tree_index``), so a reader
never sees half an index.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import protocol

FORMAT_VERSION = 1
ROOT_ID = 1
DIR, FILE, SYMLINK, OTHER = 0, 1, 2, 3
_TYPE_CODES = {b"dir": DIR, b"file": FILE, b"symlink": SYMLINK}
TYPE_NAMES: dict[int, protocol.TreeEntryType] = {
    DIR: "dir",
    FILE: "file",
    SYMLINK: "symlink",
    OTHER: "other",
}
# Rows handed to SQLite per executemany: large enough to amortise the call,
# small enough to be a few MiB at most.
BATCH_ROWS = 4096
# The page cache while building (negative: KiB). Bounds the memory SQLite's
# sorter uses for CREATE INDEX too; beyond it, it spills to temp files.
BUILD_CACHE_KIB = 16 * 1024
_fromisoformat = datetime.fromisoformat
_GLOB_CHARS = re.compile(r"[*?\[]")
# The fields of an ls node in the order every restic (0.14 to 0.18) prints
# them: reading five fields with one anchored match costs half of what
# json.loads of the whole line does, and parsing is most of a build's CPU.
# Lines it does not match go through json.loads.
_JSON_STR = rb'([^"\\]*(?:\\.[^"\\]*)*)'
_NODE_RE = re.compile(
    rb'\{"name":"' + _JSON_STR + rb'","type":"([a-z]*)","path":"' + _JSON_STR + rb'",'
    rb'"uid":\d+,"gid":\d+,(?:"size":(\d+),)?(?:"mode":\d+,)?(?:"permissions":"[^"]*",)?'
    rb'"mtime":"([^"]*)"'
)

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        parent INTEGER NOT NULL,
        name TEXT NOT NULL,
        type INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL,
        files INTEGER NOT NULL DEFAULT 0,
        children INTEGER NOT NULL DEFAULT 0
    )
    """,
)
# Created after the bulk insert (one sort instead of a B-tree insert per row).
# "type > 0" puts directories first; the same expression in a query lets
# SQLite both seek a directory's children and read them in order.
_CHILDREN_INDEX = "CREATE INDEX nodes_children ON nodes (parent, type > 0, name)"


class IndexBuildError(Exception):
    """The index cannot be built: restic's listing has an unexpected shape, or the
    index cannot be written."""


class SnapshotNotListed(Exception):
    """restic printed no snapshot (0.14 does that, exit 0, for an unknown id)."""


class PathNotFound(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class SnapshotMeta:
    id: str
    short_id: str
    time: str
    paths: list[str]
    hostname: str
    nodes: int
    files: int
    bytes: int


@dataclass(frozen=True)
class Node:
    id: int
    type: int
    size: int
    files: int
    children: int


# -- building ---------------------------------------------------------------


class _OpenDir:
    """A directory whose entries are still being listed."""

    __slots__ = ("bytes", "children", "files", "id", "mtime", "name", "parent", "path")

    def __init__(
        self, path: bytes, node_id: int, parent: int, name: str, mtime: float | None
    ) -> None:
        self.path = path
        self.id = node_id
        self.parent = parent
        self.name = name
        self.mtime = mtime
        self.files = 0
        self.bytes = 0
        self.children = 0


class IndexBuilder:
    """Feed it restic's ``ls --json`` lines, then ``finish()`` (or ``abort()``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes = 0  # read by other threads for progress; an int store is atomic
        self.snapshot: dict[str, Any] | None = None
        _create_private(path)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            # A half-built file is deleted, never recovered: no journal, no fsync
            # per commit (the finished file is fsynced once before its rename).
            "PRAGMA journal_mode = OFF",
            "PRAGMA synchronous = OFF",
            "PRAGMA locking_mode = EXCLUSIVE",
            f"PRAGMA cache_size = -{BUILD_CACHE_KIB}",
        ):
            self._conn.execute(pragma)
        self._conn.execute("BEGIN")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        root = _OpenDir(b"", ROOT_ID, 0, "", None)
        self._stack: list[_OpenDir] = [root]
        self._next_id = ROOT_ID + 1
        # Files and directories go in separately: a file's totals are the
        # columns' defaults, two values fewer to bind per row.
        self._rows: list[tuple[int, int, str, int, int, float | None]] = []
        self._dirs: list[tuple[int, int, str, int, int, float | None, int, int]] = []
        self._last_mtime_text: bytes | None = None
        self._last_mtime: float | None = None

    def feed_lines(self, lines: list[bytes]) -> None:
        """Many lines of restic's output; the same as ``feed`` on each.

        The hot loop of a build. The common line (a file in the directory
        being walked, no escapes in it) is handled here with its state in
        locals (written back before anything else runs); any other line
        goes through ``feed``."""
        match_node = _NODE_RE.match
        rows = self._rows
        append = rows.append
        stack = self._stack
        codes = _TYPE_CODES
        fromiso = _fromisoformat
        last_text, last_mtime = self._last_mtime_text, self._last_mtime
        next_id = self._next_id
        parent = stack[-1]
        parent_path, parent_id = parent.path, parent.id
        added = added_bytes = 0
        for line in lines:
            match = match_node(line)
            if match is not None and b"\\" not in line:
                raw_name, kind, path, size_text, mtime_text = match.groups()
                if kind != b"dir" and path[: path.rfind(b"/")] == parent_path:
                    if mtime_text != last_text:
                        try:
                            last_mtime = fromiso(mtime_text.decode()).timestamp()
                        except (ValueError, OverflowError, OSError, UnicodeDecodeError):
                            last_mtime = None
                        last_text = mtime_text
                    size = int(size_text) if size_text else 0
                    append(
                        (
                            next_id,
                            parent_id,
                            raw_name.decode("utf-8", "surrogateescape"),
                            codes.get(kind, OTHER),
                            size,
                            last_mtime,
                        )
                    )
                    next_id += 1
                    added += 1
                    added_bytes += size
                    if len(rows) >= BATCH_ROWS:
                        self._flush()
                    continue
            # Anything else: write the local state back, let feed() do it.
            parent.children += added
            parent.files += added
            parent.bytes += added_bytes
            self.nodes += added
            self._next_id = next_id
            added = added_bytes = 0
            self.feed(line)
            next_id = self._next_id
            parent = stack[-1]
            parent_path, parent_id = parent.path, parent.id
        parent.children += added
        parent.files += added
        parent.bytes += added_bytes
        self.nodes += added
        self._next_id = next_id
        self._last_mtime_text, self._last_mtime = last_text, last_mtime

    def feed(self, line: bytes) -> None:
        """One line of restic's output (bytes, with or without its newline)."""
        match = _NODE_RE.match(line)
        if match is None:
            self._feed_json(line)
            return
        raw_name, kind, path, size, mtime = match.groups()
        if b"\\" in raw_name:
            name = _unescape(raw_name)
        else:
            name = raw_name.decode("utf-8", "surrogateescape")
        if b"\\" in path:
            path = _unescape(path).encode("utf-8", "surrogateescape")
        self._add(path, name, kind, int(size) if size else 0, mtime)

    def _feed_json(self, line: bytes) -> None:
        # Anything the fast pattern does not read: the snapshot line, and
        # nodes should a restic print their fields in another order.
        if not line or line.isspace():
            return
        try:
            data = json.loads(line)
        except ValueError:
            # Not one of ls's objects (restic prints nothing else on stdout,
            # but a stray line must not cost the whole index).
            return
        if not isinstance(data, dict):
            return
        kind = data.get("struct_type") or data.get("message_type")
        if kind == "snapshot" and self.snapshot is None:
            self.snapshot = data
        if kind != "node":
            return
        path, name = data.get("path"), data.get("name")
        if not isinstance(path, str) or not isinstance(name, str):
            raise IndexBuildError(f"restic listed a node without a usable path: {path!r}")
        size = data.get("size")
        mtime = data.get("mtime")
        self._add(
            path.encode("utf-8", "surrogateescape"),
            name,
            str(data.get("type")).encode(),
            size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0,
            mtime.encode() if isinstance(mtime, str) else None,
        )

    def _add(
        self, path: bytes, name: str, kind: bytes, size: int, mtime_text: bytes | None
    ) -> None:
        # The hot loop of a build (once per node): kept flat on purpose.
        cut = path.rfind(b"/")
        if cut < 0:
            raise IndexBuildError(f"restic listed a node without a usable path: {path!r}")
        parent_path = path[:cut]
        stack = self._stack
        parent = stack[-1]
        while parent.path != parent_path:
            if len(stack) == 1:
                raise IndexBuildError(
                    f"restic listed {path.decode(errors='replace')} outside the directory it "
                    "was walking; the index needs its depth-first order"
                )
            self._close(stack.pop())
            parent = stack[-1]
        parent.children += 1
        node_id = self._next_id
        self._next_id = node_id + 1
        self.nodes += 1
        if mtime_text == self._last_mtime_text:
            mtime = self._last_mtime
        else:
            try:
                mtime = _fromisoformat(mtime_text.decode()).timestamp()  # type: ignore[union-attr]
            except (ValueError, OverflowError, OSError, UnicodeDecodeError, AttributeError):
                mtime = None
            self._last_mtime_text, self._last_mtime = mtime_text, mtime
        if kind == b"dir":
            stack.append(_OpenDir(path, node_id, parent.id, name, mtime))
            return
        code = _TYPE_CODES.get(kind, OTHER)
        self._rows.append((node_id, parent.id, name, code, size, mtime))
        parent.files += 1
        parent.bytes += size
        if len(self._rows) >= BATCH_ROWS:
            self._flush()

    def _close(self, d: _OpenDir) -> None:
        self._dirs.append((d.id, d.parent, d.name, DIR, d.bytes, d.mtime, d.files, d.children))
        top = self._stack[-1]
        top.files += d.files
        top.bytes += d.bytes
        if len(self._dirs) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._conn.executemany(
                "INSERT INTO nodes (id, parent, name, type, size, mtime) VALUES (?, ?, ?, ?, ?, ?)",
                self._rows,
            )
            # Cleared in place: feed_lines holds the list.
            self._rows.clear()
        if self._dirs:
            self._conn.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._dirs)
            self._dirs.clear()

    def finish(self, snapshot_id: str) -> SnapshotMeta:
        """Close every directory, index the children, write the metadata, fsync."""
        if self.snapshot is None:
            raise SnapshotNotListed(snapshot_id)
        while len(self._stack) > 1:
            self._close(self._stack.pop())
        root = self._stack[0]
        self._dirs.append((ROOT_ID, 0, "", DIR, root.bytes, None, root.files, root.children))
        self._flush()
        self._conn.execute(_CHILDREN_INDEX)
        snap = self.snapshot
        full_id = snap.get("id") if isinstance(snap.get("id"), str) else snapshot_id
        meta = SnapshotMeta(
            id=str(full_id),
            short_id=str(snap.get("short_id") or str(full_id)[:8]),
            time=str(snap.get("time") or ""),
            paths=[p for p in snap.get("paths") or [] if isinstance(p, str)],
            hostname=str(snap.get("hostname") or ""),
            nodes=self.nodes,
            files=root.files,
            bytes=root.bytes,
        )
        values = {
            "format": str(FORMAT_VERSION),
            "id": meta.id,
            "short_id": meta.short_id,
            "time": meta.time,
            "paths": json.dumps(meta.paths),
            "hostname": meta.hostname,
            "nodes": str(meta.nodes),
            "files": str(meta.files),
            "bytes": str(meta.bytes),
            # Written last, in the same transaction: an index without it was
            # never finished and is not used.
            "complete": "1",
        }
        self._conn.executemany("INSERT INTO meta VALUES (?, ?)", list(values.items()))
        self._conn.execute("COMMIT")
        self._conn.close()
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())
        return meta

    def abort(self) -> None:
        try:
            self._conn.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _unescape(raw: bytes) -> str:
    value = json.loads(b'"' + raw + b'"')
    return value if isinstance(value, str) else raw.decode("utf-8", "replace")


def _create_private(path: Path) -> None:
    # File names are private data: owner-only from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


# -- reading ----------------------------------------------------------------


def open_index(path: Path) -> sqlite3.Connection:
    """A read-only connection; raises sqlite3.DatabaseError for a broken or
    unfinished file (the caller deletes it and builds again)."""
    # immutable: the file never changes once in place, so SQLite may skip
    # locking and change detection.
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
        fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or row[0] != "1" or fmt is None or fmt[0] != str(FORMAT_VERSION):
            raise sqlite3.DatabaseError("index is incomplete or of another format")
    except BaseException:
        conn.close()
        raise
    return conn


def read_meta(conn: sqlite3.Connection) -> SnapshotMeta:
    values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    return SnapshotMeta(
        id=values["id"],
        short_id=values["short_id"],
        time=values["time"],
        paths=json.loads(values["paths"]),
        hostname=values["hostname"],
        nodes=int(values["nodes"]),
        files=int(values["files"]),
        bytes=int(values["bytes"]),
    )


def split_path(path: str) -> list[str]:
    """The components of an absolute snapshot path ("/" -> [])."""
    if not path.startswith("/"):
        raise PathNotFound(path, f"{path!r} is not an absolute path (it must start with /)")
    return [part for part in path.split("/") if part]


def lookup(conn: sqlite3.Connection, path: str) -> Node:
    """The node at ``path``; raises PathNotFound."""
    parts = split_path(path)
    node = Node(ROOT_ID, DIR, 0, 0, 0)
    walked = ""
    for index, name in enumerate(parts):
        last = index == len(parts) - 1
        # Every component but the last is a directory: seek with the index.
        row = conn.execute(
            "SELECT id, type, size, files, children FROM nodes "
            "WHERE parent = ? AND (type > 0) = 0 AND name = ?",
            (node.id, name),
        ).fetchone()
        if row is None and last:
            row = conn.execute(
                "SELECT id, type, size, files, children FROM nodes "
                "WHERE parent = ? AND (type > 0) = 1 AND name = ?",
                (node.id, name),
            ).fetchone()
        walked += "/" + name
        if row is None:
            raise PathNotFound(path, f"{walked} is not in this snapshot")
        node = Node(*row)
    if not parts:
        row = conn.execute(
            "SELECT id, type, size, files, children FROM nodes WHERE id = ?", (ROOT_ID,)
        ).fetchone()
        node = Node(*row)
    return node


def list_children(
    conn: sqlite3.Connection, path: str, offset: int, limit: int, max_bytes: int
) -> tuple[list[protocol.TreeEntry], int]:
    """(one page of ``path``'s entries, how many it has in all).

    A page stops early when its entries would not fit ``max_bytes`` of JSON
    (long names): the caller asks again from ``offset + len(entries)``."""
    node = lookup(conn, path)
    if node.type != DIR:
        raise PathNotFound(path, f"{path} is a file, not a directory")
    entries: list[protocol.TreeEntry] = []
    used = 0
    rows = conn.execute(
        "SELECT name, type, size, mtime, files FROM nodes WHERE parent = ? "
        "ORDER BY type > 0, name LIMIT ? OFFSET ?",
        (node.id, limit, offset),
    )
    for name, code, size, mtime, files in rows:
        used += len(json.dumps(name)) + 96
        if entries and used > max_bytes:
            break
        entries.append(
            protocol.TreeEntry(
                name=name, type=TYPE_NAMES.get(code, "other"), size=size, mtime=mtime, files=files
            )
        )
    return entries, node.children


def totals(conn: sqlite3.Connection, paths: list[str]) -> tuple[int, int]:
    """(files, bytes) below the given paths, each counted once; raises PathNotFound."""
    chosen = outermost(paths)
    files = size = 0
    for path in chosen:
        node = lookup(conn, path)
        if node.type == DIR:
            files += node.files
            size += node.size
        else:
            files += 1
            size += node.size
    return files, size


def outermost(paths: list[str]) -> list[str]:
    """Drop every path that lies inside another one of the list."""
    normal = sorted({"/" + "/".join(split_path(p)) for p in paths})
    kept: list[str] = []
    for path in normal:
        if kept and (kept[-1] == "/" or path.startswith(kept[-1] + "/")):
            continue
        kept.append(path)
    return kept


_FIND_QUERIES = {
    "like": "SELECT id, parent, name, type, size, mtime FROM nodes "
    "WHERE id != ? AND name LIKE ? ESCAPE '\\' LIMIT ?",
    "glob": "SELECT id, parent, name, type, size, mtime FROM nodes "
    "WHERE id != ? AND name GLOB ? LIMIT ?",
}


def name_condition(pattern: str) -> tuple[str, str]:
    """Which search (``_FIND_QUERIES`` key) a pattern needs, and its parameter.

    A plain word matches names containing it; ``*`` and ``?`` are wildcards
    over the whole name. Both ignore ASCII case (LIKE). A pattern with a
    ``[...]`` class uses GLOB, which honours classes but minds case."""
    if not _GLOB_CHARS.search(pattern):
        return "like", "%" + _like_escape(pattern) + "%"
    if "[" in pattern:
        return "glob", pattern
    like = "".join("%" if ch == "*" else "_" if ch == "?" else _like_escape(ch) for ch in pattern)
    return "like", like


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def find(
    conn: sqlite3.Connection, pattern: str, limit: int
) -> tuple[list[tuple[str, int, int, float | None]], bool]:
    """([(path, type, size, mtime)], truncated) for entries whose name matches."""
    kind, value = name_condition(pattern)
    rows = conn.execute(_FIND_QUERIES[kind], (ROOT_ID, value, limit + 1)).fetchall()
    truncated = len(rows) > limit
    dirs: dict[int, str] = {ROOT_ID: ""}
    found = []
    for _id, parent, name, code, size, mtime in rows[:limit]:
        found.append((_dir_path(conn, parent, dirs) + "/" + name, code, size, mtime))
    return found, truncated


def _dir_path(conn: sqlite3.Connection, node_id: int, known: dict[int, str]) -> str:
    chain: list[tuple[int, str]] = []
    current = node_id
    while current not in known:
        row = conn.execute("SELECT parent, name FROM nodes WHERE id = ?", (current,)).fetchone()
        if row is None:
            raise sqlite3.DatabaseError(f"index is inconsistent: node {current} is missing")
        chain.append((current, row[1]))
        current = row[0]
    path = known[current]
    for node_id_, name in reversed(chain):
        path += "/" + name
        known[node_id_] = path
    return path


class LineSplitter:
    """Whole lines out of the chunks of a stream; a line longer than
    ``max_line`` (no real ls node comes near) is dropped whole."""

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._carry = b""
        self._skipping = False

    def split(self, chunk: bytes) -> list[bytes]:
        data = self._carry + chunk if self._carry else chunk
        lines = data.split(b"\n")
        self._carry = lines.pop()
        if self._skipping and lines:
            # The tail of a dropped monster line.
            lines.pop(0)
            self._skipping = False
        if len(self._carry) > self._max:
            self._carry = b""
            self._skipping = True
        return lines

    def rest(self) -> bytes:
        carry, self._carry = self._carry, b""
        return b"" if self._skipping else carry
