"""The ingestor against a real SQLite file: acks follow commits, never precede them."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from agent import protocol as p
from server_core.events import EventBus
from server_core.ingest import EventIngestor, Incoming
from server_core.models import Host, Job, Snapshot
from server_core.services.audit_log import list_audit
from server_core.store import Store


class Sink:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.aborted: list[str] = []
        self.got_ack = asyncio.Event()

    async def ack(self, ids: list[str]) -> None:
        self.acked += ids
        self.got_ack.set()

    async def abort(self, reason: str) -> None:
        self.aborted.append(reason)


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "db.sqlite3")
    await s.open()
    await s.transaction(lambda: Host.create(name="h1", created_at=0))
    await s.transaction(lambda: Host.create(name="h2", created_at=0))
    yield s
    await s.close()


@pytest.fixture
async def ingestor(store: Store):
    ing = EventIngestor(store, EventBus())
    ing.start()
    yield ing
    await ing.stop()


def env(message: p.Message) -> p.Envelope:
    return p.Envelope(type=message.TYPE, id=p.new_id(), ts=time.time(), payload=message)


async def submit(ing: EventIngestor, sink: Sink, host: int, *messages: p.Message) -> list[str]:
    ids = []
    for m in messages:
        e = env(m)
        ids.append(e.id)
        await ing.submit(Incoming(host, e, sink))
    return ids


async def test_nothing_is_acked_while_another_process_holds_the_write_lock(
    store, ingestor, tmp_path
):
    sink = Sink()
    other = sqlite3.connect(tmp_path / "db.sqlite3", timeout=0)
    other.execute("BEGIN IMMEDIATE")  # e.g. `restic-manager api-token create` mid-write
    ids = await submit(
        ingestor,
        sink,
        1,
        p.JobStarted(job_id="j1", seq=1, kind="backup", actor="agent", started_at=1.0),
    )
    await asyncio.sleep(1.0)
    assert sink.acked == []
    other.rollback()
    await asyncio.wait_for(sink.got_ack.wait(), 30)
    assert sink.acked == ids
    assert (await store.call(lambda: Job.get_by_id("j1").status)) == "running"


async def test_an_event_that_cannot_apply_is_refused_and_acked_not_replayed_forever(
    store, ingestor
):
    sink = Sink()
    bad = p.RepoStatsReport(collected_at=1e300, total_size=1)
    ids = await submit(ingestor, sink, 1, bad)
    await asyncio.wait_for(sink.got_ack.wait(), 10)
    assert sink.acked == ids and sink.aborted == []
    refused = await store.call(list_audit, action="agent.event_refused")
    assert "plausible" in refused[0].payload["reason"]


async def test_an_agent_cannot_change_the_kind_of_a_dispatched_job(store, ingestor):
    await store.transaction(
        lambda: Job.create(
            id="probe", host=1, kind="init", status="queued", actor="system", created_at=0
        )
    )
    sink = Sink()
    await submit(
        ingestor,
        sink,
        1,
        p.JobStarted(job_id="probe", seq=1, kind="prune", actor="agent", started_at=1.0),
    )
    await asyncio.wait_for(sink.got_ack.wait(), 10)
    job = await store.call(Job.get_by_id, "probe")
    assert (job.kind, job.status) == ("init", "queued")


def snap(i: int) -> p.SnapshotInfo:
    return p.SnapshotInfo(
        id=f"{i:064x}", short_id=f"{i:08x}", time="2026-01-01T00:00:00Z", hostname="h1", paths=["/"]
    )


async def test_snapshot_reports_in_pages_replace_the_list_only_when_complete(store, ingestor):
    sink = Sink()
    await submit(
        ingestor,
        sink,
        1,
        p.SnapshotsReport(collected_at=10.0, snapshots=[snap(i) for i in range(5)]),
    )
    # A later collection of 4,000 snapshots arrives in two pages; the first must not drop anything.
    await submit(
        ingestor,
        sink,
        1,
        p.SnapshotsReport(
            collected_at=20.0, snapshots=[snap(i) for i in range(3, 2000)], complete=False
        ),
    )
    await asyncio.sleep(0.3)
    count = await store.call(lambda: Snapshot.select().where(Snapshot.host == 1).count())
    assert count == 2000
    await submit(
        ingestor,
        sink,
        1,
        p.SnapshotsReport(collected_at=20.0, snapshots=[snap(i) for i in range(2000, 4000)]),
    )
    await asyncio.sleep(0.3)
    ids = await store.call(
        lambda: sorted(int(s.snapshot_id, 16) for s in Snapshot.select().where(Snapshot.host == 1))
    )
    assert ids == list(range(3, 4000))
    # A stale, replayed report from the first collection removes nothing.
    await submit(ingestor, sink, 1, p.SnapshotsReport(collected_at=10.0, snapshots=[]))
    await asyncio.sleep(0.3)
    assert await store.call(lambda: Snapshot.select().where(Snapshot.host == 1).count()) == 3997


async def test_a_batch_that_fails_unexpectedly_drops_its_links(ingestor, monkeypatch):
    # Neither acknowledged nor refused: the agent must be told (its link
    # dropped, so it replays), or its window of unacknowledged events stays full.
    async def broken(batch: list[Incoming]) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(ingestor, "_commit", broken)
    sink = Sink()
    await submit(ingestor, sink, 1, p.JobLog(job_id="j" * 8, seq=1, lines=[]))
    for _ in range(100):
        if sink.aborted:
            break
        await asyncio.sleep(0.01)
    assert sink.aborted and not sink.acked
