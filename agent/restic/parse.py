"""Parsers for restic's `--json` output.

restic omits fields whose value is zero (`files_done` is missing until the
first file is finished), 0.14 reports its verbose "scan_finished" event as a
`status` message, and the per-file error object changed shape between 0.14
(`{"Op","Path","Err"}` or `{}`) and 0.17 (`{"message"}`). The streaming parser
therefore never raises: a line it cannot use yields None. The parsers for
whole documents raise ResticOutputError, because a half-read snapshot list
must not be mistaken for an empty repository.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "BackupError",
    "BackupProgress",
    "BackupSummary",
    "ForgetResult",
    "RepoStatsInfo",
    "ResticOutputError",
    "SnapshotInfo",
    "parse_backup_line",
    "parse_forget",
    "parse_snapshots",
    "parse_stats",
]


class ResticOutputError(ValueError):
    """restic printed something that is not the JSON document we asked for."""


@dataclass(frozen=True)
class BackupProgress:
    percent: float  # 0..100
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    current_file: str | None
    seconds_elapsed: int
    seconds_remaining: int | None


@dataclass(frozen=True)
class BackupSummary:
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs_new: int
    dirs_changed: int
    dirs_unmodified: int
    data_added: int
    total_files_processed: int
    total_bytes_processed: int
    total_duration: float
    snapshot_id: str | None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BackupError:
    item: str | None
    during: str | None
    message: str


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    short_id: str
    time: str
    hostname: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    tree: str | None
    username: str | None = None
    program_version: str | None = None
    # Only restic >= 0.17 stores the backup statistics in the snapshot.
    summary: BackupSummary | None = None


@dataclass(frozen=True)
class RepoStatsInfo:
    total_size: int
    total_uncompressed_size: int | None
    compression_ratio: float | None
    blob_count: int | None
    snapshots_count: int | None


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _str_tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _progress(obj: dict[str, Any]) -> BackupProgress:
    percent = min(max(_float(obj, "percent_done") * 100.0, 0.0), 100.0)
    current = _str_tuple(obj.get("current_files"))
    return BackupProgress(
        percent=percent,
        files_done=_int(obj, "files_done"),
        files_total=_int(obj, "total_files"),
        bytes_done=_int(obj, "bytes_done"),
        bytes_total=_int(obj, "total_bytes"),
        current_file=current[0] if current else None,
        seconds_elapsed=_int(obj, "seconds_elapsed"),
        seconds_remaining=_opt_int(obj, "seconds_remaining"),
    )


def _summary(obj: dict[str, Any], snapshot_id: str | None) -> BackupSummary:
    return BackupSummary(
        files_new=_int(obj, "files_new"),
        files_changed=_int(obj, "files_changed"),
        files_unmodified=_int(obj, "files_unmodified"),
        dirs_new=_int(obj, "dirs_new"),
        dirs_changed=_int(obj, "dirs_changed"),
        dirs_unmodified=_int(obj, "dirs_unmodified"),
        data_added=_int(obj, "data_added"),
        total_files_processed=_int(obj, "total_files_processed"),
        total_bytes_processed=_int(obj, "total_bytes_processed"),
        total_duration=_float(obj, "total_duration"),
        snapshot_id=snapshot_id,
    )


def _error_message(error: object, during: str | None) -> str:
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        # restic 0.14 serialises Go's *os.PathError field by field.
        op, path, errno = error.get("Op"), error.get("Path"), error.get("Err")
        if isinstance(op, str) and isinstance(path, str):
            text = f"{op} {path}"
            if isinstance(errno, int) and not isinstance(errno, bool):
                # The number is a POSIX errno only when restic ran on POSIX.
                reason = "" if sys.platform == "win32" else f" ({os.strerror(errno)})"
                text += f": errno {errno}{reason}"
            return text
    # 0.14 prints `{}` for errors it cannot serialise, e.g. an unreadable dir.
    return f"error during {during}" if during else "error"


def parse_backup_line(line: str) -> BackupProgress | BackupSummary | BackupError | None:
    """Parse one line of `restic backup --json` stdout or stderr.

    Returns None for anything that is not progress, the summary or a
    per-file error (verbose events, exit_error, plain text, junk).
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("message_type")
    if kind == "status":
        if "action" in obj:
            return None
        return _progress(obj)
    if kind == "summary":
        return _summary(obj, _opt_str(obj, "snapshot_id"))
    if kind == "error":
        during = _opt_str(obj, "during")
        return BackupError(
            item=_opt_str(obj, "item"),
            during=during,
            message=_error_message(obj.get("error"), during),
        )
    return None


