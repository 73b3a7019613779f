"""Fleet capacity: N agents connected to one control plane, for N = 100, 500, 1,000.

Three processes per N: the control plane (``fleet_server.py``: the headless
ControlPlane of ``restic-manager serve`` with a loop-lag probe), the fleet
(``fleet_agents.py``: N simulated agents, the real protocol over real TLS
WebSockets) and this one, which makes the operator's API calls and reads
the control plane's CPU and memory from /proc. The N hosts are enrolled
through the services once (cached) and each N starts from a copy.

Per N, in order:
- idle: the control plane with no agent (the baseline of the same run);
- connect: all N agents connect and say hello (at most 50 TLS handshakes
  at a time);
- steady: every agent heartbeats every ``--heartbeat-s`` (3x the real
  rate by default), and the operator starts a backup on a random host
  ``--rate`` times a second through the API; dispatch latency is API call
  → the agent has ``command.run`` (both stamp ``time.monotonic()``, one
  clock for the machine). The agent answers job.started / job.finished.

Reported: held connections (the control plane's count and the fleet's,
at the end), dispatch p50/p99, control-plane CPU (% of one core) and RSS
per phase, loop lag per phase. Goals at 1,000: all held, dispatch p99 <=
100 ms, loop lag p99 <= 50 ms (steady phase). Writes
tests/perf/results/fleet_capacity.json.

    .venv/bin/python tests/perf/bench_fleet_capacity.py [--agents 100,500,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from tests.perf import benchlib as bl
from tests.perf.fleet_template import Template, template

HERE = Path(__file__).resolve().parent


async def start_server(
    data: Path, work: Path, tag: str, extra: list[str] | None = None
) -> tuple[bl.JsonChild, dict[str, Any]]:
    server = await bl.JsonChild.start(
        [sys.executable, str(HERE / "fleet_server.py"), "--data-dir", str(data), *(extra or [])],
        work / f"server-{tag}.log",
    )
    ready = await server.read(120)
    return server, ready


async def start_fleet(
    ready: dict[str, Any], agents: list[Any], work: Path, tag: str, **extra: Any
) -> bl.JsonChild:
    spec = work / f"fleet-{tag}.json"
    spec.write_text(
        json.dumps(
            {
                "agent_url": ready["agent_url"],
                "pin": ready["pin"],
                "agents": [
                    {
                        "host_id": a.host_id,
                        "bearer": a.bearer,
                        "schedule_version": a.schedule_version,
                        "name": a.name,
                    }
                    for a in agents
                ],
                **extra,
            }
        )
    )
    return await bl.JsonChild.start(
        [sys.executable, str(HERE / "fleet_agents.py"), str(spec)], work / f"fleet-{tag}.log"
    )


class Dispatcher:
    """The operator: starts a backup on a random connected host through the API."""

    def __init__(self, api_url: str, token: str, agents: list[Any], seed: int) -> None:
        self.base = api_url + "/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.agents = agents
        self.rng = random.Random(seed)
        self.calls: dict[str, tuple[float, float]] = {}  # job id -> (called, answered)
        self.errors: list[str] = []

    async def one(self, session: aiohttp.ClientSession) -> None:
        agent = self.rng.choice(self.agents)
        called = time.monotonic()
        try:
            async with session.post(
                f"{self.base}/hosts/{agent.host_id}/jobs",
                json={"kind": "backup", "source_group_id": agent.group_id},
                headers=self.headers,
            ) as resp:
                body = await resp.json()
                if resp.status != 202:
                    self.errors.append(f"{resp.status} {body}")
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.calls[body["job_id"]] = (called, time.monotonic())

    async def run(self, rate: float, seconds: float) -> None:
        """Open loop: a call every 1/rate s whether or not the last one returned."""
        tasks = []
        start = time.monotonic()
        total = int(rate * seconds)
        async with aiohttp.ClientSession() as session:
            for i in range(total):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self.one(session)))
            await asyncio.gather(*tasks)


def cpu_percent(cpu: tuple[float, float], wall: tuple[float, float]) -> float:
    return round(100 * (cpu[1] - cpu[0]) / max(wall[1] - wall[0], 1e-6), 1)


async def run_n(n: int, tpl: Template, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tag = f"n{n}"
    data = tpl.copy_to(work / f"data-{tag}")
    agents = tpl.agents[:n]
    server, ready = await start_server(data, work, tag, args.server_arg)
    sampler = bl.ProcSampler(server.pid, 0.25).start()
    fleet: bl.JsonChild | None = None
    try:
        t_idle = time.monotonic()
        cpu_idle = sampler.cpu()
        await asyncio.sleep(args.idle_seconds)
        t_conn = time.monotonic()
        cpu_conn = sampler.cpu()
        fleet = await start_fleet(
            ready,
            agents,
            work,
            tag,
            heartbeat_s=args.heartbeat_s,
            connect_concurrency=args.connect_concurrency,
        )
        connected = await fleet.read(300)
        # Connected on the fleet's side; on the server's once hello is processed.
        deadline = time.monotonic() + 60
        while True:
            status = await server.ask("status")
            if status["connected"] >= connected["connected"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        t_connected = time.monotonic()
        cpu_connected = sampler.cpu()
        print(
            f"  N={n}: {connected['connected']} connected in "
            f"{connected['ended'] - connected['began']:.1f} s (server sees {status['connected']})",
            flush=True,
        )
        await asyncio.sleep(args.settle_seconds)
        t_steady = time.monotonic()
        cpu_steady = sampler.cpu()
        dispatcher = Dispatcher(ready["api_url"], tpl.api_token, agents, seed=n)
        await dispatcher.run(args.rate, args.seconds)
        t_end = time.monotonic()
        cpu_end = sampler.cpu()
        await asyncio.sleep(1.0)  # the last commands in flight
        status_end = await server.ask("status")
        report = await fleet.ask("report")
        lags = (await server.ask("lags"))["lags"]
        peak_mib = round(bl.status_kib(server.pid, "VmHWM") / 1024, 1)
    finally:
        sampler.stop()
        if fleet is not None:
            await fleet.stop()
        await server.stop()
        shutil.rmtree(data, ignore_errors=True)

    received = report["commands"]
    latencies = [
        (received[job] - called) * 1000
        for job, (called, _answered) in dispatcher.calls.items()
        if job in received
    ]
    api_ms = [(answered - called) * 1000 for called, answered in dispatcher.calls.values()]
    held_disconnects = [d for d in report["disconnects"] if d["at"] >= t_connected]
    all_held = (
        connected["connected"] == n
        and status_end["connected"] == n
        and report["open"] == n
        and not held_disconnects
    )
    dispatch = bl.summary(latencies)
    lag_steady = bl.summary(bl.lags_between(lags, t_steady, t_end))
    rss_steady = sampler.rss_in(t_steady, t_end)
    return {
        "agents": n,
        "connected_fleet_side": connected["connected"],
        "connect_failures": connected["failures"],
        "connect_s": round(connected["ended"] - connected["began"], 2),
        "connect_to_server_count_s": round(t_connected - t_conn, 2),
        "handshake_plus_hello_ms": bl.summary(report["connect_ms"]),
        "held_at_end": {
            "server_connected": status_end["connected"],
            "fleet_open": report["open"],
            "disconnects_after_connect": len(held_disconnects),
        },
        "all_held": all_held,
        "heartbeats_sent": report["heartbeats"],
        "dispatches": {
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "called": int(args.rate * args.seconds),
            "answered_202": len(dispatcher.calls),
            "received_by_agent": len(latencies),
            "errors": dispatcher.errors[:5],
            "api_to_command_run_ms": dispatch,
            "api_response_ms": bl.summary(api_ms),
        },
        "events_applied": status_end["events_applied"],
        "commands_by_kind": report["commands_by_kind"],
        "cpu_percent_of_one_core": {
            "idle": cpu_percent((cpu_idle, cpu_conn), (t_idle, t_conn)),
            "connect": cpu_percent((cpu_conn, cpu_connected), (t_conn, t_connected)),
            "steady": cpu_percent((cpu_steady, cpu_end), (t_steady, t_end)),
        },
        "rss_mib": {
            "idle": sampler.rss_in(t_idle, t_conn),
            "connect": sampler.rss_in(t_conn, t_connected),
            "steady": rss_steady,
            "peak_vmhwm": peak_mib,
        },
        "loop_lag": {
            "idle": bl.summary(bl.lags_between(lags, t_idle, t_conn)),
            "connect": bl.summary(bl.lags_between(lags, t_conn, t_connected)),
            "steady": lag_steady,
        },
        "worst_lags_s_after_connect_start": [
            {"at_s": round(t - t_conn, 2), "lag_ms": round(ms, 1)}
            for t, ms in sorted(
                (s for s in lags if s[0] >= t_conn), key=lambda s: s[1], reverse=True
            )[:8]
        ],
    }


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by_n = {r["agents"]: r for r in runs}
    top = max(by_n)
    base = by_n[min(by_n)] if len(by_n) > 1 else None
    for n, r in sorted(by_n.items()):
        goal_here = n == top and top >= 1000
        d = r["dispatches"]["api_to_command_run_ms"]
        lag = r["loop_lag"]["steady"]
        idle_lag = r["loop_lag"]["idle"]
        rows.append(
            bl.row(
                f"fleet {n}: agents held",
                r["held_at_end"]["server_connected"],
                f"of {n}",
                goal="all held" if goal_here else "",
                met=r["all_held"] if goal_here else None,
            )
        )
        rows.append(
            bl.row(
                f"fleet {n}: dispatch API → command.run p99",
                d.get("p99_ms"),
                "ms",
                baseline=(
                    base["dispatches"]["api_to_command_run_ms"].get("p99_ms")
                    if base and n != min(by_n)
                    else None
                ),
                baseline_what=f"same at N={min(by_n)}",
                goal="≤ 100 ms" if goal_here else "",
                met=(d.get("p99_ms", 1e9) <= 100) if goal_here else None,
                note=f"p50 {d.get('p50_ms')} ms",
            )
        )
        rows.append(
            bl.row(
                f"fleet {n}: loop lag p99 (steady)",
                lag.get("p99_ms"),
                "ms",
                baseline=idle_lag.get("p99_ms"),
                baseline_what="idle control plane, same run",
                goal="≤ 50 ms" if goal_here else "",
                met=(lag.get("p99_ms", 1e9) <= 50) if goal_here else None,
                note=f"connect storm p99 {r['loop_lag']['connect'].get('p99_ms')} ms",
            )
        )
        rows.append(
            bl.row(
                f"fleet {n}: control-plane CPU (steady)",
                r["cpu_percent_of_one_core"]["steady"],
                "% of a core",
                baseline=r["cpu_percent_of_one_core"]["idle"] or None,
                baseline_what="idle, same run",
            )
        )
        rows.append(
            bl.row(
                f"fleet {n}: control-plane RSS (steady)",
                r["rss_mib"]["steady"].get("max_mib"),
                "MiB",
                baseline=r["rss_mib"]["idle"].get("max_mib"),
                baseline_what="idle, same run",
            )
        )
    return rows


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    facts = bl.machine()
    sizes = sorted(int(x) for x in args.agents.split(","))
    limits = bl.raise_open_files_limit()
    tpl = await template(max(sizes))
    work = Path(tempfile.mkdtemp(prefix="rm-bench-capacity-"))
    runs = []
    try:
        for n in sizes:
            runs.append(await run_n(n, tpl, args, work))
            r = runs[-1]
            d = r["dispatches"]["api_to_command_run_ms"]
            print(
                f"  N={n}: held {r['all_held']}, dispatch p50 {d.get('p50_ms')} p99 "
                f"{d.get('p99_ms')} ms, lag p99 steady {r['loop_lag']['steady'].get('p99_ms')} "
                f"ms, CPU {r['cpu_percent_of_one_core']}, RSS {r['rss_mib']['steady']}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "fleet_capacity",
        "machine": facts,
        "setup": "control plane (headless ControlPlane + lag probe), simulated fleet and "
        "operator in three processes; real TLS WebSockets, real SQLite",
        "open_files_limit": list(limits),
        "heartbeat_s": args.heartbeat_s,
        "goal": "at 1,000 agents: all held, dispatch p99 <= 100 ms, loop lag p99 <= 50 ms",
        "runs": runs,
        "summary": summary_rows(runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="100,500,1000", help="comma-separated fleet sizes")
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--rate", type=float, default=12.0, help="API dispatches per second")
    parser.add_argument("--seconds", type=float, default=25.0, help="steady phase")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--settle-seconds", type=float, default=2.0)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for fleet_server.py (experiments, e.g. --server-arg=--ssl-read-kib=16)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    bl.finish("fleet_capacity", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
