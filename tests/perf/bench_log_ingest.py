"""Log ingest: M agents streaming job logs as fast as the control plane takes them,
against raw ``sqlite3`` ``executemany`` of the same rows into the same schema.

Per repetition, alternating which goes first:
- ours: a fresh control plane (``fleet_server.py``, its own process) and
  M simulated agents (``fleet_agents.py``, another process, real TLS
  WebSockets) that each stream one job: job.started, ``--lines`` log
  lines in frames of 200 (what the real agent batches), job.finished —
  frames pre-encoded, at most 1,000 unacknowledged per agent (the real
  agent's window). Lines/s = lines / (first frame sent → last frame
  acknowledged); the control plane acknowledges only after the commit,
  and the rows are counted in the database afterwards.
- raw: the same rows, one ``executemany`` per 200-line frame, in one
  transaction, with the store's pragmas (WAL, synchronous=NORMAL), into a
  copy of the same database (same schema and indexes, same job rows).
  ``raw_commit_per_frame`` (a commit after each frame) is reported too.

Goal: >= 50k lines/s and >= 50 % of raw. Writes
tests/perf/results/log_ingest.json.

    .venv/bin/python tests/perf/bench_log_ingest.py [--agents 10] [--lines 40000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from server_core.control_plane import DB_FILE
from tests.perf import benchlib as bl
from tests.perf.bench_fleet_capacity import start_fleet, start_server
from tests.perf.fleet_agents import LOG_TS0, log_rows, stream_job_id
from tests.perf.fleet_template import template

INSERT = (
    'INSERT OR IGNORE INTO "job_log" ("job_id", "seq", "ts", "stream", "text") '
    "VALUES (?, ?, ?, ?, ?)"
)
BATCH = 200  # agent.jobs.LOG_BATCH_LINES
MAX_IN_FLIGHT = 1000  # agent.client.MAX_IN_FLIGHT


async def ours(
    rep: int, tpl: Any, args: argparse.Namespace, work: Path
) -> tuple[dict[str, Any], Path]:
    tag = f"rep{rep}"
    data = tpl.copy_to(work / f"data-{tag}")
    server, ready = await start_server(data, work, tag, args.server_arg)
    sampler = bl.ProcSampler(server.pid, 0.25).start()
    fleet = None
    try:
        fleet = await start_fleet(
            ready,
            tpl.agents[: args.agents],
            work,
            tag,
            heartbeat_s=30.0,
            stream_agents=args.agents,
            stream_lines=args.lines,
            batch_lines=BATCH,
            max_in_flight=MAX_IN_FLIGHT,
            run_id=str(rep),
        )
        connected = await fleet.read(120)
        assert connected["connected"] == args.agents, connected
        await fleet.ask("prepare", timeout_s=300)  # frames encoded before the clock starts
        await asyncio.sleep(0.5)
        cpu_server = sampler.cpu()
        cpu_fleet = bl.cpu_seconds(fleet.pid)
        spies = []
        if args.profile:  # both sides: the simulator's CPU is CPU the control plane lacks
            spies.append(bl.start_py_spy(server.pid, args.profile / f"ingest-{tag}.txt"))
            spies.append(bl.start_py_spy(fleet.pid, args.profile / f"ingest-{tag}-fleet.txt"))
        streamed = await fleet.ask("stream", timeout_s=900)
        for spy in spies:
            bl.stop_py_spy(spy)
        cpu_server = sampler.cpu() - cpu_server
        cpu_fleet = bl.cpu_seconds(fleet.pid) - cpu_fleet
        rss = sampler.rss_in(streamed["began"], streamed["ended"])
    finally:
        sampler.stop()
        if fleet is not None:
            await fleet.stop()
        await server.stop()
    db = data / DB_FILE
    jobs = [stream_job_id(str(rep), i) for i in range(args.agents)]
    with sqlite3.connect(db) as conn:
        marks = ",".join("?" * len(jobs))
        stored = conn.execute(
            f"SELECT count(*) FROM job_log WHERE job_id IN ({marks})", jobs
        ).fetchone()[0]
        counted = conn.execute(
            f"SELECT sum(log_lines) FROM job WHERE id IN ({marks})", jobs
        ).fetchone()[0]
    conn.close()
    seconds = streamed["ended"] - streamed["began"]
    return (
        {
            "lines_sent": streamed["lines"],
            "frames": streamed["frames"],
            "lines_stored": stored,
            "job_log_lines_column": counted,
            "seconds": round(seconds, 3),
            "lines_per_s": round(stored / seconds),
            "server_cpu_s": round(cpu_server, 2),
            "server_cpu_percent_of_one_core": round(100 * cpu_server / seconds, 1),
            "fleet_cpu_s": round(cpu_fleet, 2),
            "server_rss_mib": rss,
        },
        db,
    )


def raw(rep: int, tpl: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same rows with bare sqlite3, into a copy of the template's database
    (the control plane's schema and indexes) holding the same job rows."""
    jobs = [stream_job_id(str(rep), i) for i in range(args.agents)]
    frames = [f for i, job in enumerate(jobs) for f in log_rows(job, i, args.lines, BATCH)]
    out: dict[str, Any] = {}
    for variant in ("one_transaction", "commit_per_frame"):
        db = work / f"raw-{rep}-{variant}.sqlite3"
        shutil.copyfile(tpl.data_dir / DB_FILE, db)
        conn = sqlite3.connect(db, isolation_level=None)
        for pragma in (
            "journal_mode=wal",
            "foreign_keys=1",
            "synchronous=normal",
            "cache_size=-16000",
        ):
            conn.execute(f"PRAGMA {pragma}")
        conn.executemany(
            "INSERT INTO job (id, host_id, kind, status, actor, args, created_at, started_at,"
            " warnings, last_seq, log_lines) VALUES (?, ?, 'backup', 'running', 'agent', '{}',"
            " ?, ?, 0, 1, 0)",
            [(job, tpl.agents[i].host_id, LOG_TS0, LOG_TS0) for i, job in enumerate(jobs)],
        )
        began = time.perf_counter()
        if variant == "one_transaction":
            conn.execute("BEGIN IMMEDIATE")
            for frame in frames:
                conn.executemany(INSERT, frame)
            conn.execute("COMMIT")
        else:
            for frame in frames:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(INSERT, frame)
                conn.execute("COMMIT")
        seconds = time.perf_counter() - began
        stored = conn.execute("SELECT count(*) FROM job_log").fetchone()[0]
        conn.close()
        db.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        out[variant] = {
            "lines": stored,
            "seconds": round(seconds, 3),
            "lines_per_s": round(stored / seconds),
        }
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    facts = bl.machine()
    tpl = await template(max(args.agents, 1000))
    work = Path(tempfile.mkdtemp(prefix="rm-bench-ingest-"))
    reps = []
    try:
        for rep in range(args.reps):
            # Alternate the order: the machine's load drifts.
            if rep % 2 == 0:
                mine, db = await ours(rep, tpl, args, work)
                theirs = raw(rep, tpl, args, work)
            else:
                theirs = raw(rep, tpl, args, work)
                mine, db = await ours(rep, tpl, args, work)
            shutil.rmtree(db.parent, ignore_errors=True)
            reps.append({"ours": mine, "raw": theirs})
            print(
                f"  rep {rep + 1}: ours {mine['lines_per_s']:,} lines/s "
                f"({mine['lines_stored']:,} stored in {mine['seconds']} s, server CPU "
                f"{mine['server_cpu_percent_of_one_core']} %), raw "
                f"{theirs['one_transaction']['lines_per_s']:,} lines/s "
                f"(commit per frame {theirs['commit_per_frame']['lines_per_s']:,})",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_med = bl.median((r["ours"]["lines_per_s"] for r in reps), 0)
    raw_med = bl.median((r["raw"]["one_transaction"]["lines_per_s"] for r in reps), 0)
    raw_frame_med = bl.median((r["raw"]["commit_per_frame"]["lines_per_s"] for r in reps), 0)
    share = round(ours_med / raw_med, 3) if raw_med else 0.0
    complete = all(r["ours"]["lines_stored"] == r["ours"]["lines_sent"] for r in reps)
    return {
        "benchmark": "log_ingest",
        "machine": facts,
        "setup": f"{args.agents} agents x {args.lines:,} lines, frames of {BATCH} lines; "
        "control plane, agents and this process are three processes on the same cores",
        "agents": args.agents,
        "lines_per_agent": args.lines,
        "reps": reps,
        "ours_lines_per_s_median": ours_med,
        "raw_lines_per_s_median": raw_med,
        "raw_commit_per_frame_lines_per_s_median": raw_frame_med,
        "share_of_raw": share,
        "all_lines_stored": complete,
        "goal": ">= 50,000 lines/s and >= 50 % of raw sqlite3 executemany",
        "summary": [
            bl.row(
                "log ingest: persisted lines/s",
                ours_med,
                "lines/s",
                baseline=raw_med,
                baseline_what="raw sqlite3 executemany, one transaction, same run",
                goal="≥ 50,000/s and ≥ 50 % of raw",
                met=ours_med >= 50_000 and share >= 0.5 and complete,
                note=f"raw with a commit per frame: {raw_frame_med:,.0f}/s",
            )
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="M streaming agents")
    parser.add_argument("--lines", type=int, default=40_000, help="log lines per agent")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--server-arg", action="append", default=[], help="see fleet_server.py")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the control plane into this dir"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    bl.finish("log_ingest", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
