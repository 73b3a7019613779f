from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.fleet import AgentProcess, Api, ControlPlaneProcess, ResticWatcher, make_tree
from tests.helpers.restic_bins import RESTIC_BINARIES


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
