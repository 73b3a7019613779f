"""Snapshot browsing: the agent's tree index against plain ``restic ls``.

On a generated snapshot of ``--files`` files (200k by default, small or
empty, fixed seed; made once and cached under tests/perf/.cache keyed by
the parameters), in one run:

- the index build (one ``restic ls --json`` stream into the SQLite index,
  through the agent's own code) against one plain ``restic ls --json`` of the
  same snapshot piped to /dev/null: wall time, and peak memory (the build's
  Python heap growth via tracemalloc and the process's RSS growth; restic's
  own peak RSS is the same for both and reported apart);
- ``tree.list`` latency over ~200 directories (the agent's RPC handler, not
  just the SQL) against ``restic ls <snapshot> <dir>`` for ~10 of them.

Writes tests/perf/results/restore_browse.json and prints a summary.

    .venv/bin/python tests/perf/bench_restore_browse.py [--files 200000] [--restic PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.restic import commands as rc  # noqa: E402
from tests.perf import benchlib  # noqa: E402

RESULTS = ROOT / "tests" / "perf" / "results"
CACHE = ROOT / "tests" / "perf" / ".cache"
RESTIC_018 = ROOT / ".cache" / "restic-0.18" / "usr" / "bin" / "restic"
PASSWORD = "bench-password"
SEED = 5


# -- the generated snapshot ---------------------------------------------------


def _tree_plan(files: int, seed: int) -> list[tuple[str, int]]:
    """(relative path, size) for every file: 3 levels of directories, 20-180
    files per leaf, a few nested a level deeper, names of varied length."""
    rng = random.Random(seed)
    plan: list[tuple[str, int]] = []
    leaf = 0
    while len(plan) < files:
        top, mid = divmod(leaf, 40)
        a, b = divmod(top, 10)
        base = f"area-{a:02d}/group-{b:02d}/leaf-{mid:03d}"
        if leaf % 7 == 3:
            base += f"/nested-{rng.randrange(1000):03d}"
        for n in range(rng.randint(20, 180)):
            stem = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 18)))
            ext = rng.choice((".txt", ".log", ".json", ".c", ".py", ".png", ""))
            # Mostly empty: the snapshot's shape is what matters, not its data.
            size = rng.choice((0, 0, 0, 0, 0, 12, 100, 700))
            plan.append((f"{base}/{stem}-{n:03d}{ext}", size))
            if len(plan) >= files:
                break
        leaf += 1
    return plan


def prepare_snapshot(files: int, restic: str) -> tuple[Path, str]:
    """(repository, full snapshot id) of the cached generated snapshot."""
    key = hashlib.sha256(f"v1-{files}-{SEED}".encode()).hexdigest()[:12]
    home = CACHE / f"restore-browse-{files}-{key}"
    repo, done = home / "repo", home / "snapshot-id"
    if done.is_file():
        return repo, done.read_text().strip()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    src = home / "src"
    print(f"generating {files} files under {src} (once; cached) ...", flush=True)
    payload = random.Random(SEED).randbytes(1024)
    for rel, size in _tree_plan(files, SEED):
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            if size:
                fh.write(payload[:size])
    env = _env(repo)
    cache = ["--cache-dir", str(home / "cache")]
    subprocess.run([restic, *cache, "init"], env=env, check=True, capture_output=True)
    print("backing it up (once; cached) ...", flush=True)
    began = time.monotonic()
    subprocess.run(
        [restic, *cache, "backup", "--host", "bench", str(src)],
        env=env,
        check=True,
        capture_output=True,
    )
    print(f"  backup took {time.monotonic() - began:.0f} s", flush=True)
    listed = subprocess.run(
        [restic, *cache, "snapshots", "--json"], env=env, check=True, capture_output=True
    ).stdout
    snapshot = str(json.loads(listed)[-1]["id"])
    # Only the repository is needed from now on; 200k files are a lot of inodes.
    shutil.rmtree(src)
    done.write_text(snapshot)
    return repo, snapshot


def _env(repo: Path) -> dict[str, str]:
    env = rc.minimal_env(os.environ)
    env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=PASSWORD)
    return env


# -- measurements ---------------------------------------------------------------


def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    # Linux: writing 5 resets VmHWM (the peak) to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def plain_ls(restic: str, repo: Path, cache: Path, snapshot: str, *paths: str) -> dict[str, Any]:
    """One plain ``restic ls``, stdout to /dev/null: wall time and restic's peak RSS."""
    began = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(
            [restic, "--cache-dir", str(cache), "ls", "--json", snapshot, *paths],
            env=_env(repo),
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else b""
        if proc.stderr:
            proc.stderr.close()
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"restic ls failed: {err.decode(errors='replace')[-500:]}")
    return {
        "wall_s": wall,
        "restic_max_rss_kib": usage.ru_maxrss,
        "restic_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def _ls_factory(restic: str, version: Any, repo: Path, cache: Path) -> Any:
    opts = rc.GlobalOptions(binary=restic, cache_dir=str(cache), version=version)
    creds = rc.RepoCredentials(url=str(repo), password=PASSWORD)
    return lambda snapshot_id: rc.ls_cmd(opts, creds, os.environ, snapshot_id)


async def index_build(
    restic: str, version: Any, repo: Path, cache: Path, snapshot: str, work: Path, *, trace: bool
) -> dict[str, Any]:
    """One index build through the agent's TreeIndexes, from the first
    ``status()`` to "ready" (polled every 10 ms, as a caller would)."""
    from agent.tree_index import TreeIndexes

    shutil.rmtree(work, ignore_errors=True)
    indexes = TreeIndexes(work, ls_command=_ls_factory(restic, version, repo, cache))
    rss_before = _rss_kib()
    peak_reset = _reset_peak_rss()
    if trace:
        tracemalloc.start()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_began = time.process_time()
    began = time.perf_counter()
    status = indexes.status(snapshot)
    while status.state == "building":
        await asyncio.sleep(0.01)
        status = indexes.status(snapshot)
    wall = time.perf_counter() - began
    python_cpu = time.process_time() - cpu_began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    restic_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    heap_peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    if status.state != "ready":
        raise RuntimeError(f"index build failed: {status.error}")
    path = indexes.ready_path(snapshot)
    assert path is not None
    await indexes.close()
    return {
        "wall_s": wall,
        "python_cpu_s": python_cpu,
        "restic_cpu_s": restic_cpu,
        "python_heap_peak_mib": round(heap_peak / 2**20, 2) if heap_peak is not None else None,
        "rss_growth_mib": round((hwm - rss_before) / 1024, 1) if peak_reset else None,
        "index_bytes": path.stat().st_size,
        "path": str(path),
    }


def _sample_dirs(index_path: Path, count: int, seed: int) -> list[str]:
    from agent import tree_store as store

    conn = store.open_index(index_path)
    try:
        ids = [row[0] for row in conn.execute("SELECT id FROM nodes WHERE type = 0")]
        chosen = random.Random(seed).sample(ids, min(count, len(ids)))
        known: dict[int, str] = {store.ROOT_ID: ""}
        return [store._dir_path(conn, node_id, known) or "/" for node_id in chosen]
    finally:
        conn.close()


async def list_latency(
    index_dir: Path,
    snapshot: str,
    dirs: list[str],
    restic: str,
    version: Any,
    repo: Path,
    cache: Path,
) -> dict[str, Any]:
    """tree.list as the agent answers it: params decoded, index read in a
    thread, result dict built and encoded as the rpc.result frame."""
    from agent import protocol
    from agent.tree_index import TreeIndexes
    from agent.tree_rpc import TreeRpc

    indexes = TreeIndexes(index_dir, ls_command=_ls_factory(restic, version, repo, cache))
    rpc = TreeRpc(indexes)
    times: list[float] = []
    entries = 0
    for path in dirs:
        began = time.perf_counter()
        result = await rpc.call(protocol.TREE_LIST, {"snapshot_id": snapshot, "path": path})
        protocol.encode(protocol.RpcResult(call_id="c", ok=True, result=result))
        times.append((time.perf_counter() - began) * 1000)
        assert result["index"]["state"] == "ready", result
        entries += len(result["entries"])
    finds = {}
    for pattern in ("readme", "*.png", "leaf-01?", "no-such-name-xyz"):
        began = time.perf_counter()
        found = await rpc.call(protocol.TREE_FIND, {"pattern": pattern, "snapshot_id": snapshot})
        finds[pattern] = {
            "ms": round((time.perf_counter() - began) * 1000, 2),
            "matches": len(found["matches"]),
            "truncated": found["truncated"],
        }
    await indexes.close()
    return {"ms": _stats(times), "entries_listed": entries, "find": finds}


def _stats(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(0.99 * len(ordered) + 0.5)))
    return {
        "samples": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[rank - 1], 3),
        "max": round(ordered[-1], 3),
    }


