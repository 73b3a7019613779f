"""The restic wrapper against the real restic binaries (0.14 and 0.18) and
real local repositories (plus a real REST server when rclone is installed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.restic.commands import (
    GlobalOptions,
    RepoCredentials,
    ResticCommand,
    backup_cmd,
    check_cmd,
    diff_cmd,
    forget_cmd,
    init_cmd,
    ls_cmd,
    probe_cmd,
    restore_cmd,
    snapshots_cmd,
    stats_cmd,
    unlock_cmd,
)
from agent.restic.errors import ResticErrorKind, classify
from agent.restic.parse import (
    BackupError,
    BackupProgress,
    BackupSummary,
    parse_backup_line,
    parse_snapshots,
    parse_stats,
)
from agent.restic.runner import ResticResult, run_restic
from agent.restic.version import ResticVersion, detect_version
from tests.helpers.restic_bins import RESTIC_PARAMS

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
BASE_ENV = dict(os.environ)


@dataclass
class Run:
    result: ResticResult
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


async def run(
    cmd: ResticCommand,
    *,
    cancel: asyncio.Event | None = None,
    grace_seconds: float = 10.0,
    on_stdout: Callable[[str], None] | None = None,
) -> Run:
    out: list[str] = []
    err: list[str] = []

    def stdout(line: str) -> None:
        out.append(line)
        if on_stdout is not None:
            on_stdout(line)

    result = await run_restic(
        cmd, on_stdout=stdout, on_stderr=err.append, cancel=cancel, grace_seconds=grace_seconds
    )
    return Run(result, out, err)


@dataclass
class Repo:
    binary: str
    version: ResticVersion
    path: Path
    cache_dir: Path
    creds: RepoCredentials
    opts: GlobalOptions
    template: Path

    def with_password(self, password: str) -> RepoCredentials:
        return RepoCredentials(url=self.creds.url, password=password)

    def lock_files(self) -> list[str]:
        return sorted(p.name for p in (self.path / "locks").iterdir())


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One initialised repository per binary, copied by tests that need one.

    `restic init` calibrates its key derivation for ~2 s; copying a fresh
    repository keeps this file within its time budget.
    """
    return {}


@pytest.fixture(params=RESTIC_PARAMS)
async def repo(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    templates: dict[str, Path],
) -> Repo:
    binary: str = request.param
    version = await detect_version(binary)
    cache_dir = tmp_path / "cache"
    path = tmp_path / "repo"
    if binary not in templates:
        template = tmp_path_factory.mktemp("template") / "repo"
        opts = GlobalOptions(
            binary=binary, cache_dir=str(template.parent / "cache"), version=version
        )
        cmd = init_cmd(opts, RepoCredentials(url=str(template), password=PASSWORD), BASE_ENV)
        # This is the real `init` test: every other test copies its result.
        done = await run(cmd)
        assert done.result.exit_code == 0, done.stderr
        if version.init_json:
            assert json.loads(done.out[0])["message_type"] == "initialized"
        else:
            assert "created restic repository" in done.stdout
        templates[binary] = template
    return Repo(
        binary=binary,
        version=version,
        path=path,
        cache_dir=cache_dir,
        creds=RepoCredentials(url=str(path), password=PASSWORD),
        opts=GlobalOptions(binary=binary, cache_dir=str(cache_dir), version=version),
        template=templates[binary],
    )


async def init(repo: Repo) -> None:
    shutil.copytree(repo.template, repo.path)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(200_000),
        "sub/deeper/c with space.txt": b"gamma\n",
        "sub/deeper/\u00fcml\u00e4ut.txt": b"unicode name\n",
    }
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (root / "skip.tmp").write_bytes(b"excluded\n")
    return files


