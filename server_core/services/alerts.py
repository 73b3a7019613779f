"""Alerts: the operator's list (acknowledge, resolve) and the engine that
raises and clears them from job outcomes, agent presence and backup freshness.

Two kinds of rule:

* **Events** (a backup, forget, prune, check or init job failed): every new
  failure counts once. The newest job finish counted is the alert's
  ``last_seen_at``, so a replayed ``job.finished`` never counts twice and a
  later success of the same key resolves it.
* **Conditions** (agent offline, no recent backup, repository not usable):
  raised once when the condition starts to hold, resolved when it clears.
  An operator who resolves one while it still holds has closed that
  problem: it is raised again only after it cleared and came back.

Everything an evaluation changes is written in one transaction, audited in
it, and published as ``AlertChanged`` after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from server_core import alert_rules, audit, cron
from server_core.alert_rules import JOB_ALERTS, UNRESOLVED, dedup_key
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import (
    AlertChanged,
    Event,
    HostChanged,
    HostRemoved,
    JobChanged,
    SourcesChanged,
)
from server_core.models import Alert, Host
from server_core.services.context import Actor, ServiceContext
from server_core.views import AlertCounts, AlertView

log = logging.getLogger(__name__)

Clock = Callable[[], float]

MAX_IDS = 1000
MAX_LIMIT = 10_000

# -- store thread: reading -----------------------------------------------------

_VIEW_SQL = """
SELECT a.id, a.kind, a.severity, a.host_id, h.name, a.status, a.message, a.first_seen_at,
       a.last_seen_at, a.count, a.acknowledged_at, a.resolved_at
FROM alert a LEFT JOIN host h ON h.id = a.host_id
"""


def _views(where: str = "", params: Iterable[Any] = (), tail: str = "") -> list[AlertView]:
    db = Alert._meta.database
    rows = db.execute_sql(f"{_VIEW_SQL} {where} {tail}", list(params)).fetchall()
    return [AlertView(*row) for row in rows]


def views_by_id(ids: list[int]) -> list[AlertView]:
    """Views of ``ids`` that exist, in the order of ``ids``."""
    if not ids:
        return []
    found = {v.id: v for v in _views(f"WHERE a.id IN ({','.join('?' * len(ids))})", ids)}
    return [found[i] for i in ids if i in found]


def list_views(status: str | None, host_id: int | None, limit: int) -> list[AlertView]:
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append("a.status = ?")
        params.append(status)
    if host_id is not None:
        clauses.append("a.host_id = ?")
        params.append(host_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return _views(where, [*params, limit], "ORDER BY a.last_seen_at DESC, a.id DESC LIMIT ?")


def alert_counts() -> AlertCounts:
    db = Alert._meta.database
    rows = db.execute_sql(
        "SELECT status, severity, COUNT(*) FROM alert WHERE status != 'resolved' "
        "GROUP BY status, severity"
    ).fetchall()
    by_status = {"open": 0, "acknowledged": 0}
    worst: str | None = None
    for status, severity, n in rows:
        by_status[status] = by_status.get(status, 0) + int(n)
        if worst is None or alert_rules.severity_rank(severity) > alert_rules.severity_rank(worst):
            worst = severity
    return AlertCounts(
        open=by_status["open"], acknowledged=by_status["acknowledged"], worst_severity=worst
    )


def _unresolved(key: str) -> Alert | None:
    alert: Alert | None = (
        Alert.select()
        .where((Alert.dedup_key == key) & Alert.status.in_(UNRESOLVED))
        .order_by(Alert.id.desc())
        .first()
    )
    return alert


def _latest(key: str) -> tuple[str, float, float | None, str | None] | None:
    """(status, last_seen_at, resolved_at, resolved_by) of the key's newest alert."""
    row = Alert._meta.database.execute_sql(
        "SELECT status, last_seen_at, resolved_at, resolved_by FROM alert "
        "WHERE dedup_key = ? ORDER BY id DESC LIMIT 1",
        (key,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3])


# -- store thread: writing (inside the caller's transaction) ------------------


