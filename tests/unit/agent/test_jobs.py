"""JobRunner with real restic (0.14 and 0.18) on temporary repositories."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.jobs import (
    INTERRUPTED_ERROR,
    NO_CREDENTIALS_ERROR,
    WAITING_MESSAGE,
    JobRunner,
    JobSettings,
    ResticBinary,
    find_restic_binary,
)
from agent.outbox import Outbox
from agent.redact import MASK, Redactor
from agent.version import __version__

REPO_ROOT = Path(__file__).resolve().parents[3]
RESTICS = {
    "restic-0.14": Path("/usr/bin/restic"),
    "restic-0.18": REPO_ROOT / ".cache" / "restic-0.18" / "usr" / "bin" / "restic",
}
PASSWORD = "Sup3r-Secret-Passw0rd"
BEARER = "agent-bearer-token-9f8e7d"


@dataclass
class Harness:
    runner: JobRunner
    outbox: Outbox
    emitted: list[protocol.Message] = field(default_factory=list)

    def emit(self, message: protocol.Message) -> None:
        # Every event must be encodable (fits a frame) and carry no secret.
        frame = protocol.encode(message)
        assert PASSWORD not in frame, frame[:500]
        assert BEARER not in frame
        assert message.DURABLE
        self.emitted.append(message)

    def events(self, job_id: str) -> list[Any]:
        return [m for m in self.emitted if getattr(m, "job_id", None) == job_id]

    def finished(self, job_id: str) -> protocol.JobFinished:
        (done,) = [m for m in self.events(job_id) if isinstance(m, protocol.JobFinished)]
        return done

    def lines(self, job_id: str) -> list[protocol.LogLine]:
        return [
            line for m in self.events(job_id) if isinstance(m, protocol.JobLog) for line in m.lines
        ]

    def text(self, job_id: str) -> str:
        return "\n".join(line.text for line in self.lines(job_id))

    def of(self, job_id: str, cls: type[Any]) -> list[Any]:
        return [m for m in self.events(job_id) if isinstance(m, cls)]


def creds(repo: Path, password: str = PASSWORD) -> protocol.RepoCredentials:
    return protocol.RepoCredentials(url=str(repo), password=password)


def run_cmd(job_id: str, kind: str, **kwargs: Any) -> protocol.CommandRun:
    return protocol.CommandRun(job_id=job_id, kind=kind, actor="operator", **kwargs)  # type: ignore[arg-type]


def group(name: str, *includes: Path | str, excludes: list[str] | None = None) -> Any:
    return protocol.SourceGroupSpec(
        id=11, name=name, includes=[str(p) for p in includes], excludes=excludes or []
    )


def assert_well_ordered(h: Harness, job_id: str) -> None:
    events = h.events(job_id)
    assert isinstance(events[0], protocol.JobStarted)
    assert isinstance(events[-1], protocol.JobFinished)
    seqs = [e.seq for e in events if hasattr(e, "seq")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    line_seqs = [line.seq for line in h.lines(job_id)]
    assert line_seqs == sorted(line_seqs) and len(set(line_seqs)) == len(line_seqs)
    # Lines and events share one counter: no number is used twice.
    assert not set(line_seqs) & set(seqs)
    assert job_id not in [running[0] for running in h.outbox.running()]


@pytest.fixture(params=sorted(RESTICS))
async def restic(request: pytest.FixtureRequest) -> ResticBinary:
    path = RESTICS[request.param]
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return await find_restic_binary(str(path))


@pytest.fixture
async def harness(tmp_path: Path, restic: ResticBinary) -> AsyncIterator[Harness]:
    async with make_harness(tmp_path, restic) as h:
        yield h


class make_harness:  # reads like a function at the call site
    def __init__(self, tmp_path: Path, restic: ResticBinary | None, **kwargs: Any) -> None:
        self._tmp = tmp_path
        self._restic = restic
        self._kwargs = kwargs

    async def __aenter__(self) -> Harness:
        outbox = Outbox(self._tmp / "state" / "outbox.sqlite3")
        h = Harness(runner=None, outbox=outbox)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {"grace_seconds": 2.0}
        kwargs.update(self._kwargs)
        h.runner = JobRunner(
            emit=h.emit,
            store=outbox,
            state_dir=self._tmp / "state",
            redactor=Redactor([BEARER]),
            restic=self._restic,
            **kwargs,
        )
        self.h = h
        return h

    async def __aexit__(self, *exc: object) -> None:
        await self.h.runner.shutdown()
        self.h.outbox.close()


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised (v1) repository both restic versions can use."""
    repo = tmp_path_factory.mktemp("shared") / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    subprocess.run(
        ["/usr/bin/restic", "init", "--cache-dir", str(repo.parent / "cache")],
        env=env,
        check=True,
        capture_output=True,
    )
    return repo


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("big") / "data"
    root.mkdir()
    for i in range(4):
        (root / f"blob{i}.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def small_tree(base: Path) -> Path:
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / f"file{i}.txt").write_text(f"content {i}\n" * 100)
    (src / "sub" / "random.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    return src


# -- init ------------------------------------------------------------------


async def test_init_fresh_repository(harness: Harness, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    await harness.runner.run(run_cmd("init-1", "init"))
    done = harness.finished("init-1")
    assert done.status == "succeeded", done.error
    assert done.repo_status == "ready"
    assert (repo / "config").exists()
    (snaps,) = harness.of("init-1", protocol.SnapshotsReport)
    assert snaps.snapshots == []
    (stats,) = harness.of("init-1", protocol.RepoStatsReport)
    assert stats.total_size >= 0
    assert "created restic repository" in harness.text("init-1")
    assert str(repo) not in harness.text("init-1").replace("created restic repository", "")
    assert_well_ordered(harness, "init-1")
    # restic's cache lives in the agent's state dir, not in ~/.cache.
    assert (tmp_path / "state" / "cache").is_dir()


async def test_init_already_initialised_is_fine(harness: Harness, shared_repo: Path) -> None:
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    await harness.runner.run(run_cmd("init-2", "init"))
    done = harness.finished("init-2")
    assert done.status == "succeeded", done.error
    assert done.repo_status == "ready"
    assert "already initialised" in harness.text("init-2")
    assert_well_ordered(harness, "init-2")


async def test_init_with_wrong_password_reports_restics_error(
    harness: Harness, shared_repo: Path
) -> None:
    wrong = "Wr0ng-Passw0rd-Value"
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo, wrong)))
    await harness.runner.run(run_cmd("init-3", "init"))
    done = harness.finished("init-3")
    assert done.status == "failed"
    assert done.repo_status == "init_failed"
    assert done.error is not None
    assert "wrong password" in done.error.lower() or "no key found" in done.error.lower()
    assert len(done.error.encode()) <= 2048
    assert harness.of("init-3", protocol.SnapshotsReport) == []
    for message in harness.emitted:
        assert wrong not in protocol.encode(message)
    assert_well_ordered(harness, "init-3")


