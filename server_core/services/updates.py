"""Agent self-updates: one host at a time, or the fleet one host after another.

An update is a job of kind ``update``. The service checks the host can take
it (connected, idle, not already on the bundled version, a build for its
platform bundled), records the job as running and sends ``command.update``
with the download path, SHA-256 and version of the bundled build. The agent
downloads, verifies, swaps its binary and exits for its service manager to
restart it (agent/self_update.py). The update succeeded when the host says
hello with the new version within ``hello_timeout_s`` (90 s); it failed when
the agent reports the job failed, comes back with another version, or stays
away — then ``update_failed`` is raised for the host.

The bundled build's version comes from the sidecar ``<binary>.json`` that
``packaging/build.py`` writes next to each agent it builds (it runs the built
binary's ``--version`` once, at build time); a build without it is not offered.

A fleet run updates the chosen hosts (by default every host whose agent
differs from the bundled build) in name order, skipping hosts that cannot
take an update now (offline, busy) and halting at the first failure.
Cancelling stops it before the next host; an update already under way
finishes on its own. Progress is published as ``UpdatesChanged`` events;
``current()`` / ``host_update()`` give the views. Everything is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from agent.protocol import MAX_INT, TERMINAL_STATUSES, CommandUpdate
from server_core import audit
from server_core.agent_downloads import BINARY_PATH, AgentDownloads, BundledAgent
from server_core.errors import Conflict, HostOffline, InvalidInput, NotFound, ServiceError
from server_core.events import Event, HostChanged, JobChanged, UpdatesChanged
from server_core.models import Host, Job
from server_core.services.alerts import AlertService
from server_core.services.context import Actor, ServiceContext
from server_core.services.jobs import create_job, require_job
from server_core.update_views import (
    CANCELLED,
    FAILED,
    NOT_STARTED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    UPDATING,
    BundledAgentView,
    FleetUpdateView,
    HostUpdateView,
    available_update,
)

log = logging.getLogger(__name__)

UPDATE_TIMEOUT_S = 90.0
MAX_FLEET_HOSTS = 10_000
ALERT_KIND = "update_failed"
STALE_JOB_ERROR = (
    "the control plane stopped before the agent reported back: check the host's agent "
    "version, and update it again if it still runs the old one"
)

Clock = Callable[[], float]


@dataclass(frozen=True)
class _HostRow:
    id: int
    name: str
    os: str | None
    arch: str | None
    agent_version: str | None
    enrolled: bool
    running_jobs: int


@dataclass(frozen=True)
class _Progress:
    """What the database says about an update in flight."""

    online: bool
    agent_version: str | None
    job_status: str
    job_error: str | None
    percent: float | None


@dataclass(eq=False)
class _Attempt:
    """One host's update, from command.update to its outcome."""

    host_id: int
    host_name: str
    from_version: str | None
    to_version: str
    job_id: str
    started_at: float
    state: str = UPDATING
    detail: str | None = "sending the update to the agent"
    finished_at: float | None = None
    # Set on every host or job event of this update: the watcher then reads the state.
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    saw_offline: bool = False

    def view(self) -> HostUpdateView:
        return HostUpdateView(
            host_id=self.host_id,
            host_name=self.host_name,
            from_version=self.from_version,
            to_version=self.to_version,
            state=self.state,
            job_id=self.job_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
            detail=self.detail,
        )


@dataclass(eq=False)
class _Entry:
    """A host's place in a fleet run; its attempt once it has one."""

    host_id: int
    host_name: str
    from_version: str | None
    to_version: str | None
    state: str = PENDING
    detail: str | None = None
    attempt: _Attempt | None = None

    def view(self) -> HostUpdateView:
        if self.attempt is not None:
            return self.attempt.view()
        return HostUpdateView(
            host_id=self.host_id,
            host_name=self.host_name,
            from_version=self.from_version,
            to_version=self.to_version,
            state=self.state,
            detail=self.detail,
        )


@dataclass(eq=False)
class _FleetRun:
    id: str
    actor: Actor
    started_at: float
    entries: list[_Entry]
    state: str = RUNNING
    finished_at: float | None = None
    message: str | None = None
    current: _Entry | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def view(self) -> FleetUpdateView:
        return FleetUpdateView(
            id=self.id,
            state=self.state,
            actor=self.actor.kind
            if self.actor.id is None
            else f"{self.actor.kind}:{self.actor.id}",
            started_at=self.started_at,
            finished_at=self.finished_at,
            hosts=[e.view() for e in self.entries],
            message=self.message,
            current_host_id=self.current.host_id if self.current is not None else None,
        )


