"""A fleet of simulated agents in one process: the real protocol over real
TLS WebSockets (pinned certificate, bearer, hello, heartbeats, acks), for
the fleet benchmarks. The control plane cannot tell them from real agents
except that they run no restic.

    python tests/perf/fleet_agents.py SPEC.json

SPEC: agent_url, pin, agents ([{host_id, bearer, schedule_version, name}]),
heartbeat_s, connect_concurrency, and for log streaming stream_agents,
stream_lines, batch_lines, max_in_flight, run_id.

Each agent connects (at most ``connect_concurrency`` handshakes at a time),
says hello with its plan version, heartbeats every ``heartbeat_s`` from a
random phase, acknowledges ``schedule.set`` and answers every
``command.run`` like a quick job (``job.started`` then ``job.finished``),
noting when the command arrived (``time.monotonic()``, system-wide, so the
benchmark compares it with when it made the API call).

Stdout: JSON lines — ``{"event": "connected", ...}`` once all are connected
(or the time-out passed), ``{"event": "streamed", ...}`` after a stream.
Stdin commands: ``prepare`` (encode the stream now), ``stream`` (the first ``stream_agents`` agents each stream
``stream_lines`` log lines as fast as the acks allow, frames pre-encoded so
the simulator spends its CPU on the wire, not on JSON), ``report``, ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from agent import protocol as p
from tests.perf.benchlib import raise_open_files_limit

LOG_TS0 = 1_750_000_000.0


def stream_job_id(run_id: str, index: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"bench-log-{run_id}-{index}").hex


def log_text(index: int, n: int) -> str:
    """A line like a verbose restic backup writes (~70-90 bytes)."""
    return f"/srv/data/share-{index:02d}/dir-{n // 250:05d}/file-{n:07d}.dat: new, {n * 7919 % 1000003} bytes"


def log_rows(
    job_id: str, index: int, lines: int, batch: int
) -> list[list[tuple[str, int, float, str, str]]]:
    """The job_log rows one streaming agent sends, frame by frame: (job_id,
    seq, ts, stream, text). Seq 1 is job.started; each frame takes one seq
    after its lines, as the real agent numbers them."""
    frames: list[list[tuple[str, int, float, str, str]]] = []
    seq = 1
    for first in range(0, lines, batch):
        frame = []
        for n in range(first, min(lines, first + batch)):
            seq += 1
            frame.append((job_id, seq, LOG_TS0 + n * 1e-4, "stdout", log_text(index, n)))
        seq += 1
        frames.append(frame)
    return frames


class SimAgent:
    def __init__(self, fleet: Fleet, spec: dict[str, Any], index: int) -> None:
        self.fleet = fleet
        self.host_id = int(spec["host_id"])
        self.bearer = spec["bearer"]
        self.name = spec["name"]
        self.schedule_version = int(spec["schedule_version"])
        self.index = index
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.window: asyncio.Semaphore | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, session: aiohttp.ClientSession) -> None:
        fleet = self.fleet
        async with fleet.handshakes:
            began = time.monotonic()
            self.ws = await session.ws_connect(
                fleet.url + p.WS_PATH,
                headers={"Authorization": f"Bearer {self.bearer}"},
                ssl=fleet.pin,
                max_msg_size=p.MAX_FRAME_BYTES,
                autoping=True,
            )
            await self.send(
                p.Hello(
                    protocol_version=p.PROTOCOL_VERSION,
                    agent_version="sim",
                    hostname=self.name,
                    os="linux",
                    arch="amd64",
                    restic_version="0.18.0",
                    schedule_version=self.schedule_version,
                )
            )
            fleet.connect_ms.append((time.monotonic() - began) * 1000)
        self.tasks.append(asyncio.create_task(self.read()))
        self.tasks.append(asyncio.create_task(self.heartbeat()))

    async def send(self, message: p.Message, msg_id: str | None = None) -> str:
        assert self.ws is not None
        mid = msg_id or p.new_id()
        await self.ws.send_str(p.encode(message, msg_id=mid))
        return mid

    async def read(self) -> None:
        assert self.ws is not None
        fleet = self.fleet
        async for msg in self.ws:
            arrived = time.monotonic()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            envelope = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
            payload = envelope.payload
            if isinstance(payload, p.Ack):
                for mid in payload.ids:
                    waiter = self.pending.pop(mid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                        if self.window is not None:
                            self.window.release()
            elif isinstance(payload, p.CommandRun):
                fleet.commands[payload.job_id] = arrived
                fleet.kinds[payload.kind] = fleet.kinds.get(payload.kind, 0) + 1
                fleet.spawn(self.run_job(payload))
            elif isinstance(payload, p.ScheduleSet):
                self.schedule_version = payload.version
                await self.send(p.ScheduleAck(version=payload.version))
        if not fleet.stopping:
            fleet.disconnects.append({"host_id": self.host_id, "at": time.monotonic()})

    async def run_job(self, cmd: p.CommandRun) -> None:
        now = time.time()
        await self.send(
            p.JobStarted(
                job_id=cmd.job_id,
                seq=1,
                kind=cmd.kind,
                actor=cmd.actor,
                started_at=now,
                source_group_id=cmd.source_group.id if cmd.source_group else None,
            )
        )
        await self.send(
            p.JobFinished(
                job_id=cmd.job_id,
                seq=2,
                status="succeeded",
                finished_at=time.time(),
                exit_code=0,
                log_lines=0,
                repo_status="ready" if cmd.kind == "init" else None,
            )
        )

    async def heartbeat(self) -> None:
        interval = self.fleet.heartbeat_s
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            await self.send(p.Heartbeat())
            self.fleet.heartbeats += 1
            await asyncio.sleep(interval)

    async def stream(self, frames: list[str], ids: list[str], max_in_flight: int) -> None:
        """Send pre-encoded durable frames, at most ``max_in_flight`` unacknowledged."""
        self.window = asyncio.Semaphore(max_in_flight)
        loop = asyncio.get_running_loop()
        waiters = []
        assert self.ws is not None
        for text, mid in zip(frames, ids, strict=True):
            await self.window.acquire()
            waiter: asyncio.Future[None] = loop.create_future()
            self.pending[mid] = waiter
            waiters.append(waiter)
            await self.ws.send_str(text)
        await asyncio.gather(*waiters)


class Fleet:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.url = spec["agent_url"]
        self.pin = aiohttp.Fingerprint(bytes.fromhex(spec["pin"]))
        self.heartbeat_s = float(spec.get("heartbeat_s", p.HEARTBEAT_INTERVAL_S))
        self.handshakes = asyncio.Semaphore(int(spec.get("connect_concurrency", 50)))
        self.agents = [SimAgent(self, a, i) for i, a in enumerate(spec["agents"])]
        self.commands: dict[str, float] = {}
        self.kinds: dict[str, int] = {}
        self.connect_ms: list[float] = []
        self.disconnects: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.heartbeats = 0
        self.stopping = False
        self.plans: list[tuple[SimAgent, list[str], list[str]]] | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def connect_all(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        began = time.monotonic()

        async def one(agent: SimAgent) -> None:
            try:
                await agent.connect(session)
            except Exception as exc:  # reported, not fatal: "all held" counts them
                self.failures.append(f"{agent.name}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(a) for a in self.agents))
        return {
            "event": "connected",
            "connected": sum(1 for a in self.agents if a.ws is not None and not a.ws.closed),
            "failures": self.failures[:10],
            "began": began,
            "ended": time.monotonic(),
        }

    def encode_stream(self) -> list[tuple[SimAgent, list[str], list[str]]]:
        spec = self.spec
        plans = []
        for agent in self.agents[: int(spec["stream_agents"])]:
            job_id = stream_job_id(spec["run_id"], agent.index)
            frames, ids = [], []
            mid = p.new_id()
            started = p.JobStarted(
                job_id=job_id, seq=1, kind="backup", actor="agent", started_at=LOG_TS0
            )
            frames.append(p.encode(started, msg_id=mid))
            ids.append(mid)
            rows = log_rows(
                job_id, agent.index, int(spec["stream_lines"]), int(spec["batch_lines"])
            )
            seq = 1
            for frame in rows:
                seq = frame[-1][1] + 1
                lines = [
                    p.LogLine(seq=s, ts=ts, stream="stdout", text=t) for _, s, ts, _, t in frame
                ]
                mid = p.new_id()
                frames.append(p.encode(p.JobLog(job_id=job_id, seq=seq, lines=lines), msg_id=mid))
                ids.append(mid)
            mid = p.new_id()
            finished = p.JobFinished(
                job_id=job_id,
                seq=seq + 1,
                status="succeeded",
                finished_at=LOG_TS0 + 3600,
                log_lines=int(spec["stream_lines"]),
            )
            frames.append(p.encode(finished, msg_id=mid))
            ids.append(mid)
            plans.append((agent, frames, ids))
        return plans

    async def stream(self) -> dict[str, Any]:
        plans = self.plans if self.plans is not None else self.encode_stream()
        self.plans = None
        began = time.monotonic()
        await asyncio.gather(
            *(a.stream(f, i, int(self.spec["max_in_flight"])) for a, f, i in plans)
        )
        return {
            "event": "streamed",
            "began": began,
            "ended": time.monotonic(),
            "agents": len(plans),
            "lines": len(plans) * int(self.spec["stream_lines"]),
            "frames": sum(len(f) for _, f, _ in plans),
        }

    def report(self) -> dict[str, Any]:
        return {
            "event": "report",
            "commands": self.commands,
            "commands_by_kind": self.kinds,
            "connect_ms": self.connect_ms,
            "disconnects": self.disconnects,
            "open": sum(1 for a in self.agents if a.ws is not None and not a.ws.closed),
            "heartbeats": self.heartbeats,
        }

    async def close(self) -> None:
        self.stopping = True
        for agent in self.agents:
            for task in agent.tasks:
                task.cancel()
        await asyncio.gather(
            *(a.ws.close() for a in self.agents if a.ws is not None), return_exceptions=True
        )


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    fleet = Fleet(spec)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        emit(await fleet.connect_all(session))
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "stop":
                break
            if line == "report":
                emit(fleet.report())
            elif line == "prepare":
                fleet.plans = fleet.encode_stream()
                emit({"event": "prepared", "frames": sum(len(f) for _, f, _ in fleet.plans)})
            elif line == "stream":
                emit(await fleet.stream())
            else:
                emit({"event": "error", "error": f"unknown command {line!r}"})
        await fleet.close()
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    raise_open_files_limit()
    asyncio.run(main(sys.argv[1]))
