"""A control plane with something in it, so generated requests reach past
404: hosts (one enrolled with jobs, a log, snapshots and stats, one waiting
for its agent), a source group, a schedule, alerts and a channel. Every id
the document gives as an example (1) exists."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from agent import protocol as p
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.fuzz.live import LivePlane
from tests.helpers.fake_agent import FakeAgent, enrol

JOB = "seedjob0000000000000000000000001"


async def seed(live: LivePlane) -> dict[str, Any]:
    cp = live.cp
    async with aiohttp.ClientSession() as session:
        new = parse_new_host(
            {
                "hostname": "web1",
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "admin_repository": {"url": "/srv/r", "password": "admin-pw-1"},
                "initial_paths": ["/etc", "/srv/data"],
                "tags": ["prod"],
            }
        )
        grant = await cp.enrolment.add_host(new, OPERATOR)
        reply = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, "web1")
        agent = await FakeAgent.connect(
            session, cp.agent_url, cp.certificate.sha256, reply["bearer"]
        )
        now = time.time()
        events: list[p.Message] = [
            p.JobStarted(job_id=JOB, seq=1, kind="backup", actor="schedule", started_at=now - 60),
            p.JobLog(
                job_id=JOB,
                seq=2,
                lines=[
                    p.LogLine(seq=i, ts=now - 50 + i, stream="stdout", text=f"line {i} ✓")
                    for i in range(2, 40)
                ],
            ),
            p.JobProgress(job_id=JOB, seq=40, progress=p.Progress(percent=50.0)),
            p.JobFinished(
                job_id=JOB,
                seq=41,
                status="failed",
                finished_at=now - 10,
                exit_code=1,
                error="repository is locked",
                summary={"files_new": 3},
            ),
            p.SnapshotsReport(
                collected_at=now,
                snapshots=[
                    p.SnapshotInfo(
                        id=f"{i:064x}",
                        short_id=f"{i:08x}",
                        time="2024-05-01T12:00:00Z",
                        hostname="web1",
                        paths=["/etc"],
                        tags=["default"],
                    )
                    for i in range(1, 4)
                ],
            ),
            p.RepoStatsReport(collected_at=now, total_size=12345, snapshot_count=3),
        ]
        ids = [await agent.send(event) for event in events]
        await agent.acked(set(ids), timeout=15)
        await agent.ws.close()
        second = parse_new_host(
            {"hostname": "db1", "repository": {"url": "/srv/db", "password": "pw-db1-xx"}}
        )
        await cp.enrolment.add_host(second, OPERATOR)
    host_id = int(reply["host_id"])
    groups = await cp.sources.list_groups(host_id)
    await cp.schedules.create_schedule(
        host_id, {"cron": "30 2 * * *", "source_group_ids": [groups[0].id]}, OPERATOR
    )
    await cp.alerts.fire("stale_backup", host_id, "no backup for 3 days")
    await cp.alerts.fire("agent_offline", host_id, "web1 is silent")
    await cp.notifications.create_channel(
        {
            "kind": "webhook",
            "name": "ops",
            # A closed port on loopback: a test send fails at once, reaching nobody.
            "config": {"url": "http://127.0.0.1:9/hook"},
        },
        OPERATOR,
    )
    return {"host_id": host_id, "job_id": JOB}