class UpdateService:
    def __init__(
        self,
        ctx: ServiceContext,
        alerts: AlertService,
        downloads: AgentDownloads,
        *,
        hello_timeout_s: float = UPDATE_TIMEOUT_S,
        clock: Clock = time.time,
    ) -> None:
        self._ctx = ctx
        self._alerts = alerts
        self._downloads = downloads
        self._timeout = hello_timeout_s
        self._clock = clock
        # The latest attempt per host (finished ones stay for the host page).
        self._attempts: dict[int, _Attempt] = {}
        self._by_job: dict[str, _Attempt] = {}
        self._fleet: _FleetRun | None = None
        # Hosts between the checks and the command (two clicks must not send two).
        self._starting: set[int] = set()
        # Hosts whose failed update is being checked for a late success.
        self._late_checks: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def hello_timeout_s(self) -> float:
        return self._timeout

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen for hosts and jobs; fail update jobs a previous run left waiting."""
        self._unsubscribe = self._ctx.bus.subscribe(self._on_event)
        now = self._clock()

        def run() -> list[tuple[str, int]]:
            stale = list(
                Job.select(Job.id, Job.host).where(
                    (Job.kind == "update") & Job.status.not_in(tuple(TERMINAL_STATUSES))
                )
            )
            for job in stale:
                Job.update(status="failed", finished_at=now, error=STALE_JOB_ERROR).where(
                    Job.id == job.id
                ).execute()
                audit.record(
                    "system",
                    "agent.update_failed",
                    target_kind="host",
                    target_id=job.host_id,
                    payload={"job_id": job.id, "reason": STALE_JOB_ERROR},
                    ts=now,
                )
            return [(str(j.id), int(j.host_id)) for j in stale]

        for job_id, host_id in await self._ctx.store.transaction(run):
            self._ctx.bus.publish(JobChanged(job_id, host_id))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what is bundled -----------------------------------------------------------

    async def bundled(self) -> list[BundledAgentView]:
        return [BundledAgentView(a.os, a.arch, a.version) for a in await self._downloads.bundled()]

    async def bundled_versions(self) -> dict[str, str]:
        """``"os/arch"`` → version of every bundled build that records its version."""
        return {a.platform: a.version for a in await self._downloads.bundled() if a.version}

    # -- views ---------------------------------------------------------------------

    def current(self) -> FleetUpdateView | None:
        """The fleet run in progress, else the last one (None before the first)."""
        return self._fleet.view() if self._fleet is not None else None

    def host_update(self, host_id: int) -> HostUpdateView | None:
        """The host's latest update since the app started (None if none)."""
        attempt = self._attempts.get(host_id)
        return attempt.view() if attempt is not None else None

    async def wait_fleet(self) -> FleetUpdateView | None:
        """Wait until the fleet run in progress (if any) has finished."""
        run = self._fleet
        if run is not None and run.task is not None:
            await asyncio.shield(run.task)
        return self.current()

    async def wait_host(self, host_id: int) -> HostUpdateView | None:
        """Wait until the host's update in progress (if any) has an outcome."""
        attempt = self._attempts.get(host_id)
        if attempt is not None:
            await attempt.done.wait()
        return self.host_update(host_id)

    # -- one host ------------------------------------------------------------------

    async def update_host(self, host_id: int, actor: Actor) -> HostUpdateView:
        """Send the bundled agent to one host; the outcome follows as events."""
        attempt = await self._begin(host_id, actor, via=None)
        return attempt.view()

    async def _begin(self, host_id: int, actor: Actor, *, via: _FleetRun | None) -> _Attempt:
        current = self._attempts.get(host_id)
        if host_id in self._starting or (current is not None and current.state == UPDATING):
            name = current.host_name if current is not None else f"host {host_id}"
            raise Conflict(f"{name} is already being updated")
        self._starting.add(host_id)
        try:
            return await self._dispatch(host_id, actor, via)
        finally:
            self._starting.discard(host_id)

    async def _dispatch(self, host_id: int, actor: Actor, via: _FleetRun | None) -> _Attempt:
        bundled = await self._downloads.bundled()
        row = await self._ctx.store.call(_host_row, host_id)
        if not self._ctx.agents.is_connected(host_id):
            raise HostOffline(f"{row.name} is offline: its agent must be connected to be updated")
        build = _build_for(row, bundled)
        if row.agent_version == build.version:
            raise Conflict(f"{row.name} already runs agent {build.version}")
        if row.running_jobs:
            raise Conflict(
                f"{row.name} is running {row.running_jobs} job(s): update its agent when they "
                "have finished"
            )
        assert build.version is not None  # _build_for refuses a build without one
        sha256 = await self._downloads.sha256(build)
        now = self._clock()
        args = {"version": build.version, "from_version": row.agent_version, "sha256": sha256}
        if via is not None:
            args["fleet_update_id"] = via.id

        def run() -> str:
            job = create_job(host_id, "update", actor, args=args)
            # Running from the start: a queued job would be re-sent as
            # command.run when the restarted agent says hello.
            Job.update(status="running", started_at=now, dispatched_at=now).where(
                Job.id == job.id
            ).execute()
            audit.record(
                actor.kind,
                "agent.update_requested",
                actor_id=actor.id,
                target_kind="host",
                target_id=host_id,
                payload={"job_id": job.id, **args},
                ts=now,
            )
            return str(job.id)

        job_id = await self._ctx.store.transaction(run)
        attempt = _Attempt(
            host_id=host_id,
            host_name=row.name,
            from_version=row.agent_version,
            to_version=build.version,
            job_id=job_id,
            started_at=now,
        )
        self._attempts[host_id] = attempt
        self._by_job[job_id] = attempt
        # Watching before sending: the agent's first events must find the attempt.
        self._spawn(self._watch(attempt), f"agent-update-{host_id}")
        query = urlencode({"os": build.os, "arch": build.arch})
        command = CommandUpdate(
            job_id=job_id, version=build.version, url=f"{BINARY_PATH}?{query}", sha256=sha256
        )
        log.info(
            "updating the agent of %s from %s to %s", row.name, row.agent_version, build.version
        )
        self._ctx.bus.publish_all([JobChanged(job_id, host_id), UpdatesChanged(host_id)])
        if await self._ctx.agents.send(host_id, command):
            attempt.detail = "the agent is downloading the new build"
        else:
            await self._finish(attempt, False, "the host went offline before the update was sent")
        return attempt

    async def _watch(self, attempt: _Attempt) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            while attempt.state == UPDATING:
                left = deadline - loop.time()
                if left <= 0:
                    await self._finish(attempt, False, self._timeout_reason(attempt))
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(attempt.poke.wait(), left)
                attempt.poke.clear()
                if attempt.state != UPDATING:
                    return
                await self._check(attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching the update of %s failed", attempt.host_name)
            if attempt.state == UPDATING:
                await self._finish(attempt, False, "internal error while waiting for the agent")

    def _timeout_reason(self, attempt: _Attempt) -> str:
        return (
            f"the agent did not come back as version {attempt.to_version} within "
            f"{self._timeout:.0f} s. The new binary may fail to start, or no service manager "
            "restarted the agent (systemd: Restart=always); see the agent's log on the host "
            "(journalctl -u restic-manager-agent). The previous binary is kept next to it as "
            "restic-manager-agent.old"
        )

    async def _check(self, attempt: _Attempt) -> None:
        try:
            state = await self._ctx.store.call(_progress, attempt.host_id, attempt.job_id)
        except NotFound:
            await self._finish(attempt, False, "the host was deleted during its update")
            return
        if state.job_status in TERMINAL_STATUSES and state.job_status != "succeeded":
            reason = state.job_error or f"the agent reported the update {state.job_status}"
            await self._finish(attempt, False, reason, job_done=True)
            return
        if state.online and state.agent_version == attempt.to_version:
            await self._finish(attempt, True, None)
            return
        if not state.online:
            attempt.saw_offline = True
            attempt.detail = f"restarting as agent {attempt.to_version}…"
        elif attempt.saw_offline:
            reason = (
                f"the agent restarted but runs version {state.agent_version}, not "
                f"{attempt.to_version}: the service may start a different binary than the "
                "one that was replaced"
            )
            await self._finish(attempt, False, reason)
            return
        elif state.percent is not None:
            attempt.detail = f"downloading the new build ({state.percent:.0f} %)"
        self._ctx.bus.publish(UpdatesChanged(attempt.host_id))

    async def _finish(
        self, attempt: _Attempt, ok: bool, reason: str | None, *, job_done: bool = False
    ) -> None:
        if attempt.state != UPDATING:
            return
        now = self._clock()
        attempt.state = SUCCEEDED if ok else FAILED
        attempt.finished_at = now
        attempt.detail = (
            f"now runs agent {attempt.to_version}" if ok else reason or "the update failed"
        )
        payload = {
            "job_id": attempt.job_id,
            "from_version": attempt.from_version,
            "to_version": attempt.to_version,
            **({} if ok else {"reason": attempt.detail}),
        }

        def run() -> None:
            job: Job | None = Job.get_or_none(Job.id == attempt.job_id)
            if job is not None and job.status not in TERMINAL_STATUSES and not job_done:
                job.status = "succeeded" if ok else "failed"
                job.finished_at = now
                job.error = None if ok else attempt.detail
                job.summary = json.dumps(
                    {"from_version": attempt.from_version, "to_version": attempt.to_version}
                )
                job.save()
            audit.record(
                "system",
                "agent.update_succeeded" if ok else "agent.update_failed",
                target_kind="host",
                target_id=attempt.host_id,
                payload=payload,
                ts=now,
            )

        try:
            await self._ctx.store.transaction(run)
        except Exception:
            log.exception("recording the update outcome of %s failed", attempt.host_name)
        self._ctx.bus.publish_all([JobChanged(attempt.job_id, attempt.host_id)])
        if ok:
            log.info("%s now runs agent %s", attempt.host_name, attempt.to_version)
            await self._clear_alert(attempt.host_id, attempt.to_version)
        else:
            log.warning("updating the agent of %s failed: %s", attempt.host_name, attempt.detail)
            try:
                await self._alerts.fire(
                    ALERT_KIND,
                    attempt.host_id,
                    f"Updating the agent of {attempt.host_name} to {attempt.to_version} "
                    f"failed: {attempt.detail}",
                )
            except ServiceError as exc:  # the host was deleted meanwhile
                log.info("no update_failed alert for host %s: %s", attempt.host_id, exc)
        attempt.done.set()
        self._ctx.bus.publish(UpdatesChanged(attempt.host_id))

    async def _clear_alert(self, host_id: int, version: str) -> None:
        try:
            await self._alerts.clear(
                ALERT_KIND, host_id, reason=f"the agent now runs version {version}"
            )
        except ServiceError as exc:
            log.info("could not clear update_failed of host %s: %s", host_id, exc)

    def _on_event(self, event: Event) -> None:
        attempt: _Attempt | None = None
        if isinstance(event, HostChanged):
            attempt = self._attempts.get(event.host_id)
        elif isinstance(event, JobChanged):
            attempt = self._by_job.get(event.job_id)
        if attempt is None:
            return
        if attempt.state == UPDATING:
            attempt.poke.set()
        elif _loop_running() and (
            attempt.state == FAILED
            and isinstance(event, HostChanged)
            and attempt.host_id not in self._late_checks
            and self._unsubscribe is not None
        ):
            # Came back late with the new version: the failure alert no longer holds.
            self._late_checks.add(attempt.host_id)
            self._spawn(self._late_success(attempt), f"agent-update-late-{attempt.host_id}")

    async def _late_success(self, attempt: _Attempt) -> None:
        try:
            await self._late_check(attempt)
        finally:
            self._late_checks.discard(attempt.host_id)

    async def _late_check(self, attempt: _Attempt) -> None:
        try:
            state = await self._ctx.store.call(_progress, attempt.host_id, attempt.job_id)
        except NotFound:
            return
        if attempt.state != FAILED or not (
            state.online and state.agent_version == attempt.to_version
        ):
            return
        attempt.state = SUCCEEDED
        attempt.detail = f"now runs agent {attempt.to_version} (it came back late)"

        def run() -> None:
            audit.record(
                "system",
                "agent.update_succeeded",
                target_kind="host",
                target_id=attempt.host_id,
                payload={"job_id": attempt.job_id, "to_version": attempt.to_version, "late": True},
            )

        await self._ctx.store.transaction(run)
        await self._clear_alert(attempt.host_id, attempt.to_version)
        self._ctx.bus.publish(UpdatesChanged(attempt.host_id))

    # -- the fleet -----------------------------------------------------------------

    async def update_fleet(self, host_ids: list[int] | None, actor: Actor) -> FleetUpdateView:
        """Update ``host_ids`` (None: every host whose agent differs from the
        bundled build), one at a time, halting at the first failure."""
        if self._fleet is not None and self._fleet.state == RUNNING:
            raise Conflict("a fleet update is already running: wait for it to finish or cancel it")
        ids = _clean_ids(host_ids)
        versions = await self.bundled_versions()
        rows = await self._ctx.store.call(_fleet_rows, ids)
        entries: list[_Entry] = []
        for row in rows:
            target = available_update(row.os, row.arch, row.agent_version, versions)
            if ids is None and target is None:
                continue
            entry = _Entry(row.id, row.name, row.agent_version, target)
            if target is None:
                entry.state = SKIPPED
                entry.detail = _not_outdated(row, versions)
            entries.append(entry)
        if not entries:
            raise Conflict(
                "no host needs an update: every host that reported its version runs the "
                "bundled agent"
                if versions
                else "no agent build with a recorded version is bundled with this app: build "
                "one with `python packaging/build.py agent`"
            )
        run = _FleetRun(id=uuid.uuid4().hex, actor=actor, started_at=self._clock(), entries=entries)

        def record() -> None:
            audit.record(
                actor.kind,
                "agent.fleet_update_started",
                actor_id=actor.id,
                target_kind="fleet_update",
                target_id=run.id,
                payload={
                    "host_ids": [e.host_id for e in entries if e.state == PENDING],
                    "skipped": {str(e.host_id): e.detail for e in entries if e.state == SKIPPED},
                    "versions": versions,
                },
            )

        await self._ctx.store.transaction(record)
        self._fleet = run
        run.task = self._spawn(self._run_fleet(run), "agent-fleet-update")
        self._ctx.bus.publish(UpdatesChanged(None))
        return run.view()

    async def cancel(self, actor: Actor) -> FleetUpdateView:
        """Stop the fleet run before its next host; an update under way finishes on its own."""
        run = self._fleet
        if run is None or run.state != RUNNING:
            raise Conflict("no fleet update is running")
        if not run.cancel.is_set():
            under_way = run.current

            def record() -> None:
                audit.record(
                    actor.kind,
                    "agent.fleet_update_cancelled",
                    actor_id=actor.id,
                    target_kind="fleet_update",
                    target_id=run.id,
                    payload={"in_progress_host_id": under_way.host_id if under_way else None},
                )

            await self._ctx.store.transaction(record)
            if run.state == RUNNING:
                run.message = f"cancelled by {actor.kind}" + (
                    f"; the update of {under_way.host_name} was already under way and "
                    "finishes on its own"
                    if under_way is not None and under_way.attempt is not None
                    else ""
                )
            run.cancel.set()
        # The run's task notices at once; give it the turn to settle the view.
        await asyncio.sleep(0)
        return run.view()

    async def _run_fleet(self, run: _FleetRun) -> None:
        try:
            for entry in run.entries:
                if entry.state != PENDING:
                    continue
                if run.cancel.is_set():
                    break
                run.current = entry
                entry.state = UPDATING
                entry.detail = "checking the host"
                self._ctx.bus.publish(UpdatesChanged(None))
                try:
                    attempt = await self._begin(entry.host_id, run.actor, via=run)
                except (Conflict, NotFound) as exc:
                    # Cannot take an update now (offline, busy, gone): not a failed update.
                    entry.state = SKIPPED
                    entry.detail = exc.message
                    run.current = None
                    self._ctx.bus.publish(UpdatesChanged(None))
                    continue
                entry.attempt = attempt
                await _first(attempt.done.wait(), run.cancel.wait())
                run.current = None
                if attempt.state == FAILED:
                    run.state = FAILED
                    reason = (attempt.detail or "the update failed").rstrip(".")
                    run.message = (
                        f"Halted at {attempt.host_name}: {reason}. The hosts after it were not "
                        "updated; fix the problem, then start the update again."
                    )
                    break
                if run.cancel.is_set():
                    break
            for entry in run.entries:
                if entry.state == PENDING:
                    entry.state = NOT_STARTED
                    entry.detail = (
                        "the fleet update halted before this host"
                        if run.state == FAILED
                        else "the fleet update was cancelled before this host"
                    )
            if run.state == RUNNING:
                run.state = CANCELLED if run.cancel.is_set() else SUCCEEDED
            if run.state == SUCCEEDED and not any(e.view().state == SUCCEEDED for e in run.entries):
                run.message = "no host was updated: every host was skipped (see why for each)"
        except asyncio.CancelledError:
            run.state = CANCELLED
            run.message = run.message or "the control plane stopped"
            raise
        except Exception:
            log.exception("the fleet update failed")
            run.state = FAILED
            run.message = "internal error in the fleet update; see the app's log"
        finally:
            run.finished_at = self._clock()
            run.current = None
            await self._record_run_end(run)
            self._ctx.bus.publish(UpdatesChanged(None))

    async def _record_run_end(self, run: _FleetRun) -> None:
        outcome = {e.host_id: e.view() for e in run.entries}

        def record() -> None:
            audit.record(
                "system",
                "agent.fleet_update_finished",
                target_kind="fleet_update",
                target_id=run.id,
                payload={
                    "state": run.state,
                    "message": run.message,
                    "hosts": {str(h): v.state for h, v in outcome.items()},
                },
            )

        with contextlib.suppress(Exception):
            await asyncio.shield(self._ctx.store.transaction(record))


def _loop_running() -> bool:
    # Events can be delivered while no loop runs (Qt processing its queue at
    # shutdown); nothing can be scheduled then, and the next event will do.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _clean_ids(host_ids: Any) -> list[int] | None:
    if host_ids is None:
        return None
    if not isinstance(host_ids, list) or not 1 <= len(host_ids) <= MAX_FLEET_HOSTS:
        raise InvalidInput(
            f"'host_ids' must be a list of 1-{MAX_FLEET_HOSTS} host ids", field="host_ids"
        )
    for value in host_ids:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INT:
            raise InvalidInput(
                f"'host_ids' must hold positive whole numbers, got {value!r:.40}", field="host_ids"
            )
    return list(dict.fromkeys(host_ids))


def _build_for(row: _HostRow, bundled: list[BundledAgent]) -> BundledAgent:
    if not row.os or not row.arch or not row.agent_version:
        raise Conflict(
            f"{row.name} has not reported its platform and agent version yet: it must connect "
            "once before it can be updated"
        )
    wanted = f"{row.os}/{row.arch}"
    for agent in bundled:
        if agent.platform == wanted:
            if agent.version is None:
                raise Conflict(
                    f"the bundled {wanted} agent records no version (its .json sidecar is "
                    "missing): rebuild it with `python packaging/build.py agent`"
                )
            return agent
    have = ", ".join(a.platform for a in bundled) or "none"
    raise Conflict(
        f"no agent build for {wanted} is bundled with this app (bundled: {have}): build one "
        "on such a machine with `python packaging/build.py agent` (see packaging/README.md)"
    )


def _not_outdated(row: _HostRow, versions: dict[str, str]) -> str:
    if not row.enrolled or not row.agent_version:
        return "the agent has not connected yet"
    key = f"{row.os}/{row.arch}"
    if key not in versions:
        return f"no agent build for {key} is bundled with this app"
    return f"already runs agent {row.agent_version}"


# -- store thread ------------------------------------------------------------------


def _running_jobs(host_id: int) -> int:
    count: int = (
        Job.select()
        .where((Job.host == host_id) & (Job.status == "running") & (Job.kind != "update"))
        .count()
    )
    return count


def _row(host: Host) -> _HostRow:
    return _HostRow(
        id=host.id,
        name=host.name,
        os=host.os,
        arch=host.arch,
        agent_version=host.agent_version,
        enrolled=host.enrolled_at is not None,
        running_jobs=_running_jobs(host.id),
    )


def _host_row(host_id: int) -> _HostRow:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    if host is None:
        raise NotFound(f"host {host_id} does not exist")
    return _row(host)


def _fleet_rows(host_ids: list[int] | None) -> list[_HostRow]:
    query = Host.select()
    if host_ids is not None:
        query = query.where(Host.id.in_(host_ids))
    hosts = list(query)
    if host_ids is not None:
        missing = sorted(set(host_ids) - {h.id for h in hosts})
        if missing:
            raise NotFound(
                f"host(s) {', '.join(map(str, missing[:10]))} do not exist", field="host_ids"
            )
    # running_jobs is asked again when each host's turn comes.
    rows = [
        _HostRow(h.id, h.name, h.os, h.arch, h.agent_version, h.enrolled_at is not None, 0)
        for h in hosts
    ]
    return sorted(rows, key=lambda r: (r.name.casefold(), r.id))


def _progress(host_id: int, job_id: str) -> _Progress:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    job = require_job(job_id)
    percent = None
    if job.progress:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            percent = float(json.loads(job.progress)["percent"])
    return _Progress(
        online=bool(host.online) if host is not None else False,
        agent_version=host.agent_version if host is not None else None,
        job_status=str(job.status),
        job_error=job.error,
        percent=percent,
    )
