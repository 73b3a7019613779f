from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import SCHEMA_VERSION, Outbox, OutboxError

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    box = Outbox(db)
    try:
        yield box
    finally:
        box.close()


def _event(job_id: str, seq: int, **extra: object) -> dict[str, object]:
    return {"job_id": job_id, "seq": seq, **extra}


def test_pragmas_and_tables(outbox: Outbox, db: Path) -> None:
    outbox.put("heartbeat", {})
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"outbox", "running_jobs", "job_seq"} <= tables
    finally:
        conn.close()


def test_database_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        db = tmp_path / "fresh" / "outbox.sqlite3"
        with Outbox(db) as box:
            box.put("x", {"a": 1})
            for path in db.parent.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_put_returns_uuid_hex_and_roundtrips(outbox: Outbox) -> None:
    payload = {"job_id": "j1", "seq": 1, "lines": ["a", "ü"], "n": 1.5, "nested": {"x": None}}
    entry_id = outbox.put("job.log", payload)
    assert uuid.UUID(hex=entry_id).hex == entry_id
    (entry,) = outbox.pending()
    assert entry.id == entry_id
    assert entry.type == "job.log"
    assert entry.payload == payload
    assert entry.created_at > 0


def test_clock_is_injected(db: Path) -> None:
    with Outbox(db, clock=lambda: 1234.5) as box:
        box.put("x", {})
        box.mark_running("j", "backup")
        assert box.pending()[0].created_at == 1234.5
        assert box.running() == [("j", "backup", 1234.5)]


def test_job_columns_filled_from_payload(outbox: Outbox, db: Path) -> None:
    outbox.put("job.progress", _event("j1", 4))
    outbox.put("heartbeat", {"seq": True})
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT type, job_id, seq FROM outbox ORDER BY ord").fetchall()
    finally:
        conn.close()
    assert rows == [("job.progress", "j1", 4), ("heartbeat", None, None)]


def test_survives_reopen_in_order(db: Path) -> None:
    with Outbox(db) as box:
        ids = [box.put("job.log", _event("j", i)) for i in range(1, 51)]
    with Outbox(db) as box:
        assert box.count() == 50
        assert [e.id for e in box.pending()] == ids
        assert [e.payload["seq"] for e in box.pending()] == list(range(1, 51))


def test_survives_hard_kill_of_writer(db: Path) -> None:
    # put() promises durability on return: a process killed right after must
    # not lose anything, WAL checkpoint or not.
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pathlib import Path
        from agent.outbox import Outbox
        box = Outbox(Path({str(db)!r}))
        for i in range(100):
            box.put("job.log", {{"job_id": "j", "seq": i + 1}}, msg_id=f"m{{i:03d}}")
        box.next_seq("j")
        box.mark_running("j", "backup")
        os._exit(0)  # no close(), no checkpoint
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with Outbox(db) as box:
        assert [e.id for e in box.pending()] == [f"m{i:03d}" for i in range(100)]
        assert box.next_seq("j") == 2
        assert [r[:2] for r in box.running()] == [("j", "backup")]


def test_msg_id_is_used_and_idempotent(outbox: Outbox) -> None:
    assert outbox.put("job.finished", _event("j", 9), msg_id="abc") == "abc"
    assert outbox.put("job.finished", _event("j", 9), msg_id="abc") == "abc"
    assert outbox.count() == 1
    with pytest.raises(OutboxError, match="different message"):
        outbox.put("job.finished", _event("j", 10), msg_id="abc")
    assert outbox.count() == 1


def test_put_rejects_bad_input(outbox: Outbox) -> None:
    with pytest.raises(ValueError):
        outbox.put("", {})
    with pytest.raises(ValueError):
        outbox.put("x", {"v": float("inf")})
    with pytest.raises(TypeError):
        outbox.put("x", {"v": object()})
    assert outbox.count() == 0


def test_ack_removes_only_given_ids(outbox: Outbox) -> None:
    ids = [outbox.put("e", {"i": i}) for i in range(10)]
    assert outbox.ack([ids[1], ids[3], ids[3], "unknown"]) == 2
    assert [e.id for e in outbox.pending()] == [i for n, i in enumerate(ids) if n not in (1, 3)]
    assert outbox.ack([]) == 0
    assert outbox.ack(iter([ids[0]])) == 1
    assert outbox.count() == 7


