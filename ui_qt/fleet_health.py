"""How healthy the fleet is, at a glance: the tray icon, its tooltip and its menu.

A pure function over the fleet rows, so the rules are easy to test and the
tray only decides how to show them.

- critical: the last backup failed, or the repository could not be initialised;
- warning: an always-on host is offline, the repository is locked (a stale
  lock blocks forget/prune/check), the last backup had warnings, open
  alerts, or the last successful backup is older than ``STALE_AFTER_S``;
- ok: everything else. A laptop being offline is normal; a host whose agent
  has not enrolled yet is counted as "awaiting agent", not as a problem.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from server_core.views import HostView

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}

# No schedule information reaches the fleet rows yet: a week without a
# successful backup is worth a look on any host.
STALE_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class Attention:
    host_id: int
    name: str
    level: str  # warning | critical
    reasons: tuple[str, ...]

    @property
    def summary(self) -> str:
        return f"{self.name} — {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class FleetHealth:
    level: str
    total: int = 0
    online: int = 0
    offline: int = 0
    awaiting: int = 0
    failing: int = 0  # hosts at critical level
    warnings: int = 0  # hosts at warning level
    attention: list[Attention] = field(default_factory=list)

    @property
    def tooltip(self) -> str:
        """One line for the tray, e.g. ``5/6 online · 1 failing``."""
        if self.total == 0:
            return "No hosts yet"
        parts = [f"{self.online}/{self.total} online"]
        if self.failing:
            parts.append(f"{self.failing} failing")
        if self.warnings:
            verb = "needs" if self.warnings == 1 else "need"
            parts.append(f"{self.warnings} {verb} attention")
        if self.awaiting:
            parts.append(f"{self.awaiting} awaiting agent")
        return " · ".join(parts)


def _days(seconds: float) -> str:
    days = int(seconds // 86400)
    return f"{days} day" if days == 1 else f"{days} days"


def assess_host(host: HostView, now: float) -> tuple[str, list[str]]:
    """The level of one host and why, most serious reason first."""
    critical: list[str] = []
    warning: list[str] = []
    if host.last_backup_status == "failed":
        critical.append("last backup failed")
    if host.repo_status == "init_failed":
        critical.append("repository init failed")
    if host.enrolled and host.status != "online" and host.presence_mode != "laptop":
        warning.append("offline")
    if host.repo_status == "locked":
        warning.append("repository locked")
    if host.last_backup_status == "succeeded_with_warnings":
        warning.append("last backup had warnings")
    if (
        host.last_backup_at is not None
        and host.last_backup_status != "failed"
        and now - host.last_backup_at > STALE_AFTER_S
    ):
        warning.append(f"no backup for {_days(now - host.last_backup_at)}")
    if host.open_alerts:
        plural = "s" if host.open_alerts != 1 else ""
        warning.append(f"{host.open_alerts} open alert{plural}")
    if critical:
        return CRITICAL, critical + warning
    if warning:
        return WARNING, warning
    return OK, []


def fleet_health(hosts: Iterable[HostView], now: float | None = None) -> FleetHealth:
    now = time.time() if now is None else now
    level = OK
    total = online = offline = awaiting = failing = warnings = 0
    attention: list[Attention] = []
    for host in hosts:
        total += 1
        if host.status == "online":
            online += 1
        elif host.enrolled:
            offline += 1
        else:
            awaiting += 1
        host_level, reasons = assess_host(host, now)
        if host_level == CRITICAL:
            failing += 1
        elif host_level == WARNING:
            warnings += 1
        if host_level != OK:
            attention.append(Attention(host.id, host.name, host_level, tuple(reasons)))
            if _RANK[host_level] > _RANK[level]:
                level = host_level
    attention.sort(key=lambda a: (-_RANK[a.level], a.name.lower(), a.host_id))
    return FleetHealth(
        level=level,
        total=total,
        online=online,
        offline=offline,
        awaiting=awaiting,
        failing=failing,
        warnings=warnings,
        attention=attention,
    )
