"""Browsing snapshots, searching them, and starting restore and diff jobs.

Browsing and searching are RPCs answered from the agent's snapshot index;
restore and diff are jobs. Everything is checked here, at the edge: a
snapshot must be one the control plane knows for this host (a unique prefix
of at least 8 hex digits is accepted and the full id is sent), paths are
absolute and normalised, and an in-place restore needs the host's name
typed back.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Any, get_args

from agent.protocol import (
    TREE_FIND,
    TREE_LIST,
    DiffArgs,
    ProtocolError,
    RestoreArgs,
    TreeEntry,
    TreeEntryType,
    TreeFindParams,
    TreeFindResult,
    TreeListParams,
    TreeListResult,
    from_dict,
    to_dict,
)
from server_core.errors import AgentFailed, InvalidInput, NotFound
from server_core.models import Host, Job, Snapshot
from server_core.rpc import RpcBroker
from server_core.services.context import Actor, ServiceContext
from server_core.services.hosts import require_host
from server_core.services.jobs import JobService, job_view
from server_core.views import FindMatchView, FindResults, JobView, TreeEntryView, TreeListing

MAX_PATH = 4096
MAX_PATHS = 1000
# All selected paths together: the job's command.run frame must stay well
# under the protocol's 1 MiB cap.
MAX_PATHS_CHARS = 256 * 1024
MAX_PATTERN = 256
MAX_LIST_LIMIT = 5000
MAX_FIND_LIMIT = 5000
MAX_OFFSET = 2**31 - 1
MIN_SNAPSHOT_PREFIX = 8
TREE_TIMEOUT_S = 10.0
FIND_TIMEOUT_S = 20.0

_HEX = re.compile(r"[0-9a-f]{8,64}")
_WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:[\\/]")
_WINDOWS_ROOT = re.compile(r"[A-Za-z]:[\\/]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def snapshot_path(value: Any, field: str) -> str:
    """An absolute path inside a snapshot (restic shows every snapshot,
    Windows ones too, as a POSIX tree: `/C/Users/...`), normalised."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{field}' must be a non-empty path", field=field)
    if "\x00" in value:
        raise InvalidInput(f"'{field}' must not contain a NUL character", field=field)
    if len(value) > MAX_PATH:
        raise InvalidInput(f"'{field}' is longer than {MAX_PATH} characters", field=field)
    if not value.startswith("/"):
        raise InvalidInput(
            f"'{field}' must be an absolute path inside the snapshot (starting with '/'), "
            f"got {value[:80]!r}",
            field=field,
        )
    # normpath keeps a leading '//' (POSIX allows it a meaning); a snapshot has none.
    return "/" + posixpath.normpath(value).lstrip("/")


def target_directory(value: Any) -> str:
    """Where on the host to restore to: absolute, or under the agent's home
    (`~`, `~/x`, `$HOME`, `$HOME/x`), expanded by the agent. Never the root:
    restoring to `/` is an in-place restore and needs its confirmation."""
    field = "target_dir"
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"'{field}' must be a non-empty directory path", field=field)
    if _CONTROL.search(value):
        raise InvalidInput(f"'{field}' must not contain control characters", field=field)
    if len(value) > MAX_PATH:
        raise InvalidInput(f"'{field}' is longer than {MAX_PATH} characters", field=field)
    home = value in ("~", "$HOME") or value.startswith(("~/", "$HOME/"))
    if not (home or value.startswith("/") or _WINDOWS_ABSOLUTE.match(value)):
        raise InvalidInput(
            f"'{field}' must be an absolute directory or start with ~ or $HOME, got {value[:80]!r}",
            field=field,
        )
    if value.startswith("/") and posixpath.normpath(value).strip("/") == "":
        raise InvalidInput(
            "restoring to / overwrites the host's files: use an in-place restore "
            "(in_place with confirm_hostname) for that",
            field=field,
        )
    if _WINDOWS_ROOT.fullmatch(value):
        raise InvalidInput(
            f"restoring to {value} overwrites the host's files: use an in-place restore "
            "(in_place with confirm_hostname) for that",
            field=field,
        )
    return value


def restore_paths(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidInput(
            "'paths' must list at least one path inside the snapshot ('/' for all of it)",
            field="paths",
        )
    if len(value) > MAX_PATHS:
        raise InvalidInput(
            f"'paths' lists {len(value)} paths, more than {MAX_PATHS}: select their "
            "parent directories instead",
            field="paths",
        )
    paths = list(dict.fromkeys(snapshot_path(v, "paths") for v in value))
    if sum(len(p) for p in paths) > MAX_PATHS_CHARS:
        raise InvalidInput(
            f"the selected paths are longer than {MAX_PATHS_CHARS // 1024} KiB in all: "
            "select their parent directories instead",
            field="paths",
        )
    return paths


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"'{field}' must be a whole number from {low} to {high}", field=field)
    return value


