"""Self-update with two real PyInstaller builds of the agent.

The "old" agent is this checkout built to report another version
(tests/helpers/agent_builds.py); the "new" one is the standard build the app
bundles. The old binary is installed in a temporary folder and kept running by
``Supervisor``, a loop standing in for systemd's ``Restart=always``: whenever
the agent exits (a self-update exits with 75) it is started again from the
same path — which then holds whatever the update put there.

The control plane runs in process; its agent listener serves ``/agent/binary``
from a folder the test fills (``ControlPlaneConfig.agents_dir``): the new
build for the success path, and for the failure path a shell script that
answers ``--version`` and exits at once when run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import keyring.backends.fail
import pytest

from agent import platform_info
from agent import protocol as p
from agent.version import __version__ as NEW_VERSION
from server_core.agent_downloads import agent_file_name
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import Job, JobLogLine
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from server_core.services.updates import UpdateService
from tests.helpers.agent_builds import agent_with_version, standard_agent
from tests.helpers.fake_agent import FakeAgent, enrol
from tests.helpers.fleet import child_env

pytestmark = pytest.mark.integration

OLD_VERSION = "0.0.9-selfupdate-old"
BROKEN_VERSION = "9.9.9-broken"
RESTART_SEC = 0.3
# What the failure path serves as "the new agent": it passes the agent's
# `--version` check, then dies at once whenever the service starts it.
BROKEN_AGENT = f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "restic-manager-agent {BROKEN_VERSION}"; exit 0; fi
echo "broken agent: exiting at once" >&2
exit 1
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Builds:
    old: Path
    new: Path


@pytest.fixture(scope="module")
def builds() -> Builds:
    old = agent_with_version(OLD_VERSION)
    new = standard_agent()
    assert sha256(old) != sha256(new)
    return Builds(old, new)


def publish(folder: Path, binary: Path | bytes, version: str) -> Path:
    """Put a build where the app serves it from, with the sidecar build.py writes."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / agent_file_name(platform_info.os_name(), platform_info.arch())
    if isinstance(binary, Path):
        shutil.copy2(binary, target)
    else:
        target.write_bytes(binary)
        target.chmod(0o755)
    target.with_name(target.name + ".json").write_text(json.dumps({"version": version}))
    return target


@dataclass
class Supervisor:
    """Restart=always for one agent: run it, and start it again whenever it exits."""

    exe: Path
    config: Path
    log: Path
    exits: list[int] = field(default_factory=list)
    starts: int = 0
    _proc: asyncio.subprocess.Process | None = None
    _stopping: bool = False
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopping:
            with self.log.open("ab") as sink:
                self.starts += 1
                sink.write(f"--- start {self.starts}: {self.exe}\n".encode())
                self._proc = await asyncio.create_subprocess_exec(
                    str(self.exe),
                    "run",
                    "--config",
                    str(self.config),
                    stdout=sink,
                    stderr=asyncio.subprocess.STDOUT,
                    env=child_env(),
                )
            code = await self._proc.wait()
            self.exits.append(code)
            if not self._stopping:
                await asyncio.sleep(RESTART_SEC)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)


@dataclass
class Plane:
    cp: ControlPlane
    updates: UpdateService
    agents_dir: Path
    tmp: Path
    supervisors: list[Supervisor]
    session: aiohttp.ClientSession

    async def token(self, name: str) -> str:
        new = parse_new_host(
            {
                "hostname": name,
                "repository": {"url": str(self.tmp / f"repo-{name}"), "password": "pw-" + name},
                "initial_paths": [str(self.tmp)],
            }
        )
        return (await self.cp.enrolment.add_host(new, OPERATOR)).token

    async def install_agent(self, name: str, binary: Path) -> tuple[int, Path, Supervisor]:
        """Enrol ``binary`` as host ``name``, installed as its own copy, under a supervisor."""
        home = self.tmp / name
        exe = home / "bin" / "restic-manager-agent"
        exe.parent.mkdir(parents=True)
        shutil.copy2(binary, exe)
        config = home / "agent.toml"
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "enrol",
            "--server",
            self.cp.agent_url,
            "--token",
            await self.token(name),
            "--cert-sha256",
            self.cp.certificate.sha256,
            "--config",
            str(config),
            "--state-dir",
            str(home / "state"),
            "--hostname",
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(),
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        host_id = int(out.decode().split("(id ", 1)[1].split(")", 1)[0])
        supervisor = Supervisor(exe, config, home / "agent.log")
        self.supervisors.append(supervisor)
        supervisor.start()
        return host_id, exe, supervisor

    async def idle(self, host_id: int) -> bool:
        """The first connection's repository probe (a real restic init) is done."""
        jobs = await self.cp.jobs.list_jobs(host_id)
        return bool(jobs) and all(j.status in p.TERMINAL_STATUSES for j in jobs)

    async def host_version(self, host_id: int) -> str | None:
        host = await self.cp.hosts.get_host(host_id)
        return host.agent_version if host.status == "online" else None


