"""Event-loop lag of the desktop app's shared loop under fleet load.

200 simulated agents (a separate process, real TLS WebSockets) heartbeat
every 2 s while one streams 50k log lines; the app side runs the real
ControlPlane and the coalescing Qt event bridge on one qasync loop. The
baseline is the same loop with the control plane idle, measured in the
same run. Writes tests/perf/results/loop_lag.json.

    .venv/bin/python tests/perf/bench_loop_lag.py [--agents 200] [--lines 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import keyring.backends.fail
import qasync
from PySide6.QtWidgets import QApplication

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from ui_qt.bridge import EventBridge

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "perf" / "results"


async def measure_lag(seconds: float, interval: float = 0.01) -> list[float]:
    lags = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        t0 = loop.time()
        await asyncio.sleep(interval)
        lags.append((loop.time() - t0 - interval) * 1000)
    return lags


def summary(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="rm-bench-"))
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=data,
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await cp.start()
    bridge = EventBridge(cp.bus)
    tokens = []
    for i in range(args.agents):
        grant = await cp.enrolment.add_host(
            parse_new_host(
                {
                    "hostname": f"sim{i}",
                    "repository": {"url": "/srv/r", "password": "benchpass"},
                    "initial_paths": ["/data"],
                }
            ),
            OPERATOR,
        )
        tokens.append(grant.token)
    baseline = summary(await measure_lag(args.baseline_seconds))
    spec = data / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "agent_url": cp.agent_url,
                "pin": cp.certificate.sha256,
                "tokens": tokens,
                "heartbeat_s": 2.0,
                "duration_s": args.seconds,
                "log_lines": args.lines,
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("sim_agents.py")),
        str(spec),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    loaded = summary(await measure_lag(args.seconds))
    out, _ = await proc.communicate()
    sim = json.loads(out.decode().strip().splitlines()[-1])
    online = sum(1 for h in await cp.hosts.list_hosts() if h.status == "online")
    stored = (await cp.jobs.get_job("bench" + "0" * 27)).log_lines if args.lines else 0
    bridge.close()
    await cp.stop()
    return {
        "benchmark": "loop_lag",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "agents": args.agents,
        "log_lines": args.lines,
        "baseline_idle": baseline,
        "under_load": loaded,
        "ratio_p99": round(loaded["p99_ms"] / max(baseline["p99_ms"], 0.01), 2),
        "goal": "p99 lag <= 50 ms",
        "simulator": sim,
        "log_lines_stored": stored,
        "hosts_online_at_end": online,
        "bridge_signals": bridge.emitted,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    result = qasync.run(main(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loop_lag.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