def resolve_snapshot(host: Host, value: Any, field: str) -> str:
    """The full id of one of the host's snapshots from its id or a unique
    prefix of at least 8 hex digits (store thread)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{field}' must be a snapshot id", field=field)
    wanted = value.strip().lower()
    if not _HEX.fullmatch(wanted):
        raise InvalidInput(
            f"'{field}' must be a snapshot id: {MIN_SNAPSHOT_PREFIX} to 64 hexadecimal "
            f"digits, got {value[:80]!r}",
            field=field,
        )
    found = [
        str(row.snapshot_id)
        for row in Snapshot.select(Snapshot.snapshot_id)
        .where((Snapshot.host == host.id) & Snapshot.snapshot_id.startswith(wanted))
        .limit(2)
    ]
    if not found:
        raise NotFound(
            f"snapshot {wanted[:16]} is not a snapshot of host {host.name} "
            "(refresh the snapshot list if it was just made)",
            field=field,
        )
    if len(found) > 1:
        raise InvalidInput(
            f"snapshot id {wanted} matches several snapshots of host {host.name}: give more digits",
            field=field,
        )
    return found[0]


def _bad_reply(method: str, exc: ProtocolError) -> AgentFailed:
    return AgentFailed(f"the agent's answer to {method} was malformed: {exc}", code="bad_reply")


_ENTRY_FIELDS = frozenset(f.name for f in dataclasses.fields(TreeEntry))
_ENTRY_TYPES = frozenset(get_args(TreeEntryType))


def _fast_entries(raw: Any) -> list[TreeEntryView] | None:
    """A tree.list page's entries, checked as strictly as from_dict checks
    them but about ten times faster: a 5000-entry page is decoded on the
    event loop, which the desktop app's window shares. None when anything
    is off, for from_dict to name the problem."""
    if type(raw) is not list:
        return None
    out: list[TreeEntryView] = []
    append = out.append
    for entry in raw:
        if type(entry) is not dict or not entry.keys() <= _ENTRY_FIELDS:
            return None
        name, kind = entry.get("name"), entry.get("type")
        size, files, mtime = entry.get("size", 0), entry.get("files", 0), entry.get("mtime")
        if type(name) is not str or type(kind) is not str or kind not in _ENTRY_TYPES:
            return None
        if type(size) is not int or type(files) is not int:
            return None
        if type(mtime) is int:
            mtime = float(mtime)
        elif mtime is not None and type(mtime) is not float:
            return None
        append(TreeEntryView(name, kind, size, mtime, files))
    return out


def decode_tree_list(raw: dict[str, Any]) -> tuple[TreeListResult, list[TreeEntryView]]:
    """The agent's tree.list answer (without its entries) and its entries as views."""
    entries = _fast_entries(raw.get("entries", []))
    try:
        if entries is not None:
            return from_dict(TreeListResult, {**raw, "entries": []}, path=TREE_LIST), entries
        result = from_dict(TreeListResult, raw, path=TREE_LIST)
    except ProtocolError as exc:
        raise _bad_reply(TREE_LIST, exc) from None
    views = [TreeEntryView(e.name, e.type, e.size, e.mtime, e.files) for e in result.entries]
    return result, views


