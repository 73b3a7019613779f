"""Hooks, forget/prune/check, stale locks, bandwidth and admin credentials in the
job runner, with real restic (0.14 and 0.18) on temporary repositories.

A few tests use a recording stand-in for restic where the exact command line
is the point (retention -> forget argv, bandwidth flags); they say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.jobs import (
    LOCKED_ADVICE,
    NO_GROUPS_ERROR,
    JobRunner,
    JobSettings,
    ResticBinary,
    effective_bandwidth,
    find_restic_binary,
    run_bandwidth,
)
from agent.outbox import Outbox
from agent.redact import Redactor
from tests.unit.agent.test_jobs import (
    PASSWORD,
    RESTICS,
    Harness,
    assert_well_ordered,
    creds,
    make_harness,
    run_cmd,
)

ADMIN_PASSWORD = "Adm1n-Only-F0r-This-Job"


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


def restic_env(repo: Path, password: str = PASSWORD) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": password,
    }


def init_repo(binary: ResticBinary, repo: Path, password: str = PASSWORD) -> Path:
    subprocess.run(
        [binary.path, "init", "--no-cache"],
        env=restic_env(repo, password),
        check=True,
        capture_output=True,
    )
    return repo


def backup(binary: ResticBinary, repo: Path, src: Path, tag: str, host: str) -> None:
    subprocess.run(
        [binary.path, "backup", "--no-cache", "-q", "--tag", tag, "--host", host, str(src)],
        env=restic_env(repo),
        check=True,
        capture_output=True,
    )


def snapshots(binary: ResticBinary, repo: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [binary.path, "snapshots", "--no-cache", "--json"],
        env=restic_env(repo),
        check=True,
        capture_output=True,
    )
    return json.loads(out.stdout) or []


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("hello\n" * 100)
    return src


def spec(name: str, *includes: Path | str, gid: int = 11, **kwargs: Any) -> Any:
    return protocol.SourceGroupSpec(
        id=gid, name=name, includes=[str(p) for p in includes], **kwargs
    )


def hook_lines(h: Harness, job_id: str) -> list[str]:
    return [line.text for line in h.lines(job_id) if line.stream == "hook"]


# -- hooks around a real backup ------------------------------------------------


async def test_a_failing_pre_hook_aborts_the_backup_and_the_post_hook_sees_failed(
    harness: Harness, restic: ResticBinary, tmp_path: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    marker = tmp_path / "post.txt"
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    group = spec(
        "db",
        source(tmp_path),
        pre_hook="echo dumping; echo oops >&2; exit 4",
        post_hook=(
            f'echo "$RM_JOB_STATUS $RM_JOB_ID $RM_SOURCE_GROUP ${{RM_JOB_CANCELLED:-no}}" '
            f"> {marker}; echo cleaned up"
        ),
    )
    await harness.runner.run(run_cmd("pre-fail", "backup", source_group=group))
    done = harness.finished("pre-fail")
    assert done.status == "failed"
    assert done.error == "the pre-hook exited with code 4; the backup did not run"
    assert hook_lines(harness, "pre-fail") == [
        "hook(pre): dumping",
        "hook(pre): oops",
        "hook(post): cleaned up",
    ]
    assert marker.read_text().split() == ["failed", "pre-fail", "db", "no"]
    # restic never ran: no snapshot, nothing reported.
    assert snapshots(restic, repo) == []
    assert harness.of("pre-fail", protocol.SnapshotsReport) == []
    assert_well_ordered(harness, "pre-fail")


async def test_the_post_hook_sees_success_and_host_defaults_fill_empty_slots(
    harness: Harness, restic: ResticBinary, tmp_path: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    env_dump = tmp_path / "pre-env.txt"
    harness.runner.update_settings(
        JobSettings(
            repository=creds(repo),
            default_pre_hook=f"env > {env_dump}; echo default pre",
            default_post_hook='echo "default post $RM_JOB_STATUS"',
        )
    )
    plain = spec("plain", source(tmp_path))
    await harness.runner.run(run_cmd("defaults", "backup", source_group=plain))
    done = harness.finished("defaults")
    assert done.status == "succeeded", done.error
    assert hook_lines(harness, "defaults") == [
        "hook(pre): default pre",
        "hook(post): default post succeeded",
    ]
    text = harness.text("defaults")
    # The hooks bracket restic: pre before the snapshot, post after it.
    assert text.index("default pre") < text.index("saved") < text.index("default post")
    assert len(snapshots(restic, repo)) == 1
    # A hook never sees the repository password.
    dumped = env_dump.read_text()
    assert PASSWORD not in dumped and "RESTIC_" not in dumped
    assert "RM_JOB_ID=defaults" in dumped

    own = spec("own", source(tmp_path), post_hook='echo "own post $RM_JOB_STATUS"; exit 2')
    await harness.runner.run(run_cmd("own-hooks", "backup", source_group=own))
    done = harness.finished("own-hooks")
    # A failing post-hook does not undo a good snapshot, but it shows.
    assert done.status == "succeeded"
    assert done.warnings and done.error == "the post-hook failed (see the log)"
    assert hook_lines(harness, "own-hooks") == [
        "hook(pre): default pre",
        "hook(post): own post succeeded",
    ]
    assert "warning: the post-hook exited with code 2" in harness.text("own-hooks")


async def test_the_post_hook_runs_after_a_failed_backup(
    harness: Harness, restic: ResticBinary, tmp_path: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    group = spec("gone", tmp_path / "does-not-exist", post_hook='echo "post: $RM_JOB_STATUS"')
    await harness.runner.run(run_cmd("bk-fail", "backup", source_group=group))
    done = harness.finished("bk-fail")
    assert done.status == "failed"
    assert hook_lines(harness, "bk-fail") == ["hook(post): post: failed"]


async def test_cancel_during_the_pre_hook_kills_it_and_still_runs_the_post_hook(
    tmp_path: Path,
) -> None:
    binary = await find_restic_binary("/usr/bin/restic")
    repo = init_repo(binary, tmp_path / "repo")
    async with make_harness(tmp_path, binary, hook_grace=0.5) as h:
        h.runner.update_settings(JobSettings(repository=creds(repo)))
        group = spec(
            "slow",
            source(tmp_path),
            pre_hook="echo waiting; sleep 60",
            post_hook='echo "post $RM_JOB_STATUS cancelled=$RM_JOB_CANCELLED"',
        )
        task = h.runner.start(run_cmd("cx", "backup", source_group=group))
        for _ in range(500):
            if "hook(pre): waiting" in h.text("cx"):
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        assert h.runner.cancel("cx")
        result = await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 5
        assert result is not None and result.status == "cancelled"
        assert h.finished("cx").status == "cancelled"
        assert hook_lines(h, "cx") == ["hook(pre): waiting", "hook(post): post failed cancelled=1"]
        assert snapshots(binary, repo) == []


async def test_a_hung_pre_hook_times_out(tmp_path: Path) -> None:
    binary = await find_restic_binary("/usr/bin/restic")
    repo = init_repo(binary, tmp_path / "repo")
    async with make_harness(tmp_path, binary, hook_timeout=0.5, hook_grace=0.3) as h:
        h.runner.update_settings(JobSettings(repository=creds(repo)))
        group = spec("hung", source(tmp_path), pre_hook="sleep 60")
        await asyncio.wait_for(h.runner.run(run_cmd("hung", "backup", source_group=group)), 10)
        done = h.finished("hung")
        assert done.status == "failed"
        assert done.error == (
            "the pre-hook did not finish within 0.5 s and was killed; the backup did not run"
        )


# -- forget ------------------------------------------------------------------------------


async def test_forget_applies_each_groups_retention_to_its_own_tag(
    harness: Harness, restic: ResticBinary, tmp_path: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    src = source(tmp_path)
    me = harness.runner.hostname
    for _ in range(4):
        backup(restic, repo, src, "web", me)
    for _ in range(3):
        backup(restic, repo, src, "db", me)
    backup(restic, repo, src, "logs", me)
    # Another host's snapshots with the same tag are not this agent's to prune.
    backup(restic, repo, src, "web", "some-other-host")
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    harness.runner.update_schedule_set(
        protocol.ScheduleSet(
            version=3,
            schedules=[],
            source_groups=[
                spec("web", src, gid=1, retention=protocol.Retention(keep_last=2)),
                spec("db", src, gid=2, retention=protocol.Retention(keep_last=1, keep_daily=1)),
                spec("logs", src, gid=3),
            ],
        )
    )
    await harness.runner.run(run_cmd("fg", "forget"))
    done = harness.finished("fg")
    assert done.status == "succeeded", done.error
    assert done.summary == {
        "groups": [
            {"group": "web", "kept": 2, "removed": 2},
            {"group": "db", "kept": 1, "removed": 2},
        ],
        "removed": 4,
    }
    left = snapshots(restic, repo)
    counts: dict[tuple[str, str], int] = {}
    for snap in left:
        key = (snap["tags"][0], snap["hostname"])
        counts[key] = counts.get(key, 0) + 1
    assert counts == {
        (("web"), me): 2,
        ("db", me): 1,
        ("logs", me): 1,
        ("web", "some-other-host"): 1,
    }
    text = harness.text("fg")
    assert "group logs: no retention policy set; all its snapshots are kept" in text
    assert "group web: kept 2, removed 2 snapshot(s)" in text
    # The app hears the new snapshot list and size before the job ends.
    (report,) = harness.of("fg", protocol.SnapshotsReport)
    assert len(report.snapshots) == 5
    assert harness.of("fg", protocol.RepoStatsReport)
    assert_well_ordered(harness, "fg")


FAKE_RESTIC = """#!/bin/sh
echo "$*" >> {log}
case " $* " in
  *" snapshots "*) echo '[]' ;;
  *" stats "*) echo '{{"total_size": 10}}' ;;
  *" forget "*) echo '[]' ;;
  *" check "*) echo 'no errors were found' ;;
esac
exit 0
"""


@pytest.fixture
async def recording_restic(tmp_path: Path) -> tuple[ResticBinary, Path]:
    """A stand-in restic that writes its argv to a file (the command line is what
    these tests check; the real restic runs in the tests above)."""
    real = await find_restic_binary("/usr/bin/restic")
    log = tmp_path / "argv.log"
    script = tmp_path / "fake-restic"
    script.write_text(FAKE_RESTIC.format(log=log))
    script.chmod(0o755)
    return dataclasses.replace(real, path=str(script)), log


def calls(log: Path, verb: str) -> list[list[str]]:
    out = []
    for line in log.read_text().splitlines():
        args = line.split()
        if verb in args:
            out.append(args[args.index(verb) :])
    return out


async def test_retention_becomes_one_forget_per_group(
    tmp_path: Path, recording_restic: tuple[ResticBinary, Path]
) -> None:
    binary, log = recording_restic
    async with make_harness(tmp_path, binary, hostname="web-01") as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        h.runner.update_schedule_set(
            protocol.ScheduleSet(
                version=1,
                schedules=[],
                source_groups=[
                    spec(
                        "etc",
                        "/etc",
                        retention=protocol.Retention(
                            keep_last=3, keep_daily=7, keep_weekly=4, keep_within="2y"
                        ),
                    ),
                    spec("empty", "/srv"),
                    spec(
                        "home", "/home", retention=protocol.Retention(keep_hourly=24, keep_yearly=2)
                    ),
                ],
            )
        )
        await h.runner.run(run_cmd("f1", "forget"))
        assert h.finished("f1").status == "succeeded"
    retry = ["--retry-lock", "1m"] if binary.version.retry_lock else []
    assert calls(log, "forget") == [
        ["forget", *retry, "--json", "--tag", "etc", "--host", "web-01", "--group-by", "host",
         "--keep-last", "3", "--keep-daily", "7", "--keep-weekly", "4", "--keep-within", "2y"],
        ["forget", *retry, "--json", "--tag", "home", "--host", "web-01", "--group-by", "host",
         "--keep-hourly", "24", "--keep-yearly", "2"],
    ]  # fmt: skip
    # The backups of the same agent name the same host.
    assert len(calls(log, "snapshots")) == 1


async def test_forget_of_one_group_and_forget_without_groups(
    tmp_path: Path, recording_restic: tuple[ResticBinary, Path]
) -> None:
    binary, log = recording_restic
    async with make_harness(tmp_path, binary, hostname="h") as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        await h.runner.run(run_cmd("f0", "forget"))
        assert h.finished("f0").error == NO_GROUPS_ERROR
        one = spec("one", "/x", retention=protocol.Retention(keep_last=1))
        await h.runner.run(run_cmd("f2", "forget", source_group=one))
        assert h.finished("f2").status == "succeeded"
        bad = spec("bad", "/x", retention=protocol.Retention(keep_within="soon"))
        await h.runner.run(run_cmd("f3", "forget", source_group=bad))
        assert "keep-within" in (h.finished("f3").error or "")
    assert [c[c.index("--tag") + 1] for c in calls(log, "forget")] == ["one"]


# -- prune / check / unlock / stale locks ------------------------------------------


async def test_prune_and_check_refresh_the_repository_view(
    harness: Harness, restic: ResticBinary, tmp_path: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    backup(restic, repo, source(tmp_path), "g", harness.runner.hostname)
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    await harness.runner.run(run_cmd("pr", "prune"))
    assert harness.finished("pr").status == "succeeded", harness.finished("pr").error
    assert harness.of("pr", protocol.RepoStatsReport) and harness.of("pr", protocol.SnapshotsReport)
    await harness.runner.run(run_cmd("ck", "check", args={"read_data_subset_percent": 50}))
    done = harness.finished("ck")
    assert done.status == "succeeded", done.error
    assert done.summary == {"read_data_subset_percent": 50, "num_errors": 0}
    assert "reading 50% of its data" in harness.text("ck")
    assert harness.of("ck", protocol.RepoStatsReport)


async def test_check_subset_comes_from_args_else_the_maintenance_settings(
    tmp_path: Path, recording_restic: tuple[ResticBinary, Path]
) -> None:
    binary, log = recording_restic
    async with make_harness(tmp_path, binary) as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        await h.runner.run(run_cmd("c1", "check"))
        h.runner.update_schedule_set(
            protocol.ScheduleSet(
                version=1,
                schedules=[],
                source_groups=[],
                maintenance=protocol.MaintenanceSpec(check_subset_percent=12),
            )
        )
        await h.runner.run(run_cmd("c2", "check"))
        await h.runner.run(run_cmd("c3", "check", args={"check_subset_percent": 100}))
        await h.runner.run(run_cmd("c4", "check", args={"read_data_subset_percent": 0}))
        assert "must be a whole number from 1 to 100" in (h.finished("c4").error or "")
    subsets = [c[c.index("--read-data-subset") + 1] for c in calls(log, "check")]
    assert subsets == ["5%", "12%", "100%"]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "new-password.fifo"
    os.mkfifo(path)
    yield path


def leave_stale_lock(binary: ResticBinary, repo: Path, fifo: Path) -> None:
    """Kill a real restic while it holds an exclusive lock.

    `key passwd` takes the exclusive lock, then blocks reading the new
    password from a FIFO nobody writes: a reliable moment to SIGKILL it.
    """
    proc = subprocess.Popen(
        [binary.path, "key", "passwd", "--no-cache", "--new-password-file", str(fifo)],
        env=restic_env(repo),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not any(f.stat().st_size > 0 for f in (repo / "locks").iterdir()):
        assert time.monotonic() < deadline, "restic never took its lock"
        time.sleep(0.02)
    # Killed while still writing it, the lock file is empty or cut short and
    # restic ignores it (seen on a loaded machine); by now restic is blocked
    # on the FIFO with the lock complete.
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    # Reaped, so restic sees the lock's PID as dead (a zombie still "exists").
    proc.wait()


async def test_a_stale_lock_is_reported_and_unlock_clears_it(
    harness: Harness, restic: ResticBinary, tmp_path: Path, fifo: Path
) -> None:
    repo = init_repo(restic, tmp_path / "repo")
    leave_stale_lock(restic, repo, fifo)
    harness.runner.update_settings(JobSettings(repository=creds(repo)))
    group = spec("g", source(tmp_path))
    await harness.runner.run(run_cmd("blocked", "backup", source_group=group))
    done = harness.finished("blocked")
    assert done.status == "failed"
    assert done.repo_status == "locked"
    assert done.error is not None and done.error.startswith(LOCKED_ADVICE)
    assert "unlock it from the Repo tab" in done.error
    assert "locked exclusively" in done.error  # restic's own words follow

    await harness.runner.run(run_cmd("ul", "unlock"))
    done = harness.finished("ul")
    assert done.status == "succeeded", done.error
    assert done.repo_status == "ready"
    assert list((repo / "locks").iterdir()) == []

    await harness.runner.run(run_cmd("after", "backup", source_group=group))
    assert harness.finished("after").status == "succeeded"
    assert harness.finished("after").repo_status is None


# -- bandwidth --------------------------------------------------------------------------


def test_bandwidth_override_wins_field_by_field() -> None:
    host = protocol.Bandwidth(upload_kib_s=1000, download_kib_s=2000)
    assert effective_bandwidth(host, None) == host
    assert effective_bandwidth(host, protocol.Bandwidth()) == host
    assert effective_bandwidth(host, protocol.Bandwidth(upload_kib_s=50)) == protocol.Bandwidth(
        upload_kib_s=50, download_kib_s=2000
    )
    assert effective_bandwidth(
        protocol.Bandwidth(), protocol.Bandwidth(download_kib_s=7)
    ) == protocol.Bandwidth(upload_kib_s=None, download_kib_s=7)
    # 0 is a value ("unlimited" to restic), not "use the host cap".
    assert effective_bandwidth(host, protocol.Bandwidth(upload_kib_s=0)).upload_kib_s == 0


def test_the_per_run_cap_may_come_in_args() -> None:
    cmd = protocol.CommandRun(
        job_id="j", kind="backup", actor="operator", args={"bandwidth": {"upload_kib_s": 64}}
    )
    assert run_bandwidth(cmd) == protocol.Bandwidth(upload_kib_s=64)
    explicit = dataclasses.replace(cmd, bandwidth=protocol.Bandwidth(download_kib_s=5))
    assert run_bandwidth(explicit) == protocol.Bandwidth(download_kib_s=5)
    junk = dataclasses.replace(cmd, args={"bandwidth": {"upload": "fast"}})
    assert run_bandwidth(junk) is None


async def test_bandwidth_flags_reach_restic(
    tmp_path: Path, recording_restic: tuple[ResticBinary, Path]
) -> None:
    binary, log = recording_restic
    async with make_harness(tmp_path, binary) as h:
        h.runner.update_settings(
            JobSettings(
                repository=creds(tmp_path / "r"),
                bandwidth=protocol.Bandwidth(upload_kib_s=100, download_kib_s=200),
            )
        )
        group = spec("g", tmp_path)
        await h.runner.run(run_cmd("b1", "backup", source_group=group))
        await h.runner.run(
            run_cmd(
                "b2",
                "backup",
                source_group=group,
                bandwidth=protocol.Bandwidth(upload_kib_s=50),
            )
        )
    backups = [line.split() for line in log.read_text().splitlines() if " backup " in line]

    def limits(argv: list[str]) -> tuple[str, str]:
        return (
            argv[argv.index("--limit-upload") + 1],
            argv[argv.index("--limit-download") + 1],
        )

    assert [limits(argv) for argv in backups] == [("100", "200"), ("50", "200")]


# -- admin credentials ------------------------------------------------------------------


async def test_admin_credentials_serve_one_job_and_never_touch_disk(tmp_path: Path) -> None:
    binary = await find_restic_binary("/usr/bin/restic")
    repo = init_repo(binary, tmp_path / "repo", ADMIN_PASSWORD)
    state = tmp_path / "state"
    events: list[protocol.Message] = []
    shared = Redactor(["bearer-token-xyz"])
    with Outbox(state / "outbox.sqlite3") as outbox:
        runner = JobRunner(
            emit=events.append, store=outbox, state_dir=state, redactor=shared, restic=binary
        )
        admin = protocol.RepoCredentials(url=str(repo), password=ADMIN_PASSWORD)
        for job_id, kind in (("adm-prune", "prune"), ("adm-check", "check")):
            await runner.run(
                protocol.CommandRun(job_id=job_id, kind=kind, actor="system", credentials=admin)  # type: ignore[arg-type]
            )
        # Without them the next job has nothing: they were not kept.
        await runner.run(protocol.CommandRun(job_id="after", kind="prune", actor="system"))
    finished = {m.job_id: m for m in events if isinstance(m, protocol.JobFinished)}
    assert finished["adm-prune"].status == "succeeded", finished["adm-prune"].error
    assert finished["adm-check"].status == "succeeded", finished["adm-check"].error
    assert finished["after"].status == "failed"
    # Not in the agent's long-lived redactor either (a job-scoped copy had it).
    assert ADMIN_PASSWORD not in shared
    for message in events:
        assert ADMIN_PASSWORD not in protocol.encode(message)
    leaks = [
        p for p in state.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()
    ]
    assert leaks == []
    assert any(state.rglob("*.sqlite3*"))


# -- scheduled jobs: schedule id, args, retry announcement -----------------------------------


async def test_a_failed_scheduled_backup_announces_its_retry(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    async with make_harness(tmp_path, None, clock=lambda: now) as h:
        group = spec("etc", "/etc", retry_max=2, retry_backoff_seconds=90)
        cmd = protocol.CommandRun(
            job_id="s1",
            kind="backup",
            actor="schedule",
            source_group=group,
            args={"window": "2023-11-14T22:13:00+00:00", "attempt": 1},
        )
        result = await h.runner.run(cmd, schedule_id=4)
        assert result is not None and result.status == "failed"
        assert result.retry_at == now + 90
        (started,) = h.of("s1", protocol.JobStarted)
        assert started.schedule_id == 4 and started.source_group_id == 11
        assert started.args == {"window": "2023-11-14T22:13:00+00:00", "attempt": 1}
        text = h.text("s1")
        assert "scheduled backup for the 2023-11-14T22:13:00+00:00 window" in text
        assert "retry 1 of 2 will run at" in text and "(in 90 s)" in text
        last = dataclasses.replace(
            cmd,
            job_id="s3",
            args={**cmd.args, "attempt": 3, "retry_of": "s1", "previous_job_id": "s2"},
        )
        result = await h.runner.run(last, schedule_id=4)
        assert result is not None and result.retry_at is None
        assert "retry 2 of the scheduled backup" in h.text("s3")
        assert "no retry: all 2 retries of this scheduled backup failed" in h.text("s3")
        # Operator backups are not retried.
        manual = dataclasses.replace(cmd, job_id="op", actor="operator")
        result = await h.runner.run(manual)
        assert result is not None and result.retry_at is None
        assert "retry" not in h.text("op")


async def test_forget_uses_the_groups_listed_with_the_job_first(
    tmp_path: Path, recording_restic: tuple[ResticBinary, Path]
) -> None:
    # The control plane sends the retention as it was when the job went out.
    binary, log = recording_restic
    async with make_harness(tmp_path, binary, hostname="h") as h:
        h.runner.update_settings(JobSettings(repository=creds(tmp_path / "r")))
        h.runner.update_schedule_set(
            protocol.ScheduleSet(
                version=1,
                schedules=[],
                source_groups=[spec("stale", "/x", retention=protocol.Retention(keep_last=9))],
            )
        )
        listed = [
            {"id": 1, "name": "etc", "retention": {"keep_daily": 7}},
            {"id": 2, "name": "www", "retention": {"keep_last": 2, "keep_within": "30d"}},
        ]
        await h.runner.run(run_cmd("fa", "forget", args={"groups": listed}))
        assert h.finished("fa").status == "succeeded"
        bad = [{"name": "etc", "retention": {"keep_daily": "seven"}}]
        await h.runner.run(run_cmd("fb", "forget", args={"groups": bad}))
        assert "args.groups[0].retention.keep_daily" in (h.finished("fb").error or "")
    tags = [(c[c.index("--tag") + 1], c[c.index("--group-by") + 2 :]) for c in calls(log, "forget")]
    assert tags == [
        ("etc", ["--keep-daily", "7"]),
        ("www", ["--keep-last", "2", "--keep-within", "30d"]),
    ]
