"""The job window: one job's live log, progress, final summary, cancel and save.

Everything it shows comes from ``JobService``: ``get_job`` for the header,
progress and summary, ``log`` (paged by seq) for the lines. The event
bridge says *that* something changed; the window then re-reads, with at most
one read of each kind in flight (a change announced meanwhile triggers one
more read when it finishes), so a chatty job never piles up requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFont,
    QKeySequence,
    QPainter,
    QPaintEvent,
    QPalette,
    QShortcut,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import JobView, LogLineView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, duration, human_bytes
from ui_qt.log_model import LogModel, LogView, is_dark
from ui_qt.tasks import AsyncRunner

# Lines per log request (initial load, live tail and Save log alike).
PAGE = 5000
ACTIVE = frozenset({"queued", "running"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
SAVE_DIR_KEY = "job_window/save_dir"


# -- presentation helpers ------------------------------------------------------


def status_text(job: JobView) -> str:
    if job.status == "succeeded" and job.warnings:
        return "succeeded with warnings"
    return job.status


def status_colour(status: str, warnings: bool, palette: QPalette) -> QColor:
    dark = is_dark(palette)
    if status == "succeeded" and warnings:
        return QColor("#ffb300" if dark else "#b26a00")
    colours = {
        "succeeded": "#66bb6a" if dark else "#2e7d32",
        "failed": "#ef5350" if dark else "#c62828",
        "running": "#64b5f6" if dark else "#1565c0",
    }
    if status in colours:
        return QColor(colours[status])
    return palette.color(QPalette.ColorRole.PlaceholderText)


def error_colour(palette: QPalette) -> QColor:
    return QColor("#ef5350" if is_dark(palette) else "#c62828")


def progress_line(progress: dict[str, Any]) -> str:
    """'files 120/400 · 12.3 MiB/40.0 MiB · ETA 1 min 05 s' (parts that are known)."""
    parts: list[str] = []
    files_done = int(progress.get("files_done") or 0)
    files_total = int(progress.get("files_total") or 0)
    if files_total:
        parts.append(f"files {files_done:,}/{files_total:,}")
    elif files_done:
        parts.append(f"files {files_done:,}")
    bytes_done = int(progress.get("bytes_done") or 0)
    bytes_total = int(progress.get("bytes_total") or 0)
    if bytes_total:
        parts.append(f"{human_bytes(bytes_done)}/{human_bytes(bytes_total)}")
    elif bytes_done:
        parts.append(human_bytes(bytes_done))
    eta = progress.get("eta_seconds")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " · ".join(parts)


def job_duration(job: JobView, now: float | None = None) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at if job.finished_at is not None else (now or time.time())
    return max(0.0, end - job.started_at)


def render_txt(line: LogLineView) -> str:
    """One line of a .txt log: the same format as the API's log.txt."""
    stamp = dt.datetime.fromtimestamp(line.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} [{line.stream}] {line.text}\n"


def render_ndjson(line: LogLineView) -> str:
    """One line of a .ndjson log: the same format as the API's log.ndjson."""
    record = {"seq": line.seq, "ts": line.ts, "stream": line.stream, "text": line.text}
    return json.dumps(record, ensure_ascii=False) + "\n"


def _write_page(fh: IO[str], page: Sequence[LogLineView], fmt: str) -> None:
    render = render_ndjson if fmt == "ndjson" else render_txt
    fh.write("".join(render(line) for line in page))


class _Serial:
    """Runs one coroutine at a time. A request while one runs schedules exactly
    one more run after it, so the last change is always picked up."""

    def __init__(
        self,
        runner: AsyncRunner,
        factory: Callable[[], Coroutine[Any, Any, None]],
        what: str,
        on_error: Callable[[Exception], None],
    ) -> None:
        self._runner = runner
        self._factory = factory
        self._what = what
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._stopped = False

    @property
    def busy(self) -> bool:
        return self._task is not None or self._again

    def request(self) -> None:
        if self._stopped:
            return
        if self._task is not None:
            self._again = True
            return
        self._start()

    def _start(self) -> None:
        self._again = False
        self._task = self._runner.run(
            self._factory(), what=self._what, on_done=self._done, on_error=self._failed
        )

    def _done(self, _result: None) -> None:
        self._task = None
        if self._again and not self._stopped:
            self._start()

    def _failed(self, exc: Exception) -> None:
        self._task = None
        if not self._stopped:
            self._on_error(exc)
        self._done(None)

    def stop(self) -> None:
        self._stopped = True
        self._again = False
        if self._task is not None:
            self._task.cancel()
            self._task = None


