"""Hypothesis strategies for wire frames: well-formed messages of every type,
and hostile ones — wrong types, missing and unknown fields, huge strings,
deep nesting, out-of-range numbers, envelopes that lie, binary frames,
invalid UTF-8 and plain junk.

Payloads are generated as plain dicts from the dataclasses' type hints, so a
message type added to agent/protocol.py is fuzzed without touching this file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from hypothesis import strategies as st

from agent import protocol as p

# Names the strategies pick from for job ids, so hostile events hit the same
# few jobs again and again (replays, reordering) instead of always new ones.
JOB_IDS = st.sampled_from(["fuzzjob1", "fuzzjob2", "f" * 64, "job-3_x"]) | st.from_regex(
    p.JOB_ID_PATTERN, fullmatch=True
)

# Valid JSON as the protocol takes it: 64-bit integers (bigger ones are in
# odd_numbers below, with the hostile values).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)


def value_for(hint: Any, name: str = "") -> st.SearchStrategy[Any]:
    """A valid JSON value for a field of this type (as the wire carries it)."""
    if name in ("job_id", "call_id"):
        return JOB_IDS
    if hint is Any:
        return json_values
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return st.one_of([value_for(a, name) for a in get_args(hint)])
    if hint is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(hint))
    if origin is list:
        return st.lists(value_for(get_args(hint)[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=12), value_for(get_args(hint)[1]), max_size=4)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return payload_for(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(0, 2**40)
    if hint is str:
        return st.text(max_size=40)
    raise TypeError(f"no strategy for {hint!r}")


def payload_for(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """A payload dict ``from_dict(cls, ...)`` accepts: required fields always,
    fields with defaults sometimes."""
    hints = typing.get_type_hints(cls)
    required, optional = {}, {}
    for f in dataclasses.fields(cls):
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        (optional if has_default else required)[f.name] = value_for(hints[f.name], f.name)
    return st.fixed_dictionaries(required, optional=optional)


def message_types(direction: tuple[type[p.Message], ...]) -> st.SearchStrategy[type[p.Message]]:
    return st.sampled_from(sorted(direction, key=lambda c: c.TYPE))


# -- hostile values ------------------------------------------------------------

# Sizes around the limits (a string cap of 256 KiB, a frame cap of 1 MiB).
HUGE_SIZES = (
    70_000,
    p.MAX_STRING,
    p.MAX_STRING + 1,
    p.MAX_FRAME_BYTES - 200,
    p.MAX_FRAME_BYTES + 1,
    3 * p.MAX_FRAME_BYTES,
)
huge_strings = st.builds(
    lambda n, c: c * n, st.sampled_from(HUGE_SIZES), st.sampled_from(["x", "é", "😀", "\\", '"'])
)


def nested(depth: int, leaf: Any, kind: str) -> Any:
    for _ in range(depth):
        leaf = [leaf] if kind == "list" else {"a": leaf}
    return leaf


deep_values = st.builds(
    nested,
    st.sampled_from([p.MAX_NESTING - 2, p.MAX_NESTING + 1, 100, 400]),
    json_scalars,
    st.sampled_from(["list", "dict"]),
)
odd_numbers = st.sampled_from(
    [2**63, -(2**63) - 1, 2**64 + 7, 10**30, 1e308, -1e308, 5e-324, -0.0, 0, -1]
)
# Lone surrogates survive json.loads (as "\\ud800" escapes) into Python strings
# that no UTF-8 database or log can store.
odd_strings = st.sampled_from(
    ["", "\x00", "\ud800", "a\udfffb", "\u202e", "../../etc/passwd", "'; DROP TABLE job;--", "ﷺ"]
)
hostile_values = (
    json_values | huge_strings | deep_values | odd_numbers | odd_strings | st.just({}) | st.just([])
)


@st.composite
def mutated_payload(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    payload = dict(draw(payload_for(cls)))
    names = [f.name for f in dataclasses.fields(cls)]
    how = draw(st.sampled_from(["replace", "drop", "extra", "null", "replace_nested"]))
    if how == "drop" and payload:
        payload.pop(draw(st.sampled_from(sorted(payload))))
    elif how == "extra":
        payload[draw(st.text(min_size=1, max_size=20))] = draw(hostile_values)
    elif how == "null" and names:
        payload[draw(st.sampled_from(names))] = None
    elif how == "replace_nested" and names:
        payload[draw(st.sampled_from(names))] = draw(
            st.lists(hostile_values, min_size=1, max_size=3)
            | st.dictionaries(st.text(max_size=8), hostile_values, min_size=1, max_size=3)
        )
    elif names:
        payload[draw(st.sampled_from(names))] = draw(hostile_values)
    return payload


# -- frames ----------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One WebSocket frame: text (a str), binary (bytes), or a text frame
    carrying raw bytes that need not be UTF-8."""

    kind: Literal["text", "binary", "raw_text"]
    data: str | bytes
    label: str

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep them readable
        return f"Frame({self.kind}, {self.label}, {len(self.data)} bytes: {self.data[:120]!r})"


