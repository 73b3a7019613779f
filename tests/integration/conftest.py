from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import netns
from tests.helpers.agent_builds import standard_agent
from tests.helpers.fleet import (
    AgentProcess,
    Api,
    ControlPlaneProcess,
    ResticWatcher,
    child_env,
    free_port,
    make_tree,
    wait_for,
)
from tests.helpers.restic_bins import RESTIC_BINARIES

BIN = Path(sys.executable).parent


@pytest.fixture(params=["0.14", "0.18"], ids=lambda v: f"restic{v}")
def restic_bin(request: pytest.FixtureRequest) -> str:
    # Both versions are part of the contract: a missing one is a failure, not a skip.
    binary = RESTIC_BINARIES.get(request.param)
    assert binary, f"restic {request.param} is not installed: run `make bootstrap`"
    return binary


@dataclass
class Fleet:
    tmp: Path
    server: ControlPlaneProcess
    api: Api
    restic: str
    agents: list[AgentProcess]

    def add_host(
        self, hostname: str, repo: Path, password: str, paths: list[Path]
    ) -> tuple[int, str]:
        created = self.api.post(
            "/enrolment-tokens",
            {
                "hostname": hostname,
                "repository": {"url": str(repo), "password": password},
                "initial_paths": [str(p) for p in paths],
                "tags": ["test"],
            },
        )
        return created["host_id"], created["token"]

    def enrol_agent(self, hostname: str, token: str) -> AgentProcess:
        agent = AgentProcess(self.tmp / f"agent-{hostname}", self.restic, hostname)
        info = self.api.get("/server")
        result = agent.enrol(self.server.agent_url, token, info["cert_sha256"])
        assert result.returncode == 0, result.stderr
        agent.start()
        self.agents.append(agent)
        return agent


@pytest.fixture
def fleet(tmp_path: Path, restic_bin: str) -> Iterator[Fleet]:
    server = ControlPlaneProcess(tmp_path / "data", tmp_path / "server.log")
    server.data_dir.mkdir()
    token = server.create_api_token()
    server.start()
    f = Fleet(tmp_path, server, Api(server.api_base, token), restic_bin, [])
    try:
        yield f
    finally:
        for agent in f.agents:
            agent.stop()
        server.stop()


@pytest.fixture
def restic_watcher() -> Iterator[ResticWatcher]:
    watcher = ResticWatcher()
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    yield watcher
    watcher.stop()
    thread.join()


@pytest.fixture
def password() -> str:
    return "pw-" + secrets.token_hex(12)


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", files=120, size=20_000)


# -- the built agent and a separate "host" (test_built_agent.py, test_install_sh.py,
# test_offline_bundle.py)


@pytest.fixture(scope="module")
def built_agent() -> Path:
    """The PyInstaller-built agent; packaging/build.py rebuilds it only when stale."""
    path = standard_agent()
    assert os.access(path, os.X_OK), path
    return path


class Processes:
    """Every process the tests start, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=child_env())
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Remote:
    """A control plane on this machine and a separate "host" that can reach
    only its agent listener."""

    host: netns.NetnsHost
    api: Api
    agent_url: str
    cert_sha256: str
    tmp: Path
    procs: Processes


def _server_info(api: Api) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = api.get("/server")
    except OSError:
        return None
    return info


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"the built agent's separate-host tests: {reason}")
    tmp = tmp_path_factory.mktemp("remote")
    data_dir = tmp / "data"
    data_dir.mkdir()
    procs = Processes()
    with netns.netns_host("agent") as host:
        try:
            token = subprocess.run(
                [
                    str(BIN / "restic-manager"),
                    "api-token",
                    "create",
                    "--data-dir",
                    str(data_dir),
                    "--name",
                    "tests",
                ],
                capture_output=True,
                text=True,
                check=True,
                env=child_env(),
            ).stdout.strip()
            api_port = free_port()
            # The agent listener only on the namespace's link.
            procs.start(
                [
                    str(BIN / "restic-manager"),
                    "serve",
                    "--data-dir",
                    str(data_dir),
                    "--agent-listen",
                    f"{host.root_ip}:0",
                    "--api-listen",
                    f"127.0.0.1:{api_port}",
                ],
                tmp / "server.log",
            )
            api = Api(f"http://127.0.0.1:{api_port}/api/v1", token)
            info = wait_for(lambda: _server_info(api), 30, "the control plane to answer")
            assert info["agent_url"].startswith(f"https://{host.root_ip}:")

            # From inside the namespace, the API on this machine's loopback is out of reach.
            probe = subprocess.run(
                host.argv(
                    [
                        sys.executable,
                        "-c",
                        f"import socket; socket.create_connection(('127.0.0.1', {api_port}), 3)",
                    ]
                ),
                capture_output=True,
                text=True,
            )
            assert probe.returncode != 0 and "ConnectionRefused" in probe.stderr, probe.stderr
            yield Remote(host, api, info["agent_url"], info["cert_sha256"], tmp, procs)
        finally:
            procs.stop_all()
