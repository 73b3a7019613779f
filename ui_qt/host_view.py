"""The host page: a header with the host's state and tabs for what it holds.

Everything is read through server_core services on the shared loop (via
``ctx.runner``) and kept live by the event bridge: ``hosts_changed`` re-reads
the header, ``snapshots_changed`` / ``jobs_changed`` the matching tabs,
``sources_changed`` the Sources / Schedules / Repo tabs, ``repo_stats_changed``
the Repo tab, and ``hosts_removed`` sends the operator back to the fleet.
"""

from __future__ import annotations

import html
import re
import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import NotFound
from server_core.services.context import OPERATOR
from server_core.update_views import FAILED, UPDATING, available_update
from server_core.views import HostView as HostRecord
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, human_bytes, relative_time
from ui_qt.host_tabs import (
    CredentialsTab,
    DangerZoneTab,
    JobsTab,
    RepoTab,
    SchedulesTab,
    SnapshotsTab,
    SourcesTab,
)
from ui_qt.host_tabs.common import (
    AMBER,
    GREEN,
    GREY,
    JOB_STATUS_COLOURS,
    RED,
    HostTab,
    SingleFlight,
    error_label,
    error_text,
    guarded,
    set_error,
    show_error,
    show_message,
)
from ui_qt.host_tabs.schedules_tab import sync_text
from ui_qt.navigator import Navigator

TICK_MS = 10_000

LAPTOP = "laptop"
PRESENCE_MODES = {"always_on": "Always on", LAPTOP: "Laptop (intermittent)"}
PRESENCE_TIP = (
    "Always on: a server or desktop that should always be reachable — its agent going "
    "silent raises an alert after the heartbeat timeout.\n"
    "Laptop (intermittent): a machine that sleeps or travels — shown as asleep when "
    "offline, no offline alerts, and a backup is overdue only after a longer horizon "
    "(7 days by default). The agent catches up missed schedules when it wakes."
)
UPDATE_TIP = (
    "Replace this host's agent with the version bundled with this app: it downloads "
    "the build, keeps the previous one as restic-manager-agent.old and restarts"
)
REPO_STATUS = {
    "ready": ("ready", GREEN),
    "unknown": ("not probed yet", GREY),
    "init_failed": ("init failed", RED),
    "locked": ("locked", AMBER),
}
REPO_TIPS = {
    "locked": "restic found a stale lock: see the Repo tab to unlock it",
    "init_failed": "The repository could not be opened or initialised",
}


def host_state(host: HostRecord, now: float | None = None) -> tuple[str, str]:
    """(label, colour) of the status dot: online / offline / never connected, and
    for a laptop that is offline the calm "asleep · last seen 3 h ago"."""
    if host.status == "online":
        return "online", GREEN
    if host.last_seen_at is None:
        return "never connected", GREY
    if host.presence_mode == LAPTOP:
        return f"asleep · last seen {relative_time(host.last_seen_at, now)}", GREY
    return "offline", AMBER


def parse_tags(text: str) -> list[str]:
    """Tags as typed: separated by commas and/or spaces."""
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def dot(colour: str) -> str:
    return f'<span style="color:{colour}">●</span>'


