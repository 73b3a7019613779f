"""The Prometheus exposition of the fleet (``GET /metrics``, opt-in).

Everything comes from one read of the store, taken and rendered on the store
thread: a scrape never walks the database from the event loop, and all the
numbers in one scrape belong to the same moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server_core.alert_rules import SEVERITIES, UNRESOLVED
from server_core.models import Host
from server_core.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "restic_manager_"
# Seconds: from a quick snapshot or check to a six-hour initial backup.
DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 21600)

# One row per enrolled host (one still waiting for its agent would only look
# down). The latest finished backup is an index seek on job(host_id, kind,
# finished_at), found by rowid and joined back, as in the fleet table.
_HOSTS_SQL = """
SELECT h.id, h.name, h.online, h.last_seen_at, h.presence_mode, h.os, h.arch,
       h.agent_version, h.restic_version, b.finished_at, b.status,
       (SELECT MAX(j.finished_at) FROM job j
         WHERE j.host_id = h.id AND j.kind = 'backup' AND j.finished_at IS NOT NULL
           AND j.status = 'succeeded'),
       (SELECT t.total_size FROM repo_stats t WHERE t.host_id = h.id),
       (SELECT COUNT(*) FROM snapshot s WHERE s.host_id = h.id),
       (SELECT COUNT(*) FROM alert a WHERE a.host_id = h.id AND a.status != 'resolved')
FROM (
    SELECT host.*,
           (SELECT j.rowid FROM job j
             WHERE j.host_id = host.id AND j.kind = 'backup' AND j.finished_at IS NOT NULL
             ORDER BY j.finished_at DESC, j.rowid DESC LIMIT 1) AS backup_row
    FROM host WHERE host.enrolled_at IS NOT NULL
) AS h
LEFT JOIN job b ON b.rowid = h.backup_row
ORDER BY h.name
"""
_ALERTS_SQL = """
SELECT status, severity, COUNT(*) FROM alert
WHERE status != 'resolved' GROUP BY status, severity
"""
_ACTIVE_JOBS_SQL = """
SELECT kind, status, COUNT(*) FROM job
WHERE status IN ('queued', 'running') GROUP BY kind, status
"""
# Cumulative bucket counts computed by SQLite: one pass over finished jobs,
# nothing per job in Python. A clock step can make a duration negative: 0.
# Built from constants only (no input reaches this string).
_HISTOGRAM_SQL = """
SELECT kind, status, COUNT(*), TOTAL(d), {buckets}
FROM (SELECT kind, status, MAX(finished_at - started_at, 0) AS d FROM job
      WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
        AND status IN ('succeeded', 'failed', 'cancelled'))
