"""Repo tab: the repository's health and upkeep.

- a stale-lock banner (``repo_status == "locked"``) with Unlock;
- statistics (size on disk and uncompressed, snapshots, files, last check
  and prune) and the size trend over 30 / 90 / 365 days;
- maintenance cadences (forget / prune / check, each a cron line that can be
  switched off, check's read-data subset), with last / next run, the "due"
  state and Run now;
- the host's bandwidth caps.

Forms are never overwritten while the operator is editing them: a reload
only refreshes what they show when nothing is changed.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from server_core import cron
from server_core.errors import InvalidInput
from server_core.services.context import OPERATOR
from server_core.views import HostView, MaintenanceView, RepoStatsView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, human_bytes, relative_time
from ui_qt.host_tabs.banners import Banner
from ui_qt.host_tabs.common import (
    AMBER,
    GREEN,
    GREY,
    RED,
    HostTab,
    SingleFlight,
    error_label,
    error_text,
    guarded,
    set_error,
)
from ui_qt.host_tabs.forms import FieldErrors
from ui_qt.navigator import Navigator
from ui_qt.widgets.size_chart import SizeChart

HISTORY_DAYS = 365

KINDS: tuple[tuple[str, str, str, str], ...] = (
    (
        "forget",
        "Forget",
        "30 3 * * *",
        "Applies each source group's retention to that group's snapshots. Uses the admin "
        "credential when one is set (pushed for this job only).",
    ),
    (
        "prune",
        "Prune",
        "30 4 * * 0",
        "Removes data that no snapshot needs any more, freeing space. Uses the admin "
        "credential when one is set.",
    ),
    (
        "check",
        "Check",
        "30 5 * * 6",
        "Verifies the repository's structure and reads the given share of its data.",
    ),
)
CHECK_COLOURS = {"succeeded": GREEN, "failed": RED}


def cron_state(text: str) -> tuple[str | None, str]:
    """(normalised expression or None, its description or what is wrong)."""
    try:
        expr = cron.validate(text)
    except InvalidInput as exc:
        return None, exc.message
    return expr, cron.describe(expr)


def maintenance_body(view: MaintenanceView) -> dict[str, Any]:
    return {
        "forget_cron": view.forget_cron,
        "prune_cron": view.prune_cron,
        "check_cron": view.check_cron,
        "check_subset_percent": view.check_subset_percent,
        "enabled": view.enabled,
    }


@dataclass
class KindRow:
    kind: str
    on: QCheckBox
    cron: QLineEdit
    description: QLabel
    error: QLabel
    last: QLabel
    next: QLabel
    run: QPushButton


class MaintenanceBox(QGroupBox):
    def __init__(self, tab: RepoTab) -> None:
        super().__init__("Maintenance")
        self.setObjectName("maintenanceBox")
        self.tab = tab
        self.view: MaintenanceView | None = None
        self.loaded: dict[str, Any] | None = None
        self.saving = False
        self.running: set[str] = set()
        # Kinds whose cron the service refused: its message stays until that row is edited.
        self.refused: set[str] = set()
        self.general_error = error_label()
        self.general_error.setObjectName("maintenanceError")
        self.errors = FieldErrors(self.general_error)

        self.enabled = QCheckBox("Run maintenance on these schedules")
        self.enabled.setObjectName("maintenanceEnabled")
        self.enabled.setToolTip(
            "Off: nothing runs by itself; Run now still works. Unlock is never automatic."
        )
        intro = QLabel(
            "Forget and prune run from this app while it is open and the host is online; "
            "a window missed meanwhile shows as <b>due</b> and runs at the next chance. "
            "Check may run on the agent by itself."
        )
        intro.setWordWrap(True)
        intro.setEnabled(False)

        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(2)
        for col, title in enumerate(("", "Schedule (cron)", "", "Last run", "Next run", "")):
            label = QLabel(title)
            label.setEnabled(False)
            grid.addWidget(label, 0, col)
        self.rows: dict[str, KindRow] = {}
        for n, (kind, title, default, tip) in enumerate(KINDS):
            r = 1 + n * 2
            on = QCheckBox(title)
            on.setObjectName(f"{kind}On")
            on.setToolTip(tip)
            edit = QLineEdit(default)
            edit.setObjectName(f"{kind}Cron")
            edit.setFont(mono)
            edit.setMinimumWidth(150)
            edit.setMaximumWidth(220)
            edit.setToolTip(tip)
            description = QLabel()
            description.setObjectName(f"{kind}Description")
            description.setMinimumWidth(200)
            error = error_label()
            error.setObjectName(f"error-{kind}_cron")
            last = QLabel()
            last.setObjectName(f"{kind}Last")
            last.setTextFormat(Qt.TextFormat.RichText)
            next_ = QLabel()
            next_.setObjectName(f"{kind}Next")
            next_.setTextFormat(Qt.TextFormat.RichText)
            run = QPushButton(f"Run {kind} now")
            run.setObjectName(f"run-{kind}")
            run.setToolTip(f"Start {kind} on the agent now (opens the job)")
            run.clicked.connect(lambda _c=False, k=kind: self.run_now(k))
            row = KindRow(kind, on, edit, description, error, last, next_, run)
            self.rows[kind] = row
            self.errors.labels[f"{kind}_cron"] = error
            self.errors.widgets[f"{kind}_cron"] = edit
            grid.addWidget(on, r, 0)
            grid.addWidget(edit, r, 1)
            grid.addWidget(description, r, 2)
            grid.addWidget(last, r, 3)
            grid.addWidget(next_, r, 4)
            grid.addWidget(run, r, 5)
            grid.addWidget(error, r + 1, 1, 1, 4)
            on.toggled.connect(lambda _v, k=kind: self._typed(k))
            edit.textChanged.connect(lambda _v, k=kind: self._typed(k))
        grid.setColumnStretch(2, 1)

        self.subset = QSpinBox()
        self.subset.setObjectName("checkSubset")
        self.subset.setRange(1, 100)
        self.subset.setSuffix(" %")
        self.subset.setToolTip(
            "restic check --read-data-subset: the share of the pack files read (and "
            "verified) on each check; successive checks read different parts"
        )
        self.subset.valueChanged.connect(self._edited)
        self.enabled.toggled.connect(self._edited)
        subset_row = QHBoxLayout()
        subset_row.addWidget(QLabel("Check reads"))
        subset_row.addWidget(self.errors.wrap("check_subset_percent", self.subset))
        subset_row.addWidget(QLabel("of the data each time"))
        subset_row.addStretch(1)

        self.save_button = QPushButton("Save maintenance")
        self.save_button.setObjectName("saveMaintenance")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save)
        self.status = QLabel()
        self.status.setObjectName("maintenanceStatus")
        self.status.setWordWrap(True)
        footer = QHBoxLayout()
        footer.addWidget(self.status, 1)
        footer.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.errors.wrap("enabled", self.enabled))
        layout.addLayout(grid)
        layout.addLayout(subset_row)
        layout.addWidget(self.general_error)
        layout.addLayout(footer)
        self._edited()

    # -- form ----------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for kind, row in self.rows.items():
            body[f"{kind}_cron"] = row.cron.text().strip() if row.on.isChecked() else None
        body["check_subset_percent"] = self.subset.value()
        body["enabled"] = self.enabled.isChecked()
        return body

    def dirty(self) -> bool:
        return self.loaded is not None and _normalised(self.body()) != _normalised(self.loaded)

    def show_view(self, view: MaintenanceView, now: float) -> None:
        self.view = view
        fresh = maintenance_body(view)
        if not self.dirty() and not self.saving:
            for kind, row in self.rows.items():
                expr = fresh[f"{kind}_cron"]
                row.on.setChecked(expr is not None)
                if expr is not None:
                    row.cron.setText(expr)
            self.subset.setValue(view.check_subset_percent)
            self.enabled.setChecked(view.enabled)
        self.loaded = fresh
        self.show_times(now)
        self._edited()

    def show_times(self, now: float) -> None:
        view = self.view
        if view is None:
            return
        last = {
            "forget": view.last_forget_at,
            "prune": view.last_prune_at,
            "check": view.last_check_at,
        }
        nxt = {
            "forget": view.next_forget_at,
            "prune": view.next_prune_at,
            "check": view.next_check_at,
        }
        for kind, row in self.rows.items():
            when = last[kind]
            text = html.escape(relative_time(when, now)) if when else "never"
            if kind == "check" and when and view.last_check_status:
                colour = CHECK_COLOURS.get(view.last_check_status, AMBER)
                status = html.escape(view.last_check_status.replace("_", " "))
                text += f' <span style="color:{colour}">({status})</span>'
            row.last.setText(text)
            row.last.setToolTip(absolute_time(when))
            if kind in view.due:
                row.next.setText(f'<span style="color:{AMBER}; font-weight:bold">due</span>')
                row.next.setToolTip(
                    "Its window has passed: it runs as soon as the app is open and the host "
                    "is online"
                )
            elif not view.enabled or nxt[kind] is None:
                row.next.setText(f'<span style="color:{GREY}">off</span>')
                row.next.setToolTip("")
            else:
                row.next.setText(html.escape(relative_time(nxt[kind], now)))
                row.next.setToolTip(absolute_time(nxt[kind]))

    def _typed(self, kind: str) -> None:
        self.refused.discard(kind)
        self._edited()

    def _edited(self, *_args: object) -> None:
        for row in self.rows.values():
            if row.kind in self.refused:
                continue
            on = row.on.isChecked()
            row.cron.setEnabled(on)
            if not on:
                row.description.setText("off")
                row.description.setStyleSheet(f"color: {GREY};")
                set_error(row.error, None)
                continue
            expr, text = cron_state(row.cron.text())
            if expr is None:
                row.description.setText("")
                set_error(row.error, text)
            else:
                row.description.setText(text)
                row.description.setStyleSheet("")
                set_error(row.error, None)
        for row in self.rows.values():
            row.run.setEnabled(row.kind not in self.running and not self.tab.gone)
        dirty = self.dirty()
        self.save_button.setEnabled(dirty and not self.saving)
        if dirty:
            self.status.setStyleSheet(f"color: {AMBER};")
            self.status.setText("Unsaved changes")
        elif not self.saving and self.status.text() == "Unsaved changes":
            self.status.setText("")

    def save(self) -> None:
        if not self.save_button.isEnabled():
            return
        self.saving = True
        self.errors.clear()
        self.refused.clear()
        self.save_button.setEnabled(False)
        self.save_button.setText("Saving…")

        def done(view: MaintenanceView) -> None:
            self.saving = False
            self.save_button.setText("Save maintenance")
            self.loaded = None  # show what was stored
            self.show_view(view, self.tab.now())
            self.status.setStyleSheet(f"color: {GREEN};")
            self.status.setText("Saved.")

        def failed(exc: Exception) -> None:
            self.saving = False
            self.save_button.setText("Save maintenance")
            self._edited()
            label = self.errors.show(exc)
            self.refused |= {k for k, r in self.rows.items() if r.error is label}

        self.tab.ctx.runner.run(
            self.tab.ctx.maintenance.update(self.tab.host_id, self.body(), OPERATOR),
            what="saving maintenance",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def run_now(self, kind: str) -> None:
        self.running.add(kind)
        self._edited()
        set_error(self.general_error, None)

        def done(job_id: str) -> None:
            self.running.discard(kind)
            self._edited()
            self.tab.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            self.running.discard(kind)
            self._edited()
            set_error(self.general_error, f"Could not start {kind}: {error_text(exc)}")

        self.tab.ctx.runner.run(
            self.tab.ctx.maintenance.run_now(self.tab.host_id, kind, OPERATOR),
            what=f"starting {kind}",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )


def _normalised(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    for key in ("forget_cron", "prune_cron", "check_cron"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = " ".join(value.split())
    return out


class StatsBox(QGroupBox):
    FIELDS = (
        ("size", "On disk"),
        ("raw", "Uncompressed"),
        ("snapshots", "Snapshots"),
        ("files", "Files"),
        ("check", "Last check"),
        ("prune", "Last prune"),
        ("collected", "Measured"),
    )

    def __init__(self) -> None:
        super().__init__("Repository")
        self.setObjectName("repoStats")
        self.values: dict[str, QLabel] = {}
        grid = QGridLayout(self)
        grid.setHorizontalSpacing(12)
        for row, (key, title) in enumerate(self.FIELDS):
            label = QLabel(title)
            label.setEnabled(False)
            value = QLabel("—")
            value.setObjectName(f"stat-{key}")
            value.setTextFormat(Qt.TextFormat.RichText)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[key] = value
            grid.addWidget(label, row, 0)
            grid.addWidget(value, row, 1)
        grid.setRowStretch(len(self.FIELDS), 1)
        grid.setColumnStretch(1, 1)
        self.stats: RepoStatsView | None = None

    def show_stats(self, stats: RepoStatsView, now: float) -> None:
        self.stats = stats
        v = self.values
        v["size"].setText(html.escape(human_bytes(stats.total_size)))
        raw = human_bytes(stats.total_uncompressed_size)
        if stats.total_size and stats.total_uncompressed_size:
            ratio = stats.total_uncompressed_size / stats.total_size
            raw += f" <span style='color:{GREY}'>(×{ratio:.2f} compression)</span>"
        v["raw"].setText(raw)
        v["snapshots"].setText(_count(stats.snapshot_count))
        v["files"].setText(_count(stats.file_count))
        if stats.last_check_at is None:
            v["check"].setText("never")
        else:
            status = stats.last_check_status or "unknown"
            colour = CHECK_COLOURS.get(status, AMBER)
            v["check"].setText(
                f'<span style="color:{colour}">{html.escape(status.replace("_", " "))}</span> · '
                f"{html.escape(relative_time(stats.last_check_at, now))}"
            )
        v["check"].setToolTip(absolute_time(stats.last_check_at))
        v["prune"].setText(
            html.escape(relative_time(stats.last_prune_at, now)) if stats.last_prune_at else "never"
        )
        v["prune"].setToolTip(absolute_time(stats.last_prune_at))
        v["collected"].setText(
            html.escape(relative_time(stats.collected_at, now)) if stats.collected_at else "never"
        )
        v["collected"].setToolTip(absolute_time(stats.collected_at))


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


class BandwidthBox(QGroupBox):
    """Per-host restic limits (KiB/s), pushed to the agent at once."""

    def __init__(self, tab: RepoTab) -> None:
        super().__init__("Bandwidth caps")
        self.setObjectName("bandwidthBox")
        self.tab = tab
        self.loaded: tuple[int, int] | None = None
        self.saving = False
        self.general_error = error_label()
        self.errors = FieldErrors(self.general_error)
        self.upload = self._spin("upload_kib_s")
        self.download = self._spin("download_kib_s")
        self.save_button = QPushButton("Save caps")
        self.save_button.setObjectName("saveBandwidth")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save)
        self.status = QLabel()
        self.status.setObjectName("bandwidthStatus")
        note = QLabel(
            "restic --limit-upload / --limit-download for every job of this host; "
            "“Back up now” can override them for one run."
        )
        note.setWordWrap(True)
        note.setEnabled(False)
        row = QHBoxLayout()
        for title, name, spin in (
            ("Upload", "upload_kib_s", self.upload),
            ("Download", "download_kib_s", self.download),
        ):
            row.addWidget(QLabel(title))
            row.addWidget(self.errors.wrap(name, spin))
            row.addSpacing(12)
        row.addStretch(1)
        row.addWidget(self.status)
        row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addLayout(row)
        layout.addWidget(self.general_error)

    def _spin(self, name: str) -> QSpinBox:
        spin = QSpinBox()
        spin.setObjectName(name)
        spin.setRange(0, 10_000_000)
        spin.setSingleStep(256)
        spin.setSpecialValueText("unlimited")
        spin.setSuffix(" KiB/s")
        spin.setMinimumWidth(130)
        spin.valueChanged.connect(self._edited)
        return spin

    def values(self) -> tuple[int, int]:
        return self.upload.value(), self.download.value()

    def dirty(self) -> bool:
        return self.loaded is not None and self.values() != self.loaded

    def show_host(self, host: HostView) -> None:
        up = host.upload_kib_s or 0
        down = host.download_kib_s or 0
        fresh = (int(up), int(down))
        if not self.dirty() and not self.saving:
            self.upload.setValue(fresh[0])
            self.download.setValue(fresh[1])
        self.loaded = fresh
        self._edited()

    def _edited(self, *_args: object) -> None:
        dirty = self.dirty()
        self.save_button.setEnabled(dirty and not self.saving)
        if dirty:
            self.status.setStyleSheet(f"color: {AMBER};")
            self.status.setText("Unsaved")
        elif not self.saving and self.status.text() == "Unsaved":
            self.status.setText("")

    def save(self) -> None:
        if not self.save_button.isEnabled():
            return
        up, down = self.values()
        self.saving = True
        self.errors.clear()
        self.save_button.setEnabled(False)

        def done(_result: None) -> None:
            self.saving = False
            self.loaded = (up, down)
            self.status.setStyleSheet(f"color: {GREEN};")
            self.status.setText("Saved and sent to the agent.")
            self._edited()

        def failed(exc: Exception) -> None:
            self.saving = False
            self.errors.show(exc)
            self._edited()

        self.tab.ctx.runner.run(
            self.tab.ctx.hosts.set_bandwidth(self.tab.host_id, up or None, down or None, OPERATOR),
            what="saving the bandwidth caps",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )


class RepoTab(HostTab):
    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(ctx, navigator, host_id)
        self.now = now
        self.gone = False
        self.unlocking = False

        self.lock_banner = Banner("lockBanner", AMBER)
        self.lock_banner.title.setText("⚠ The repository is locked")
        self.lock_banner.body.setText(
            "restic found a lock, most likely left by a restic process that was killed. "
            "Forget, prune and check refuse to run until it is removed. <b>Unlock</b> "
            "removes stale locks only: a lock held by a restic that is still running is kept."
        )
        self.unlock_button = QPushButton("Unlock")
        self.unlock_button.setObjectName("unlockRepo")
        self.unlock_button.setToolTip("Run restic unlock on the agent now")
        self.unlock_button.clicked.connect(self.unlock)
        self.lock_banner.add_button(self.unlock_button)
        self.lock_note = QLabel()
        self.lock_note.setObjectName("lockNote")
        self.lock_note.setWordWrap(True)
        self.error = error_label()

        self.stats_box = StatsBox()
        self.stats_box.setMinimumWidth(290)
        self.stats_box.setMaximumWidth(380)
        self.chart = SizeChart(now=now)
        chart_box = QGroupBox("Size trend")
        chart_layout = QVBoxLayout(chart_box)
        chart_layout.addWidget(self.chart)
        top = QHBoxLayout()
        top.addWidget(self.stats_box)
        top.addWidget(chart_box, 1)

        self.maintenance_box = MaintenanceBox(self)
        self.bandwidth_box = BandwidthBox(self)

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 4, 0)
        column.addLayout(top)
        column.addWidget(self.maintenance_box)
        column.addWidget(self.bandwidth_box)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)

        layout = QVBoxLayout(self)
        layout.addWidget(self.lock_banner)
        layout.addWidget(self.lock_note)
        layout.addWidget(self.error)
        layout.addWidget(scroll, 1)
        self.lock_note.hide()

        self.maintenance_loader: SingleFlight[MaintenanceView] = SingleFlight(
            self,
            ctx.runner,
            "loading maintenance",
            lambda: ctx.maintenance.get(host_id),
            lambda view: self.maintenance_box.show_view(view, self.now()),
            lambda exc: self.fetch_failed("maintenance", exc, self.error),
        )
        self.stats_loader: SingleFlight[RepoStatsView] = SingleFlight(
            self,
            ctx.runner,
            "loading repository statistics",
            lambda: ctx.maintenance.repo_stats(host_id, HISTORY_DAYS),
            self._stats_loaded,
            lambda exc: self.fetch_failed("repository statistics", exc, self.error),
        )

    @property
    def loader(self) -> SingleFlight[Any]:
        """The busier of the two (for code that waits for a tab to settle)."""
        if self.stats_loader.busy:
            return self.stats_loader
        return self.maintenance_loader

    def reload(self) -> None:
        self.maintenance_loader.request()
        self.stats_loader.request()

    def reload_stats(self) -> None:
        self.stats_loader.request()

    def host_gone(self) -> None:
        self.gone = True
        self.maintenance_loader.stop()
        self.stats_loader.stop()

    def tick(self) -> None:
        now = self.now()
        self.maintenance_box.show_times(now)
        if self.stats_box.stats is not None:
            self.stats_box.show_stats(self.stats_box.stats, now)

    def set_host(self, host: HostView) -> None:
        super().set_host(host)
        locked = host.repo_status == "locked"
        self.lock_banner.setVisible(locked)
        if not locked:
            self.lock_note.hide()
        self.unlock_button.setEnabled(not self.unlocking)
        self.bandwidth_box.show_host(host)

    def _stats_loaded(self, stats: RepoStatsView) -> None:
        set_error(self.error, None)
        self.stats_box.show_stats(stats, self.now())
        self.chart.set_points(stats.history)

    def unlock(self) -> None:
        self.unlocking = True
        self.unlock_button.setEnabled(False)
        self.unlock_button.setText("Unlocking…")

        def finished() -> None:
            self.unlocking = False
            self.unlock_button.setEnabled(True)
            self.unlock_button.setText("Unlock")

        def done(job_id: str) -> None:
            finished()
            self.lock_note.setStyleSheet("")
            self.lock_note.setText(
                "Unlock sent: the banner goes away when the agent reports the lock removed."
            )
            self.lock_note.show()
            self.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            finished()
            self.lock_note.setStyleSheet(f"color: {RED};")
            self.lock_note.setText(f"Could not unlock: {error_text(exc)}")
            self.lock_note.show()

        self.ctx.runner.run(
            self.ctx.maintenance.run_now(self.host_id, "unlock", OPERATOR),
            what="unlocking the repository",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )
