"""restore and diff jobs with real restic (0.14 and 0.18)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.jobs import JobSettings, ResticBinary, find_restic_binary
from tests.unit.agent.restic_repo import (
    RESTICS,
    WEIRD,
    Repo,
    backup,
    harness_for,
    make_repo,
    restic,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_repo(tmp_path_factory.mktemp("restore"))


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repo, str]:
    """One 40 MiB file in 4 MiB packs: at 2 MiB/s its restore takes 20 s.

    restic 0.18 downloads a whole pack before it writes (and reports) any
    of it; small packs keep its progress from coming in 16 MiB steps."""
    base = tmp_path_factory.mktemp("big")
    src = base / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    repo = base / "repo"
    restic(repo, "init")
    return Repo(repo, src, [backup(repo, src, "--pack-size", "4")], {}), str(src / "big.bin")


@pytest.fixture(params=sorted(RESTICS))
async def binary(request: pytest.FixtureRequest) -> ResticBinary:
    path = RESTICS[request.param]
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return await find_restic_binary(str(path))


def restore(job_id: str, **args: Any) -> protocol.CommandRun:
    return protocol.CommandRun(job_id=job_id, kind="restore", actor="operator", args=args)


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


async def test_restore_selected_paths_to_a_new_directory(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    src = repo.src
    target = tmp_path / "out" / "restored"
    paths = [f"{src}/docs/a.txt", f"{src}/photos/img03.png", f"{src}/docs/sub"]
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            restore("r1", snapshot_id=repo.snapshots[0], paths=paths, target_dir=str(target))
        )
        done = h.finished("r1")
        assert done.status == "succeeded", (done.error, h.text("r1"))
    wanted = [f"{src}/docs/a.txt", f"{src}/photos/img03.png", f"{src}/docs/sub/deep/c.bin"]
    landed = tree_files(target)
    assert sorted(landed) == sorted(p.lstrip("/") for p in wanted)
    for path in wanted:
        # Snapshot 1's content, byte for byte (a.txt has changed since).
        assert landed[path.lstrip("/")] == repo.expected[path], path
    size = sum(len(repo.expected[p]) for p in wanted)
    assert done.summary == {"files_restored": 3, "bytes_restored": size, "target": str(target)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    progress = h.progress("r1")
    assert progress and progress[-1].percent == 100.0
    assert progress[-1].files_total == 3 and progress[-1].bytes_total == size
    text = h.text("r1")
    assert f"restoring 3 path(s) of snapshot {repo.snapshots[0][:8]} (3 files" in text
    assert f"restored 3 files ({size / 1024:.1f} KiB) to {target}" in text


async def test_a_name_with_pattern_characters_restores_only_itself(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    # restic reads --include as a pattern; unescaped, "[ir]" and "*" would
    # match the decoy "weird-name.txt" and not the file itself.
    target = tmp_path / "out"
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            restore(
                "r2",
                snapshot_id=repo.snapshots[1],
                paths=[f"{repo.src}/weird/{WEIRD}"],
                target_dir=str(target),
            )
        )
        assert h.finished("r2").status == "succeeded", h.finished("r2").error
    assert list(tree_files(target)) == [f"{str(repo.src).lstrip('/')}/weird/{WEIRD}"]


async def test_default_target_is_under_the_restore_dir_with_home_expanded(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = await find_restic_binary(str(RESTICS["0.18"]))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    settings = JobSettings(repository=repo.creds(), restore_dir="$HOME/restores")
    snap = repo.snapshots[1]
    async with harness_for(tmp_path / "state", binary, None, settings=settings) as h:
        await h.runner.run(restore("r3", snapshot_id=snap, paths=[f"{repo.src}/new.txt"]))
        done = h.finished("r3")
        assert done.status == "succeeded", done.error
        assert done.summary is not None
        target = Path(str(done.summary["target"]))
        assert target.parent == home / "restores"
        assert target.name.startswith(f"{snap[:8]}-") and target.name.endswith("Z")
        assert (target / str(repo.src).lstrip("/") / "new.txt").read_text() == "new\n"
        # ~ in a chosen target works too.
        await h.runner.run(
            restore("r4", snapshot_id=snap, paths=[f"{repo.src}/new.txt"], target_dir="~/mine")
        )
        assert h.finished("r4").summary["target"] == str(home / "mine")  # type: ignore[index]


async def test_restore_dir_falls_back_to_the_state_dir(repo: Repo, tmp_path: Path) -> None:
    binary = await find_restic_binary(str(RESTICS["0.14"]))
    async with harness_for(tmp_path / "state", binary, repo) as h:
        assert h.runner.restore_root == str(tmp_path / "state" / "restores")
    async with harness_for(tmp_path / "state2", binary, repo, restore_dir="/srv/r") as h:
        assert h.runner.restore_root == "/srv/r"


async def test_in_place_restore_brings_back_a_deleted_file(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    src = repo.src
    gone = src / "docs" / "a.txt"
    original = gone.read_bytes()
    gone.unlink()
    (src / "photos" / "img05.png").write_bytes(b"scribbled over")
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            restore(
                "r5",
                snapshot_id=repo.snapshots[1],
                paths=[f"{src}/docs", f"{src}/photos/img05.png"],
                in_place=True,
            )
        )
        done = h.finished("r5")
        assert done.status == "succeeded", (done.error, h.text("r5"))
    assert gone.read_bytes() == original
    assert (src / "photos" / "img05.png").read_bytes() == repo.expected[f"{src}/photos/img05.png"]
    assert done.summary is not None and done.summary["target"] == "/"
    assert "in place" in h.text("r5")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"paths": []}, "choose at least one path"),
        ({"paths": ["relative/x"]}, "must be an absolute snapshot path"),
        ({"snapshot_id": "nothex!!"}, "snapshot_id must be 8 to 64 hexadecimal digits"),
        ({"in_place": True, "target_dir": "/tmp/x"}, "either target_dir or in_place"),
        ({"target_dir": "relative/dir"}, "must be an absolute path"),
        ({"paths": ["/not/there"]}, "/not is not in this snapshot"),
        ({"unknown": 1}, "invalid restore request: args: unknown field(s) unknown"),
    ],
)
async def test_invalid_restore_requests_fail_clearly(
    repo: Repo, tmp_path: Path, args: dict[str, Any], error: str
) -> None:
    binary = await find_restic_binary(str(RESTICS["0.14"]))
    base: dict[str, Any] = {"snapshot_id": repo.snapshots[1], "paths": [f"{repo.src}/new.txt"]}
    base.update(args)
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(restore("bad", **base))
        done = h.finished("bad")
        assert done.status == "failed"
        assert done.error is not None and error in done.error, done.error


async def test_a_path_or_snapshot_that_is_not_there_fails_before_restoring(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            restore(
                "r6",
                snapshot_id=repo.snapshots[0],
                paths=[f"{repo.src}/new.txt"],
                target_dir=str(target),
            )
        )
        done = h.finished("r6")
        assert done.status == "failed"
        assert done.error == (
            f"{repo.src}/new.txt is not in this snapshot (snapshot {repo.snapshots[0][:8]}); "
            "nothing was restored"
        )
        await h.runner.run(restore("r7", snapshot_id="deadbeef", paths=["/x"]))
        assert h.finished("r7").error == "snapshot deadbeef is not in the repository"
    assert not target.exists()


async def test_cancel_a_long_restore_after_live_progress(
    big_repo: tuple[Repo, str], binary: ResticBinary, tmp_path: Path
) -> None:
    repo, big = big_repo
    async with harness_for(tmp_path / "state", binary, repo, restore_scan_interval=0.5) as h:
        task = h.runner.start(
            protocol.CommandRun(
                job_id="long",
                kind="restore",
                actor="operator",
                args={"snapshot_id": repo.snapshots[0], "paths": [big]},
                bandwidth=protocol.Bandwidth(download_kib_s=2048),
            )
        )

        def moving() -> list[int]:
            total = 40 * 1024 * 1024
            return sorted({p.bytes_done for p in h.progress("long") if 0 < p.bytes_done < total})

        # The bytes restored grow while restic works. restic 0.18 reports
        # them itself, a pack at a time. For 0.14, which says nothing, the
        # agent measures them: they must keep moving.
        wanted = 1 if binary.version.restore_json else 3
        deadline = time.monotonic() + 40
        while len(moving()) < wanted:
            assert time.monotonic() < deadline, h.progress("long")
            assert not task.done(), h.text("long")
            await asyncio.sleep(0.1)
        last = h.progress("long")[-1]
        assert last.bytes_total == 40 * 1024 * 1024 and 0 < last.percent < 100, last
        began = time.monotonic()
        assert h.runner.cancel("long")
        await task
        assert time.monotonic() - began < 10
        assert h.finished("long").status == "cancelled"
        assert "job cancelled" in h.text("long")
        assert "what was restored before the end is left in" in h.text("long")


async def test_diff_after_a_change(repo: Repo, binary: ResticBinary, tmp_path: Path) -> None:
    src = repo.src
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            protocol.CommandRun(
                job_id="d1",
                kind="diff",
                actor="operator",
                args={"snapshot_a": repo.snapshots[0], "snapshot_b": repo.snapshots[1]},
            )
        )
        done = h.finished("d1")
        assert done.status == "succeeded", done.error
    lines = h.text("d1").splitlines()
    assert f"comparing snapshot {repo.snapshots[0][:8]} to {repo.snapshots[1][:8]}" in lines
    assert f"M {src}/docs/a.txt" in lines
    assert f"- {src}/docs/b.txt" in lines
    assert f"+ {src}/new.txt" in lines
    assert done.summary is not None
    assert (done.summary["added"], done.summary["removed"], done.summary["modified"]) == (1, 1, 1)
    assert done.summary["bytes_added"] > 0 and done.summary["bytes_removed"] > 0  # type: ignore[operator]
    assert "1 added, 1 removed, 1 modified" in lines[-1]


async def test_diff_with_an_unknown_snapshot_fails(repo: Repo, tmp_path: Path) -> None:
    binary = await find_restic_binary(str(RESTICS["0.18"]))
    async with harness_for(tmp_path / "state", binary, repo) as h:
        await h.runner.run(
            protocol.CommandRun(
                job_id="d2",
                kind="diff",
                actor="operator",
                args={"snapshot_a": repo.snapshots[0], "snapshot_b": "deadbeef"},
            )
        )
        done = h.finished("d2")
        assert done.status == "failed"
        assert done.error is not None and "deadbeef" in done.error