def fire_in_tx(
    kind: str,
    host_id: int | None,
    message: str,
    key: str,
    *,
    now: float,
    first_seen: float | None = None,
    last_seen: float | None = None,
    count: int = 1,
) -> AlertChanged:
    """Raise an alert, or bump the unresolved one with the same key."""
    severity = alert_rules.severity_of(kind)
    last = now if last_seen is None else last_seen
    existing = _unresolved(key)
    if existing is not None:
        existing.count += count
        existing.last_seen_at = max(existing.last_seen_at, last)
        existing.message = message
        existing.save()
        return AlertChanged(existing.id, host_id, "bumped", existing.severity)
    alert = Alert.create(
        host=host_id,
        kind=kind,
        severity=severity,
        dedup_key=key,
        status="open",
        message=message,
        first_seen_at=last if first_seen is None else first_seen,
        last_seen_at=last,
        count=count,
    )
    audit.record(
        "system",
        "alert.raised",
        target_kind="alert",
        target_id=alert.id,
        payload={
            "kind": kind,
            "severity": severity,
            "host_id": host_id,
            "dedup_key": key,
            "message": message,
            "count": count,
        },
        ts=now,
    )
    return AlertChanged(alert.id, host_id, "raised", severity)


def resolve_in_tx(key: str, *, now: float, reason: str) -> AlertChanged | None:
    """Resolve the key's unresolved alert because its condition cleared."""
    alert = _unresolved(key)
    if alert is None:
        return None
    before = alert.status
    alert.status = "resolved"
    alert.resolved_at = now
    alert.resolved_by = "system"
    alert.save()
    audit.record(
        "system",
        "alert.resolved",
        target_kind="alert",
        target_id=alert.id,
        payload={
            "kind": alert.kind,
            "host_id": alert.host_id,
            "dedup_key": key,
            "before": before,
            "reason": reason,
            "automatic": True,
        },
        ts=now,
    )
    return AlertChanged(alert.id, alert.host_id, "resolved", alert.severity)


def _closed_by_operator(key: str, since: float) -> bool:
    """Whether an operator resolved this key's problem after it started."""
    latest = _latest(key)
    if latest is None:
        return False
    status, _, resolved_at, resolved_by = latest
    return (
        status == "resolved"
        and resolved_by not in (None, "system")
        and resolved_at is not None
        and resolved_at >= since
    )


def raise_condition_in_tx(
    kind: str, host_id: int, message: str, *, now: float, since: float, key: str | None = None
) -> AlertChanged | None:
    """Raise a condition alert unless one is unresolved or an operator
    already closed this occurrence (the condition has held since ``since``)."""
    key = key or dedup_key(kind, host_id)
    if _unresolved(key) is not None or _closed_by_operator(key, since):
        return None
    return fire_in_tx(kind, host_id, message, key, now=now)


# -- the service --------------------------------------------------------------


def _clean_ids(alert_ids: Any) -> list[int]:
    if not isinstance(alert_ids, list | tuple) or not alert_ids:
        raise InvalidInput("'ids' must be a non-empty list of alert ids", field="ids")
    if len(alert_ids) > MAX_IDS:
        raise InvalidInput(f"'ids' may name at most {MAX_IDS} alerts at once", field="ids")
    for i in alert_ids:
        if not isinstance(i, int) or isinstance(i, bool) or i < 1:
            raise InvalidInput(f"'ids' must hold positive whole numbers, got {i!r}", field="ids")
    return list(dict.fromkeys(alert_ids))


def _label(view: AlertView) -> str:
    on = f" on {view.host_name}" if view.host_name else ""
    return f"alert {view.id} ({view.kind}{on})"