def envelope(type_: Any, payload: Any, *, msg_id: Any = None, ts: Any = 1.7e9) -> str:
    return json.dumps(
        {"type": type_, "id": msg_id if msg_id is not None else p.new_id(), "ts": ts,
         "payload": payload},
        ensure_ascii=False,
    )  # fmt: skip


def _text(label: str) -> Any:
    return lambda data: Frame("text", data, label)


def valid_frames(
    direction: tuple[type[p.Message], ...] = p.AGENT_MESSAGES,
) -> st.SearchStrategy[Frame]:
    return message_types(direction).flatmap(
        lambda cls: payload_for(cls).map(
            lambda payload: Frame("text", envelope(cls.TYPE, payload), f"valid {cls.TYPE}")
        )
    )


def hostile_frames(
    direction: tuple[type[p.Message], ...] = p.AGENT_MESSAGES,
) -> st.SearchStrategy[Frame]:
    every_type = tuple(p.MESSAGE_TYPES.values())
    mutated = message_types(every_type).flatmap(
        lambda cls: mutated_payload(cls).map(
            lambda payload: Frame("text", envelope(cls.TYPE, payload), f"mutated {cls.TYPE}")
        )
    )
    wrong_direction = message_types(tuple(set(every_type) - set(direction))).flatmap(
        lambda cls: payload_for(cls).map(
            lambda payload: Frame("text", envelope(cls.TYPE, payload), f"wrong way {cls.TYPE}")
        )
    )
    lying_envelopes = st.one_of(
        st.builds(envelope, hostile_values, st.just({})).map(_text("envelope type")),
        st.builds(envelope, st.sampled_from(sorted(p.MESSAGE_TYPES)), hostile_values).map(
            _text("envelope payload")
        ),
        st.builds(
            lambda t, i: envelope(t, {}, msg_id=i),
            st.sampled_from(sorted(p.MESSAGE_TYPES)),
            hostile_values.filter(lambda v: v is not None),
        ).map(_text("envelope id")),
        st.builds(lambda ts: envelope("heartbeat", {}, ts=ts), hostile_values | st.just("NaN")).map(
            _text("envelope ts")
        ),
        st.builds(
            lambda extra, v: json.dumps(
                {"type": "heartbeat", "id": "x", "ts": 1, "payload": {}, extra: v}
            ),
            st.text(min_size=1, max_size=10).filter(
                lambda k: k not in ("type", "id", "ts", "payload")
            ),
            json_scalars,
        ).map(_text("envelope extra")),
        st.text(max_size=30).map(lambda t: envelope(t, {})).map(_text("unknown type")),
    )
    junk = st.one_of(
        st.text(max_size=200).map(_text("junk text")),
        json_values.map(lambda v: json.dumps(v)).map(_text("json not an envelope")),
        st.sampled_from(
            [
                "NaN",
                "[" * 100_000,
                '{"a":' * 50_000,
                '{"type":"heartbeat","id":"x","ts":Infinity,"payload":{}}',
                '{"type":"heartbeat","id":"x","ts":1e999,"payload":{}}',
                '{"type":"heartbeat","type":"hello","id":"x","ts":1,"payload":{}}',
                "\ufeff" + envelope("heartbeat", {}),
                envelope("heartbeat", {}) + "garbage",
                "",
            ]
        ).map(_text("json edge")),
        huge_strings.map(_text("huge text")),
        st.binary(max_size=300).map(lambda b: Frame("binary", b, "binary")),
        st.text(max_size=60).map(
            lambda t: Frame(
                "binary", envelope("heartbeat", {}).encode() + t.encode(), "binary json"
            )
        ),
        st.binary(min_size=1, max_size=60).map(
            lambda b: Frame("raw_text", b"\xff\xfe" + b, "invalid utf-8")
        ),
    )
    return st.one_of(mutated, mutated, mutated, wrong_direction, lying_envelopes, junk)


def frames(direction: tuple[type[p.Message], ...] = p.AGENT_MESSAGES) -> st.SearchStrategy[Frame]:
    """Mostly hostile, sometimes valid (valid frames between bad ones must still work)."""
    return st.one_of(hostile_frames(direction), hostile_frames(direction), valid_frames(direction))
