"""The tray icon: fleet health at a glance, a short menu, notifications.

The icon reflects ``fleet_health`` over the fleet rows (ok / warning /
critical) and the worst unresolved alert, whichever is worse, refreshed
when hosts or alerts change — throttled to a couple of times a second
however busy the fleet is. In the app the rows come from the fleet view's
model (``fleet=``), which already follows every change, so the tray never
reads the fleet a second time; without one (tests, tools) the tray reads
``list_hosts()`` itself.

Notifications: one per newly raised alert (its severity badge, "host:
message"); several raised in one flush make one summary instead. Clicking
a notification opens the Alerts view on that alert (on the Open tab for a
summary). Failed jobs that raise no alert of their own (a restore, a diff,
an unlock) are still notified; a failed backup, check, … is the alert's.
An offline host is notified through its ``agent_offline`` alert, after
the heartbeat timeout, so an agent restart makes no noise.

Without a system tray (``QT_QPA_PLATFORM=offscreen``, a desktop without a
tray) everything still runs — state, menu and notification requests are
kept on the object for tests — and ``available`` says so, so the shell can
make closing the window quit instead of stranding the app invisibly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PySide6.QtCore import QObject, QTimer, Signal, SignalInstance
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from server_core.alert_rules import JOB_ALERTS
from server_core.errors import NotFound
from server_core.views import AlertCounts, AlertView, HostView, JobView
from ui_qt.alerts_model import (
    RESOLVED,
    first_line,
    kind_label,
    severity_icon,
    severity_label,
    severity_rank,
)
from ui_qt.bridge import alters_counts
from ui_qt.context import UiContext
from ui_qt.fleet_health import CRITICAL, OK, WARNING, FleetHealth, fleet_health
from ui_qt.fleet_model import FleetModel
from ui_qt.host_tabs.common import SingleFlight

log = logging.getLogger(__name__)

ICONS_DIR = Path(__file__).resolve().parent.parent / "resources" / "icons"
REFRESH_MS = 500
MAX_MENU_HOSTS = 15
# A burst (a network outage, a wave of failing backups) is one notification.
MAX_NAMES_IN_MESSAGE = 3
# A summary names a few new alerts and counts the rest: no need to read them all.
MAX_ALERTS_READ = 20
_TERMINAL = ("succeeded", "failed", "cancelled")
# Job kinds whose failure raises an alert: the alert is the notification.
_ALERTED_KINDS = frozenset(JOB_ALERTS)
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
_SEVERITY_LEVEL = {"critical": CRITICAL, "warning": WARNING}
_KIND_LABEL = {
    "backup": "Backup",
    "init": "Repository init",
    "forget": "Forget",
    "prune": "Prune",
    "check": "Check",
    "unlock": "Unlock",
    "restore": "Restore",
    "diff": "Diff",
    "update": "Agent update",
}


class TrayWindow(Protocol):
    """What the tray asks of the main window."""

    def bring_to_front(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def show_alerts(self, alert_id: int | None = None) -> None: ...

    def quit_app(self) -> None: ...


@dataclass(frozen=True)
class Notification:
    title: str
    message: str
    level: str  # info | warning | critical
    host_id: int | None
    at: float
    # The alert a click opens; opens_alerts without one: the Alerts view (a summary).
    alert_id: int | None = None
    opens_alerts: bool = False


def alerts_summary(counts: AlertCounts | None) -> str:
    """``3 open alerts (1 acknowledged)``: unresolved alerts, acknowledged ones among them."""
    if counts is None:
        return "Alerts: not counted yet"
    unresolved = counts.open + counts.acknowledged
    if unresolved == 0:
        return "No open alerts"
    text = f"{unresolved} open alert{'s' if unresolved != 1 else ''}"
    return f"{text} ({counts.acknowledged} acknowledged)" if counts.acknowledged else text


def alerts_level(counts: AlertCounts | None) -> str:
    """The tray level the worst unresolved alert asks for (info is no reason to worry)."""
    if counts is None or counts.open + counts.acknowledged == 0:
        return OK
    return _SEVERITY_LEVEL.get(counts.worst_severity or "", OK)


def _alert_line(alert: AlertView) -> str:
    return (
        f"{alert.host_name}: {kind_label(alert.kind)}"
        if alert.host_name
        else kind_label(alert.kind)
    )


def tray_icon(level: str, icons_dir: Path = ICONS_DIR) -> QIcon:
    return QIcon(str(icons_dir / f"tray-{level}.svg"))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    extra = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {extra} more" if extra > 0 else shown


class Tray(QObject):
    health_changed = Signal(object)  # FleetHealth
    notified = Signal(object)  # Notification

    def __init__(
        self,
        ctx: UiContext,
        window: TrayWindow,
        *,
        fleet: FleetModel | None = None,
        icons_dir: Path = ICONS_DIR,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.window = window
        self.fleet = fleet
        self.available = QSystemTrayIcon.isSystemTrayAvailable()
        self.health = fleet_health([])
        self.alert_counts: AlertCounts | None = None
        # The icon's level: the fleet's health or the worst unresolved alert.
        self.level = OK
        self.notifications: list[Notification] = []
        self.refreshes = 0
        self._icons = {level: tray_icon(level, icons_dir) for level in (OK, WARNING, CRITICAL)}
        self._hosts: dict[int, HostView] = {}
        self._stopped = False
        self._refreshing = False
        self._refresh_again = False
        self._checking_jobs = False
        self._pending_jobs: set[str] = set()
        # Jobs already seen finished: not fetched again, never notified twice.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._last_note: Notification | None = None
        self._told_hidden = False
        self._new_alerts: set[int] = set()
        self._severity_icons: dict[str, QIcon] = {}

        self.icon = QSystemTrayIcon(self)
        self.icon.setIcon(self._icons[OK])
        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.open_action = QAction("&Open restic-manager", self.menu)
        self.open_action.triggered.connect(self.window.bring_to_front)
        self.status_action = QAction("", self.menu)
        self.status_action.setEnabled(False)
        self.alerts_action = QAction(alerts_summary(None), self.menu)
        self.alerts_action.setToolTip("Open the Alerts view")
        self.alerts_action.triggered.connect(lambda: self.open_alerts(None))
        self.attention_menu = QMenu("Needs attention", self.menu)
        self.quit_action = QAction("&Quit", self.menu)
        self.quit_action.triggered.connect(self.window.quit_app)
        self.menu.addAction(self.open_action)
        self.menu.addSeparator()
        self.menu.addAction(self.status_action)
        self.menu.addAction(self.alerts_action)
        self.menu.addMenu(self.attention_menu)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._on_activated)
        self.icon.messageClicked.connect(self.message_clicked)

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh_now)
        self._jobs_timer = QTimer(self)
        self._jobs_timer.setSingleShot(True)
        self._jobs_timer.setInterval(REFRESH_MS)
        self._jobs_timer.timeout.connect(self._check_jobs_now)
        self.counts_loader: SingleFlight[AlertCounts] = SingleFlight(
            self,
            ctx.runner,
            "counting alerts for the tray",
            ctx.alerts.counts,
            self._counts_loaded,
            self._background_failed,
        )
        self.new_alerts_loader: SingleFlight[tuple[list[AlertView], int]] = SingleFlight(
            self,
            ctx.runner,
            "reading new alerts",
            self._fetch_new_alerts,
            self._new_alerts_loaded,
            self._background_failed,
        )
        self._connections: list[tuple[SignalInstance, Callable[..., None]]] = [
            (ctx.bridge.jobs_changed, self._jobs_dirty),
            (ctx.bridge.alerts_changed, self._alerts_changed),
        ]
        if fleet is not None:
            self._connections.append((fleet.applied, self._hosts_dirty))
        else:
            self._connections += [
                (ctx.bridge.hosts_changed, self._hosts_dirty),
                (ctx.bridge.hosts_removed, self._hosts_dirty),
            ]
        # A deleted host takes its alerts along.
        self._connections.append((ctx.bridge.hosts_removed, self._count_alerts))
        for signal, slot in self._connections:
            signal.connect(slot)
        self._apply(self.health)

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        if self.available:
            self.icon.show()
        self.refresh_now()
        self.counts_loader.request()

    def stop(self) -> None:
        self._stopped = True
        self._refresh_timer.stop()
        self._jobs_timer.stop()
        self.counts_loader.stop()
        self.new_alerts_loader.stop()
        for signal, slot in self._connections:
            # The sender (the fleet model with its window) may be gone already.
            with contextlib.suppress(RuntimeError, TypeError):
                signal.disconnect(slot)
        self._connections.clear()
        self.icon.hide()

    # -- fleet health ------------------------------------------------------------

    def _hosts_dirty(self, _ids: object = None) -> None:
        if self._stopped:
            return
        if self._refreshing:
            self._refresh_again = True
        elif not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def refresh_now(self) -> None:
        if self._stopped:
            return
        if self.fleet is not None:
            # The fleet view keeps the rows current; nothing to read.
            if self.fleet.loaded():
                self.refreshes += 1
                self.update_hosts(self.fleet.hosts())
            return
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self.ctx.runner.run(
            self.ctx.hosts.list_hosts(),
            what="refreshing the tray",
            on_done=self._hosts_loaded,
            on_error=self._refresh_failed,
        )

    def _refresh_failed(self, exc: Exception) -> None:
        # Background upkeep: log it, never pop a dialog (e.g. during shutdown).
        self._refreshing = False
        if not self._stopped:
            log.warning("tray refresh failed: %s", exc)

    def _hosts_loaded(self, hosts: list[HostView]) -> None:
        self._refreshing = False
        if self._stopped:
            return
        self.refreshes += 1
        self.update_hosts(hosts)
        if self._refresh_again:
            self._refresh_again = False
            self._refresh_timer.start()

    def update_hosts(self, hosts: Iterable[HostView]) -> None:
        """Apply a fresh fleet: health and menu (an offline host notifies through its alert)."""
        rows = list(hosts)
        self._hosts = {h.id: h for h in rows}
        self._apply(fleet_health(rows))

    def _apply(self, health: FleetHealth) -> None:
        self.health = health
        alert_level = alerts_level(self.alert_counts)
        level = alert_level if _RANK[alert_level] > _RANK[health.level] else health.level
        self.level = level
        self.icon.setIcon(self._icons[level])
        headline = {OK: "all good", WARNING: "needs attention", CRITICAL: "failing"}[level]
        tooltip = f"restic-manager — {headline}\n{health.tooltip}"
        counts = self.alert_counts
        unresolved = 0 if counts is None else counts.open + counts.acknowledged
        if unresolved:
            tooltip += f"\n{alerts_summary(counts)}"
        self.icon.setToolTip(tooltip)
        self.status_action.setText(health.tooltip)
        self.alerts_action.setText(alerts_summary(counts))
        self.alerts_action.setEnabled(counts is not None)
        worst = counts.worst_severity if counts is not None and unresolved else None
        self.alerts_action.setIcon(self._severity_icon(worst) if worst else QIcon())
        self.attention_menu.clear()
        if health.attention:
            self.attention_menu.setTitle(f"Needs attention ({len(health.attention)})")
            self.attention_menu.setEnabled(True)
            for item in health.attention[:MAX_MENU_HOSTS]:
                action = self.attention_menu.addAction(self._icons[item.level], item.summary)
                action.setData(item.host_id)
                action.triggered.connect(self._open_attention)
            more = len(health.attention) - MAX_MENU_HOSTS
            if more > 0:
                action = self.attention_menu.addAction(f"…and {more} more")
                action.triggered.connect(self.window.bring_to_front)
        else:
            self.attention_menu.setTitle("Nothing needs attention")
            self.attention_menu.setEnabled(False)
        self.health_changed.emit(health)

    def _open_attention(self) -> None:
        action = self.sender()
        if isinstance(action, QAction) and isinstance(action.data(), int):
            self.open_host(action.data())

    def open_host(self, host_id: int) -> None:
        self.window.open_host(host_id)
        self.window.bring_to_front()

    def open_alerts(self, alert_id: int | None) -> None:
        self.window.show_alerts(alert_id)
        self.window.bring_to_front()

    def _severity_icon(self, severity: str) -> QIcon:
        icon = self._severity_icons.get(severity)
        if icon is None:
            icon = self._severity_icons[severity] = severity_icon(severity, 64)
        return icon

    def _background_failed(self, exc: Exception) -> None:
        # Background upkeep: log it, never pop a dialog (e.g. during shutdown).
        if not self._stopped:
            log.warning("tray alert upkeep failed: %s", exc)

    # -- alerts ------------------------------------------------------------------

    def _count_alerts(self, _ids: object = None) -> None:
        if not self._stopped:
            self.counts_loader.request()

    def _alerts_changed(self, changes: object) -> None:
        if self._stopped or not isinstance(changes, dict):
            return
        if alters_counts(changes):
            self.counts_loader.request()
        raised = {int(i) for i, t in changes.items() if t == "raised"}
        if raised:
            self._new_alerts |= raised
            self.new_alerts_loader.request()

    def _counts_loaded(self, counts: AlertCounts) -> None:
        if self._stopped or counts == self.alert_counts:
            return
        self.alert_counts = counts
        self._apply(self.health)

    async def _fetch_new_alerts(self) -> tuple[list[AlertView], int]:
        ids, self._new_alerts = sorted(self._new_alerts), set()
        alerts = []
        for alert_id in ids[:MAX_ALERTS_READ]:
            with contextlib.suppress(NotFound):  # its host was deleted meanwhile
                alerts.append(await self.ctx.alerts.get_alert(alert_id))
        return alerts, len(ids)

    def _new_alerts_loaded(self, result: tuple[list[AlertView], int]) -> None:
        alerts, total = result
        # Resolved by the time it was read (a flapping condition): nothing to say.
        alerts = [a for a in alerts if a.status != RESOLVED]
        unread = total - min(total, MAX_ALERTS_READ)
        if self._stopped or not alerts:
            return
        if len(alerts) == 1 and unread == 0:
            self._notify_alert(alerts[0])
        else:
            self._notify_alerts(alerts, len(alerts) + unread)

    def _notify_alert(self, alert: AlertView) -> None:
        text = first_line(alert.message, 200)
        # "host: message", unless the message names the host already.
        if alert.host_name and alert.host_name not in text:
            text = f"{alert.host_name}: {text}"
        self.notify(
            f"{severity_label(alert.severity)}: {kind_label(alert.kind)}",
            text,
            alert.severity,
            alert.host_id,
            alert_id=alert.id,
        )

    def _notify_alerts(self, alerts: list[AlertView], total: int) -> None:
        alerts = sorted(alerts, key=lambda a: (-severity_rank(a.severity), a.id))
        lines = [_alert_line(a) for a in alerts[:MAX_NAMES_IN_MESSAGE]]
        extra = total - len(lines)
        message = ", ".join(lines) + (f" and {extra} more." if extra > 0 else ".")
        self.notify(
            f"{total} new alerts",
            message,
            alerts[0].severity,
            None,
            opens_alerts=True,
        )

    # -- job failures ------------------------------------------------------------

    def _jobs_dirty(self, ids: object) -> None:
        if self._stopped or not isinstance(ids, set | frozenset | list):
            return
        fresh = {str(i) for i in ids if i not in self._finished}
        if not fresh:
            return
        self._pending_jobs |= fresh
        if not self._checking_jobs and not self._jobs_timer.isActive():
            self._jobs_timer.start()

    def _check_jobs_now(self) -> None:
        if self._stopped or self._checking_jobs or not self._pending_jobs:
            return
        ids, self._pending_jobs = sorted(self._pending_jobs), set()
        self._checking_jobs = True
        self.ctx.runner.run(
            self._fetch_jobs(ids),
            what="checking finished jobs",
            on_done=self._jobs_loaded,
            on_error=self._jobs_failed,
        )

    async def _fetch_jobs(self, ids: list[str]) -> list[JobView]:
        jobs = []
        for job_id in ids:
            try:
                jobs.append(await self.ctx.jobs.get_job(job_id))
            except Exception as exc:  # a deleted host takes its jobs along
                log.debug("job %s vanished: %s", job_id, exc)
        return jobs

    def _jobs_failed(self, exc: Exception) -> None:
        self._checking_jobs = False
        if not self._stopped:
            log.warning("checking jobs for the tray failed: %s", exc)

    def _jobs_loaded(self, jobs: list[JobView]) -> None:
        self._checking_jobs = False
        if self._stopped:
            return
        failed = []
        for job in jobs:
            if job.status not in _TERMINAL or job.id in self._finished:
                continue
            self._finished[job.id] = None
            if len(self._finished) > 10_000:
                self._finished.popitem(last=False)
            if job.status == "failed" and job.kind not in _ALERTED_KINDS:
                failed.append(job)
        if failed:
            self._notify_failed(failed)
        if self._pending_jobs:
            self._jobs_timer.start()

    def _host_name(self, host_id: int) -> str:
        host = self._hosts.get(host_id)
        return host.name if host is not None else f"host {host_id}"

    def _notify_failed(self, jobs: list[JobView]) -> None:
        if len(jobs) == 1:
            job = jobs[0]
            kind = _KIND_LABEL.get(job.kind, job.kind.capitalize())
            detail = (job.error or "").strip().splitlines()
            message = detail[0] if detail else "See the job log for details."
            if len(message) > 200:
                message = message[:199] + "…"
            self.notify(
                f"{kind} failed on {self._host_name(job.host_id)}", message, CRITICAL, job.host_id
            )
            return
        names = list(dict.fromkeys(self._host_name(j.host_id) for j in jobs))
        self.notify(f"{len(jobs)} jobs failed", f"On {_names(names)}.", CRITICAL, None)

    # -- notifications -------------------------------------------------------------

    def notify(
        self,
        title: str,
        message: str,
        level: str,
        host_id: int | None = None,
        *,
        alert_id: int | None = None,
        opens_alerts: bool = False,
    ) -> None:
        """Show a tray notification (or, without a tray, only record the request).

        ``level`` is a severity (info | warning | critical): its badge is the
        notification's icon, so severity is not told by colour alone."""
        note = Notification(
            title,
            message,
            level,
            host_id,
            time.time(),
            alert_id=alert_id,
            opens_alerts=opens_alerts or alert_id is not None,
        )
        self.notifications.append(note)
        del self.notifications[:-200]
        self._last_note = note
        log.info("notification: %s — %s", title, message)
        if self.available and self.icon.isVisible() and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(title, message, self._severity_icon(level), 15_000)
        self.notified.emit(note)

    def window_hidden(self) -> None:
        """The window was closed to the tray: say so, once per session."""
        if self._told_hidden or not (self.available and self.icon.isVisible()):
            return
        self._told_hidden = True
        self.icon.showMessage(
            "restic-manager is still running",
            "The control plane keeps serving your agents. Open it again from the tray icon; "
            "Quit is in its menu.",
            QSystemTrayIcon.MessageIcon.Information,
            8_000,
        )

    def message_clicked(self) -> None:
        """The operator clicked the last notification: open what it was about."""
        note = self._last_note
        if note is not None and note.opens_alerts:
            self.open_alerts(note.alert_id)
        elif note is not None and note.host_id is not None and note.host_id in self._hosts:
            self.open_host(note.host_id)
        else:
            self.window.bring_to_front()

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.window.bring_to_front()
