"""The audit log table's item model and the pure helpers the view builds its
query and its text with.

The model holds ``AuditView`` dataclasses from ``AuditService``; it never
touches the database. Rows are kept newest first; ``merge_newer`` puts the
entries a live refresh found on top and ``append_older`` adds a "Load older"
page below, so selection and scroll position survive both (no reset).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from enum import IntEnum
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor

from server_core.views import AuditQuery
from server_core.views import AuditView as AuditEntry

ModelIndex = QModelIndex | QPersistentModelIndex

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
ENTRY_ROLE = Qt.ItemDataRole.UserRole + 2

SUMMARY_MAX = 140

# (label, seconds back from now); None = no lower bound; "custom" = the from/to pickers.
TIME_PRESETS: tuple[tuple[str, str, float | None], ...] = (
    ("hour", "Last hour", 3600.0),
    ("day", "Last 24 hours", 86400.0),
    ("week", "Last 7 days", 7 * 86400.0),
    ("month", "Last 30 days", 30 * 86400.0),
    ("all", "All time", None),
    ("custom", "Custom range…", None),
)

ACTOR_KINDS: tuple[tuple[str | None, str], ...] = (
    (None, "Anyone"),
    ("operator", "Operator (this app)"),
    ("api", "API token"),
    ("agent", "Agent"),
    ("system", "System"),
)

ACTOR_LABELS = {"operator": "Operator", "api": "API", "agent": "Agent", "system": "System"}

# Actor kinds get a quiet colour each so a column of them reads at a glance.
ACTOR_COLOURS = {
    "operator": "#2f7fd8",
    "api": "#8e5bd8",
    "agent": "#2e9d4a",
    "system": "#8a8a8a",
}

_TARGET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*(:[^\s:]+)?$")


class Column(IntEnum):
    TIME = 0
    ACTOR = 1
    ACTION = 2
    TARGET = 3
    SUMMARY = 4


HEADERS = ("Time", "Actor", "Action", "Target", "Summary")


# -- pure helpers ------------------------------------------------------------------


def preset_since(preset: str, now: float) -> float | None:
    """The lower time bound of a preset ("day" is now - 24 h); None for all/custom."""
    for key, _label, seconds in TIME_PRESETS:
        if key == preset:
            return None if seconds is None else now - seconds
    raise ValueError(f"unknown time preset {preset!r}")


def parse_target(text: str) -> str | None:
    """The target filter as the service takes it ("host" or "host:3"), None when
    empty. Raises ValueError with a message for the operator when malformed."""
    text = text.strip()
    if not text:
        return None
    if not _TARGET_RE.match(text):
        raise ValueError('Target is a kind or kind:id, e.g. "host" or "host:3"')
    return text


def build_query(
    *,
    preset: str,
    now: float,
    custom_from: float | None = None,
    custom_to: float | None = None,
    actor_kind: str | None = None,
    action: str | None = None,
    target: str = "",
    text: str = "",
    limit: int = 500,
    before_id: int | None = None,
) -> AuditQuery:
    """An ``AuditQuery`` from what the filter bar shows (ValueError on a bad target
    or a custom range that ends before it starts)."""
    if preset == "custom":
        since, until = custom_from, custom_to
        if since is not None and until is not None and until < since:
            raise ValueError("The range ends before it starts: pick a later “To”")
    else:
        since, until = preset_since(preset, now), None
    return AuditQuery(
        since=since,
        until=until,
        actor_kind=actor_kind or None,
        action=action or None,
        target=parse_target(target),
        text=text.strip() or None,
        limit=limit,
        before_id=before_id,
    )


def action_choices(actions: list[str]) -> list[tuple[str, str]]:
    """(label, filter value) for the action combo: each family as a prefix
    ("host.*" → "host.") followed by its exact actions, families sorted."""
    families: dict[str, list[str]] = {}
    for action in sorted(set(actions)):
        family = action.split(".", 1)[0] if "." in action else action
        families.setdefault(family, []).append(action)
    out: list[tuple[str, str]] = []
    for family, members in sorted(families.items()):
        if len(members) > 1 or members[0] != family:
            out.append((f"{family}.*  (every {family} action)", f"{family}."))
        out.extend((f"    {m}", m) for m in members)
    return out


def actor_text(entry: AuditEntry) -> str:
    label = ACTOR_LABELS.get(entry.actor_kind, entry.actor_kind)
    return f"{label} · {entry.actor_id}" if entry.actor_id else label


def target_text(entry: AuditEntry) -> str:
    if entry.target_kind and entry.target_id:
        return f"{entry.target_kind}:{entry.target_id}"
    return entry.target_kind or "—"


# Payload keys holding a Unix time ("expires_at", "last_seen"): shown as a date.
_TIME_KEY = re.compile(r"(_at|_ts|^ts|_time|last_seen|first_seen)$")
# 2001-09-09 … 2286: a number in this range under such a key is a timestamp.
_TS_RANGE = (1e9, 1e10)


def _scalar(value: Any, key: str = "") -> str:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and _TIME_KEY.search(key)
        and _TS_RANGE[0] <= value < _TS_RANGE[1]
    ):
        return entry_time(float(value))
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def summary(payload: dict[str, Any], limit: int = SUMMARY_MAX) -> str:
    """``key=value, …`` on one line, cut at ``limit`` characters."""
    if not payload:
        return ""
    text = ", ".join(f"{k}={_scalar(v, k)}" for k, v in sorted(payload.items()))
    text = " ".join(text.split())  # newlines in values would break the row
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_payload(payload: dict[str, Any]) -> str:
    if not payload:
        return "(no payload)"
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)


def entry_time(ts: float) -> str:
    """Local time with seconds: audit entries are often seconds apart."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