# -- backup ------------------------------------------------------------------


async def test_backup_reports_progress_summary_and_snapshots(
    harness: Harness, shared_repo: Path, tmp_path: Path
) -> None:
    src = small_tree(tmp_path)
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    tag = f"docs-{uuid.uuid4().hex[:8]}"
    await harness.runner.run(
        run_cmd("bk-1", "backup", source_group=group(tag, src, excludes=["*.tmp"]))
    )
    done = harness.finished("bk-1")
    assert done.status == "succeeded", done.error
    assert done.exit_code == 0
    assert done.warnings is False
    assert done.summary is not None
    assert done.summary["files_new"] >= 21
    snapshot_id = done.summary["snapshot_id"]
    assert isinstance(snapshot_id, str) and len(snapshot_id) >= 8

    progress = harness.of("bk-1", protocol.JobProgress)
    assert progress, "restic --json status lines become progress events"
    for p in progress:
        assert 0 <= p.progress.percent <= 100
    assert f"snapshot {snapshot_id[:8]} saved: " in harness.text("bk-1")
    assert " new, " in harness.text("bk-1")

    (snaps,) = harness.of("bk-1", protocol.SnapshotsReport)
    mine = [s for s in snaps.snapshots if tag in s.tags]
    # restic 0.14 reports the short id in its summary, newer ones the full id.
    assert len(mine) == 1 and mine[0].id.startswith(snapshot_id)
    assert mine[0].paths == [str(src)]
    assert harness.of("bk-1", protocol.RepoStatsReport)[0].total_size > 0
    kinds = [type(e).__name__ for e in harness.events("bk-1")]
    # The app must see the new snapshot by the time the job is done.
    assert kinds.index("SnapshotsReport") < kinds.index("JobFinished")
    assert kinds.index("RepoStatsReport") < kinds.index("JobFinished")
    started = harness.events("bk-1")[0]
    assert started.kind == "backup" and started.source_group_id == 11
    assert_well_ordered(harness, "bk-1")


