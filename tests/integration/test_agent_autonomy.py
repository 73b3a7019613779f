"""The agent on its own: schedules fire with the app up or down, missed windows
are caught up once, hooks wrap real backups, and a stale lock is found and
cleared. Real control plane, real agent processes, real restic.

Schedules run on the wall clock (cron has minute resolution), so each test
waits for at most one minute boundary. The tests whose subject is the agent's
scheduler run against one restic version: the scheduling does not depend on it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet import AgentProcess, Api, ApiError, make_tree, put_group, wait_for
from tests.integration.test_walking_skeleton import wait_job, wait_ready

pytestmark = pytest.mark.integration

one_restic = pytest.mark.parametrize("restic_bin", ["0.18"], indirect=True)


def setup_host(fleet: Any, tmp_path: Path, password: str, name: str) -> tuple[int, AgentProcess]:
    src = make_tree(tmp_path / f"src-{name}", files=30, size=4096, seed=3)
    host_id, token = fleet.add_host(name, tmp_path / f"repo-{name}", password, [src])
    agent = fleet.enrol_agent(name, token)
    assert wait_ready(fleet.api, host_id)["repo_status"] == "ready"
    return host_id, agent


def default_group(api: Api, host_id: int) -> dict[str, Any]:
    groups = api.get(f"/hosts/{host_id}/source-groups")
    assert len(groups) == 1
    return groups[0]  # type: ignore[no-any-return]


def add_schedule(api: Api, host_id: int, cron: str, group_id: int) -> dict[str, Any]:
    schedule = api.post(
        f"/hosts/{host_id}/schedules",
        {"cron": cron, "enabled": True, "source_group_ids": [group_id]},
    )
    wait_for(
        lambda: (
            (h := api.get(f"/hosts/{host_id}"))["schedule_acked_version"] == h["schedule_version"]
        ),
        20,
        "the agent to acknowledge the schedule set",
    )
    return schedule  # type: ignore[no-any-return]


def scheduled_jobs(api: Api, host_id: int) -> list[dict[str, Any]]:
    return [j for j in api.get(f"/hosts/{host_id}/jobs") if j["actor"] == "schedule"]


def log_text(api: Api, job_id: str) -> str:
    return api.call("GET", f"/jobs/{job_id}/log.txt", raw=True)  # type: ignore[no-any-return]


def outbox_events(agent: AgentProcess) -> list[tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(agent.state_dir / "outbox.sqlite3")
    try:
        rows = conn.execute("SELECT type, payload FROM outbox ORDER BY ord").fetchall()
    finally:
        conn.close()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def next_minute_after(ts: float) -> float:
    return (int(ts) // 60 + 1) * 60.0


# -- schedules -----------------------------------------------------------------


@one_restic
def test_an_every_minute_schedule_backs_up_by_itself(fleet, tmp_path: Path, password: str):
    host_id, _ = setup_host(fleet, tmp_path, password, "sched1")
    group = default_group(fleet.api, host_id)
    schedule = add_schedule(fleet.api, host_id, "* * * * *", group["id"])
    assert schedule["next_run_at"] is not None

    job = wait_for(
        lambda: next(
            (j for j in scheduled_jobs(fleet.api, host_id) if j["status"] == "succeeded"), None
        ),
        75,
        "a scheduled backup",
    )
    assert job["kind"] == "backup"
    assert job["schedule_id"] == schedule["id"]
    assert job["source_group_id"] == group["id"]
    assert job["summary"]["snapshot_id"]
    assert "scheduled backup for the" in log_text(fleet.api, job["id"])
    snaps = wait_for(lambda: fleet.api.get(f"/hosts/{host_id}/snapshots"), 20, "snapshots")
    assert [s["tags"] for s in snaps] == [[group["name"]]]
    assert snaps[0]["id"].startswith(job["summary"]["snapshot_id"][:8])
    assert fleet.api.get(f"/hosts/{host_id}/schedules/{schedule['id']}")["last_run_at"]


@one_restic
def test_backups_go_on_while_the_app_is_closed(fleet, tmp_path: Path, password: str):
    host_id, agent = setup_host(fleet, tmp_path, password, "sched2")
    group = default_group(fleet.api, host_id)
    add_schedule(fleet.api, host_id, "* * * * *", group["id"])
    assert fleet.server.stop() == 0
    closed_at = time.time()

    def fired_while_closed() -> str | None:
        events = outbox_events(agent)
        started = [
            p["job_id"]
            for kind, p in events
            if kind == "job.started" and p["actor"] == "schedule" and p["started_at"] > closed_at
        ]
        done = {p["job_id"] for kind, p in events if kind == "job.finished"}
        return next((job_id for job_id in started if job_id in done), None)

    job_id = wait_for(fired_while_closed, 90, "a backup fired while the app was closed", 0.5)
    fleet.server.start()

    def reported() -> bool:
        # The agent reconnects with a jittered backoff of up to a minute.
        try:
            return fleet.api.get(f"/jobs/{job_id}")["status"] in ("succeeded", "failed")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    wait_for(reported, 90, "the agent to report the job once the app is back", 0.5)
    job = wait_job(fleet.api, job_id, timeout=60)
    assert job["status"] == "succeeded", job
    assert job["actor"] == "schedule" and job["kind"] == "backup"
    assert job["started_at"] > closed_at
    # Every line the agent wrote while nobody listened, in order, once.
    lines = [
        json.loads(line)
        for line in fleet.api.call("GET", f"/jobs/{job_id}/log.ndjson", raw=True).splitlines()
    ]
    assert len(lines) == job["log_lines"] == job["log_lines_reported"] > 0
    assert [line["seq"] for line in lines] == sorted({line["seq"] for line in lines})
    assert any("saved" in line["text"] for line in lines)
    snaps = wait_for(
        lambda: [
            s
            for s in fleet.api.get(f"/hosts/{host_id}/snapshots")
            if s["id"].startswith(job["summary"]["snapshot_id"][:8])
        ],
        30,
        "the snapshot made while the app was closed",
    )
    assert snaps[0]["tags"] == [group["name"]]
    wait_for(lambda: not outbox_events(agent), 30, "the agent's outbox to drain")


@one_restic
def test_a_window_missed_while_the_agent_was_stopped_runs_once_on_start(
    fleet, tmp_path: Path, password: str
):
    host_id, agent = setup_host(fleet, tmp_path, password, "sched3")
    group = default_group(fleet.api, host_id)
    # A daily window a little ahead: far enough that the agent hears of it
    # before it passes, and it does not come again during the test.
    window = next_minute_after(time.time() + 15)
    at = datetime.fromtimestamp(window)
    schedule = add_schedule(fleet.api, host_id, f"{at.minute} {at.hour} * * *", group["id"])
    agent.stop()
    assert time.time() < window, "the agent was not stopped before the window"
    wait_for(lambda: time.time() > window + 2, 80, "the window to pass", 0.5)
    assert scheduled_jobs(fleet.api, host_id) == []

    restarted = time.time()
    agent.start()
    job = wait_for(
        lambda: next(
            (j for j in scheduled_jobs(fleet.api, host_id) if j["status"] == "succeeded"), None
        ),
        60,
        "the catch-up backup",
    )
    assert job["schedule_id"] == schedule["id"]
    assert restarted < job["started_at"] < restarted + 30
    assert "catch-up of the scheduled backup" in log_text(fleet.api, job["id"])
    # Once: a second restart does not run the same window again.
    agent.stop()
    agent.start()
    wait_ready(fleet.api, host_id)
    time.sleep(3)
    assert len(scheduled_jobs(fleet.api, host_id)) == 1


# -- hooks -----------------------------------------------------------------------------


def run_backup(api: Api, host_id: int, group_id: int) -> dict[str, Any]:
    job_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group_id})[
        "job_id"
    ]
    return wait_job(api, job_id, timeout=90)


def hook_lines(api: Api, job_id: str) -> list[str]:
    lines = [
        json.loads(line)
        for line in api.call("GET", f"/jobs/{job_id}/log.ndjson", raw=True).splitlines()
    ]
    return [line["text"] for line in lines if line["stream"] == "hook"]


@one_restic
def test_hooks_wrap_real_backups(fleet, tmp_path: Path, password: str):
    host_id, _ = setup_host(fleet, tmp_path, password, "hooks1")
    group = default_group(fleet.api, host_id)
    out = tmp_path / "hook-out"
    out.mkdir()
    post = f'env > {out}/post-env; echo "post saw $RM_JOB_STATUS"'

    group = put_group(
        fleet.api, host_id, group, pre_hook="echo stopping the database; exit 3", post_hook=post
    )
    job = run_backup(fleet.api, host_id, group["id"])
    assert job["status"] == "failed"
    assert job["error"] == "the pre-hook exited with code 3; the backup did not run"
    assert hook_lines(fleet.api, job["id"]) == [
        "hook(pre): stopping the database",
        "hook(post): post saw failed",
    ]
    env = (out / "post-env").read_text()
    assert f"RM_JOB_ID={job['id']}" in env and f"RM_SOURCE_GROUP={group['name']}" in env
    assert password not in env and "RESTIC_" not in env
    assert fleet.api.get(f"/hosts/{host_id}/snapshots") == []

    group = put_group(fleet.api, host_id, group, pre_hook=f"date > {out}/dump; echo dumped")
    job = run_backup(fleet.api, host_id, group["id"])
    assert job["status"] == "succeeded", job
    assert hook_lines(fleet.api, job["id"]) == [
        "hook(pre): dumped",
        "hook(post): post saw succeeded",
    ]
    assert (out / "dump").exists()

    # Host defaults take over where the group has no hook of its own.
    group = put_group(fleet.api, host_id, group, pre_hook=None, post_hook=None)
    fleet.api.call(
        "PUT",
        f"/hosts/{host_id}/hooks",
        {
            "pre_hook": "echo host default pre",
            "post_hook": 'echo "host default post $RM_JOB_STATUS"',
        },
    )
    time.sleep(1)  # config.update reaches the agent over the open connection
    job = run_backup(fleet.api, host_id, group["id"])
    assert job["status"] == "succeeded", job
    assert hook_lines(fleet.api, job["id"]) == [
        "hook(pre): host default pre",
        "hook(post): host default post succeeded",
    ]


# -- stale locks ---------------------------------------------------------------------------


def leave_stale_lock(restic: str, repo: Path, password: str, tmp_path: Path) -> None:
    """SIGKILL a real restic while it holds an exclusive lock on ``repo``.

    `restic key passwd` takes the exclusive lock and then blocks reading the
    new password from a FIFO nobody writes to.
    """
    fifo = tmp_path / "new-password.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [restic, "key", "passwd", "--no-cache", "--new-password-file", str(fifo)],
        env={"PATH": "/usr/bin:/bin", "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: any(f.stat().st_size > 0 for f in (repo / "locks").iterdir()),
        20,
        "restic to take its lock",
        0.02,
    )
    # Killed while still writing it, the lock file is empty or cut short and
    # restic ignores it (seen on a loaded machine); by now restic has moved on
    # to blocking on the FIFO with the lock complete.
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: a zombie would still count as a live lock holder


def test_a_killed_restic_leaves_a_lock_that_is_reported_and_unlocked(
    fleet, tmp_path: Path, password: str
):
    host_id, _ = setup_host(fleet, tmp_path, password, "lock1")
    group = default_group(fleet.api, host_id)
    repo = tmp_path / "repo-lock1"
    leave_stale_lock(fleet.restic, repo, password, tmp_path)

    job = run_backup(fleet.api, host_id, group["id"])
    assert job["status"] == "failed"
    assert "unlock it from the Repo tab" in job["error"]
    host = fleet.api.get(f"/hosts/{host_id}")
    assert host["repo_status"] == "locked", host

    unlock_id = fleet.api.post(f"/hosts/{host_id}/jobs", {"kind": "unlock"})["job_id"]
    unlock = wait_job(fleet.api, unlock_id, timeout=60)
    assert unlock["status"] == "succeeded", unlock
    assert unlock["actor"] == "operator"
    assert fleet.api.get(f"/hosts/{host_id}")["repo_status"] == "ready"
    assert list((repo / "locks").iterdir()) == []

    job = run_backup(fleet.api, host_id, group["id"])
    assert job["status"] == "succeeded", job
