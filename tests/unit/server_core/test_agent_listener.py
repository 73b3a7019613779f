"""The agent listener, in process, over real TLS, with a hand-driven agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import keyring.backends.fail
import pytest

from agent import protocol as p
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import Host
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol, raw_frame


@pytest.fixture
def offline_after() -> float:
    return 90.0


@pytest.fixture
async def cp(tmp_path: Path, offline_after: float) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
            offline_after_s=offline_after,
        )
    )
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def add_host(cp: ControlPlane, name: str = "web1") -> str:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    grant = await cp.enrolment.add_host(new, OPERATOR)
    return grant.token


async def enrolled_agent(
    cp: ControlPlane, session: aiohttp.ClientSession, name: str = "web1"
) -> tuple[int, FakeAgent]:
    token = await add_host(cp, name)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, name)
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    return body["host_id"], agent


async def test_hello_pushes_credentials_and_the_probe_job(cp, session):
    host_id, agent = await enrolled_agent(cp, session)
    config = await agent.expect(p.ConfigUpdate)
    assert config.repository.password == "hunter2hunter2"
    command = await agent.expect(p.CommandRun)
    assert command.kind == "init" and command.actor == "system"
    host = await cp.hosts.get_host(host_id)
    assert host.status == "online" and host.enrolled


async def test_token_is_one_time(cp, session):
    token = await add_host(cp)
    await enrol(session, cp.agent_url, cp.certificate.sha256, token)
    with pytest.raises(AssertionError, match="token already used"):
        await enrol(session, cp.agent_url, cp.certificate.sha256, token)


async def test_bad_bearer_is_refused_before_upgrade(cp, session):
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, "rmb_forged")
    assert err.value.status == 401


@pytest.mark.parametrize(("version", "code"), [(0, "protocol_too_old"), (99, "protocol_too_new")])
async def test_protocol_mismatch_gets_an_error_and_a_clean_close(cp, session, version, code):
    token = await add_host(cp)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token)
    agent = await FakeAgent.connect(
        session, cp.agent_url, cp.certificate.sha256, body["bearer"], hello=False
    )
    # A future hello may carry fields we do not know: still a version error.
    await agent.send_raw(raw_frame("hello", {"protocol_version": version, "shiny": True}))
    error = await agent.expect(p.Error)
    assert error.code == code
    closing = await agent.ws.receive(timeout=5)
    assert closing.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )


async def test_bad_frames_get_errors_and_the_connection_survives(cp, session):
    host_id, agent = await enrolled_agent(cp, session)
    for frame in (
        "{nope",
        raw_frame("job.started", {"job_id": 1}),
        raw_frame("command.run", {}),
        "x" * 10,
    ):
        await agent.send_raw(frame)
        error = await agent.expect(p.Error)
        assert error.code == "bad_frame"
    await agent.ws.send_bytes(b"\x00\x01")
    assert (await agent.expect(p.Error)).code == "bad_frame"
    mid = await agent.send(p.SnapshotsReport(collected_at=time.time(), snapshots=[]))
    await agent.acked({mid})
    assert (await cp.hosts.get_host(host_id)).status == "online"


async def test_events_are_idempotent_and_acked_after_commit(cp, session):
    host_id, agent = await enrolled_agent(cp, session)
    job = "a" * 32
    events = [
        p.JobStarted(job_id=job, seq=1, kind="backup", actor="schedule", started_at=100.0),
        p.JobLog(
            job_id=job, seq=2, lines=[p.LogLine(seq=2, ts=101.0, stream="stdout", text="one")]
        ),
        p.JobProgress(job_id=job, seq=3, progress=p.Progress(percent=50.0)),
        p.JobLog(
            job_id=job, seq=4, lines=[p.LogLine(seq=4, ts=102.0, stream="stderr", text="two")]
        ),
        p.JobFinished(job_id=job, seq=5, status="succeeded", finished_at=103.0, exit_code=0),
    ]
    ids = [p.new_id() for _ in events]
    for _ in range(2):  # a replay after a reconnect sends everything again
        for mid, event in zip(ids, events, strict=True):
            await agent.send(event, msg_id=mid)
        await agent.acked(set(ids))
    # A stale progress event after the finish must not revive the job.
    await agent.acked(
        {await agent.send(p.JobProgress(job_id=job, seq=3, progress=p.Progress(percent=1.0)))}
    )
    view = await cp.jobs.get_job(job)
    assert view.status == "succeeded" and view.actor == "schedule" and view.log_lines == 2
    assert [line.text for line in await cp.jobs.log(job)] == ["one", "two"]
    jobs = await cp.jobs.list_jobs(host_id)
    assert [j.id for j in jobs if j.kind == "backup"] == [job]


async def test_an_agent_cannot_touch_another_hosts_job(cp, session):
    _, agent_a = await enrolled_agent(cp, session, "a")
    _, agent_b = await enrolled_agent(cp, session, "b")
    job = "b" * 32
    await agent_b.acked(
        {
            await agent_b.send(
                p.JobStarted(job_id=job, seq=1, kind="backup", actor="agent", started_at=1.0)
            )
        }
    )
    forged = p.JobFinished(job_id=job, seq=9, status="failed", finished_at=2.0, error="forged")
    await agent_a.acked({await agent_a.send(forged)})
    assert (await cp.jobs.get_job(job)).status == "running"
    forged_log = p.JobLog(
        job_id=job, seq=10, lines=[p.LogLine(seq=10, ts=1.0, stream="stdout", text="x")]
    )
    await agent_a.acked({await agent_a.send(forged_log)})
    assert await cp.jobs.log(job) == []
    from server_core.services.audit_log import list_audit

    refused = await cp.store.call(list_audit, action="agent.event_refused")
    assert len(refused) == 2


async def test_deleting_a_host_revokes_its_bearer_and_closes_the_socket(cp, session):
    host_id, agent = await enrolled_agent(cp, session)
    await agent.expect(p.ConfigUpdate)
    await cp.hosts.delete_host(host_id, OPERATOR)
    closing = await agent.ws.receive(timeout=5)
    while closing.type == aiohttp.WSMsgType.TEXT:
        closing = await agent.ws.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not cp.hub.is_connected(host_id)


@pytest.mark.parametrize("offline_after", [1.5])
async def test_a_silent_agent_goes_offline_and_heartbeats_keep_it_online(cp, session):
    import asyncio

    host_id, _silent = await enrolled_agent(cp, session, "silent")
    chatty_id, chatty = await enrolled_agent(cp, session, "chatty")
    for _ in range(8):
        await asyncio.sleep(0.5)
        await chatty.send(p.Heartbeat())
    assert (await cp.hosts.get_host(host_id)).status == "offline"
    assert (await cp.hosts.get_host(chatty_id)).status == "online"
    from server_core.services.audit_log import list_audit

    offline = await cp.store.call(list_audit, action="host.offline")
    assert [e.target_id for e in offline] == [str(host_id)]


async def test_a_cancel_asked_while_the_agent_was_away_is_delivered_at_hello(cp, session):
    token = await add_host(cp, "away")
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, "away")
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    probe = await agent.expect(p.CommandRun)  # the enrolment probe: dispatched
    await agent.ws.close()
    await asyncio.sleep(0.2)
    await cp.jobs.cancel(probe.job_id, OPERATOR)
    assert (await cp.jobs.get_job(probe.job_id)).status == "queued"  # the agent may have it
    again = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    cancel = await again.expect(p.CommandCancel)
    assert cancel.job_id == probe.job_id


async def test_a_job_never_sent_is_cancelled_on_the_spot(cp, session):
    token = await add_host(cp, "never")
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, "never")
    (probe,) = await cp.jobs.list_jobs(body["host_id"])
    await cp.jobs.cancel(probe.id, OPERATOR)
    view = await cp.jobs.get_job(probe.id)
    assert view.status == "cancelled" and "before it was sent" in view.error
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    await agent.expect(p.ConfigUpdate)
    with pytest.raises(AssertionError):
        await agent.expect(p.CommandRun, timeout=1.0)


async def test_reprobes_while_offline_queue_one_probe_not_many(cp, session):
    token = await add_host(cp, "reprobe")
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, "reprobe")
    for _ in range(3):
        await cp.hosts.set_credentials(
            body["host_id"], "everyday", {"url": "/srv/r2", "password": "newpass1"}, OPERATOR
        )
    jobs = await cp.jobs.list_jobs(body["host_id"])
    assert [j.kind for j in jobs] == ["init"]


async def test_the_presence_sweep_stores_last_seen_at(cp, session):
    host_id, agent = await enrolled_agent(cp, session)
    await agent.expect(p.ConfigUpdate)  # sent once the hello registered the host
    assert cp.hub.is_connected(host_id)

    def forget() -> None:
        Host.update(last_seen_at=None).where(Host.id == host_id).execute()

    await cp.store.transaction(forget)
    before = time.time()
    await cp.hub.sweep()
    seen = await cp.store.call(lambda: Host.get_by_id(host_id).last_seen_at)
    assert seen is not None and seen >= before - 60


async def test_a_log_for_a_job_never_started_creates_the_job(cp, session):
    _host_id, agent = await enrolled_agent(cp, session)
    job = "c" * 32
    lines = [p.LogLine(seq=1, ts=1.0, stream="stdout", text="early")]
    await agent.acked({await agent.send(p.JobLog(job_id=job, seq=1, lines=lines))})
    view = await cp.jobs.get_job(job)
    assert view.status == "running" and view.log_lines == 1
    assert [line.text for line in await cp.jobs.log(job)] == ["early"]


# -- fairness, large frames and malformed HTTP (RELIABILITY.md, findings A-C) -----


class _Socket:
    closed = False

    async def close(self, **_: object) -> None:
        self.closed = True


class _Conn:
    def __init__(self) -> None:
        self.ws = _Socket()
        self.sent: list[p.Message] = []

    async def send(self, message: p.Message) -> None:
        self.sent.append(message)


async def test_a_connection_waits_once_its_window_of_unacked_events_is_full() -> None:
    from server_core import agent_listener as al

    conn = _Conn()
    sink = al._ConnectionSink(conn)  # type: ignore[arg-type]
    for i in range(al.MAX_UNACKED_EVENTS):
        await asyncio.wait_for(sink.reserve(f"e{i}", 10), 1)
    blocked = asyncio.ensure_future(sink.reserve("next", 10))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "the window let one event too many through"
    await sink.ack(["e0"])  # stored and acknowledged: room for one more
    await asyncio.wait_for(blocked, 1)
    assert isinstance(conn.sent[0], p.Ack) and conn.sent[0].ids == ["e0"]


async def test_the_window_also_counts_bytes_but_always_takes_one_event() -> None:
    from server_core import agent_listener as al

    sink = al._ConnectionSink(_Conn())  # type: ignore[arg-type]
    await asyncio.wait_for(sink.reserve("huge", al.MAX_UNACKED_BYTES * 2), 1)
    blocked = asyncio.ensure_future(sink.reserve("small", 1))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    # A dropped link frees whoever waits on it (the agent replays later).
    await sink.abort("replay later")
    await asyncio.wait_for(blocked, 1)


async def test_large_frames_are_decoded_off_the_event_loop(cp, session, monkeypatch):
    import threading

    from server_core import agent_listener as al

    decoded_on: list[tuple[int, bool]] = []
    real = al.decode

    def spy(data: str, *, allowed: tuple[type[p.Message], ...] | None = None) -> p.Envelope:
        decoded_on.append((len(data), threading.current_thread() is threading.main_thread()))
        return real(data, allowed=allowed)

    monkeypatch.setattr(al, "decode", spy)
    host_id, agent = await enrolled_agent(cp, session)
    snaps = [
        p.SnapshotInfo(
            id=f"{i:064x}",
            short_id=f"{i:08x}",
            time="2024-05-01T12:00:00Z",
            hostname="web1",
            paths=["/etc"],
            tags=[],
            tree=f"{i:064x}",
        )
        for i in range(2000)
    ]
    big = p.SnapshotsReport(collected_at=time.time(), snapshots=snaps)
    small = p.SnapshotsReport(collected_at=time.time(), snapshots=snaps[:3])
    await agent.acked({await agent.send(big), await agent.send(small)}, timeout=30)
    sizes = {size > al.DECODE_OFF_LOOP_CHARS: on_loop for size, on_loop in decoded_on}
    assert sizes == {True: False, False: True}, decoded_on
    listed = await cp.hosts.get_host(host_id)
    assert listed.snapshot_count == 3


async def test_a_malformed_http_request_on_the_agent_port_is_one_warning_line(cp, caplog):
    import logging
    import ssl
    from urllib.parse import urlsplit

    url = urlsplit(cp.agent_url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=context)
    # Both Content-Length and Transfer-Encoding: what request smuggling tries.
    writer.write(
        b"POST " + p.ENROL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.split()[1] == b"400", status
    await asyncio.sleep(0.1)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [f"{r.name} {r.levelname} {r.getMessage()}" for r in loud]
    (line,) = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "127.0.0.1" in line.getMessage() and "Transfer-Encoding" in line.getMessage()


def test_the_filter_leaves_other_errors_alone() -> None:
    import logging
    import sys

    from server_core.agent_listener import MalformedRequestFilter

    try:
        raise ValueError("a real bug")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert MalformedRequestFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.parametrize("field", ["hostname", "os", "agent_version", "restic_version"])
async def test_an_enrol_request_with_text_that_is_not_unicode_is_refused(cp, session, field):
    import json

    from tests.helpers.fake_agent import pinned

    token = await add_host(cp)
    body = {"token": token, "hostname": "h", "os": "linux", "arch": "amd64", "agent_version": "1"}
    body[field] = "x\\ud800"  # JSON's spelling of an unpaired surrogate, once dumped
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")
    async with session.post(
        cp.agent_url + p.ENROL_PATH,
        data=raw,
        headers={"Content-Type": "application/json"},
        ssl=pinned(cp.certificate.sha256),
    ) as resp:
        assert resp.status == 400, await resp.text()
        assert field in (await resp.json())["error"]["message"]
    # Refused before anything was written: the token still enrols a real agent.
    assert (await enrol(session, cp.agent_url, cp.certificate.sha256, token))["host_id"]
