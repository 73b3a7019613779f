"""The agent runtime against a fake control plane over real pinned TLS WebSockets."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from agent import protocol
from agent.client import REJECTED_MESSAGE, Agent
from agent.config import AgentConfig, save_config
from agent.enrol import key_path_for, secrets_file_for
from agent.jobs import NO_CREDENTIALS_ERROR, find_restic_binary
from agent.outbox import Outbox
from agent.version import __version__
from tests.helpers.tls import make_tls
from tests.unit.agent.restic_repo import make_repo

BEARER = "bearer-secret-0123456789abcdef"
REPO_PASSWORD = "repo-pass-Zq8!x"


@dataclass
class FakeServer:
    url: str
    pin: str
    # (connection number, envelope) of every frame the agent sent.
    received: list[tuple[int, protocol.Envelope]] = field(default_factory=list)
    auto_ack: bool = True
    reject_status: int | None = None
    handshakes: int = 0
    handshake_times: list[float] = field(default_factory=list)
    connections: int = 0
    current: web.WebSocketResponse | None = None
    on_hello: list[str] = field(default_factory=list)

    def of_type(self, cls: type[protocol.Message]) -> list[protocol.Envelope]:
        return [env for _, env in self.received if isinstance(env.payload, cls)]

    async def send(self, message: protocol.Message | str) -> None:
        assert self.current is not None
        await self.current.send_str(
            message if isinstance(message, str) else protocol.encode(message)
        )

    async def drop(self) -> None:
        assert self.current is not None
        await self.current.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes += 1
        self.handshake_times.append(time.monotonic())
        if self.reject_status is not None:
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "no"}}, status=self.reject_status
            )
        if request.headers.get("Authorization") != f"Bearer {BEARER}":
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "bad bearer"}}, status=401
            )
        ws = web.WebSocketResponse(max_msg_size=protocol.MAX_FRAME_BYTES)
        await ws.prepare(request)
        self.connections += 1
        number = self.connections
        self.current = ws
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            env = protocol.decode(msg.data, allowed=protocol.AGENT_MESSAGES)
            self.received.append((number, env))
            if isinstance(env.payload, protocol.Hello):
                for frame in self.on_hello:
                    await ws.send_str(frame)
            if env.payload.DURABLE and self.auto_ack:
                await ws.send_str(protocol.encode(protocol.Ack(ids=[env.id])))
        return ws


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FakeServer]:
    ctx, pin = make_tls(tmp_path / "tls")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake = FakeServer(url=f"https://127.0.0.1:{sock.getsockname()[1]}", pin=pin)
    app = web.Application()
    app.router.add_get(protocol.WS_PATH, fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield fake
    finally:
        await runner.cleanup()


def write_enrolment(tmp_path: Path, server: FakeServer, *, pin: str | None = None) -> Path:
    config_path = tmp_path / "etc" / "agent.toml"
    state = tmp_path / "state"
    save_config(
        config_path,
        AgentConfig(
            server_url=server.url,
            cert_sha256=pin or server.pin,
            host_id=3,
            state_dir=str(state),
            hostname="db-02",
        ),
    )
    secrets_file_for(config_path, state).save({"bearer": BEARER})
    return config_path


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@dataclass
class Running:
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def start_agent(config_path: Path, **kwargs: Any) -> Running:
    options: dict[str, Any] = {
        "heartbeat_interval": 0.3,
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "shutdown_drain_seconds": 0.5,
        "rng": random.Random(1),
    }
    options.update(kwargs)
    agent = await Agent.open(config_path, **options)
    stop = asyncio.Event()
    return Running(agent, stop, asyncio.create_task(agent.run(stop)))


def job_log(job_id: str, seq: int, text: str) -> protocol.JobLog:
    return protocol.JobLog(
        job_id=job_id,
        seq=seq,
        lines=[protocol.LogLine(seq=seq, ts=1.0, stream="agent", text=text)],
    )


async def test_hello_and_heartbeat(server: FakeServer, tmp_path: Path) -> None:
    run = await start_agent(write_enrolment(tmp_path, server))
    try:
        await until(lambda: server.of_type(protocol.Heartbeat))
        hello = server.of_type(protocol.Hello)[0].payload
        assert isinstance(hello, protocol.Hello)
        assert hello.protocol_version == protocol.PROTOCOL_VERSION
        assert hello.agent_version == __version__
        assert hello.hostname == "db-02"
        assert hello.os == "linux"
        assert hello.arch in ("amd64", "arm64")
        assert hello.restic_version is not None  # restic is on PATH here
        assert hello.schedule_version == 0
        assert hello.running_job_ids == []
        beat = server.of_type(protocol.Heartbeat)[0].payload
        assert isinstance(beat, protocol.Heartbeat)
        assert beat.outbox_pending == 0
        # The hello is the first frame of the connection.
        assert isinstance(server.received[0][1].payload, protocol.Hello)
    finally:
        await run.close()


async def test_outbox_is_replayed_until_acked_without_loss_or_duplicates(
    server: FakeServer, tmp_path: Path
) -> None:
    server.auto_ack = False
    run = await start_agent(write_enrolment(tmp_path, server))
    try:
        await until(lambda: server.connections == 1)
        emit = run.agent.emitter
        for i in range(1, 6):
            emit(job_log("job-a", i, f"line {i}"))
        await until(lambda: len(server.of_type(protocol.JobLog)) == 5)
        first = [env.id for env in server.of_type(protocol.JobLog)]
        assert run.agent.outbox.count() == 5

        # Connection drops before any ack: everything comes again, in order.
        await server.drop()
        await until(lambda: server.connections == 2)
        await until(lambda: len(server.of_type(protocol.JobLog)) == 10)
        second = [env.id for conn, env in server.received if conn == 2 and env.type == "job.log"]
        assert second == first
        assert [
            env.payload.seq for conn, env in server.received
            if conn == 2 and isinstance(env.payload, protocol.JobLog)
        ] == [1, 2, 3, 4, 5]  # fmt: skip

        # Ack the first three; new events keep flowing while the rest wait.
        assert server.current is not None
        await server.send(protocol.Ack(ids=first[:3]))
        await until(lambda: run.agent.outbox.count() == 2)
        server.auto_ack = True
        emit(job_log("job-a", 6, "line 6"))
        await until(lambda: len(server.of_type(protocol.JobLog)) == 11)

        await server.drop()
        await until(lambda: server.connections == 3)
        await until(lambda: run.agent.outbox.count() == 0)
        third = [env.id for conn, env in server.received if conn == 3 and env.type == "job.log"]
        # Only what was never acked is sent again.
        assert third == first[3:]
        all_ids = {env.id for env in server.of_type(protocol.JobLog)}
        assert len(all_ids) == 6
        # The envelope id is stable across replays: it is the outbox id.
        assert set(first) <= all_ids
    finally:
        await run.close()


async def test_events_emitted_while_offline_are_delivered_on_connect(
    server: FakeServer, tmp_path: Path
) -> None:
    config_path = write_enrolment(tmp_path, server)
    # Events written by an earlier run of the agent (e.g. while the app was closed).
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as outbox:
        for i in range(1, 4):
            outbox.put("job.log", protocol.to_dict(job_log("job-b", i, f"offline {i}")))
    run = await start_agent(config_path)
    try:
        await until(lambda: len(server.of_type(protocol.JobLog)) == 3)
        await until(lambda: run.agent.outbox.count() == 0)
        texts = [env.payload.lines[0].text for env in server.of_type(protocol.JobLog)]  # type: ignore[attr-defined]
        assert texts == ["offline 1", "offline 2", "offline 3"]
    finally:
        await run.close()


async def test_rejected_bearer_is_logged_and_retried_at_max_backoff(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.reject_status = 401
    caplog.set_level(logging.INFO, logger="agent")
    run = await start_agent(write_enrolment(tmp_path, server), backoff_max=0.4)
    try:
        await until(lambda: server.handshakes >= 3)
        gaps = [
            b - a for a, b in zip(server.handshake_times, server.handshake_times[1:], strict=False)
        ]
        assert all(gap >= 0.35 for gap in gaps), gaps
        assert REJECTED_MESSAGE in caplog.text
        assert BEARER not in caplog.text
        # Once the server accepts again (host re-approved), the agent connects.
        server.reject_status = None
        await until(lambda: server.connections == 1)
    finally:
        await run.close()


async def test_wrong_pin_never_connects(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    run = await start_agent(write_enrolment(tmp_path, server, pin="cd" * 32))
    try:
        await until(lambda: "does not match" in caplog.text)
        await asyncio.sleep(0.2)
        assert server.connections == 0
        assert server.handshakes == 0  # the bearer never reached the impostor
    finally:
        await run.close()


async def test_malformed_frames_do_not_kill_the_connection(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    run = await start_agent(write_enrolment(tmp_path, server))
    try:
        await until(lambda: server.connections == 1)
        await server.send("this is not json")
        await server.send('{"type": "no.such", "id": "x", "ts": 1, "payload": {}}')
        await server.send('{"type": "command.cancel", "id": "y", "ts": 1, "payload": {}}')
        call = protocol.RpcCall(method="tree.list", params={"path": "/"})
        await server.send(protocol.encode(call, msg_id="call-1"))
        await until(lambda: server.of_type(protocol.RpcResult))
        result = server.of_type(protocol.RpcResult)[0].payload
        assert isinstance(result, protocol.RpcResult)
        assert result.call_id == "call-1"
        assert result.ok is False
        assert result.error is not None and result.error.code == "bad_params"
        assert "missing field 'snapshot_id'" in result.error.message
        assert server.connections == 1
        assert "not valid JSON" in caplog.text
        assert "unknown message type" in caplog.text
        assert "missing field 'job_id'" in caplog.text
    finally:
        await run.close()


async def test_protocol_mismatch_error_backs_off_at_max(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    err = protocol.Error(code="protocol_too_old", message="update the agent")
    server.on_hello = [protocol.encode(err)]
    run = await start_agent(write_enrolment(tmp_path, server), backoff_max=0.5)
    try:
        await until(lambda: server.connections == 1)
        await until(lambda: "protocol_too_old" in caplog.text)
        await server.drop()
        await until(lambda: server.connections == 2)
        assert server.handshake_times[1] - server.handshake_times[0] >= 0.45
        assert any(r.levelno == logging.ERROR for r in caplog.records if "too_old" in r.message)
    finally:
        await run.close()


async def test_config_update_is_stored_encrypted_and_used_by_jobs(
    server: FakeServer, tmp_path: Path
) -> None:
    config_path = write_enrolment(tmp_path, server)
    # No repository there: restic fails fast (no key derivation), and its
    # error proves the job ran restic with the credentials from config.update.
    repo = tmp_path / "no-repo-here"
    run = await start_agent(config_path)

    def finished() -> list[protocol.JobFinished]:
        return [env.payload for env in server.of_type(protocol.JobFinished)]  # type: ignore[misc]

    try:
        await until(lambda: server.connections == 1)
        # Before any config.update a job cannot know its repository.
        await server.send(protocol.CommandRun(job_id="j-early", kind="snapshots", actor="operator"))
        await until(lambda: len(finished()) == 1)
        assert finished()[0].status == "failed"
        assert finished()[0].error == NO_CREDENTIALS_ERROR

        creds = protocol.RepoCredentials(url=str(repo), password=REPO_PASSWORD)
        await server.send(
            protocol.ConfigUpdate(repository=creds, bandwidth=protocol.Bandwidth(upload_kib_s=5000))
        )
        await server.send(protocol.CommandRun(job_id="j-init", kind="stats", actor="operator"))
        await until(lambda: len(finished()) == 2, timeout=30)
        assert finished()[1].status == "failed"
        assert finished()[1].error is not None
        assert "does not exist" in finished()[1].error
    finally:
        await run.close()

    stored = secrets_file_for(config_path, tmp_path / "state").load()
    assert stored["repository"]["password"] == REPO_PASSWORD
    assert stored["bandwidth"] == {"upload_kib_s": 5000, "download_kib_s": None}
    for path in [*tmp_path.joinpath("state").rglob("*"), *tmp_path.joinpath("etc").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert REPO_PASSWORD.encode() not in data, path
            assert BEARER.encode() not in data, path
    for _, env in server.received:
        assert REPO_PASSWORD not in protocol.encode(env.payload)

    # After a restart the credentials are still there (no new config.update).
    run = await start_agent(config_path)
    try:
        await until(lambda: server.connections == 2)
        await server.send(protocol.CommandRun(job_id="j-snap", kind="snapshots", actor="operator"))
        await until(lambda: len(finished()) == 3, timeout=30)
        assert finished()[2].error is not None
        assert "does not exist" in finished()[2].error
    finally:
        await run.close()


async def test_schedule_set_is_acked_persisted_and_reported_in_hello(
    server: FakeServer, tmp_path: Path
) -> None:
    config_path = write_enrolment(tmp_path, server)
    run = await start_agent(config_path)
    group = protocol.SourceGroupSpec(id=1, name="etc", includes=["/etc"], pre_hook="echo hi")
    try:
        await until(lambda: server.connections == 1)
        await server.send(
            protocol.ScheduleSet(
                version=4,
                schedules=[protocol.ScheduleSpec(id=1, cron="0 3 * * *", enabled=True,
                                                 source_group_ids=[1])],
                source_groups=[group],
            )
        )  # fmt: skip
        await until(lambda: server.of_type(protocol.ScheduleAck))
        ack = server.of_type(protocol.ScheduleAck)[0].payload
        assert isinstance(ack, protocol.ScheduleAck) and ack.version == 4
    finally:
        await run.close()
    stored = secrets_file_for(config_path, tmp_path / "state").load()
    assert stored["schedule_version"] == 4
    assert stored["schedule"]["source_groups"][0]["pre_hook"] == "echo hi"
    # Hooks are secret: not in plaintext anywhere in the state dir.
    for path in tmp_path.joinpath("state").rglob("*"):
        if path.is_file():
            assert b"echo hi" not in path.read_bytes()

    run = await start_agent(config_path)
    try:
        await until(lambda: len(server.of_type(protocol.Hello)) == 2)
        hello = server.of_type(protocol.Hello)[1].payload
        assert isinstance(hello, protocol.Hello) and hello.schedule_version == 4
    finally:
        await run.close()


async def test_orphaned_jobs_are_reported_failed_at_start(
    server: FakeServer, tmp_path: Path
) -> None:
    config_path = write_enrolment(tmp_path, server)
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as outbox:
        outbox.mark_running("orphan-1", "backup")
        outbox.put(
            "job.started",
            protocol.to_dict(
                protocol.JobStarted(
                    job_id="orphan-1",
                    seq=outbox.next_seq("orphan-1"),
                    kind="backup",
                    actor="schedule",
                    started_at=1.0,
                )
            ),
        )
    run = await start_agent(config_path)
    try:
        await until(lambda: server.of_type(protocol.JobFinished))
        finished = server.of_type(protocol.JobFinished)[0].payload
        assert isinstance(finished, protocol.JobFinished)
        assert finished.job_id == "orphan-1"
        assert finished.status == "failed"
        assert finished.error is not None and "agent restarted" in finished.error
        events = [
            env.payload for env in [e for _, e in server.received]
            if getattr(env.payload, "job_id", None) == "orphan-1"
        ]  # fmt: skip
        assert [type(e).__name__ for e in events] == ["JobStarted", "JobLog", "JobFinished"]
        seqs = [e.seq for e in events]  # type: ignore[attr-defined]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        assert run.agent.outbox.running() == []
        hello = server.of_type(protocol.Hello)[0].payload
        assert isinstance(hello, protocol.Hello) and hello.running_job_ids == []
    finally:
        await run.close()


async def test_unsupported_commands_fail_the_job_clearly(
    server: FakeServer, tmp_path: Path
) -> None:
    run = await start_agent(write_enrolment(tmp_path, server))
    try:
        await until(lambda: server.connections == 1)
        await server.send(
            protocol.CommandUpdate(job_id="u1", version="9.9.9", url="https://x/a", sha256="00")
        )
        await server.send(protocol.CommandRun(job_id="r1", kind="update", actor="operator"))
        await until(lambda: len(server.of_type(protocol.JobFinished)) == 2)
        by_job = {
            env.payload.job_id: env.payload  # type: ignore[attr-defined]
            for env in server.of_type(protocol.JobFinished)
        }
        # The venv's agent refuses: only the packaged agent replaces itself.
        assert "self-update needs the packaged agent" in by_job["u1"].error
        assert by_job["r1"].error == f"job kind update is not supported by agent {__version__}"
        started = {env.payload.job_id for env in server.of_type(protocol.JobStarted)}  # type: ignore[attr-defined]
        assert started == {"u1", "r1"}
    finally:
        await run.close()


async def test_stop_returns_promptly_and_closes_the_outbox(
    server: FakeServer, tmp_path: Path
) -> None:
    run = await start_agent(write_enrolment(tmp_path, server))
    await until(lambda: server.connections == 1)
    started = time.monotonic()
    await run.close()
    assert time.monotonic() - started < 3
    with pytest.raises(Exception, match="closed"):
        run.agent.outbox.count()


async def test_restic_binary_is_found(tmp_path: Path) -> None:
    found = await find_restic_binary("/usr/bin/restic")
    assert str(found.version).startswith("0.14")
    assert key_path_for(tmp_path / "a.toml") == tmp_path / "a.toml.key"


async def test_the_agent_fires_its_stored_schedule_by_itself(
    server: FakeServer, tmp_path: Path
) -> None:
    config_path = write_enrolment(tmp_path, server)
    group = protocol.SourceGroupSpec(id=1, name="etc", includes=["/etc"])
    schedule_set = protocol.ScheduleSet(
        version=5,
        schedules=[protocol.ScheduleSpec(id=3, cron="0 * * * *", enabled=True,
                                         source_group_ids=[1])],
        source_groups=[group],
    )  # fmt: skip
    secrets_file_for(config_path, tmp_path / "state").update(
        schedule=protocol.to_dict(schedule_set), schedule_version=5
    )
    # The agent last fired this schedule three hours ago, then was stopped.
    long_ago = time.time() - 3 * 3600
    (tmp_path / "state" / "scheduler-state.json").write_text(
        json.dumps(
            {
                "version": 1,
                "marks": {
                    "schedule:3": {
                        "cron": "0 * * * *",
                        "after": long_ago,
                        "last_fired_at": long_ago,
                    }
                },
            }
        )
    )
    run = await start_agent(config_path)
    try:
        await until(lambda: server.of_type(protocol.JobFinished), timeout=20)
        started = server.of_type(protocol.JobStarted)
        assert len(started) == 1  # missed windows run once, not three times
        payload = started[0].payload
        assert isinstance(payload, protocol.JobStarted)
        assert (payload.kind, payload.actor) == ("backup", "schedule")
        assert (payload.schedule_id, payload.source_group_id) == (3, 1)
        assert payload.args["catch_up"] is True
        assert protocol.JOB_ID_PATTERN.fullmatch(payload.job_id)
        # No repository credentials yet: the job fails, and says why.
        finished = server.of_type(protocol.JobFinished)[0].payload
        assert isinstance(finished, protocol.JobFinished)
        assert finished.error == NO_CREDENTIALS_ERROR
        assert run.agent.scheduler.schedule_set == schedule_set
    finally:
        await run.close()
    state = json.loads((tmp_path / "state" / "scheduler-state.json").read_text())
    assert state["marks"]["schedule:3"]["after"] > long_ago


async def test_a_new_schedule_set_reaches_the_scheduler_and_forget(
    server: FakeServer, tmp_path: Path
) -> None:
    run = await start_agent(write_enrolment(tmp_path, server))
    try:
        await until(lambda: server.connections == 1)
        assert run.agent.scheduler.schedule_set is None
        schedule_set = protocol.ScheduleSet(
            version=2,
            schedules=[],
            source_groups=[protocol.SourceGroupSpec(id=1, name="etc", includes=["/etc"])],
        )
        await server.send(schedule_set)
        await until(lambda: server.of_type(protocol.ScheduleAck))
        assert run.agent.scheduler.schedule_set == schedule_set
        await server.send(protocol.CommandRun(job_id="fg", kind="forget", actor="system"))
        await until(lambda: server.of_type(protocol.JobFinished))
        finished = server.of_type(protocol.JobFinished)[0].payload
        assert isinstance(finished, protocol.JobFinished)
        # Forget knew the groups (it got as far as needing the repository).
        assert finished.error == NO_CREDENTIALS_ERROR
    finally:
        await run.close()


async def test_admin_credentials_are_used_for_their_job_and_never_stored(
    server: FakeServer, tmp_path: Path
) -> None:
    admin_password = "Admin-Pw-7c1e9b03"
    repo = tmp_path / "repo"
    subprocess.run(
        ["/usr/bin/restic", "init", "--no-cache"],
        env={"PATH": "/usr/bin:/bin", "RESTIC_REPOSITORY": str(repo),
             "RESTIC_PASSWORD": admin_password},
        check=True,
        capture_output=True,
    )  # fmt: skip
    config_path = write_enrolment(tmp_path, server)
    run = await start_agent(config_path)

    def finished() -> dict[str, protocol.JobFinished]:
        return {
            env.payload.job_id: env.payload  # type: ignore[attr-defined]
            for env in server.of_type(protocol.JobFinished)
        }

    try:
        await until(lambda: server.connections == 1)
        # The everyday credential cannot open this repository; the admin one can.
        await server.send(
            protocol.ConfigUpdate(
                repository=protocol.RepoCredentials(url=str(repo), password=REPO_PASSWORD)
            )
        )
        admin = protocol.RepoCredentials(url=str(repo), password=admin_password)
        await server.send(
            protocol.CommandRun(job_id="adm", kind="prune", actor="system", credentials=admin)
        )
        await until(lambda: "adm" in finished(), timeout=60)
        assert finished()["adm"].status == "succeeded", finished()["adm"].error
        await server.send(protocol.CommandRun(job_id="plain", kind="prune", actor="system"))
        await until(lambda: "plain" in finished(), timeout=60)
        assert "wrong password" in (finished()["plain"].error or "")
    finally:
        await run.close()
    for path in [*tmp_path.joinpath("state").rglob("*"), *tmp_path.joinpath("etc").rglob("*")]:
        if path.is_file():
            assert admin_password.encode() not in path.read_bytes(), path
    # Not in the encrypted secrets either (the everyday credential is).
    stored = json.dumps(secrets_file_for(config_path, tmp_path / "state").load())
    assert admin_password not in stored and REPO_PASSWORD in stored
    for _, env in server.received:
        assert admin_password not in protocol.encode(env.payload)


async def test_browse_find_and_restore_through_the_connection(
    server: FakeServer, tmp_path: Path
) -> None:
    """tree.list / tree.find as RpcCall frames answered by RpcResult frames,
    and a restore job, against a real repository (restic on PATH)."""
    repo = make_repo(tmp_path / "data")
    snap = repo.snapshots[1]
    run = await start_agent(write_enrolment(tmp_path, server))
    calls = 0

    async def call(method: str, params: dict[str, Any]) -> protocol.RpcResult:
        nonlocal calls
        calls += 1
        call_id = f"call-{calls}"
        await server.send(
            protocol.encode(protocol.RpcCall(method=method, params=params), msg_id=call_id)
        )
        await until(lambda: any(r.call_id == call_id for r in results()))
        (answer,) = [r for r in results() if r.call_id == call_id]
        return answer

    def results() -> list[protocol.RpcResult]:
        return [env.payload for env in server.of_type(protocol.RpcResult)]  # type: ignore[misc]

    try:
        await until(lambda: server.connections == 1)
        restore_dir = tmp_path / "restores"
        await server.send(
            protocol.ConfigUpdate(repository=repo.creds(), restore_dir=str(restore_dir))
        )
        params = {"snapshot_id": snap, "path": str(repo.src)}
        first = await call(protocol.TREE_LIST, params)
        assert first.ok and first.result is not None
        assert first.result["index"]["state"] == "building"
        deadline = time.monotonic() + 60
        while True:
            answer = await call(protocol.TREE_LIST, params)
            assert answer.ok and answer.result is not None, answer.error
            listing = protocol.from_dict(protocol.TreeListResult, answer.result)
            if listing.index.state == "ready":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert [e.name for e in listing.entries][:2] == ["docs", "empty"]
        assert listing.total == 6

        found = await call(protocol.TREE_FIND, {"pattern": "new.txt", "snapshot_id": snap})
        assert found.ok and found.result is not None
        matches = protocol.from_dict(protocol.TreeFindResult, found.result).matches
        assert [m.path for m in matches] == [f"{repo.src}/new.txt"]

        missing = await call(protocol.TREE_LIST, {"snapshot_id": snap, "path": "/nope"})
        assert not missing.ok and missing.error is not None
        assert missing.error.code == "not_found" and "/nope" in missing.error.message

        await server.send(
            protocol.CommandRun(
                job_id="restore-1",
                kind="restore",
                actor="operator",
                args=protocol.to_dict(
                    protocol.RestoreArgs(snapshot_id=snap, paths=[f"{repo.src}/docs"])
                ),
            )
        )
        await until(
            lambda: any(
                env.payload.job_id == "restore-1"  # type: ignore[attr-defined]
                for env in server.of_type(protocol.JobFinished)
            ),
            timeout=60,
        )
        (done,) = [env.payload for env in server.of_type(protocol.JobFinished)]
        assert isinstance(done, protocol.JobFinished)
        assert done.status == "succeeded", done.error
        assert done.summary is not None
        target = Path(str(done.summary["target"]))
        assert target.parent == restore_dir
        restored = target / str(repo.src).lstrip("/") / "docs" / "a.txt"
        assert restored.read_bytes() == (repo.src / "docs" / "a.txt").read_bytes()
        assert server.connections == 1
    finally:
        await run.close()
