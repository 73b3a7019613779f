"""A restic killed in the middle of a backup leaves its lock in the
repository. restic's own `unlock` tells such a stale lock (its process is dead)
from a live one; the agent runs it before every job that needs the exclusive
lock (forget, prune, check), so maintenance is not blocked by what a killed
process left behind. Real control plane, real agent, real restic.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import AgentProcess, Api, ControlPlaneProcess, make_tree, wait_for
from tests.helpers.restic_bins import RESTIC_BINARIES
from tests.integration.test_walking_skeleton import wait_job, wait_ready
from tests.soak.faults import kill_pid, lock_files, restic_processes

pytestmark = pytest.mark.integration


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[ControlPlaneProcess, Api]]:
    server = ControlPlaneProcess(tmp_path / "data", tmp_path / "server.log")
    server.data_dir.mkdir()
    api = Api(server.api_base, server.create_api_token())
    server.start()
    try:
        yield server, api
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["0.14", "0.18"])
def test_a_lock_left_by_a_killed_backup_does_not_block_maintenance(
    plane: tuple[ControlPlaneProcess, Api], tmp_path: Path, version: str
) -> None:
    server, api = plane
    restic = RESTIC_BINARIES.get(version)
    assert restic, f"restic {version} is not installed: run `make bootstrap`"
    src = make_tree(tmp_path / "src", files=16, size=1024 * 1024)
    repo = tmp_path / "repo"
    created = api.post(
        "/enrolment-tokens",
        {
            "hostname": "locks",
            "repository": {"url": str(repo), "password": "pw-" + secrets.token_hex(8)},
            "initial_paths": [str(src)],
        },
    )
    host_id = created["host_id"]
    agent = AgentProcess(tmp_path / "agent", restic, "locks")
    info = api.get("/server")
    assert agent.enrol(server.agent_url, created["token"], info["cert_sha256"]).returncode == 0
    agent.start()
    try:
        assert wait_ready(api, host_id)["repo_status"] == "ready"
        # 16 MiB at 1 MiB/s: long enough to be killed in the middle.
        api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib_s": 1024})
        group = api.get(f"/hosts/{host_id}/source-groups")[0]
        backup_id = api.post(
            f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
        )["job_id"]
        proc = wait_for(
            lambda: next((p for p in restic_processes(repo) if p.is_backup), None),
            60,
            "restic to start backing up",
            0.05,
        )
        wait_for(lambda: lock_files(repo), 20, "restic to take its lock", 0.05)
        time.sleep(1.5)  # past writing the lock file, well before the end
        assert kill_pid(proc.pid)
        backup = wait_job(api, backup_id, 60)
        assert backup["status"] == "failed", backup
        assert lock_files(repo), "the killed restic left no lock: nothing to test"

        started = time.monotonic()
        check_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "check"})["job_id"]
        check = wait_job(api, check_id, 150)
        assert check["status"] == "succeeded", check
        # Without waiting out restic's --retry-lock on the dead process's lock.
        assert time.monotonic() - started < 45
        assert lock_files(repo) == []
        log = api.call("GET", f"/jobs/{check_id}/log.txt", raw=True)
        assert "stale lock" in log
        assert api.get(f"/hosts/{host_id}")["repo_status"] == "ready"
    finally:
        agent.stop()
