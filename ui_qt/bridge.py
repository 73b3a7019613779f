"""server_core events → Qt signals, coalesced.

server_core publishes an event per change (a burst of log lines is many
events). The bridge only records *what* changed and emits at most one
signal per kind per interval, carrying the set of changed ids, so a view
repaints at most ~10 times a second however busy the fleet is.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import QObject, QTimer, Signal

from server_core.events import (
    AlertChanged,
    AuditAppended,
    ChannelsChanged,
    Event,
    EventBus,
    HostChanged,
    HostRemoved,
    JobChanged,
    JobLogAppended,
    PendingHostsChanged,
    RepoStatsChanged,
    SnapshotsChanged,
    SourcesChanged,
    UpdatesChanged,
)

COALESCE_MS = 100


class EventBridge(QObject):
    hosts_changed = Signal(object)  # set[int]
    hosts_removed = Signal(object)  # set[int]
    jobs_changed = Signal(object)  # set[str] of job ids
    job_logs_appended = Signal(object)  # dict[str, int]: job id -> last seq
    snapshots_changed = Signal(object)  # set[int] of host ids
    # Source groups, schedules, maintenance or default hooks of these hosts.
    sources_changed = Signal(object)  # set[int] of host ids
    repo_stats_changed = Signal(object)  # set[int] of host ids
    audit_appended = Signal()
    # alert id -> its latest transition in the interval (see _alert_transition).
    alerts_changed = Signal(object)  # dict[int, str]
    channels_changed = Signal()
    # Hosts announced, reconnected, left, or were accepted, rejected or expired.
    pending_hosts_changed = Signal()
    # Agent updates that moved on: host ids, and None for the fleet run.
    updates_changed = Signal(object)  # set[int | None]

    def __init__(self, bus: EventBus, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hosts: set[int] = set()
        self._removed: set[int] = set()
        self._jobs: set[str] = set()
        self._job_hosts: dict[str, int] = {}
        self._logs: dict[str, int] = {}
        self._snapshots: set[int] = set()
        self._sources: set[int] = set()
        self._repo_stats: set[int] = set()
        self._audit = False
        self._alerts: dict[int, str] = {}
        self._channels = False
        self._pending_hosts = False
        self._updates: set[int | None] = set()
        self.emitted = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(COALESCE_MS)
        self._timer.timeout.connect(self.flush)
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()
        self._timer.stop()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, HostChanged):
            self._hosts.add(event.host_id)
        elif isinstance(event, HostRemoved):
            self._removed.add(event.host_id)
            self._hosts.discard(event.host_id)
        elif isinstance(event, JobChanged):
            self._jobs.add(event.job_id)
        elif isinstance(event, JobLogAppended):
            self._logs[event.job_id] = max(self._logs.get(event.job_id, 0), event.last_seq)
        elif isinstance(event, SnapshotsChanged):
            self._snapshots.add(event.host_id)
        elif isinstance(event, SourcesChanged):
            self._sources.add(event.host_id)
        elif isinstance(event, RepoStatsChanged):
            self._repo_stats.add(event.host_id)
        elif isinstance(event, AuditAppended):
            self._audit = True
        elif isinstance(event, AlertChanged):
            previous = self._alerts.get(event.alert_id)
            self._alerts[event.alert_id] = _alert_transition(previous, event.transition)
        elif isinstance(event, ChannelsChanged):
            self._channels = True
        elif isinstance(event, PendingHostsChanged):
            self._pending_hosts = True
        elif isinstance(event, UpdatesChanged):
            self._updates.add(event.host_id)
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Emit what accumulated since the last flush, one signal per kind."""
        if self._removed:
            removed, self._removed = self._removed, set()
            self.hosts_removed.emit(removed)
            self.emitted += 1
        if self._hosts:
            hosts, self._hosts = self._hosts, set()
            self.hosts_changed.emit(hosts)
            self.emitted += 1
        if self._jobs:
            jobs, self._jobs = self._jobs, set()
            self.jobs_changed.emit(jobs)
            self.emitted += 1
        if self._logs:
            logs, self._logs = self._logs, {}
            self.job_logs_appended.emit(logs)
            self.emitted += 1
        if self._snapshots:
            snaps, self._snapshots = self._snapshots, set()
            self.snapshots_changed.emit(snaps)
            self.emitted += 1
        if self._sources:
            sources, self._sources = self._sources, set()
            self.sources_changed.emit(sources)
            self.emitted += 1
        if self._repo_stats:
            stats, self._repo_stats = self._repo_stats, set()
            self.repo_stats_changed.emit(stats)
            self.emitted += 1
        if self._audit:
            self._audit = False
            self.audit_appended.emit()
            self.emitted += 1
        if self._alerts:
            alerts, self._alerts = self._alerts, {}
            self.alerts_changed.emit(alerts)
            self.emitted += 1
        if self._channels:
            self._channels = False
            self.channels_changed.emit()
            self.emitted += 1
        if self._pending_hosts:
            self._pending_hosts = False
            self.pending_hosts_changed.emit()
            self.emitted += 1
        if self._updates:
            updates, self._updates = self._updates, set()
            self.updates_changed.emit(updates)
            self.emitted += 1


def alters_counts(changes: Mapping[int, str]) -> bool:
    """Whether an ``alerts_changed`` payload may change the alert counts: a
    re-fire (bumped) keeps the alert's status and severity."""
    return any(transition != "bumped" for transition in changes.values())


def _alert_transition(previous: str | None, new: str) -> str:
    """The transition to report for an alert that changed again within one interval.

    The latest one wins, except that a re-fire never hides an earlier
    transition: an alert raised and bumped in the same interval is still new
    (the tray notifies new alerts only), and one acknowledged and bumped
    still changed status (a bump alone leaves the counts as they are, so
    listeners skip re-counting for it)."""
    if new == "bumped" and previous is not None:
        return previous
    return new
