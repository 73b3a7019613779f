"""Agent footprint: the built one-file agent's size, start-up time, and memory
and CPU while it idles connected to a control plane.

The agent is the one ``packaging/build.py agent`` makes (rebuilt only when
its inputs changed). The baseline, measured the same way in the same run, is
the floor PyInstaller itself sets: a one-file build of a script that only
prints (and, for the idle figures, sleeps) — built once with the same Python
and PyInstaller and cached under tests/perf/.cache.

- size of the binary;
- ``--version``: median wall time of ``--runs`` runs, interleaved with the
  baseline's;
- idle: ``restic-manager serve`` and the built agent (enrolled through the
  API, its repository probe done), then ``--idle-seconds`` of nothing:
  RSS of the agent's Python process and of its bootloader (a one-file
  binary is two processes) sampled every second, CPU from /proc at both
  ends.

Goals: <= 15 MB, <= 0.5 s, <= 40 MB RSS, ~0 CPU. Writes
tests/perf/results/agent_footprint.json.

    .venv/bin/python tests/perf/bench_agent_footprint.py [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.fleet import Api, ControlPlaneProcess, wait_for
from tests.perf import benchlib as bl

BUILD = bl.ROOT / "packaging" / "build.py"
HELLO = """import sys, time
print("hello 1.0")
if "--idle" in sys.argv:
    sys.stdout.flush()
    time.sleep(3600)
"""


def build_agent() -> tuple[Path, float]:
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(BUILD), "agent", "--print-path"],
        capture_output=True,
        text=True,
        cwd=bl.ROOT,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"building the agent failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1]), time.monotonic() - began


def build_hello() -> Path:
    """PyInstaller's floor: a one-file, stripped build of a script that prints."""
    import PyInstaller

    key = hashlib.sha256(
        f"{HELLO}{PyInstaller.__version__}{platform.python_version()}{sys.executable}".encode()
    ).hexdigest()[:12]
    home = bl.CACHE / f"pyinstaller-hello-{key}"
    binary = home / "dist" / "hello"
    if binary.is_file():
        return binary
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "hello.py").write_text(HELLO)
    print("building the PyInstaller baseline (once; cached) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onefile",
            "--strip",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(home / "dist"),
            "--workpath",
            str(home / "build"),
            "--specpath",
            str(home),
            str(home / "hello.py"),
        ],
        check=True,
        cwd=home,
    )
    return binary


