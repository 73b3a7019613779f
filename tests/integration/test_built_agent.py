"""The PyInstaller-built agent (not the venv's), enrolling and backing up with
real restic against a live control plane, from a network namespace that acts
as a separate host: its only route is to the app's agent listener.

The binary comes from ``packaging/build.py agent``, which rebuilds it only when
the agent's sources, the spec or the installed packages changed (~15 s).
The ``built_agent`` and ``remote`` fixtures live in conftest.py: the installer
and offline-bundle tests use them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.version import __version__ as AGENT_VERSION
from tests.helpers.fleet import Api, child_env, make_tree, wait_for
from tests.helpers.restic_bins import RESTIC_BINARIES
from tests.integration.conftest import Remote

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "packaging" / "build.py"

MAX_SIZE_BYTES = 15_000_000  # the goal: <= 15 MB
# The goal is 0.5 s (measured ~0.4 s on an idle machine); other test processes
# share these two cores, so the test allows twice that before calling it slow.
MAX_VERSION_SECONDS = 1.0
# The goal is 40 MB; the agent measures ~48 MiB idle, frozen or run
# from the venv alike (imports alone: aiohttp + ssl ~23 MiB, cryptography ~7 MiB),
# so this is a regression guard, not the goal. See packaging/README.md.
MAX_IDLE_RSS_BYTES = 56 * 2**20


def _load_build_module() -> ModuleType:
    # Loaded by path: a `packaging` package would shadow the PyPI one.
    spec = importlib.util.spec_from_file_location("rm_packaging_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_built_agent_is_small_fast_and_standalone(built_agent: Path, record_property):
    build = _load_build_module()
    size = built_agent.stat().st_size
    assert size <= MAX_SIZE_BYTES, f"the agent is {size / 1e6:.2f} MB (goal <= 15 MB)"

    out = subprocess.run([str(built_agent), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"restic-manager-agent {AGENT_VERSION}"
    times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([str(built_agent), "--version"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    record_property("agent_size_bytes", size)
    record_property("agent_version_seconds_median", round(median, 3))
    print(f"built agent: {size / 1e6:.2f} MB, --version median {median:.3f} s of {times}")
    assert median <= MAX_VERSION_SECONDS, times

    modules = build.bundled_modules(built_agent)
    assert {"agent", "aiohttp", "cryptography", "croniter"} <= modules
    leaked = modules & {"PySide6", "shiboken6", "peewee", "server_core", "ui_qt", "app", "qasync"}
    assert not leaked, f"the agent bundles {leaked}"
    assert not [m for m in modules if m.startswith(("libQt", "Qt6"))]

    # What the build recorded next to the binary (the app serves its version).
    info = json.loads(built_agent.with_name(built_agent.name + ".json").read_text())
    assert info["version"] == AGENT_VERSION
    assert info["sha256"] == build.sha256_file(built_agent)


# What a host without the agent runs to fetch it: TLS to the listener, the
# certificate checked against the pin, nothing else trusted.
FETCH_SCRIPT = """
import hashlib, http.client, json, ssl, sys
from urllib.parse import urlsplit
url, pin, query, out = sys.argv[1:]
parts = urlsplit(url)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check

def get(path):
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=20)
    conn.connect()
    if hashlib.sha256(conn.sock.getpeercert(True)).hexdigest() != pin:
        sys.exit("the server's certificate does not match the pin")
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.getheader("X-Content-SHA256"), resp.read()

status, _, body = get("/agent/binary.sha256?" + query)
result = {"sha_status": status, "sha_body": body.decode()}
status, header, body = get("/agent/binary?" + query)
result.update(bin_status=status, bin_header=header, bin_sha256=hashlib.sha256(body).hexdigest())
if status == 200:
    with open(out, "wb") as f:
        f.write(body)
else:
    result["bin_body"] = body.decode()