async def test_backup_with_unreadable_file_succeeds_with_warnings_and_no_secret_leaks(
    harness: Harness, shared_repo: Path, tmp_path: Path
) -> None:
    # Tests run as root, so file modes cannot make a file unreadable; reading
    # restic's own /proc/self/mem fails with EIO, which restic reports as a
    # per-file error and exit code 3.
    src = small_tree(tmp_path)
    # Paths that spell the password make restic print it (in a warning, in
    # progress, in the snapshot's paths); none of it may reach the app.
    # Harness.emit refuses any event that contains it.
    (src / f"{PASSWORD}.txt").write_text("x")
    missing = tmp_path / f"gone-{PASSWORD}"
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    await harness.runner.run(
        run_cmd("bk-3", "backup", source_group=group("warn", src, missing, "/proc/self/mem"))
    )
    done = harness.finished("bk-3")
    assert done.status == "succeeded", done.error
    assert done.exit_code == 3
    assert done.warnings is True
    assert done.summary is not None and done.summary["snapshot_id"]
    text = harness.text("bk-3")
    assert "/proc/self/mem" in text
    assert "some files could not be read" in text
    assert f"gone-{MASK}" in text
    stderr = [line for line in harness.lines("bk-3") if line.stream == "stderr"]
    assert any("/proc/self/mem" in line.text for line in stderr)
    assert harness.of("bk-3", protocol.SnapshotsReport)
    for message in harness.emitted:
        assert PASSWORD not in protocol.encode(message)
    assert_well_ordered(harness, "bk-3")


async def test_backup_failure_reports_restics_error(
    harness: Harness, shared_repo: Path, tmp_path: Path
) -> None:
    src = small_tree(tmp_path)
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    bad = src / "file1.txt" / "not-a-dir"
    await harness.runner.run(run_cmd("bk-4", "backup", source_group=group("bad", src, bad)))
    done = harness.finished("bk-4")
    assert done.status == "failed"
    assert done.exit_code == 1
    assert done.error is not None and "not a directory" in done.error
    assert harness.of("bk-4", protocol.SnapshotsReport) == []
    assert_well_ordered(harness, "bk-4")


