"""Desktop app cold start: process launch → the main window's first painted frame.

Each run launches a fresh process (``app_start_probe.py``: the real
``restic-manager`` entry point, offscreen, with a probe that notes the
first repaint of the main window and then quits the app through its SIGTERM
path):
- first launch: an empty data dir (the app creates the database, the data
  key and its TLS certificate) and no saved settings;
- relaunch: the same data dir and settings again — the everyday start;
- baseline, interleaved in the same run: a bare PySide6 process that shows
  a ``QMainWindow`` with a label (Python + Qt's own floor).

Time runs from just before the process is spawned (``time.monotonic()`` is
one clock for the machine) to the end of the first frame. Goal: <= 2 s.
Writes tests/perf/results/app_start.json.

    .venv/bin/python tests/perf/bench_app_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf import benchlib as bl

PROBE = Path(__file__).resolve().with_name("app_start_probe.py")


def launch(args: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    spawned = time.monotonic()
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(PROBE), *args], stdout=subprocess.PIPE, stderr=sink, env=env
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    exited = time.monotonic()
    if not line:
        raise RuntimeError(f"no first paint (exit {proc.returncode}); see {log}")
    got = json.loads(line)
    return {
        "to_first_paint_s": round(got["painted"] - spawned, 3),
        "to_python_main_s": round(got["probe_started"] - spawned, 3),
        "to_exit_s": round(exited - spawned, 3),
        "exit_code": proc.returncode,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    facts = bl.machine()
    work = Path(tempfile.mkdtemp(prefix="rm-bench-start-"))
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.runs):
            data, config = work / f"data-{i}", work / f"config-{i}"
            env = bl.child_env(QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(config))
            app_args = [
                "--",
                "--data-dir",
                str(data),
                "--agent-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ]
            log = work / f"run-{i}.log"
            run = {
                "bare_pyside6": launch(["--bare"], env, log),
                "first_launch": launch(app_args, env, log),
                "relaunch": launch(app_args, env, log),
            }
            runs.append(run)
            print(
                f"  run {i + 1}: first launch {run['first_launch']['to_first_paint_s']} s, "
                f"relaunch {run['relaunch']['to_first_paint_s']} s, bare PySide6 "
                f"{run['bare_pyside6']['to_first_paint_s']} s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(kind: str) -> float:
        return bl.median(r[kind]["to_first_paint_s"] for r in runs)

    bare, first, again = med("bare_pyside6"), med("first_launch"), med("relaunch")
    return {
        "benchmark": "app_start",
        "machine": facts,
        "runs": runs,
        "median_to_first_paint_s": {"bare_pyside6": bare, "first_launch": first, "relaunch": again},
        "goal": "launch to the first painted window <= 2 s",
        "summary": [
            bl.row(
                "app cold start → first painted window (relaunch)",
                again,
                "s",
                baseline=bare,
                baseline_what="bare PySide6 QMainWindow, same run",
                goal="≤ 2 s",
                met=again <= 2.0,
            ),
            bl.row(
                "app first launch (creates DB, key, certificate) → first paint",
                first,
                "s",
                baseline=bare,
                baseline_what="bare PySide6 QMainWindow, same run",
                goal="≤ 2 s",
                met=first <= 2.0,
            ),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bl.finish("app_start", bench(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
