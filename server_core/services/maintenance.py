"""Repository maintenance: forget/prune/check cadences, running them, repo stats.

forget and prune may need the admin credential (append-only repositories),
which only the control plane holds and hands out for one job at a time; so
they run from here, while the app is up and the host is online, and show
as "due" otherwise. check runs from the agent's own scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from server_core import audit, maintenance_plan
from server_core.errors import Conflict, InvalidInput, ServiceError
from server_core.events import Event, HostChanged
from server_core.models import Host, Job, Maintenance
from server_core.plan_input import parse_maintenance
from server_core.plan_views import maintenance_view, repo_stats_view
from server_core.services import plan_sync
from server_core.services.context import SYSTEM, Actor, ServiceContext
from server_core.services.hosts import require_host
from server_core.services.jobs import JobService
from server_core.views import MaintenanceView, RepoStatsView

log = logging.getLogger(__name__)

RUN_NOW_KINDS = ("forget", "prune", "check", "unlock")
MAX_HISTORY_DAYS = 3660


def check_args(row: Maintenance) -> dict[str, Any]:
    return {"read_data_subset_percent": int(row.check_subset_percent)}


class MaintenanceService:
    def __init__(self, ctx: ServiceContext, jobs: JobService) -> None:
        self._ctx = ctx
        self._jobs = jobs

    async def get(self, host_id: int) -> MaintenanceView:
        def run() -> MaintenanceView:
            require_host(host_id)
            return maintenance_view(host_id)

        return await self._ctx.store.transaction(run)

    async def update(self, host_id: int, body: Any, actor: Actor) -> MaintenanceView:
        """Change the fields ``body`` carries; a cron of null turns that kind off."""
        changes = parse_maintenance(body).changes
        box = self._ctx.box

        def run() -> tuple[MaintenanceView, bool]:
            require_host(host_id)
            row, _ = maintenance_plan.ensure_row(host_id)
            before = {k: getattr(row, k) for k in changes}
            if before == changes:
                return maintenance_view(host_id), False
            for key, value in changes.items():
                setattr(row, key, value)
            row.save()
            version = plan_sync.bump_version(box, host_id)
            audit.record(
                actor.kind,
                "maintenance.updated",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"before": before, "after": changes, "schedule_version": version},
            )
            return maintenance_view(host_id), True

        view, changed = await self._ctx.store.transaction(run)
        if changed:
            await plan_sync.push(self._ctx, host_id)
        return view

    async def repo_stats(self, host_id: int, days: int = 365) -> RepoStatsView:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_HISTORY_DAYS:
            raise InvalidInput(f"'days' must be between 1 and {MAX_HISTORY_DAYS}", field="days")

        def run() -> RepoStatsView:
            require_host(host_id)
            return repo_stats_view(host_id, days)

        return await self._ctx.store.call(run)

    async def run_now(self, host_id: int, kind: str, actor: Actor) -> str:
        """Start forget, prune, check or unlock at once (the host must be online)."""
        if kind not in RUN_NOW_KINDS:
            raise InvalidInput(f"'kind' must be one of: {', '.join(RUN_NOW_KINDS)}", field="kind")
        args = None
        if kind == "check":

            def subset() -> dict[str, Any]:
                require_host(host_id)
                row, _ = maintenance_plan.ensure_row(host_id)
                return check_args(row)

            args = await self._ctx.store.transaction(subset)
        return await self._jobs.dispatch(host_id, kind, actor=actor, args=args)

    async def reinit(self, host_id: int, actor: Actor) -> str:
        """Run `restic init` against the host's repository again (danger zone:
        the UI makes the operator type the host name first)."""

        online = self._ctx.agents.is_connected(host_id)

        def run() -> None:
            host = require_host(host_id)
            if not online:
                raise Conflict(
                    f"host {host.name} is offline: the agent must be connected to re-initialise"
                )
            audit.record(
                actor.kind,
                "repo.reinit_requested",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"repo_status": host.repo_status},
            )

        await self._ctx.store.transaction(run)
        job_id = await self._jobs.dispatch(host_id, "init", actor=actor, reuse_queued=True)
        self._ctx.bus.publish(HostChanged(host_id))
        return job_id


class MaintenanceRunner:
    """Dispatches forget/prune whose window passed, for hosts that are online
    with a ready repository; every ``interval_s`` and shortly after a host
    comes online (after its hello has been answered)."""

    def __init__(
        self,
        ctx: ServiceContext,
        jobs: JobService,
        *,
        interval_s: float = 30.0,
        online_delay_s: float = 5.0,
    ) -> None:
        self._ctx = ctx
        self._jobs = jobs
        self._interval = interval_s
        self._online_delay = online_delay_s
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._online: set[int] = set()
        self._unsubscribe: Any = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._unsubscribe = self._ctx.bus.subscribe(self._on_event)
        self._task = asyncio.create_task(self._loop(), name="maintenance-runner")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [t for t in (self._task, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, HostChanged):
            return
        host_id = event.host_id
        if not self._ctx.agents.is_connected(host_id):
            self._online.discard(host_id)
            return
        if host_id in self._online:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # published outside the loop (a script): the next tick covers it
        self._online.add(host_id)
        task = loop.create_task(self._soon(host_id))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _soon(self, host_id: int) -> None:
        await asyncio.sleep(self._online_delay)
        try:
            await self.run_once([host_id])
        except Exception:
            log.exception("maintenance for host %s failed", host_id)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("maintenance tick failed")

    async def run_once(self, host_ids: list[int] | None = None) -> list[str]:
        """Dispatch what is due now; returns the new job ids."""
        async with self._lock:  # a tick and an online kick must not both dispatch
            plan = await self._ctx.store.transaction(due_dispatches, host_ids, time.time())
            started: list[str] = []
            for host_id, kind in plan:
                if not self._ctx.agents.is_connected(host_id):
                    continue
                try:
                    started.append(
                        await self._jobs.dispatch(host_id, kind, actor=SYSTEM, reuse_queued=True)
                    )
                except ServiceError as exc:
                    log.info("maintenance %s for host %s not started: %s", kind, host_id, exc)
            return started


def due_dispatches(host_ids: list[int] | None, now: float) -> list[tuple[int, str]]:
    """(host, kind) pairs the runner should start (store thread): forget and
    prune that are due, on hosts with a ready repository and nothing of that
    kind already queued or running."""
    # Hosts from before maintenance existed get their default plan here,
    # starting now (no window of the past is due).
    missing = Host.select(Host.id).where(
        Host.enrolled_at.is_null(False) & Host.id.not_in(Maintenance.select(Maintenance.host))
    )
    if host_ids is not None:
        missing = missing.where(Host.id.in_(host_ids))
    for (host_id,) in missing.tuples():
        maintenance_plan.ensure_row(int(host_id), now)
    query = (
        Maintenance.select()
        .join(Host)
        .where(
            Host.enrolled_at.is_null(False) & (Host.repo_status == "ready") & Maintenance.enabled
        )
    )
    if host_ids is not None:
        query = query.where(Maintenance.host.in_(host_ids))
    rows = list(query)
    if not rows:
        return []
    ids = [int(r.host_id) for r in rows]
    attempts = maintenance_plan.last_attempts(ids)
    busy = set(
        Job.select(Job.host, Job.kind)
        .where(
            Job.host.in_(ids)
            & Job.kind.in_(maintenance_plan.DISPATCHED_KINDS)
            & Job.status.in_(("queued", "running"))
        )
        .tuples()
    )
    out: list[tuple[int, str]] = []
    for row in rows:
        host_id = int(row.host_id)
        mine = {k: at for (h, k), at in attempts.items() if h == host_id}
        for kind in maintenance_plan.due_kinds(row, mine, now):
            if kind in maintenance_plan.DISPATCHED_KINDS and (host_id, kind) not in busy:
                out.append((host_id, kind))
    return out
