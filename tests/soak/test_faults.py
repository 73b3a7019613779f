"""Faults during backups: nothing an agent did is lost.

Real agents, each in its own network namespace, back up real data with real
restic (0.18) to their own repositories while a real control plane
(`restic-manager serve`) keeps asking for more ("run now" through the API)
and an every-minute schedule fires on the agents by themselves. Meanwhile,
at random (``random.Random(SOAK_SEED)``; the seed is printed and written to
the results), one of four faults hits, as far as possible while a backup is
running:

- link cut: the agent's veth goes down for a while, then up again;
- control plane killed (SIGKILL) and restarted on the same data dir and ports;
- agent killed (SIGKILL) and restarted;
- restic killed (SIGKILL), the backup's own process.

Every backup's pre-hook appends the job id to a ledger file on the host and
prints numbered lines: the ledger is what the agents really ran, the lines
are a log whose completeness can be checked. After the faults, once every
agent's outbox is empty, the control plane's database and API and the
repositories themselves are compared with that ground truth:

- every job has a terminal status;
- every job a pre-hook saw is known to the control plane, with its whole log
  (every numbered line once, in order; as many lines as the agent says it
  wrote), or for a job cut short by an agent kill, every line up to the cut,
  and all of the hook's lines if restic was already running;
- no job ran twice and no snapshot is claimed by two jobs;
- every snapshot in a repository is in the control plane's list after a
  refresh; every succeeded backup's snapshot is in the repository; a snapshot
  no job claims must come from a backup whose restic outlived its killed agent
  (or whose restic was killed after saving it);
- locks left by the killed restic processes are counted, and a check (which
  needs the exclusive lock) still succeeds and leaves none: the agent removes
  stale locks before such a job.

`make test` runs a small variant (two agents, one fault of each kind, link
cuts of 1-5 s); `make soak` sets SOAK_FULL=1 (three agents, 50 faults, link
cuts up to 120 s) and SOAK_RESULTS for the figures RELIABILITY.md quotes.
SOAK_FAULTS and SOAK_SEED override the count and the seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import netns
from tests.helpers.fleet import Api, ApiError, make_tree, wait_for
from tests.helpers.restic_bins import RESTIC_BINARIES
from tests.integration.test_agent_autonomy import put_group
from tests.integration.test_walking_skeleton import wait_job, wait_ready
from tests.soak.faults import (
    TERMINAL,
    NetnsAgent,
    ReachablePlane,
    kill_pid,
    lock_files,
    repo_snapshots,
    restic_processes,
)

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("SOAK_SEED", "20261206"))
FULL = os.environ.get("SOAK_FULL") == "1"
FAULTS = int(os.environ.get("SOAK_FAULTS", "50" if FULL else "4"))
AGENTS = 3 if FULL else 2
LINK_CUT_S = (1.0, 120.0) if FULL else (1.0, 5.0)
DOWN_S = (0.5, 5.0) if FULL else (0.5, 2.0)
GAP_S = (1.0, 8.0) if FULL else (0.5, 2.0)
RESULTS_DIR = os.environ.get("SOAK_RESULTS")
KINDS = ("link_cut", "control_plane_kill", "agent_kill", "restic_kill")
HOOK_LINES = 40
CHURN_BYTES = 4 * 1024 * 1024
UPLOAD_KIB_S = 2048
HOOK_LINE = re.compile(rf"hook\(pre\): soak line (\d+)/{HOOK_LINES}")
INTERRUPTED = "the agent restarted while this job was running"


@dataclass
class SoakHost:
    name: str
    ns: netns.NetnsHost
    agent: NetnsAgent
    host_id: int
    group_id: int
    repo: Path
    src: Path
    ledger: Path
    schedule_id: int | None = None


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float
    duration_s: float = 0.0
    mid_backup: bool = False
    detail: str = ""
    at_wall: float = 0.0


@dataclass
class Trigger:
    """Keeps a backup queued or running on every host through the API."""

    api: Api
    hosts: list[SoakHost]
    counts: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for host in self.hosts:
                try:
                    jobs = self.api.get(f"/hosts/{host.host_id}/jobs")
                    if any(
                        j["kind"] == "backup" and j["status"] in ("queued", "running")
                        for j in jobs[:20]
                    ):
                        continue
                    self.api.post(
                        f"/hosts/{host.host_id}/jobs",
                        {"kind": "backup", "source_group_id": host.group_id},
                    )
                    self.counts["run_now_accepted"] += 1
                except ApiError as exc:
                    self.counts[f"run_now_refused_{exc.status}"] += 1
                except OSError:
                    self.counts["api_unreachable"] += 1


def plan(rng: random.Random) -> list[str]:
    """Every kind equally often (one of each in the small variant), shuffled."""
    kinds = (list(KINDS) * math.ceil(FAULTS / len(KINDS)))[:FAULTS]
    rng.shuffle(kinds)
    return kinds


def pre_hook(host: SoakHost) -> str:
    return (
        f'echo "$RM_JOB_ID" >> {host.ledger}\n'
        f'i=1; while [ $i -le {HOOK_LINES} ]; do echo "soak line $i/{HOOK_LINES}"; '
        "i=$((i+1)); done\n"
        # New data for every backup, so each one has something to upload.
        f"head -c {CHURN_BYTES} /dev/urandom > {host.src}/churn.bin\n"
    )


@pytest.fixture
def soak_env(tmp_path: Path) -> Iterator[tuple[ReachablePlane, Api, list[SoakHost], str, str]]:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"the fault soak: {reason}")
    restic = RESTIC_BINARIES.get("0.18")
    assert restic, "restic 0.18 is not installed: run `make bootstrap`"
    password = "soak-" + os.urandom(12).hex()
    server = ReachablePlane(tmp_path / "data", tmp_path / "server.log")
    server.data_dir.mkdir()
    api = Api(server.api_base, server.create_api_token())
    server.start()
    hosts: list[SoakHost] = []
    with contextlib.ExitStack() as stack:
        try:
            info = api.get("/server")
            for n in range(AGENTS):
                ns = stack.enter_context(netns.netns_host(f"s{n}"))
                name = f"soak{n}"
                src = make_tree(tmp_path / f"src-{name}", files=40, size=64 * 1024, seed=n + 1)
                repo = tmp_path / f"repo-{name}"
                created = api.post(
                    "/enrolment-tokens",
                    {
                        "hostname": name,
                        "repository": {"url": str(repo), "password": password},
                        "initial_paths": [str(src)],
                        "tags": ["soak"],
                    },
                )
                agent = NetnsAgent(tmp_path / f"agent-{name}", restic, name, netns=ns)
                enrolled = agent.enrol(server.url_for(ns), created["token"], info["cert_sha256"])
                assert enrolled.returncode == 0, enrolled.stderr
                agent.start()
                host_id = created["host_id"]
                groups = api.get(f"/hosts/{host_id}/source-groups")
                host = SoakHost(
                    name,
                    ns,
                    agent,
                    host_id,
                    groups[0]["id"],
                    repo,
                    src,
                    tmp_path / f"{name}.ledger",
                )
                hosts.append(host)
                put_group(api, host_id, groups[0], pre_hook=pre_hook(host), retry_max=0)
                api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib_s": UPLOAD_KIB_S})
            for host in hosts:
                assert wait_ready(api, host.host_id)["repo_status"] == "ready"
            yield server, api, hosts, restic, password
        finally:
            for host in hosts:
                host.ns.set_link(True)
                host.agent.stop()
            server.stop()
            for host in hosts:
                for proc in restic_processes(host.repo):
                    kill_pid(proc.pid)


def wait_backup_running(hosts: list[SoakHost], timeout: float) -> bool:
    """Until a restic backup runs on one of ``hosts``' repositories."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.is_backup for h in hosts for p in restic_processes(h.repo)):
            return True
        time.sleep(0.1)
    return False