class RestoreService:
    def __init__(self, ctx: ServiceContext, jobs: JobService, rpc: RpcBroker) -> None:
        self._ctx = ctx
        self._jobs = jobs
        self._rpc = rpc

    async def tree_list(
        self,
        host_id: int,
        snapshot_id: str,
        path: str = "/",
        offset: int = 0,
        limit: int = MAX_LIST_LIMIT,
    ) -> TreeListing:
        """The direct children of ``path`` (directories first, then by name),
        or the index's progress while the agent is still building it."""
        clean = snapshot_path(path or "/", "path")
        _int_in(offset, "offset", 0, MAX_OFFSET)
        _int_in(limit, "limit", 1, MAX_LIST_LIMIT)
        full = await self._ctx.store.call(
            lambda: resolve_snapshot(require_host(host_id), snapshot_id, "snapshot_id")
        )
        params = TreeListParams(snapshot_id=full, path=clean, offset=offset, limit=limit)
        raw = await self._rpc.call(host_id, TREE_LIST, to_dict(params), timeout_s=TREE_TIMEOUT_S)
        result, entries = decode_tree_list(raw)
        return TreeListing(
            snapshot_id=full,
            path=clean,
            state=result.index.state,
            nodes=result.index.nodes,
            elapsed_s=result.index.elapsed_s,
            error=result.index.error,
            entries=entries,
            total=result.total,
        )

    async def find(
        self,
        host_id: int,
        pattern: str,
        snapshot_id: str | None = None,
        limit: int = 500,
    ) -> FindResults:
        """Entries whose name matches ``pattern`` (a name or a glob) in one
        snapshot, or in every snapshot of the host when ``snapshot_id`` is None."""
        if not isinstance(pattern, str) or not pattern.strip():
            raise InvalidInput("'q' must be a name or a glob pattern to search for", field="q")
        if len(pattern) > MAX_PATTERN or _CONTROL.search(pattern):
            raise InvalidInput(
                f"'q' must be at most {MAX_PATTERN} characters, without control characters",
                field="q",
            )
        _int_in(limit, "limit", 1, MAX_FIND_LIMIT)

        def check() -> tuple[str | None, set[str]]:
            host = require_host(host_id)
            full = (
                None if snapshot_id is None else resolve_snapshot(host, snapshot_id, "snapshot_id")
            )
            known = {
                str(s)
                for (s,) in Snapshot.select(Snapshot.snapshot_id)
                .where(Snapshot.host == host_id)
                .tuples()
            }
            return full, known

        full, known = await self._ctx.store.call(check)
        params = TreeFindParams(pattern=pattern, snapshot_id=full, limit=limit)
        raw = await self._rpc.call(host_id, TREE_FIND, to_dict(params), timeout_s=FIND_TIMEOUT_S)
        try:
            result = from_dict(TreeFindResult, raw, path=TREE_FIND)
        except ProtocolError as exc:
            raise _bad_reply(TREE_FIND, exc) from None
        # Only snapshots this host still has: an index may outlive a forgotten
        # snapshot, and a shared repository holds other hosts' snapshots.
        return FindResults(
            matches=[
                FindMatchView(
                    snapshot_id=m.snapshot_id, path=m.path, type=m.type, size=m.size, mtime=m.mtime
                )
                for m in result.matches
                if m.snapshot_id in known
            ][:limit],
            truncated=result.truncated or len(result.matches) > limit,
            building=[s for s in result.building if s in known],
        )

    async def start_restore(
        self,
        host_id: int,
        snapshot_id: str,
        paths: list[str],
        *,
        target_dir: str | None = None,
        in_place: bool = False,
        confirm_hostname: str | None = None,
        actor: Actor,
    ) -> str:
        """Queue a restore job and send it to the (connected) agent; the job id."""
        if not isinstance(in_place, bool):
            raise InvalidInput("'in_place' must be true or false", field="in_place")
        clean_paths = restore_paths(paths)
        target = None
        if in_place:
            if target_dir is not None:
                raise InvalidInput(
                    "give either 'target_dir' or 'in_place', not both", field="target_dir"
                )
        elif target_dir is not None:
            target = target_directory(target_dir)

        def check() -> str:
            host = require_host(host_id)
            full = resolve_snapshot(host, snapshot_id, "snapshot_id")
            if in_place:
                typed = confirm_hostname if isinstance(confirm_hostname, str) else ""
                if typed.casefold() != str(host.name).casefold():
                    raise InvalidInput(
                        f"an in-place restore overwrites files on {host.name}: type the host's "
                        f"name ({host.name}) in 'confirm_hostname' to confirm",
                        field="confirm_hostname",
                    )
            return full

        full = await self._ctx.store.call(check)
        args = RestoreArgs(
            snapshot_id=full, paths=clean_paths, target_dir=target, in_place=in_place
        )
        audited: dict[str, Any] = {
            "snapshot_id": full,
            "paths_count": len(clean_paths),
            "paths": clean_paths[:10],
            "in_place": in_place,
            "target_dir": target,
        }
        return await self._jobs.dispatch(
            host_id, "restore", actor=actor, args=to_dict(args), audit_args=audited
        )

    async def start_diff(self, host_id: int, snapshot_a: str, snapshot_b: str, actor: Actor) -> str:
        """Queue a diff of two of the host's snapshots; the job id."""

        def check() -> tuple[str, str]:
            host = require_host(host_id)
            a = resolve_snapshot(host, snapshot_a, "snapshot_a")
            b = resolve_snapshot(host, snapshot_b, "snapshot_b")
            if a == b:
                raise InvalidInput(
                    "'snapshot_a' and 'snapshot_b' are the same snapshot: pick two different ones",
                    field="snapshot_b",
                )
            return a, b

        a, b = await self._ctx.store.call(check)
        return await self._jobs.dispatch(
            host_id, "diff", actor=actor, args=to_dict(DiffArgs(snapshot_a=a, snapshot_b=b))
        )

    async def latest_restore(self, host_id: int) -> JobView | None:
        def run() -> JobView | None:
            require_host(host_id)
            job: Job | None = (
                Job.select()
                .where((Job.host == host_id) & (Job.kind == "restore"))
                .order_by(Job.created_at.desc(), Job.id.desc())
                .first()
            )
            return None if job is None else job_view(job)

        return await self._ctx.store.call(run)