def test_ack_many_ids_in_one_call(outbox: Outbox) -> None:
    ids = [outbox.put("e", {"i": i}) for i in range(1200)]
    assert outbox.ack(ids[:1100]) == 1100
    assert [e.id for e in outbox.pending()] == ids[1100:]


def test_pending_limit_and_after_id(outbox: Outbox) -> None:
    ids = [outbox.put("e", {"i": i}) for i in range(10)]
    assert [e.id for e in outbox.pending(limit=3)] == ids[:3]
    assert [e.id for e in outbox.pending(limit=3, after_id=ids[2])] == ids[3:6]
    assert outbox.pending(after_id=ids[-1]) == []
    with pytest.raises(ValueError):
        outbox.pending(limit=0)


def test_pending_after_acked_id_restarts_from_oldest(outbox: Outbox) -> None:
    ids = [outbox.put("e", {"i": i}) for i in range(5)]
    outbox.ack([ids[2]])
    assert [e.id for e in outbox.pending(after_id=ids[2])] == [ids[0], ids[1], ids[3], ids[4]]


def test_order_is_insertion_not_id_or_time(db: Path) -> None:
    with Outbox(db, clock=lambda: 100.0) as box:
        for msg_id in ["zz", "aa", "mm"]:
            box.put("e", {}, msg_id=msg_id)
        box.ack(["zz", "aa", "mm"])
        # Positions are never reused after the table was emptied.
        box.put("e", {}, msg_id="b")
        box.put("e", {}, msg_id="a")
        assert [e.id for e in box.pending()] == ["b", "a"]


def test_next_seq_starts_at_1_and_persists(db: Path) -> None:
    with Outbox(db) as box:
        assert [box.next_seq("j1") for _ in range(3)] == [1, 2, 3]
        assert box.next_seq("j2") == 1
    with Outbox(db) as box:
        assert box.next_seq("j1") == 4
        assert box.next_seq("j2") == 2


def test_next_seq_is_unique_across_threads(outbox: Outbox) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            n = outbox.next_seq("j")
            with lock:
                seen.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 201))


def test_running_jobs_persist(db: Path) -> None:
    clock = iter([10.0, 20.0, 30.0, 40.0])
    with Outbox(db, clock=lambda: next(clock)) as box:
        box.mark_running("b", "backup")
        box.mark_running("a", "check")
        box.mark_running("c", "prune")
        box.mark_running("b", "backup")  # again: keeps started_at 10.0
        box.clear_running("c")
        box.clear_running("never-ran")
    with Outbox(db) as box:
        assert box.running() == [("b", "backup", 10.0), ("a", "check", 20.0)]
        box.clear_running("b")
        assert box.running() == [("a", "check", 20.0)]


def test_ten_thousand_puts(outbox: Outbox) -> None:
    ids = [outbox.put("job.log", _event("j", i, line=f"line {i}")) for i in range(10_000)]
    assert outbox.count() == 10_000
    got: list[str] = []
    after: str | None = None
    while batch := outbox.pending(limit=500, after_id=after):
        got.extend(e.id for e in batch)
        after = batch[-1].id
    assert got == ids
    assert outbox.ack(ids[::2]) == 5_000
    assert [e.payload["seq"] for e in outbox.pending(limit=3)] == [1, 3, 5]


def test_closed_outbox_raises(db: Path) -> None:
    box = Outbox(db)
    box.close()
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.count()


def test_refuses_newer_schema(db: Path) -> None:
    Outbox(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer agent"):
        Outbox(db)


def test_reserved_blocks_keep_numbers_increasing_across_a_crash(tmp_path):
    from agent.outbox import Outbox

    box = Outbox(tmp_path / "o.sqlite3")
    first = box.reserve_seqs("job", 1000)
    assert first == 1
    box.close()
    # A restart mid-block: whatever was used of 1..1000 stays below the next number.
    box = Outbox(tmp_path / "o.sqlite3")
    assert box.next_seq("job") == 1001
    assert box.reserve_seqs("job", 5) == 1002
    assert box.next_seq("job") == 1007
    box.close()
