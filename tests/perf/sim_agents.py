"""Simulated agents for benchmarks: real protocol, real TLS, one process.

Usage: python sim_agents.py SPEC.json — SPEC has agent_url, pin, tokens
(list), heartbeat_s, duration_s, log_lines (streamed by the first agent).
Prints one JSON line with what it did.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

from agent import protocol as p


async def run_agent(session, spec, token, index, stats):  # type: ignore[no-untyped-def]
    pin = aiohttp.Fingerprint(bytes.fromhex(spec["pin"]))
    req = p.EnrolRequest(
        token=token, hostname=f"sim{index}", os="linux", arch="amd64", agent_version="sim"
    )
    async with session.post(spec["agent_url"] + p.ENROL_PATH, json=p.to_dict(req), ssl=pin) as resp:
        bearer = (await resp.json())["bearer"]
    ws = await session.ws_connect(
        spec["agent_url"] + p.WS_PATH, headers={"Authorization": f"Bearer {bearer}"}, ssl=pin
    )
    await ws.send_str(
        p.encode(
            p.Hello(
                protocol_version=p.PROTOCOL_VERSION,
                agent_version="sim",
                hostname=f"sim{index}",
                os="linux",
                arch="amd64",
            )
        )
    )
    acked: set[str] = set()

    async def reader() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            env = p.decode(msg.data, allowed=p.SERVER_MESSAGES)
            if isinstance(env.payload, p.Ack):
                acked.update(env.payload.ids)

    read_task = asyncio.create_task(reader())
    stats["connected"] += 1
    deadline = time.monotonic() + spec["duration_s"]
    if index == 0 and spec["log_lines"]:
        job = "bench" + "0" * 27
        seq = 1
        sent: list[str] = []
        mid = p.new_id()
        sent.append(mid)
        await ws.send_str(
            p.encode(
                p.JobStarted(
                    job_id=job, seq=seq, kind="backup", actor="agent", started_at=time.time()
                ),
                msg_id=mid,
            )
        )
        line = 0
        t0 = time.monotonic()
        while line < spec["log_lines"]:
            batch = []
            for _ in range(200):
                seq += 1
                line += 1
                batch.append(
                    p.LogLine(
                        seq=seq,
                        ts=time.time(),
                        stream="stdout",
                        text=f"/data/file{line:07d} processed ok",
                    )
                )
                if line >= spec["log_lines"]:
                    break
            seq += 1
            mid = p.new_id()
            sent.append(mid)
            await ws.send_str(p.encode(p.JobLog(job_id=job, seq=seq, lines=batch), msg_id=mid))
            await asyncio.sleep(0)
        seq += 1
        mid = p.new_id()
        sent.append(mid)
        await ws.send_str(
            p.encode(
                p.JobFinished(job_id=job, seq=seq, status="succeeded", finished_at=time.time()),
                msg_id=mid,
            )
        )
        while not set(sent) <= acked and time.monotonic() < deadline + 60:
            await asyncio.sleep(0.05)
        stats["log_seconds"] = time.monotonic() - t0
        stats["log_acked"] = set(sent) <= acked
    while time.monotonic() < deadline:
        await ws.send_str(p.encode(p.Heartbeat()))
        stats["heartbeats"] += 1
        await asyncio.sleep(spec["heartbeat_s"])
    await ws.close()
    read_task.cancel()


async def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    stats = {"connected": 0, "heartbeats": 0}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(
            *(run_agent(session, spec, t, i, stats) for i, t in enumerate(spec["tokens"]))
        )
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
