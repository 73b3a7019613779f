"""Update agents: the fleet update dialog, opened from the fleet view.

Before a run it lists the hosts whose agent differs from the build the app
bundles; Start updates them one at a time through ``UpdateService``, and the
table follows each host live (``updates_changed`` from the bridge): pending,
updating (downloading / restarting), succeeded, failed, skipped. The run halts
at the first failure and says why; Cancel stops it before the next host.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from server_core.services.context import OPERATOR
from server_core.update_views import (
    CANCELLED,
    FAILED,
    NOT_STARTED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    UPDATING,
    FleetUpdateView,
    HostUpdateView,
    available_update,
)
from server_core.views import HostView
from ui_qt.bridge import EventBridge
from ui_qt.host_tabs.common import guarded
from ui_qt.tasks import AsyncRunner
from ui_qt.widgets.colors import Tone, text_color

if TYPE_CHECKING:
    from server_core.services.updates import UpdateService

STATE_LABELS: dict[str, tuple[str, Tone]] = {
    PENDING: ("Waiting", Tone.MUTED),
    UPDATING: ("Updating…", Tone.NEUTRAL),
    SUCCEEDED: ("Updated", Tone.OK),
    FAILED: ("Failed", Tone.BAD),
    SKIPPED: ("Skipped", Tone.WARN),
    NOT_STARTED: ("Not started", Tone.MUTED),
}
# Hosts the run has dealt with (a host it never reached does not count as progress).
_DONE = (SUCCEEDED, FAILED, SKIPPED)
COLUMNS = ("Host", "Agent version", "State", "Details")


def preview_rows(hosts: list[HostView], bundled: dict[str, str]) -> list[HostUpdateView]:
    """What a fleet update would do now, host by host, in the order it would go."""
    rows = []
    for host in sorted(hosts, key=lambda h: (h.name.casefold(), h.id)):
        target = available_update(host.os, host.arch, host.agent_version, bundled)
        if target is None:
            continue
        online = host.status == "online"
        rows.append(
            HostUpdateView(
                host_id=host.id,
                host_name=host.name,
                from_version=host.agent_version,
                to_version=target,
                state=PENDING,
                detail=None if online else "offline: skipped unless it reconnects in time",
            )
        )
    return rows


class FleetUpdateDialog(QDialog):
    def __init__(
        self,
        updates: UpdateService,
        runner: AsyncRunner,
        bridge: EventBridge,
        hosts: Callable[[], list[HostView]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("fleetUpdateDialog")
        self.setWindowTitle("Update agents")
        self.resize(760, 420)
        self._updates = updates
        self._runner = runner
        self._hosts = hosts
        self._bundled: dict[str, str] = {}
        # Set once this dialog shows a run (started here or found running).
        self._showing_run = False
        self._busy = False

        title = QLabel("Update agents")
        font = QFont(title.font())
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        title.setFont(font)
        self.intro = QLabel()
        self.intro.setObjectName("updateIntro")
        self.intro.setWordWrap(True)
        self.status = QLabel("Reading the bundled agent…")
        self.status.setObjectName("updateStatus")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setObjectName("updateProgress")
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("updateHosts")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setWordWrap(False)
        self.table.setShowGrid(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

        self.start_button = QPushButton("Start update")
        self.start_button.setObjectName("startFleetUpdate")
        self.start_button.setDefault(True)
        self.start_button.setEnabled(False)
        self.start_button.setToolTip(
            "Update the hosts listed, one at a time; stops at the first host whose update fails"
        )
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel update")
        self.cancel_button.setObjectName("cancelFleetUpdate")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip(
            "Stop before the next host (a host already updating finishes on its own)"
        )
        self.cancel_button.clicked.connect(self.cancel)
        close = QPushButton("Close")
        close.setObjectName("closeFleetUpdate")
        close.setToolTip("Close this window; a running update carries on")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.intro)
        layout.addWidget(self.status)
        layout.addWidget(self.progress)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)

        bridge.updates_changed.connect(self._on_updates_changed)
        self.reload()

    # -- reading -----------------------------------------------------------------

    def reload(self) -> None:
        """Read the bundled builds again, then show the run or what a run would do."""
        self._runner.run(
            self._updates.bundled_versions(),
            what="reading the bundled agent",
            on_done=guarded(self, self._bundled_loaded),
            on_error=guarded(self, self._failed),
        )

    def _bundled_loaded(self, bundled: dict[str, str]) -> None:
        self._bundled = bundled
        if bundled:
            builds = ", ".join(f"{v} ({k})" for k, v in sorted(bundled.items()))
            self.intro.setText(
                f"This app bundles agent {builds}. Hosts are updated one at a time: each "
                "agent downloads the build over its pinned connection, checks its SHA-256, "
                "keeps its previous binary as restic-manager-agent.old and restarts. A host "
                "counts as updated when it reconnects with the new version; the update "
                "stops at the first host that fails."
            )
        else:
            self.intro.setText(
                "No agent build with a recorded version is bundled with this app, so there "
                "is nothing to update to. Build one with `python packaging/build.py agent`."
            )
        run = self._updates.current()
        if run is not None and (run.state == RUNNING or self._showing_run):
            self.show_run(run)
        else:
            self.show_preview()

    def show_preview(self) -> None:
        self._showing_run = False
        rows = preview_rows(self._hosts(), self._bundled)
        self._fill(rows)
        self.progress.setVisible(False)
        online = sum(1 for r in rows if r.detail is None)
        if not rows:
            self._set_status("Every host runs the bundled agent: nothing to update.", Tone.OK)
        else:
            offline = len(rows) - online
            text = f"{len(rows)} host{'s' if len(rows) != 1 else ''} run another agent version"
            if offline:
                text += f" ({offline} offline)"
            self._set_status(text + ".", Tone.NEUTRAL)
        self.start_button.setText("Start update")
        self.start_button.setEnabled(online > 0 and not self._busy)
        self.cancel_button.setEnabled(False)

    def show_run(self, run: FleetUpdateView) -> None:
        self._showing_run = True
        self._fill(run.hosts)
        done = sum(1 for h in run.hosts if h.state in _DONE)
        self.progress.setVisible(True)
        self.progress.setRange(0, max(len(run.hosts), 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done} of {len(run.hosts)} hosts")
        updated = sum(1 for h in run.hosts if h.state == SUCCEEDED)
        skipped = sum(1 for h in run.hosts if h.state == SKIPPED)
        if run.state == RUNNING:
            current = next((h for h in run.hosts if h.host_id == run.current_host_id), None)
            where = f"Updating {current.host_name}" if current else "Updating"
            position = f" ({run.hosts.index(current) + 1} of {len(run.hosts)})" if current else ""
            text = f"{where}{position}…"
            if current is not None and current.detail:
                text += f" {current.detail}"
            self._set_status(text, Tone.NEUTRAL)
        elif run.state == FAILED:
            self._set_status(
                f"<b>The update stopped.</b> {html.escape(run.message or 'A host failed.')}",
                Tone.BAD,
                rich=True,
            )
        elif run.state == CANCELLED:
            self._set_status(
                f"Cancelled after updating {updated} host{'s' if updated != 1 else ''}. "
                + (run.message or ""),
                Tone.WARN,
            )
        else:
            text = f"Updated {updated} host{'s' if updated != 1 else ''}"
            if skipped:
                text += f"; {skipped} skipped (see Details)"
            self._set_status(text + ".", Tone.OK if not skipped else Tone.WARN)
        running = run.state == RUNNING
        self.cancel_button.setEnabled(running and not self._busy)
        self.start_button.setText("Start again")
        remaining = preview_rows(self._hosts(), self._bundled)
        self.start_button.setEnabled(not running and bool(remaining) and not self._busy)

    def _fill(self, rows: list[HostUpdateView]) -> None:
        self.table.setRowCount(len(rows))
        for n, row in enumerate(rows):
            label, tone = STATE_LABELS.get(row.state, (row.state, Tone.NEUTRAL))
            version = f"{row.from_version or '?'} → {row.to_version or '—'}"
            cells = (row.host_name, version, label, row.detail or "")
            for col, text in enumerate(cells):
                item = self.table.item(n, col)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(n, col, item)
                item.setText(text)
                item.setToolTip(text if col == 3 else "")
                if col == 2:
                    item.setForeground(text_color(tone, self.palette()))
                    item.setData(Qt.ItemDataRole.UserRole, row.state)

    def _set_status(self, text: str, tone: Tone, *, rich: bool = False) -> None:
        shown = text if rich else html.escape(text)
        colour = text_color(tone, self.palette()).name()
        self.status.setText(f'<span style="color:{colour}">{shown}</span>')

    # -- actions -------------------------------------------------------------------

    def start(self) -> None:
        if self._busy:
            return
        self._busy = True
        self.start_button.setEnabled(False)
        self._set_status("Starting the update…", Tone.NEUTRAL)
        self._runner.run(
            self._updates.update_fleet(None, OPERATOR),
            what="starting the fleet update",
            on_done=guarded(self, self._started),
            on_error=guarded(self, self._failed),
        )

    def _started(self, run: FleetUpdateView) -> None:
        self._busy = False
        self.show_run(self._updates.current() or run)

    def cancel(self) -> None:
        if self._busy:
            return
        self._busy = True
        self.cancel_button.setEnabled(False)
        self._runner.run(
            self._updates.cancel(OPERATOR),
            what="cancelling the fleet update",
            on_done=guarded(self, self._started),
            on_error=guarded(self, self._failed),
        )

    def _failed(self, exc: Exception) -> None:
        self._busy = False
        message = exc.message if isinstance(exc, ServiceError) else str(exc)
        self._set_status(message or type(exc).__name__, Tone.BAD)
        run = self._updates.current()
        running = run is not None and run.state == RUNNING
        self.cancel_button.setEnabled(running)
        self.start_button.setEnabled(not running and bool(self._bundled))

    def _on_updates_changed(self, _ids: object) -> None:
        if self._busy:
            return
        run = self._updates.current()
        if run is not None and (self._showing_run or run.state == RUNNING):
            self.show_run(run)
