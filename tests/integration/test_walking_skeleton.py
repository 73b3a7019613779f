"""End to end with real processes: control plane, agent, restic, TLS."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import Api, ApiError, files_containing, make_tree, wait_for

pytestmark = pytest.mark.integration


def wait_job(api, job_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (
            (j := api.get(f"/jobs/{job_id}"))["status"] in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout,
        f"job {job_id} to finish",
    )


def wait_ready(api, host_id: int, timeout: float = 90) -> dict:
    return wait_for(
        lambda: (
            (h := api.get(f"/hosts/{host_id}"))["repo_status"] != "unknown"
            and h["status"] == "online"
            and h
        ),
        timeout,
        "the repository probe",
    )


def test_enrol_backup_snapshot(
    fleet, tmp_path: Path, password: str, source_tree: Path, restic_watcher
):
    host_id, token = fleet.add_host("web1", tmp_path / "repo", password, [source_tree])
    agent = fleet.enrol_agent("web1", token)
    assert oct(agent.config.stat().st_mode & 0o777) == "0o600"

    host = wait_ready(fleet.api, host_id)
    assert host["repo_status"] == "ready", host
    assert host["agent_version"] and host["restic_version"]
    assert host["os"] == "linux"

    groups = fleet.api.get(f"/hosts/{host_id}/source-groups")
    assert [g["name"] for g in groups] == ["default"]
    assert groups[0]["includes"] == [str(source_tree)]

    job_id = fleet.api.post(
        f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": groups[0]["id"]}
    )["job_id"]
    job = wait_job(fleet.api, job_id)
    assert job["status"] == "succeeded", job
    assert job["actor"] == "operator"
    assert job["summary"]["files_new"] == 120
    assert job["summary"]["snapshot_id"]

    log = fleet.api.call("GET", f"/jobs/{job_id}/log.ndjson", raw=True).splitlines()
    lines = [json.loads(line) for line in log]
    assert lines, "the job log is empty"
    # Every line the agent wrote is stored, in the order it wrote them.
    assert len(lines) == job["log_lines"] == job["log_lines_reported"]
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    assert "saved" in lines[-1]["text"] or any("saved" in line["text"] for line in lines[-3:])
    text = fleet.api.call("GET", f"/jobs/{job_id}/log.txt", raw=True)
    assert len(text.splitlines()) == len(lines)

    snaps = wait_for(lambda: fleet.api.get(f"/hosts/{host_id}/snapshots"), 30, "snapshots")
    assert len(snaps) == 1
    assert "default" in snaps[0]["tags"]
    assert snaps[0]["paths"] == [str(source_tree)]
    assert snaps[0]["id"].startswith(job["summary"]["snapshot_id"][:8])

    host = fleet.api.get(f"/hosts/{host_id}")
    assert host["snapshot_count"] == 1
    assert host["repo_size_bytes"] and host["repo_size_bytes"] > 0
    assert host["last_backup_status"] == "succeeded"

    actions = {e["action"] for e in fleet.api.get("/audit?limit=1000")["entries"]}
    for expected in (
        "api_token.created",
        "host.created",
        "enrolment_token.created",
        "host.enrolled",
        "source_group.created",
        "host.online",
        "job.queued",
        "job.started",
        "job.finished",
        "host.repo_status",
        "snapshots.changed",
        "repo.stats_changed",
    ):
        assert expected in actions, f"no audit entry {expected}: {sorted(actions)}"

    # With the agent gone, the host is offline and a job is refused with a reason.
    agent.stop()
    wait_for(lambda: fleet.api.get(f"/hosts/{host_id}")["status"] == "offline", 15, "offline")
    with pytest.raises(ApiError) as err:
        fleet.api.post(
            f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": groups[0]["id"]}
        )
    assert err.value.status == 409 and "offline" in err.value.body["error"]["message"]

    # No secret on disk, in any log, or on a restic command line.
    assert fleet.server.stop() == 0  # SIGTERM is a clean exit
    needle = password.encode()
    leaks = files_containing(
        [fleet.server.data_dir, agent.workdir, fleet.server.log_path, agent.log_path], needle
    )
    assert leaks == []
    assert restic_watcher.seen, "no restic process was observed"
    assert not any(password in " ".join(argv) for argv in restic_watcher.seen)
    # The repository itself was really written by restic.
    out = subprocess.run(
        [fleet.restic, "-r", str(tmp_path / "repo"), "snapshots", "--json", "--no-cache"],
        env={"RESTIC_PASSWORD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    assert json.loads(out.stdout)[0]["tags"] == ["default"]


def test_wrong_password_shows_init_failed(fleet, tmp_path: Path, password: str, source_tree: Path):
    repo = tmp_path / "repo"
    subprocess.run(
        [fleet.restic, "init", "--repo", str(repo)],
        env={"RESTIC_PASSWORD": "the-real-one", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    host_id, token = fleet.add_host("web2", repo, password, [source_tree])
    fleet.enrol_agent("web2", token)
    host = wait_ready(fleet.api, host_id)
    assert host["repo_status"] == "init_failed"
    assert "wrong password" in host["repo_status_error"]


def test_api_errors(fleet):
    with pytest.raises(ApiError) as err:
        fleet.api.get("/hosts/9999")
    assert err.value.status == 404 and err.value.body["error"]["code"] == "not_found"
    with pytest.raises(ApiError) as err:
        fleet.api.post("/enrolment-tokens", {"hostname": "x", "repository": {"url": "/r"}})
    assert err.value.status == 400 and "repository.password" in err.value.body["error"]["message"]
    with pytest.raises(ApiError) as err:
        fleet.api.post(
            "/enrolment-tokens",
            {
                "hostname": "x",
                "repository": {"url": "/r", "password": "pass"},
                "initial_paths": ["rel"],
            },
        )
    assert err.value.status == 400 and "initial_paths" in err.value.body["error"]["message"]
    with pytest.raises(ApiError) as err:
        fleet.api.get("/jobs/nope")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        Api(fleet.api.base, "rma_wrong").get("/hosts")
    assert err.value.status == 401
    with pytest.raises(ApiError) as err:
        Api(fleet.api.base, None).get("/hosts")
    assert err.value.status == 401
    created = fleet.api.post(
        "/enrolment-tokens",
        {
            "hostname": "off1",
            "repository": {"url": "/r", "password": "pass"},
            "initial_paths": ["/etc"],
        },
    )
    with pytest.raises(ApiError) as err:
        fleet.api.post(
            f"/hosts/{created['host_id']}/jobs", {"kind": "backup", "source_group_id": 1}
        )
    # Not enrolled yet, so it has no source group at all.
    assert err.value.status == 404 and "source group" in err.value.body["error"]["message"]
    with pytest.raises(ApiError) as err:
        fleet.api.post(f"/hosts/{created['host_id']}/jobs", {"kind": "format-disk"})
    assert err.value.status == 400 and "kind" in err.value.body["error"]["message"]


def _slow_backup(fleet, tmp_path: Path, password: str, hostname: str):
    # 24 MiB at 3 MiB/s: a backup that is certainly still running when we strike.
    src = make_tree(tmp_path / f"src-{hostname}", files=24, size=1024 * 1024, seed=7)
    host_id, token = fleet.add_host(hostname, tmp_path / f"repo-{hostname}", password, [src])
    agent = fleet.enrol_agent(hostname, token)
    assert wait_ready(fleet.api, host_id)["repo_status"] == "ready"
    fleet.api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib_s": 3072})
    group = fleet.api.get(f"/hosts/{host_id}/source-groups")[0]
    job_id = fleet.api.post(
        f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
    )["job_id"]
    wait_for(
        lambda: (
            (j := fleet.api.get(f"/jobs/{job_id}"))["status"] == "running" and j.get("progress")
        ),
        60,
        "backup progress",
    )
    return host_id, job_id, agent


def test_control_plane_killed_mid_backup_loses_nothing(fleet, tmp_path: Path, password: str):
    host_id, job_id, agent = _slow_backup(fleet, tmp_path, password, "web3")
    lines_before = fleet.api.get(f"/jobs/{job_id}")["log_lines"]
    fleet.server.kill()
    time.sleep(3)
    fleet.server.start()
    job = wait_job(fleet.api, job_id)
    assert job["status"] == "succeeded", job
    # Lines written before, during and after the outage: all of them, none twice.
    assert job["log_lines"] >= lines_before
    assert job["log_lines"] == job["log_lines_reported"]
    text = fleet.api.call("GET", f"/jobs/{job_id}/log.txt", raw=True)
    assert len(text.splitlines()) == job["log_lines"]
    assert "saved" in text  # the summary line written after the outage
    snaps = wait_for(lambda: fleet.api.get(f"/hosts/{host_id}/snapshots"), 30, "snapshots")
    assert len(snaps) == 1
    # Every event the agent wrote has been acknowledged, i.e. committed here.
    outbox = sqlite3.connect(agent.state_dir / "outbox.sqlite3")
    wait_for(
        lambda: outbox.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0,
        30,
        "an empty outbox",
    )


def test_agent_killed_mid_backup_reports_failure(fleet, tmp_path: Path, password: str):
    _, job_id, agent = _slow_backup(fleet, tmp_path, password, "web4")
    agent.kill()
    agent.start()
    job = wait_job(fleet.api, job_id, timeout=60)
    assert job["status"] == "failed"
    assert "restarted" in job["error"]


def test_cancel_a_running_backup(fleet, tmp_path: Path, password: str):
    host_id, job_id, _ = _slow_backup(fleet, tmp_path, password, "web5")
    assert fleet.api.post(f"/jobs/{job_id}/cancel") == {"status": "cancel requested"}
    job = wait_job(fleet.api, job_id, timeout=60)
    assert job["status"] == "cancelled"
    with pytest.raises(ApiError) as err:
        fleet.api.post(f"/jobs/{job_id}/cancel")
    assert err.value.status == 409
    assert fleet.api.get(f"/hosts/{host_id}/snapshots") == []
    # restic is gone and left no lock behind: the next backup just works.
    group = fleet.api.get(f"/hosts/{host_id}/source-groups")[0]
    fleet.api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib_s": None})
    again = fleet.api.post(
        f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
    )
    assert wait_job(fleet.api, again["job_id"])["status"] == "succeeded"
