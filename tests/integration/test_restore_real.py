"""Browse, restore and diff through the operator API with a real agent and real restic."""

from __future__ import annotations

import filecmp
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import ApiError, make_tree, wait_for
from tests.integration.test_walking_skeleton import wait_job, wait_ready

pytestmark = pytest.mark.integration


def _tree(fleet, host_id: int, snap: str, path: str) -> dict:
    """One directory listing, waiting while the agent builds the index."""

    def ready() -> dict | None:
        listing = fleet.api.get(f"/hosts/{host_id}/snapshots/{snap}/tree?path={path}")
        return listing if listing["state"] == "ready" else None

    return wait_for(ready, 60, f"the listing of {path}", interval=0.3)


def _backup(fleet, host_id: int, group_id: int) -> dict:
    job_id = fleet.api.post(
        f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group_id}
    )["job_id"]
    job = wait_job(fleet.api, job_id)
    assert job["status"] == "succeeded", job
    return job


def _snapshot_for(fleet, host_id: int, job: dict) -> str:
    short = job["summary"]["snapshot_id"][:8]
    snaps = wait_for(
        lambda: [s for s in fleet.api.get(f"/hosts/{host_id}/snapshots") if s["id"][:8] == short],
        30,
        f"snapshot {short}",
    )
    return str(snaps[0]["id"])


def _restore(fleet, host_id: int, body: dict) -> dict:
    job_id = fleet.api.post(f"/hosts/{host_id}/jobs", {"kind": "restore", "restore": body})[
        "job_id"
    ]
    return wait_job(fleet.api, job_id)


def test_browse_restore_in_place_and_diff(fleet, tmp_path: Path, password: str):
    src = make_tree(tmp_path / "src", files=60, size=3000, seed=11)
    host_id, token = fleet.add_host("rs1", tmp_path / "repo", password, [src])
    fleet.enrol_agent("rs1", token)
    assert wait_ready(fleet.api, host_id)["repo_status"] == "ready"
    group = fleet.api.get(f"/hosts/{host_id}/source-groups")[0]
    first = _backup(fleet, host_id, group["id"])
    snap = _snapshot_for(fleet, host_id, first)

    # Three levels down from the top of the backed-up tree, as the browser does.
    path = "/"
    for part in src.parts[1:]:
        listing = _tree(fleet, host_id, snap, path)
        assert part in [e["name"] for e in listing["entries"]], (path, listing)
        path = path.rstrip("/") + "/" + part
    level1 = _tree(fleet, host_id, snap, path)
    assert sorted(e["name"] for e in level1["entries"]) == [f"d{i}" for i in range(7)]
    d0 = next(e for e in level1["entries"] if e["name"] == "d0")
    assert d0["type"] == "dir"
    assert d0["files"] == len(list((src / "d0").rglob("*.bin")))
    level2 = _tree(fleet, host_id, snap, f"{path}/d0")
    assert sorted(e["name"] for e in level2["entries"]) == ["e0", "e1", "e2"]
    level3 = _tree(fleet, host_id, snap, f"{path}/d0/e1")
    names = sorted(e["name"] for e in level3["entries"])
    assert names == sorted(p.name for p in (src / "d0" / "e1").iterdir())
    assert all(e["type"] == "file" and e["size"] == 3000 for e in level3["entries"])

    # Two files and a directory to a new directory, byte for byte.
    f1 = src / "d0" / "e1" / names[0]
    f2 = src / "d3" / "e0" / sorted(p.name for p in (src / "d3" / "e0").iterdir())[0]
    target = tmp_path / "restored"
    job = _restore(
        fleet,
        host_id,
        {
            "snapshot_id": snap[:8],
            "paths": [str(f1), str(f2), str(src / "d5")],
            "target_dir": str(target),
        },
    )
    assert job["status"] == "succeeded", job
    for original in (f1, f2):
        copy = target / original.relative_to("/")
        assert filecmp.cmp(original, copy, shallow=False), copy
    cmp = filecmp.dircmp(src / "d5", target / (src / "d5").relative_to("/"))
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    restored_files = [p for p in target.rglob("*") if p.is_file()]
    expected = 2 + len(list((src / "d5").rglob("*.bin")))
    assert len(restored_files) == expected
    assert job["summary"]["files_restored"] == expected, job["summary"]
    assert job["summary"]["target"] == str(target)

    # In place needs the host's name, typed.
    body = {"snapshot_id": snap, "paths": [str(f1)], "in_place": True, "confirm_hostname": "rs2"}
    with pytest.raises(ApiError) as err:
        fleet.api.post(f"/hosts/{host_id}/jobs", {"kind": "restore", "restore": body})
    assert err.value.status == 400
    assert err.value.body["error"]["field"] == "confirm_hostname"
    content = f1.read_bytes()
    f1.unlink()
    job = _restore(fleet, host_id, {**body, "confirm_hostname": "rs1"})
    assert job["status"] == "succeeded", job
    assert f1.read_bytes() == content

    # Diff after a change: one file added, one removed, one modified.
    (src / "d1" / "new.txt").write_text("new\n")
    gone = next((src / "d2" / "e2").iterdir())
    gone.unlink()
    changed = next((src / "d4" / "e0").iterdir())
    changed.write_bytes(b"different content")
    second = _snapshot_for(fleet, host_id, _backup(fleet, host_id, group["id"]))
    diff_id = fleet.api.post(
        f"/hosts/{host_id}/jobs",
        {"kind": "diff", "diff": {"snapshot_a": snap, "snapshot_b": second}},
    )["job_id"]
    diff = wait_job(fleet.api, diff_id)
    assert diff["status"] == "succeeded", diff
    summary = diff["summary"]
    assert (summary["added"], summary["removed"], summary["modified"]) == (1, 1, 1), summary
    log = fleet.api.call("GET", f"/jobs/{diff_id}/log.txt", raw=True)
    assert "new.txt" in log and gone.name in log and changed.name in log

    host = fleet.api.get(f"/hosts/{host_id}")
    assert host["latest_restore_status"] == "succeeded"


