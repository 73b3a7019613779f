"""Agent overhead: a real backup through the control plane and the agent against
plain ``restic backup`` of the same tree.

The tree: ``--files`` files (20,480 by default) of log-uniform sizes
(128 B - 64 KiB, random bytes: nothing to compress) plus a few large ones,
>= 200 MB in all, fixed seed, generated once and cached under
tests/perf/.cache. The fleet: ``restic-manager serve`` and
``restic-manager-agent run`` from the venv, real processes over real TLS,
enrolled through the API; restic 0.18.

Per pair (``--pairs``, alternating which side goes first), each side into
its own fresh repository (``restic init`` outside the timing):
- initial: agent = API call → the job's ``finished_at`` (the agent's clock,
  same machine), with its phases from the job's timestamps and log lines
  (dispatch, restic backup, the snapshot/stats refresh the agent reports
  before it says the job is done); plain = ``restic backup --host H --tag T
  PATH`` wall time;
- incremental, nothing changed: the same again into the same repository.

Also reported: plain backup + ``snapshots --json`` + ``stats --mode
raw-data --json`` — the same restic work the agent does — as a second
baseline, and CPU (agent process, restic) per side. Goal: wall ratio <= 1.05.
Writes tests/perf/results/agent_overhead.json.

    .venv/bin/python tests/perf/bench_agent_overhead.py [--pairs 3] [--restic PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.fleet import AgentProcess, Api, ControlPlaneProcess, wait_for
from tests.perf import benchlib as bl

PASSWORD = "bench-overhead-password"
HOSTNAME = "bench-overhead"
TAG = "default"  # the source group the enrolment creates; the agent tags with its name
SEED = 8
TERMINAL = ("succeeded", "failed", "cancelled")


# -- the tree -------------------------------------------------------------------


def tree_plan(files: int, seed: int, min_bytes: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    lo, hi = math.log(128), math.log(64 * 1024)
    plan = []
    for i in range(files):
        a, b = divmod(i // 50, 20)
        size = int(math.exp(rng.uniform(lo, hi)))
        plan.append((f"top-{a:02d}/sub-{b:02d}/file-{i:06d}.bin", size))
    total = sum(s for _, s in plan)
    big = 0
    while total < min_bytes:  # a few large files, as any real tree has
        size = min(8 * 2**20, min_bytes - total + 2**20)
        plan.append((f"large/blob-{big:02d}.bin", size))
        total += size
        big += 1
    return plan


def prepare_tree(files: int, min_mb: int) -> tuple[Path, dict[str, Any]]:
    key = hashlib.sha256(f"v1-{files}-{min_mb}-{SEED}".encode()).hexdigest()[:12]
    home = bl.CACHE / f"overhead-tree-{files}-{key}"
    src, done = home / "src", home / "done.json"
    if done.is_file():
        return src, json.loads(done.read_text())
    shutil.rmtree(home, ignore_errors=True)
    plan = tree_plan(files, SEED, min_mb * 10**6)
    print(f"generating {len(plan)} files under {src} (once; cached) ...", flush=True)
    rng = random.Random(SEED)
    for rel, size in plan:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    # Fixed mtimes: restic's change detection must see the same tree every run.
    for rel, _ in plan:
        os.utime(src / rel, (1_700_000_000, 1_700_000_000))
    info = {"files": len(plan), "bytes": sum(s for _, s in plan), "seed": SEED}
    done.write_text(json.dumps(info) + "\n")
    return src, info


# -- restic by hand ---------------------------------------------------------------


def restic_env(repo: Path) -> dict[str, str]:
    env = bl.child_env()
    env.update({"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD})
    return env


def init_repo(restic: str, repo: Path) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(
        [restic, "init", "--cache-dir", str(repo.parent / "scratch-cache")],
        env=restic_env(repo),
        check=True,
        capture_output=True,
    )


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one command run to the end."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1]} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def plain_backup(restic: str, repo: Path, cache: Path, src: Path) -> dict[str, float]:
    env = restic_env(repo)
    base = [restic, "--cache-dir", str(cache)]
    wall, cpu = timed([*base, "backup", "--host", HOSTNAME, "--tag", TAG, str(src)], env)
    # What the agent runs after a backup, so the app shows the new snapshot and size.
    snap_wall, snap_cpu = timed([*base, "snapshots", "--json"], env)
    stats_wall, stats_cpu = timed([*base, "stats", "--mode", "raw-data", "--json"], env)
    return {
        "backup_s": round(wall, 3),
        "backup_cpu_s": round(cpu, 2),
        "snapshots_s": round(snap_wall, 3),
        "stats_s": round(stats_wall, 3),
        "same_work_s": round(wall + snap_wall + stats_wall, 3),
        "same_work_cpu_s": round(cpu + snap_cpu + stats_cpu, 2),
    }


# -- through the agent ------------------------------------------------------------


def agent_cpu(agent: AgentProcess) -> tuple[float, float]:
    """(agent process CPU s, CPU s of its finished children, i.e. restic)."""
    assert agent.proc is not None
    raw = Path(f"/proc/{agent.proc.pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / bl.CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / bl.CLK_TCK
    return own, children


def agent_backup(api: Api, agent: AgentProcess, host_id: int, group_id: int) -> dict[str, Any]:
    own0, kids0 = agent_cpu(agent)
    called = time.time()
    job_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group_id})[
        "job_id"
    ]
    job = wait_for(
        lambda: (j := api.get(f"/jobs/{job_id}"))["status"] in TERMINAL and j,
        1800,
        f"backup job {job_id}",
        interval=0.1,
    )
    own1, kids1 = agent_cpu(agent)
    if job["status"] != "succeeded":
        raise RuntimeError(f"the agent's backup failed: {job}")
    lines = [
        json.loads(line)
        for line in api.call("GET", f"/jobs/{job_id}/log.ndjson", raw=True).splitlines()
    ]
    saved = next((x["ts"] for x in lines if " saved: " in x["text"]), None)
    listed = next((x["ts"] for x in lines if "snapshot(s) in the repository" in x["text"]), None)
    wall = job["finished_at"] - called
    return {
        "job_id": job_id,
        "wall_s": round(wall, 3),
        "phases_s": {
            "api_to_started": round(job["started_at"] - called, 3),
            "restic_backup": round((saved or job["finished_at"]) - job["started_at"], 3),
            "snapshots_refresh": round((listed - saved), 3) if saved and listed else None,
            "stats_refresh_and_finish": round(job["finished_at"] - listed, 3) if listed else None,
        },
        "agent_cpu_s": round(own1 - own0, 2),
        "restic_cpu_s": round(kids1 - kids0, 2),
        "log_lines": job["log_lines"],
        "files_new": (job["summary"] or {}).get("files_new"),
    }


class Fleet:
    def __init__(self, work: Path, restic: str, src: Path) -> None:
        self.work = work
        self.server = ControlPlaneProcess(work / "data", work / "server.log")
        self.server.data_dir.mkdir()
        token = self.server.create_api_token()
        self.server.start()
        self.api = Api(self.server.api_base, token)
        self.repo = work / "agent-repo"
        created = self.api.post(
            "/enrolment-tokens",
            {
                "hostname": HOSTNAME,
                "repository": {"url": str(self.repo), "password": PASSWORD},
                "initial_paths": [str(src)],
            },
        )
        self.host_id = int(created["host_id"])
        self.agent = AgentProcess(work / "agent", restic, HOSTNAME)
        info = self.api.get("/server")
        enrolled = self.agent.enrol(self.server.agent_url, created["token"], info["cert_sha256"])
        if enrolled.returncode != 0:
            raise RuntimeError(f"enrolment failed: {enrolled.stderr}")
        self.agent.start()
        # The enrolment's init probe creates the repository; wait for it.
        wait_for(
            lambda: self.api.get(f"/hosts/{self.host_id}")["repo_status"] == "ready",
            120,
            "the agent's repository probe",
        )
        self.group_id = int(self.api.get(f"/hosts/{self.host_id}/source-groups")[0]["id"])

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()


# -- the benchmark -------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    facts = bl.machine()
    restic = str(args.restic)
    version = subprocess.run([restic, "version"], capture_output=True, text=True).stdout.strip()
    src, tree = prepare_tree(args.files, args.min_mb)
    work = Path(tempfile.mkdtemp(prefix="rm-bench-overhead-"))
    fleet = None
    pairs: list[dict[str, Any]] = []
    try:
        fleet = Fleet(work, restic, src)
        # Warm the page cache (and restic's binary) so the first timed run is not the odd one.
        warm = work / "warm-repo"
        init_repo(restic, warm)
        plain_backup(restic, warm, work / "warm-cache", src)
        shutil.rmtree(warm)
        for i in range(args.pairs):
            plain_repo, plain_cache = work / "plain-repo", work / f"plain-cache-{i}"
            init_repo(restic, plain_repo)
            init_repo(restic, fleet.repo)
            pair: dict[str, Any] = {"agent_first": i % 2 == 0}
            for case in ("initial", "incremental"):
                runs: dict[str, Any] = {}
                order = ("agent", "plain") if i % 2 == 0 else ("plain", "agent")
                for side in order:
                    if side == "agent":
                        runs["agent"] = agent_backup(
                            fleet.api, fleet.agent, fleet.host_id, fleet.group_id
                        )
                    else:
                        runs["plain"] = plain_backup(restic, plain_repo, plain_cache, src)
                runs["ratio"] = round(runs["agent"]["wall_s"] / runs["plain"]["backup_s"], 3)
                runs["ratio_same_work"] = round(
                    runs["agent"]["wall_s"] / runs["plain"]["same_work_s"], 3
                )
                # What the ratio would be if the job were reported done when
                # restic backup exits (the snapshot/stats refresh after it).
                phases = runs["agent"]["phases_s"]
                runs["ratio_backup_only"] = round(
                    (phases["api_to_started"] + phases["restic_backup"])
                    / runs["plain"]["backup_s"],
                    3,
                )
                pair[case] = runs
                print(
                    f"  pair {i + 1} {case}: agent {runs['agent']['wall_s']:.2f} s "
                    f"{runs['agent']['phases_s']}, plain backup {runs['plain']['backup_s']:.2f} s "
                    f"(+snapshots+stats {runs['plain']['same_work_s']:.2f} s): "
                    f"ratio {runs['ratio']:.3f}",
                    flush=True,
                )
            pairs.append(pair)
            shutil.rmtree(plain_cache, ignore_errors=True)
        jobs = fleet.api.get(f"/hosts/{fleet.host_id}/jobs")
    finally:
        if fleet is not None:
            fleet.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def med(case: str, *path: str) -> float:
        values = []
        for pair in pairs:
            value: Any = pair[case]
            for key in path:
                value = value[key]
            values.append(float(value))
        return bl.median(values)

    cases: dict[str, Any] = {}
    rows = []
    for case in ("initial", "incremental"):
        agent_s, plain_s = med(case, "agent", "wall_s"), med(case, "plain", "backup_s")
        same_s = med(case, "plain", "same_work_s")
        ratio = bl.median(p[case]["ratio"] for p in pairs)
        cases[case] = {
            "agent_wall_median_s": agent_s,
            "plain_backup_median_s": plain_s,
            "plain_same_work_median_s": same_s,
            "ratio_median": ratio,
            "ratio_same_work_median": bl.median(p[case]["ratio_same_work"] for p in pairs),
            "ratio_backup_only_median": bl.median(p[case]["ratio_backup_only"] for p in pairs),
            "agent_phases_median_s": {
                k: bl.median(p[case]["agent"]["phases_s"][k] or 0.0 for p in pairs)
                for k in pairs[0][case]["agent"]["phases_s"]
            },
            "agent_process_cpu_median_s": med(case, "agent", "agent_cpu_s"),
            "restic_cpu_via_agent_median_s": med(case, "agent", "restic_cpu_s"),
            "restic_cpu_plain_same_work_median_s": med(case, "plain", "same_work_cpu_s"),
        }
        rows.append(
            bl.row(
                f"agent overhead: {case} backup wall",
                agent_s,
                "s",
                baseline=plain_s,
                baseline_what="plain restic backup, same run",
                ratio_of=ratio,
                goal="ratio ≤ 1.05" if case == "initial" else "",
                met=ratio <= 1.05 if case == "initial" else None,
                note=(
                    f"×{cases[case]['ratio_same_work_median']} vs plain backup+snapshots+stats; "
                    f"×{cases[case]['ratio_backup_only_median']} until restic backup exits"
                ),
            )
        )
    others = [j for j in jobs if j["kind"] not in ("backup", "init")]
    return {
        "benchmark": "agent_overhead",
        "machine": facts,
        "restic": version,
        "tree": {**tree, "path": str(src)},
        "pairs": pairs,
        "cases": cases,
        "other_jobs_during_run": others,
        "goal": "agent + control plane wall <= 1.05 x plain restic backup",
        "summary": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_480)
    parser.add_argument("--min-mb", type=int, default=210, help="tree size floor (MB)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--restic", type=Path, default=bl.RESTIC_018)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = bench(args)
    bl.finish("agent_overhead", result, args.out)
    with contextlib.suppress(Exception):
        print(json.dumps(result["cases"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
