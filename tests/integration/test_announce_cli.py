"""Announce-and-approve end to end: the real ``restic-manager-agent announce``
as a subprocess against an embedded control plane over real TLS, then
``run`` with the config it wrote, backing up with real restic."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server_core.models import PendingHost
from server_core.services.context import OPERATOR
from server_core.services.pending_hosts import PendingHostView
from tests.helpers.announce import AnnounceServer, announce_server
from tests.helpers.fleet import BIN, child_env, make_tree
from tests.helpers.restic_bins import RESTIC_BINARIES

pytestmark = pytest.mark.integration

AGENT = str(BIN / "restic-manager-agent")
FINGERPRINT_LINE = re.compile(r"^\s+(SHA256:[A-Za-z0-9+/]{43})$")


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, *args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
        )
        me = cls(proc)
        assert proc.stdout is not None and proc.stderr is not None
        me._readers = [
            asyncio.create_task(me._pump(proc.stdout, me.out)),
            asyncio.create_task(me._pump(proc.stderr, me.err)),
        ]
        return me

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode("utf-8", "replace").rstrip("\n"))

    async def wait_line(self, pattern: str, timeout: float = 20.0, *, err: bool = False) -> str:
        lines = self.err if err else self.out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in lines:
                if re.search(pattern, line):
                    return line
            if self.proc.returncode is not None and all(r.done() for r in self._readers):
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; out={self.out!r} err={self.err!r}")

    async def exit_code(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._readers)
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@pytest.fixture
def service_options() -> dict[str, object]:
    return {}


@pytest.fixture
async def server(
    tmp_path: Path, service_options: dict[str, object]
) -> AsyncIterator[AnnounceServer]:
    async with announce_server(tmp_path / "data", **service_options) as s:
        yield s


@pytest.fixture
def restic() -> str:
    binary = RESTIC_BINARIES.get("0.18")
    assert binary, "restic 0.18 is not installed: run `make bootstrap`"
    return binary


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        await proc.stop()


def announce_args(server: AnnounceServer, workdir: Path, restic: str, **over: str) -> list[str]:
    args = {
        "--server": server.url,
        "--cert-sha256": server.pin,
        "--config": str(workdir / "etc" / "config.toml"),
        "--state-dir": str(workdir / "state"),
        "--restic": restic,
        "--hostname": "web-announce",
    }
    args.update(over)
    return [AGENT, "announce", *(x for kv in args.items() for x in kv)]


async def wait_listed(server: AnnounceServer, *, connected: bool = True) -> PendingHostView:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        views = await server.pending.list_pending()
        if views and views[0].connected is connected:
            return views[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the announcing host was not listed")


async def wait_for(predicate, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_accepted_announce_writes_a_config_that_runs_and_backs_up(
    server, tmp_path, restic, procs
):
    workdir = tmp_path / "agent"
    source = make_tree(tmp_path / "src", files=20, size=4_000)
    repo = tmp_path / "repo"
    announce = await Proc.start(*announce_args(server, workdir, restic))
    procs.append(announce)

    line = await announce.wait_line(FINGERPRINT_LINE.pattern)
    printed = FINGERPRINT_LINE.match(line).group(1)  # type: ignore[union-attr]
    await announce.wait_line("Waiting for the operator")
    view = await wait_listed(server)
    # What the operator compares: the app shows exactly what the host printed.
    assert view.fingerprint == printed
    assert view.hostname == "web-announce" and view.source_ip == "127.0.0.1"
    assert view.os == "linux" and view.agent_version
    key = workdir / "state" / "identity_ed25519.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    # The connection drops while pending: the agent reconnects by itself.
    await server.pending._sessions[view.id].channel.close("test: dropped")
    await announce.wait_line("reconnecting in")
    await announce.wait_line("Reconnected; still waiting")
    again = await wait_listed(server)
    assert again.id == view.id and again.expires_at == view.expires_at

    accepted = await server.pending.accept(
        view.id,
        {
            "repository": {"url": str(repo), "password": "announce-test-pw"},
            "initial_paths": [str(source)],
        },
        OPERATOR,
    )
    assert accepted.delivered, accepted.message
    assert await announce.exit_code() == 0, announce.err
    done = await announce.wait_line("Accepted: enrolled as host")
    assert "'web-announce'" in done and "run --config" in done
    config = workdir / "etc" / "config.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert f"host_id = {accepted.host_id}" in config.read_text()

    run = await Proc.start(AGENT, "run", "--config", str(config))
    procs.append(run)

    async def ready() -> bool:
        host = await server.cp.hosts.get_host(accepted.host_id)
        return host.status == "online" and host.repo_status == "ready"

    await wait_for(ready, "hello and the repository probe")
    host = await server.cp.hosts.get_host(accepted.host_id)
    assert host.restic_version and host.restic_version.startswith("0.18")

    (group,) = await server.cp.sources.list_groups(accepted.host_id)
    job_id = await server.cp.jobs.dispatch(
        accepted.host_id, "backup", actor=OPERATOR, source_group_id=group.id
    )

    async def finished() -> object:
        job = await server.cp.jobs.get_job(job_id)
        return job if job.status in ("succeeded", "failed", "cancelled") else None

    job = await wait_for(finished, "the backup")
    assert job.status == "succeeded", job
    assert job.summary and job.summary["files_new"] == 20
    # No secret in the agent's files or output.
    needle = b"announce-test-pw"
    for path in workdir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    assert "announce-test-pw" not in "\n".join(announce.out + announce.err)


async def test_rejected_announce_prints_the_reason_and_fails(server, tmp_path, restic, procs):
    workdir = tmp_path / "agent"
    announce = await Proc.start(*announce_args(server, workdir, restic))
    procs.append(announce)
    view = await wait_listed(server)
    await server.pending.reject(view.id, "not a machine we know", OPERATOR)
    assert await announce.exit_code() == 1
    assert announce.err == [
        "restic-manager-agent: error: rejected: the operator rejected this host in "
        "restic-manager: not a machine we know"
    ]
    assert not (workdir / "etc" / "config.toml").exists()


@pytest.mark.parametrize("service_options", [{"ttl_s": 1.5, "sweep_interval_s": 0.1}])
async def test_expired_announce_fails_with_a_clear_message(server, tmp_path, restic, procs):
    announce = await Proc.start(*announce_args(server, tmp_path / "agent", restic))
    procs.append(announce)
    view = await wait_listed(server)
    assert await announce.exit_code() == 1
    (line,) = announce.err
    assert "error: expired: nobody accepted this host within 1.5 s" in line
    assert "Run announce again" in line
    status = await server.cp.store.call(lambda: PendingHost.get_by_id(view.id).status)
    assert status == "expired"


async def test_a_wrong_pin_stops_before_anything_is_sent(server, tmp_path, restic, procs):
    announce = await Proc.start(
        *announce_args(server, tmp_path / "agent", restic, **{"--cert-sha256": "00" * 32})
    )
    procs.append(announce)
    assert await announce.exit_code() == 1
    assert "does not match --cert-sha256" in announce.err[0]
    assert await server.pending.list_pending() == []
    count = await server.cp.store.call(lambda: PendingHost.select().count())
    assert count == 0


async def test_an_enrolled_host_is_not_announced_again(server, tmp_path, restic, procs):
    config = tmp_path / "agent" / "etc" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# enrolled\n")
    announce = await Proc.start(*announce_args(server, tmp_path / "agent", restic))
    procs.append(announce)
    assert await announce.exit_code() == 2
    assert "this host is enrolled already" in announce.err[0]
    assert os.listdir(tmp_path / "agent") == ["etc"]  # no key, no state
