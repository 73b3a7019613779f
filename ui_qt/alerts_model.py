"""The alerts table's item model, its per-tab status filter, and how a severity looks.

``AlertsModel`` holds every alert the view loaded (open, acknowledged and
the most recent resolved ones) and is brought in line by ``apply(views)``:
like the fleet model it diffs, so a re-fired alert (count and last seen
bumped) repaints only its changed cells and the table keeps its selection,
scroll position and sort. Only the very first load resets the model.

Each tab of the view is an ``AlertsStatusProxy`` over the same model: an
acknowledged alert moves from the Open tab to the Acknowledged one by a
``dataChanged`` on its row, without any reload.

Severity is never shown by colour alone: each has its own shape (square,
triangle, circle), a glyph, a colour and its name in text.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Iterable
from enum import IntEnum
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPointF,
    QRectF,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)
from PySide6.QtGui import QColor, QFont, QGuiApplication, QIcon, QPainter, QPen, QPixmap, QPolygonF

from server_core.views import AlertView
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.widgets.colors import Tone, text_color

ModelIndex = QModelIndex | QPersistentModelIndex

TICK_MS = 30_000

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
ALERT_ID_ROLE = Qt.ItemDataRole.UserRole + 2
ALERT_ROLE = Qt.ItemDataRole.UserRole + 3
STATUS_ROLE = Qt.ItemDataRole.UserRole + 4

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED)
UNRESOLVED = (OPEN, ACKNOWLEDGED)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
SEVERITY_LABELS = {"info": "Info", "warning": "Warning", "critical": "Critical"}
# Fills of the severity badges: mid-tones readable on light and dark palettes.
SEVERITY_FILL = {"critical": "#e5534b", "warning": "#d4a72c", "info": "#3a83d6"}
SEVERITY_TONE = {"critical": Tone.BAD, "warning": Tone.WARN}

KIND_LABELS = {
    "backup_failed": "Backup failed",
    "forget_failed": "Forget failed",
    "prune_failed": "Prune failed",
    "check_failed": "Check failed",
    "repo_init_failed": "Repository init failed",
    "agent_offline": "Agent offline",
    "stale_backup": "No recent backup",
    "update_failed": "Agent update failed",
}
KIND_HELP = {
    "backup_failed": (
        "A backup failed. The host's Jobs tab has its log; the alert resolves itself "
        "when a backup of the same source group succeeds."
    ),
    "forget_failed": (
        "Applying the retention policy failed: old snapshots were not removed. "
        "See the Jobs tab; it resolves when a forget succeeds."
    ),
    "prune_failed": (
        "Pruning the repository failed: unused data was not freed. "
        "See the Jobs tab; it resolves when a prune succeeds."
    ),
    "check_failed": (
        "restic check found a problem with the repository or could not run. "
        "See the Jobs tab; it resolves when a check succeeds."
    ),
    "repo_init_failed": (
        "The repository could not be opened or created (wrong password, unreachable "
        "server?). Fix it in the host's Credentials tab, then probe again."
    ),
    "agent_offline": (
        "An always-on host's agent stopped answering. It resolves itself when the "
        "agent reconnects; set the host to Laptop mode if it is meant to sleep."
    ),
    "stale_backup": (
        "No successful backup for longer than the host's schedule allows. "
        "It resolves with the next successful backup."
    ),
    "update_failed": "The agent could not update itself; it keeps running its old version.",
}


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " ").capitalize())


def severity_label(severity: str | None) -> str:
    if severity is None:
        return ""
    return SEVERITY_LABELS.get(severity, severity.capitalize())


def severity_rank(severity: str | None) -> int:
    return -1 if severity is None else SEVERITY_RANK.get(severity, 0)


def _badge_points(severity: str, rect: QRectF) -> QPolygonF | None:
    """The outline of a triangular warning badge; None for the other shapes."""
    if severity != "warning":
        return None
    return QPolygonF(
        [
            QPointF(rect.center().x(), rect.top()),
            QPointF(rect.right(), rect.bottom()),
            QPointF(rect.left(), rect.bottom()),
        ]
    )


def paint_severity(painter: QPainter, rect: QRectF, severity: str) -> None:
    """A badge: red square with "!", amber triangle with "!", blue circle with "i"."""
    fill = QColor(SEVERITY_FILL.get(severity, SEVERITY_FILL["info"]))
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(fill.darker(125), max(1.0, rect.width() / 16)))
    painter.setBrush(fill)
    outline = _badge_points(severity, rect)
    if outline is not None:
        painter.drawPolygon(outline)
    elif severity == "critical":
        # A square: tells apart from the round info badge even at 16 px.
        radius = rect.width() / 7
        painter.drawRoundedRect(rect, radius, radius)
    else:
        painter.drawEllipse(rect)
    glyph = "i" if severity not in ("critical", "warning") else "!"
    font = QFont()
    font.setBold(True)
    font.setPixelSize(max(6, int(rect.height() * (0.62 if severity == "warning" else 0.72))))
    painter.setFont(font)
    # Dark glyph on amber, white on red and blue: both readable.
    painter.setPen(QColor("#1f1f1f") if severity == "warning" else QColor("white"))
    text_rect = QRectF(rect)
    if severity == "warning":
        text_rect.adjust(0, rect.height() * 0.22, 0, 0)  # the triangle's body is low
    painter.drawText(text_rect, int(Qt.AlignmentFlag.AlignCenter), glyph)
    painter.restore()


def _device_ratio() -> float:
    app = QGuiApplication.instance()
    if isinstance(app, QGuiApplication):
        return float(app.devicePixelRatio())
    return 1.0


def severity_icon(severity: str, size: int = 16) -> QIcon:
    """An icon for item views, the navigation and the tray menu. Callers cache
    it: no pixmap may outlive the QGuiApplication."""
    ratio = _device_ratio()
    pixmap = QPixmap(int(size * ratio), int(size * ratio))
    pixmap.setDevicePixelRatio(ratio)
    pixmap.fill(QColor(0, 0, 0, 0))
    painter = QPainter(pixmap)
    paint_severity(painter, QRectF(1, 1, size - 2, size - 2), severity)
    painter.end()
    return QIcon(pixmap)


class Column(IntEnum):
    SEVERITY = 0
    KIND = 1
    HOST = 2
    MESSAGE = 3
    FIRST_SEEN = 4
    LAST_SEEN = 5
    # When it was acknowledged (Acknowledged tab) or resolved (Resolved tab).
    CHANGED = 6
    COUNT = 7


HEADERS: dict[Column, tuple[str, str]] = {
    Column.SEVERITY: ("Severity", "Critical, warning or info"),
    Column.KIND: ("Kind", "What went wrong (hover a row for what to do)"),
    Column.HOST: ("Host", "The host the alert is about (double-click to open it)"),
    Column.MESSAGE: ("Message", "The latest message of the alert"),
    Column.FIRST_SEEN: ("First seen", "When the alert was raised"),
    Column.LAST_SEEN: ("Last seen", "When the condition was last seen (it re-fires into this row)"),
    Column.CHANGED: ("Acknowledged / resolved", "When the alert was acknowledged or resolved"),
    Column.COUNT: ("Count", "How many times the condition fired while the alert was unresolved"),
}
# The CHANGED column's title on each tab (the Open tab hides it).
CHANGED_HEADERS = {
    ACKNOWLEDGED: ("Acknowledged", "When the alert was acknowledged"),
    RESOLVED: (
        "Resolved",
        "When the alert was resolved: by you, or by itself when the condition cleared",
    ),
}

# The AlertView fields each column is drawn from; others (status, the
# acknowledged/resolved times) are shown in tooltips and by the tab.
FIELD_COLUMNS: dict[str, tuple[Column, ...]] = {
    "severity": (Column.SEVERITY,),
    "kind": (Column.KIND,),
    "host_id": (Column.HOST,),
    "host_name": (Column.HOST,),
    "message": (Column.MESSAGE,),
    "first_seen_at": (Column.FIRST_SEEN,),
    "last_seen_at": (Column.LAST_SEEN,),
    "count": (Column.COUNT,),
    "acknowledged_at": (Column.CHANGED,),
    "resolved_at": (Column.CHANGED,),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(AlertView))
_COLUMNS = tuple(Column)
COLUMN_COUNT = len(_COLUMNS)
_DISPLAY = int(Qt.ItemDataRole.DisplayRole)


def changed_columns(old: AlertView, new: AlertView) -> tuple[list[int], bool]:
    """The columns whose cells differ, sorted, and whether a field no column shows changed."""
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


def first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class AlertsModel(QAbstractTableModel):
    """One row per alert, whatever its status. ``now`` is injectable for tests."""

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        tick_ms: int = TICK_MS,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(parent)
        self._rows: list[AlertView] = []
        self._row_of: dict[int, int] = {}
        self._loaded = False
        self._now = now
        self._icons: dict[str, QIcon] = {}
        self._bold: QFont | None = None
        self.ticks = 0
        self._ticker = QTimer(self)
        self._ticker.setInterval(tick_ms)
        self._ticker.timeout.connect(self.tick)
        self._ticker.start()

    # -- reading ---------------------------------------------------------------

    def loaded(self) -> bool:
        return self._loaded

    def alerts(self) -> list[AlertView]:
        return list(self._rows)

    def alert_at(self, row: int) -> AlertView:
        return self._rows[row]

    def row_of(self, alert_id: int) -> int | None:
        return self._row_of.get(alert_id)

    def alert(self, alert_id: int) -> AlertView | None:
        row = self._row_of.get(alert_id)
        return None if row is None else self._rows[row]

    def count(self, status: str) -> int:
        return sum(1 for a in self._rows if a.status == status)

    # -- updating --------------------------------------------------------------

    def apply(self, views: Iterable[AlertView], only: Collection[int] | None = None) -> None:
        """Bring the rows in line with ``views``: every alert, or with ``only``
        the alerts a partial refresh asked for (an id in ``only`` missing from
        ``views`` no longer exists)."""
        fresh = list(views)
        if not self._loaded:
            if only is not None:
                raise ValueError("the first load must be complete")
            self.beginResetModel()
            self._rows = fresh
            self._reindex()
            self._loaded = True
            self.endResetModel()
            return
        wanted = {v.id for v in fresh}
        if only is None:
            gone = [row for row, v in enumerate(self._rows) if v.id not in wanted]
        else:
            gone = [r for r in (self._row_of.get(i) for i in set(only) - wanted) if r is not None]
        self._remove_rows(gone)
        added: list[AlertView] = []
        for view in fresh:
            row = self._row_of.get(view.id)
            if row is None:
                added.append(view)
                continue
            old = self._rows[row]
            if old != view:
                self._rows[row] = view
                self._signal_changed(row, old, view)
        if added:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(added) - 1)
            self._rows.extend(added)
            self._reindex()
            self.endInsertRows()

    def _signal_changed(self, row: int, old: AlertView, new: AlertView) -> None:
        if old.status != new.status:
            # The row moves to another tab: the proxies re-filter the whole row.
            self.dataChanged.emit(self.index(row, 0), self.index(row, COLUMN_COUNT - 1))
            return
        columns, hidden = changed_columns(old, new)
        for first, last in _runs(columns):
            self.dataChanged.emit(self.index(row, first), self.index(row, last))
        if hidden and not columns:
            self.dataChanged.emit(self.index(row, 0), self.index(row, 0), [ALERT_ROLE])

    def remove_ids(self, alert_ids: Iterable[int]) -> None:
        rows = [self._row_of[i] for i in set(alert_ids) if i in self._row_of]
        self._remove_rows(rows)

    def _remove_rows(self, rows: list[int]) -> None:
        for first, last in reversed(_runs(sorted(rows))):
            self.beginRemoveRows(QModelIndex(), first, last)
            del self._rows[first : last + 1]
            self._reindex()
            self.endRemoveRows()

    def _reindex(self) -> None:
        self._row_of = {v.id: row for row, v in enumerate(self._rows)}

    def tick(self) -> None:
        """Relative times moved on: repaint the time columns only."""
        self.ticks += 1
        if self._rows:
            self.dataChanged.emit(
                self.index(0, int(Column.FIRST_SEEN)),
                self.index(len(self._rows) - 1, int(Column.CHANGED)),
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
        if role == Qt.ItemDataRole.TextAlignmentRole and _COLUMNS[section] == Column.COUNT:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = index.row()
        if not 0 <= row < len(self._rows):
            return None
        alert = self._rows[row]
        col = _COLUMNS[index.column()]
        if role == _DISPLAY:
            return self._display(alert, col)
        if role == SORT_ROLE:
            return self._sort_value(alert, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(alert, col)
        if role == Qt.ItemDataRole.DecorationRole and col == Column.SEVERITY:
            return self._icon(alert.severity)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == Column.SEVERITY and alert.status != RESOLVED:
                tone = SEVERITY_TONE.get(alert.severity)
                return None if tone is None else text_color(tone)
            if col == Column.HOST and alert.host_name is None:
                return text_color(Tone.MUTED)
            return None
        if (
            role == Qt.ItemDataRole.FontRole
            and col == Column.SEVERITY
            and alert.severity == "critical"
            and alert.status == OPEN
        ):
            if self._bold is None:
                self._bold = QFont()
                self._bold.setBold(True)
            return self._bold
        if role == Qt.ItemDataRole.TextAlignmentRole and col == Column.COUNT:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == ALERT_ID_ROLE:
            return alert.id
        if role == ALERT_ROLE:
            return alert
        if role == STATUS_ROLE:
            return alert.status
        return None

    def _icon(self, severity: str) -> QIcon:
        icon = self._icons.get(severity)
        if icon is None:
            icon = self._icons[severity] = severity_icon(severity)
        return icon

    def _display(self, a: AlertView, col: Column) -> str:
        if col == Column.SEVERITY:
            return severity_label(a.severity)
        if col == Column.KIND:
            return kind_label(a.kind)
        if col == Column.HOST:
            return a.host_name or "—"
        if col == Column.MESSAGE:
            return first_line(a.message)
        if col == Column.FIRST_SEEN:
            return relative_time(a.first_seen_at, self._now())
        if col == Column.LAST_SEEN:
            return relative_time(a.last_seen_at, self._now())
        if col == Column.CHANGED:
            at = changed_at(a)
            return relative_time(at, self._now()) if at is not None else ""
        if col == Column.COUNT:
            return str(a.count)
        return ""

    def _sort_value(self, a: AlertView, col: Column) -> Any:
        if col == Column.SEVERITY:
            return severity_rank(a.severity)
        if col == Column.KIND:
            return kind_label(a.kind).casefold()
        if col == Column.HOST:
            return (a.host_name or "").casefold()
        if col == Column.MESSAGE:
            return a.message.casefold()
        if col == Column.FIRST_SEEN:
            return float(a.first_seen_at)
        if col == Column.LAST_SEEN:
            return float(a.last_seen_at)
        if col == Column.CHANGED:
            at = changed_at(a)
            return float(at) if at is not None else 0.0
        if col == Column.COUNT:
            return int(a.count)
        return None

    def _tooltip(self, a: AlertView, col: Column) -> str | None:
        now = self._now()
        if col == Column.SEVERITY:
            return f"{severity_label(a.severity)} · {lifecycle(a, now)}"
        if col == Column.KIND:
            return KIND_HELP.get(a.kind, kind_label(a.kind))
        if col == Column.HOST:
            if a.host_name is None:
                return "Not about one host"
            return f"{a.host_name} — double-click to open the host"
        if col == Column.MESSAGE:
            return f"{a.message}\n\n{lifecycle(a, now)}"
        if col == Column.FIRST_SEEN:
            return f"Raised {absolute_time(a.first_seen_at)}"
        if col == Column.LAST_SEEN:
            return f"Last fired {absolute_time(a.last_seen_at)}"
        if col == Column.CHANGED:
            at = changed_at(a)
            return lifecycle(a, now) + (f" ({absolute_time(at)})" if at is not None else "")
        if col == Column.COUNT:
            times = "once" if a.count == 1 else f"{a.count} times"
            return f"Fired {times} between {absolute_time(a.first_seen_at)} and " + absolute_time(
                a.last_seen_at
            )
        return None


def changed_at(a: AlertView) -> float | None:
    """When the alert entered its current status (None while open)."""
    if a.status == RESOLVED:
        return a.resolved_at
    if a.status == ACKNOWLEDGED:
        return a.acknowledged_at
    return None


def lifecycle(a: AlertView, now: float | None = None) -> str:
    """``Open since 5 min ago`` / ``Acknowledged 2 h ago`` / ``Resolved …``."""
    if a.status == RESOLVED:
        return f"Resolved {relative_time(a.resolved_at, now)}" if a.resolved_at else "Resolved"
    if a.status == ACKNOWLEDGED:
        if a.acknowledged_at:
            return f"Acknowledged {relative_time(a.acknowledged_at, now)}, not resolved yet"
        return "Acknowledged, not resolved yet"
    return f"Open since {relative_time(a.first_seen_at, now)}"


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 9, 10] -> [(1, 3), (7, 7), (9, 10)]."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


class AlertsStatusProxy(QSortFilterProxyModel):
    """The rows of one tab: alerts in one status, newest last seen first by default."""

    def __init__(self, status: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.status = status
        self.setSortRole(SORT_ROLE)
        self.setDynamicSortFilter(True)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        titles = CHANGED_HEADERS.get(self.status)
        if (
            titles is not None
            and orientation == Qt.Orientation.Horizontal
            and section == int(Column.CHANGED)
            and role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole)
        ):
            return titles[0] if role == Qt.ItemDataRole.DisplayRole else titles[1]
        return super().headerData(section, orientation, role)

    def filterAcceptsRow(self, source_row: int, source_parent: ModelIndex) -> bool:
        model = self.sourceModel()
        if not isinstance(model, AlertsModel) or source_parent.isValid():
            return False
        return model.alert_at(source_row).status == self.status

    def alert_id(self, proxy_row: int) -> int | None:
        index = self.index(proxy_row, 0)
        value = index.data(ALERT_ID_ROLE) if index.isValid() else None
        return int(value) if value is not None else None

    def alert_at(self, proxy_row: int) -> AlertView | None:
        index = self.index(proxy_row, 0)
        value = index.data(ALERT_ROLE) if index.isValid() else None
        return value if isinstance(value, AlertView) else None