async def test_cancel_mid_backup_and_lock_waiting(
    harness: Harness, shared_repo: Path, big_tree: Path
) -> None:
    # A 1 MiB/s cap (restic applies it to local repositories too) keeps the
    # backup running long enough to be cancelled, and proves caps reach restic.
    harness.runner.update_settings(
        JobSettings(repository=creds(shared_repo), bandwidth=protocol.Bandwidth(upload_kib_s=1024))
    )
    first = harness.runner.start(run_cmd("bk-c", "backup", source_group=group("big", big_tree)))
    # A second and third job on the same repository queue behind the first.
    second = harness.runner.start(run_cmd("snap-w", "snapshots"))
    third = harness.runner.start(run_cmd("snap-x", "snapshots"))
    for _ in range(500):
        if harness.of("bk-c", protocol.JobProgress) and WAITING_MESSAGE in harness.text("snap-w"):
            break
        await asyncio.sleep(0.01)
    assert harness.of("bk-c", protocol.JobProgress), "backup never reported progress"
    assert sorted(harness.runner.running_job_ids()) == ["bk-c", "snap-w", "snap-x"]
    # Cancelling a job that waits for the lock never runs restic for it.
    assert harness.runner.cancel("snap-x")
    await asyncio.wait_for(third, 10)
    assert harness.finished("snap-x").status == "cancelled"
    assert harness.of("snap-x", protocol.SnapshotsReport) == []

    assert harness.runner.cancel("bk-c")
    await asyncio.wait_for(first, 15)
    done = harness.finished("bk-c")
    assert done.status == "cancelled"
    assert done.summary is None
    assert_well_ordered(harness, "bk-c")

    await asyncio.wait_for(second, 30)
    waited = harness.finished("snap-w")
    assert waited.status == "succeeded", waited.error
    assert WAITING_MESSAGE in harness.text("snap-w")
    assert harness.of("snap-w", protocol.SnapshotsReport)
    assert harness.runner.running_job_ids() == []
    assert not harness.runner.cancel("bk-c")


async def test_shutdown_cancels_running_jobs(
    tmp_path: Path, shared_repo: Path, big_tree: Path
) -> None:
    restic = await find_restic_binary("/usr/bin/restic")
    async with make_harness(tmp_path, restic) as h:
        h.runner.update_settings(JobSettings(repository=creds(shared_repo)))
        # Per-run caps override the host's.
        slow = protocol.Bandwidth(upload_kib_s=1024)
        h.runner.start(
            run_cmd("bk-s", "backup", source_group=group("big", big_tree), bandwidth=slow)
        )
        for _ in range(500):
            if h.of("bk-s", protocol.JobProgress):
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(h.runner.shutdown(), 15)
        assert h.finished("bk-s").status == "cancelled"
        assert h.outbox.running() == []


# -- without restic / without credentials / unknown kinds ----------------------


async def test_jobs_without_credentials_or_restic_fail_clearly(
    tmp_path: Path, restic: ResticBinary
) -> None:
    async with make_harness(tmp_path / "a", restic) as h:
        await h.runner.run(run_cmd("nc", "snapshots"))
        assert h.finished("nc").error == NO_CREDENTIALS_ERROR
        assert_well_ordered(h, "nc")
    async with make_harness(tmp_path / "b", None) as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        await h.runner.run(run_cmd("nr", "init"))
        done = h.finished("nr")
        assert done.status == "failed"
        assert done.error is not None and "restic was not found" in done.error


async def test_backup_without_source_group_fails(harness: Harness, tmp_path: Path) -> None:
    harness.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
    await harness.runner.run(run_cmd("ng", "backup"))
    assert "source group" in (harness.finished("ng").error or "")


async def test_unsupported_kind(tmp_path: Path) -> None:
    async with make_harness(tmp_path, None) as h:
        await h.runner.run(run_cmd("pr", "update"))
        done = h.finished("pr")
        assert done.status == "failed"
        assert done.error == f"job kind update is not supported by agent {__version__}"
        assert_well_ordered(h, "pr")
        # A command.run the server repeats (say, after a reconnect) does not
        # run the job again: its events are already in the outbox.
        await h.runner.run(run_cmd("pr", "update"))
        h.runner.reject("pr", "update", "operator", "again")
        assert len(h.of("pr", protocol.JobFinished)) == 1
        assert len(h.of("pr", protocol.JobStarted)) == 1