def synthetic_build(nodes: int, work: Path, trace: bool = False) -> dict[str, Any]:
    """Feed ``nodes`` ls-shaped lines (made here, no restic) to the builder:
    the memory the index build itself needs for a snapshot of that size."""
    from agent import tree_store as store

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"synthetic-{nodes}.sqlite"
    path.unlink(missing_ok=True)

    stamp = "2024-05-01T10:00:00.123456789+02:00"

    def dir_line(path: str) -> str:
        name = path.rsplit("/", 1)[1]
        return json.dumps(
            {"name": name, "type": "dir", "path": path, "mtime": stamp, "struct_type": "node"}
        )

    def lines() -> Any:
        yield json.dumps({"struct_type": "snapshot", "id": "f" * 64, "paths": ["/data"]})
        yield dir_line("/data")
        per_dir = nodes // 1000
        for a in range(1000):
            yield dir_line(f"/data/d{a:04d}")
            for n in range(per_dir):
                name = f"file-{n:06d}-some-longer-name.txt"
                yield json.dumps(
                    {
                        "name": name,
                        "type": "file",
                        "path": f"/data/d{a:04d}/{name}",
                        "uid": 1000,
                        "gid": 1000,
                        "size": n * 7,
                        "mode": 420,
                        "permissions": "-rw-r--r--",
                        "mtime": f"2024-05-01T10:{n % 60:02d}:00.123456789+02:00",
                        "atime": stamp,
                        "ctime": stamp,
                        "inode": a * per_dir + n,
                        "struct_type": "node",
                    }
                )

    rss_before = _rss_kib()
    peak_reset = _reset_peak_rss()
    if trace:
        tracemalloc.start()
    began = time.perf_counter()
    cpu_began = time.process_time()
    builder = store.IndexBuilder(path)
    batch: list[bytes] = []
    for line in lines():
        batch.append(line.encode())
        if len(batch) == 2500:
            builder.feed_lines(batch)
            batch = []
    builder.feed_lines(batch)
    meta = builder.finish("f" * 64)
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    heap_peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    result = {
        "nodes": meta.nodes,
        "tracemalloc": trace,
        # Includes making the lines (json.dumps), which the real build does not do.
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "python_heap_peak_mib": round(heap_peak / 2**20, 2) if heap_peak is not None else None,
        "rss_growth_mib": round((hwm - rss_before) / 1024, 1) if peak_reset else None,
        "index_mib": round(path.stat().st_size / 2**20, 1),
    }
    path.unlink()
    return result


