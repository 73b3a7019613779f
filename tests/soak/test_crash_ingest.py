"""``kill -9`` of a real control plane in the middle of heavy log ingest.

A real ``restic-manager serve`` process takes a stream of job logs from
several clients that speak the agent protocol over real TLS (each records
exactly which events the control plane acknowledged) and from a real agent
whose backup pre-hook prints numbered lines. The control plane is killed with
SIGKILL at random moments while the logs stream, then restarted on the same
data dir. After each kill:

- the database files the kill left behind pass ``PRAGMA integrity_check``
  (checked on a copy, which SQLite recovers from the WAL as a restart would),
  and so does the live database once the control plane is back;
- every log line acknowledged before the kill is in that database.

At the end, every line every client and the real agent produced is stored
exactly once (the clients and the agent replay what was not acknowledged).

`make test` runs 3 kills; `make soak` (SOAK_FULL=1) runs 20 and writes the
figures to crash_ingest.json in SOAK_RESULTS (default tests/soak/results/).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from agent import protocol as p
from server_core.control_plane import DB_FILE
from tests.helpers.fake_agent import enrol, pinned
from tests.helpers.fleet import (
    AgentProcess,
    Api,
    ControlPlaneProcess,
    make_tree,
    put_group,
    wait_for,
)
from tests.helpers.restic_bins import RESTIC_BINARIES

pytestmark = pytest.mark.integration

FULL = os.environ.get("SOAK_FULL") == "1"
SEED = int(os.environ.get("SOAK_SEED", "20261206"))
KILLS = int(os.environ.get("SOAK_KILLS", "20" if FULL else "3"))
CLIENTS = 4 if FULL else 3
CLIENT_LINES_PER_S = 5000.0 if FULL else 8000.0
# The real agent's pre-hook: blocks of numbered lines with a pause between
# them, so that it is still printing while the kills happen.
HOOK_BLOCKS = 400 if FULL else 60
HOOK_BLOCK_LINES = 1000
HOOK_PAUSE_S = 0.25
RESULTS = Path(os.environ.get("SOAK_RESULTS") or Path(__file__).parent / "results")

T = TypeVar("T")


# -- clients that speak the agent protocol and remember what was acknowledged ---------


@dataclass
class IngestClient:
    """Streams job.log frames of numbered lines, keeping every unacknowledged
    frame (its own outbox) and replaying them on each new connection, as the
    agent does. ``acked`` holds the line numbers the control plane acknowledged."""

    name: str
    url: str
    pin: str
    bearer: str
    lines_per_frame: int = 100
    window: int = 30  # frames sent and not yet acknowledged
    lines_per_s: float = 8000.0  # a chatty backup's log, not a flood
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_line: int = 1
    unacked: dict[str, tuple[int, int]] = field(default_factory=dict)  # msg id -> lines
    acked: set[int] = field(default_factory=set)
    connections: int = 0
    replayed: int = 0
    draining: bool = False
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _due: float = 0.0

    def text(self, n: int) -> str:
        return f"{self.name} line {n}"

    def frame(self, mid: str, first: int, last: int) -> str:
        lines = [
            p.LogLine(seq=n, ts=1.7e9 + n / 1000, stream="stdout", text=self.text(n))
            for n in range(first, last + 1)
        ]
        return p.encode(p.JobLog(job_id=self.job_id, seq=first, lines=lines), msg_id=mid)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.draining and not self.unacked:
                return
            try:
                ws = await session.ws_connect(
                    self.url + p.WS_PATH,
                    headers={"Authorization": f"Bearer {self.bearer}"},
                    ssl=pinned(self.pin),
                )
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)
                continue
            self.connections += 1
            reader = asyncio.ensure_future(self._read(ws))
            try:
                await ws.send_str(p.encode(self._hello()))
                for mid, (first, last) in list(self.unacked.items()):
                    await ws.send_str(self.frame(mid, first, last))
                    self.replayed += 1
                while not stop.is_set() and not reader.done():
                    if self.draining and not self.unacked:
                        return
                    if self.draining or len(self.unacked) >= self.window:
                        self._progress.clear()
                        waiter = asyncio.ensure_future(self._progress.wait())
                        await asyncio.wait(
                            [waiter, reader], timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                        )
                        waiter.cancel()
                        continue
                    pause = self._due - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                        continue
                    self._due = max(self._due, time.monotonic() - 1.0)
                    self._due += self.lines_per_frame / self.lines_per_s
                    mid = p.new_id()
                    first = self.next_line
                    last = first + self.lines_per_frame - 1
                    self.next_line = last + 1
                    # Into the outbox before it goes out, as the agent does.
                    self.unacked[mid] = (first, last)
                    await ws.send_str(self.frame(mid, first, last))
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                if not ws.closed:
                    await asyncio.wait([asyncio.ensure_future(ws.close())], timeout=2)

    def _hello(self) -> p.Hello:
        return p.Hello(
            protocol_version=p.PROTOCOL_VERSION,
            agent_version="0.0.1",
            hostname=self.name,
            os="linux",
            arch="amd64",
        )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            env = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
            if isinstance(env.payload, p.Ack):
                for mid in env.payload.ids:
                    span = self.unacked.pop(mid, None)
                    if span is not None:
                        self.acked.update(range(span[0], span[1] + 1))
                self._progress.set()


class ClientLoop:
    """The clients' event loop on a thread of its own, so the test can kill,
    copy and check on the main thread while they keep streaming."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Future[None]] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def finish() -> None:
            self.stop.set()
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 20)
            if self.session is not None:
                await self.session.close()

        try:
            self.call(finish())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# -- the database, read from outside the control plane --------------------------------


