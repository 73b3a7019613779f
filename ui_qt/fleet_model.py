"""The fleet table's item model and its filter/sort proxy.

``FleetModel.apply(views)`` diffs a fresh ``list_hosts()`` result against the
rows it holds and emits the smallest set of changes: ``dataChanged`` for the
cells of a row whose content changed, ``rowsInserted`` / ``rowsRemoved`` for
hosts that came or went. ``apply(views, only=ids)`` does the same for a
refresh of a few hosts (a host asked for and not returned was deleted).
Only the very first load resets the model, so selection, scroll position
and sorting survive every heartbeat.

Qt calls ``data``/``columnCount`` tens of thousands of times a second while
a big table repaints or sorts: those stay cheap (no enum construction, no
regex on the sort path).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from enum import IntEnum
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QFont, QIcon

from server_core.update_views import available_update
from server_core.views import HostView
from ui_qt.formatting import absolute_time, human_bytes, relative_time
from ui_qt.widgets.colors import Tone, text_color
from ui_qt.widgets.status_dot import NEVER, OFFLINE, ONLINE, STATE_LABELS, dot_icon

ModelIndex = QModelIndex | QPersistentModelIndex

TICK_MS = 30_000

SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # raw values: timestamps, sizes, counts
HOST_ID_ROLE = Qt.ItemDataRole.UserRole + 2
HOST_ROLE = Qt.ItemDataRole.UserRole + 3  # the HostView itself
STATE_ROLE = Qt.ItemDataRole.UserRole + 4  # online | offline | never
SPARKLINE_ROLE = Qt.ItemDataRole.UserRole + 5  # size column: 30 daily sizes, None = no sample
UPDATE_ROLE = Qt.ItemDataRole.UserRole + 6  # agent column: the bundled version it could run


class Column(IntEnum):
    STATUS = 0
    NAME = 1
    PLATFORM = 2
    AGENT = 3
    RESTIC = 4
    LAST_BACKUP = 5
    NEXT_RUN = 6
    REPO = 7
    SIZE = 8
    SNAPSHOTS = 9
    ALERTS = 10
    TAGS = 11


HEADERS: dict[Column, tuple[str, str]] = {
    Column.STATUS: ("Status", "Agent connection: online, offline, or never connected"),
    Column.NAME: ("Name", "Host name"),
    Column.PLATFORM: ("OS/arch", "Operating system and CPU architecture reported by the agent"),
    Column.AGENT: ("Agent", "restic-manager agent version"),
    Column.RESTIC: ("restic", "restic version installed on the host"),
    Column.LAST_BACKUP: (
        "Last backup",
        "When the last backup finished, coloured by its result: "
        "green succeeded, amber succeeded with warnings, red failed",
    ),
    Column.NEXT_RUN: (
        "Next run",
        "When the host's schedules fire next (the agent fires them even when this app is closed)",
    ),
    Column.REPO: (
        "Repo",
        "Repository status: ready, locked (a stale lock to remove), init failed, or not "
        "checked yet",
    ),
    Column.SIZE: (
        "Size",
        "Repository size on disk (restic stats, raw data), with its trend over 30 days",
    ),
    Column.SNAPSHOTS: ("Snaps", "Number of snapshots in the repository"),
    Column.ALERTS: ("Alerts", "Open (unresolved) alerts for this host"),
    Column.TAGS: ("Tags", "Host tags"),
}

BACKUP_RESULTS: dict[str, tuple[str, Tone]] = {
    "succeeded": ("succeeded", Tone.OK),
    "succeeded_with_warnings": ("succeeded with warnings", Tone.WARN),
    "failed": ("failed", Tone.BAD),
    "cancelled": ("cancelled", Tone.MUTED),
}

REPO_LABELS = {
    "ready": "Ready",
    "locked": "Locked",
    "init_failed": "Init failed",
    "unknown": "Unknown",
}
_REPO_RANK = {"init_failed": 0, "locked": 1, "unknown": 2, "ready": 3}
_NEVER = 1e18  # sorts hosts without a next run after every real time

_STATE_RANK = {ONLINE: 0, OFFLINE: 1, NEVER: 2}
_NUMERIC = (Column.SIZE, Column.SNAPSHOTS, Column.ALERTS)
_COLUMNS = tuple(Column)  # column number -> Column without calling the enum
COLUMN_COUNT = len(_COLUMNS)
_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_MISSING = object()

# The HostView fields each column's cell is drawn from (text, sort key,
# colour, icon, font, sparkline). Tooltips do not count: Qt asks for them
# when it shows one. A change to any other field (nothing drawn from it)
# is signalled on column 0 for HOST_ROLE only.
FIELD_COLUMNS: dict[str, tuple[Column, ...]] = {
    "name": (Column.NAME,),
    "status": (Column.STATUS,),
    "enrolled": (Column.STATUS,),
    "last_seen_at": (Column.STATUS,),
    "presence_mode": (Column.STATUS,),  # an offline laptop reads "Asleep · …"
    # The agent cell's "update available" chip depends on the platform too.
    "os": (Column.PLATFORM, Column.AGENT),
    "arch": (Column.PLATFORM, Column.AGENT),
    "agent_version": (Column.AGENT,),
    "restic_version": (Column.RESTIC,),
    "last_backup_at": (Column.LAST_BACKUP,),
    "last_backup_status": (Column.LAST_BACKUP,),
    "next_run_at": (Column.NEXT_RUN,),
    "repo_status": (Column.REPO,),
    "repo_size_bytes": (Column.SIZE,),
    "size_history": (Column.SIZE,),
    "snapshot_count": (Column.SNAPSHOTS,),
    "open_alerts": (Column.ALERTS,),
    "tags": (Column.TAGS,),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(HostView))


def host_state(view: HostView) -> str:
    """``online``, ``offline``, or ``never`` (not enrolled yet, or never seen)."""
    if view.status == "online":
        return ONLINE
    if not view.enrolled or view.last_seen_at is None:
        return NEVER
    return OFFLINE


def asleep(view: HostView) -> bool:
    """An offline laptop host: offline is its normal state, shown calmly."""
    return view.presence_mode == "laptop" and host_state(view) == OFFLINE


def backup_failing(view: HostView) -> bool:
    return view.last_backup_status == "failed"


def repo_needs_attention(view: HostView) -> bool:
    return view.repo_status in ("init_failed", "locked") or (
        view.repo_status == "unknown" and view.enrolled
    )


@functools.lru_cache(maxsize=16_384)
def natural_key(version: str | None) -> str:
    """A string that sorts numbers inside text numerically: 0.9.0 < 0.14.0, web-2 < web-10.

    Cached: sorting 1,000 rows asks for about 20,000 keys, and names and
    versions hardly ever change."""
    if not version:
        return ""
    return re.sub(r"\d+", lambda m: m.group(0).rjust(8, "0"), version.casefold())


def changed_columns(old: HostView, new: HostView) -> tuple[list[int], bool]:
    """The columns whose cells differ between two versions of a row, sorted,
    and whether any field that no cell shows changed."""
    columns: set[int] = set()
    hidden = False
    for name in _FIELDS:
        if getattr(old, name) != getattr(new, name):
            shown = FIELD_COLUMNS.get(name)
            if shown is None:
                hidden = True
            else:
                columns.update(int(c) for c in shown)
    return sorted(columns), hidden


class FleetModel(QAbstractTableModel):
    """One row per host. ``now`` is injectable for tests."""

    applied = Signal()  # after every apply()/remove_ids(), once the model is consistent

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        tick_ms: int = TICK_MS,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(parent)
        self._rows: list[HostView] = []
        self._row_of: dict[int, int] = {}
        # Sort key per host and column, for the version of the row shown.
        self._sort_keys: dict[int, dict[int, Any]] = {}
        self._loaded = False
        self._now = now
        self._dots: dict[str, QIcon] = {}
        self._bold: QFont | None = None
        # "os/arch" -> the agent version the app bundles (the update chip).
        self._bundled: dict[str, str] = {}
        self._ticker = QTimer(self)
        self._ticker.setInterval(tick_ms)
        self._ticker.timeout.connect(self.tick)
        self._ticker.start()

    # -- reading ---------------------------------------------------------------

    def loaded(self) -> bool:
        return self._loaded

    def hosts(self) -> list[HostView]:
        return list(self._rows)

    def host_at(self, row: int) -> HostView:
        return self._rows[row]

    def row_of(self, host_id: int) -> int | None:
        return self._row_of.get(host_id)

    def host(self, host_id: int) -> HostView | None:
        row = self._row_of.get(host_id)
        return None if row is None else self._rows[row]

    def update_for(self, view: HostView) -> str | None:
        """The bundled agent version this host could update to (None: none)."""
        return available_update(view.os, view.arch, view.agent_version, self._bundled)

    def outdated(self) -> list[HostView]:
        return [v for v in self._rows if self.update_for(v) is not None]

    def set_bundled_versions(self, versions: Mapping[str, str]) -> None:
        """The agent builds the app bundles ("os/arch" -> version): repaints the agent column."""
        fresh = dict(versions)
        if fresh == self._bundled:
            return
        self._bundled = fresh
        if self._rows:
            column = int(Column.AGENT)
            self.dataChanged.emit(
                self.index(0, column), self.index(len(self._rows) - 1, column), [UPDATE_ROLE]
            )

    def all_tags(self) -> list[str]:
        tags = {t for v in self._rows for t in v.tags}
        return sorted(tags, key=str.casefold)

    # -- updating --------------------------------------------------------------

    def apply(self, views: Iterable[HostView], only: Collection[int] | None = None) -> None:
        """Bring the rows in line with ``views``: the whole fleet, or with
        ``only`` the hosts a partial refresh asked for (an id in ``only``
        missing from ``views`` is a host that no longer exists)."""
        fresh = list(views)
        if not self._loaded:
            if only is not None:
                raise ValueError("the first load must be the whole fleet")
            self.beginResetModel()
            self._rows = fresh
            self._sort_keys.clear()
            self._reindex()
            self._loaded = True
            self.endResetModel()
            self.applied.emit()
            return
        wanted = {v.id for v in fresh}
        if only is None:
            gone = [row for row, v in enumerate(self._rows) if v.id not in wanted]
        else:
            gone = [
                row for row in (self._row_of.get(h) for h in set(only) - wanted) if row is not None
            ]
        self._remove_rows(gone)
        added: list[HostView] = []
        for view in fresh:
            row = self._row_of.get(view.id)
            if row is None:
                added.append(view)
            else:
                old = self._rows[row]
                if old != view:
                    self._rows[row] = view
                    self._sort_keys.pop(view.id, None)
                    self._signal_changed(row, old, view)
        if added:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(added) - 1)
            self._rows.extend(added)
            self._reindex()
            self.endInsertRows()
        self.applied.emit()

    def _signal_changed(self, row: int, old: HostView, new: HostView) -> None:
        # Only the cells that changed: fewer repaints, and the proxy re-sorts
        # a row only when its sort column is among them.
        columns, hidden = changed_columns(old, new)
        for first, last in _runs(columns):
            self.dataChanged.emit(self.index(row, first), self.index(row, last))
        if hidden and not columns:
            self.dataChanged.emit(self.index(row, 0), self.index(row, 0), [HOST_ROLE])

    def remove_ids(self, host_ids: Iterable[int]) -> None:
        """Drop hosts at once (a deletion event) without waiting for a refresh."""
        rows = [self._row_of[h] for h in set(host_ids) if h in self._row_of]
        if rows:
            self._remove_rows(rows)
            self.applied.emit()

    def _remove_rows(self, rows: list[int]) -> None:
        # Contiguous runs, from the bottom up so earlier row numbers stay valid.
        for first, last in reversed(_runs(sorted(rows))):
            self.beginRemoveRows(QModelIndex(), first, last)
            for view in self._rows[first : last + 1]:
                self._sort_keys.pop(view.id, None)
            del self._rows[first : last + 1]
            self._reindex()
            self.endRemoveRows()

    def _reindex(self) -> None:
        self._row_of = {v.id: row for row, v in enumerate(self._rows)}

    def tick(self) -> None:
        """Relative times moved on: repaint the last-backup and next-run columns, and
        the status of asleep laptops ("last seen 3 h ago")."""
        if self._rows and any(asleep(v) for v in self._rows):
            self.dataChanged.emit(
                self.index(0, int(Column.STATUS)),
                self.index(len(self._rows) - 1, int(Column.STATUS)),
                [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole],
            )
        if self._rows:
            # Adjacent columns: one signal covers both.
            self.dataChanged.emit(
                self.index(0, int(Column.LAST_BACKUP)),
                self.index(len(self._rows) - 1, int(Column.NEXT_RUN)),
                [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole],
            )

    # -- Qt model API ------------------------------------------------------------

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else COLUMN_COUNT

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < COLUMN_COUNT:
            return None
        title, tip = HEADERS[_COLUMNS[section]]
        if role == Qt.ItemDataRole.DisplayRole:
            return title
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip
        if role == Qt.ItemDataRole.TextAlignmentRole and _COLUMNS[section] in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = index.row()  # -1 for an invalid index
        if not 0 <= row < len(self._rows):
            return None
        view = self._rows[row]
        column = index.column()
        if role == SORT_ROLE:
            # Sorting 1,000 rows asks ~20,000 times: answer from the cache.
            keys = self._sort_keys.get(view.id)
            if keys is None:
                keys = self._sort_keys[view.id] = {}
            key = keys.get(column, _MISSING)
            if key is _MISSING:
                key = keys[column] = self._sort_value(view, _COLUMNS[column])
            return key
        col = _COLUMNS[column]
        if role == _DISPLAY:
            return self._display(view, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(view, col)
        if role == Qt.ItemDataRole.ForegroundRole:
            tone = self._tone(view, col)
            return None if tone is None else text_color(tone)
        if role == Qt.ItemDataRole.DecorationRole and col == Column.STATUS:
            return self._dot(host_state(view))
        if role == Qt.ItemDataRole.FontRole and col == Column.ALERTS and view.open_alerts:
            if self._bold is None:
                self._bold = QFont()
                self._bold.setBold(True)
            return self._bold
        if role == Qt.ItemDataRole.TextAlignmentRole and col in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == HOST_ID_ROLE:
            return view.id
        if role == SPARKLINE_ROLE and col == Column.SIZE:
            return view.size_history
        if role == UPDATE_ROLE and col == Column.AGENT:
            return self.update_for(view) if self._bundled else None
        if role == HOST_ROLE:
            return view
        if role == STATE_ROLE:
            return host_state(view)
        return None

    def _dot(self, state: str) -> QIcon:
        icon = self._dots.get(state)
        if icon is None:
            icon = self._dots[state] = dot_icon(state)
        return icon

    def _display(self, v: HostView, col: Column) -> str:
        if col == Column.STATUS:
            if asleep(v):
                return f"Asleep · last seen {relative_time(v.last_seen_at, self._now())}"
            return STATE_LABELS[host_state(v)]
        if col == Column.NAME:
            return v.name
        if col == Column.PLATFORM:
            if not v.os and not v.arch:
                return "—"
            return "/".join(p for p in (v.os, v.arch) if p)
        if col == Column.AGENT:
            return v.agent_version or "—"
        if col == Column.RESTIC:
            return v.restic_version or "—"
        if col == Column.LAST_BACKUP:
            if v.last_backup_at is None:
                return "never"
            when = relative_time(v.last_backup_at, self._now())
            if v.last_backup_status in ("failed", "succeeded_with_warnings", "cancelled"):
                short = {
                    "failed": "failed",
                    "succeeded_with_warnings": "warnings",
                    "cancelled": "cancelled",
                }[v.last_backup_status]
                return f"{when} · {short}"
            return when
        if col == Column.NEXT_RUN:
            if v.next_run_at is None:
                return "—"
            if v.next_run_at < self._now():
                return "due"
            return relative_time(v.next_run_at, self._now())
        if col == Column.REPO:
            return REPO_LABELS.get(v.repo_status, v.repo_status)
        if col == Column.SIZE:
            return human_bytes(v.repo_size_bytes)
        if col == Column.SNAPSHOTS:
            return str(v.snapshot_count)
        if col == Column.ALERTS:
            return str(v.open_alerts)
        if col == Column.TAGS:
            return ", ".join(v.tags)
        return ""

    def _sort_value(self, v: HostView, col: Column) -> Any:
        # One type per column (QVariant comparisons across types are meaningless).
        if col == Column.STATUS:
            return _STATE_RANK[host_state(v)]
        if col == Column.NAME:
            return natural_key(v.name)  # natural: web-2 before web-10
        if col == Column.PLATFORM:
            return f"{v.os or ''}/{v.arch or ''}".casefold()
        if col == Column.AGENT:
            return natural_key(v.agent_version)
        if col == Column.RESTIC:
            return natural_key(v.restic_version)
        if col == Column.LAST_BACKUP:
            return float(v.last_backup_at) if v.last_backup_at is not None else -1.0
        if col == Column.NEXT_RUN:
            return float(v.next_run_at) if v.next_run_at is not None else _NEVER
        if col == Column.REPO:
            return _REPO_RANK.get(v.repo_status, 2)
        if col == Column.SIZE:
            return int(v.repo_size_bytes) if v.repo_size_bytes is not None else -1
        if col == Column.SNAPSHOTS:
            return int(v.snapshot_count)
        if col == Column.ALERTS:
            return int(v.open_alerts)
        if col == Column.TAGS:
            return ", ".join(v.tags).casefold()
        return None

    def _tone(self, v: HostView, col: Column) -> Tone | None:
        if col == Column.LAST_BACKUP:
            if v.last_backup_status is None:
                return Tone.MUTED
            return BACKUP_RESULTS.get(v.last_backup_status, ("", Tone.NEUTRAL))[1]
        if col == Column.NEXT_RUN:
            return Tone.MUTED if v.next_run_at is None else None
        if col == Column.REPO:
            return {"init_failed": Tone.BAD, "locked": Tone.WARN, "unknown": Tone.MUTED}.get(
                v.repo_status
            )
        if col == Column.ALERTS:
            return Tone.BAD if v.open_alerts else Tone.MUTED
        if col == Column.STATUS and host_state(v) != ONLINE:
            return Tone.MUTED
        if col in (Column.PLATFORM, Column.AGENT, Column.RESTIC, Column.SIZE) and (
            self._display(v, col) == "—"
        ):
            return Tone.MUTED
        return None

    def _tooltip(self, v: HostView, col: Column) -> str | None:
        now = self._now()
        state = host_state(v)
        if col in (Column.STATUS, Column.NAME):
            if state == ONLINE:
                status = "Online — the agent is connected"
            elif asleep(v):
                status = (
                    f"Asleep — a laptop host, last seen {relative_time(v.last_seen_at, now)} "
                    f"({absolute_time(v.last_seen_at)}). Being offline is normal for it: no "
                    "offline alert; missed schedules run when it wakes."
                )
            elif state == OFFLINE:
                status = (
                    f"Offline — last seen {relative_time(v.last_seen_at, now)} "
                    f"({absolute_time(v.last_seen_at)})"
                )
            elif not v.enrolled:
                status = "Never connected — waiting for the agent to enrol with its token"
            else:
                status = "Never connected — enrolled, but the agent has not connected yet"
            if col == Column.STATUS:
                return status
            return f"{v.name}\n{status}\nAdded {absolute_time(v.created_at)}"
        if col == Column.PLATFORM:
            if not v.os and not v.arch:
                return "Not reported yet (the agent reports it when it connects)"
            return f"Operating system: {v.os or 'unknown'}\nArchitecture: {v.arch or 'unknown'}"
        if col == Column.AGENT:
            if not v.agent_version:
                return "Not reported yet"
            target = self.update_for(v)
            if target is not None:
                return (
                    f"Agent version {v.agent_version} — update available: this app bundles "
                    f"agent {target}. Right-click → Update agent, or Update agents… for the fleet"
                )
            return f"Agent version {v.agent_version}"
        if col == Column.RESTIC:
            return (
                f"restic {v.restic_version}"
                if v.restic_version
                else "Not reported yet (is restic installed on the host?)"
            )
        if col == Column.LAST_BACKUP:
            if v.last_backup_at is None:
                return "No backup has finished on this host yet"
            result = BACKUP_RESULTS.get(v.last_backup_status or "", (v.last_backup_status, None))
            return (
                f"Last backup {result[0]}\n"
                f"Finished {absolute_time(v.last_backup_at)} "
                f"({relative_time(v.last_backup_at, now)})"
            )
        if col == Column.NEXT_RUN:
            if v.next_run_at is None:
                return "No enabled schedule: backups only run when started by hand"
            if v.next_run_at < now:
                return (
                    f"Was due {absolute_time(v.next_run_at)}: the agent runs a missed "
                    "schedule once when it can (a host that was asleep, when it wakes)"
                )
            return f"Next scheduled backup {absolute_time(v.next_run_at)}"
        if col == Column.REPO:
            if v.repo_status == "locked":
                return (
                    "Repository locked: restic found a lock, most likely left by a killed "
                    "restic. Open the host's Repo tab to unlock it."
                )
            if v.repo_status == "init_failed":
                return f"Repository initialisation failed:\n{v.repo_status_error or 'no details'}"
            if v.repo_status == "ready":
                return "Repository initialised and reachable"
            if not v.enrolled:
                return "Not checked yet: the agent checks the repository after it enrols"
            return "Not checked yet: the agent checks the repository when it connects"
        if col == Column.SIZE:
            if v.repo_size_bytes is None:
                return "Unknown until the agent reports repository statistics"
            text = f"{v.repo_size_bytes:,} bytes"
            trend = size_trend(v.size_history)
            return f"{text}\n{trend}" if trend else text
        if col == Column.SNAPSHOTS:
            return f"{v.snapshot_count} snapshot{'s' if v.snapshot_count != 1 else ''}"
        if col == Column.ALERTS:
            if not v.open_alerts:
                return "No open alerts"
            return f"{v.open_alerts} open alert{'s' if v.open_alerts != 1 else ''}"
        if col == Column.TAGS:
            return ", ".join(v.tags) if v.tags else "No tags"
        return None


def size_trend(history: list[int | None]) -> str | None:
    """``30 days: 4.1 GiB → 5.0 GiB (+0.9 GiB)`` from the daily sizes, if two are known."""
    known = [v for v in history if v is not None]
    if len(known) < 2:
        return None
    first, last = known[0], known[-1]
    delta = last - first
    sign = "+" if delta >= 0 else "−"
    return (
        f"{len(history)} days: {human_bytes(first)} → {human_bytes(last)} "
        f"({sign}{human_bytes(abs(delta))})"
    )


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 9, 10] -> [(1, 3), (7, 7), (9, 10)]."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


# -- filtering ---------------------------------------------------------------

STATUS_FILTERS: dict[str, str] = {
    "all": "All hosts",
    ONLINE: "Online",
    OFFLINE: "Offline",
    NEVER: "Never connected",
    "failing": "Backup failing",
    "attention": "Repo needs attention",
}


class FleetFilterProxy(QSortFilterProxyModel):
    """Name text, status and tags (a host must carry every selected tag)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self._status = "all"
        self._tags: frozenset[str] = frozenset()
        self.setSortRole(SORT_ROLE)
        self.setDynamicSortFilter(True)
        self.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

    def text(self) -> str:
        return self._text

    def status(self) -> str:
        return self._status

    def tags(self) -> set[str]:
        return set(self._tags)

    def set_text(self, text: str) -> None:
        text = text.strip().casefold()
        if text != self._text:
            self.beginFilterChange()
            self._text = text
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_status(self, status: str) -> None:
        if status not in STATUS_FILTERS:
            status = "all"
        if status != self._status:
            self.beginFilterChange()
            self._status = status
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_tags(self, tags: Iterable[str]) -> None:
        new = frozenset(tags)
        if new != self._tags:
            self.beginFilterChange()
            self._tags = new
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def is_filtering(self) -> bool:
        return bool(self._text or self._status != "all" or self._tags)

    def accepts(self, v: HostView) -> bool:
        if self._text and not all(word in v.name.casefold() for word in self._text.split()):
            return False
        if self._tags and not self._tags.issubset(v.tags):
            return False
        status = self._status
        if status == "all":
            return True
        if status in (ONLINE, OFFLINE, NEVER):
            return host_state(v) == status
        if status == "failing":
            return backup_failing(v)
        if status == "attention":
            return repo_needs_attention(v)
        return True

    def filterAcceptsRow(self, source_row: int, source_parent: ModelIndex) -> bool:
        model = self.sourceModel()
        if not isinstance(model, FleetModel) or source_parent.isValid():
            return True
        return self.accepts(model.host_at(source_row))

    def host_id(self, proxy_row: int) -> int | None:
        index = self.index(proxy_row, 0)
        value = index.data(HOST_ID_ROLE) if index.isValid() else None
        return int(value) if value is not None else None
