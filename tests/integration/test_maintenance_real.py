"""Repository maintenance with real restic against a real append-only REST server.

Two `rclone serve restic` processes share one directory: the everyday one is
append-only (backups work, deleting is refused), the admin one is not. The
control plane pushes the admin credential only with forget/prune jobs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import files_containing, free_port, make_tree, wait_for
from tests.integration.test_walking_skeleton import wait_job, wait_ready

pytestmark = pytest.mark.integration

EVERYDAY_USER = "backup"
ADMIN_USER = "admin"


class RestServer:
    def __init__(self, root: Path, htpasswd: Path, log: Path, *, append_only: bool) -> None:
        self.port = free_port()
        args = [
            "rclone",
            "serve",
            "restic",
            str(root),
            "--addr",
            f"127.0.0.1:{self.port}",
            "--htpasswd",
            str(htpasswd),
        ]
        if append_only:
            args.append("--append-only")
        self._log = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 20, f"rclone on port {self.port}")

    def _listening(self) -> bool:
        import socket

        if self.proc.poll() is not None:
            raise AssertionError(f"rclone exited with {self.proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"rest:http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def rest_pair(tmp_path: Path) -> Iterator[tuple[RestServer, RestServer, dict[str, str]]]:
    if shutil.which("rclone") is None or shutil.which("htpasswd") is None:
        pytest.fail("rclone and htpasswd are part of the test environment: run `make bootstrap`")
    secrets = {EVERYDAY_USER: "everyday-Backend-pw1", ADMIN_USER: "admin-Backend-pw2"}
    htpasswd = tmp_path / "htpasswd"
    for i, (user, pw) in enumerate(secrets.items()):
        flags = "-Bbc" if i == 0 else "-Bb"
        subprocess.run(
            ["htpasswd", flags, str(htpasswd), user, pw], check=True, capture_output=True
        )
    root = tmp_path / "rest-root"
    root.mkdir()
    everyday = RestServer(root, htpasswd, tmp_path / "rclone-ao.log", append_only=True)
    admin = RestServer(root, htpasswd, tmp_path / "rclone-admin.log", append_only=False)
    try:
        yield everyday, admin, secrets
    finally:
        everyday.stop()
        admin.stop()


def _snapshot_ids(fleet, host_id: int) -> list[str]:
    return sorted(s["id"] for s in fleet.api.get(f"/hosts/{host_id}/snapshots"))


def test_append_only_backups_with_admin_forget_and_prune(
    fleet, tmp_path: Path, password: str, rest_pair, restic_watcher
):
    everyday, admin, backend = rest_pair
    src = make_tree(tmp_path / "src", files=30, size=4096, seed=3)
    created = fleet.api.post(
        "/enrolment-tokens",
        {
            "hostname": "ao1",
            "repository": {
                "url": everyday.url,
                "password": password,
                "username": EVERYDAY_USER,
                "backend_password": backend[EVERYDAY_USER],
            },
            "admin_repository": {
                "url": admin.url,
                "password": password,
                "username": ADMIN_USER,
                "backend_password": backend[ADMIN_USER],
            },
            "initial_paths": [str(src)],
        },
    )
    host_id = created["host_id"]
    agent = fleet.enrol_agent("ao1", created["token"])
    assert wait_ready(fleet.api, host_id)["repo_status"] == "ready"

    group = fleet.api.get(f"/hosts/{host_id}/source-groups")[0]
    fleet.api.call(
        "PUT",
        f"/hosts/{host_id}/source-groups/{group['id']}",
        {
            "name": group["name"],
            "includes": group["includes"],
            "excludes": [],
            "retention": {"keep_last": 2},
            "retry_max": 0,
            "retry_backoff_seconds": 60,
            "pre_hook": None,
            "post_hook": None,
        },
    )
    # Four backups through the append-only server, each with a change.
    for i in range(4):
        (src / f"new-{i}.txt").write_text(f"change {i}\n")
        job_id = fleet.api.post(
            f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
        )["job_id"]
        job = wait_job(fleet.api, job_id)
        assert job["status"] == "succeeded", job
    before = wait_for(
        lambda: len(ids := _snapshot_ids(fleet, host_id)) == 4 and ids, 30, "4 snapshots"
    )

    # forget runs with the admin credential (a non append-only server) and
    # keeps exactly what the retention says: the last two.
    forget = wait_job(
        fleet.api, fleet.api.post(f"/hosts/{host_id}/jobs", {"kind": "forget"})["job_id"]
    )
    assert forget["status"] == "succeeded", forget
    assert forget["actor"] == "operator"
    after = wait_for(
        lambda: len(ids := _snapshot_ids(fleet, host_id)) == 2 and ids, 30, "2 snapshots"
    )
    assert set(after) <= set(before)
    newest = sorted(
        fleet.api.get(f"/hosts/{host_id}/snapshots"), key=lambda s: s["time"], reverse=True
    )
    assert {s["id"] for s in newest} == set(after)

    prune = wait_job(
        fleet.api, fleet.api.post(f"/hosts/{host_id}/jobs", {"kind": "prune"})["job_id"]
    )
    assert prune["status"] == "succeeded", prune
    maint = fleet.api.get(f"/hosts/{host_id}/maintenance")
    assert maint["last_forget_at"] and maint["last_prune_at"]

    # The everyday credential really is append-only: restic run directly with
    # it cannot forget. (Proves the success above came from the admin slot.)
    direct = subprocess.run(
        [fleet.restic, "forget", "--keep-last", "1", "--no-cache"],
        env={
            "RESTIC_REPOSITORY": everyday.url.replace(
                "http://", f"http://{EVERYDAY_USER}:{backend[EVERYDAY_USER]}@"
            ),
            "RESTIC_PASSWORD": password,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
    )
    # restic 0.18 exits 0 even when the server refuses the delete: read stderr.
    assert "403" in direct.stderr or "forbidden" in direct.stderr.lower(), direct.stderr
    listed = subprocess.run(
        [fleet.restic, "snapshots", "--json", "--no-cache"],
        env={
            "RESTIC_REPOSITORY": admin.url.replace(
                "http://", f"http://{ADMIN_USER}:{backend[ADMIN_USER]}@"
            ),
            "RESTIC_PASSWORD": password,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.count('"short_id"') == 2
    stats = fleet.api.get(f"/hosts/{host_id}/repo-stats")
    assert stats["total_size"] and stats["total_size"] > 0
    assert stats["history"], stats

    # The admin backend password never reached the agent's disk or logs, nor argv.
    agent.stop()
    needle = backend[ADMIN_USER].encode()
    assert files_containing([agent.workdir, agent.log_path], needle) == []
    assert not any(backend[ADMIN_USER] in " ".join(a) for a in restic_watcher.seen)