class HostView(QWidget):
    """Implements the host page for ui_qt.main_window.MainWindow."""

    def __init__(self, ctx: UiContext, navigator: Navigator, host_id: int) -> None:
        super().__init__()
        self.setObjectName("hostView")
        self.ctx = ctx
        self.navigator = navigator
        self.host_id = host_id
        self.host: HostRecord | None = None
        self.gone = False
        self._deleting_here = False
        self.removed_notice: QMessageBox | None = None
        self._tags_loaded = ""
        # "os/arch" -> bundled agent version, for "Update agent".
        self._bundled: dict[str, str] = {}
        self.update_error: QMessageBox | None = None

        self._build_header()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("hostTabs")
        self.snapshots_tab = SnapshotsTab(ctx, navigator, host_id)
        self.jobs_tab = JobsTab(ctx, navigator, host_id)
        self.sources_tab = SourcesTab(ctx, navigator, host_id, self.jobs_tab.set_group_names)
        self.schedules_tab = SchedulesTab(ctx, navigator, host_id)
        self.repo_tab = RepoTab(ctx, navigator, host_id)
        self.credentials_tab = CredentialsTab(ctx, navigator, host_id)
        self.danger_tab = DangerZoneTab(ctx, navigator, host_id, self._deleting)
        for tab, title in (
            (self.snapshots_tab, "Snapshots"),
            (self.sources_tab, "Sources"),
            (self.schedules_tab, "Schedules"),
            (self.repo_tab, "Repo"),
            (self.jobs_tab, "Jobs"),
            (self.credentials_tab, "Credentials"),
            (self.danger_tab, "Danger zone"),
        ):
            self.tabs.addTab(tab, title)
            tab.host_missing.connect(self._host_missing)

        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.header)
        layout.addWidget(self.tabs, 1)

        self.loader: SingleFlight[HostRecord] = SingleFlight(
            self,
            ctx.runner,
            "loading the host",
            lambda: ctx.hosts.get_host(host_id),
            self._loaded,
            self._load_failed,
        )
        ctx.bridge.hosts_changed.connect(self._on_hosts_changed)
        ctx.bridge.hosts_removed.connect(self._on_hosts_removed)
        ctx.bridge.sources_changed.connect(self._on_sources_changed)
        ctx.bridge.repo_stats_changed.connect(self._on_repo_stats_changed)
        # The header's "Last restore" follows its job, and a restore started here.
        ctx.bridge.jobs_changed.connect(self._on_jobs_changed)
        self._watch_updates()
        self.snapshots_tab.restore_started.connect(self._restore_started)
        self.ticker = QTimer(self)
        self.ticker.setInterval(TICK_MS)
        self.ticker.timeout.connect(self.tick)
        self.ticker.start()
        self.reload()

    @property
    def all_tabs(self) -> list[HostTab]:
        return [
            self.snapshots_tab,
            self.sources_tab,
            self.schedules_tab,
            self.repo_tab,
            self.jobs_tab,
            self.credentials_tab,
            self.danger_tab,
        ]

    # -- building ---------------------------------------------------------------

    def _build_header(self) -> None:
        self.banner = QLabel()
        self.banner.setObjectName("hostBanner")
        self.banner.setStyleSheet(f"color: white; background: {RED}; padding: 6px;")
        self.banner.hide()

        self.back = QPushButton("← Fleet")
        self.back.setObjectName("backToFleet")
        self.back.setFlat(True)
        self.back.setCursor(Qt.CursorShape.PointingHandCursor)
        self.back.setToolTip("Back to the fleet")
        self.back.clicked.connect(self.navigator.show_fleet)

        self.name = QLabel("…")
        self.name.setObjectName("hostName")
        font = QFont(self.name.font())
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        self.name.setFont(font)
        self.name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel()
        self.status.setObjectName("hostStatus")
        self.status.setTextFormat(Qt.TextFormat.RichText)

        title = QHBoxLayout()
        title.addWidget(self.name)
        title.addSpacing(12)
        title.addWidget(self.status)
        title.addStretch(1)
        self.restore_button = QPushButton("Restore…")
        self.restore_button.setObjectName("hostRestore")
        self.restore_button.setToolTip("Browse this host's snapshots and restore files from them")
        self.restore_button.clicked.connect(self.open_restore)
        self.update_button = QPushButton("Update agent")
        self.update_button.setObjectName("hostUpdateAgent")
        self.update_button.setToolTip(UPDATE_TIP)
        self.update_button.clicked.connect(self.update_agent)
        self.update_button.hide()
        title.addWidget(self.update_button)
        title.addWidget(self.restore_button)
        title.addWidget(self.back)

        self.os_arch = QLabel()
        self.agent_version = QLabel()
        self.restic_version = QLabel()
        self.last_seen = QLabel()
        self.last_seen.setObjectName("hostLastSeen")
        self.last_backup = QLabel()
        self.last_backup.setTextFormat(Qt.TextFormat.RichText)
        self.repo_size = QLabel()
        self.presence = QComboBox()
        self.presence.setObjectName("presenceMode")
        self.presence.setToolTip(PRESENCE_TIP)
        for mode, label in PRESENCE_MODES.items():
            self.presence.addItem(label, mode)
        self.presence.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.presence.setEnabled(False)  # until the host is loaded
        # activated: the operator's choice only, never our own setCurrentIndex.
        self.presence.activated.connect(self._presence_chosen)
        self.presence_saving = False
        self.presence_error: QMessageBox | None = None
        self.next_run = QLabel()
        self.next_run.setObjectName("hostNextRun")
        self.schedule_sync = QLabel()
        self.schedule_sync.setObjectName("scheduleSync")
        self.schedule_sync.setTextFormat(Qt.TextFormat.RichText)
        self.last_restore = QLabel()
        self.last_restore.setObjectName("hostLastRestore")
        self.last_restore.setTextFormat(Qt.TextFormat.RichText)
        self.last_restore.linkActivated.connect(self._open_restore_job)
        facts = QGridLayout()
        facts.setHorizontalSpacing(10)
        facts.setVerticalSpacing(4)
        for n, (label, widget) in enumerate(
            (
                ("OS / arch", self.os_arch),
                ("Agent", self.agent_version),
                ("restic", self.restic_version),
                ("Last seen", self.last_seen),
                ("Last backup", self.last_backup),
                ("Snapshots", self.repo_size),
                ("Presence", self.presence),
                ("Next backup", self.next_run),
                ("Schedules", self.schedule_sync),
                ("Last restore", self.last_restore),
            )
        ):
            row, col = divmod(n, 3)
            key = QLabel(label)
            key.setEnabled(False)
            facts.addWidget(key, row, col * 2)
            facts.addWidget(widget, row, col * 2 + 1)
        facts.setColumnStretch(5, 1)
        for col in (1, 3):
            facts.setColumnMinimumWidth(col, 170)

        # Tags, editable in place.
        self.tags = QLineEdit()
        self.tags.setObjectName("hostTags")
        self.tags.setPlaceholderText("no tags — e.g. prod, db, site:fra")
        self.tags.setToolTip("Separate tags with commas or spaces")
        self.tags.setMinimumWidth(340)
        self.tags.setMaximumWidth(420)
        self.tags.textChanged.connect(self._tags_edited)
        self.tags.returnPressed.connect(self.save_tags)
        self.save_tags_button = QPushButton("Save tags")
        self.save_tags_button.setObjectName("saveTags")
        self.save_tags_button.setEnabled(False)
        self.save_tags_button.clicked.connect(self.save_tags)
        self.tags_error = error_label()
        self.tags_error.setObjectName("tagsError")
        tags_row = QHBoxLayout()
        tags_label = QLabel("Tags")
        tags_label.setEnabled(False)
        tags_label.setMinimumWidth(self.fontMetrics().horizontalAdvance("Repository") + 6)
        tags_row.addWidget(tags_label)
        tags_row.addWidget(self.tags)
        tags_row.addWidget(self.save_tags_button)
        tags_row.addWidget(self.tags_error, 1)
        tags_row.addStretch(0)

        # Repository status, its init error and the retry.
        self.repo_status = QLabel()
        self.repo_status.setObjectName("repoStatus")
        self.repo_status.setTextFormat(Qt.TextFormat.RichText)
        self.retry_probe = QPushButton("Retry probe")
        self.retry_probe.setObjectName("retryProbe")
        self.retry_probe.setToolTip(
            "Ask the agent to check the repository again (and initialise it if it is new)"
        )
        self.retry_probe.clicked.connect(self.retry_repo_probe)
        self.probe_note = QLabel()
        self.probe_note.setObjectName("probeNote")
        self.probe_note.setWordWrap(True)
        self.repo_error = QLabel()
        self.repo_error.setObjectName("repoError")
        self.repo_error.setWordWrap(True)
        self.repo_error.setStyleSheet(f"color: {RED};")
        self.repo_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.repo_error.hide()
        repo_row = QHBoxLayout()
        repo_label = QLabel("Repository")
        repo_label.setEnabled(False)
        repo_label.setMinimumWidth(tags_label.minimumWidth())
        repo_row.addWidget(repo_label)
        repo_row.addWidget(self.repo_status)
        repo_row.addWidget(self.retry_probe)
        repo_row.addWidget(self.probe_note, 1)

        self.header = QFrame()
        self.header.setObjectName("hostHeader")
        header = QVBoxLayout(self.header)
        header.setContentsMargins(4, 0, 4, 4)
        header.addLayout(title)
        header.addLayout(facts)
        header.addSpacing(4)
        header.addLayout(tags_row)
        header.addLayout(repo_row)
        header.addWidget(self.repo_error)

    # -- loading ------------------------------------------------------------------

    def reload(self) -> None:
        """Read the header and every tab again (F5)."""
        if self.gone:
            return
        self.loader.request()
        for tab in self.all_tabs:
            tab.reload()

    def tick(self) -> None:
        """Relative times keep moving without a query."""
        if self.gone:
            return
        if self.host is not None:
            self._show_times(self.host)
        for tab in self.all_tabs:
            tab.tick()

    def _on_hosts_changed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids and not self.gone:
            self.loader.request()
            # Credentials, source groups and maintenance runs change with HostChanged too.
            self.credentials_tab.reload()
            self.sources_tab.reload()
            self.repo_tab.reload()

    def _on_sources_changed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids and not self.gone:
            self.sources_tab.reload()
            self.schedules_tab.reload()
            self.repo_tab.maintenance_loader.request()
            self.loader.request()  # the schedule version in the header

    def _restore_started(self, _job_id: str) -> None:
        if not self.gone:
            self.loader.request()

    def _on_jobs_changed(self, job_ids: set[str]) -> None:
        if self.host is not None and self.host.latest_restore_job_id in job_ids and not self.gone:
            self.loader.request()

    def _on_repo_stats_changed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids and not self.gone:
            self.repo_tab.reload_stats()

    def _on_hosts_removed(self, host_ids: set[int]) -> None:
        if self.host_id in host_ids:
            self._host_deleted(notify=True)

    def _host_missing(self) -> None:
        self._host_deleted(notify=True)

    def _load_failed(self, exc: Exception) -> None:
        if isinstance(exc, NotFound):
            self._host_deleted(notify=True)
            return
        self.banner.setText(f"Could not load this host: {error_text(exc)}")
        self.banner.show()

    def _loaded(self, host: HostRecord) -> None:
        if self.gone:
            return
        self.banner.hide()
        self.host = host
        self.name.setText(host.name)
        self.os_arch.setText(" / ".join(p for p in (host.os, host.arch) if p) or "—")
        self._show_agent(host)
        self.restic_version.setText(host.restic_version or "—")
        self._show_presence(host)
        size = human_bytes(host.repo_size_bytes) if host.repo_size_bytes is not None else None
        self.repo_size.setText(f"{host.snapshot_count}" + (f" · repo {size}" if size else ""))
        self._show_times(host)
        self._show_repo(host)
        self._show_sync(host)
        text = ", ".join(host.tags)
        if self.tags.text() == self._tags_loaded:  # never overwrite what is being typed
            self.tags.setText(text)
        self._tags_loaded = text
        self._tags_edited()
        for tab in self.all_tabs:
            tab.set_host(host)

    # -- agent version and update --------------------------------------------------

    def _watch_updates(self) -> None:
        updates = self.ctx.updates
        if updates is None:
            return
        self.ctx.bridge.updates_changed.connect(self._on_updates_changed)

        def loaded(versions: dict[str, str]) -> None:
            self._bundled = versions
            if self.host is not None:
                self._show_agent(self.host)

        self.ctx.runner.run(
            updates.bundled_versions(),
            what="reading the bundled agent",
            on_done=guarded(self, loaded),
        )

    def _on_updates_changed(self, host_ids: set[int | None]) -> None:
        if self.host_id in host_ids and self.host is not None and not self.gone:
            self._show_agent(self.host)

    def _show_agent(self, host: HostRecord) -> None:
        updates = self.ctx.updates
        attempt = updates.host_update(self.host_id) if updates is not None else None
        target = available_update(host.os, host.arch, host.agent_version, self._bundled)
        text = html.escape(host.agent_version or "—")
        tip = ""
        if attempt is not None and attempt.state == UPDATING:
            text += f' <span style="color:{GREY}">→ {html.escape(attempt.to_version or "")}</span>'
            tip = attempt.detail or ""
        elif attempt is not None and attempt.state == FAILED and target is not None:
            text += f' <span style="color:{RED}">(update to {html.escape(target)} failed)</span>'
            tip = attempt.detail or ""
        elif target is not None:
            text += f' <span style="color:{AMBER}">(update available: {html.escape(target)})</span>'
            tip = f"This app bundles agent {target} for {host.os}/{host.arch}"
        self.agent_version.setTextFormat(Qt.TextFormat.RichText)
        self.agent_version.setText(text)
        self.agent_version.setToolTip(tip)
        updating = attempt is not None and attempt.state == UPDATING
        self.update_button.setVisible(updates is not None and (target is not None or updating))
        self.update_button.setEnabled(not updating and host.status == "online" and not self.gone)
        self.update_button.setText(
            "Updating agent…" if updating else f"Update agent to {target}" if target else ""
        )
        # Back to the usual tip once the agent reconnects.
        offline = host.status != "online" and not updating
        self.update_button.setToolTip(
            "The agent must be connected to be updated" if offline else UPDATE_TIP
        )

    def update_agent(self) -> None:
        updates = self.ctx.updates
        if updates is None or self.host is None:
            return
        self.update_button.setEnabled(False)

        def failed(exc: Exception) -> None:
            if self.host is not None:
                self._show_agent(self.host)
            self.update_error = show_error(self, "Could not update the agent", exc)

        self.ctx.runner.run(
            updates.update_host(self.host_id, OPERATOR),
            what="updating the agent",
            on_done=guarded(self, lambda _view: self._show_agent(self.host) if self.host else None),
            on_error=guarded(self, failed),
        )

    def _show_presence(self, host: HostRecord) -> None:
        if self.presence_saving:
            return  # the answer of the change in flight decides
        index = self.presence.findData(host.presence_mode)
        if index < 0:  # a mode this version does not know: show it as it is
            self.presence.addItem(host.presence_mode, host.presence_mode)
            index = self.presence.count() - 1
        self.presence.setCurrentIndex(index)
        self.presence.setEnabled(not self.gone)

    def _show_times(self, host: HostRecord) -> None:
        label, colour = host_state(host)
        self.status.setText(f"{dot(colour)} {html.escape(label)}")
        if not host.enrolled:
            self.status.setToolTip("The agent has not enrolled yet: run its install command")
        elif host.status != "online" and host.presence_mode == LAPTOP:
            self.status.setToolTip(
                f"A laptop host, offline since {absolute_time(host.last_seen_at)}: that is "
                "expected, no offline alert is raised. Missed schedules run when it wakes."
            )
        else:
            self.status.setToolTip("")
        if host.status == "online":
            self.last_seen.setText("connected now")
        else:
            self.last_seen.setText(relative_time(host.last_seen_at))
        self.last_seen.setToolTip(absolute_time(host.last_seen_at))
        if host.next_run_at is None:
            self.next_run.setText("no schedule")
            self.next_run.setToolTip("No enabled schedule: backups run only when started by hand")
        elif host.next_run_at < time.time():
            self.next_run.setText("due")
            self.next_run.setToolTip(
                f"Was due {absolute_time(host.next_run_at)}: the agent runs a missed "
                "schedule once when it can"
            )
        else:
            self.next_run.setText(relative_time(host.next_run_at))
            self.next_run.setToolTip(absolute_time(host.next_run_at))
        if host.last_backup_at is None:
            self.last_backup.setText("never")
        else:
            status = host.last_backup_status or ""
            colour = JOB_STATUS_COLOURS.get(status, GREY)
            shown = status.replace("_", " ").replace("succeeded with warnings", "warnings")
            self.last_backup.setText(
                f"{relative_time(host.last_backup_at)} "
                f'<span style="color:{colour}">({html.escape(shown)})</span>'
            )
            self.last_backup.setToolTip(absolute_time(host.last_backup_at))
        self._show_last_restore(host)

    def _show_last_restore(self, host: HostRecord) -> None:
        if host.latest_restore_job_id is None:
            self.last_restore.setText("never")
            self.last_restore.setToolTip("")
            return
        status = host.latest_restore_status or ""
        colour = JOB_STATUS_COLOURS.get(status, GREY)
        when = relative_time(host.latest_restore_at) if host.latest_restore_at else ""
        self.last_restore.setText(
            f"{html.escape(when)} "
            f'<span style="color:{colour}">({html.escape(status.replace("_", " "))})</span> '
            f'<a href="job:{html.escape(host.latest_restore_job_id)}">open job</a>'
        )
        self.last_restore.setToolTip(
            f"{absolute_time(host.latest_restore_at)} · job {host.latest_restore_job_id}"
        )

    def _show_sync(self, host: HostRecord) -> None:
        text, colour = sync_text(host)
        shown = html.escape(text)
        self.schedule_sync.setText(
            f'<span style="color:{colour}">{shown}</span>' if colour else shown
        )
        self.schedule_sync.setToolTip(
            "The schedule set (schedules, source groups, maintenance) the control plane "
            f"holds is version {host.schedule_version}; the agent last confirmed version "
            f"{host.schedule_acked_version}."
        )

    def _show_repo(self, host: HostRecord) -> None:
        label, colour = REPO_STATUS.get(host.repo_status, (host.repo_status, GREY))
        self.repo_status.setText(f"{dot(colour)} {html.escape(label)}")
        self.repo_status.setToolTip(REPO_TIPS.get(host.repo_status, ""))
        failed = host.repo_status == "init_failed"
        self.repo_error.setText(host.repo_status_error or "")
        self.repo_error.setVisible(failed and bool(host.repo_status_error))
        self.retry_probe.setText("Retry probe" if failed else "Probe again")

    # -- actions ------------------------------------------------------------------

    def _presence_chosen(self, index: int) -> None:
        mode = self.presence.itemData(index)
        if self.host is None or self.gone or mode == self.host.presence_mode:
            return
        self.set_presence_mode(str(mode))

    def set_presence_mode(self, mode: str) -> None:
        """Switch the host between always-on and laptop (through HostService)."""
        self.presence_saving = True
        self.presence.setEnabled(False)

        def done(host: HostRecord) -> None:
            self.presence_saving = False
            self._loaded(host)

        def failed(exc: Exception) -> None:
            self.presence_saving = False
            if self.host is not None:
                self._show_presence(self.host)  # back to the stored mode
            self.presence.setEnabled(not self.gone)
            self.presence_error = show_error(
                self,
                "Could not change the presence mode",
                f"{error_text(exc)}\n\nThe host keeps its previous mode.",
            )

        self.ctx.runner.run(
            self.ctx.hosts.set_presence_mode(self.host_id, mode, OPERATOR),
            what="changing the presence mode",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def open_restore(self) -> None:
        """The restore browser on this host's newest snapshot."""
        self.snapshots_tab.open_restore()

    def _open_restore_job(self, link: str) -> None:
        if link.startswith("job:"):
            self.navigator.open_job(link[len("job:") :])

    def _tags_edited(self) -> None:
        self.save_tags_button.setEnabled(
            not self.gone and parse_tags(self.tags.text()) != parse_tags(self._tags_loaded)
        )

    def save_tags(self) -> None:
        if not self.save_tags_button.isEnabled():
            return
        tags = parse_tags(self.tags.text())
        self.save_tags_button.setEnabled(False)
        set_error(self.tags_error, None)

        def done(stored: list[str]) -> None:
            text = ", ".join(stored)
            self._tags_loaded = text
            self.tags.setText(text)
            self._tags_edited()

        def failed(exc: Exception) -> None:
            set_error(self.tags_error, error_text(exc))
            self._tags_edited()

        self.ctx.runner.run(
            self.ctx.hosts.set_tags(self.host_id, tags, OPERATOR),
            what="saving tags",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def retry_repo_probe(self) -> None:
        self.retry_probe.setEnabled(False)
        self.probe_note.setStyleSheet("")
        self.probe_note.setText("Asking the agent…")

        def done(_job_id: str) -> None:
            self.retry_probe.setEnabled(True)
            self.probe_note.setStyleSheet("")
            self.probe_note.setText(
                "Probe sent: the status above updates when it finishes (see the Jobs tab)."
            )

        def failed(exc: Exception) -> None:
            self.retry_probe.setEnabled(True)
            self.probe_note.setStyleSheet(f"color: {RED};")
            self.probe_note.setText(error_text(exc))

        self.ctx.runner.run(
            self.ctx.jobs.dispatch(self.host_id, "init", actor=OPERATOR),
            what="probing the repository",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    # -- deletion -------------------------------------------------------------------

    def _deleting(self, active: bool) -> None:
        """The danger zone is deleting the host (and goes to the fleet when done)."""
        self._deleting_here = active

    def _host_deleted(self, *, notify: bool) -> None:
        if self.gone:
            return
        # While our own delete runs, its echoes (the removal event, a fetch
        # answering NotFound) neither notify nor navigate: the danger zone
        # navigates once the service call returns.
        navigate = not self._deleting_here
        notify = notify and not self._deleting_here
        self.gone = True
        self.loader.stop()
        self.ticker.stop()
        for tab in self.all_tabs:
            tab.host_gone()
        name = self.host.name if self.host is not None else f"host {self.host_id}"
        self.banner.setText(f"{name} was deleted.")
        self.banner.show()
        for widget in (
            self.tags,
            self.retry_probe,
            self.tabs,
            self.restore_button,
            self.presence,
            self.update_button,
        ):
            widget.setEnabled(False)
        self.save_tags_button.setEnabled(False)
        if notify:
            self.removed_notice = show_message(
                self.window(),
                "Host deleted",
                f"{name} was deleted: this host was removed from the control plane.",
            )
        if navigate:
            self.navigator.show_fleet()