def _load_json(text: str, what: str, expected: type) -> Any:
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        value = None
        # A warning printed to stdout ahead of the document must not cost us
        # the document, so fall back to the last line that parses.
        for candidate in reversed(stripped.splitlines()):
            try:
                value = json.loads(candidate)
            except ValueError:
                continue
            break
    if what == "snapshots" and value is None and stripped == "null":
        return []
    if not isinstance(value, expected):
        shown = stripped[:200] if stripped else "<empty>"
        raise ResticOutputError(
            f"restic {what} output is not a JSON {expected.__name__}: {shown!r}"
        )
    return value


def _duration(start: str | None, end: str | None) -> float:
    if start is None or end is None:
        return 0.0
    try:
        return max((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 0)
    except ValueError:
        return 0.0


def parse_snapshots(text: str) -> list[SnapshotInfo]:
    """Parse `restic snapshots --json`."""
    items = _load_json(text, "snapshots", list)
    result: list[SnapshotInfo] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ResticOutputError(f"snapshot #{index} is not a JSON object")
        snap_id = _opt_str(item, "id")
        snap_time = _opt_str(item, "time")
        if snap_id is None or snap_time is None:
            raise ResticOutputError(f"snapshot #{index} has no id or time")
        raw_summary = item.get("summary")
        summary = None
        if isinstance(raw_summary, dict):
            summary = dataclasses.replace(
                _summary(raw_summary, snap_id),
                total_duration=_duration(
                    _opt_str(raw_summary, "backup_start"), _opt_str(raw_summary, "backup_end")
                ),
            )
        result.append(
            SnapshotInfo(
                id=snap_id,
                # Not every restic version prints short_id; it is always id[:8].
                short_id=_opt_str(item, "short_id") or snap_id[:8],
                time=snap_time,
                hostname=_opt_str(item, "hostname") or "",
                paths=_str_tuple(item.get("paths")),
                tags=_str_tuple(item.get("tags")),
                tree=_opt_str(item, "tree"),
                username=_opt_str(item, "username"),
                program_version=_opt_str(item, "program_version"),
                summary=summary,
            )
        )
    return result


def parse_stats(text: str) -> RepoStatsInfo:
    """Parse `restic stats --json --mode raw-data`."""
    obj = _load_json(text, "stats", dict)
    total_size = _opt_int(obj, "total_size")
    if total_size is None:
        raise ResticOutputError(f"restic stats output has no total_size: {text.strip()[:200]!r}")
    ratio = obj.get("compression_ratio")
    return RepoStatsInfo(
        total_size=total_size,
        # Repository format v1 (and restic 0.14) has no compression fields.
        total_uncompressed_size=_opt_int(obj, "total_uncompressed_size"),
        compression_ratio=(
            float(ratio) if isinstance(ratio, int | float) and not isinstance(ratio, bool) else None
        ),
        blob_count=_opt_int(obj, "total_blob_count"),
        snapshots_count=_opt_int(obj, "snapshots_count"),
    )


@dataclass(frozen=True)
class ForgetResult:
    kept: int
    removed: int


def parse_forget(text: str) -> ForgetResult:
    """Parse `restic forget --json`: one entry per snapshot group.

    restic prints nothing at all when no snapshot matched the filter.
    """
    if not text.strip() or text.strip() == "null":
        return ForgetResult(kept=0, removed=0)
    groups = _load_json(text, "forget", list)
    kept = removed = 0
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            raise ResticOutputError(f"forget group #{index} is not a JSON object")
        keep = group.get("keep")
        remove = group.get("remove")
        kept += len(keep) if isinstance(keep, list) else 0
        removed += len(remove) if isinstance(remove, list) else 0
    return ForgetResult(kept=kept, removed=removed)