GROUP BY kind, status ORDER BY kind, status
""".format(  # noqa: S608 (constants only)
    buckets=", ".join(f"TOTAL(d <= {b:d})" for b in DURATION_BUCKETS)
)


@dataclass(frozen=True)
class HostSample:
    name: str
    online: bool
    last_seen_at: float | None
    presence_mode: str
    os: str | None
    arch: str | None
    agent_version: str | None
    restic_version: str | None
    last_backup_at: float | None
    last_backup_ok: bool | None
    last_success_at: float | None
    repo_size: int | None
    snapshots: int
    open_alerts: int


@dataclass(frozen=True)
class DurationSample:
    kind: str
    status: str
    count: int
    total_s: float
    buckets: tuple[int, ...]  # cumulative counts per DURATION_BUCKETS


@dataclass(frozen=True)
class FleetSnapshot:
    hosts: list[HostSample] = field(default_factory=list)
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, severity)
    active_jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, status)
    durations: list[DurationSample] = field(default_factory=list)


def read_snapshot() -> FleetSnapshot:
    """Store thread; the reads share one transaction, so one moment."""
    db = Host._meta.database
    with db.atomic():
        hosts = []
        for row in db.execute_sql(_HOSTS_SQL).fetchall():
            hosts.append(
                HostSample(
                    name=row[1],
                    online=bool(row[2]),
                    last_seen_at=row[3],
                    presence_mode=row[4] or "always_on",
                    os=row[5],
                    arch=row[6],
                    agent_version=row[7],
                    restic_version=row[8],
                    last_backup_at=row[9],
                    last_backup_ok=None if row[10] is None else row[10] == "succeeded",
                    last_success_at=row[11],
                    repo_size=row[12],
                    snapshots=int(row[13]),
                    open_alerts=int(row[14]),
                )
            )
        alerts = {(r[0], r[1]): int(r[2]) for r in db.execute_sql(_ALERTS_SQL).fetchall()}
        active = {(r[0], r[1]): int(r[2]) for r in db.execute_sql(_ACTIVE_JOBS_SQL).fetchall()}
        durations = [
            DurationSample(
                kind=r[0],
                status=r[1],
                count=int(r[2]),
                total_s=float(r[3]),
                buckets=tuple(int(c) for c in r[4:]),
            )
            for r in db.execute_sql(_HISTOGRAM_SQL).fetchall()
        ]
    return FleetSnapshot(hosts=hosts, alerts=alerts, active_jobs=active, durations=durations)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


class FleetCollector(Collector):
    """Renders one snapshot; a registry holding it lives for one scrape."""

    def __init__(self, snap: FleetSnapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self._snap
        yield from self._host_metrics(snap.hosts)

        hosts = _gauge("hosts", "Enrolled hosts.")
        hosts.add_metric([], len(snap.hosts))
        yield hosts
        online = _gauge("hosts_online", "Enrolled hosts whose agent is connected.")
        online.add_metric([], sum(h.online for h in snap.hosts))
        yield online

        alerts = _gauge(
            "alerts",
            "Unresolved alerts by status (open, acknowledged) and severity.",
            ["status", "severity"],
        )
        for status in UNRESOLVED:
            for severity in SEVERITIES:
                alerts.add_metric([status, severity], snap.alerts.get((status, severity), 0))
        yield alerts

        active = _gauge("jobs_active", "Queued and running jobs by kind.", ["kind", "status"])
        for (kind, status), n in sorted(snap.active_jobs.items()):
            active.add_metric([kind, status], n)
        yield active

        hist = HistogramMetricFamily(
            PREFIX + "job_duration_seconds",
            "Duration of finished jobs (started to finished) by kind and final status.",
            labels=["kind", "status"],
        )
        for d in snap.durations:
            buckets = [
                (str(float(b)), float(c)) for b, c in zip(DURATION_BUCKETS, d.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(d.count)))
            hist.add_metric([d.kind, d.status], buckets, d.total_s)
        yield hist

    def _host_metrics(self, hosts: list[HostSample]) -> Iterator[Metric]:
        info = _gauge(
            "host_info",
            "Always 1; the labels describe the host and its agent.",
            ["host", "presence_mode", "os", "arch", "agent_version", "restic_version"],
        )
        up = _gauge("host_online", "1 when the host's agent is connected.", ["host"])
        seen = _gauge(
            "host_last_seen_timestamp_seconds", "When the agent was last heard from.", ["host"]
        )
        last = _gauge(
            "host_last_backup_timestamp_seconds",
            "When the host's latest backup finished, whatever its outcome.",
            ["host"],
        )
        ok = _gauge(
            "host_last_backup_success", "1 when the host's latest backup succeeded.", ["host"]
        )
        good = _gauge(
            "host_last_successful_backup_timestamp_seconds",
            "When the host's latest successful backup finished.",
            ["host"],
        )
        size = _gauge("host_repo_size_bytes", "Repository size as restic stats reports.", ["host"])
        snaps = _gauge("host_snapshots", "Snapshots in the host's repository.", ["host"])
        open_alerts = _gauge(
            "host_open_alerts", "Unresolved (open or acknowledged) alerts of the host.", ["host"]
        )
        for h in hosts:
            labels = [h.name]
            info.add_metric(
                [
                    h.name,
                    h.presence_mode,
                    h.os or "",
                    h.arch or "",
                    h.agent_version or "",
                    h.restic_version or "",
                ],
                1,
            )
            up.add_metric(labels, int(h.online))
            # A value that does not exist yet is left out rather than faked as 0.
            if h.last_seen_at is not None:
                seen.add_metric(labels, h.last_seen_at)
            if h.last_backup_at is not None:
                last.add_metric(labels, h.last_backup_at)
                ok.add_metric(labels, int(bool(h.last_backup_ok)))
            if h.last_success_at is not None:
                good.add_metric(labels, h.last_success_at)
            if h.repo_size is not None:
                size.add_metric(labels, h.repo_size)
            snaps.add_metric(labels, h.snapshots)
            open_alerts.add_metric(labels, h.open_alerts)
        yield from (info, up, seen, last, ok, good, size, snaps, open_alerts)


def render_sync() -> bytes:
    """Read and render on the store thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(read_snapshot()))
    return generate_latest(registry)


async def render(store: Store) -> bytes:
    return await store.call(render_sync)