# -- the model ---------------------------------------------------------------------


class AuditModel(QAbstractTableModel):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.entries: list[AuditEntry] = []  # newest first (highest id first)
        self._ids: set[int] = set()

    # Qt interface

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == Column.TIME:
                return entry_time(entry.ts)
            if col == Column.ACTOR:
                return actor_text(entry)
            if col == Column.ACTION:
                return entry.action
            if col == Column.TARGET:
                return target_text(entry)
            return summary(entry.payload)
        if role == SORT_ROLE:
            if col == Column.TIME:
                # The id breaks ties between entries of the same second.
                return (entry.ts, entry.id)
            if col == Column.ACTOR:
                return actor_text(entry).lower()
            if col == Column.TARGET:
                return (entry.target_kind or "", _natural(entry.target_id))
            return self.data(index, Qt.ItemDataRole.DisplayRole).lower()
        if role == ENTRY_ROLE:
            return entry
        if role == Qt.ItemDataRole.ForegroundRole and col == Column.ACTOR:
            colour = ACTOR_COLOURS.get(entry.actor_kind)
            return QColor(colour) if colour else None
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == Column.TIME:
                return f"entry #{entry.id}"
            if col == Column.SUMMARY and entry.payload:
                return pretty_payload(entry.payload)
        return None

    # updates

    def reset(self, entries: list[AuditEntry]) -> None:
        self.beginResetModel()
        self.entries = sorted(entries, key=lambda e: e.id, reverse=True)
        self._ids = {e.id for e in self.entries}
        self.endResetModel()

    def append_older(self, entries: list[AuditEntry]) -> int:
        """Add entries below the ones held (a "Load older" page); returns how many were new."""
        fresh = sorted((e for e in entries if e.id not in self._ids), key=lambda e: -e.id)
        if not fresh:
            return 0
        first = len(self.entries)
        self.beginInsertRows(QModelIndex(), first, first + len(fresh) - 1)
        self.entries.extend(fresh)
        self._ids.update(e.id for e in fresh)
        self.endInsertRows()
        return len(fresh)

    def merge_newer(self, entries: list[AuditEntry]) -> int:
        """Put entries newer than any held on top (a live refresh); returns how many."""
        newest = self.newest_id()
        fresh = sorted(
            (e for e in entries if e.id not in self._ids and (newest is None or e.id > newest)),
            key=lambda e: -e.id,
        )
        if not fresh:
            return 0
        self.beginInsertRows(QModelIndex(), 0, len(fresh) - 1)
        self.entries[:0] = fresh
        self._ids.update(e.id for e in fresh)
        self.endInsertRows()
        return len(fresh)

    def newest_id(self) -> int | None:
        return self.entries[0].id if self.entries else None

    def oldest_id(self) -> int | None:
        return self.entries[-1].id if self.entries else None

    def entry(self, row: int) -> AuditEntry:
        return self.entries[row]


def _natural(text: str | None) -> tuple[int, int | str]:
    """Numeric ids sort as numbers ("10" after "9"), others as text after them."""
    if text is None:
        return (0, 0)
    return (1, int(text)) if text.isdigit() else (2, text)


class AuditSortProxy(QSortFilterProxyModel):
    """Sorts on SORT_ROLE values (tuples compare in Python, which QVariant cannot)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)

    def lessThan(self, left: ModelIndex, right: ModelIndex) -> bool:
        a = left.data(SORT_ROLE)
        b = right.data(SORT_ROLE)
        try:
            return bool(a < b)
        except TypeError:
            return str(a) < str(b)


__all__ = [
    "ACTOR_KINDS",
    "ENTRY_ROLE",
    "HEADERS",
    "SORT_ROLE",
    "TIME_PRESETS",
    "AuditModel",
    "AuditSortProxy",
    "Column",
    "action_choices",
    "actor_text",
    "build_query",
    "entry_time",
    "parse_target",
    "preset_since",
    "pretty_payload",
    "summary",
    "target_text",
]