def inject(
    kind: str,
    host: SoakHost,
    hosts: list[SoakHost],
    server: ReachablePlane,
    rng: random.Random,
    longest: bool = False,
) -> Fault:
    fault = Fault(kind, host.name if kind != "control_plane_kill" else "control plane", 0.0)
    scope = hosts if kind == "control_plane_kill" else [host]
    fault.mid_backup = wait_backup_running(scope, 45)
    fault.at_s = time.monotonic()
    fault.at_wall = time.time()
    if kind == "link_cut":
        fault.duration_s = LINK_CUT_S[1] if longest else rng.uniform(*LINK_CUT_S)
        host.ns.set_link(False)
        try:
            time.sleep(fault.duration_s)
        finally:
            host.ns.set_link(True)
    elif kind == "control_plane_kill":
        fault.duration_s = rng.uniform(*DOWN_S)
        server.kill()
        time.sleep(fault.duration_s)
        server.start()
    elif kind == "agent_kill":
        fault.duration_s = rng.uniform(*DOWN_S)
        host.agent.kill()
        time.sleep(fault.duration_s)
        host.agent.start()
    elif kind == "restic_kill":
        backups = [p for p in restic_processes(host.repo) if p.is_backup]
        if backups and kill_pid(backups[0].pid):
            fault.detail = "killed restic backup"
        else:
            fault.mid_backup = False
            fault.detail = "no restic backup was running"
    return fault