async def test_a_command_repeated_after_an_agent_restart_does_not_run_twice(tmp_path: Path) -> None:
    # The server re-sends jobs still "queued" on hello; the agent may have
    # started one just before it restarted, and its events wait in the outbox.
    async with make_harness(tmp_path, None) as h:
        await h.runner.run(run_cmd("once", "prune"))
    async with make_harness(tmp_path, None) as again:
        await again.runner.run(run_cmd("once", "prune"))
        assert again.of("once", protocol.JobStarted) == []


async def test_command_credentials_are_used_for_that_job_only(
    harness: Harness, shared_repo: Path, tmp_path: Path
) -> None:
    admin = creds(shared_repo)
    await harness.runner.run(run_cmd("adm", "snapshots", credentials=admin))
    assert harness.finished("adm").status == "succeeded"
    await harness.runner.run(run_cmd("after", "snapshots"))
    assert harness.finished("after").error == NO_CREDENTIALS_ERROR


async def test_unlock(harness: Harness, shared_repo: Path) -> None:
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    await harness.runner.run(run_cmd("ul", "unlock"))
    assert harness.finished("ul").status == "succeeded"


async def test_stats_job(harness: Harness, shared_repo: Path) -> None:
    harness.runner.update_settings(JobSettings(repository=creds(shared_repo)))
    await harness.runner.run(run_cmd("st", "stats"))
    assert harness.finished("st").status == "succeeded"
    (stats,) = harness.of("st", protocol.RepoStatsReport)
    assert stats.job_id == "st"


# -- orphans -------------------------------------------------------------------


async def test_recover_orphans(tmp_path: Path) -> None:
    async with make_harness(tmp_path, None) as h:
        h.outbox.mark_running("old-1", "backup")
        h.outbox.next_seq("old-1")  # job.started went out before the restart
        h.outbox.mark_running("old-2", "init")
        assert sorted(h.runner.recover_orphans()) == ["old-1", "old-2"]
        for job_id in ("old-1", "old-2"):
            done = h.finished(job_id)
            assert done.status == "failed"
            assert done.error == INTERRUPTED_ERROR
            lines = h.lines(job_id)
            assert [line.stream for line in lines] == ["agent"]
            assert INTERRUPTED_ERROR in lines[0].text
        assert h.finished("old-1").seq > 1
        assert h.outbox.running() == []
        assert h.runner.recover_orphans() == []


# -- batching and throttling (a scripted stand-in for restic) ------------------

FAKE_RESTIC = r"""#!/bin/sh
case " $* " in
  *" backup "*)
    i=0
    while [ $i -lt 30 ]; do
      echo '{"message_type":"status","percent_done":0.'$i',"total_files":30,"files_done":'$i',"total_bytes":3000,"bytes_done":'$((i*100))',"seconds_elapsed":1}'
      i=$((i+1))
    done
    echo '{"message_type":"status","percent_done":1,"total_files":30,"files_done":30,"total_bytes":3000,"bytes_done":3000}'
    echo '{"message_type":"summary","files_new":30,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":1,"tree_blobs":1,"data_added":3000,"total_files_processed":30,"total_bytes_processed":3000,"total_duration":0.1}'
    ;;
  *" unlock "*)
    i=0
    while [ $i -lt 450 ]; do echo "line $i" >&2; i=$((i+1)); done
    head -c 100000 /dev/zero | tr '\0' 'x' >&2
    echo >&2
    echo "password is $RESTIC_PASSWORD" >&2
    ;;
esac
exit 0
"""


@pytest.fixture
async def fake_restic(tmp_path: Path) -> ResticBinary:
    real = await find_restic_binary("/usr/bin/restic")
    script = tmp_path / "fake-restic"
    script.write_text(FAKE_RESTIC)
    script.chmod(0o755)
    return dataclasses.replace(real, path=str(script))


