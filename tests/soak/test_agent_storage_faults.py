"""The agent when its own files let it down: a damaged config file, a state
dir it cannot write (read-only mount, no permission), a state dir on a full
file system (at start, and while a job streams its log).

At start, each stops the real ``restic-manager-agent run`` with one line on
stderr (the journal, under systemd) that names the file or directory, the
problem and the fix, and a distinct exit code: 2 for what needs a person
(the service unit does not restart it), 3 for a state dir that cannot be
written (retried: it may clear by itself). While running, a full disk does
not stop the agent: it says so, keeps the job's events in memory, still
delivers them, and writes out what it holds once space returns; nothing is
lost and nothing is stored twice.

Needs root (mounts; setpriv to run the agent unprivileged).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, save_config
from server_core.control_plane import DB_FILE
from tests.helpers.fleet import (
    BIN,
    AgentProcess,
    Api,
    ControlPlaneProcess,
    child_env,
    make_tree,
    put_group,
    wait_for,
)
from tests.helpers.restic_bins import RESTIC_BINARIES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts file systems: needs root"),
]

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "installers" / "restic-manager-agent.service"
EXIT_CONFIG = 2
EXIT_STATE_DIR = 3
NOBODY = 65534


# -- helpers ---------------------------------------------------------------------------


def run_agent(config: Path, *, as_user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "restic-manager-agent"), "run", "--config", str(config)]
    if as_user is not None:
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=60)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("restic-manager-agent: error: "), lines[0]
    return lines[0]


def write_config(tmp: Path, state_dir: Path) -> Path:
    """A valid config for a host that was never enrolled (no secrets yet): the
    agent gets as far as opening its state dir before it needs any."""
    config = tmp / "etc" / "config.toml"
    save_config(
        config,
        AgentConfig(
            server_url="https://127.0.0.1:9",
            cert_sha256="ab" * 32,
            host_id=1,
            state_dir=str(state_dir),
        ),
    )
    return config


@contextlib.contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *argv, str(target)], check=True)
    try:
        yield target
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "--lazy", str(target)], check=True)


@contextlib.contextmanager
def tmpfs(target: Path, size: str) -> Iterator[Path]:
    with mounted(["-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs"], target) as path:
        yield path


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[Path]:
    with mounted(["--bind", str(target)], target):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    with filler.open("wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        # Then what fits of a smaller piece: sqlite needs only a page.
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    assert shutil.disk_usage(directory).free == 0
    return filler


# -- a damaged config file ------------------------------------------------------------

DAMAGE = {
    "garbage": (lambda good: b"\x89PNG\r\n\x1a\n\x00\xff" + os.urandom(64), "is not UTF-8 text"),
    "truncated": (lambda good: good[: good.index(b"host_id") + 4], "is not valid TOML"),
    "wrong_types": (
        lambda good: good.replace(b"host_id = 1", b'host_id = "one"'),
        "host_id must be an integer, got a string",
    ),
    "json_instead_of_toml": (
        lambda good: b'{"server_url": "https://127.0.0.1:9", "host_id": 1}',
        "is not valid TOML",
    ),
    "empty": (lambda good: b"", "missing required key(s) server_url, cert_sha256"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_config_stops_the_agent_with_exit_2_and_says_what_to_do(
    tmp_path: Path, damage: str
) -> None:
    config = write_config(tmp_path, tmp_path / "state")
    spoil, problem = DAMAGE[damage]
    config.write_bytes(spoil(config.read_bytes()))

    result = run_agent(config)

    assert result.returncode == EXIT_CONFIG, result
    line = one_line(result.stderr)
    assert str(config) in line and problem in line, line
    assert "enrol this host again" in line, line
    # Nothing was created on the way out.
    assert not (tmp_path / "state").exists()


# -- a state dir the agent cannot write ------------------------------------------------


def test_a_read_only_state_dir_stops_the_agent_with_exit_3_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = write_config(tmp_path, state)
    with read_only(state):
        result = run_agent(config)
    assert result.returncode == EXIT_STATE_DIR, result
    line = one_line(result.stderr)
    assert f"{state} cannot be written" in line, line
    assert "Read-only file system" in line and "remount it read-write" in line, line


@pytest.fixture
def world_dir() -> Iterator[Path]:
    # pytest's tmp_path sits in a root-only directory the other user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="rm-agent-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_state_dir_the_agent_user_may_not_write_stops_it_with_exit_3(world_dir: Path) -> None:
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("cannot run a process as an unprivileged user here")
    state = world_dir / "state"
    state.mkdir()
    config = write_config(world_dir, state)
    for path in (config.parent, config, state):
        os.chown(path, NOBODY, NOBODY)
    state.chmod(0o500)  # chmod 0500 by mistake: readable, not writable

    result = run_agent(config, as_user=NOBODY)

    assert result.returncode == EXIT_STATE_DIR, result
    line = one_line(result.stderr)
    assert f"permission denied on {state}" in line and "ownership" in line, line


def test_a_full_state_dir_at_start_stops_the_agent_with_exit_3_until_space_returns(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, state)
    with tmpfs(state, "1m"):
        filler = fill(state)
        result = run_agent(config)
        assert result.returncode == EXIT_STATE_DIR, result
        line = one_line(result.stderr)
        assert f"the file system holding {state} is full" in line, line
        assert "free space there" in line, line

        filler.unlink()
        again = run_agent(config)
    # Past the state dir: now it is the missing enrolment that stops it.
    assert again.returncode == EXIT_CONFIG, again
    assert "holds no bearer token" in one_line(again.stderr)


# -- the service unit -------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_service_restarts_the_agent_except_after_a_configuration_error(
    tmp_path: Path,
) -> None:
    from agent.client import EXIT_STATE_DIR as state_code
    from agent.client import EXIT_USAGE
    from agent.self_update import EXIT_RESTART

    settings = unit_settings()
    assert settings["Restart"] == ["always"]
    prevented = {
        int(code) for v in settings.get("RestartPreventExitStatus", []) for code in v.split()
    }
    # A config error needs a person: no restart every RestartSec burying its reason.
    assert EXIT_USAGE == EXIT_CONFIG and EXIT_CONFIG in prevented
    # A full or read-only state dir may clear, and a self-update needs its restart.
    assert state_code == EXIT_STATE_DIR and EXIT_STATE_DIR not in prevented
    assert EXIT_RESTART not in prevented
    assert float(settings["RestartSec"][0]) >= 1

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd itself accepts every directive (only the absent binary may be reported).
    unit = tmp_path / "restic-manager-agent.service"
    unit.write_text(UNIT.read_text())
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert not complaints, complaints


# -- a full disk while a job streams its log -------------------------------------------


def outbox_rows(state: Path) -> int:
    conn = sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def stored_hook_numbers(db: Path, job_id: str) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT text FROM job_log WHERE job_id = ? AND text LIKE 'hook(pre): n %'", (job_id,)
        ).fetchall()
    finally:
        conn.close()
    return sorted(int(str(r[0]).rsplit(" ", 1)[1]) for r in rows)


@contextlib.contextmanager
def stopped_after(agent: AgentProcess) -> Iterator[None]:
    """Stop the agent before its state dir is unmounted."""
    try:
        yield
    finally:
        agent.stop()


HOOK_BLOCKS = 120
HOOK_BLOCK_LINES = 500


def test_a_full_state_dir_while_a_job_streams_its_log_loses_nothing(tmp_path: Path) -> None:
    restic = RESTIC_BINARIES.get("0.18") or RESTIC_BINARIES.get("0.14")
    assert restic, "no restic binary: run `make bootstrap`"
    (tmp_path / "data").mkdir()
    server = ControlPlaneProcess(tmp_path / "data", tmp_path / "server.log")
    api = Api(server.api_base, server.create_api_token())
    server.start()
    agent = AgentProcess(tmp_path / "agent", restic, "fullhost")
    try:
        with tmpfs(agent.state_dir, "24m"), stopped_after(agent):
            src = make_tree(tmp_path / "src", files=10, size=2048)
            created = api.post(
                "/enrolment-tokens",
                {
                    "hostname": "fullhost",
                    "repository": {"url": str(tmp_path / "repo"), "password": uuid.uuid4().hex},
                    "initial_paths": [str(src)],
                },
            )
            host_id = created["host_id"]
            enrolled = agent.enrol(
                server.agent_url, created["token"], api.get("/server")["cert_sha256"]
            )
            assert enrolled.returncode == 0, enrolled.stderr
            agent.start()
            wait_for(
                lambda: api.get(f"/hosts/{host_id}")["repo_status"] == "ready",
                90,
                "the repository to be initialised",
            )
            (group,) = api.get(f"/hosts/{host_id}/source-groups")
            put_group(
                api,
                host_id,
                group,
                pre_hook=(
                    f"for b in $(seq 0 {HOOK_BLOCKS - 1}); do "
                    f"seq -f 'n %.0f' $((b*{HOOK_BLOCK_LINES}+1)) $((b*{HOOK_BLOCK_LINES}+"
                    f"{HOOK_BLOCK_LINES})); sleep 0.1; done"
                ),
            )
            job_id = api.post(
                f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]}
            )["job_id"]

            def stored() -> int:
                return int(api.get(f"/jobs/{job_id}")["log_lines"])

            wait_for(lambda: stored() > 3000, 60, "the hook's lines to stream", 0.1)

            filler = fill(agent.state_dir)
            full_at = time.monotonic()
            wait_for(
                lambda: "cannot write to the agent's state dir" in agent.log_path.read_text(),
                20,
                "the agent to say its state dir refuses writes",
                0.1,
            )
            # The disk is still full, and the lines still reach the control plane.
            before = stored()
            wait_for(lambda: stored() > before + 2000, 20, "lines to flow with a full disk", 0.1)
            # Then the control plane goes away too: nothing is acknowledged, the
            # agent holds every new event in memory.
            assert server.stop() == 0
            time.sleep(max(2.0, 5 - (time.monotonic() - full_at)))
            assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
            assert shutil.disk_usage(agent.state_dir).free == 0
            log_while_full = agent.log_path.read_text()

            filler.unlink()
            written = wait_for(
                lambda: re.search(
                    r"takes writes again after \d+ s: (\d+) held event", agent.log_path.read_text()
                ),
                30,
                "the agent to write out what it held",
                0.2,
            )
            assert int(written.group(1)) > 0, written.group(0)
            server.start()
            job = wait_for(
                lambda: (
                    (j := api.get(f"/jobs/{job_id}"))["status"]
                    in ("succeeded", "failed", "cancelled")
                    and j
                ),
                150,
                "the agent to reconnect and the backup to finish",
                0.5,
            )
            wait_for(lambda: outbox_rows(agent.state_dir) == 0, 60, "the outbox to drain", 0.5)
            agent_log = agent.log_path.read_text()
            assert agent.stop() == 0
    finally:
        agent.stop()
        server.stop()

    assert job["status"] == "succeeded", job
    numbers = stored_hook_numbers(tmp_path / "data" / DB_FILE, job_id)
    assert numbers == list(range(1, HOOK_BLOCKS * HOOK_BLOCK_LINES + 1)), (
        f"stored {len(numbers)} hook lines ({len(set(numbers))} distinct) "
        f"of {HOOK_BLOCKS * HOOK_BLOCK_LINES}"
    )
    assert job["log_lines"] == job["log_lines_reported"], job
    # Said once, clearly, with the way out; no traceback.
    error = [
        line
        for line in log_while_full.splitlines()
        if "refuses writes" in line or "cannot write" in line
    ]
    assert len(error) == 1 and "Free space on that file system" in error[0], error
    assert "database or disk is full" in error[0], error
    assert "Traceback" not in agent_log, agent_log[-3000:]
    print(*[line for line in agent_log.splitlines() if "state dir" in line], sep="\n")


# -- the outbox itself on a full disk -------------------------------------------------


def test_the_outbox_holds_what_a_full_disk_refuses_and_writes_it_out_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent import outbox as outbox_mod
    from agent.outbox import Outbox

    monkeypatch.setattr(outbox_mod, "RETRY_WRITE_S", 0.0)
    state = tmp_path / "state"
    with tmpfs(state, "2m"):
        box = Outbox(state / "outbox.sqlite3")
        try:
            stored = box.put("job.log", {"job_id": "j1", "seq": 1, "lines": []})
            acked_later = box.put("job.log", {"job_id": "j1", "seq": 2, "lines": []})
            first = box.reserve_seqs("j1", 10)
            box.mark_running("j1", "backup")
            box.mark_running("j2", "check")
            filler = fill(state)

            # Nothing raises; what the disk refuses is held, in order, after what it has.
            held = [
                box.put("job.log", {"job_id": "j1", "seq": n, "lines": [{"t": "x" * 2000}]})
                for n in range(3, 200)
            ]
            assert box.held == len(held) > 0
            assert [e.id for e in box.pending(limit=1000)] == [stored, acked_later, *held]
            assert [e.id for e in box.pending(limit=5, after_id=held[10])] == held[11:16]
            assert box.reserve_seqs("j1", 5) == first + 10
            assert box.reserve_seqs("j3", 1) == 1 and box.knows_job("j3")
            box.clear_running("j2")
            box.mark_running("j4", "prune")
            assert [r[0] for r in box.running()] == ["j1", "j4"]
            # Acks need no disk: held events go, stored ones are no longer pending.
            assert box.ack([held[0], acked_later]) == 2
            assert [e.id for e in box.pending(limit=3)] == [stored, held[1], held[2]]
            assert box.count() == 1 + len(held) - 1
            assert box.pending(limit=3, after_id=held[0])[0].id == stored  # acked: from the top

            filler.unlink()
            box.put("job.log", {"job_id": "j1", "seq": 500, "lines": []}, msg_id="after")
            assert box.held == 0
        finally:
            box.close()
        # All of it reached the disk.
        box = Outbox(state / "outbox.sqlite3")
        try:
            assert [e.id for e in box.pending(limit=1000)] == [stored, *held[1:], "after"]
            assert box.reserve_seqs("j1", 1) == first + 15
            assert box.reserve_seqs("j3", 1) == 2
            assert [r[0] for r in box.running()] == ["j1", "j4"]
        finally:
            box.close()


# -- a hook whose output cannot be stored ------------------------------------------------


def test_a_hook_whose_lines_cannot_be_stored_is_stopped_not_left_hanging() -> None:
    """Before the outbox held events in memory, a full disk made the hook's
    line handler raise: reading stopped, the hook blocked on a full pipe and
    the backup hung until the hook's time limit (an hour by default)."""
    from agent.hooks import run_hook
    from agent.outbox import OutboxError

    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if len(seen) == 1000:
            raise OutboxError("the state dir refuses writes")

    async def go() -> None:
        await run_hook(
            "echo $$ > pid; exec seq 1 100000000",
            env=dict(os.environ),
            on_line=on_line,
            time_limit=60,
            grace=1,
        )

    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            started = time.monotonic()
            with pytest.raises(OutboxError):
                asyncio.run(go())
            elapsed = time.monotonic() - started
            pid = int(Path(tmp, "pid").read_text())
        finally:
            os.chdir(cwd)
    assert elapsed < 15, f"the job waited {elapsed:.0f} s for a hook nobody read"
    assert not Path(f"/proc/{pid}").exists(), "the hook is still running"