class AlertService:
    def __init__(self, ctx: ServiceContext, *, clock: Clock = time.time) -> None:
        self._ctx = ctx
        self._clock = clock

    async def list_alerts(
        self, status: str | None = None, host_id: int | None = None, limit: int = 1000
    ) -> list[AlertView]:
        """Alerts, newest ``last_seen_at`` first; ``status`` None means all."""
        if status is not None and status not in alert_rules.STATUSES:
            raise InvalidInput(
                "'status' must be one of open, acknowledged, resolved", field="status"
            )
        if host_id is not None and (
            not isinstance(host_id, int) or isinstance(host_id, bool) or host_id < 1
        ):
            raise InvalidInput("'host_id' must be a host id", field="host_id")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"'limit' must be between 1 and {MAX_LIMIT}", field="limit")
        return await self._ctx.store.call(list_views, status, host_id, limit)

    async def get_alert(self, alert_id: int) -> AlertView:
        found = await self._ctx.store.call(views_by_id, [alert_id])
        if not found:
            raise NotFound(f"alert {alert_id} does not exist")
        return found[0]

    async def counts(self) -> AlertCounts:
        return await self._ctx.store.call(alert_counts)

    async def acknowledge(self, alert_ids: list[int], actor: Actor) -> list[AlertView]:
        """open → acknowledged, all of ``alert_ids`` or none."""
        return await self._transition(alert_ids, actor, "acknowledged")

    async def resolve(self, alert_ids: list[int], actor: Actor) -> list[AlertView]:
        """open or acknowledged → resolved, all of ``alert_ids`` or none."""
        return await self._transition(alert_ids, actor, "resolved")

    async def _transition(self, alert_ids: list[int], actor: Actor, to: str) -> list[AlertView]:
        ids = _clean_ids(alert_ids)
        now = self._clock()

        def run() -> tuple[list[AlertView], list[Event]]:
            before = views_by_id(ids)
            known = {v.id for v in before}
            for alert_id in ids:
                if alert_id not in known:
                    raise NotFound(f"alert {alert_id} does not exist")
            for view in before:
                _check_transition(view, to)
            events: list[Event] = []
            for view in before:
                values: dict[Any, Any] = {Alert.status: to}
                if to == "acknowledged":
                    values[Alert.acknowledged_at] = now
                else:
                    values[Alert.resolved_at] = now
                    values[Alert.resolved_by] = actor.kind
                Alert.update(values).where(Alert.id == view.id).execute()
                audit.record(
                    actor.kind,
                    f"alert.{to}",
                    actor_id=actor.id,
                    target_kind="alert",
                    target_id=view.id,
                    payload={
                        "kind": view.kind,
                        "host_id": view.host_id,
                        "host": view.host_name,
                        "before": view.status,
                        "message": view.message,
                    },
                    ts=now,
                )
                events.append(AlertChanged(view.id, view.host_id, to, view.severity))
            return views_by_id(ids), events

        views, events = await self._ctx.store.transaction(run)
        self._ctx.bus.publish_all(events)
        return views

    async def fire(
        self,
        kind: str,
        host_id: int | None,
        message: str,
        *,
        key_suffix: str | int | None = None,
    ) -> AlertView:
        """Raise an alert from code outside the engine (e.g. update_failed),
        or bump the unresolved one with the same key."""
        if kind not in alert_rules.KINDS:
            raise InvalidInput(f"unknown alert kind {kind!r}", field="kind")
        if not isinstance(message, str) or not message.strip():
            raise InvalidInput("an alert needs a message", field="message")
        key = dedup_key(kind, host_id, key_suffix)
        now = self._clock()

        def run() -> tuple[AlertView, AlertChanged]:
            if host_id is not None and Host.get_or_none(Host.id == host_id) is None:
                raise NotFound(f"host {host_id} does not exist")
            event = fire_in_tx(kind, host_id, message.strip(), key, now=now)
            return views_by_id([event.alert_id])[0], event

        view, event = await self._ctx.store.transaction(run)
        self._ctx.bus.publish(event)
        return view

    async def clear(
        self,
        kind: str,
        host_id: int | None,
        *,
        key_suffix: str | int | None = None,
        reason: str = "the condition cleared",
    ) -> None:
        """Resolve the unresolved alert of this key, if any (system actor)."""
        if kind not in alert_rules.KINDS:
            raise InvalidInput(f"unknown alert kind {kind!r}", field="kind")
        key = dedup_key(kind, host_id, key_suffix)
        now = self._clock()
        event = await self._ctx.store.transaction(resolve_in_tx, key, now=now, reason=reason)
        if event is not None:
            self._ctx.bus.publish(event)


def _check_transition(view: AlertView, to: str) -> None:
    if to == "acknowledged" and view.status != "open":
        raise Conflict(
            f"{_label(view)} is already {view.status}: only open alerts can be acknowledged"
        )
    if to == "resolved" and view.status == "resolved":
        raise Conflict(f"{_label(view)} is already resolved")


# -- the engine ---------------------------------------------------------------