class ElidedLabel(QFrame):
    """One line of text, elided in the middle to fit (for file paths)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def full_text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.setToolTip(text)
            self.update()

    def sizeHint(self) -> QSize:
        fm = self.fontMetrics()
        return QSize(fm.horizontalAdvance(self._text[:60]), fm.height())

    def minimumSizeHint(self) -> QSize:
        return QSize(0, self.fontMetrics().height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            rect = self.contentsRect()
            elided = self.fontMetrics().elidedText(
                self._text, Qt.TextElideMode.ElideMiddle, rect.width()
            )
            painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            painter.drawText(
                rect, int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft), elided
            )
        finally:
            painter.end()


def _caption(text: str) -> QLabel:
    label = QLabel(text)
    label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    return label


def _value() -> QLabel:
    label = QLabel("—")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


# -- the window ------------------------------------------------------------------


class JobWindow(QWidget):
    """A top-level window for one job. Deletes itself when closed."""

    job_updated = Signal(object)  # JobView, after it is shown
    log_grew = Signal(int)  # lines now in the log view
    save_finished = Signal(str, int)  # path, lines written
    save_failed = Signal(str)  # error message

    def __init__(self, ctx: UiContext, job_id: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowFlag(Qt.WindowType.Window, True)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
        self.ctx = ctx
        self.job_id = job_id
        self.job: JobView | None = None
        self.host_name: str | None = None
        self._closed = False
        self._cancelling = False
        self._saving: asyncio.Task[int] | None = None
        self._tail_checked = False
        self._resynced = False
        self.setWindowTitle(f"job {job_id[:8]}")
        self.resize(960, 680)

        self.log_model = LogModel(self)
        self._build()

        self._job_loader = _Serial(ctx.runner, self._load_job, "loading the job", self._problem)
        self._log_loader = _Serial(ctx.runner, self._load_log, "loading the job log", self._problem)
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)

        ctx.bridge.jobs_changed.connect(self._on_jobs_changed)
        ctx.bridge.job_logs_appended.connect(self._on_logs_appended)
        self.reload()

    # -- layout ------------------------------------------------------------------

    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setSpacing(10)

        top = QHBoxLayout()
        self.heading = QLabel("Loading job…")
        font = QFont(self.heading.font())
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.heading.setFont(font)
        self.status_label = QLabel("…")
        self.status_label.setObjectName("jobStatus")
        self.status_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        top.addWidget(self.heading, 1)
        top.addWidget(self.status_label, 0, Qt.AlignmentFlag.AlignVCenter)
        root.addLayout(top)

        facts = QGridLayout()
        facts.setHorizontalSpacing(8)
        self.actor_label = _value()
        self.started_label = _value()
        self.duration_label = _value()
        self.job_id_label = _value()
        self.job_id_label.setText(self.job_id[:8])
        self.job_id_label.setToolTip(f"job id {self.job_id}")
        for column, (caption, value) in enumerate(
            (
                ("Actor", self.actor_label),
                ("Started", self.started_label),
                ("Duration", self.duration_label),
                ("Job", self.job_id_label),
            )
        ):
            facts.addWidget(_caption(caption), 0, column * 2)
            facts.addWidget(value, 0, column * 2 + 1)
            facts.setColumnStretch(column * 2 + 1, 1)
        root.addLayout(facts)

        # Progress (only for jobs that report it, while they run).
        self.progress_panel = QWidget()
        progress = QVBoxLayout(self.progress_panel)
        progress.setContentsMargins(0, 0, 0, 0)
        progress.setSpacing(4)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(True)
        line = QHBoxLayout()
        line.setSpacing(0)
        self.progress_label = QLabel()
        self.current_file_label = ElidedLabel()
        line.addWidget(self.progress_label)
        line.addWidget(self.current_file_label, 1)
        progress.addWidget(self.progress_bar)
        progress.addLayout(line)
        self.progress_panel.hide()
        root.addWidget(self.progress_panel)

        # Final summary (once the job is over).
        self.summary_panel = QFrame()
        self.summary_panel.setObjectName("jobSummary")
        self.summary_panel.setFrameShape(QFrame.Shape.StyledPanel)
        grid = QGridLayout(self.summary_panel)
        grid.setHorizontalSpacing(12)
        self.summary_fields: dict[str, QLabel] = {}
        self._summary_captions: dict[str, QLabel] = {}
        # Two columns of facts, the error (if any) across the bottom.
        places = {
            "result": (0, 0, "Result"),
            "duration": (1, 0, "Duration"),
            "snapshot": (2, 0, "Snapshot"),
            "log": (3, 0, "Log"),
            "files": (0, 2, "Files"),
            "processed": (1, 2, "Processed"),
            "data_added": (2, 2, "Data added"),
            "exit_code": (3, 2, "Exit code"),
            # Restore and diff jobs.
            "target": (4, 0, "Restored to"),
            "restored": (4, 2, "Restored"),
            "changes": (5, 0, "Changes"),
            "error": (6, 0, "Error"),
        }
        for key, (row, column, caption) in places.items():
            label = _caption(caption)
            value = _value()
            grid.addWidget(label, row, column, Qt.AlignmentFlag.AlignTop)
            if key == "error":
                value.setWordWrap(True)
                grid.addWidget(value, row, column + 1, 1, 3)
            else:
                grid.addWidget(value, row, column + 1)
            self._summary_captions[key] = label
            self.summary_fields[key] = value
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 2)
        self.summary_panel.hide()
        root.addWidget(self.summary_panel)

        # The log.
        log_head = QHBoxLayout()
        title = QLabel("Log")
        bold = QFont(title.font())
        bold.setBold(True)
        title.setFont(bold)
        self.log_count_label = _caption("")
        self.lost_label = QLabel()
        self.lost_label.hide()
        self.follow_box = QCheckBox("Follow")
        self.follow_box.setToolTip(
            "Keep the newest line in view. Scrolling up pauses this; "
            "scrolling back to the bottom resumes it."
        )
        self.follow_box.setChecked(True)
        log_head.addWidget(title)
        log_head.addWidget(self.log_count_label)
        log_head.addWidget(self.lost_label)
        log_head.addStretch(1)
        log_head.addWidget(self.follow_box)
        root.addLayout(log_head)
        self.log_view = LogView(self.log_model)
        self.log_view.following_changed.connect(self.follow_box.setChecked)
        self.follow_box.toggled.connect(self.log_view.set_following)
        root.addWidget(self.log_view, 1)

        buttons = QHBoxLayout()
        self.notice_label = QLabel()
        self.notice_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel job…")
        self.cancel_button.setToolTip("Ask the agent to stop this job (restic is interrupted)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_job)
        self.save_button = QPushButton("Save log…")
        self.save_button.setToolTip("Save the whole log as plain text (.txt) or NDJSON (.ndjson)")
        self.save_button.clicked.connect(self.save_log)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons.addWidget(self.notice_label, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.close_button)
        root.addLayout(buttons)

        QShortcut(QKeySequence(QKeySequence.StandardKey.Save), self, self.save_log)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Close), self, self.close)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.close)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Refresh), self, self.reload)

    # -- loading -------------------------------------------------------------------

    def reload(self) -> None:
        self._job_loader.request()
        self._log_loader.request()

    def _on_jobs_changed(self, job_ids: set[str]) -> None:
        if self.job_id in job_ids:
            self._job_loader.request()

    def _on_logs_appended(self, last_seqs: dict[str, int]) -> None:
        last = last_seqs.get(self.job_id)
        if last is not None and last > self.log_model.last_seq:
            self._log_loader.request()

    async def _load_job(self) -> None:
        job = await self.ctx.jobs.get_job(self.job_id)
        if self._closed:
            return
        if self.host_name is None:
            try:
                self.host_name = (await self.ctx.hosts.get_host(job.host_id)).name
            except Exception:  # the host may have been deleted since
                self.host_name = f"host {job.host_id}"
            if self._closed:
                return
        self._apply(job)
        self._check_gap()

    async def _load_log(self) -> None:
        while not self._closed:
            page = await self.ctx.jobs.log(
                self.job_id, after_seq=self.log_model.last_seq, limit=PAGE
            )
            if self._closed:
                return
            if page:
                self.log_model.append_lines(page)
                self._show_log_count()
                self.log_grew.emit(self.log_model.rowCount())
            if len(page) < PAGE:
                break
        self._check_gap()

    def _check_gap(self) -> None:
        """A finished job whose stored line count exceeds what we show missed
        lines (stored out of seq order): read the tail again, then, if that
        is not it, the whole log once."""
        job = self.job
        if job is None or job.status not in TERMINAL or self._log_loader.busy:
            return
        if self.log_model.rowCount() >= job.log_lines:
            return
        if not self._tail_checked:
            self._tail_checked = True
            self._log_loader.request()
        elif not self._resynced:
            self._resynced = True
            self.log_model.clear()
            self._log_loader.request()

    def _problem(self, exc: Exception) -> None:
        if self._closed:
            return
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self.notice_label.setText(message)
        if self.job is None:
            self.heading.setText("Job unavailable")
            self.status_label.setText("unknown")

    # -- showing -------------------------------------------------------------------

    def _apply(self, job: JobView) -> None:
        self.job = job
        host = self.host_name or f"host {job.host_id}"
        state = status_text(job)
        self.setWindowTitle(f"{job.kind} — {host} — {state}")
        self.heading.setText(f"{job.kind.capitalize()} on {host}")
        self._paint_status(job)
        self.actor_label.setText(job.actor)
        if job.started_at is not None:
            self.started_label.setText(absolute_time(job.started_at))
            self.started_label.setToolTip(
                dt.datetime.fromtimestamp(job.started_at).strftime("%Y-%m-%d %H:%M:%S")
            )
        else:
            self.started_label.setText(f"not yet (queued {absolute_time(job.created_at)})")
        self._tick()

        active = job.status in ACTIVE
        if job.status == "running":
            if not self._clock.isActive():
                self._clock.start()
        else:
            self._clock.stop()

        if job.progress is not None and active:
            self._show_progress(job.progress)
            self.progress_panel.show()
        else:
            self.progress_panel.hide()

        if job.status in TERMINAL:
            self._show_summary(job)
            self.summary_panel.show()
            self._cancelling = False
        else:
            self.summary_panel.hide()
        self.cancel_button.setEnabled(active and not self._cancelling)
        self.cancel_button.setText("Cancelling…" if self._cancelling else "Cancel job…")
        self._show_log_count()
        self.job_updated.emit(job)

    def _paint_status(self, job: JobView) -> None:
        colour = status_colour(job.status, job.warnings, self.palette())
        text_colour = "#111111" if is_dark(self.palette()) else "#ffffff"
        self.status_label.setText(status_text(job))
        self.status_label.setStyleSheet(
            f"QLabel#jobStatus {{ background: {colour.name()}; color: {text_colour};"
            " border-radius: 10px; padding: 3px 12px; font-weight: 600; }"
        )

    def _tick(self) -> None:
        job = self.job
        if job is None:
            return
        seconds = job_duration(job)
        if seconds is None:
            self.duration_label.setText("—")
        else:
            self.duration_label.setText(duration(seconds))

    def _show_progress(self, progress: dict[str, Any]) -> None:
        percent = max(0.0, min(100.0, float(progress.get("percent") or 0.0)))
        self.progress_bar.setValue(round(percent * 10))
        self.progress_bar.setFormat(f"{percent:.1f}%")
        text = progress_line(progress)
        current = progress.get("current_file")
        if current:
            self.progress_label.setText(f"{text} · current: " if text else "current: ")
            self.current_file_label.setText(str(current))
        else:
            self.progress_label.setText(text)
            self.current_file_label.setText("")
        self.progress_panel.setToolTip(self.progress_text())

    def progress_text(self) -> str:
        """The progress line as one string (what the two labels show together)."""
        return self.progress_label.text() + self.current_file_label.full_text()

    def _show_summary(self, job: JobView) -> None:
        palette = self.palette()
        fields = self.summary_fields
        summary = job.summary or {}

        def put(key: str, text: str | None, colour: QColor | None = None) -> None:
            label = fields[key]
            shown = text is not None and text != ""
            label.setVisible(shown)
            self._summary_captions[key].setVisible(shown)
            label.setText(text or "")
            label.setStyleSheet(f"color: {colour.name()};" if colour is not None else "")

        put("result", status_text(job), status_colour(job.status, job.warnings, palette))
        seconds = job_duration(job)
        put("duration", duration(seconds) if seconds is not None else None)
        if {"files_new", "files_changed", "files_unmodified"} & summary.keys():
            put(
                "files",
                f"{int(summary.get('files_new') or 0):,} new · "
                f"{int(summary.get('files_changed') or 0):,} changed · "
                f"{int(summary.get('files_unmodified') or 0):,} unmodified",
            )
        else:
            put("files", None)
        if "total_files_processed" in summary or "total_bytes_processed" in summary:
            put(
                "processed",
                f"{int(summary.get('total_files_processed') or 0):,} files · "
                f"{human_bytes(int(summary.get('total_bytes_processed') or 0))}",
            )
        else:
            put("processed", None)
        added = summary.get("data_added")
        put("data_added", human_bytes(int(added)) if added is not None else None)
        snapshot = summary.get("snapshot_id")
        put("snapshot", str(snapshot)[:8] if snapshot else None)
        fields["snapshot"].setToolTip(f"snapshot {snapshot}" if snapshot else "")
        put("exit_code", str(job.exit_code) if job.exit_code not in (None, 0) else None)
        lost = (job.log_lines_reported or 0) - job.log_lines
        put(
            "log",
            f"{job.log_lines:,} lines" + (f" ({lost:,} lost in transit)" if lost > 0 else ""),
        )
        if "files_restored" in summary or "bytes_restored" in summary:
            put(
                "restored",
                f"{int(summary.get('files_restored') or 0):,} files · "
                f"{human_bytes(int(summary.get('bytes_restored') or 0))}",
            )
        else:
            put("restored", None)
        target = summary.get("target")
        put("target", str(target) if target else None)
        if {"added", "removed", "modified"} & summary.keys():
            put(
                "changes",
                f"{int(summary.get('added') or 0):,} added · "
                f"{int(summary.get('removed') or 0):,} removed · "
                f"{int(summary.get('modified') or 0):,} modified",
            )
        else:
            put("changes", None)
        error_tint = error_colour(palette) if job.status == "failed" else None
        put("error", job.error, error_tint)

    def _show_log_count(self) -> None:
        rows = self.log_model.rowCount()
        self.log_count_label.setText(f"{rows:,} line{'s' if rows != 1 else ''}")
        job = self.job
        lost = (job.log_lines_reported or 0) - job.log_lines if job is not None else 0
        if lost > 0:
            self.lost_label.setText(f"⚠ {lost:,} lines lost in transit")
            self.lost_label.setStyleSheet(
                f"color: {status_colour('succeeded', True, self.palette()).name()};"
            )
            self.lost_label.show()
        else:
            self.lost_label.hide()

    # -- cancel --------------------------------------------------------------------

    def cancel_job(self) -> None:
        job = self.job
        if job is None or job.status not in ACTIVE or self._cancelling:
            return
        host = self.host_name or f"host {job.host_id}"
        answer = QMessageBox.question(
            self,
            "Cancel job",
            f"Stop this {job.kind} on {host}?\n\n"
            "The agent interrupts restic; a backup cancelled now makes no snapshot.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self._cancelling = True
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.notice_label.setText("Cancel requested; waiting for the agent…")
        self.ctx.runner.run(
            self.ctx.jobs.cancel(self.job_id, OPERATOR),
            what="cancelling the job",
            on_done=lambda _: self._job_loader.request(),
            on_error=self._cancel_failed,
        )

    def _cancel_failed(self, exc: Exception) -> None:
        self._cancelling = False
        if self._closed:
            return
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self.notice_label.setText(f"Could not cancel: {message}")
        self._job_loader.request()

    # -- save ----------------------------------------------------------------------

    def _suggested_name(self) -> str:
        job = self.job
        host = (self.host_name or "host").replace(os.sep, "_")
        kind = job.kind if job is not None else "job"
        return f"{host}-{kind}-{self.job_id[:8]}.txt"

    def save_log(self) -> None:
        if self._saving is not None:
            return
        directory = str(self.ctx.settings.value(SAVE_DIR_KEY, "") or "") or str(Path.home())
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Save job log",
            str(Path(directory) / self._suggested_name()),
            "Text (*.txt);;NDJSON (*.ndjson)",
        )
        if not path:
            return
        lower = path.lower()
        if lower.endswith(".ndjson"):
            fmt = "ndjson"
        elif lower.endswith(".txt"):
            fmt = "txt"
        else:
            fmt = "ndjson" if "ndjson" in chosen.lower() else "txt"
            path += f".{fmt}"
        self.ctx.settings.setValue(SAVE_DIR_KEY, str(Path(path).parent))
        self.save_button.setEnabled(False)
        self.notice_label.setText(f"Saving the log to {path}…")
        self._saving = self.ctx.runner.run(
            self.write_log(Path(path), fmt),
            what="saving the job log",
            on_done=lambda n: self._saved(path, n),
            on_error=self._save_error,
        )

    async def write_log(self, target: Path, fmt: str) -> int:
        """Write the whole stored log (paged from the service, not the lines on
        screen) to ``target`` as txt or ndjson; file work runs off the loop.
        Written to a ``.part`` file first, renamed when complete."""
        loop = asyncio.get_running_loop()
        part = target.with_name(target.name + ".part")
        fh: IO[str] = await loop.run_in_executor(
            None,
            lambda: open(part, "w", encoding="utf-8", newline="\n"),  # noqa: SIM115
        )
        written = 0
        try:
            after = 0
            while True:
                page = await self.ctx.jobs.log(self.job_id, after_seq=after, limit=PAGE)
                if not page:
                    break
                await loop.run_in_executor(None, _write_page, fh, page, fmt)
                written += len(page)
                after = page[-1].seq
                if not self._closed:
                    self.notice_label.setText(f"Saving the log… {written:,} lines")
            await loop.run_in_executor(None, fh.close)
            await loop.run_in_executor(None, os.replace, part, target)
        except BaseException:
            fh.close()
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return written

    def _saved(self, path: str, lines: int) -> None:
        self._saving = None
        if not self._closed:
            self.save_button.setEnabled(True)
            self.notice_label.setText(f"Saved {lines:,} lines to {path}")
            self.save_finished.emit(path, lines)

    def _save_error(self, exc: Exception) -> None:
        self._saving = None
        if not self._closed:
            self.save_button.setEnabled(True)
            message = str(exc) or type(exc).__name__
            self.notice_label.setText(f"Could not save the log: {message}")
            self.save_failed.emit(message)

    # -- Qt ------------------------------------------------------------------------

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and self.job is not None:
            self._apply(self.job)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._closed:
            self._closed = True
            self._clock.stop()
            self._job_loader.stop()
            self._log_loader.stop()
            with contextlib.suppress(RuntimeError, TypeError):
                self.ctx.bridge.jobs_changed.disconnect(self._on_jobs_changed)
            with contextlib.suppress(RuntimeError, TypeError):
                self.ctx.bridge.job_logs_appended.disconnect(self._on_logs_appended)
        super().closeEvent(event)
