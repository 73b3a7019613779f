"""Browsing, searching, restore and diff through the operator API, against a
real control plane whose agent (hand-driven) answers the RPCs and receives
the jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent import protocol as p
from server_core.models import Job
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR

from .agents import RpcAgent, enrolled, failed, ok, report_snapshots

S1 = "deadbeef" + "11" * 28
S2 = "deadbeef" + "22" * 28  # shares its first 8 digits with S1
S3 = "cafebabe" + "33" * 28
OTHER = "0badc0de" + "44" * 28  # a snapshot of another host


def building(call_id: str, params: p.TreeListParams) -> p.RpcResult:
    return ok(
        call_id,
        p.TreeListResult(
            snapshot_id=params.snapshot_id,
            path=params.path,
            index=p.IndexStatus(state="building", nodes=1200, elapsed_s=0.4),
        ),
    )


def ready(call_id: str, params: p.TreeListParams) -> p.RpcResult:
    return ok(
        call_id,
        p.TreeListResult(
            snapshot_id=params.snapshot_id,
            path=params.path,
            index=p.IndexStatus(state="ready", nodes=5000, elapsed_s=1.5),
            entries=[
                p.TreeEntry(name="docs", type="dir", size=300, mtime=1.7e9, files=3),
                p.TreeEntry(name="notes.txt", type="file", size=12, mtime=1.7e9),
            ],
            total=2,
        ),
    )


class Scripted:
    """Answers each call with the next reply in the script (by method)."""

    def __init__(self) -> None:
        self.tree: list[Any] = []
        self.find: list[Any] = []

    def __call__(self, call_id: str, call: p.RpcCall) -> p.RpcResult | None:
        if call.method == p.TREE_LIST:
            params = p.from_dict(p.TreeListParams, call.params)
            reply = self.tree.pop(0)
            return reply(call_id, params)
        if call.method == p.TREE_FIND:
            return self.find.pop(0)(call_id) if self.find else None
        return None


async def setup(cp, session, script: Scripted) -> tuple[RpcAgent, RpcAgent]:
    web1, _ = await enrolled(cp, session, "web1", answer=script)
    web2, _ = await enrolled(cp, session, "web2")
    await report_snapshots(web1, [S1, S2, S3])
    await report_snapshots(web2, [OTHER])
    return web1, web2


async def test_tree_listing_passes_through_building_then_ready(cp, session, api):
    script = Scripted()
    script.tree = [building, ready, ready]
    web1, _ = await setup(cp, session, script)
    url = f"/hosts/{web1.host_id}/snapshots/cafebabe/tree?path=/home//alice/../alice/"

    status, first = await api.call("GET", url)
    assert status == 200, first
    assert first == {
        "snapshot_id": S3,
        "path": "/home/alice",
        "state": "building",
        "nodes": 1200,
        "elapsed_s": 0.4,
        "error": None,
        "entries": [],
        "total": 0,
    }
    status, second = await api.call("GET", url)
    assert status == 200 and second["state"] == "ready" and second["total"] == 2
    assert second["entries"] == [
        {"name": "docs", "type": "dir", "size": 300, "mtime": 1.7e9, "files": 3},
        {"name": "notes.txt", "type": "file", "size": 12, "mtime": 1.7e9, "files": 0},
    ]
    # The agent is asked with the full id and the normalised path.
    sent = [p.from_dict(p.TreeListParams, c.params) for _, c in web1.calls]
    assert sent == [p.TreeListParams(snapshot_id=S3, path="/home/alice")] * 2

    listing = await cp.restore.tree_list(web1.host_id, S3, "/", offset=10, limit=2)
    assert listing.state == "ready" and [e.name for e in listing.entries] == ["docs", "notes.txt"]
    assert p.from_dict(p.TreeListParams, web1.calls[-1][1].params) == p.TreeListParams(
        snapshot_id=S3, path="/", offset=10, limit=2
    )


async def test_tree_listing_errors_are_clear(cp, session, api):
    script = Scripted()
    script.tree = [
        lambda cid, _: failed(cid, "not_found", "no such directory in the snapshot: /nope"),
        lambda cid, _: failed(cid, "bad_params", "offset is past the end"),
        lambda cid, _: failed(cid, "failed", "restic ls: repository is locked"),
        lambda cid, _: ok(cid, {"snapshot_id": S3, "path": "/"}),  # no index status
    ]
    web1, _ = await setup(cp, session, script)
    base = f"/hosts/{web1.host_id}/snapshots"

    async def error(path: str) -> tuple[int, dict[str, Any]]:
        status, body = await api.call("GET", base + path)
        return status, body["error"]

    cases = [
        ("/ffffffff/tree", 404, "snapshot_id", "not a snapshot of host web1"),
        (f"/{OTHER}/tree", 404, "snapshot_id", "not a snapshot of host web1"),
        ("/deadbeef/tree", 400, "snapshot_id", "matches several snapshots"),
        ("/dead/tree", 400, "snapshot_id", "8 to 64 hexadecimal digits"),
        ("/cafebabe/tree?path=etc", 400, "path", "absolute path"),
        ("/cafebabe/tree?path=/a%00b", 400, "path", "NUL"),
        ("/cafebabe/tree?path=/" + "a" * 4100, 400, "path", "longer than 4096"),
        ("/cafebabe/tree?offset=-1", 400, "offset", "whole number"),
        ("/cafebabe/tree?limit=0", 400, "limit", "from 1 to 5000"),
        ("/cafebabe/tree?limit=5001", 400, "limit", "from 1 to 5000"),
    ]
    for path, want_status, field, text in cases:
        status, err = await error(path)
        assert (status, err.get("field")) == (want_status, field), (path, err)
        assert text in err["message"], (path, err)
    assert web1.calls == []  # refused at the edge: nothing reached the agent

    status, err = await error("/cafebabe/tree?path=/nope")
    assert (status, err["code"]) == (404, "not_found")
    assert err["message"] == "no such directory in the snapshot: /nope"
    status, err = await error("/cafebabe/tree")
    assert (status, err["code"], err["message"]) == (400, "invalid", "offset is past the end")
    status, err = await error("/cafebabe/tree")
    assert (status, err["code"]) == (502, "failed")
    assert err["message"] == "restic ls: repository is locked"
    status, err = await error("/cafebabe/tree")
    assert (status, err["code"]) == (502, "bad_reply") and "missing field 'index'" in err["message"]

    await web1.stop()
    async with asyncio.timeout(5):
        while cp.hub.is_connected(web1.host_id):
            await asyncio.sleep(0.01)
    status, err = await error("/cafebabe/tree")
    assert (status, err["code"]) == (409, "offline")
    assert "host web1 is offline" in err["message"]
    status, err = await api.call("GET", "/hosts/9999/snapshots/cafebabe/tree")
    assert status == 404 and "host 9999 does not exist" in err["error"]["message"]


async def test_find_in_one_snapshot_and_in_all_of_them(cp, session, api):
    script = Scripted()
    script.find = [
        lambda cid: ok(
            cid,
            p.TreeFindResult(
                matches=[p.TreeMatch(snapshot_id=S1, path="/etc/app.conf", type="file", size=9)]
            ),
        ),
        lambda cid: ok(
            cid,
            p.TreeFindResult(
                matches=[
                    p.TreeMatch(snapshot_id=S1, path="/etc/passwd", type="file", size=1, mtime=5.0),
                    # An index that outlived its snapshot, or another host's: not shown.
                    p.TreeMatch(snapshot_id=OTHER, path="/etc/passwd", type="file"),
                ],
                truncated=True,
                building=[S2, OTHER],
            ),
        ),
    ]
    web1, _ = await setup(cp, session, script)
    status, found = await api.call(
        "GET", f"/hosts/{web1.host_id}/snapshots/deadbeef1/find?q=*.conf&limit=10"
    )
    assert status == 200, found
    assert found == {
        "matches": [
            {"snapshot_id": S1, "path": "/etc/app.conf", "type": "file", "size": 9, "mtime": None}
        ],
        "truncated": False,
        "building": [],
    }
    status, found = await api.call("GET", f"/hosts/{web1.host_id}/find?q=passwd")
    assert status == 200, found
    assert [m["snapshot_id"] for m in found["matches"]] == [S1]
    assert found["truncated"] is True and found["building"] == [S2]
    sent = [p.from_dict(p.TreeFindParams, c.params) for _, c in web1.calls]
    assert sent == [
        p.TreeFindParams(pattern="*.conf", snapshot_id=S1, limit=10),
        p.TreeFindParams(pattern="passwd", snapshot_id=None, limit=500),
    ]
    for path, field in (
        (f"/hosts/{web1.host_id}/find", "q"),
        (f"/hosts/{web1.host_id}/find?q=%20", "q"),
        (f"/hosts/{web1.host_id}/find?q=x&limit=0", "limit"),
        (f"/hosts/{web1.host_id}/snapshots/{OTHER}/find?q=x", "snapshot_id"),
    ):
        status, err = await api.call("GET", path)
        assert status in (400, 404) and err["error"]["field"] == field, (path, err)
    assert len(web1.calls) == 2


def restore_body(**spec: Any) -> dict[str, Any]:
    return {"kind": "restore", "restore": {"snapshot_id": "deadbeef1", "paths": ["/etc"], **spec}}


async def test_restore_requests_are_checked_before_anything_is_queued(cp, session, api):
    web1, _ = await setup(cp, session, Scripted())
    jobs = f"/hosts/{web1.host_id}/jobs"
    cases: list[tuple[dict[str, Any], int, str | None, str]] = [
        (restore_body(in_place=True, confirm_hostname="web2"), 400, "confirm_hostname", "web1"),
        (restore_body(in_place=True), 400, "confirm_hostname", "type the host's name"),
        (restore_body(in_place=True, confirm_hostname=""), 400, "confirm_hostname", "web1"),
        (
            restore_body(in_place=True, confirm_hostname="web1", target_dir="/tmp/x"),
            400,
            "target_dir",
            "not both",
        ),
        (restore_body(in_place="yes"), 400, "in_place", "true or false"),
        (restore_body(paths=["etc/hosts"]), 400, "paths", "absolute path"),
        (restore_body(paths=[]), 400, "paths", "at least one"),
        (restore_body(paths="/etc"), 400, "paths", "at least one"),
        (restore_body(paths=["/a"] * 1001), 400, "paths", "more than 1000"),
        (restore_body(paths=["/x\x00y"]), 400, "paths", "NUL"),
        (restore_body(snapshot_id="ffffffff"), 404, "snapshot_id", "not a snapshot of host web1"),
        (restore_body(snapshot_id=OTHER), 404, "snapshot_id", "not a snapshot of host web1"),
        (restore_body(snapshot_id="deadbeef"), 400, "snapshot_id", "several"),
        (restore_body(snapshot_id=12345678), 400, "snapshot_id", "snapshot id"),
        (restore_body(target_dir="restores"), 400, "target_dir", "absolute"),
        (restore_body(target_dir="~bob/x"), 400, "target_dir", "absolute"),
        (restore_body(target_dir="/"), 400, "target_dir", "in-place"),
        (restore_body(target_dir="//./"), 400, "target_dir", "in-place"),
        (restore_body(target_dir="C:\\"), 400, "target_dir", "in-place"),
        (restore_body(target_dir="/tmp/a\nb"), 400, "target_dir", "control"),
        (restore_body(target="/tmp"), 400, "target", "unknown field"),
        ({"kind": "restore"}, 400, "restore", "must be an object"),
        ({"kind": "restore", "restore": ["/etc"]}, 400, "restore", "must be an object"),
        (restore_body() | {"source_group_id": 1}, 400, "source_group_id", "takes only"),
        ({"kind": "backup", "restore": {}}, 400, "restore", "only applies to a restore"),
    ]
    for body, want_status, field, text in cases:
        status, err = await api.call("POST", jobs, body)
        assert (status, err["error"].get("field")) == (want_status, field), (body, err)
        assert text in err["error"]["message"], (body, err)
    count = await cp.store.call(lambda: Job.select().where(Job.kind == "restore").count())
    assert count == 0


async def test_a_restore_job_carries_its_arguments_to_the_agent(cp, session, api):
    web1, _ = await setup(cp, session, Scripted())
    jobs = f"/hosts/{web1.host_id}/jobs"
    status, body = await api.call(
        "POST",
        jobs,
        restore_body(
            paths=["/etc/hosts", "/etc//hosts", "/home/alice/docs/"], target_dir="~/restores"
        ),
    )
    assert status == 202, body
    run = await web1.expect(p.CommandRun)
    while run.job_id != body["job_id"]:
        run = await web1.expect(p.CommandRun)
    assert (run.kind, run.actor, run.credentials) == ("restore", "operator", None)
    assert p.from_dict(p.RestoreArgs, run.args) == p.RestoreArgs(
        snapshot_id=S1, paths=["/etc/hosts", "/home/alice/docs"], target_dir="~/restores"
    )
    entries = await cp.store.call(list_audit, action="job.queued", target_id=body["job_id"])
    (entry,) = entries
    assert entry.actor_kind == "api" and entry.payload["kind"] == "restore"
    assert entry.payload["args"] == {
        "snapshot_id": S1,
        "paths_count": 2,
        "paths": ["/etc/hosts", "/home/alice/docs"],
        "in_place": False,
        "target_dir": "~/restores",
    }

    # In place, the host's name typed back in another case.
    status, body = await api.call(
        "POST", jobs, restore_body(snapshot_id=S3, in_place=True, confirm_hostname="WEB1")
    )
    assert status == 202, body
    run = await web1.expect(p.CommandRun)
    assert p.from_dict(p.RestoreArgs, run.args) == p.RestoreArgs(
        snapshot_id=S3, paths=["/etc"], target_dir=None, in_place=True
    )
    # No target at all: the agent picks a new directory under its restore dir.
    job_id = await cp.restore.start_restore(web1.host_id, "cafebabe", ["/"], actor=OPERATOR)
    run = await web1.expect(p.CommandRun)
    assert run.job_id == job_id
    assert p.from_dict(p.RestoreArgs, run.args) == p.RestoreArgs(snapshot_id=S3, paths=["/"])


async def test_diff_jobs_need_two_different_snapshots_of_the_host(cp, session, api):
    web1, _ = await setup(cp, session, Scripted())
    jobs = f"/hosts/{web1.host_id}/jobs"
    cases = [
        ({"snapshot_a": "deadbeef1", "snapshot_b": S1}, 400, "snapshot_b", "same snapshot"),
        ({"snapshot_a": OTHER, "snapshot_b": S1}, 404, "snapshot_a", "not a snapshot of host"),
        ({"snapshot_a": S1, "snapshot_b": "zz"}, 400, "snapshot_b", "hexadecimal"),
        ({"snapshot_a": S1}, 400, "snapshot_b", "snapshot id"),
        ({"snapshot_a": S1, "snapshot_b": S3, "paths": []}, 400, "paths", "unknown field"),
    ]
    for spec, want_status, field, text in cases:
        status, err = await api.call("POST", jobs, {"kind": "diff", "diff": spec})
        assert (status, err["error"].get("field")) == (want_status, field), (spec, err)
        assert text in err["error"]["message"], (spec, err)
    status, body = await api.call(
        "POST",
        jobs,
        {"kind": "diff", "diff": {"snapshot_a": "deadbeef2", "snapshot_b": "cafebabe"}},
    )
    assert status == 202, body
    run = await web1.expect(p.CommandRun)
    while run.job_id != body["job_id"]:
        run = await web1.expect(p.CommandRun)
    assert run.kind == "diff"
    assert p.from_dict(p.DiffArgs, run.args) == p.DiffArgs(snapshot_a=S2, snapshot_b=S3)


async def test_the_host_shows_its_latest_restore(cp, session, api):
    web1, _ = await setup(cp, session, Scripted())
    _, host = await api.call("GET", f"/hosts/{web1.host_id}")
    assert (host["latest_restore_job_id"], host["latest_restore_status"]) == (None, None)
    assert await cp.restore.latest_restore(web1.host_id) is None

    status, body = await api.call("POST", f"/hosts/{web1.host_id}/jobs", restore_body())
    assert status == 202, body
    job_id = body["job_id"]
    queued = await cp.hosts.get_host(web1.host_id)
    job = await cp.jobs.get_job(job_id)
    assert (queued.latest_restore_job_id, queued.latest_restore_status) == (job_id, "queued")
    assert queued.latest_restore_at == job.created_at

    now = time.time()
    await web1.send_acked(
        p.JobStarted(job_id=job_id, seq=1, kind="restore", actor="operator", started_at=now)
    )
    await web1.send_acked(
        p.JobFinished(
            job_id=job_id,
            seq=2,
            status="succeeded",
            finished_at=now + 2,
            exit_code=0,
            summary={"files_restored": 3, "bytes_restored": 42, "target": "/r/x"},
        )
    )
    _, host = await api.call("GET", f"/hosts/{web1.host_id}")
    assert (host["latest_restore_job_id"], host["latest_restore_status"]) == (job_id, "succeeded")
    assert host["latest_restore_at"] == now + 2
    latest = await cp.restore.latest_restore(web1.host_id)
    assert latest is not None and latest.id == job_id
    assert latest.summary == {"files_restored": 3, "bytes_restored": 42, "target": "/r/x"}
    # A diff is not a restore.
    await cp.restore.start_diff(web1.host_id, S1, S3, OPERATOR)
    assert (await cp.hosts.get_host(web1.host_id)).latest_restore_job_id == job_id