def _synthetic_in_subprocess(nodes: int, work: Path, trace: bool) -> dict[str, Any]:
    # A fresh process each: RSS a previous run freed but kept would hide growth.
    code = (
        "import json, sys; from pathlib import Path; sys.path[:0] = sys.argv[1:3]; "
        "import bench_restore_browse as b; "
        "print(json.dumps(b.synthetic_build(int(sys.argv[3]), Path(sys.argv[4]), "
        "sys.argv[5] == '1')))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(ROOT / "tests" / "perf"),
            str(ROOT),
            str(nodes),
            str(work),
            "1" if trace else "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def bench_version(
    restic: str, repo: Path, snapshot: str, cache_root: Path, reps: int
) -> dict[str, Any]:
    from agent.restic.version import detect_version

    version = await detect_version(restic)
    cache = cache_root / f"restic-cache-{version}"
    work = cache_root / f"index-{version}"
    print(f"restic {version}: warming up (one ls) ...", flush=True)
    plain_ls(restic, repo, cache, snapshot)
    plains, builds = [], []
    for rep in range(reps):
        # Interleaved, so load from other work on the machine hits both alike.
        plains.append(plain_ls(restic, repo, cache, snapshot))
        builds.append(await index_build(restic, version, repo, cache, snapshot, work, trace=False))
        print(
            f"  rep {rep + 1}: ls --json {plains[-1]['wall_s']:.2f} s, "
            f"index build {builds[-1]['wall_s']:.2f} s",
            flush=True,
        )
    traced = await index_build(restic, version, repo, cache, snapshot, work, trace=True)
    ls_s = statistics.median(p["wall_s"] for p in plains)
    build_s = statistics.median(b["wall_s"] for b in builds)
    index_path = Path(builds[-1]["path"])
    shutil.rmtree(work, ignore_errors=True)
    # One more (untimed) build to list from.
    await index_build(restic, version, repo, cache, snapshot, work, trace=False)
    index_path = next(work.glob("*.sqlite"))
    dirs = _sample_dirs(index_path, 200, SEED)
    listing = await list_latency(work, snapshot, dirs, restic, version, repo, cache)
    per_dir = []
    for path in random.Random(SEED).sample(dirs, min(10, len(dirs))):
        per_dir.append(plain_ls(restic, repo, cache, snapshot, path)["wall_s"] * 1000)
    # Listing a directory with restic means also running restic ls for it;
    # that (per directory) is what the index replaces.
    return {
        "restic_version": str(version),
        "build_vs_ls": {
            "reps": reps,
            "ls_json_s": [round(p["wall_s"], 3) for p in plains],
            "index_build_s": [round(b["wall_s"], 3) for b in builds],
            "ls_json_median_s": round(ls_s, 3),
            "index_build_median_s": round(build_s, 3),
            "ratio": round(build_s / ls_s, 3),
            "goal_ratio": 1.2,
            # Where the extra time comes from: the agent's own CPU (parsing
            # and SQLite, in parallel with restic) competes with restic's.
            "ls_json_restic_cpu_median_s": round(
                statistics.median(p["restic_cpu_s"] for p in plains), 3
            ),
            "build_restic_cpu_median_s": round(
                statistics.median(b["restic_cpu_s"] for b in builds), 3
            ),
            "build_python_cpu_median_s": round(
                statistics.median(b["python_cpu_s"] for b in builds), 3
            ),
            "restic_max_rss_mib": round(max(p["restic_max_rss_kib"] for p in plains) / 1024, 1),
            "build_python_heap_peak_mib": traced["python_heap_peak_mib"],
            "build_rss_growth_mib": traced["rss_growth_mib"],
            "build_wall_s_with_tracemalloc": round(traced["wall_s"], 3),
            "index_mib": round(index_path.stat().st_size / 2**20, 1),
        },
        "tree_list_ms": listing["ms"],
        "tree_list_entries": listing["entries_listed"],
        "tree_find": listing["find"],
        "restic_ls_dir_ms": _stats(per_dir),
        "goal_tree_list_p99_ms": 20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--restic",
        action="append",
        help="restic binary to measure (repeatable; default: 0.18 and 0.14 when present)",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        default=1_000_000,
        help="nodes for the builder-only memory run (0: skip)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "restore_browse.json")
    args = parser.parse_args()
    binaries = args.restic or [str(p) for p in (RESTIC_018, Path("/usr/bin/restic")) if p.is_file()]
    repo, snapshot = prepare_snapshot(args.files, binaries[0])
    cache_root = Path(tempfile.mkdtemp(prefix="bench-browse-"))
    results: dict[str, Any] = {
        "benchmark": "restore_browse",
        "machine": benchlib.machine(),
        "snapshot": {"files": args.files, "id": snapshot, "seed": SEED},
        "versions": [],
    }
    try:
        for binary in binaries:
            results["versions"].append(
                asyncio.run(bench_version(binary, repo, snapshot, cache_root, args.reps))
            )
        if args.synthetic:
            runs = []
            for nodes, trace in ((args.synthetic // 10, True), (args.synthetic, False)):
                print(f"builder alone on {nodes} synthetic nodes ...", flush=True)
                runs.append(_synthetic_in_subprocess(nodes, cache_root, trace))
            results["synthetic_build"] = runs
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    results["max_rss_self_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    results["summary"] = summary_rows(results)
    print_summary(results)
    benchlib.finish("restore_browse", results, args.out)
    return 0


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    files = results["snapshot"]["files"]
    for v in results["versions"]:
        b, t, r = v["build_vs_ls"], v["tree_list_ms"], v["restic_ls_dir_ms"]
        version = v["restic_version"]
        rows.append(
            benchlib.row(
                f"restore browse {files:,} files, restic {version}: index build",
                b["index_build_median_s"],
                "s",
                baseline=b["ls_json_median_s"],
                baseline_what="one restic ls --json, same run",
                ratio_of=b["ratio"],
                goal="ratio ≤ 1.2",
                met=b["ratio"] <= 1.2,
            )
        )
        rows.append(
            benchlib.row(
                f"restore browse {files:,} files, restic {version}: tree.list p99",
                t["p99"],
                "ms",
                baseline=round(r["p99"], 1),
                baseline_what="restic ls <snap> <dir> p99, same run",
                goal="≤ 20 ms",
                met=t["p99"] <= 20,
                note=f"p50 {t['p50']} ms",
            )
        )
    return rows


def print_summary(results: dict[str, Any]) -> None:
    print(f"\nsnapshot of {results['snapshot']['files']} files")
    for v in results["versions"]:
        b = v["build_vs_ls"]
        print(
            f"restic {v['restic_version']}: index build {b['index_build_median_s']:.2f} s vs "
            f"ls --json {b['ls_json_median_s']:.2f} s -> ratio {b['ratio']:.2f} (goal <= 1.2); "
            f"build heap peak {b['build_python_heap_peak_mib']} MiB, RSS growth "
            f"{b['build_rss_growth_mib']} MiB, restic itself {b['restic_max_rss_mib']} MiB; "
            f"index {b['index_mib']} MiB"
        )
        print(
            f"  CPU: restic {b['ls_json_restic_cpu_median_s']:.2f} s alone, "
            f"{b['build_restic_cpu_median_s']:.2f} s in the build, plus the agent's "
            f"{b['build_python_cpu_median_s']:.2f} s"
        )
        t, r = v["tree_list_ms"], v["restic_ls_dir_ms"]
        print(
            f"  tree.list over {t['samples']} dirs: p50 {t['p50']} ms, p99 {t['p99']} ms "
            f"(goal <= 20); restic ls <dir> over {r['samples']}: p50 {r['p50']:.0f} ms, "
            f"p99 {r['p99']:.0f} ms"
        )
        finds = ", ".join(f"{k!r} {x['ms']} ms" for k, x in v["tree_find"].items())
        print(f"  tree.find: {finds}")
    for s in results.get("synthetic_build", []):
        heap = s["python_heap_peak_mib"]
        print(
            f"builder alone, {s['nodes']} synthetic nodes: "
            + (f"Python heap peak {heap} MiB, " if heap is not None else "")
            + f"RSS growth {s['rss_growth_mib']} MiB, CPU {s['cpu_s']} s"
            + (" (under tracemalloc)" if s["tracemalloc"] else "")
            + f", index {s['index_mib']} MiB"
        )


if __name__ == "__main__":
    sys.exit(main())