def integrity(path: Path, *, read_only: bool) -> str:
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


def copy_of_killed_db(data_dir: Path, into: Path) -> Path:
    """The database as the kill left it: main file and WAL (the shared-memory
    index is rebuilt on open, as after a reboot)."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    for suffix in ("", "-wal"):
        src = data_dir / (DB_FILE + suffix)
        if src.exists():
            shutil.copy2(src, into / src.name)
    return into / DB_FILE


def stored_lines(db: Path, job_id: str, *, read_only: bool) -> list[tuple[int, str]]:
    uri = f"file:{db}?mode=ro" if read_only else f"file:{db}"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = conn.execute(
            'SELECT "seq", "text" FROM "job_log" WHERE "job_id" = ?', (job_id,)
        ).fetchall()
    finally:
        conn.close()
    return [(int(seq), str(text)) for seq, text in rows]


def outbox_count(agent: AgentProcess) -> int:
    conn = sqlite3.connect(f"file:{agent.state_dir / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


# -- the test -------------------------------------------------------------------------


def hook_script(blocks: int, per_block: int, pause: float) -> str:
    return (
        f"for b in $(seq 0 {blocks - 1}); do "
        f"seq -f 'n %.0f' $((b*{per_block}+1)) $((b*{per_block}+{per_block})); "
        f"sleep {pause}; done"
    )


def start_real_agent(
    server: ControlPlaneProcess, api: Api, tmp: Path, restic: str
) -> tuple[AgentProcess, str]:
    """A real agent whose backup's pre-hook prints numbered lines; returns the job id."""
    src = make_tree(tmp / "src", files=10, size=2048)
    created = api.post(
        "/enrolment-tokens",
        {
            "hostname": "real-agent",
            "repository": {"url": str(tmp / "repo"), "password": "pw-" + uuid.uuid4().hex},
            "initial_paths": [str(src)],
        },
    )
    host_id = created["host_id"]
    agent = AgentProcess(tmp / "agent", restic, "real-agent")
    result = agent.enrol(server.agent_url, created["token"], api.get("/server")["cert_sha256"])
    assert result.returncode == 0, result.stderr
    agent.start()
    wait_for(
        lambda: (
            (h := api.get(f"/hosts/{host_id}"))["repo_status"] == "ready"
            and h["status"] == "online"
        ),
        90,
        "the real agent's repository to be ready",
    )
    (group,) = api.get(f"/hosts/{host_id}/source-groups")
    put_group(
        api, host_id, group, pre_hook=hook_script(HOOK_BLOCKS, HOOK_BLOCK_LINES, HOOK_PAUSE_S)
    )
    job_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]})[
        "job_id"
    ]
    return agent, str(job_id)