def log_lines(api: Api, job_id: str) -> list[dict[str, Any]]:
    text = api.call("GET", f"/jobs/{job_id}/log.ndjson", raw=True)
    return [json.loads(line) for line in text.splitlines()]


def snapshot_time(snap: dict[str, Any]) -> float:
    # restic writes nanoseconds; datetime takes microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", snap["time"]).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def settled(server: ReachablePlane, api: Api, hosts: list[SoakHost]) -> str | None:
    """None once everything is quiet; else what is still going on."""
    try:
        for host in hosts:
            if api.get(f"/hosts/{host.host_id}")["status"] != "online":
                return f"{host.name} offline"
    except (OSError, ApiError) as exc:
        return f"API: {exc}"
    busy = [j["id"] for j in server.jobs() if j["status"] not in TERMINAL]
    if busy:
        return f"{len(busy)} job(s) not finished"
    for host in hosts:
        if host.agent.outbox_size():
            return f"{host.name}: outbox not empty"
        if restic_processes(host.repo):
            return f"{host.name}: restic still running"
    return None


@pytest.mark.timeout(4 * 3600 if FULL else 600)
def test_faults_during_backups_lose_nothing(soak_env: Any) -> None:
    server, api, hosts, restic, password = soak_env
    print(f"soak seed {SEED}: {FAULTS} faults on {AGENTS} agents (full={FULL})")
    rng = random.Random(SEED)
    started = time.monotonic()
    for host in hosts:
        host.schedule_id = api.post(
            f"/hosts/{host.host_id}/schedules",
            {"cron": "* * * * *", "enabled": True, "source_group_ids": [host.group_id]},
        )["id"]
    trigger = Trigger(api, hosts)
    thread = threading.Thread(target=trigger.run, daemon=True)
    thread.start()
    faults: list[Fault] = []
    try:
        kinds = plan(rng)
        # One link cut as long as the range allows (past the control plane's
        # 90 s offline mark at full size), whatever the draws say.
        longest = kinds.index("link_cut") if "link_cut" in kinds else -1
        for n, kind in enumerate(kinds):
            time.sleep(rng.uniform(*GAP_S))
            fault = inject(kind, rng.choice(hosts), hosts, server, rng, n == longest)
            fault.at_s = round(fault.at_s - started, 1)
            fault.duration_s = round(fault.duration_s, 1)
            faults.append(fault)
            print(f"fault {len(faults)}/{FAULTS}: {fault}")
    finally:
        trigger.stop.set()
        thread.join()
    faults_done_s = time.monotonic() - started

    # Quiet down: no more schedules, every job over, every outbox empty.
    for host in hosts:
        wait_for(lambda: _try(lambda: api.get("/server")), 60, "the control plane")
        api.call("DELETE", f"/hosts/{host.host_id}/schedules/{host.schedule_id}")
    for host in hosts:
        wait_for(
            lambda h=host: (
                (v := api.get(f"/hosts/{h.host_id}"))["schedule_acked_version"]
                == v["schedule_version"]
            ),
            180,
            f"{host.name} to acknowledge the empty schedule set",
            1.0,
        )
    wait_for(lambda: settled(server, api, hosts) is None, 600, "the fleet to settle", 1.0)
    # Twice, a few seconds apart: a schedule window that fired just before
    # the schedule went away shows up in between.
    time.sleep(3)
    wait_for(lambda: settled(server, api, hosts) is None, 600, "the fleet to settle", 1.0)
    settled_s = time.monotonic() - started

    # Stale locks, as the repositories have them, and what the product says.
    locks_before = {h.name: lock_files(h.repo) for h in hosts}
    repo_status = {h.name: api.get(f"/hosts/{h.host_id}")["repo_status"] for h in hosts}

    # A fresh snapshot list on the control plane.
    for host in hosts:
        job_id = api.post(f"/hosts/{host.host_id}/jobs", {"kind": "snapshots"})["job_id"]
        assert wait_job(api, job_id, 120)["status"] == "succeeded"

    jobs = server.jobs()
    problems: dict[str, list[str]] = {
        "not_terminal": [],
        "ran_but_unknown": [],
        "incomplete_log": [],
        "hook_output_lost": [],
        "ran_twice": [],
        "snapshot_claimed_twice": [],
        "snapshot_missing_from_control_plane": [],
        "succeeded_snapshot_missing_from_repo": [],
        "unexplained_orphan_snapshot": [],
    }
    per_host: dict[str, Any] = {}
    # Hook lines that reached the control plane, of the jobs an agent kill cut short.
    cut_logs: list[int] = []
    known = {j["id"]: j for j in jobs}
    for job in jobs:
        if job["status"] not in TERMINAL:
            problems["not_terminal"].append(job["id"])
    for host in hosts:
        ran = host.ledger.read_text().split() if host.ledger.exists() else []
        for job_id, n in Counter(ran).items():
            if n > 1:
                problems["ran_twice"].append(job_id)
        host_jobs = [j for j in jobs if j["host_id"] == host.host_id]
        for job_id in dict.fromkeys(ran):
            job = known.get(job_id)
            if job is None:
                problems["ran_but_unknown"].append(job_id)
                continue
            lines = log_lines(api, job_id)
            seqs = [line["seq"] for line in lines]
            numbers = [int(m[1]) for line in lines if (m := HOOK_LINE.fullmatch(line["text"]))]
            whole = job["log_lines_reported"] is not None
            if not whole:
                cut_logs.append(len(numbers))
            wanted = list(range(1, HOOK_LINES + 1)) if whole else list(range(1, len(numbers) + 1))
            if (
                seqs != sorted(set(seqs))
                or numbers != wanted
                or (whole and len(lines) != job["log_lines_reported"])
                or (not whole and INTERRUPTED not in (job["error"] or ""))
            ):
                problems["incomplete_log"].append(
                    f"{job_id}: {len(lines)} lines (agent wrote {job['log_lines_reported']}),"
                    f" hook lines {numbers[:3]}..{numbers[-3:]}, error {job['error']!r}"
                )

        in_repo = repo_snapshots(restic, host.repo, password)
        listed = {s["id"] for s in api.get(f"/hosts/{host.host_id}/snapshots")}
        repo_ids = {s["id"] for s in in_repo}
        for snap_id in repo_ids - listed:
            problems["snapshot_missing_from_control_plane"].append(f"{host.name}: {snap_id}")
        claims: Counter[str] = Counter()
        for job in host_jobs:
            summary = json.loads(job["summary"]) if job["summary"] else {}
            snap_id = summary.get("snapshot_id")
            if job["kind"] != "backup" or not snap_id:
                continue
            claims[snap_id] += 1
            if job["status"] == "succeeded" and snap_id not in repo_ids:
                problems["succeeded_snapshot_missing_from_repo"].append(f"{job['id']}: {snap_id}")
        problems["snapshot_claimed_twice"] += [s for s, n in claims.items() if n > 1]
        # A snapshot no job claims: restic finished after its agent was
        # killed (the job is reported interrupted), or was killed itself
        # right after saving it. Either way a failed backup of this host
        # must have been running when restic started it.
        cut_short = [
            j
            for j in host_jobs
            if j["kind"] == "backup" and j["status"] == "failed" and j["started_at"]
        ]
        orphans = sorted((s for s in in_repo if s["id"] not in claims), key=snapshot_time)
        explained = 0
        for snap in orphans:
            t = snapshot_time(snap)
            match = next(
                (
                    j
                    for j in cut_short
                    if j["started_at"] - 2 <= t <= (j["finished_at"] or math.inf) + 2
                ),
                None,
            )
            if match is None:
                problems["unexplained_orphan_snapshot"].append(f"{host.name}: {snap['id']}")
            else:
                cut_short.remove(match)
                explained += 1
        per_host[host.name] = {
            "jobs": len(host_jobs),
            "backups_run_by_the_agent (pre-hook ledger)": len(ran),
            "snapshots_in_repo": len(in_repo),
            "snapshots_listed": len(listed),
            "snapshots_no_job_claims (restic outlived a killed agent or was killed after saving)": (
                explained
            ),
            "lock_files_after_settling": len(locks_before[host.name]),
            "repo_status_after_settling": repo_status[host.name],
        }

    # A job that needs the exclusive lock is not stopped by what the killed
    # restic processes left behind (the agent removes stale locks first).
    checked = {}
    for host in hosts:
        job_id = api.post(f"/hosts/{host.host_id}/jobs", {"kind": "check"})["job_id"]
        check = wait_job(api, job_id, 300)
        checked[host.name] = check["status"]
        removed = re.search(
            r"removed (\d+) stale lock", api.call("GET", f"/jobs/{job_id}/log.txt", raw=True)
        )
        per_host[host.name]["stale_locks_removed_by_check"] = int(removed[1]) if removed else 0
        per_host[host.name]["lock_files_after_check"] = len(lock_files(host.repo))
        per_host[host.name]["repo_status_after_check"] = api.get(f"/hosts/{host.host_id}")[
            "repo_status"
        ]

    # An agent killed while restic ran had finished the pre-hook: all its
    # lines must have been written to the outbox before restic started.
    for fault in faults:
        if fault.kind != "agent_kill" or not fault.mid_backup:
            continue
        host = next(h for h in hosts if h.name == fault.target)
        cut = [
            j
            for j in jobs
            if j["host_id"] == host.host_id
            and INTERRUPTED in (j["error"] or "")
            and j["started_at"] <= fault.at_wall <= j["finished_at"]
        ]
        if len(cut) != 1:
            problems["hook_output_lost"].append(f"{fault}: {len(cut)} interrupted job(s)")
        for job in cut:
            lines = log_lines(api, job["id"])
            got = sum(1 for line in lines if HOOK_LINE.fullmatch(line["text"]))
            if got != HOOK_LINES:
                problems["hook_output_lost"].append(f"{job['id']}: {got} of {HOOK_LINES}")

    by_status = Counter(f"{j['kind']}:{j['status']}" for j in jobs)
    by_actor = Counter(f"{j['kind']}:{j['actor']}" for j in jobs)
    interrupted = sum(1 for j in jobs if INTERRUPTED in (j["error"] or ""))
    lost = sum(
        len(problems[k])
        for k in (
            "not_terminal",
            "ran_but_unknown",
            "hook_output_lost",
            "incomplete_log",
            "snapshot_missing_from_control_plane",
            "succeeded_snapshot_missing_from_repo",
            "unexplained_orphan_snapshot",
        )
    )
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": SEED,
        "full": FULL,
        "agents": AGENTS,
        "restic": "0.18",
        "faults_planned": FAULTS,
        "link_cut_range_s": list(LINK_CUT_S),
        "faults_by_kind": dict(Counter(f.kind for f in faults)),
        "faults_mid_backup_by_kind": dict(Counter(f.kind for f in faults if f.mid_backup)),
        "link_cut_seconds_total": round(sum(f.duration_s for f in faults if f.kind == "link_cut")),
        "faults": [f.__dict__ for f in faults],
        "trigger": dict(trigger.counts),
        "jobs_total": len(jobs),
        "jobs_by_kind_status": dict(sorted(by_status.items())),
        "jobs_by_kind_actor": dict(sorted(by_actor.items())),
        "jobs_interrupted_by_agent_kill": interrupted,
        f"hook_lines_received_of_{HOOK_LINES}_in_jobs_cut_short": sorted(cut_logs),
        "hosts": per_host,
        "check_jobs": checked,
        "problems": problems,
        "lost_results": lost,
        "duplicates": len(problems["ran_twice"]) + len(problems["snapshot_claimed_twice"]),
        "seconds_faults": round(faults_done_s),
        "seconds_to_settle_after_faults": round(settled_s - faults_done_s),
        "seconds_total": round(time.monotonic() - started),
    }
    print(json.dumps(results, indent=2, default=str))
    if RESULTS_DIR:
        out = Path(RESULTS_DIR) / "test_faults.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")

    assert {k: v for k, v in problems.items() if v} == {}
    assert len(faults) == FAULTS
    # Faults must really land while backups run, or the soak proves little.
    assert sum(f.mid_backup for f in faults) >= math.ceil(0.75 * FAULTS), faults
    assert all(s == "succeeded" for s in checked.values()), checked
    assert all(per_host[h.name]["lock_files_after_check"] == 0 for h in hosts), per_host
    assert all(per_host[h.name]["snapshots_in_repo"] > 0 for h in hosts), per_host


def _try(fn: Any) -> Any:
    try:
        return fn()
    except (OSError, ApiError):
        return None
