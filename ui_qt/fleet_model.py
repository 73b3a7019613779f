"""The fleet table's item model and its filter/sort proxy.

``FleetModel.apply(views)`` diffs a fresh ``list_hosts()`` result against the
rows it holds and emits the smallest set of changes: ``dataChanged`` for a
changed row, ``rowsInserted`` / ``rowsRemoved`` for hosts that came or went.
Only the very first load resets the model, so selection, scroll position
and sorting survive every heartbeat.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
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


def host_state(view: HostView) -> str:
    """``online``, ``offline``, or ``never`` (not enrolled yet, or never seen)."""
    if view.status == "online":
        return ONLINE
    if not view.enrolled or view.last_seen_at is None:
        return NEVER
    return OFFLINE


def backup_failing(view: HostView) -> bool:
    return view.last_backup_status == "failed"


def repo_needs_attention(view: HostView) -> bool:
    return view.repo_status in ("init_failed", "locked") or (
        view.repo_status == "unknown" and view.enrolled
    )


def natural_key(version: str | None) -> str:
    """A string that sorts numbers inside text numerically: 0.9.0 < 0.14.0, web-2 < web-10."""
    if not version:
        return ""
    return re.sub(r"\d+", lambda m: m.group(0).rjust(8, "0"), version.casefold())


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
        self._loaded = False
        self._now = now
        self._dots: dict[str, QIcon] = {}
        self._bold: QFont | None = None
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

    def all_tags(self) -> list[str]:
        tags = {t for v in self._rows for t in v.tags}
        return sorted(tags, key=str.casefold)

    # -- updating --------------------------------------------------------------

    def apply(self, views: Iterable[HostView]) -> None:
        """Bring the rows in line with ``views`` (the whole fleet)."""
        fresh = list(views)
        if not self._loaded:
            self.beginResetModel()
            self._rows = fresh
            self._reindex()
            self._loaded = True
            self.endResetModel()
            self.applied.emit()
            return
        wanted = {v.id for v in fresh}
        gone = [row for row, v in enumerate(self._rows) if v.id not in wanted]
        self._remove_rows(gone)
        last_col = self.columnCount() - 1
        added: list[HostView] = []
        for view in fresh:
            row = self._row_of.get(view.id)
            if row is None:
                added.append(view)
            elif self._rows[row] != view:
                self._rows[row] = view
                self.dataChanged.emit(self.index(row, 0), self.index(row, last_col))
        if added:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(added) - 1)
            self._rows.extend(added)
            self._reindex()
            self.endInsertRows()
        self.applied.emit()

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
            del self._rows[first : last + 1]
            self._reindex()
            self.endRemoveRows()

    def _reindex(self) -> None:
        self._row_of = {v.id: row for row, v in enumerate(self._rows)}

    def tick(self) -> None:
        """Relative times moved on: repaint the last-backup and next-run columns only."""
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
        return 0 if parent.isValid() else len(Column)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(Column):
            return None
        title, tip = HEADERS[Column(section)]
        if role == Qt.ItemDataRole.DisplayRole:
            return title
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip
        if role == Qt.ItemDataRole.TextAlignmentRole and Column(section) in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        view = self._rows[index.row()]
        col = Column(index.column())
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(view, col)
        if role == SORT_ROLE:
            return self._sort_value(view, col)
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
            return f"Agent version {v.agent_version}" if v.agent_version else "Not reported yet"
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