_HOSTS_SQL = """
SELECT h.id, h.name, h.online, h.presence_mode, h.enrolled_at, h.last_seen_at,
       h.repo_status, h.repo_status_error, h.repo_status_at,
       (SELECT j.finished_at FROM job j
         WHERE j.host_id = h.id AND j.kind = 'backup' AND j.status = 'succeeded'
           AND j.finished_at IS NOT NULL
         ORDER BY j.finished_at DESC LIMIT 1)
FROM host h {where}
"""
# Schedules that back something up: one without groups promises nothing.
_SCHEDULES_SQL = """
SELECT s.host_id, s.cron, s.created_at FROM schedule s
WHERE s.enabled AND EXISTS (SELECT 1 FROM schedule_group g WHERE g.schedule_id = s.id) {and_hosts}
"""
_CONDITION_KINDS = ("agent_offline", "stale_backup", "repo_init_failed")
_UNRESOLVED_CONDITIONS_SQL = """
SELECT dedup_key FROM alert
WHERE status != 'resolved' AND kind IN ({kinds}) {and_hosts}
"""
# The alert keys a batch of changed jobs touches: finished jobs of alerting kinds.
_JOB_KEYS_SQL = """
SELECT {distinct} host_id, kind, source_group_id FROM job
WHERE {column} IN ({ids}) AND kind IN ({kinds}) AND status IN ('succeeded', 'failed')
"""
# Jobs of one key: host, job kind and (for backups) source group.
_LATEST_OUTCOME_SQL = """
SELECT id, status FROM job
WHERE host_id = ? AND kind = ? AND source_group_id IS ? AND finished_at IS NOT NULL
  AND status IN ('succeeded', 'failed')
ORDER BY finished_at DESC, rowid DESC LIMIT 1
"""
_LATEST_SUCCESS_SQL = """
SELECT finished_at FROM job
WHERE host_id = ? AND kind = ? AND source_group_id IS ? AND finished_at IS NOT NULL
  AND status = 'succeeded'
ORDER BY finished_at DESC LIMIT 1
"""
_FAILURES_AFTER_SQL = """
SELECT finished_at, error, exit_code FROM job
WHERE host_id = ? AND kind = ? AND source_group_id IS ? AND finished_at IS NOT NULL
  AND status = 'failed' AND (? IS NULL OR finished_at > ?)
ORDER BY finished_at, rowid
"""


