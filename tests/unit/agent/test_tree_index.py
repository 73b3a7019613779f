"""Snapshot indexes and the tree.list / tree.find RPCs, with real restic
(0.14 and 0.18) on a small real repository."""

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
from agent.tree_index import SUFFIX
from agent.tree_rpc import RpcFailure, TreeRpc
from tests.unit.agent.restic_repo import (
    RESTICS,
    WEIRD,
    Repo,
    backup,
    copy_repo,
    harness_for,
    make_repo,
    restic,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_repo(tmp_path_factory.mktemp("browse"))


@pytest.fixture(params=sorted(RESTICS))
async def binary(request: pytest.FixtureRequest) -> ResticBinary:
    path = RESTICS[request.param]
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return await find_restic_binary(str(path))


def rpc_for(h: Any) -> TreeRpc:
    return TreeRpc(h.runner.indexes, lambda: h.runner.known_snapshots)


async def until_ready(
    rpc: TreeRpc, snapshot: str, path: str = "/", timeout: float = 60, **params: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = await rpc.call(
            protocol.TREE_LIST, {"snapshot_id": snapshot, "path": path, **params}
        )
        if result["index"]["state"] != "building":
            return result
        assert time.monotonic() < deadline, "the index was not built in time"
        await asyncio.sleep(0.05)


async def failure(rpc: TreeRpc, method: str, params: dict[str, Any]) -> RpcFailure:
    with pytest.raises(RpcFailure) as caught:
        await rpc.call(method, params)
    return caught.value


def fs_totals(path: Path) -> tuple[int, int]:
    files = size = 0
    for entry in path.rglob("*"):
        st = entry.lstat()
        if not stat.S_ISDIR(st.st_mode):
            files += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, size


async def test_first_browse_builds_the_index_then_lists_from_it(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        snap = repo.snapshots[1]
        first = await rpc.call(protocol.TREE_LIST, {"snapshot_id": snap, "path": str(repo.src)})
        assert first["index"]["state"] == "building"
        assert first["entries"] == [] and first["total"] == 0
        result = await until_ready(rpc, snap, str(repo.src))
        assert result["index"]["state"] == "ready"
        assert result["index"]["nodes"] > 40
        names = [(e["name"], e["type"]) for e in result["entries"]]
        assert names == [
            ("docs", "dir"),
            ("empty", "dir"),
            ("photos", "dir"),
            ("weird", "dir"),
            ("link", "symlink"),
            ("new.txt", "file"),
        ]
        assert result["total"] == 6
        by_name = {e["name"]: e for e in result["entries"]}
        # Directory totals match what is on disk (snapshot 2 is the current tree).
        for name in ("docs", "photos", "weird", "empty"):
            files, size = fs_totals(repo.src / name)
            assert (by_name[name]["files"], by_name[name]["size"]) == (files, size), name
        st = (repo.src / "new.txt").stat()
        assert by_name["new.txt"]["size"] == st.st_size
        assert by_name["new.txt"]["mtime"] == pytest.approx(st.st_mtime, abs=1e-3)

        # Every level down to the root, and an empty directory.
        parts = repo.src.parts
        parent = "/" + "/".join(parts[1:-1])
        up = await rpc.call(protocol.TREE_LIST, {"snapshot_id": snap, "path": parent})
        assert [e["name"] for e in up["entries"]] == [parts[-1]]
        empty = await rpc.call(
            protocol.TREE_LIST, {"snapshot_id": snap, "path": f"{repo.src}/empty"}
        )
        assert empty["entries"] == [] and empty["total"] == 0

        # Once built, a listing is a read: milliseconds, and no restic.
        began = time.perf_counter()
        for _ in range(20):
            await rpc.call(protocol.TREE_LIST, {"snapshot_id": snap, "path": f"{repo.src}/photos"})
        assert (time.perf_counter() - began) / 20 < 0.05
        index_dir = tmp_path / "state" / "tree-index"
        assert [p.name for p in index_dir.iterdir()] == [f"{snap}{SUFFIX}"]
        assert stat.S_IMODE(index_dir.stat().st_mode) == 0o700


async def test_paging_through_a_directory(repo: Repo, binary: ResticBinary, tmp_path: Path) -> None:
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        snap = repo.snapshots[0]
        photos = f"{repo.src}/photos"
        await until_ready(rpc, snap)
        seen: list[str] = []
        for offset in range(0, 30, 7):
            page = await rpc.call(
                protocol.TREE_LIST,
                {"snapshot_id": snap, "path": photos, "offset": offset, "limit": 7},
            )
            assert page["total"] == 30
            seen += [e["name"] for e in page["entries"]]
        assert seen == [f"img{i:02d}.png" for i in range(30)]


async def test_a_short_snapshot_id_works_once_indexed(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        short = repo.snapshots[0][:8]
        result = await until_ready(rpc, short, str(repo.src))
        assert "b.txt" not in [e["name"] for e in result["entries"]]
        docs = await rpc.call(
            protocol.TREE_LIST, {"snapshot_id": short.upper(), "path": f"{repo.src}/docs"}
        )
        assert [e["name"] for e in docs["entries"]] == ["sub", "a.txt", "b.txt"]


async def test_unknown_snapshot_is_not_found(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    # restic 0.14 prints "Ignoring ..." and exits 0 here; 0.18 fails.
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        params = {"snapshot_id": "deadbeef", "path": "/"}
        first = await rpc.call(protocol.TREE_LIST, params)
        assert first["index"]["state"] == "building"
        deadline = time.monotonic() + 30
        while True:
            try:
                await rpc.call(protocol.TREE_LIST, params)
            except RpcFailure as exc:
                assert exc.code == "not_found"
                assert exc.message == "snapshot deadbeef is not in the repository"
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert list((tmp_path / "state" / "tree-index").iterdir()) == []


async def test_bad_params_and_bad_paths(repo: Repo, tmp_path: Path) -> None:
    binary = await find_restic_binary(str(RESTICS["0.14"]))
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        snap = repo.snapshots[0]
        cases: list[tuple[str, dict[str, Any], str, str]] = [
            (protocol.TREE_LIST, {"path": "/"}, "bad_params", "missing field 'snapshot_id'"),
            (protocol.TREE_LIST, {"snapshot_id": "xyz12345"}, "bad_params", "hexadecimal"),
            (protocol.TREE_LIST, {"snapshot_id": "abc"}, "bad_params", "8 to 64"),
            (protocol.TREE_LIST, {"snapshot_id": snap, "path": "rel"}, "bad_params", "absolute"),
            (protocol.TREE_LIST, {"snapshot_id": snap, "offset": -1}, "bad_params", "offset"),
            (protocol.TREE_LIST, {"snapshot_id": snap, "limit": 0}, "bad_params", "limit"),
            (protocol.TREE_LIST, {"snapshot_id": snap, "bogus": 1}, "bad_params", "bogus"),
            (protocol.TREE_LIST, {"snapshot_id": 5}, "bad_params", "expected a string"),
            (protocol.TREE_FIND, {"pattern": " "}, "bad_params", "empty"),
            (protocol.TREE_FIND, {"pattern": "a/b"}, "bad_params", "cannot contain /"),
            ("tree.remove", {}, "unsupported", "tree.remove"),
        ]
        for method, params, code, text in cases:
            exc = await failure(rpc, method, params)
            assert (exc.code, text in exc.message) == (code, True), (params, exc.message)

        await until_ready(rpc, snap)
        exc = await failure(
            rpc, protocol.TREE_LIST, {"snapshot_id": snap, "path": f"{repo.src}/docs/nope/x"}
        )
        assert exc.code == "not_found"
        assert exc.message == f"{repo.src}/docs/nope is not in this snapshot (snapshot {snap[:8]})"
        exc = await failure(
            rpc, protocol.TREE_LIST, {"snapshot_id": snap, "path": f"{repo.src}/docs/a.txt"}
        )
        assert exc.code == "not_found" and "is a file, not a directory" in exc.message


async def test_no_repository_yet_is_a_clear_failure(tmp_path: Path) -> None:
    binary = await find_restic_binary(str(RESTICS["0.14"]))
    async with harness_for(tmp_path / "state", binary, None) as h:
        exc = await failure(rpc_for(h), protocol.TREE_LIST, {"snapshot_id": "deadbeef"})
        assert exc.code == "failed"
        assert "no repository credentials" in exc.message


async def test_find_in_one_and_in_every_snapshot(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    async with harness_for(tmp_path / "state", binary, repo) as h:
        rpc = rpc_for(h)
        first, second = repo.snapshots
        one = await rpc.call(protocol.TREE_FIND, {"pattern": "b.txt", "snapshot_id": first})
        assert one == {"matches": [], "truncated": False, "building": [first]}
        await until_ready(rpc, first)
        one = await rpc.call(protocol.TREE_FIND, {"pattern": "b.txt", "snapshot_id": first})
        assert [m["path"] for m in one["matches"]] == [f"{repo.src}/docs/b.txt"]
        assert one["matches"][0]["snapshot_id"] == first
        assert one["matches"][0]["size"] == len(repo.expected[f"{repo.src}/docs/b.txt"])

        # Every snapshot: the agent learns them from a snapshot listing; the
        # one without an index starts building and is named until it is done.
        await h.runner.run(protocol.CommandRun(job_id="snaps", kind="snapshots", actor="operator"))
        assert h.runner.known_snapshots == repo.snapshots
        found = await rpc.call(protocol.TREE_FIND, {"pattern": "*.txt"})
        assert found["building"] == [second]
        deadline = time.monotonic() + 60
        while found["building"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            found = await rpc.call(protocol.TREE_FIND, {"pattern": "*.txt"})
        paths = {(m["snapshot_id"], m["path"].rsplit("/", 1)[1]) for m in found["matches"]}
        assert (second, "new.txt") in paths and (first, "new.txt") not in paths
        assert (first, "b.txt") in paths and (second, "b.txt") not in paths
        assert (first, WEIRD) in paths and (second, WEIRD) in paths
        # Newest snapshot first.
        assert found["matches"][0]["snapshot_id"] == second
        limited = await rpc.call(protocol.TREE_FIND, {"pattern": "*", "limit": 5})
        assert len(limited["matches"]) == 5 and limited["truncated"]


async def test_a_half_built_index_is_never_used(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    index_dir = state / "tree-index"
    index_dir.mkdir(parents=True)
    snap = repo.snapshots[0]
    # What a crash left behind: a temporary file, and a final one that is
    # not an index at all.
    (index_dir / f"{snap}{SUFFIX}.building-abcd1234").write_bytes(b"half")
    (index_dir / f"{repo.snapshots[1]}{SUFFIX}").write_bytes(b"torn" * 1000)
    # Downloads at 1 KiB/s: restic is still reading when the agent stops.
    slow = JobSettings(repository=repo.creds(), bandwidth=protocol.Bandwidth(download_kib_s=1))
    async with harness_for(state, binary, None, settings=slow) as h:
        assert [p.name for p in index_dir.iterdir()] == [f"{repo.snapshots[1]}{SUFFIX}"]
        status = h.runner.indexes.status(snap)
        assert status.state == "building"
        await asyncio.sleep(1.0)
        assert h.runner.indexes.status(snap).state == "building"
        began = time.monotonic()
    # Shutdown stopped restic (SIGINT) and threw the partial index away.
    assert time.monotonic() - began < 15
    assert [p.name for p in index_dir.iterdir()] == [f"{repo.snapshots[1]}{SUFFIX}"]

    async with harness_for(state, binary, repo) as h:
        rpc = rpc_for(h)
        # The torn file is found unreadable, dropped, and built again.
        exc = await failure(rpc, protocol.TREE_LIST, {"snapshot_id": repo.snapshots[1]})
        assert exc.code == "failed" and "damaged" in exc.message
        result = await until_ready(rpc, repo.snapshots[1], str(repo.src))
        assert result["total"] == 6


async def test_least_recently_used_indexes_are_evicted(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    other = copy_repo(repo, tmp_path / "copy")
    third = backup(other.path, repo.src / "docs")
    async with harness_for(tmp_path / "state", binary, other) as h:
        rpc = rpc_for(h)
        first, second = other.snapshots
        await until_ready(rpc, first)
        size = (tmp_path / "state" / "tree-index" / f"{first}{SUFFIX}").stat().st_size
        h.runner.indexes._budget = int(size * 2.5)
        h.runner.indexes._protect = 0.0
        await until_ready(rpc, second)
        # Use the older one again: the other is now the least recently used.
        await asyncio.sleep(0.01)
        await rpc.call(protocol.TREE_LIST, {"snapshot_id": first, "path": "/"})
        await until_ready(rpc, third)
        kept = sorted(p.stem for p in (tmp_path / "state" / "tree-index").glob(f"*{SUFFIX}"))
        assert kept == sorted([first, third])
        # An evicted index is simply built again on the next browse.
        again = await rpc.call(protocol.TREE_LIST, {"snapshot_id": second, "path": "/"})
        assert again["index"]["state"] == "building"
        assert (await until_ready(rpc, second))["index"]["state"] == "ready"


async def test_indexes_of_forgotten_snapshots_are_deleted(
    repo: Repo, binary: ResticBinary, tmp_path: Path
) -> None:
    other = copy_repo(repo, tmp_path / "copy")
    async with harness_for(tmp_path / "state", binary, other) as h:
        rpc = rpc_for(h)
        for snap in other.snapshots:
            await until_ready(rpc, snap)
        restic(other.path, "forget", other.snapshots[0])
        await h.runner.run(protocol.CommandRun(job_id="s", kind="snapshots", actor="operator"))
        kept = [p.stem for p in (tmp_path / "state" / "tree-index").glob(f"*{SUFFIX}")]
        assert kept == [other.snapshots[1]]


def slow_restic(tmp_path: Path, real: ResticBinary, *commands: str) -> ResticBinary:
    """A restic that sleeps 2 s before the given commands: a build or an
    exclusive job stays in progress long enough to be overlapped."""
    script = tmp_path / "slow-restic"
    cases = "|".join(f'*" {c} "*' for c in commands)
    script.write_text(f'#!/bin/sh\ncase " $* " in {cases}) sleep 2;; esac\nexec {real.path} "$@"\n')
    script.chmod(0o755)
    return ResticBinary(path=str(script), version=real.version)


async def test_an_exclusive_job_waits_for_a_running_build(repo: Repo, tmp_path: Path) -> None:
    real = await find_restic_binary(str(RESTICS["0.14"]))
    async with harness_for(tmp_path / "state", slow_restic(tmp_path, real, "ls"), repo) as h:
        indexes = h.runner.indexes
        assert indexes.status(repo.snapshots[0]).state == "building"
        await asyncio.sleep(0.2)
        await h.runner.run(
            protocol.CommandRun(
                job_id="chk", kind="check", actor="operator", args={"read_data_subset_percent": 1}
            )
        )
        assert h.finished("chk").status == "succeeded", h.finished("chk").error
        assert "waiting for a snapshot listing" in h.text("chk")
        # The check only ran once the listing was done.
        assert indexes.status(repo.snapshots[0]).state == "ready"


async def test_a_build_waits_for_a_running_exclusive_job(repo: Repo, tmp_path: Path) -> None:
    real = await find_restic_binary(str(RESTICS["0.14"]))
    async with harness_for(tmp_path / "state", slow_restic(tmp_path, real, "check"), repo) as h:
        indexes = h.runner.indexes
        check = h.runner.start(
            protocol.CommandRun(
                job_id="chk", kind="check", actor="operator", args={"read_data_subset_percent": 1}
            )
        )
        await asyncio.sleep(0.3)
        assert indexes.status(repo.snapshots[0]).state == "building"
        await asyncio.sleep(0.5)
        # Queued behind the check: no restic ls has started.
        assert indexes._active is None and not check.done()
        await check
        assert h.finished("chk").status == "succeeded"
        # Nothing was building when it started: it did not wait.
        assert "waiting for a snapshot listing" not in h.text("chk")
        deadline = time.monotonic() + 30
        while indexes.status(repo.snapshots[0]).state == "building":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert indexes.status(repo.snapshots[0]).state == "ready"


def test_the_ls_command_line_holds_no_secret() -> None:
    # What ps shows of an index build: the password only in the environment.
    from agent.restic import commands as rc

    opts = rc.GlobalOptions(binary="/usr/bin/restic", cache_dir="/tmp/c")
    creds = protocol.RepoCredentials(url="/r", password="s3cret-pw")
    cmd = rc.ls_cmd(opts, creds, os.environ, "ab" * 4)
    assert "s3cret-pw" not in " ".join(cmd.argv)
    assert cmd.env["RESTIC_PASSWORD"] == "s3cret-pw"