async def until(
    predicate: Callable[[], Any], timeout: float, what: str, log: Path | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def plane(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Plane]:
    agents_dir = tmp_path / "bundled-agents"
    agents_dir.mkdir()
    timeout = getattr(request, "param", 90.0)
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
            # The agent listener serves /agent/binary from here.
            agents_dir=agents_dir,
        )
    )
    await cp.start()
    # Its own service: the failure path needs a shorter wait than the app's 90 s.
    updates = UpdateService(cp.ctx, cp.alerts, cp.downloads, hello_timeout_s=timeout)
    await updates.start()
    supervisors: list[Supervisor] = []
    try:
        async with aiohttp.ClientSession() as session:
            yield Plane(cp, updates, agents_dir, tmp_path, supervisors, session)
    finally:
        for supervisor in supervisors:
            await supervisor.stop()
        await updates.stop()
        await cp.stop()


async def job_log(cp: ControlPlane, job_id: str) -> list[str]:
    def run() -> list[str]:
        rows = JobLogLine.select().where(JobLogLine.job == job_id).order_by(JobLogLine.seq)
        return [r.text for r in rows]

    return await cp.store.call(run)


async def test_update_to_the_bundled_build_keeps_old_and_says_hello_as_new(
    builds: Builds, plane: Plane
) -> None:
    publish(plane.agents_dir, builds.new, NEW_VERSION)
    host_id, exe, supervisor = await plane.install_agent("web1", builds.old)
    await until(lambda: plane.host_version(host_id), 60, "the old agent to connect", supervisor.log)
    assert await plane.host_version(host_id) == OLD_VERSION
    await until(lambda: plane.idle(host_id), 60, "the repository probe", supervisor.log)

    started = await plane.updates.update_host(host_id, OPERATOR)
    assert (started.from_version, started.to_version) == (OLD_VERSION, NEW_VERSION)
    done = await asyncio.wait_for(plane.updates.wait_host(host_id), 120)
    assert done is not None and done.state == "succeeded", (done, supervisor.log.read_text())

    assert await plane.host_version(host_id) == NEW_VERSION
    # The new build is in place, the old one kept next to it.
    assert sha256(exe) == sha256(builds.new)
    old = exe.with_name("restic-manager-agent.old")
    assert sha256(old) == sha256(builds.old)
    assert sorted(p.name for p in exe.parent.iterdir()) == [exe.name, old.name]
    # It exited for the restart with the documented code, and was started again.
    assert supervisor.exits[:1] == [75] and supervisor.starts == 2
    job = await plane.cp.store.call(lambda: Job.get_by_id(started.job_id))
    assert job.status == "succeeded"
    lines = await job_log(plane.cp, started.job_id)
    assert any("verified" in line for line in lines), lines
    assert any(f"restarting as agent {NEW_VERSION}" in line for line in lines), lines
    log = supervisor.log.read_text()
    assert f"agent {NEW_VERSION} started" in log


@pytest.mark.parametrize("plane", [12.0], indirect=True)
async def test_a_new_binary_that_dies_fails_the_update_and_halts_the_fleet(
    builds: Builds, plane: Plane
) -> None:
    served = publish(plane.agents_dir, BROKEN_AGENT.encode(), BROKEN_VERSION)
    alpha, exe, supervisor = await plane.install_agent("alpha", builds.old)
    # bravo: second in name order, also outdated; it must never hear of the update.
    body = await enrol(
        plane.session,
        plane.cp.agent_url,
        plane.cp.certificate.sha256,
        await plane.token("bravo"),
        "bravo",
    )
    bravo = await FakeAgent.connect(
        plane.session, plane.cp.agent_url, plane.cp.certificate.sha256, body["bearer"]
    )
    await until(lambda: plane.host_version(alpha), 60, "alpha to connect", supervisor.log)
    await until(lambda: plane.host_version(body["host_id"]), 10, "bravo to connect")
    await until(lambda: plane.idle(alpha), 60, "the repository probe", supervisor.log)

    run = await plane.updates.update_fleet(None, OPERATOR)
    assert [h.host_name for h in run.hosts] == ["alpha", "bravo"]
    done = await asyncio.wait_for(plane.updates.wait_fleet(), 120)
    assert done is not None and done.state == "failed", done
    alpha_view, bravo_view = done.hosts
    assert alpha_view.state == "failed" and bravo_view.state == "not_started"
    assert f"did not come back as version {BROKEN_VERSION}" in (alpha_view.detail or "")
    assert done.message is not None and done.message.startswith("Halted at alpha")

    alerts = [a for a in await plane.cp.alerts.list_alerts(host_id=alpha) if a.status == "open"]
    assert [a.kind for a in alerts] == ["update_failed"]
    assert "alpha" in alerts[0].message
    # The script was installed (it passed --version) and crash-loops; the
    # previous binary waits next to it as .old for a rollback.
    assert exe.read_bytes() == served.read_bytes()
    assert sha256(exe.with_name("restic-manager-agent.old")) == sha256(builds.old)
    assert supervisor.exits[0] == 75 and supervisor.exits[1:3] == [1, 1], supervisor.exits
    with pytest.raises(AssertionError, match="no CommandUpdate"):
        await bravo.expect(p.CommandUpdate, timeout=0.5)

    # Rolling back by hand (what docs/operations.md describes) brings it back.
    exe.with_name("restic-manager-agent.old").replace(exe)
    await until(lambda: plane.host_version(alpha), 60, "alpha to come back on .old", supervisor.log)
    assert await plane.host_version(alpha) == OLD_VERSION