def test_kill_9_during_heavy_log_ingest_loses_no_acknowledged_line(tmp_path: Path) -> None:
    restic = RESTIC_BINARIES.get("0.18") or RESTIC_BINARIES.get("0.14")
    assert restic, "no restic binary: run `make bootstrap`"
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ControlPlaneProcess(data_dir, tmp_path / "server.log")
    api = Api(server.api_base, server.create_api_token())
    server.start()
    server_started = time.monotonic()
    db = data_dir / DB_FILE
    pin = api.get("/server")["cert_sha256"]
    agent, agent_job = start_real_agent(server, api, tmp_path, restic)

    loop = ClientLoop()
    clients: list[IngestClient] = []
    kills: list[dict[str, Any]] = []
    started = time.monotonic()
    try:

        async def open_clients() -> None:
            loop.session = aiohttp.ClientSession()
            for i in range(CLIENTS):
                name = f"ingest{i}"
                token = await asyncio.to_thread(
                    api.post,
                    "/enrolment-tokens",
                    {"hostname": name, "repository": {"url": "/srv/r", "password": "pw-" + name}},
                )
                body = await enrol(loop.session, server.agent_url, pin, token["token"], name)
                client = IngestClient(
                    name,
                    server.agent_url,
                    pin,
                    str(body["bearer"]),
                    lines_per_s=CLIENT_LINES_PER_S,
                )
                clients.append(client)
                loop.tasks.append(asyncio.ensure_future(client.run(loop.session, loop.stop)))

        loop.call(open_clients())

        async def acked_now() -> dict[str, set[int]]:
            return {c.job_id: set(c.acked) for c in clients}

        async def in_flight() -> int:
            return sum(len(c.unacked) for c in clients)

        def acked_total() -> int:
            return sum(len(s) for s in loop.call(acked_now()).values())

        for k in range(KILLS):
            # Heavy ingest: the clients must be getting acks from this process
            # before it dies, then a random moment inside the stream.
            base = acked_total()
            wait_for(
                lambda b=base: acked_total() > b + 5000,  # type: ignore[misc]
                30,
                "log lines to be acknowledged after the (re)start",
                0.05,
            )
            time.sleep(rng.uniform(0.2, 2.0))
            uptime = time.monotonic() - server_started
            acked = loop.call(acked_now())
            flying = loop.call(in_flight())
            server.kill()
            killed_at = time.monotonic()

            # The files as the kill left them.
            copy = copy_of_killed_db(data_dir, tmp_path / "killed")
            after_kill = integrity(copy, read_only=False)
            missing: dict[str, list[int]] = {}
            for job_id, lines in acked.items():
                have = {seq for seq, _ in stored_lines(copy, job_id, read_only=True)}
                lost = sorted(lines - have)
                if lost:
                    missing[job_id] = lost[:20]
            agent_lines_at_kill = len(stored_lines(copy, agent_job, read_only=True))

            checks_s = time.monotonic() - killed_at
            server.start()
            server_started = time.monotonic()
            restart_s = server_started - killed_at - checks_s
            live = integrity(db, read_only=True)
            kills.append(
                {
                    "kill": k + 1,
                    "uptime_s": round(uptime, 2),
                    "acked_lines_checked": sum(len(s) for s in acked.values()),
                    "acked_lines_lost": sum(len(v) for v in missing.values()),
                    "frames_in_flight_at_kill": flying,
                    "agent_lines_stored_at_kill": agent_lines_at_kill,
                    "integrity_after_kill": after_kill,
                    "integrity_after_restart": live,
                    "checks_s": round(checks_s, 2),
                    "restart_s": round(restart_s, 2),
                }
            )
            assert after_kill == "ok", kills[-1]
            assert live == "ok", kills[-1]
            assert not missing, f"acknowledged lines missing after kill {k + 1}: {missing}"

        # Let the clients deliver what is still in their outboxes, and the real
        # agent finish its hook and backup and drain its outbox.
        async def drain() -> None:
            for c in clients:
                c.draining = True
            await asyncio.wait_for(asyncio.gather(*loop.tasks), 120)

        loop.call(drain(), timeout=130)
        job = wait_for(
            lambda: (
                (j := api.get(f"/jobs/{agent_job}"))["status"]
                in ("succeeded", "failed", "cancelled")
                and j
            ),
            240 if FULL else 120,
            "the real agent's backup to finish and be reported",
            0.5,
        )
        wait_for(lambda: outbox_count(agent) == 0, 120, "the real agent's outbox to drain", 0.5)

        # Every line, once.
        final_integrity = integrity(db, read_only=True)
        assert final_integrity == "ok"
        totals: dict[str, int] = {"client_lines": 0, "duplicates": 0, "missing": 0}
        for c in clients:
            rows = stored_lines(db, c.job_id, read_only=True)
            seqs = [seq for seq, _ in rows]
            totals["client_lines"] += len(rows)
            totals["duplicates"] += len(seqs) - len(set(seqs))
            assert all(text == c.text(seq) for seq, text in rows), c.name
            assert sorted(seqs) == list(range(1, c.next_line)), (
                f"{c.name}: stored {len(seqs)} lines, sent {c.next_line - 1}"
            )
        rows = stored_lines(db, agent_job, read_only=True)
        hook = [text for _, text in rows if text.startswith("hook(pre): n ")]
        numbers = sorted(int(text.rsplit(" ", 1)[1]) for text in hook)
        expected = HOOK_BLOCKS * HOOK_BLOCK_LINES
        assert job["status"] == "succeeded", job
        assert len({seq for seq, _ in rows}) == len(rows)
        assert numbers == list(range(1, expected + 1)), (
            f"the hook printed {expected} lines; stored {len(numbers)} "
            f"({len(set(numbers))} distinct)"
        )
        assert job["log_lines"] == job["log_lines_reported"] == len(rows), job
    finally:
        try:
            loop.close()
        finally:
            agent.stop()
            server.stop()

    figures = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": SEED,
        "kills": len(kills),
        "clients": CLIENTS,
        "duration_s": round(time.monotonic() - started, 1),
        "integrity_ok_after_kill": sum(k["integrity_after_kill"] == "ok" for k in kills),
        "integrity_ok_after_restart": sum(k["integrity_after_restart"] == "ok" for k in kills),
        "acked_line_checks": sum(k["acked_lines_checked"] for k in kills),
        "acked_lines_at_last_kill": kills[-1]["acked_lines_checked"],
        "acked_lines_lost": sum(k["acked_lines_lost"] for k in kills),
        "client_lines_stored": totals["client_lines"],
        "client_duplicates": totals["duplicates"],
        "client_frames_replayed": sum(c.replayed for c in clients),
        "client_connections": sum(c.connections for c in clients),
        "agent_hook_lines": expected,
        "agent_hook_lines_stored_once": len(set(numbers)),
        "agent_log_lines": len(rows),
        "agent_connections": agent.log_path.read_text().count("connected to the control plane at"),
        "restart_s_max": max(k["restart_s"] for k in kills),
        "per_kill": kills,
    }
    print(json.dumps(figures))
    if FULL:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "crash_ingest.json").write_text(json.dumps(figures, indent=2) + "\n")
