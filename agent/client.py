"""The agent runtime: one pinned-TLS WebSocket to the control plane.

``Agent`` wires the parts together (config, encrypted secrets, durable
outbox, job runner) and ``AgentClient`` keeps the connection: it says hello,
sends heartbeats, pumps the outbox (every durable event is on disk before
it is sent, and stays there until the server acks it), and dispatches the
server's messages. The connection comes and goes; nothing the agent did
while it was away is lost.

``command.update`` replaces the packaged agent (agent/self_update.py) and
ends ``run_agent`` with ``EXIT_RESTART`` for the service manager to start
the new binary; the control plane counts the update done when the agent
says hello with the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent import platform_info, protocol, self_update
from agent.config import AgentConfig, ConfigError, load_config
from agent.enrol import OUTBOX_FILE_NAME, pin_ssl, secrets_file_for
from agent.jobs import JobRunner, JobSettings, ResticBinary, locate_restic
from agent.outbox import Outbox, OutboxError
from agent.redact import Redactor
from agent.scheduler import STATE_FILE_NAME, TICK_S, Scheduler
from agent.secrets_file import SecretsError, SecretsFile
from agent.self_update import EXIT_RESTART, SelfUpdateError
from agent.tree_rpc import RpcFailure, TreeRpc
from agent.version import __version__

log = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILURE = 1
# The state dir cannot be written (full, read-only): unlike a usage or config
# error (2), it can clear by itself, so the service manager keeps retrying.
EXIT_STATE_DIR = 3

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_CONNECTION_S = 60.0
MAX_IN_FLIGHT = 1000
PUMP_BATCH = 200
CONNECT_TIMEOUT_S = 20.0
SHUTDOWN_DRAIN_S = 2.0
REPEAT_REPORT_S = 600.0
REJECTED_MESSAGE = (
    "this agent's credentials were rejected (host deleted or bearer revoked): re-enrol"
)


class AgentStartError(Exception):
    """The agent cannot start; ``str()`` says why and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DurableEmitter:
    """Store a durable event in the outbox, then wake whoever sends it.

    This is the ``emit`` the job runner is given: by the time it returns, the
    event is committed to disk and will reach the server eventually.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.wake = asyncio.Event()

    def __call__(self, message: protocol.Message) -> None:
        if not message.DURABLE:
            raise ValueError(f"{message.TYPE} is not a durable event")
        self._outbox.put(message.TYPE, protocol.to_dict(message))
        self.wake.set()


class _Outcome(enum.Enum):
    STOPPED = "stopped"
    CLOSED = "closed"
    FAILED = "failed"
    # These three cannot be fixed by retrying soon: wait the longest backoff.
    REJECTED = "rejected"
    INCOMPATIBLE = "incompatible"
    PIN_MISMATCH = "pin_mismatch"


_SLOW_RETRY = {_Outcome.REJECTED, _Outcome.INCOMPATIBLE, _Outcome.PIN_MISMATCH}


class AgentClient:
    def __init__(
        self,
        *,
        config: AgentConfig,
        bearer: str,
        secrets: SecretsFile,
        outbox: Outbox,
        emitter: DurableEmitter,
        jobs: JobRunner,
        restic_version: str | None,
        schedule_version: int = 0,
        on_schedule_set: Callable[[protocol.ScheduleSet], None] | None = None,
        rpc: TreeRpc | None = None,
        heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL_S,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        stable_after: float = STABLE_CONNECTION_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        rng: random.Random | None = None,
        on_restart: Callable[[], None] | None = None,
        executable: Callable[[], Path] = self_update.running_executable,
    ) -> None:
        self._config = config
        self._bearer = bearer
        self._secrets = secrets
        self._outbox = outbox
        self._emitter = emitter
        self._jobs = jobs
        self._restic_version = restic_version
        self._schedule_version = schedule_version
        self._on_schedule_set = on_schedule_set
        self._rpc = rpc
        # Calls being answered: held so their tasks are not garbage collected.
        self._calls: set[asyncio.Task[None]] = set()
        self._heartbeat_interval = heartbeat_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._max_in_flight = max_in_flight
        self._connect_timeout = connect_timeout
        self._rng = rng or random.Random()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._in_flight: dict[str, None] = {}
        self._incompatible = False
        self._last_report: str | None = None
        self._last_report_at = 0.0
        # Asked to restart into a freshly installed binary.
        self._on_restart = on_restart
        # Where this agent's binary is (raises when it is not the packaged agent).
        self._executable = executable
        self._update: tuple[str, asyncio.Task[None]] | None = None
        self._last_update_progress = 0.0
        # Set while a connection is up; tests and shutdown wait on it.
        self.connected = asyncio.Event()
        self.connections = 0

    @property
    def restic_version(self) -> str | None:
        return self._restic_version

    @property
    def schedule_version(self) -> int:
        return self._schedule_version

    @property
    def ws_url(self) -> str:
        return self._config.server_url.rstrip("/") + protocol.WS_PATH

    # -- connection loop ---------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, reconnecting with backoff."""
        loop = asyncio.get_running_loop()
        attempt = 0
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_connect=self._connect_timeout
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                began = loop.time()
                outcome, connected_for = await self._connect_once(session, stop)
                if outcome is _Outcome.STOPPED or stop.is_set():
                    break
                if connected_for > self._stable_after:
                    attempt = 0
                if outcome in _SLOW_RETRY:
                    delay = self._backoff_max
                else:
                    # Full jitter: a fleet that lost the app at once must not
                    # reconnect in lockstep when it comes back.
                    ceiling = min(self._backoff_max, self._backoff_initial * 2**attempt)
                    delay = self._rng.uniform(0, ceiling)
                    attempt += 1
                log.debug(
                    "reconnecting in %.1f s (attempt %d, last try %.1f s ago)",
                    delay,
                    attempt,
                    loop.time() - began,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _connect_once(
        self, session: aiohttp.ClientSession, stop: asyncio.Event
    ) -> tuple[_Outcome, float]:
        loop = asyncio.get_running_loop()
        self._incompatible = False
        try:
            ws = await session.ws_connect(
                self.ws_url,
                headers={"Authorization": f"Bearer {self._bearer}"},
                ssl=pin_ssl(self._config.cert_sha256),
                max_msg_size=protocol.WS_MAX_MSG_SIZE,
                heartbeat=self._heartbeat_interval,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                self._report(logging.ERROR, "rejected", REJECTED_MESSAGE)
                return _Outcome.REJECTED, 0.0
            self._report(
                logging.WARNING,
                f"http-{exc.status}",
                "the control plane refused the connection (HTTP %s %s); retrying",
                exc.status,
                exc.message,
            )
            return _Outcome.FAILED, 0.0
        except aiohttp.ServerFingerprintMismatch as exc:
            self._report(
                logging.ERROR,
                "pin",
                "the server's certificate does not match cert_sha256 in the agent config "
                "(expected %s, %s:%s presented %s): the bearer was not sent; check the "
                "fingerprint shown in the app, and re-enrol if its certificate was replaced",
                exc.expected.hex(),
                exc.host,
                exc.port,
                exc.got.hex(),
            )
            return _Outcome.PIN_MISMATCH, 0.0
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = _describe(exc)
            self._report(
                logging.WARNING,
                f"unreachable-{reason}",
                "cannot reach the control plane at %s: %s; retrying",
                self._config.server_url,
                reason,
            )
            return _Outcome.FAILED, 0.0

        connected_at = loop.time()
        self.connections += 1
        self._last_report = None
        log.info("connected to the control plane at %s", self._config.server_url)
        self._ws = ws
        self._in_flight.clear()
        outcome = _Outcome.CLOSED
        try:
            await self._send_frame(ws, protocol.encode(self._hello()))
            self.connected.set()
            workers = [
                asyncio.create_task(self._pump(ws), name="outbox-pump"),
                asyncio.create_task(self._heartbeat(ws), name="heartbeat"),
            ]
            reader = asyncio.create_task(self._read(ws), name="reader")
            stopper = asyncio.create_task(stop.wait(), name="stop-wait")
            try:
                done, _ = await asyncio.wait(
                    [reader, stopper, *workers], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (reader, stopper, *workers):
                    task.cancel()
                await asyncio.gather(reader, stopper, *workers, return_exceptions=True)
            for task in done:
                if task is not stopper and not task.cancelled():
                    failure = task.exception()
                    if failure is not None:
                        log.warning("connection lost: %s", _describe(failure))
            if stopper in done:
                outcome = _Outcome.STOPPED
            elif self._incompatible:
                outcome = _Outcome.INCOMPATIBLE
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            log.warning("connection lost: %s", _describe(exc))
        finally:
            self.connected.clear()
            self._ws = None
            with contextlib.suppress(Exception):
                await ws.close()
        duration = loop.time() - connected_at
        if outcome is not _Outcome.STOPPED:
            log.warning(
                "disconnected from the control plane after %.0f s (close code %s)",
                duration,
                ws.close_code,
            )
        return outcome, duration

    def _report(self, level: int, reason: str, message: str, *args: object) -> None:
        """Log a connection failure; the same one again only every few minutes.

        An agent whose app is closed for a weekend retries thousands of times;
        one line per retry would bury everything else in the journal.
        """
        now = time.monotonic()
        if self._last_report == reason and now - self._last_report_at < REPEAT_REPORT_S:
            log.debug(message, *args)
            return
        self._last_report = reason
        self._last_report_at = now
        log.log(level, message, *args)

    def _hello(self) -> protocol.Hello:
        return protocol.Hello(
            protocol_version=protocol.PROTOCOL_VERSION,
            agent_version=__version__,
            hostname=platform_info.hostname(self._config.hostname),
            os=platform_info.os_name(),
            arch=platform_info.arch(),
            restic_version=self._restic_version,
            schedule_version=self._schedule_version,
            running_job_ids=self._jobs.running_job_ids(),
        )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._on_frame(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                log.warning("ignored a binary frame from the control plane")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                log.warning("websocket error: %s", _describe(ws.exception()))
                return

    async def _on_frame(self, data: str) -> None:
        try:
            envelope = protocol.decode(data, allowed=protocol.SERVER_MESSAGES)
        except protocol.ProtocolError as exc:
            # One bad frame (a newer server, a bug) must not cost the connection.
            log.warning("ignored a frame from the control plane: %s", exc)
            return
        try:
            await self._dispatch(envelope)
        except (SecretsError, OSError, OutboxError) as exc:
            log.error("could not handle %s from the control plane: %s", envelope.type, exc)
        except (aiohttp.ClientError, ConnectionError):
            raise
        except Exception:
            # A bug in one handler must not drop the connection for everything else.
            log.exception("could not handle %s from the control plane", envelope.type)

    async def _dispatch(self, envelope: protocol.Envelope) -> None:
        message = envelope.payload
        if isinstance(message, protocol.Ack):
            self._on_ack(message.ids)
        elif isinstance(message, protocol.ConfigUpdate):
            self._on_config(message)
        elif isinstance(message, protocol.ScheduleSet):
            self._secrets.update(
                schedule=protocol.to_dict(message), schedule_version=message.version
            )
            self._schedule_version = message.version
            if self._on_schedule_set is not None:
                self._on_schedule_set(message)
            log.info(
                "schedule set v%d received (%d schedules, %d source groups)",
                message.version,
                len(message.schedules),
                len(message.source_groups),
            )
            await self.send(protocol.ScheduleAck(version=message.version))
        elif isinstance(message, protocol.CommandRun):
            self._jobs.start(message)
        elif isinstance(message, protocol.CommandCancel):
            if not self._jobs.cancel(message.job_id):
                log.info("cancel for job %s, which is not running here", message.job_id)
        elif isinstance(message, protocol.CommandUpdate):
            self._start_update(message)
        elif isinstance(message, protocol.RpcCall):
            # Answered in its own task: a search over a large index must not
            # hold up the frames behind it (a cancel, an ack).
            task = asyncio.create_task(self._answer(envelope.id, message), name="rpc-call")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif isinstance(message, protocol.Error):
            if message.code in ("protocol_too_old", "protocol_too_new"):
                self._incompatible = True
                log.error(
                    "the control plane cannot talk to this agent (%s): %s",
                    message.code,
                    message.message,
                )
                # Retrying at once cannot help; close now (the server should
                # too) so the long backoff starts.
                ws = self._ws
                if ws is not None:
                    await ws.close()
            else:
                log.warning("the control plane reported %s: %s", message.code, message.message)

    async def _answer(self, call_id: str, call: protocol.RpcCall) -> None:
        try:
            if self._rpc is None:
                raise RpcFailure(
                    "unsupported", f"{call.method!r} is not supported by agent {__version__}"
                )
            result = await self._rpc.call(call.method, call.params)
            reply = protocol.RpcResult(call_id=call_id, ok=True, result=result)
        except RpcFailure as exc:
            reply = protocol.RpcResult(
                call_id=call_id, ok=False, error=protocol.RpcError(exc.code, exc.message)
            )
        except Exception as exc:
            log.exception("answering %s failed", call.method)
            reply = protocol.RpcResult(
                call_id=call_id,
                ok=False,
                error=protocol.RpcError("failed", f"internal agent error: {exc}"),
            )
        try:
            await self.send(reply)
        except protocol.ProtocolError as exc:
            log.error("the answer to %s does not fit a frame: %s", call.method, exc)
            await self.send(
                protocol.RpcResult(
                    call_id=call_id,
                    ok=False,
                    error=protocol.RpcError("failed", f"the answer is too large: {exc}"),
                )
            )

    # -- self-update -----------------------------------------------------------

    def _start_update(self, command: protocol.CommandUpdate) -> None:
        if self._update is not None and not self._update[1].done():
            log.info("update %s ignored: update %s is in progress", command.job_id, self._update[0])
            return
        if self._outbox.knows_job(command.job_id):
            log.info("update %s was handled already; ignored a repeated command", command.job_id)
            return
        # Its own task: the download must neither hold up the frames behind it
        # nor die with the connection that carried the command.
        task = asyncio.create_task(self._self_update(command), name="self-update")
        self._update = (command.job_id, task)

    async def _self_update(self, command: protocol.CommandUpdate) -> None:
        job_id = command.job_id
        self._emitter(
            protocol.JobStarted(
                job_id=job_id,
                seq=self._outbox.next_seq(job_id),
                kind="update",
                actor="operator",
                started_at=time.time(),
                args={"version": command.version},
            )
        )
        try:
            target = self._executable()
            running = self._jobs.running_job_ids()
            if running:
                raise SelfUpdateError(
                    f"the agent is running {len(running)} job(s) ({', '.join(running[:3])}): "
                    "update it when they have finished"
                )
            self._update_line(
                job_id, f"updating the agent from {__version__} to {command.version} ({target})"
            )
            await self_update.update(
                command,
                server_url=self._config.server_url,
                cert_sha256=self._config.cert_sha256,
                target=target,
                progress=lambda done, total: self._update_progress(job_id, done, total),
                say=lambda text: self._update_line(job_id, text),
            )
        except SelfUpdateError as exc:
            log.error("the update to agent %s failed: %s", command.version, exc)
            self._update_failed(job_id, str(exc))
            return
        except Exception as exc:
            log.exception("the update to agent %s failed", command.version)
            self._update_failed(job_id, f"internal agent error during the update: {exc}")
            return
        self._update_line(
            job_id,
            f"restarting as agent {command.version}: exiting with code {EXIT_RESTART} for the "
            "service manager to start the new binary",
        )
        if self._on_restart is not None:
            self._on_restart()

    def _update_line(self, job_id: str, text: str) -> None:
        log.info("update: %s", text)
        line = protocol.LogLine(
            seq=self._outbox.next_seq(job_id), ts=time.time(), stream="agent", text=text
        )
        self._emitter(
            protocol.JobLog(job_id=job_id, seq=self._outbox.next_seq(job_id), lines=[line])
        )

    def _update_progress(self, job_id: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last_update_progress < 1.0:
            return  # ~1 Hz on the wire, like a backup's progress
        self._last_update_progress = now
        percent = min(100.0, 100.0 * done / total) if total else 0.0
        self._emitter(
            protocol.JobProgress(
                job_id=job_id,
                seq=self._outbox.next_seq(job_id),
                progress=protocol.Progress(
                    percent=round(percent, 1), bytes_done=done, bytes_total=total or 0
                ),
            )
        )

    def _update_failed(self, job_id: str, error: str) -> None:
        self._update_line(job_id, f"update failed: {error}")
        self._emitter(
            protocol.JobFinished(
                job_id=job_id,
                seq=self._outbox.next_seq(job_id),
                status="failed",
                finished_at=time.time(),
                error=error,
            )
        )

    async def cancel_update(self) -> None:
        """Stop an update in progress (the agent is shutting down); it reports failed."""
        if self._update is None or self._update[1].done():
            return
        job_id, task = self._update
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled():
            return
        with contextlib.suppress(OutboxError, OSError):
            self._update_failed(
                job_id, "the agent was stopped before the update finished; nothing was replaced"
            )

    def _on_config(self, message: protocol.ConfigUpdate) -> None:
        repository = (
            protocol.to_dict(message.repository) if message.repository is not None else None
        )
        bandwidth = protocol.to_dict(message.bandwidth)
        self._secrets.update(
            repository=repository,
            bandwidth=bandwidth,
            default_pre_hook=message.default_pre_hook,
            default_post_hook=message.default_post_hook,
            restore_dir=message.restore_dir,
        )
        self._jobs.update_settings(
            JobSettings(
                repository=message.repository,
                bandwidth=message.bandwidth,
                default_pre_hook=message.default_pre_hook,
                default_post_hook=message.default_post_hook,
                restore_dir=message.restore_dir,
            )
        )
        log.info(
            "configuration updated (repository %s)",
            "set" if message.repository is not None else "not set",
        )

    def _on_ack(self, ids: list[str]) -> None:
        self._outbox.ack(ids)
        for entry_id in ids:
            self._in_flight.pop(entry_id, None)
        self._emitter.wake.set()

    # -- sending -------------------------------------------------------------

    async def send(self, message: protocol.Message) -> bool:
        """Send a non-durable message now; False (and dropped) when offline."""
        if message.DURABLE:
            raise ValueError(f"{message.TYPE} is durable: emit it through the outbox")
        ws = self._ws
        if ws is None or ws.closed:
            log.debug("not connected: dropped %s", message.TYPE)
            return False
        try:
            await self._send_frame(ws, protocol.encode(message))
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            log.debug("sending %s failed: %s", message.TYPE, exc)
            return False
        return True

    async def _send_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: str) -> None:
        # Frames from the pump, heartbeats and replies must not interleave.
        async with self._send_lock:
            await ws.send_str(frame)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            beat = protocol.Heartbeat(
                running_job_ids=self._jobs.running_job_ids(),
                outbox_pending=self._outbox.count(),
            )
            await self._send_frame(ws, protocol.encode(beat))

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send the outbox in order, replaying everything unacked on each connect."""
        wake = self._emitter.wake
        last: str | None = None
        while True:
            wake.clear()
            room = self._max_in_flight - len(self._in_flight)
            if room <= 0:
                await wake.wait()
                continue
            entries = self._outbox.pending(limit=min(room, PUMP_BATCH), after_id=last)
            if not entries:
                await wake.wait()
                continue
            for entry in entries:
                last = entry.id
                # pending() restarts from the top when ``last`` was acked
                # meanwhile; what is still in flight need not go twice.
                if entry.id in self._in_flight:
                    continue
                frame = self._frame_for(entry.id, entry.type, entry.payload, entry.created_at)
                if frame is None:
                    continue
                self._in_flight[entry.id] = None
                await self._send_frame(ws, frame)

    def _frame_for(
        self, entry_id: str, kind: str, payload: dict[str, Any], created_at: float
    ) -> str | None:
        cls = protocol.MESSAGE_TYPES.get(kind)
        try:
            if cls is None or not cls.DURABLE:
                raise protocol.ProtocolError(f"unknown durable event type {kind!r}")
            message = protocol.from_dict(cls, payload)
            return protocol.encode(message, msg_id=entry_id, ts=created_at)
        except protocol.ProtocolError as exc:
            # A poisoned entry would be replayed forever and never acked.
            log.error(
                "dropping outbox entry %s (%s, job %s) that cannot be sent: %s",
                entry_id,
                kind,
                payload.get("job_id"),
                exc,
            )
            self._outbox.ack([entry_id])
            return None

    async def drain(self, max_wait: float) -> bool:
        """Wait (at most ``max_wait`` seconds) until the server acked the whole outbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while self._outbox.count() > 0:
            if self._ws is None or loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


class Agent:
    """Everything one running agent owns, wired together."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        secrets: SecretsFile,
        outbox: Outbox,
        restic: ResticBinary | None,
        heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL_S,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        grace_seconds: float = 10.0,
        shutdown_drain_seconds: float = SHUTDOWN_DRAIN_S,
        scheduler_tick: float = TICK_S,
        rng: random.Random | None = None,
        executable: Callable[[], Path] = self_update.running_executable,
    ) -> None:
        stored = secrets.load()
        bearer = stored.get("bearer")
        if not isinstance(bearer, str) or not bearer:
            raise AgentStartError(
                f"the secrets file {secrets.path} holds no bearer token: enrol this host "
                "again (restic-manager-agent enrol …)"
            )
        self.config = config
        self.outbox = outbox
        self.redactor = Redactor([bearer])
        self.emitter = DurableEmitter(outbox)
        self.jobs = JobRunner(
            emit=self.emitter,
            store=outbox,
            state_dir=Path(config.state_dir),
            redactor=self.redactor,
            restic=restic,
            settings=settings_from_secrets(stored),
            hostname=config.hostname,
            grace_seconds=grace_seconds,
            restore_dir=config.restore_dir,
        )
        schedule_set = schedule_from_secrets(stored)
        self.jobs.update_schedule_set(schedule_set)
        # The last schedule set the control plane sent: the agent fires
        # backups from it whether or not the control plane is reachable.
        self.scheduler = Scheduler(
            jobs=self.jobs,
            state_path=Path(config.state_dir) / STATE_FILE_NAME,
            schedule_set=schedule_set,
            tick=scheduler_tick,
        )
        schedule_version = stored.get("schedule_version")
        # Set once a new binary is in place: run() returns, run_agent exits
        # with EXIT_RESTART and the service manager starts the new binary.
        self._restart = asyncio.Event()
        self.client = AgentClient(
            config=config,
            bearer=bearer,
            secrets=secrets,
            outbox=outbox,
            emitter=self.emitter,
            jobs=self.jobs,
            restic_version=str(restic.version) if restic is not None else None,
            schedule_version=schedule_version if isinstance(schedule_version, int) else 0,
            on_schedule_set=self._on_schedule_set,
            rpc=TreeRpc(self.jobs.indexes, lambda: self.jobs.known_snapshots),
            heartbeat_interval=heartbeat_interval,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            rng=rng,
            on_restart=self._restart.set,
            executable=executable,
        )
        self._shutdown_drain_seconds = shutdown_drain_seconds

    @property
    def restart_requested(self) -> bool:
        return self._restart.is_set()

    def _on_schedule_set(self, schedule_set: protocol.ScheduleSet) -> None:
        self.jobs.update_schedule_set(schedule_set)
        self.scheduler.replace(schedule_set)

    @classmethod
    async def open(cls, config_path: Path, **kwargs: Any) -> Agent:
        """Load config and secrets, open the outbox and find restic."""
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise AgentStartError(str(exc)) from None
        state_dir = Path(config.state_dir)
        secrets = secrets_file_for(config_path, state_dir)
        try:
            secrets.load()
        except SecretsError as exc:
            raise AgentStartError(str(exc)) from None
        try:
            outbox = Outbox(state_dir / OUTBOX_FILE_NAME)
        except (OutboxError, OSError) as exc:
            raise AgentStartError(
                f"cannot open the outbox in {state_dir}: {exc}", EXIT_STATE_DIR
            ) from None
        try:
            restic = await locate_restic(config.restic_path)
            return cls(config=config, secrets=secrets, outbox=outbox, restic=restic, **kwargs)
        except BaseException:
            outbox.close()
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly and close the outbox."""
        recovered = self.jobs.recover_orphans()
        if recovered:
            log.warning(
                "%d job(s) were interrupted by an agent restart and are reported as failed",
                len(recovered),
            )
        client_stop = asyncio.Event()
        client_task = asyncio.create_task(self.client.run(client_stop), name="agent-client")
        scheduler_stop = asyncio.Event()
        scheduler_task = asyncio.create_task(
            self.scheduler.run(scheduler_stop), name="agent-scheduler"
        )
        try:
            stopper = asyncio.create_task(stop.wait())
            restarter = asyncio.create_task(self._restart.wait())
            await asyncio.wait(
                [stopper, restarter, client_task], return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            restarter.cancel()
            log.info(
                "shutting down"
                + (" to restart into the new binary" if self.restart_requested else "")
            )
            if not self.restart_requested:
                await self.client.cancel_update()
            # No new scheduled job may start while the running ones are cancelled.
            scheduler_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler_task
            await self.jobs.shutdown()
            # Give the final job events a moment to reach the server; whatever
            # does not make it is replayed from the outbox on the next start.
            await self.client.drain(self._shutdown_drain_seconds)
        finally:
            scheduler_stop.set()
            client_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler_task
            with contextlib.suppress(asyncio.CancelledError):
                await client_task
            self.outbox.close()


def schedule_from_secrets(stored: dict[str, Any]) -> protocol.ScheduleSet | None:
    raw = stored.get("schedule")
    if raw is None:
        return None
    try:
        return protocol.from_dict(protocol.ScheduleSet, raw)
    except protocol.ProtocolError as exc:
        log.warning("ignored an unreadable stored schedule set (%s); waiting for a new one", exc)
        return None


def settings_from_secrets(stored: dict[str, Any]) -> JobSettings:
    repository: protocol.RepoCredentials | None = None
    bandwidth = protocol.Bandwidth()
    raw_repo = stored.get("repository")
    if raw_repo is not None:
        try:
            repository = protocol.from_dict(protocol.RepoCredentials, raw_repo)
        except protocol.ProtocolError:
            log.warning("ignored stored repository credentials that cannot be read")
    raw_bw = stored.get("bandwidth")
    if raw_bw is not None:
        try:
            bandwidth = protocol.from_dict(protocol.Bandwidth, raw_bw)
        except protocol.ProtocolError:
            log.warning("ignored stored bandwidth limits that cannot be read")
    texts = {
        name: value if isinstance(value, str) else None
        for name, value in (
            ("default_pre_hook", stored.get("default_pre_hook")),
            ("default_post_hook", stored.get("default_post_hook")),
            ("restore_dir", stored.get("restore_dir")),
        )
    }
    return JobSettings(
        repository=repository,
        bandwidth=bandwidth,
        default_pre_hook=texts["default_pre_hook"],
        default_post_hook=texts["default_post_hook"],
        restore_dir=texts["restore_dir"],
    )


async def run_agent(
    config_path: Path,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    **agent_kwargs: Any,
) -> int:
    """``restic-manager-agent run``: run until SIGINT/SIGTERM (or ``stop``).

    Returns 0, or ``EXIT_RESTART`` after a self-update installed a new binary.
    """
    agent = await Agent.open(config_path, **agent_kwargs)
    logging.getLogger("agent").setLevel(agent.config.log_level.upper())
    stop = stop or asyncio.Event()
    removers: list[Callable[[], object]] = []
    if install_signal_handlers:
        removers = _install_signal_handlers(stop)
    log.info(
        "agent %s started (host id %d, restic %s)",
        __version__,
        agent.config.host_id,
        agent.client.restic_version or "not found",
    )
    try:
        await agent.run(stop)
    finally:
        for remove in removers:
            remove()
    if agent.restart_requested:
        log.warning(
            "agent stopped for its update: exit code %d, for the service manager to start "
            "the new binary",
            EXIT_RESTART,
        )
        return EXIT_RESTART
    log.info("agent stopped")
    return 0


def _install_signal_handlers(stop: asyncio.Event) -> list[Callable[[], object]]:
    loop = asyncio.get_running_loop()
    removers: list[Callable[[], object]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sys.platform == "win32":
            # No add_signal_handler on the Windows event loop.
            previous = signal.getsignal(sig)
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
            removers.append(functools.partial(signal.signal, sig, previous))
        else:
            loop.add_signal_handler(sig, stop.set)
            removers.append(functools.partial(loop.remove_signal_handler, sig))
    return removers


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # str() of these embeds the TLS object's repr; the OS reason is what helps.
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