def _in(column: str, n: int) -> str:
    return f"{column} IN ({_marks(n)})"


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Outcome:
    events: list[Event] = field(default_factory=list)
    # host id → when it becomes due for agent_offline (None: nothing to wait for).
    offline_due: dict[int, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _HostRow:
    id: int
    name: str
    online: bool
    presence_mode: str
    enrolled_at: float | None
    last_seen_at: float | None
    repo_status: str
    repo_status_error: str | None
    repo_status_at: float | None
    last_success_at: float | None


class AlertEngine:
    """Raises and clears alerts: on job and host events within a moment, and
    on a tick for what only time makes true (silence, missed backups)."""

    def __init__(
        self,
        ctx: ServiceContext,
        alerts: AlertService,
        *,
        offline_after_s: float = 90.0,
        tick_s: float = 60.0,
        laptop_stale_s: float = alert_rules.DEFAULT_LAPTOP_STALE_S,
        clock: Clock = time.time,
    ) -> None:
        self._ctx = ctx
        # Evaluations write through the same helpers as the service, inside
        # one transaction of their own; the service is what callers share.
        self.alerts = alerts
        self._offline_after = offline_after_s
        self._tick_s = tick_s
        self._laptop_stale = laptop_stale_s
        self._clock = clock
        # Until start(), the grace period has not begun: no offline alerts.
        self._started_at: float | None = None
        self._pending_jobs: set[str] = set()
        self._pending_hosts: set[int] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._active = False
        self._failures = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._started_at = self._clock()
        self._active = True
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self._ctx.bus.subscribe(self._on_event)
        self._tasks = [
            asyncio.create_task(self._work(), name="alert-engine"),
            asyncio.create_task(self._tick_loop(), name="alert-engine-tick"),
        ]

    async def stop(self) -> None:
        self._active = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        # An evaluation under way has committed by the time the lock is free;
        # cancelling it halfway would keep its alerts from being published.
        async with self._lock:
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                # A task that died must not stop the control plane from closing.
                log.exception("alert engine task %s had failed", task.get_name())
        self._tasks = []
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        # What the ingestor flushed on its way out is evaluated now: nothing
        # re-reads old job events at the next start.
        jobs, self._pending_jobs = self._pending_jobs, set()
        hosts, self._pending_hosts = self._pending_hosts, set()
        if jobs or hosts:
            try:
                await self._run(jobs, hosts, all_hosts=False)
            except Exception:
                log.exception("could not evaluate the last %d job events", len(jobs))

    @property
    def armed_hosts(self) -> frozenset[int]:
        """Hosts with an agent_offline timer running (for tests and diagnostics)."""
        return frozenset(self._timers)

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    # -- public evaluation ---------------------------------------------------

    async def evaluate_host(self, host_id: int) -> None:
        """Every rule for one host, its past jobs included."""
        await self._run(set(), {host_id}, all_hosts=False, job_history=True)

    async def tick(self) -> None:
        """The time-based rules (silence, missed backups) for every host."""
        await self._run(set(), set(), all_hosts=True)

    # -- events: cheap, on the loop -----------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobChanged):
            self._pending_jobs.add(event.job_id)
        elif isinstance(event, HostChanged | SourcesChanged):
            self._pending_hosts.add(event.host_id)
        elif isinstance(event, HostRemoved):
            # Its alerts went with the row (ON DELETE CASCADE).
            self._pending_hosts.discard(event.host_id)
            handle = self._timers.pop(event.host_id, None)
            if handle is not None:
                handle.cancel()
            return
        else:
            return
        self._wake.set()

    def _timer_fired(self, host_id: int) -> None:
        self._timers.pop(host_id, None)
        self._pending_hosts.add(host_id)
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._pending_jobs = self._pending_jobs, set()
            hosts, self._pending_hosts = self._pending_hosts, set()
            try:
                await self._run(jobs, hosts, all_hosts=False)
                self._failures = 0
            except asyncio.CancelledError:
                # Stopped while waiting for the lock: stop() evaluates these.
                self._pending_jobs |= jobs
                self._pending_hosts |= hosts
                raise
            except Exception:
                self._failures += 1
                log.exception("alert evaluation failed (%d jobs, %d hosts)", len(jobs), len(hosts))
                if self._failures <= 3:
                    # A busy database passes: try the same work again shortly.
                    self._pending_jobs |= jobs
                    self._pending_hosts |= hosts
                    await asyncio.sleep(float(self._failures))
                    self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("alert tick failed")
            await asyncio.sleep(self._tick_s)

    # -- evaluation ------------------------------------------------------------

    async def _run(
        self,
        job_ids: set[str],
        host_ids: set[int],
        *,
        all_hosts: bool,
        job_history: bool = False,
    ) -> None:
        async with self._lock:
            now = self._clock()
            outcome = await self._ctx.store.transaction(
                self._evaluate, job_ids, host_ids, all_hosts, job_history, now
            )
            self._ctx.bus.publish_all(outcome.events)
            self._arm(outcome.offline_due)

    def _arm(self, due: dict[int, float | None]) -> None:
        if not self._active:
            return  # not started, or stopped while the evaluation ran
        loop = self._loop
        if loop is None:
            return
        for host_id, at in due.items():
            old = self._timers.pop(host_id, None)
            if old is not None:
                old.cancel()
            if at is None:
                continue
            # A hair late rather than early: early finds it not yet due.
            delay = max(0.0, at - self._clock()) + 0.05
            self._timers[host_id] = loop.call_later(delay, self._timer_fired, host_id)

    def _evaluate(
        self,
        job_id_set: set[str],
        host_id_set: set[int],
        all_hosts: bool,
        job_history: bool,
        now: float,
    ) -> _Outcome:
        """One evaluation, on the store thread, inside one transaction. The
        sets are the caller's to give away: nothing touches them meanwhile."""
        # Sorted here, not on the loop: a replay after a week away is
        # thousands of job ids.
        job_ids, host_ids = sorted(job_id_set), sorted(host_id_set)
        outcome = _Outcome()
        db = Alert._meta.database
        keys: set[tuple[int, str, int | None]] = set()
        for chunk in _chunks(job_ids):
            sql = _JOB_KEYS_SQL.format(
                distinct="", column="id", ids=_marks(len(chunk)), kinds=_marks(len(JOB_ALERTS))
            )
            rows = db.execute_sql(sql, [*chunk, *JOB_ALERTS]).fetchall()
            keys.update((int(h), str(k), g) for h, k, g in rows)
        if job_history:
            for chunk in _chunks(host_ids):
                sql = _JOB_KEYS_SQL.format(
                    distinct="DISTINCT",
                    column="host_id",
                    ids=_marks(len(chunk)),
                    kinds=_marks(len(JOB_ALERTS)),
                )
                rows = db.execute_sql(sql, [*chunk, *JOB_ALERTS]).fetchall()
                keys.update((int(h), str(k), g) for h, k, g in rows)
        names: dict[int, str] = {}
        for host_id, job_kind, group_id in sorted(keys, key=lambda k: (k[0], k[1], k[2] or 0)):
            event = self._job_key(host_id, job_kind, group_id, now, names)
            if event is not None:
                outcome.events.append(event)
        # A finished job moves the last backup and the repository's state.
        hosts = None if all_hosts else sorted({*host_ids, *(k[0] for k in keys)})
        if hosts is None or hosts:
            self._hosts(hosts, now, outcome)
        return outcome

    def _job_key(
        self, host_id: int, job_kind: str, group_id: int | None, now: float, names: dict[int, str]
    ) -> AlertChanged | None:
        """The newest finished job of the key decides; new failures count once."""
        db = Alert._meta.database
        key = alert_rules.job_key(job_kind, host_id, group_id)
        params = (host_id, job_kind, group_id)
        latest = db.execute_sql(_LATEST_OUTCOME_SQL, params).fetchone()
        if latest is None:
            return None
        job_id, status = latest
        if status == "succeeded":
            return resolve_in_tx(key, now=now, reason=f"{job_kind} job {job_id} succeeded")
        floors = []
        previous = _latest(key)
        if previous is not None:
            floors.append(previous[1])  # the newest failure already counted
        success = db.execute_sql(_LATEST_SUCCESS_SQL, params).fetchone()
        if success is not None:
            floors.append(success[0])
        floor = max(floors) if floors else None
        failures = db.execute_sql(_FAILURES_AFTER_SQL, (*params, floor, floor)).fetchall()
        if not failures:
            return None  # replayed, or older than what was already counted
        newest_at, error, exit_code = failures[-1]
        group_name = None
        if group_id is not None:
            row = db.execute_sql(
                "SELECT name FROM source_group WHERE id = ?", (group_id,)
            ).fetchone()
            group_name = row[0] if row else None
        message = alert_rules.job_failed_message(
            job_kind,
            self._host_name(host_id, names),
            group_name=group_name,
            error=error,
            exit_code=exit_code,
        )
        # Times are the jobs' own: ten failures replayed after the app was
        # closed for a week show when they happened, not when they arrived.
        return fire_in_tx(
            JOB_ALERTS[job_kind],
            host_id,
            message,
            key,
            now=now,
            first_seen=failures[0][0],
            last_seen=newest_at,
            count=len(failures),
        )

    @staticmethod
    def _host_name(host_id: int, names: dict[int, str]) -> str:
        if host_id not in names:
            row = Alert._meta.database.execute_sql(
                "SELECT name FROM host WHERE id = ?", (host_id,)
            ).fetchone()
            names[host_id] = row[0] if row else f"host {host_id}"
        return names[host_id]

    def _hosts(self, host_ids: list[int] | None, now: float, outcome: _Outcome) -> None:
        db = Alert._meta.database
        rows: list[_HostRow] = []
        schedules: dict[int, list[tuple[str, float]]] = {}
        unresolved: set[str] = set()
        chunks: list[list[int] | None] = [None] if host_ids is None else list(_chunks(host_ids))
        for chunk in chunks:
            where = "" if chunk is None else "WHERE " + _in("h.id", len(chunk))
            and_hosts = "" if chunk is None else "AND " + _in("s.host_id", len(chunk))
            ids = chunk or []
            rows += [
                _HostRow(
                    id=r[0],
                    name=r[1],
                    online=bool(r[2]),
                    presence_mode=r[3],
                    enrolled_at=r[4],
                    last_seen_at=r[5],
                    repo_status=r[6],
                    repo_status_error=r[7],
                    repo_status_at=r[8],
                    last_success_at=r[9],
                )
                for r in db.execute_sql(_HOSTS_SQL.format(where=where), ids).fetchall()
            ]
            for host_id, expr, created_at in db.execute_sql(
                _SCHEDULES_SQL.format(and_hosts=and_hosts), ids
            ).fetchall():
                schedules.setdefault(host_id, []).append((expr, created_at))
            and_alert_hosts = "" if chunk is None else "AND " + _in("host_id", len(chunk))
            unresolved.update(
                r[0]
                for r in db.execute_sql(
                    _UNRESOLVED_CONDITIONS_SQL.format(
                        kinds=_marks(len(_CONDITION_KINDS)), and_hosts=and_alert_hosts
                    ),
                    [*_CONDITION_KINDS, *ids],
                ).fetchall()
            )
        for host in rows:
            if host.enrolled_at is None:
                continue  # not installed yet: nothing is expected of it
            self._offline(host, now, unresolved, outcome)
            self._stale(host, schedules.get(host.id, []), now, unresolved, outcome)
            self._repo(host, now, unresolved, outcome)

    def _add(self, outcome: _Outcome, event: AlertChanged | None) -> None:
        if event is not None:
            outcome.events.append(event)

    def _offline(self, host: _HostRow, now: float, unresolved: set[str], out: _Outcome) -> None:
        key = dedup_key("agent_offline", host.id)
        if host.online or host.presence_mode == "laptop":
            out.offline_due[host.id] = None
            if key in unresolved:
                reason = "the agent connected again" if host.online else "the host is a laptop"
                self._add(out, resolve_in_tx(key, now=now, reason=reason))
            return
        assert host.enrolled_at is not None
        if self._started_at is None:
            return  # not started: the start-up grace has not even begun
        since = host.last_seen_at if host.last_seen_at is not None else host.enrolled_at
        # Grace after start-up: agents reconnect within one heartbeat timeout.
        due = max(since, self._started_at) + self._offline_after
        if now < due:
            out.offline_due[host.id] = due
            return
        out.offline_due[host.id] = None
        if key not in unresolved:
            message = alert_rules.offline_message(host.name, host.last_seen_at, since, now)
            self._add(
                out, raise_condition_in_tx("agent_offline", host.id, message, now=now, since=since)
            )

    def _stale(
        self,
        host: _HostRow,
        schedules: list[tuple[str, float]],
        now: float,
        unresolved: set[str],
        out: _Outcome,
    ) -> None:
        key = dedup_key("stale_backup", host.id)
        intervals = []
        for expr, _ in schedules:
            try:
                intervals.append(cron.min_interval_seconds(expr))
            except Exception:
                log.warning("host %s: schedule %r cannot be read; ignored", host.id, expr)
        interval = min(intervals) if intervals else None
        horizon = alert_rules.stale_horizon_s(host.presence_mode, interval, self._laptop_stale)
        if horizon is None or interval is None:
            if key in unresolved:
                self._add(out, resolve_in_tx(key, now=now, reason="no enabled backup schedule"))
            return
        assert host.enrolled_at is not None
        if host.last_success_at is not None:
            since = host.last_success_at
        else:
            # A schedule younger than its horizon cannot have been missed yet.
            since = max(host.enrolled_at, min(created for _, created in schedules))
        if now - since <= horizon:
            if key in unresolved:
                reason = (
                    "a backup succeeded"
                    if host.last_success_at is not None
                    else "the backup horizon grew"
                )
                self._add(out, resolve_in_tx(key, now=now, reason=reason))
            return
        if key in unresolved:
            return
        message = alert_rules.stale_message(
            host.name,
            last_success_at=host.last_success_at,
            since=since,
            now=now,
            presence_mode=host.presence_mode,
            min_interval_s=interval,
            horizon_s=horizon,
        )
        self._add(
            out, raise_condition_in_tx("stale_backup", host.id, message, now=now, since=since)
        )

    def _repo(self, host: _HostRow, now: float, unresolved: set[str], out: _Outcome) -> None:
        key = dedup_key("repo_init_failed", host.id)
        if host.repo_status == "ready":
            if key in unresolved:
                self._add(out, resolve_in_tx(key, now=now, reason="the repository is ready"))
            return
        if host.repo_status != "init_failed" or key in unresolved:
            return
        since = host.repo_status_at if host.repo_status_at is not None else now
        if _closed_by_operator(key, since):
            return
        latest = _latest(key)
        if latest is not None and latest[1] >= since:
            return  # this failure was already counted (the init job's own alert)
        message = alert_rules.repo_status_message(host.name, host.repo_status_error)
        # Stamped with the failure's time, like the init job's alert, so the
        # two paths count one failure once whichever runs first.
        self._add(
            out, fire_in_tx("repo_init_failed", host.id, message, key, now=now, last_seen=since)
        )