async def test_log_lines_are_batched_truncated_and_redacted(
    tmp_path: Path, fake_restic: ResticBinary
) -> None:
    async with make_harness(tmp_path, fake_restic, log_flush_interval=10.0) as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        await h.runner.run(run_cmd("logs", "unlock"))
        assert h.finished("logs").status == "succeeded"
        batches = h.of("logs", protocol.JobLog)
        assert all(len(b.lines) <= 200 for b in batches)
        assert len(batches) >= 3
        texts = [line.text for line in h.lines("logs")]
        assert texts[:450] == [f"line {i}" for i in range(450)]
        long_line = texts[450]
        assert long_line.startswith("x" * 1000) and "truncated" in long_line
        assert len(long_line.encode()) < 64 * 1024 + 100
        assert f"password is {MASK}" in texts
        assert_well_ordered(h, "logs")


async def test_progress_is_throttled_but_the_last_state_is_sent(
    tmp_path: Path, fake_restic: ResticBinary
) -> None:
    async with make_harness(tmp_path, fake_restic, progress_interval=5.0) as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        await h.runner.run(run_cmd("thr", "backup", source_group=group("g", tmp_path)))
        done = h.finished("thr")
        assert done.status == "succeeded", done.error
        progress = [p.progress for p in h.of("thr", protocol.JobProgress)]
        assert len(progress) == 2
        assert progress[0].percent == 0
        assert progress[-1].percent == 100
        assert progress[-1].files_done == 30
        # No snapshot id in the summary: nothing to refresh.
        assert h.of("thr", protocol.SnapshotsReport) == []
        assert done.summary is not None and done.summary["files_new"] == 30
        assert_well_ordered(h, "thr")


async def test_a_repository_that_never_answers_fails_the_probe_in_bounded_time(tmp_path):
    """restic 0.18 retries an unreachable REST server for minutes; the probe must not."""
    import asyncio

    from agent import protocol
    from agent.jobs import JobRunner, ResticBinary
    from agent.outbox import Outbox
    from agent.redact import Redactor
    from agent.restic.version import ResticVersion

    # A stand-in restic that keeps "retrying" forever, as 0.18 does.
    fake = tmp_path / "restic"
    fake.write_text(
        "#!/bin/sh\necho 'Stat(<config/>) returned error, retrying after 1s: connection refused' >&2\nexec sleep 600\n"
    )
    fake.chmod(0o755)
    events: list[protocol.Message] = []
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    runner = JobRunner(
        emit=events.append,
        store=outbox,
        state_dir=tmp_path,
        redactor=Redactor(),
        restic=ResticBinary(str(fake), ResticVersion(0, 18, 0)),
        grace_seconds=1.0,
        probe_timeout=1.5,
    )
    from agent.jobs import JobSettings

    runner.update_settings(
        JobSettings(
            repository=protocol.RepoCredentials(
                url="rest:http://127.0.0.1:1/", password="pw12345678"
            )
        )
    )
    cmd = protocol.CommandRun(job_id="j" * 32, kind="init", actor="system")
    await asyncio.wait_for(runner.run(cmd), timeout=20)
    finished = [e for e in events if isinstance(e, protocol.JobFinished)]
    assert len(finished) == 1
    assert finished[0].status == "failed"
    assert finished[0].repo_status == "init_failed"
    assert "did not finish within 2 s" in finished[0].error
    assert "connection refused" in finished[0].error
    outbox.close()


async def test_cancel_of_a_job_that_never_arrived_is_reported_cancelled(tmp_path: Path) -> None:
    async with make_harness(tmp_path, None) as h:
        assert h.runner.cancel("never-seen")
        (done,) = h.of("never-seen", protocol.JobFinished)
        assert done.status == "cancelled"
        # A second cancel, or the command itself arriving late, changes nothing.
        assert not h.runner.cancel("never-seen")
        await h.runner.run(run_cmd("never-seen", "prune"))
        assert h.of("never-seen", protocol.JobStarted) == []
