"""The wire contract: round trips and everything a hostile peer might send."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import protocol as p

SAMPLES: list[p.Message] = [
    p.Hello(
        protocol_version=p.PROTOCOL_VERSION,
        agent_version="0.1.0",
        hostname="web1",
        os="linux",
        arch="amd64",
        restic_version="0.18.0",
        schedule_version=3,
        running_job_ids=["a" * 32],
    ),
    p.Heartbeat(running_job_ids=[], outbox_pending=4),
    p.JobStarted(
        job_id="j1",
        seq=1,
        kind="backup",
        actor="schedule",
        started_at=1.5,
        source_group_id=7,
        schedule_id=2,
    ),
    p.JobProgress(
        job_id="j1",
        seq=2,
        progress=p.Progress(
            percent=12.5,
            files_done=3,
            files_total=10,
            bytes_done=100,
            bytes_total=1000,
            current_file="/etc/x",
            eta_seconds=9,
        ),
    ),
    p.JobLog(job_id="j1", seq=3, lines=[p.LogLine(seq=3, ts=2.0, stream="stderr", text="é ✓")]),
    p.JobFinished(
        job_id="j1",
        seq=4,
        status="succeeded",
        finished_at=3.0,
        exit_code=3,
        warnings=True,
        summary={"files_new": 1, "nested": {"a": [1, 2]}},
    ),
    p.SnapshotsReport(
        collected_at=4.0,
        snapshots=[
            p.SnapshotInfo(
                id="f" * 64,
                short_id="ffffffff",
                time="2026-01-01T00:00:00Z",
                hostname="web1",
                paths=["/etc"],
                tags=["default"],
            )
        ],
    ),
    p.RepoStatsReport(collected_at=5.0, total_size=123, snapshot_count=2),
    p.ScheduleAck(version=3),
    p.RpcResult(call_id="c1", ok=False, error=p.RpcError(code="unsupported", message="no")),
    p.ConfigUpdate(
        repository=p.RepoCredentials(url="/srv/r", password="pw", env={"A": "b"}),
        bandwidth=p.Bandwidth(upload_kib_s=100),
    ),
    p.ScheduleSet(
        version=2,
        schedules=[p.ScheduleSpec(id=1, cron="0 3 * * *", enabled=True, source_group_ids=[1])],
        source_groups=[
            p.SourceGroupSpec(
                id=1, name="default", includes=["/etc"], retention=p.Retention(keep_daily=7)
            )
        ],
    ),
    p.CommandRun(
        job_id="j2",
        kind="backup",
        actor="operator",
        source_group=p.SourceGroupSpec(id=1, name="g", includes=["/srv"]),
    ),
    p.CommandCancel(job_id="j2"),
    p.CommandUpdate(job_id="j3", version="0.2.0", url="https://x/agent", sha256="0" * 64),
    p.RpcCall(method="tree.list", params={"snapshot_id": "abc", "path": "/"}),
    p.Ack(ids=["a", "b"]),
    p.Error(code="protocol_too_old", message="update", ref="x"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message: p.Message) -> None:
    frame = p.encode(message, msg_id="m1", ts=10.0)
    env = p.decode(frame)
    assert env.type == message.TYPE and env.id == "m1" and env.ts == 10.0
    assert env.payload == message


def test_every_message_type_has_a_sample() -> None:
    assert {m.TYPE for m in SAMPLES} == set(p.MESSAGE_TYPES)


def _frame(type_: str, payload: object, **extra: object) -> str:
    return json.dumps({"type": type_, "id": "x", "ts": 1.0, "payload": payload, **extra})


HELLO = p.to_dict(SAMPLES[0])


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (_frame("nope", {}), "unknown message type"),
        (
            _frame("hello", {k: v for k, v in HELLO.items() if k != "hostname"}),
            "missing field 'hostname'",
        ),
        (_frame("hello", {**HELLO, "hostname": 5}), "hello.hostname: expected a string"),
        (_frame("hello", {**HELLO, "protocol_version": "1"}), "expected an integer"),
        (_frame("hello", {**HELLO, "protocol_version": True}), "expected an integer"),
        (_frame("hello", {**HELLO, "evil": 1}), "unknown field(s) evil"),
        (_frame("hello", {**HELLO, "running_job_ids": "abc"}), "expected a list"),
        (_frame("hello", {**HELLO, "running_job_ids": [1]}), "running_job_ids[0]"),
        (
            _frame(
                "job.finished", {"job_id": "j", "seq": 1, "status": "exploded", "finished_at": 1}
            ),
            "must be one of",
        ),
        (
            _frame("job.progress", {"job_id": "j", "seq": 1, "progress": {"percent": "x"}}),
            "progress.percent: expected a number",
        ),
        (_frame("hello", HELLO, extra=1), "unknown envelope field"),
        (json.dumps({"type": "hello", "id": 1, "ts": 1, "payload": {}}), "'id' must be a string"),
        (
            json.dumps({"type": "hello", "id": "x", "ts": "now", "payload": {}}),
            "'ts' must be a number",
        ),
        (
            json.dumps({"type": "hello", "id": "x", "ts": 1, "payload": []}),
            "'payload' must be an object",
        ),
        (json.dumps([1, 2]), "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"type":"heartbeat","id":"x","ts":NaN,"payload":{}}', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (
            '{"type":"ack","id":"x","ts":1,"payload":{"ids":' + "[" * 40 + "]" * 40 + "}}",
            "nests deeper",
        ),
        (_frame("heartbeat", {"running_job_ids": [], "outbox_pending": None}), "must not be null"),
        (_frame("schedule.ack", {"version": 2**70}), "64-bit range"),
        (
            '{"type":"job.progress","id":"x","ts":1,"payload":{"job_id":"j","seq":1,"progress":{"percent":1e400}}}',
            "not finite",
        ),
        (
            '{"type":"job.finished","id":"x","ts":1,"payload":{"job_id":"j","seq":1,'
            '"status":"failed","finished_at":1,"summary":{"x":-1e999}}}',
            "not finite",
        ),
        (_frame("command.cancel", {"job_id": "x" * 300_000}), "longer than"),
        (_frame("command.cancel", {"job_id": "../../etc"}), "job_id: must be 1-64"),
        (_frame("command.cancel", {"job_id": ""}), "job_id: must be 1-64"),
    ],
)
def test_malformed_frames_are_refused_with_a_clear_error(frame: str, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(frame)
    assert needle in str(err.value)


def test_oversized_frame_is_refused_before_parsing() -> None:
    big = _frame("job.log", {"job_id": "j", "seq": 1, "lines": [], "pad": "x" * p.MAX_FRAME_BYTES})
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.decode(big)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.encode(
            p.JobLog(
                job_id="j", seq=1, lines=[p.LogLine(1, 1.0, "stdout", "x" * p.MAX_FRAME_BYTES)]
            )
        )


def test_direction_filter() -> None:
    frame = p.encode(p.CommandCancel(job_id="j"))
    with pytest.raises(p.ProtocolError, match="unknown message type"):
        p.decode(frame, allowed=p.AGENT_MESSAGES)


def test_version_mismatch_is_a_version_error_not_a_parse_error() -> None:
    # A future hello may carry fields this version has never heard of.
    future = json.loads(_frame("hello", {**HELLO, "protocol_version": 99, "new_field": 1}))
    assert p.peek_protocol_version(future) == 99
    err = p.version_error(99)
    assert err is not None and err.code == "protocol_too_new"
    old = p.version_error(0)
    assert old is not None and old.code == "protocol_too_old"
    assert p.version_error(p.PROTOCOL_VERSION) is None
    assert p.peek_protocol_version({"type": "heartbeat", "payload": {}}) is None


def test_secrets_do_not_leak_through_repr() -> None:
    creds = p.RepoCredentials(
        url="rest:http://u:hunter22@h/",
        password="hunter22",
        backend_password="hunter33",
        env={"AWS_SECRET_ACCESS_KEY": "hunter44"},
    )
    text = repr(p.ConfigUpdate(repository=creds))
    assert "hunter" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("AB:cd" + ":ef" * 29 + ":01", "abcd" + "ef" * 29 + "01"), ("sha256:" + "A" * 64, "a" * 64)],
)
def test_fingerprint_normalisation(text: str, expected: str) -> None:
    assert p.normalize_fingerprint(text) == expected


def test_fingerprint_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        p.normalize_fingerprint("abc")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(type_=st.sampled_from([*sorted(p.MESSAGE_TYPES), "x"]), payload=json_values)
def test_arbitrary_payloads_only_ever_raise_protocol_error(type_: str, payload: object) -> None:
    frame = json.dumps({"type": type_, "id": "x", "ts": 1, "payload": payload})
    with contextlib.suppress(p.ProtocolError):
        p.decode(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data: bytes | str) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data)


def test_url_passwords_with_at_signs_are_hidden_whole() -> None:
    assert p.redact_url("rest:https://u:p@ss@host:8000/repo") == "rest:https://u:***@host:8000/repo"
    assert p.redact_url("rest:https://u@host/") == "rest:https://u@host/"
    assert p.redact_url("/srv/restic") == "/srv/restic"