def version_times(binary: Path, baseline: Path, runs: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    base: list[float] = []
    for _ in range(runs):
        for exe, bucket in ((binary, ours), (baseline, base)):
            began = time.perf_counter()
            subprocess.run([str(exe), "--version"], capture_output=True, check=True, timeout=60)
            bucket.append(time.perf_counter() - began)
    return ours, base


class Idle:
    """RSS and CPU of a process and its children while nothing happens."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        return [self.pid, *bl.children_of(self.pid)]

    def cpu(self) -> dict[int, float]:
        return {pid: bl.cpu_seconds(pid) for pid in self.pids()}

    def watch(self, seconds: float) -> dict[str, Any]:
        pids = self.pids()
        cpu0 = {pid: bl.cpu_seconds(pid) for pid in pids}
        began = time.monotonic()
        rss: dict[int, list[float]] = {pid: [] for pid in pids}
        while time.monotonic() - began < seconds:
            for pid in pids:
                rss[pid].append(bl.status_kib(pid) / 1024)
            time.sleep(1.0)
        wall = time.monotonic() - began
        cpu = {pid: bl.cpu_seconds(pid) - cpu0[pid] for pid in pids}
        child = pids[-1]  # the bootloader's child is the Python process
        return {
            "seconds": round(wall, 1),
            "pids": pids,
            "rss_mib_median": {str(p): bl.median(v, 1) for p, v in rss.items()},
            "rss_mib_max": {str(p): round(max(v), 1) for p, v in rss.items()},
            "python_rss_mib": bl.median(rss[child], 1),
            "total_rss_mib": round(sum(bl.median(v, 1) for v in rss.values()), 1),
            "rss_anon_mib": round(bl.status_kib(child, "RssAnon") / 1024, 1),
            "rss_file_mib": round(bl.status_kib(child, "RssFile") / 1024, 1),
            "cpu_s": round(sum(cpu.values()), 3),
            "cpu_percent_of_one_core": round(100 * sum(cpu.values()) / wall, 3),
        }


def idle_agent(binary: Path, restic: str, seconds: float, work: Path) -> dict[str, Any]:
    server = ControlPlaneProcess(work / "data", work / "server.log")
    server.data_dir.mkdir()
    token = server.create_api_token()
    server.start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        api = Api(server.api_base, token)
        created = api.post(
            "/enrolment-tokens",
            {
                "hostname": "bench-idle",
                "repository": {"url": str(work / "repo"), "password": "bench-idle-pw"},
                "initial_paths": ["/etc/hostname"],
            },
        )
        config = work / "agent" / "config.toml"
        enrolled = subprocess.run(
            [
                str(binary),
                "enrol",
                "--server",
                server.agent_url,
                "--token",
                created["token"],
                "--cert-sha256",
                api.get("/server")["cert_sha256"],
                "--config",
                str(config),
                "--state-dir",
                str(work / "agent" / "state"),
                "--restic",
                restic,
                "--hostname",
                "bench-idle",
            ],
            capture_output=True,
            text=True,
            env=bl.child_env(),
            timeout=120,
        )
        if enrolled.returncode != 0:
            raise RuntimeError(f"enrolling the built agent failed: {enrolled.stderr}")
        with (work / "agent.log").open("ab") as log:
            agent = subprocess.Popen(
                [str(binary), "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=bl.child_env(),
            )
        host_id = created["host_id"]
        wait_for(
            lambda: (
                (h := api.get(f"/hosts/{host_id}"))["status"] == "online"
                and h["repo_status"] == "ready"
            ),
            120,
            "the agent online with its repository probed",
        )
        time.sleep(2.0)  # let the probe's aftermath settle
        watched = Idle(agent.pid).watch(seconds)
        watched["still_online"] = api.get(f"/hosts/{host_id}")["status"] == "online"
        return watched
    finally:
        if agent is not None:
            stop_tree(agent)
        server.stop()


def idle_baseline(binary: Path, seconds: float) -> dict[str, Any]:
    proc = subprocess.Popen([str(binary), "--idle"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(1.0)
        return Idle(proc.pid).watch(seconds)
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the bootloader forwards it to its child; SIGKILL it could not)."""
    kids = bl.children_of(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    facts = bl.machine()
    binary, build_s = build_agent()
    hello = build_hello()
    size, hello_size = binary.stat().st_size, hello.stat().st_size
    ours, base = version_times(binary, hello, args.runs)
    work = Path(tempfile.mkdtemp(prefix="rm-bench-footprint-"))
    try:
        idle = idle_agent(binary, str(args.restic), args.idle_seconds, work)
        idle_base = idle_baseline(hello, min(args.idle_seconds, 10.0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version_s, base_version_s = bl.median(ours), bl.median(base)
    cpu_pct = idle["cpu_percent_of_one_core"]
    return {
        "benchmark": "agent_footprint",
        "machine": facts,
        "binary": str(binary),
        "build_or_check_s": round(build_s, 1),
        "size_bytes": size,
        "size_mb": round(size / 1e6, 2),
        "baseline_pyinstaller_hello": {
            "size_mb": round(hello_size / 1e6, 2),
            "version_s_median": base_version_s,
            "idle": idle_base,
        },
        "version_s": [round(t, 3) for t in ours],
        "version_s_median": version_s,
        "idle": idle,
        "goal": "<= 15 MB, --version <= 0.5 s, idle RSS <= 40 MB, ~0 CPU",
        "summary": [
            bl.row(
                "agent binary size",
                round(size / 1e6, 2),
                "MB",
                baseline=round(hello_size / 1e6, 2),
                baseline_what="PyInstaller one-file of a print()",
                goal="≤ 15 MB",
                met=size <= 15e6,
            ),
            bl.row(
                "agent --version (median)",
                version_s,
                "s",
                baseline=base_version_s,
                baseline_what="PyInstaller one-file of a print()",
                goal="≤ 0.5 s",
                met=version_s <= 0.5,
            ),
            bl.row(
                "agent idle RSS (Python process + bootloader)",
                idle["total_rss_mib"],
                "MiB",
                baseline=idle_base["total_rss_mib"],
                baseline_what="PyInstaller one-file of a sleep()",
                goal="≤ 40 MB",
                met=idle["total_rss_mib"] * 2**20 <= 40e6,
                note=f"Python process alone {idle['python_rss_mib']} MiB",
            ),
            bl.row(
                f"agent idle CPU over {idle['seconds']:.0f} s",
                cpu_pct,
                "% of a core",
                goal="~0 (≤ 0.5 %)",
                met=cpu_pct <= 0.5,
                note=f"{idle['cpu_s']} CPU s in all",
            ),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="--version runs")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--restic", type=Path, default=bl.RESTIC_018)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bl.finish("agent_footprint", bench(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
