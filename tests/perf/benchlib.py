"""What every benchmark shares, without Qt: machine facts, percentiles,
/proc readings, a loop-lag probe and the result file with its summary rows.

A result file is ``tests/perf/results/<name>.json``. Besides its detail it
carries ``summary``: one row per headline figure (our value, the baseline
measured in the same run, their ratio, the goal and whether it was met),
which ``summarise.py`` turns into the table in BENCHMARKS.md. A benchmark
never fails because the machine was slow: a missed goal is a row with
``met: false``, and the process still exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "perf" / "results"
CACHE = ROOT / "tests" / "perf" / ".cache"
RESTIC_018 = ROOT / ".cache" / "restic-0.18" / "usr" / "bin" / "restic"
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the machine --------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare two result files."""
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 2**20, 1),
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other work on the machine skews every figure: recorded, not hidden.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(facts: dict[str, Any]) -> str:
    return f"{facts.get('cpu_model', '?')}, {facts.get('cores', '?')} cores"


# -- statistics -------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values_ms: Iterable[float]) -> dict[str, float | int]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"samples": 0}
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(percentile(ordered, 90), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
        "over_50ms": sum(1 for v in ordered if v > 50),
        "over_100ms": sum(1 for v in ordered if v > 100),
    }


def median(values: Iterable[float], digits: int = 3) -> float:
    got = list(values)
    return round(statistics.median(got), digits) if got else 0.0


def ratio(ours: float, baseline: float, digits: int = 2) -> float | None:
    if not baseline:
        return None
    return round(ours / baseline, digits)


# -- /proc -------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of one process (not its children), from /proc."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon, ...); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int | str = "self") -> float:
    return round(status_kib(pid) / 1024, 1)


def children_of(pid: int) -> list[int]:
    """Direct children (a one-file PyInstaller binary is a bootloader plus its child)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def raise_open_files_limit(wanted: int = 65536) -> tuple[int, int]:
    """Soft limit up to the hard limit (1,000 agents need 1,000+ sockets per side)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class ProcSampler:
    """Samples a process's RSS every ``interval_s`` (a thread: works while the
    caller's loop is busy) and reads its CPU at marks."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.rss: list[tuple[float, float]] = []  # (monotonic, MiB)
        self._stop = False
        self._thread: Any = None

    def start(self) -> ProcSampler:
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True, name="proc-sampler")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            with contextlib.suppress(OSError, ValueError):
                self.rss.append((time.monotonic(), status_kib(self.pid) / 1024))
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_in(self, start: float, end: float) -> dict[str, float]:
        got = [mib for t, mib in self.rss if start <= t <= end]
        if not got:
            return {}
        return {"median_mib": round(statistics.median(got), 1), "max_mib": round(max(got), 1)}


# -- event-loop lag -------------------------------------------------------------


class LagProbe:
    """How late a ``interval_s`` sleep wakes up on the running loop: anything
    that holds the loop (a callback, a long step, the GIL held by another
    thread) shows up as lateness. Samples carry their ``time.monotonic()``."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (monotonic at wake-up, lag ms)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        interval = self.interval_s
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            t1 = time.monotonic()
            self.samples.append((t1, (t1 - t0 - interval) * 1000))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def lags(self, start: float | None = None, end: float | None = None) -> list[float]:
        return [
            lag
            for t, lag in self.samples
            if (start is None or t >= start) and (end is None or t <= end)
        ]

    def worst(self, count: int = 5) -> list[dict[str, float]]:
        top = sorted(self.samples, key=lambda s: s[1], reverse=True)[:count]
        return [{"at": round(t, 3), "lag_ms": round(lag, 1)} for t, lag in top]


def lags_between(samples: list[list[float]], start: float, end: float) -> list[float]:
    """Lag samples (as [monotonic, ms] pairs from another process) in a window."""
    return [lag for t, lag in samples if start <= t <= end]


# -- results ---------------------------------------------------------------------


def row(
    figure: str,
    value: float | None,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_what: str = "",
    goal: str = "",
    met: bool | None = None,
    ratio_of: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the summary table. ``ratio`` is ours / baseline unless given."""
    computed = ratio_of
    if computed is None and value is not None and baseline:
        computed = round(value / baseline, 2)
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_what": baseline_what,
        "ratio": computed,
        "goal": goal,
        "met": met,
        "note": note,
    }


def finish(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Stamp and write a result file; print its summary rows."""
    result.setdefault("benchmark", name)
    result.setdefault("date", time.strftime("%Y-%m-%d"))
    result.setdefault("machine", machine())
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result.setdefault("summary", [])
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["summary"]:
        verdict = {True: "met", False: "MISSED", None: ""}[r["met"]]
        base = (
            f" (baseline {r['baseline']} {r['unit']}, ratio {r['ratio']})" if r["baseline"] else ""
        )
        goal = f" goal {r['goal']}: {verdict}" if r["goal"] else ""
        print(f"  {r['figure']}: {r['value']} {r['unit']}{base}{goal}", flush=True)
    print(f"wrote {path}", flush=True)
    return path


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def child_env(**extra: str) -> dict[str, str]:
    """Environment for the processes a benchmark starts: the project importable,
    no keyring daemon (the control plane falls back to its key file), no RESTIC_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "PYTEST_"))}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


# -- child processes that talk JSON lines ---------------------------------------


class JsonChild:
    """A child process that prints JSON lines and reads commands on stdin
    (fleet_server.py, fleet_agents.py). Its stderr goes to ``log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, argv: list[str], log: Path) -> JsonChild:
        with log.open("ab") as sink:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
                env=child_env(),
                limit=2**28,  # the lag dump is one long line
            )
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def read(self, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            if not line:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.log.stem} exited (see {self.log}):\n{tail}")
            text = line.decode().strip()
            if text.startswith("{"):
                got: dict[str, Any] = json.loads(text)
                return got

    async def ask(self, command: str, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout_s)

    async def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)


def start_py_spy(pid: int, out: Path, rate: int = 250) -> Any:
    """Sample ``pid`` with py-spy (pip-installed into .venv, not a project
    dependency) until ``stop_py_spy``; raw collapsed stacks go to ``out``."""
    import subprocess

    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", flush=True)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--threads",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(out.parent / (out.name + ".log")).open("wb"),
    )


def stop_py_spy(proc: Any) -> None:
    import signal

    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


def top_frames(raw: Path, count: int = 25, own: bool = False) -> list[tuple[str, float]]:
    """The functions most often on the stack (or at its top, ``own``) in a
    py-spy raw file: share of samples per function, for a quick read."""
    totals: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        hits = int(n)
        samples += hits
        frames = stack.split(";")
        chosen = [frames[-1]] if own else list(dict.fromkeys(frames))
        for frame in chosen:
            totals[frame] = totals.get(frame, 0) + hits
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:count]
    return [(name, round(100 * hits / max(samples, 1), 1)) for name, hits in ranked]