print(json.dumps(result))
"""


def _fetch(remote: Remote, query: str, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        remote.host.argv(
            [
                sys.executable,
                "-c",
                FETCH_SCRIPT,
                remote.agent_url,
                remote.cert_sha256,
                query,
                str(out),
            ]
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_app_serves_the_built_agent_to_another_host(built_agent: Path, remote: Remote):
    """Needs the download routes mounted on the agent listener (server_core/agent_downloads.py)."""
    expected = hashlib.sha256(built_agent.read_bytes()).hexdigest()
    got = _fetch(remote, "os=linux&arch=amd64", remote.tmp / "downloaded-agent")
    assert got["sha_status"] == 200, got
    assert got["sha_body"] == f"{expected}  {built_agent.name}\n"
    assert got["bin_status"] == 200 and got["bin_header"] == expected
    assert got["bin_sha256"] == expected
    downloaded = remote.tmp / "downloaded-agent"
    downloaded.chmod(0o755)
    version = subprocess.run(
        remote.host.argv([str(downloaded), "--version"]), capture_output=True, text=True
    )
    assert version.stdout.strip() == f"restic-manager-agent {AGENT_VERSION}"

    missing = _fetch(remote, "os=linux&arch=arm64", remote.tmp / "nothing")
    assert missing["bin_status"] == 404 and missing["sha_status"] == 404
    error = json.loads(missing["bin_body"])["error"]
    assert error["code"] == "not_bundled" and "linux/amd64" in error["bundled"]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _agent_rss(bootloader_pid: int) -> tuple[int, int]:
    """(RSS of the Python process, RSS of the one-file bootloader that started it)."""
    children = Path(f"/proc/{bootloader_pid}/task/{bootloader_pid}/children").read_text().split()
    assert len(children) == 1, f"expected the bootloader's one child, got {children}"
    return _rss_bytes(int(children[0])), _rss_bytes(bootloader_pid)


def _wait_job(api: Api, job_id: str, timeout: float = 40) -> dict[str, Any]:
    done = ("succeeded", "failed", "cancelled")
    job: dict[str, Any] = wait_for(
        lambda: (j := api.get(f"/jobs/{job_id}"))["status"] in done and j,
        timeout,
        f"job {job_id} to finish",
    )
    return job


def test_built_agent_enrols_and_backs_up_from_another_host(
    built_agent: Path, remote: Remote, tmp_path: Path, record_property
):
    restic = RESTIC_BINARIES.get("0.18") or RESTIC_BINARIES.get("0.14")
    assert restic, "no restic binary: run `make bootstrap`"
    api = remote.api
    password = "pw-" + secrets.token_hex(12)
    source = make_tree(tmp_path / "src", files=40, size=20_000)
    created = api.post(
        "/enrolment-tokens",
        {
            "hostname": "built1",
            "repository": {"url": str(tmp_path / "repo"), "password": password},
            "initial_paths": [str(source)],
        },
    )
    host_id = created["host_id"]
    config = tmp_path / "agent" / "etc" / "config.toml"
    enrol = subprocess.run(
        remote.host.argv(
            [
                str(built_agent),
                "enrol",
                "--server",
                remote.agent_url,
                "--token",
                created["token"],
                "--cert-sha256",
                remote.cert_sha256,
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / "agent" / "state"),
                "--restic",
                restic,
                "--hostname",
                "built1",
            ]
        ),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert enrol.returncode == 0, enrol.stderr
    assert "Enrolled as host 'built1'" in enrol.stdout

    log = tmp_path / "agent.log"
    agent = remote.procs.start(
        remote.host.argv([str(built_agent), "run", "--config", str(config)]), log
    )
    host = wait_for(
        lambda: (
            (h := api.get(f"/hosts/{host_id}"))["status"] == "online"
            and h["repo_status"] != "unknown"
            and h
        ),
        30,
        "the built agent to connect and probe the repository",
    )
    assert host["repo_status"] == "ready", host
    assert (host["agent_version"], host["os"], host["arch"]) == (AGENT_VERSION, "linux", "amd64")
    # The connection really came from the other "host".
    page = api.get("/audit?action=host.online&limit=100")
    entries = page["entries"] if isinstance(page, dict) else page
    remotes = {e["payload"]["remote"] for e in entries if e["action"] == "host.online"}
    assert remotes == {remote.host.host_ip}, remotes
    idle_connected = _agent_rss(agent.pid)

    group = api.get(f"/hosts/{host_id}/source-groups")[0]
    job_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]})[
        "job_id"
    ]
    job = _wait_job(api, job_id)
    assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
    assert job["summary"]["files_new"] == 40
    snaps = wait_for(lambda: api.get(f"/hosts/{host_id}/snapshots"), 20, "the snapshot list")
    assert [s["paths"] for s in snaps] == [[str(source)]]
    idle_after_backup = _agent_rss(agent.pid)

    # restic itself confirms the snapshot the built agent made.
    listed = subprocess.run(
        [restic, "-r", str(tmp_path / "repo"), "snapshots", "--json", "--no-cache"],
        env={"RESTIC_PASSWORD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    assert json.loads(listed.stdout)[0]["id"].startswith(job["summary"]["snapshot_id"][:8])

    figures = {
        "idle_rss_connected_mib": round(idle_connected[0] / 2**20, 1),
        "bootloader_rss_mib": round(idle_connected[1] / 2**20, 1),
        "idle_rss_after_backup_mib": round(idle_after_backup[0] / 2**20, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"built agent RSS: {figures}")
    assert idle_connected[0] <= MAX_IDLE_RSS_BYTES, figures

    # SIGTERM reaches the agent through the bootloader, and it exits cleanly.
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0, log.read_text()[-3000:]
    wait_for(lambda: api.get(f"/hosts/{host_id}")["status"] == "offline", 15, "offline")
