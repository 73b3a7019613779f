"""The offline bundle installs and enrols a host that can reach nothing but the
app: no default route, no internet, and no curl, wget, openssl or python on
it (hidden in its private mount namespace, tests/helpers/sandbox_host.py).

The bundle comes from the operator API (POST /api/v1/hosts/{id}/offline-bundle)
of a real ``restic-manager serve`` with the built agent bundled, and carries
restic 0.18 as "the restic binary the operator points at". It runs with
``--no-systemd`` (install.sh's path for hosts without systemd; the systemd
path is covered by test_install_sh.py), so the test starts the agent the way
the installer says to, inside the same host.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet import child_env, make_tree, wait_for
from tests.helpers.restic_bins import RESTIC_BINARIES
from tests.helpers.sandbox_host import sandbox_host
from tests.integration.conftest import Remote

pytestmark = pytest.mark.integration

CONFIG = "/etc/restic-manager-agent/config.toml"
BIN = "/usr/local/lib/restic-manager-agent/restic-manager-agent"
BUNDLED_RESTIC = "/usr/local/lib/restic-manager-agent/restic"
HIDDEN = ("curl", "wget", "openssl", "python3", "python3.11")


def _download_bundle(remote: Remote, host_id: int, body: dict[str, Any]) -> tuple[bytes, Any]:
    request = urllib.request.Request(
        f"{remote.api.base}/hosts/{host_id}/offline-bundle",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {remote.api.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read(), resp.headers


def test_the_offline_bundle_installs_and_enrols_a_host_with_no_other_route(
    built_agent: Path, remote: Remote, tmp_path: Path
):
    restic = RESTIC_BINARIES.get("0.18")
    assert restic, "restic 0.18 is not installed: run `make bootstrap`"
    api = remote.api
    source = make_tree(tmp_path / "src", files=15, size=10_000)
    created = api.post(
        "/enrolment-tokens",
        {
            "hostname": "airgap1",
            "repository": {"url": str(tmp_path / "repo"), "password": "pw-" + secrets.token_hex(8)},
            "initial_paths": [str(source)],
        },
    )
    host_id = created["host_id"]

    data, headers = _download_bundle(
        remote, host_id, {"os": "linux", "arch": "amd64", "restic_path": restic}
    )
    assert headers["Content-Disposition"] == (
        'attachment; filename="restic-manager-agent-airgap1-linux-amd64.sh"'
    )
    assert headers["Cache-Control"] == "no-store"
    bundle = tmp_path / "usb" / "restic-manager-agent-airgap1-linux-amd64.sh"
    bundle.parent.mkdir()
    bundle.write_bytes(data)
    bundle.chmod(0o600)
    tokens = api.get(f"/hosts/{host_id}/enrolment-tokens")
    assert [t["state"] for t in tokens] == ["active", "revoked"]  # the bundle's, the command's
    assert created["token"].encode() not in data

    with sandbox_host(tmp_path / "host", remote.host, hide=HIDDEN) as host:
        # The host really is cut off: one link route to the app's subnet, no
        # default route, and none of the usual download tools.
        routes = host.run(["ip", "-4", "route"]).stdout.strip().splitlines()
        assert len(routes) == 1 and "default" not in routes[0], routes
        assert remote.host.root_ip.rsplit(".", 1)[0] in routes[0]
        probe = host.run("for t in curl wget openssl python3; do command -v $t; done; true")
        assert probe.stdout.strip() == "", probe.stdout

        done = host.run(["sh", str(bundle), "--no-systemd"], timeout=90)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "using the agent from the offline bundle (linux/amd64)" in out
        assert "Enrolled as host 'airgap1'" in out
        assert "--no-systemd: the agent is installed and enrolled, and nothing was started" in out
        assert f"{BIN} run --config {CONFIG}" in out
        assert list(host.tmpdir.iterdir()) == []  # the unpacked bundle is gone
        assert host.path(BUNDLED_RESTIC).read_bytes() == Path(restic).read_bytes()
        assert f'restic_path = "{BUNDLED_RESTIC}"' in host.path(CONFIG).read_text()
        assert not host.path("/etc/systemd/system/restic-manager-agent.service").exists()

        # Start it as the installer said, on that host.
        log = tmp_path / "agent.log"
        with log.open("wb") as sink:
            agent = subprocess.Popen(
                host.argv([BIN, "run", "--config", CONFIG]),
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=host.env(child_env()),
            )
        try:
            view = wait_for(
                lambda: (
                    (h := api.get(f"/hosts/{host_id}"))["status"] == "online"
                    and h["repo_status"] != "unknown"
                    and h
                ),
                40,
                "the agent from the bundle to connect and probe its repository",
            )
            assert view["repo_status"] == "ready", (view, log.read_text()[-3000:])
            assert view["restic_version"].startswith("0.18"), view
            assert [t["state"] for t in api.get(f"/hosts/{host_id}/enrolment-tokens")] == [
                "used",
                "revoked",
            ]
            group = api.get(f"/hosts/{host_id}/source-groups")[0]
            job_id = api.post(
                f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
            )["job_id"]
            job = wait_for(
                lambda: (
                    (j := api.get(f"/jobs/{job_id}"))["status"] in ("succeeded", "failed") and j
                ),
                40,
                "the backup",
            )
            assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
            assert job["summary"]["files_new"] == 15
        finally:
            agent.terminate()
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()

        # The same bundle again: the token is spent, but the host is enrolled,
        # so it changes nothing and says so.
        again = host.run(["sh", str(bundle), "--no-systemd"], timeout=60)
        assert again.returncode == 0 and "already enrolled" in again.stdout


def test_an_expired_or_used_bundle_fails_clearly_and_leaves_nothing(
    built_agent: Path, remote: Remote, tmp_path: Path
):
    api = remote.api
    created = api.post(
        "/enrolment-tokens",
        {
            "hostname": "airgap2",
            "repository": {"url": str(tmp_path / "repo"), "password": "pw-" + secrets.token_hex(8)},
            "initial_paths": ["/etc"],
        },
    )
    data, _ = _download_bundle(remote, created["host_id"], {"os": "linux"})
    bundle = tmp_path / "b.sh"
    bundle.write_bytes(data)
    # A newer bundle (or Regenerate) makes this one's token unusable.
    _download_bundle(remote, created["host_id"], {"os": "linux"})
    started = time.monotonic()
    with sandbox_host(tmp_path / "host", remote.host, hide=HIDDEN) as host:
        done = host.run(["sh", str(bundle), "--no-systemd"], timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "token revoked" in done.stderr
        assert "nothing of this run was kept" in done.stderr
        # Rolled back: every file and folder the run had created is gone again.
        assert host.new_paths() == set(), host.written()
        assert list(host.tmpdir.iterdir()) == []
    assert time.monotonic() - started < 30