def restic_pids(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (our unique cache dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough incompressible data that a backup is still running when cancelled."""
    root = tmp_path_factory.mktemp("big")
    chunk = 8 * 1024 * 1024
    for index in range(25):
        (root / f"blob{index:02d}").write_bytes(os.urandom(chunk))
    return root


# --- the everyday flow ----------------------------------------------------------


async def test_full_cycle(repo: Repo, tmp_path: Path) -> None:
    await init(repo)
    again = await run(init_cmd(repo.opts, repo.creds, BASE_ENV))
    assert again.result.exit_code == 1
    assert "config file already exists" in again.result.stderr_tail
    kind = classify(again.result.exit_code, again.result.stderr_tail, repo.version)
    assert kind is ResticErrorKind.ALREADY_INITIALISED

    source = tmp_path / "source"
    files = make_tree(source)
    events: list[object] = []

    def on_line(line: str) -> None:
        parsed = parse_backup_line(line)
        if parsed is not None:
            events.append(parsed)

    backup = backup_cmd(
        repo.opts,
        repo.creds,
        BASE_ENV,
        includes=[str(source)],
        excludes=["*.tmp"],
        tags=["docs", "daily"],
        host="testhost",
    )
    done = await run(backup, on_stdout=on_line)
    assert done.result.exit_code == 0, done.stderr
    assert done.result.ok
    summaries = [e for e in events if isinstance(e, BackupSummary)]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.files_new == len(files)
    assert summary.total_files_processed == len(files)
    assert summary.total_bytes_processed == sum(len(d) for d in files.values())
    assert summary.snapshot_id is not None
    assert all(isinstance(e, BackupProgress | BackupSummary) for e in events)

    listed = await run(snapshots_cmd(repo.opts, repo.creds, BASE_ENV))
    assert listed.result.exit_code == 0, listed.stderr
    (snap,) = parse_snapshots(listed.stdout)
    assert snap.id.startswith(summary.snapshot_id)
    assert snap.short_id == snap.id[:8]
    assert snap.hostname == "testhost"
    assert snap.paths == (str(source),)
    assert set(snap.tags) == {"docs", "daily"}
    assert (snap.summary is not None) is repo.version.snapshot_summary
    if snap.summary is not None:
        assert snap.summary.files_new == len(files)

    stats = await run(stats_cmd(repo.opts, repo.creds, BASE_ENV))
    assert stats.result.exit_code == 0, stats.stderr
    info = parse_stats(stats.stdout)
    assert info.total_size > 200_000 * 0.9
    assert info.snapshots_count == 1
    assert (info.compression_ratio is not None) is (repo.version >= ResticVersion(0, 15, 0))

    probe = await run(probe_cmd(repo.opts, repo.creds, BASE_ENV))
    assert probe.result.exit_code == 0, probe.stderr
    assert json.loads(probe.stdout)["version"] in (1, 2)

    tree = await run(ls_cmd(repo.opts, repo.creds, BASE_ENV, snap.id))
    assert tree.result.exit_code == 0, tree.stderr
    nodes = [json.loads(line) for line in tree.out if line.strip()]
    paths = {n.get("path") for n in nodes}
    assert str(source / "sub/deeper/c with space.txt") in paths
    assert str(source / "skip.tmp") not in paths

    # Second snapshot: diff, forget (retention) and check on a real repo.
    (source / "a.txt").write_bytes(b"alpha changed\n")
    done = await run(backup)
    assert done.result.exit_code == 0, done.stderr
    listed = await run(snapshots_cmd(repo.opts, repo.creds, BASE_ENV, tags=["docs"]))
    old, new = parse_snapshots(listed.stdout)

    diff = await run(diff_cmd(repo.opts, repo.creds, BASE_ENV, old.id, new.id))
    assert diff.result.exit_code == 0, diff.stderr
    assert any("a.txt" in line for line in diff.out)

    forget = await run(
        forget_cmd(repo.opts, repo.creds, BASE_ENV, tag="docs", keep_last=1, host="testhost")
    )
    assert forget.result.exit_code == 0, forget.stderr
    groups = json.loads(forget.stdout)
    assert [len(g["remove"]) for g in groups] == [1]
    listed = await run(snapshots_cmd(repo.opts, repo.creds, BASE_ENV))
    assert [s.id for s in parse_snapshots(listed.stdout)] == [new.id]

    check = await run(check_cmd(repo.opts, repo.creds, BASE_ENV, read_data_subset_percent=50))
    assert check.result.exit_code == 0, check.stderr + check.stdout

    target = tmp_path / "restored"
    restore = await run(
        restore_cmd(repo.opts, repo.creds, BASE_ENV, new.id, str(target), [str(source / "sub")])
    )
    assert restore.result.exit_code == 0, restore.stderr
    restored_root = target / str(source).lstrip("/")
    assert (restored_root / "sub/b.bin").read_bytes() == files["sub/b.bin"]
    assert not (restored_root / "a.txt").exists()
    assert repo.lock_files() == []


async def test_unreadable_file_gives_exit_3_and_error_lines(repo: Repo) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run restic as nobody")
    # restic runs as nobody and meets a file nobody may read: the only way to
    # provoke a per-file error as root. pytest's tmp dirs are 0700, so this
    # one lives directly under /tmp.
    base = Path(tempfile.mkdtemp(prefix="rm-restic-nobody-"))
    try:
        base.chmod(0o755)
        repo_path, cache, source = base / "repo", base / "cache", base / "src"
        creds = RepoCredentials(url=str(repo_path), password=PASSWORD)
        opts = GlobalOptions(binary=repo.binary, cache_dir=str(cache), version=repo.version)
        shutil.copytree(repo.template, repo_path)
        source.mkdir(mode=0o755)
        (source / "ok").write_text("fine\n")
        locked = source / "locked"
        locked.write_text("secret\n")
        locked.chmod(0)
        cache.mkdir()
        subprocess.run(["chown", "-R", "nobody", str(repo_path), str(cache)], check=True)
        cmd = backup_cmd(opts, creds, BASE_ENV, includes=[str(source)], excludes=[], tags=[])
        setpriv = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        cmd = ResticCommand(argv=setpriv + cmd.argv, env=cmd.env, secrets=cmd.secrets)
        done = await run(cmd)
        assert done.result.exit_code == 3, done.stderr
        assert done.result.partial
        errors = [e for e in map(parse_backup_line, done.err) if isinstance(e, BackupError)]
        assert [e.item for e in errors] == [str(locked)]
        assert errors[0].during == "archival"
        assert errors[0].message.startswith(f"open {locked}")
        summaries = [e for e in map(parse_backup_line, done.out) if isinstance(e, BackupSummary)]
        assert len(summaries) == 1
        assert summaries[0].files_new == 1
        assert summaries[0].snapshot_id is not None
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- failures classified from what restic really says -------------------------


async def test_wrong_password(repo: Repo) -> None:
    await init(repo)
    bad = repo.with_password("not the password")
    for builder in (probe_cmd, snapshots_cmd):
        done = await run(builder(repo.opts, bad, BASE_ENV))
        expected_code = 12 if repo.version.exit_code_12 else 1
        assert done.result.exit_code == expected_code
        assert "wrong password or no key found" in done.result.stderr_tail
        assert classify(done.result.exit_code, done.result.stderr_tail, repo.version) is (
            ResticErrorKind.WRONG_PASSWORD
        )
        assert "not the password" not in done.result.stderr_tail


async def test_missing_repository(repo: Repo) -> None:
    done = await run(snapshots_cmd(repo.opts, repo.creds, BASE_ENV))
    assert done.result.exit_code == (10 if repo.version.exit_codes_10_11 else 1)
    assert "Is there a repository at the following location?" in done.result.stderr_tail
    assert classify(done.result.exit_code, done.result.stderr_tail, repo.version) is (
        ResticErrorKind.NOT_INITIALISED
    )
    # The exit code alone is enough where restic has it.
    if repo.version.exit_codes_10_11:
        assert classify(done.result.exit_code, "", repo.version) is (
            ResticErrorKind.NOT_INITIALISED
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_rest_server(repo: Repo) -> None:
    creds = RepoCredentials(url=f"rest:http://127.0.0.1:{free_port()}/x/", password=PASSWORD)
    cancel = asyncio.Event()
    # 0.14 gives up at once; 0.18 retries for minutes, so the caller's own
    # timeout stops it and classifies what it printed so far.
    loop = asyncio.get_running_loop()
    timer = loop.call_later(1.5, cancel.set)
    done = await run(probe_cmd(repo.opts, creds, BASE_ENV), cancel=cancel, grace_seconds=3)
    timer.cancel()
    assert "connection refused" in done.result.stderr_tail
    assert classify(done.result.exit_code, done.result.stderr_tail, repo.version) is (
        ResticErrorKind.REPO_UNREACHABLE
    )


# --- cancellation and locks -----------------------------------------------------


async def test_cancel_long_backup(repo: Repo, big_tree: Path) -> None:
    await init(repo)
    cancel = asyncio.Event()
    progress: list[BackupProgress] = []

    def on_line(line: str) -> None:
        parsed = parse_backup_line(line)
        if isinstance(parsed, BackupProgress):
            progress.append(parsed)
            if parsed.bytes_done > 0:
                cancel.set()

    cmd = backup_cmd(
        repo.opts, repo.creds, BASE_ENV, includes=[str(big_tree)], excludes=[], tags=[]
    )
    started = time.monotonic()
    done = await asyncio.wait_for(run(cmd, cancel=cancel, on_stdout=on_line), 60)
    assert done.result.cancelled is True
    assert not done.result.ok
    assert time.monotonic() - started < 30
    assert progress and progress[-1].percent < 100
    assert restic_pids(str(repo.cache_dir)) == []
    # SIGINT lets every version remove its lock (0.14 would leave one on SIGTERM).
    assert repo.lock_files() == []
    listed = await run(snapshots_cmd(repo.opts, repo.creds, BASE_ENV))
    assert parse_snapshots(listed.stdout) == []


async def test_task_cancel_stops_restic(repo: Repo, big_tree: Path) -> None:
    await init(repo)
    first_line = asyncio.Event()
    cmd = backup_cmd(
        repo.opts, repo.creds, BASE_ENV, includes=[str(big_tree)], excludes=[], tags=[]
    )
    task = asyncio.create_task(run(cmd, on_stdout=lambda _line: first_line.set()))
    await asyncio.wait_for(first_line.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restic_pids(str(repo.cache_dir)) == []
    assert repo.lock_files() == []


async def test_stale_lock_after_sigkill(repo: Repo, big_tree: Path) -> None:
    await init(repo)
    cmd = backup_cmd(
        repo.opts, repo.creds, BASE_ENV, includes=[str(big_tree)], excludes=[], tags=[]
    )
    proc = await asyncio.create_subprocess_exec(
        *cmd.argv,
        env=dict(cmd.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    # The first status line comes after the lock was taken.
    await asyncio.wait_for(proc.stdout.readline(), 30)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert len(repo.lock_files()) == 1

    # Built without a version so no --retry-lock: 0.18 would otherwise wait a
    # full minute for a lock that nobody will ever release.
    no_retry = GlobalOptions(binary=repo.binary, cache_dir=str(repo.cache_dir))
    forget = forget_cmd(no_retry, repo.creds, BASE_ENV, tag="x", keep_last=1)
    locked = await run(forget)
    assert locked.result.exit_code == (11 if repo.version.exit_codes_10_11 else 1)
    assert "repository is already locked" in locked.result.stderr_tail
    assert classify(locked.result.exit_code, locked.result.stderr_tail, repo.version) is (
        ResticErrorKind.LOCKED
    )

    # Plain unlock removes the stale lock (its PID is dead on this host).
    unlocked = await run(unlock_cmd(repo.opts, repo.creds, BASE_ENV))
    assert unlocked.result.exit_code == 0, unlocked.stderr
    assert repo.lock_files() == []
    again = await run(forget_cmd(repo.opts, repo.creds, BASE_ENV, tag="x", keep_last=1))
    assert again.result.exit_code == 0, again.stderr


# --- a real REST server with basic auth (rclone serve restic) ------------------

BACKEND_USER = "ag ent"
BACKEND_PASSWORD = "p@ss:w/rd%?#"


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rclone, htpasswd = shutil.which("rclone"), shutil.which("htpasswd")
    if rclone is None or htpasswd is None:
        pytest.skip("rclone and htpasswd are needed for a real REST server")
    root = tmp_path_factory.mktemp("rest")
    passfile = root / "htpasswd"
    subprocess.run(
        [htpasswd, "-B", "-b", "-c", str(passfile), BACKEND_USER, BACKEND_PASSWORD],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            rclone,
            "serve",
            "restic",
            str(root / "data"),
            "--addr",
            f"127.0.0.1:{port}",
            "--htpasswd",
            str(passfile),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("rclone serve restic did not start") from None
                time.sleep(0.1)
        yield f"rest:http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rest_credentials_via_env(repo: Repo, rest_server: str) -> None:
    creds = RepoCredentials(
        url=f"{rest_server}r{repo.version}-{time.monotonic_ns()}/",
        password=PASSWORD,
        username=BACKEND_USER,
        backend_password=BACKEND_PASSWORD,
    )
    init_run = await run(init_cmd(repo.opts, creds, BASE_ENV))
    assert init_run.result.exit_code == 0, init_run.stderr
    # The percent-encoded credentials live only in the environment.
    assert BACKEND_PASSWORD not in init_run.stdout + init_run.result.stderr_tail
    probe = await run(probe_cmd(repo.opts, creds, BASE_ENV))
    assert probe.result.exit_code == 0, probe.stderr

    wrong = RepoCredentials(
        url=creds.url, password=PASSWORD, username=BACKEND_USER, backend_password="nope-nope"
    )
    denied = await run(probe_cmd(repo.opts, wrong, BASE_ENV))
    assert denied.result.exit_code == 1
    assert "401 Unauthorized" in denied.result.stderr_tail
    assert classify(denied.result.exit_code, denied.result.stderr_tail, repo.version) is (
        ResticErrorKind.PERMISSION_DENIED
    )
