"""Jobs tab: the host's job history; double-click opens the job window."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from server_core.views import JobView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, duration, human_bytes, relative_time
from ui_qt.host_tabs.common import (
    GREY,
    JOB_STATUS_COLOURS,
    RED,
    HostTab,
    SingleFlight,
    colour,
    error_label,
    set_error,
)
from ui_qt.navigator import Navigator

Index = QModelIndex | QPersistentModelIndex

# Bounds the memory of job ids known to belong to other hosts.
_FOREIGN_CAP = 10_000


def job_status(job: JobView) -> str:
    return "succeeded_with_warnings" if job.status == "succeeded" and job.warnings else job.status


def status_text(job: JobView) -> str:
    status = job_status(job)
    if status == "succeeded_with_warnings":
        return "succeeded (warnings)"
    if status == "running" and job.progress and job.progress.get("percent") is not None:
        return f"running {float(job.progress['percent']):.0f}%"
    if status == "queued" and job.started_at is None:
        return "queued"
    return status


def job_duration(job: JobView, now: float | None = None) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at if job.finished_at is not None else (now or time.time())
    return end - job.started_at


def result_text(job: JobView) -> str:
    """One line saying how it went: the error, a backup summary, or progress."""
    if job.status in ("failed", "cancelled"):
        text = job.error or (f"exit code {job.exit_code}" if job.exit_code is not None else "")
        return text.splitlines()[0] if text else ""
    if job.status == "running" and job.progress:
        p = job.progress
        parts = []
        if p.get("bytes_total"):
            parts.append(f"{human_bytes(p.get('bytes_done'))} of {human_bytes(p['bytes_total'])}")
        if p.get("files_total"):
            parts.append(f"{p.get('files_done', 0)} of {p['files_total']} files")
        if p.get("eta_seconds") is not None:
            parts.append(f"about {duration(p['eta_seconds'])} left")
        return ", ".join(parts)
    s = job.summary or {}
    if job.kind == "backup" and s:
        parts = []
        if s.get("snapshot_id"):
            parts.append(f"snapshot {str(s['snapshot_id'])[:8]}")
        files = [
            f"{s[k]} {label}"
            for k, label in (("files_new", "new"), ("files_changed", "changed"))
            if s.get(k) is not None
        ]
        if files:
            parts.append(" / ".join(files) + " files")
        if s.get("data_added") is not None:
            parts.append(f"{human_bytes(int(s['data_added']))} added")
        text = ", ".join(parts)
        return f"{text} — with warnings" if job.warnings else text
    if job.warnings:
        return "finished with warnings"
    if job.kind == "init" and job.status == "succeeded":
        return "repository ready"
    return ""


class JobModel(QAbstractTableModel):
    COLUMNS = ("Kind", "Status", "Actor", "Started", "Duration", "Result")
    KIND, STATUS, ACTOR, STARTED, DURATION, RESULT = range(6)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[JobView] = []
        self.group_names: dict[int, str] = {}

    def set_rows(self, rows: list[JobView]) -> None:
        """Update in place when the same jobs are listed (the common case:
        a running job's progress), reset only when jobs came or went."""
        if [r.id for r in rows] == [r.id for r in self.rows]:
            changed = [i for i, (a, b) in enumerate(zip(self.rows, rows, strict=True)) if a != b]
            self.rows = rows
            if changed:
                last = self.columnCount() - 1
                self.dataChanged.emit(self.index(min(changed), 0), self.index(max(changed), last))
            return
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def tick(self) -> None:
        """Relative start times and running durations move on."""
        if self.rows:
            self.dataChanged.emit(
                self.index(0, self.STARTED),
                self.index(len(self.rows) - 1, self.DURATION),
                [Qt.ItemDataRole.DisplayRole],
            )

    def job_at(self, row: int) -> JobView:
        return self.rows[row]

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        job = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == self.KIND:
                group = self.group_names.get(job.source_group_id or -1)
                return f"{job.kind} · {group}" if group else job.kind
            if col == self.STATUS:
                return status_text(job)
            if col == self.ACTOR:
                return job.actor
            if col == self.STARTED:
                if job.started_at is None:
                    return f"queued {relative_time(job.created_at)}"
                return relative_time(job.started_at)
            if col == self.DURATION:
                return duration(job_duration(job))
            if col == self.RESULT:
                return result_text(job)
        elif role == Qt.ItemDataRole.ForegroundRole:
            if col == self.STATUS:
                return colour(JOB_STATUS_COLOURS.get(job_status(job), GREY))
            if col == self.RESULT and job.status == "failed":
                return colour(RED)
        elif role == Qt.ItemDataRole.ToolTipRole:
            if col == self.STARTED:
                return (
                    f"queued {absolute_time(job.created_at)}\n"
                    f"started {absolute_time(job.started_at)}\n"
                    f"finished {absolute_time(job.finished_at)}"
                )
            if col == self.RESULT:
                return job.error or result_text(job) or None
            if col == self.KIND:
                return f"job {job.id}"
        elif role == Qt.ItemDataRole.UserRole:
            return job.id
        return None


class JobTable(QTableView):
    """Enter opens the selected job, like a double-click."""

    def __init__(self, open_row: Any) -> None:
        super().__init__()
        self._open_row = open_row

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self._open_row(self.currentIndex())
            return
        super().keyPressEvent(event)


class JobsTab(HostTab):
    def __init__(self, ctx: UiContext, navigator: Navigator, host_id: int) -> None:
        super().__init__(ctx, navigator, host_id)
        self.model = JobModel()
        self.table = JobTable(self._open_index)
        self.table.setObjectName("jobsTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        for col in range(JobModel.RESULT):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(JobModel.RESULT, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(self._open_index)

        self.hint = QLabel("Double-click a job (or press Enter) to open its log.")
        self.hint.setEnabled(False)
        self.error = error_label()
        self.empty = QLabel(
            "No jobs yet.\n\nBackups and other jobs started here, by a schedule or by the "
            "agent itself appear in this list."
        )
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        top = QWidget()
        top_layout = QHBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.hint, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(top)
        layout.addWidget(self.error)
        layout.addWidget(self.stack, 1)

        # Job ids seen in jobs_changed that turned out to be other hosts' jobs.
        self._foreign: set[str] = set()
        self._asked: set[str] = set()
        self._asking: set[str] = set()
        self.loader: SingleFlight[list[JobView]] = SingleFlight(
            self,
            ctx.runner,
            "loading jobs",
            self._fetch,
            self._loaded,
            lambda exc: self.fetch_failed("the jobs", exc, self.error),
        )
        ctx.bridge.jobs_changed.connect(self._on_jobs_changed)

    def reload(self) -> None:
        self.loader.request()

    def tick(self) -> None:
        self.model.tick()

    def host_gone(self) -> None:
        self.loader.stop()

    def set_group_names(self, names: dict[int, str]) -> None:
        if names != self.model.group_names:
            self.model.group_names = dict(names)
            if self.model.rows:
                self.model.dataChanged.emit(
                    self.model.index(0, JobModel.KIND),
                    self.model.index(len(self.model.rows) - 1, JobModel.KIND),
                )

    def _on_jobs_changed(self, job_ids: set[str]) -> None:
        # The signal carries job ids of the whole fleet. Ours are either in
        # the list already or new; ids a fetch showed to be another host's
        # are skipped so a busy fleet does not make this tab re-query.
        relevant = job_ids - self._foreign
        if relevant:
            self._asked |= relevant
            self.loader.request()

    async def _fetch(self) -> list[JobView]:
        self._asking, self._asked = self._asked, set()
        return await self.ctx.jobs.list_jobs(self.host_id)

    def _loaded(self, rows: list[JobView]) -> None:
        set_error(self.error, None)
        ours = {r.id for r in rows}
        # Asked about before this fetch began, yet not in its answer: not ours.
        # (Only the newest jobs are listed, so an old job of ours may land
        # here too; it still refreshes with the next change of a listed one.)
        if len(self._foreign) > _FOREIGN_CAP:
            self._foreign.clear()
        self._foreign |= self._asking - ours
        self._asking = set()
        selected = self.selected_job_id()
        self.model.set_rows(rows)
        self.stack.setCurrentWidget(self.table if rows else self.empty)
        if selected is not None:
            self._select(selected)

    def selected_job_id(self) -> str | None:
        index = self.table.currentIndex()
        if not index.isValid():
            return None
        return self.model.job_at(index.row()).id

    def _select(self, job_id: str) -> None:
        for row, job in enumerate(self.model.rows):
            if job.id == job_id:
                self.table.selectRow(row)
                return

    def _open_index(self, index: QModelIndex) -> None:
        if index.isValid():
            self.navigator.open_job(self.model.job_at(index.row()).id)
