"""The reads the control plane asks of the agent over the connection:
``tree.list`` (one directory of a snapshot) and ``tree.find`` (entries by
name or glob), answered from the snapshot indexes (``agent.tree_index``).

Every call answers at once: a snapshot without an index yet gets
``index.state == "building"`` (and the build starts), and the caller polls.
Failures are ``RpcFailure(code, message)`` with the codes of the shared
interface: ``bad_params``, ``not_found``, ``failed``, ``unsupported``.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from agent import protocol
from agent import tree_store as store
from agent.tree_index import (
    SNAPSHOT_ID_RE,
    AmbiguousSnapshot,
    BuildFailed,
    IndexUnavailable,
    SnapshotNotFound,
    TreeIndexes,
)

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000
MAX_FIND_LIMIT = 5_000
MAX_PATTERN = 1024
MAX_PATH = 64 * 1024
# JSON bytes of entries or matches in one answer: the rest of the frame
# (envelope, status) fits in what is left of protocol.MAX_FRAME_BYTES.
RESULT_BUDGET = 768 * 1024
# A search over every snapshot builds the missing indexes of at most this
# many of the newest snapshots; older ones are searched once browsed.
MAX_SEARCH_BUILDS = 20


class RpcFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TreeRpc:
    def __init__(
        self, indexes: TreeIndexes, known_snapshots: Callable[[], list[str]] = list
    ) -> None:
        self._indexes = indexes
        # Full ids from the last complete snapshot list, oldest first.
        self._known_snapshots = known_snapshots

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one call, as a plain dict; raises RpcFailure."""
        if method == protocol.TREE_LIST:
            listing = await self.tree_list(_decode(protocol.TreeListParams, params))
            return protocol.to_dict(listing)
        if method == protocol.TREE_FIND:
            found = await self.tree_find(_decode(protocol.TreeFindParams, params))
            return protocol.to_dict(found)
        raise RpcFailure("unsupported", f"this agent does not know the method {method!r}")

    async def tree_list(self, params: protocol.TreeListParams) -> protocol.TreeListResult:
        snapshot_id = _snapshot_id(params.snapshot_id)
        path = _path(params.path)
        if params.offset < 0:
            raise RpcFailure("bad_params", "offset must not be negative")
        if params.limit < 1:
            raise RpcFailure("bad_params", "limit must be at least 1")
        limit = min(params.limit, MAX_LIST_LIMIT)
        status = self._status(snapshot_id, "browse")
        if status.state != "ready":
            return protocol.TreeListResult(snapshot_id=snapshot_id, path=path, index=status)

        def read(conn: sqlite3.Connection) -> tuple[list[protocol.TreeEntry], int, int]:
            entries, total = store.list_children(conn, path, params.offset, limit, RESULT_BUDGET)
            return entries, total, store.read_meta(conn).nodes

        try:
            entries, total, nodes = await self._indexes.read(snapshot_id, read)
        except store.PathNotFound as exc:
            raise RpcFailure("not_found", f"{exc.reason} (snapshot {snapshot_id[:8]})") from None
        except BuildFailed as exc:
            raise RpcFailure("failed", str(exc)) from None
        return protocol.TreeListResult(
            snapshot_id=snapshot_id,
            path=path,
            index=protocol.IndexStatus(state="ready", nodes=nodes),
            entries=entries,
            total=total,
        )

    async def tree_find(self, params: protocol.TreeFindParams) -> protocol.TreeFindResult:
        pattern = params.pattern
        if not pattern.strip():
            raise RpcFailure("bad_params", "pattern must not be empty")
        if len(pattern) > MAX_PATTERN or "\0" in pattern:
            raise RpcFailure("bad_params", f"pattern must be at most {MAX_PATTERN} characters")
        if "/" in pattern:
            raise RpcFailure("bad_params", "pattern matches entry names, so it cannot contain /")
        if params.limit < 1:
            raise RpcFailure("bad_params", "limit must be at least 1")
        limit = min(params.limit, MAX_FIND_LIMIT)
        if params.snapshot_id is not None:
            candidates = [_snapshot_id(params.snapshot_id)]
            statuses = {candidates[0]: self._status(candidates[0], "browse")}
        else:
            candidates, statuses = self._all_snapshots()
        matches: list[protocol.TreeMatch] = []
        building: list[str] = []
        truncated = False
        used = 0
        for snapshot_id in candidates:
            status = statuses[snapshot_id]
            if status.state == "building":
                building.append(snapshot_id)
                continue
            if status.state == "failed":
                if params.snapshot_id is not None:
                    raise RpcFailure("failed", status.error or "the index could not be built")
                continue
            if len(matches) >= limit:
                truncated = True
                continue
            room = limit - len(matches)
            try:
                found, more = await self._indexes.read(
                    snapshot_id, functools.partial(_find, pattern=pattern, limit=room)
                )
            except BuildFailed as exc:
                if params.snapshot_id is not None:
                    raise RpcFailure("failed", str(exc)) from None
                continue
            truncated = truncated or more
            for path, code, size, mtime in found:
                used += len(json.dumps(path)) + 128
                if used > RESULT_BUDGET:
                    truncated = True
                    break
                matches.append(
                    protocol.TreeMatch(
                        snapshot_id=snapshot_id,
                        path=path,
                        type=store.TYPE_NAMES.get(code, "other"),
                        size=size,
                        mtime=mtime,
                    )
                )
            if used > RESULT_BUDGET:
                break
        return protocol.TreeFindResult(matches=matches, truncated=truncated, building=building)

    def _all_snapshots(self) -> tuple[list[str], dict[str, protocol.IndexStatus]]:
        """Every snapshot with an index, and the newest known ones without
        (their builds start), newest first."""
        known = list(self._known_snapshots())
        indexed = set(self._indexes.indexed_snapshots())
        order = list(reversed(known)) + sorted(indexed - set(known))
        statuses: dict[str, protocol.IndexStatus] = {}
        builds = 0
        for snapshot_id in order:
            if snapshot_id in statuses:
                continue
            if snapshot_id not in indexed:
                if builds >= MAX_SEARCH_BUILDS:
                    continue
                builds += 1
            try:
                statuses[snapshot_id] = self._status(snapshot_id, "search")
            except RpcFailure:
                # A snapshot forgotten since the list was taken: nothing to search.
                continue
        return [s for s in order if s in statuses], statuses

    def _status(self, snapshot_id: str, origin: str) -> protocol.IndexStatus:
        try:
            return self._indexes.status(snapshot_id, "search" if origin == "search" else "browse")
        except SnapshotNotFound as exc:
            raise RpcFailure("not_found", str(exc)) from None
        except AmbiguousSnapshot as exc:
            raise RpcFailure("bad_params", str(exc)) from None
        except IndexUnavailable as exc:
            raise RpcFailure("failed", str(exc)) from None


def _find(
    conn: sqlite3.Connection, *, pattern: str, limit: int
) -> tuple[list[tuple[str, int, int, float | None]], bool]:
    return store.find(conn, pattern, limit)


def _decode(cls: type[Any], params: dict[str, Any]) -> Any:
    try:
        return protocol.from_dict(cls, params, path="params")
    except protocol.ProtocolError as exc:
        raise RpcFailure("bad_params", str(exc)) from None


def _snapshot_id(value: str) -> str:
    snapshot_id = value.strip().lower()
    if not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise RpcFailure("bad_params", "snapshot_id must be 8 to 64 hexadecimal digits")
    return snapshot_id


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise RpcFailure("bad_params", f"path must be absolute (start with /), got {value[:200]!r}")
    if "\0" in value or len(value) > MAX_PATH:
        raise RpcFailure("bad_params", "path is not a valid snapshot path")
    return value
