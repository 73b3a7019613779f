"""Property tests of agent/protocol.py decoding, both directions.

The contract (DESIGN.md §4): a frame either decodes into a fully typed message
or raises ProtocolError with a message — never another exception, never a
hang — and whatever decodes can be encoded again.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import protocol as p
from tests.fuzz.conftest import Figures, budget
from tests.fuzz.frames import (
    Frame,
    envelope,
    frames,
    hostile_frames,
    message_types,
    mutated_payload,
    payload_for,
)

# Decoding one frame of at most 1 MiB must stay well under this on a loaded
# 2-core machine: the control plane decodes on the loop the desktop UI shares.
DECODE_BUDGET_S = 0.25


def decode_any(frame: Frame, allowed: tuple[type[p.Message], ...] | None) -> p.Envelope | None:
    """Decode like a receiver would; None when refused with a ProtocolError."""
    data: str | bytes = frame.data
    try:
        return p.decode(data, allowed=allowed)
    except p.ProtocolError as exc:
        assert str(exc), "a refusal must say why"
        return None


def _timed_decode(figures: Figures, frame: Frame, allowed: tuple[type[p.Message], ...] | None):
    started = time.perf_counter()
    got = decode_any(frame, allowed)
    elapsed = time.perf_counter() - started
    figures.set("slowest_decode_ms", max(figures.values.get("slowest_decode_ms", 0), elapsed * 1e3))
    figures.count("protocol_frames", "accepted" if got is not None else "refused")
    assert elapsed < DECODE_BUDGET_S, f"decoding {frame!r} took {elapsed:.3f} s"
    return got


@budget(400)
@given(frame=frames(p.AGENT_MESSAGES))
def test_server_side_decoding_only_ever_refuses_with_a_protocol_error(
    frame: Frame, figures: Figures
) -> None:
    got = _timed_decode(figures, frame, p.AGENT_MESSAGES)
    if got is not None:
        assert isinstance(got.payload, p.AGENT_MESSAGES)


@budget(300)
@given(frame=frames(p.SERVER_MESSAGES))
def test_agent_side_decoding_only_ever_refuses_with_a_protocol_error(
    frame: Frame, figures: Figures
) -> None:
    got = _timed_decode(figures, frame, p.SERVER_MESSAGES)
    if got is not None:
        assert isinstance(got.payload, p.SERVER_MESSAGES)


@budget(150)
@given(frame=hostile_frames(p.ANNOUNCE_AGENT_MESSAGES))
def test_announce_decoding_only_ever_refuses_with_a_protocol_error(
    frame: Frame, figures: Figures
) -> None:
    figures.count("protocol_frames", "announce")
    with contextlib.suppress(p.ProtocolError):
        p.decode_announce(frame.data, allowed=p.ANNOUNCE_AGENT_MESSAGES)


@budget(300)
@given(data=st.data())
def test_every_valid_payload_round_trips(data: st.DataObject, figures: Figures) -> None:
    cls = data.draw(message_types(tuple(p.MESSAGE_TYPES.values())))
    payload = data.draw(payload_for(cls))
    figures.count("protocol_frames", "round_trip")
    got = p.decode(envelope(cls.TYPE, payload, msg_id="m1"))
    assert type(got.payload) is cls
    again = p.decode(p.encode(got.payload, msg_id="m1", ts=got.ts))
    assert again.payload == got.payload


@budget(300)
@given(data=st.data())
def test_a_mutated_payload_is_refused_or_still_well_typed(
    data: st.DataObject, figures: Figures
) -> None:
    cls = data.draw(message_types(tuple(p.MESSAGE_TYPES.values())))
    payload = data.draw(mutated_payload(cls))
    text = envelope(cls.TYPE, payload)
    figures.count("protocol_frames", "mutated")
    try:
        got = p.decode(text)
    except p.ProtocolError:
        return
    # A mutation that kept the payload valid (e.g. replaced a value with one
    # of the right type): what was accepted can be sent on as it is.
    assert type(got.payload) is cls
    assert not _has_surrogate(text), "a string that is not Unicode text was accepted"
    try:
        again = p.decode(p.encode(got.payload, msg_id=got.id, ts=got.ts))
    except p.ProtocolError as exc:
        assert "exceeds" in str(exc)  # re-encoded a little larger than the original
        return
    assert again.payload == got.payload


def _has_surrogate(text: str) -> bool:
    # envelope() writes with ensure_ascii=False: a surrogate stays a raw character.
    return any("\ud800" <= c <= "\udfff" for c in text)


@budget(200)
@given(data=st.binary(max_size=2000) | st.text(max_size=2000))
def test_arbitrary_input_never_escapes_as_another_exception(data: bytes | str) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data)


@pytest.mark.parametrize("depth", [p.MAX_NESTING + 1, 900, 20_000, 200_000])
def test_deep_nesting_is_refused_quickly(depth: int) -> None:
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        text = envelope("heartbeat", {}).replace("{}", opener * depth + "1" + closer * depth)
        started = time.perf_counter()
        with pytest.raises(p.ProtocolError, match=r"deeper|valid JSON|exceeds"):
            p.decode(text[: p.MAX_FRAME_BYTES] if len(text) > p.MAX_FRAME_BYTES else text)
        assert time.perf_counter() - started < DECODE_BUDGET_S


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_strings_that_are_not_unicode_text_are_refused_at_decode(text: str) -> None:
    frame = json.dumps({"type": "error", "id": "x", "ts": 1, "payload": {"code": "internal",
                        "message": text}})  # fmt: skip
    with pytest.raises(p.ProtocolError):
        p.decode(frame)


def test_keys_that_are_not_unicode_text_are_refused_at_decode() -> None:
    # Free-form payload fields (a job summary) carry keys nothing else checks.
    done = p.JobFinished(
        job_id="j1", seq=1, status="succeeded", finished_at=1.7e9, summary={"files": 1}
    )
    frame = p.encode(done).replace('"files"', '"\\udc80files"')
    with pytest.raises(p.ProtocolError, match="not Unicode text"):
        p.decode(frame)