def test_a_long_restore_can_be_cancelled(fleet, tmp_path: Path, password: str):
    # Enough data that the restore is certainly still running when cancelled.
    src = make_tree(tmp_path / "big", files=40, size=4 * 1024 * 1024, seed=5)
    host_id, token = fleet.add_host("rs3", tmp_path / "repo", password, [src])
    fleet.enrol_agent("rs3", token)
    assert wait_ready(fleet.api, host_id)["repo_status"] == "ready"
    group = fleet.api.get(f"/hosts/{host_id}/source-groups")[0]
    snap = _snapshot_for(fleet, host_id, _backup(fleet, host_id, group["id"]))
    # A bandwidth cap slows reading the repository down (restic applies
    # --limit-download to local repositories too).
    fleet.api.call("PUT", f"/hosts/{host_id}/bandwidth", {"download_kib_s": 2048})
    job_id = fleet.api.post(
        f"/hosts/{host_id}/jobs",
        {
            "kind": "restore",
            "restore": {
                "snapshot_id": snap,
                "paths": [str(src)],
                "target_dir": str(tmp_path / "out"),
            },
        },
    )["job_id"]
    # Progress moves on both restic versions (--json on 0.16+, counted files before).
    wait_for(
        lambda: (
            (j := fleet.api.get(f"/jobs/{job_id}"))["status"] == "running"
            and (j.get("progress") or {}).get("percent", 0) > 0
        ),
        90,
        "restore progress",
    )
    time.sleep(0.5)
    fleet.api.post(f"/jobs/{job_id}/cancel")
    job = wait_job(fleet.api, job_id, timeout=60)
    assert job["status"] == "cancelled", job
