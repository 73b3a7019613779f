"""A million job-log lines into the job window's log view.

Appends 10⁶ lines to a LogModel shown in a LogView (offscreen) in chunks of
10k, timing each chunk including the layout and paint the event loop does
after it (what holds the shared loop), and records RSS before and after.
For reference it also times the first 100k lines in a QListView with uniform
item sizes (the view the log does not use: its layout is O(rows) per insert).
Writes tests/perf/results/job_log.json.

    .venv/bin/python tests/perf/bench_job_log.py [--lines 1000000] [--chunk 10000]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

if __package__ in (None, ""):  # run as a script: make `tests.perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import PySide6
from PySide6.QtWidgets import QApplication, QListView

from server_core.views import LogLineView
from tests.perf import benchlib
from ui_qt.log_model import LogModel, LogView

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "perf" / "results"
T0 = 1_700_000_000.0
STREAMS = ("stdout", "stdout", "stdout", "stderr", "agent", "hook")


def pin_singletons() -> None:
    # PySide6 6.12 (abi3) on Python 3.11 loses a reference to None on every
    # void call; a million-line run would abort with "deallocating None".
    if sys.version_info < (3, 12):
        for obj in (None, True, False):
            ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 40


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_chunk(first: int, count: int) -> list[LogLineView]:
    # restic-like lines: a path and a verdict, ~70 characters.
    return [
        LogLineView(
            s,
            T0 + s / 1000,
            STREAMS[s % len(STREAMS)],
            f"/srv/data/projects/p{s % 97:02d}/dir{s % 977:03d}/file-{s:07d}.dat  new  4.2 KiB",
        )
        for s in range(first, first + count)
    ]


def figures(times_s: list[float]) -> dict[str, float]:
    ordered = sorted(t * 1000 for t in times_s)
    return {
        "chunks": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2),
        "max_ms": round(ordered[-1], 2),
    }


def run_log_view(app: QApplication, lines: int, chunk: int) -> dict[str, object]:
    model = LogModel()
    view = LogView(model)
    view.resize(1000, 700)
    view.show()
    app.processEvents()
    gc.collect()
    rss_before = rss_bytes()
    times: list[float] = []
    for first in range(1, lines + 1, chunk):
        batch = make_chunk(first, min(chunk, lines - first + 1))
        start = time.perf_counter()
        model.append_lines(batch)
        app.processEvents()  # layout + paint, as the loop does after the append
        times.append(time.perf_counter() - start)
        del batch
    gc.collect()
    rss_after = rss_bytes()
    assert model.rowCount() == lines and view.at_bottom()
    # Scrolling far away and back: only visible rows are ever asked for.
    start = time.perf_counter()
    view.verticalScrollBar().setValue(0)
    app.processEvents()
    view.verticalScrollBar().setValue(lines // 2)
    app.processEvents()
    jump_ms = (time.perf_counter() - start) * 1000
    result: dict[str, object] = {
        "view": "LogView (QTableView, fixed row height)",
        "lines": lines,
        "chunk": chunk,
        **figures(times),
        "total_s": round(sum(times), 2),
        "first_chunk_ms": round(times[0] * 1000, 2),
        "last_chunk_ms": round(times[-1] * 1000, 2),
        "scroll_jumps_ms": round(jump_ms, 2),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_growth_mib": round((rss_after - rss_before) / 2**20, 1),
        "storage_mib": round(model.memory_bytes() / 2**20, 1),
        "bytes_per_line": round((rss_after - rss_before) / lines, 1),
        "chunk_ms": [round(t * 1000, 1) for t in times],
    }
    view.close()
    view.deleteLater()
    return result


def run_list_view_reference(app: QApplication, lines: int, chunk: int) -> dict[str, object]:
    model = LogModel()
    view = QListView()
    view.setUniformItemSizes(True)
    view.setModel(model)
    view.resize(1000, 700)
    view.show()
    app.processEvents()
    times: list[float] = []
    for first in range(1, lines + 1, chunk):
        batch = make_chunk(first, min(chunk, lines - first + 1))
        start = time.perf_counter()
        model.append_lines(batch)
        view.scrollToBottom()
        app.processEvents()
        times.append(time.perf_counter() - start)
    view.close()
    view.deleteLater()
    return {
        "view": "QListView, uniform item sizes (reference, not used)",
        "lines": lines,
        "chunk": chunk,
        **figures(times),
        "chunk_ms_by_rows": {
            f"{(i + 1) * chunk}": round(t * 1000, 1) for i, t in enumerate(times) if i % 2 == 1
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--reference-lines", type=int, default=100_000)
    args = parser.parse_args()
    pin_singletons()
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)

    log_view: dict[str, Any] = run_log_view(app, args.lines, args.chunk)
    reference: dict[str, Any] = run_list_view_reference(app, args.reference_lines, args.chunk)
    result = {
        "benchmark": "job_log",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "pyside6": PySide6.__version__,
        "machine": {**benchlib.machine(), "pyside6": PySide6.__version__},
        "goal": "no chunk of 10k lines holds the loop for more than 100 ms",
        "log_view": log_view,
        "qlistview_reference": reference,
        "summary": [
            benchlib.row(
                f"job log {args.lines:,} lines: worst {args.chunk:,}-line append (+ paint)",
                log_view["max_ms"],
                "ms",
                baseline=reference["median_ms"],
                baseline_what=f"QListView, median chunk over its first {args.reference_lines:,}",
                goal="no stall > 100 ms",
                met=float(log_view["max_ms"]) <= 100,
                note=f"median chunk {log_view['median_ms']} ms",
            ),
            benchlib.row(
                f"job log {args.lines:,} lines: total time",
                log_view["total_s"],
                "s",
            ),
            benchlib.row(
                f"job log {args.lines:,} lines: memory",
                log_view["rss_growth_mib"],
                "MiB",
                note=f"{log_view['bytes_per_line']} B/line",
            ),
        ],
    }
    benchlib.finish("job_log", result)
    lv = log_view
    print(
        f"LogView: {lv['lines']:,} lines in chunks of {lv['chunk']:,}: per chunk"
        f" median {lv['median_ms']} ms, p99 {lv['p99_ms']} ms, max {lv['max_ms']} ms"
        f" (first {lv['first_chunk_ms']} ms, last {lv['last_chunk_ms']} ms);"
        f" total {lv['total_s']} s"
    )
    print(
        f"RSS {lv['rss_before_mib']} MiB -> {lv['rss_after_mib']} MiB"
        f" (+{lv['rss_growth_mib']} MiB, {lv['bytes_per_line']} B/line;"
        f" line storage {lv['storage_mib']} MiB)"
    )
    print(
        f"QListView reference, {reference['lines']:,} lines: median {reference['median_ms']} ms,"
        f" max {reference['max_ms']} ms per chunk; by rows: {reference['chunk_ms_by_rows']}"
    )


if __name__ == "__main__":
    main()
