"""The wire contract between agents and the control plane.

Every frame is one JSON text object ``{"type", "id", "ts", "payload"}``.
Payloads are dataclasses; decoding is strict (unknown message types,
unknown or missing fields, wrong types and oversized frames are refused
with a :class:`ProtocolError` that names the problem) so that neither side
ever acts on a half-understood message.

This module is shared by the agent and the control plane and therefore
imports nothing but the standard library.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
import time
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024
# aiohttp's max_msg_size for sockets that carry protocol frames: aiohttp
# refuses payloads of max_msg_size bytes *or more*, the protocol allows
# frames of up to MAX_FRAME_BYTES inclusive.
WS_MAX_MSG_SIZE = MAX_FRAME_BYTES + 1
# Nesting deeper than any legitimate payload is refused before it reaches
# the type walker, so a hostile frame cannot exhaust the stack.
MAX_NESTING = 32

# Bounds every decoded value must respect: SQLite integers are 64-bit, and
# no legitimate string comes near the cap (log lines are cut at 64 KiB).
MAX_INT = 2**63 - 1
MAX_STRING = 256 * 1024
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_FIELDS = frozenset({"job_id", "call_id"})

HEARTBEAT_INTERVAL_S = 30.0
OFFLINE_AFTER_S = 90.0

JobKind = Literal[
    "backup",
    "init",
    "forget",
    "prune",
    "check",
    "unlock",
    "restore",
    "diff",
    "update",
    "snapshots",
    "stats",
]
JOB_KINDS: tuple[str, ...] = get_args(JobKind)
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
Actor = Literal["operator", "schedule", "system", "agent"]
LogStream = Literal["stdout", "stderr", "agent", "hook"]

ErrorCode = Literal[
    "protocol_too_old",
    "protocol_too_new",
    "bad_frame",
    "unauthorized",
    "forbidden",
    "not_found",
    "internal",
]


# "scheme://user:password@host": the password part, to hide it in repr().
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^/\s]*@")


def redact_url(url: str) -> str:
    """Hide a password embedded in a URL (`rest:http://user:pw@host` -> `user:***@`)."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class ProtocolError(ValueError):
    """A frame that cannot be accepted; ``code`` is suitable for an error envelope."""

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# Payload building blocks


@dataclass(frozen=True)
class RepoCredentials:
    url: str
    password: str
    username: str | None = None
    backend_password: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Never let a secret slip into a log line through repr().
        return (
            f"RepoCredentials(url={redact_url(self.url)!r}, password='***', "
            f"username={self.username!r}, env_keys={sorted(self.env)})"
        )


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in dataclasses.astuple(self))


@dataclass(frozen=True)
class SourceGroupSpec:
    id: int
    name: str
    includes: list[str]
    excludes: list[str] = field(default_factory=list)
    retention: Retention = field(default_factory=Retention)
    retry_max: int = 0
    retry_backoff_seconds: int = 300
    pre_hook: str | None = None
    post_hook: str | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    id: int
    cron: str
    enabled: bool
    source_group_ids: list[int]


@dataclass(frozen=True)
class MaintenanceSpec:
    enabled: bool = True
    forget_cron: str | None = None
    prune_cron: str | None = None
    check_cron: str | None = None
    check_subset_percent: int = 5


@dataclass(frozen=True)
class Bandwidth:
    upload_kib_s: int | None = None
    download_kib_s: int | None = None


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    stream: LogStream
    text: str


@dataclass(frozen=True)
class Progress:
    percent: float
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    current_file: str | None = None
    eta_seconds: int | None = None


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    short_id: str
    time: str
    hostname: str
    paths: list[str]
    tags: list[str] = field(default_factory=list)
    tree: str | None = None


@dataclass(frozen=True)
class RpcError:
    code: str
    message: str


# Restore, browse and diff: RPC params/results and job args, carried inside
# RpcCall.params / RpcResult.result / CommandRun.args and decoded with
# from_dict at each end.

TREE_LIST = "tree.list"
TREE_FIND = "tree.find"
TreeEntryType = Literal["dir", "file", "symlink", "other"]
IndexState = Literal["building", "ready", "failed"]


@dataclass(frozen=True)
class TreeListParams:
    snapshot_id: str
    path: str = "/"
    offset: int = 0
    limit: int = 5000


@dataclass(frozen=True)
class TreeEntry:
    name: str
    type: TreeEntryType
    size: int = 0  # a file's size; for a directory, the bytes of all files below it
    mtime: float | None = None
    files: int = 0  # for a directory: how many files are below it


@dataclass(frozen=True)
class IndexStatus:
    state: IndexState
    nodes: int = 0  # nodes indexed so far (or in total once ready)
    elapsed_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class TreeListResult:
    snapshot_id: str
    path: str
    index: IndexStatus
    entries: list[TreeEntry] = field(default_factory=list)
    total: int = 0  # children of `path` in all (entries may be one page of them)


@dataclass(frozen=True)
class TreeFindParams:
    pattern: str  # a name or a glob (*, ?, [...]) matched against entry names
    snapshot_id: str | None = None  # None: every snapshot of the host
    limit: int = 500


@dataclass(frozen=True)
class TreeMatch:
    snapshot_id: str
    path: str
    type: TreeEntryType
    size: int = 0
    mtime: float | None = None


@dataclass(frozen=True)
class TreeFindResult:
    matches: list[TreeMatch]
    truncated: bool = False
    # Snapshots whose index is still being built: ask again for their matches.
    building: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreArgs:
    snapshot_id: str
    paths: list[str]  # absolute paths inside the snapshot; become --include
    target_dir: str | None = None  # None with in_place False: under the restore dir
    in_place: bool = False


@dataclass(frozen=True)
class DiffArgs:
    snapshot_a: str
    snapshot_b: str


# ---------------------------------------------------------------------------
# Messages. ``TYPE`` is the wire name; ``DURABLE`` marks agent events that
# go through the agent's outbox and are acknowledged by the server.


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    DURABLE: ClassVar[bool] = False


# Agent -> control plane -----------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    protocol_version: int
    agent_version: str
    hostname: str
    os: str
    arch: str
    restic_version: str | None = None
    schedule_version: int = 0
    running_job_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    running_job_ids: list[str] = field(default_factory=list)
    outbox_pending: int = 0


@dataclass(frozen=True)
class JobStarted(Message):
    TYPE: ClassVar[str] = "job.started"
    DURABLE: ClassVar[bool] = True
    job_id: str
    seq: int
    kind: JobKind
    actor: Actor
    started_at: float
    source_group_id: int | None = None
    schedule_id: int | None = None
    # What the job was started with, for jobs the agent mints itself: the
    # cron window it serves, whether it is a catch-up, the attempt number and
    # the job a retry repeats. Never secrets.
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobProgress(Message):
    TYPE: ClassVar[str] = "job.progress"
    DURABLE: ClassVar[bool] = True
    job_id: str
    seq: int
    progress: Progress


@dataclass(frozen=True)
class JobLog(Message):
    TYPE: ClassVar[str] = "job.log"
    DURABLE: ClassVar[bool] = True
    job_id: str
    seq: int
    lines: list[LogLine]


@dataclass(frozen=True)
class JobFinished(Message):
    TYPE: ClassVar[str] = "job.finished"
    DURABLE: ClassVar[bool] = True
    job_id: str
    seq: int
    status: Literal["succeeded", "failed", "cancelled"]
    finished_at: float
    exit_code: int | None = None
    error: str | None = None
    warnings: bool = False
    summary: dict[str, Any] | None = None
    # How many log lines the agent wrote, so a gap in the stored log shows.
    log_lines: int | None = None
    # The repository's state as the agent saw it: set by init/probe jobs, and
    # "locked" by any job that found a lock left by another restic process.
    repo_status: Literal["ready", "init_failed", "locked"] | None = None


@dataclass(frozen=True)
class SnapshotsReport(Message):
    TYPE: ClassVar[str] = "snapshots.report"
    DURABLE: ClassVar[bool] = True
    collected_at: float
    snapshots: list[SnapshotInfo]
    job_id: str | None = None
    # A long list goes in several reports with the same collected_at; the
    # last one says complete, and only then are vanished snapshots dropped.
    complete: bool = True


@dataclass(frozen=True)
class RepoStatsReport(Message):
    TYPE: ClassVar[str] = "repo.stats"
    DURABLE: ClassVar[bool] = True
    collected_at: float
    total_size: int
    snapshot_count: int | None = None
    total_uncompressed_size: int | None = None
    blob_count: int | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class ScheduleAck(Message):
    TYPE: ClassVar[str] = "schedule.ack"
    version: int


@dataclass(frozen=True)
class RpcResult(Message):
    TYPE: ClassVar[str] = "rpc.result"
    call_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: RpcError | None = None


# Control plane -> agent -----------------------------------------------------


@dataclass(frozen=True)
class ConfigUpdate(Message):
    TYPE: ClassVar[str] = "config.update"
    repository: RepoCredentials | None
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    default_pre_hook: str | None = None
    default_post_hook: str | None = None
    restore_dir: str | None = None


@dataclass(frozen=True)
class ScheduleSet(Message):
    TYPE: ClassVar[str] = "schedule.set"
    version: int
    schedules: list[ScheduleSpec]
    source_groups: list[SourceGroupSpec]
    maintenance: MaintenanceSpec = field(default_factory=MaintenanceSpec)


@dataclass(frozen=True)
class CommandRun(Message):
    TYPE: ClassVar[str] = "command.run"
    job_id: str
    kind: JobKind
    actor: Actor
    source_group: SourceGroupSpec | None = None
    # Only for jobs that need the admin slot; the agent never persists it.
    credentials: RepoCredentials | None = None
    bandwidth: Bandwidth | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandCancel(Message):
    TYPE: ClassVar[str] = "command.cancel"
    job_id: str


@dataclass(frozen=True)
class CommandUpdate(Message):
    TYPE: ClassVar[str] = "command.update"
    job_id: str
    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class RpcCall(Message):
    TYPE: ClassVar[str] = "rpc.call"
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    ids: list[str]


@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    # The id of the frame this error answers, when there was one.
    ref: str | None = None


AGENT_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Heartbeat,
    JobStarted,
    JobProgress,
    JobLog,
    JobFinished,
    SnapshotsReport,
    RepoStatsReport,
    ScheduleAck,
    RpcResult,
    Error,
)
SERVER_MESSAGES: tuple[type[Message], ...] = (
    ConfigUpdate,
    ScheduleSet,
    CommandRun,
    CommandCancel,
    CommandUpdate,
    RpcCall,
    Ack,
    Error,
)
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (*AGENT_MESSAGES, *SERVER_MESSAGES)
}


# ---------------------------------------------------------------------------
# Enrolment (plain HTTPS JSON, before the WebSocket exists)

ENROL_PATH = "/api/agents/enrol"
WS_PATH = "/ws/agent"


@dataclass(frozen=True)
class EnrolRequest:
    token: str
    hostname: str
    os: str
    arch: str
    agent_version: str
    restic_version: str | None = None


@dataclass(frozen=True)
class EnrolResponse:
    host_id: int
    bearer: str
    hostname: str

    def __repr__(self) -> str:
        return (
            f"EnrolResponse(host_id={self.host_id}, bearer=<redacted>, hostname={self.hostname!r})"
        )


# ---------------------------------------------------------------------------
# Envelope


@dataclass(frozen=True)
class Envelope:
    type: str
    id: str
    ts: float
    payload: Message


M = TypeVar("M", bound=Message)


def new_id() -> str:
    return uuid.uuid4().hex


def encode(message: Message, *, msg_id: str | None = None, ts: float | None = None) -> str:
    """Serialise a message to one text frame."""
    frame = {
        "type": message.TYPE,
        "id": msg_id or new_id(),
        "ts": time.time() if ts is None else ts,
        "payload": to_dict(message),
    }
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text.encode("utf-8")) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{message.TYPE} frame exceeds {MAX_FRAME_BYTES} bytes")
    return text


def parse_frame(data: str | bytes) -> dict[str, Any]:
    """First stage of decoding: size cap, JSON, envelope shape."""
    if isinstance(data, str):
        size = len(data.encode("utf-8", errors="surrogatepass"))
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise ProtocolError("frame must be text")
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object")
    _check_values(obj, 0)
    for key, kind in (("type", str), ("id", str)):
        if not isinstance(obj.get(key), kind):
            raise ProtocolError(f"envelope field '{key}' must be a string")
    if not _is_number(obj.get("ts")):
        raise ProtocolError("envelope field 'ts' must be a number")
    if not isinstance(obj.get("payload"), dict):
        raise ProtocolError("envelope field 'payload' must be an object")
    extra = set(obj) - {"type", "id", "ts", "payload"}
    if extra:
        raise ProtocolError(f"unknown envelope field(s): {', '.join(sorted(extra))}")
    if len(obj["id"]) > 128:
        raise ProtocolError("envelope id is too long")
    return obj


def decode(data: str | bytes, *, allowed: tuple[type[Message], ...] | None = None) -> Envelope:
    """Decode one frame strictly; raises ProtocolError with a clear message."""
    obj = parse_frame(data)
    cls = MESSAGE_TYPES.get(obj["type"])
    if cls is None or (allowed is not None and cls not in allowed):
        raise ProtocolError(f"unknown message type {obj['type']!r}")
    payload = from_dict(cls, obj["payload"])
    return Envelope(type=obj["type"], id=obj["id"], ts=float(obj["ts"]), payload=payload)


def peek_protocol_version(frame: Mapping[str, Any]) -> int | None:
    """The protocol version a hello claims, read before strict decoding so
    that an agent of another version gets a version error, not a parse error."""
    payload = frame.get("payload")
    if frame.get("type") != Hello.TYPE or not isinstance(payload, dict):
        return None
    version = payload.get("protocol_version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    return None


def version_error(agent_version: int) -> Error | None:
    """The error to send to an agent speaking ``agent_version``, or None if compatible."""
    if agent_version < PROTOCOL_VERSION:
        return Error(
            code="protocol_too_old",
            message=(
                f"agent speaks protocol {agent_version}, the control plane needs "
                f"{PROTOCOL_VERSION}: update the agent"
            ),
        )
    if agent_version > PROTOCOL_VERSION:
        return Error(
            code="protocol_too_new",
            message=(
                f"agent speaks protocol {agent_version}, the control plane only knows "
                f"{PROTOCOL_VERSION}: update the desktop app"
            ),
        )
    return None


_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint as lowercase hex; colons, spaces and case ignored."""
    cleaned = re.sub(r"[\s:]", "", text).lower()
    if cleaned.startswith("sha256"):
        cleaned = cleaned[len("sha256") :].lstrip("=")
    if not _HEX.match(cleaned):
        raise ValueError("certificate fingerprint must be 64 hexadecimal digits (SHA-256)")
    return cleaned


# ---------------------------------------------------------------------------
# Dataclass <-> dict


def to_dict(obj: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"{obj!r} is not a dataclass instance")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


T = TypeVar("T")


def from_dict(cls: type[T], data: Any, *, path: str = "") -> T:
    """Build ``cls`` from ``data``, checking every field against its type hint."""
    where = path or getattr(cls, "TYPE", "") or cls.__name__
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected an object")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing field '{name}'")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
        value = kwargs[name]
        if name in _ID_FIELDS and isinstance(value, str) and not JOB_ID_PATTERN.fullmatch(value):
            raise ProtocolError(f"{where}.{name}: must be 1-64 letters, digits, '-' or '_'")
    return cls(**kwargs)


_HINT_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINT_CACHE.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINT_CACHE[cls] = hints
    return hints


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        # Free-form values (summaries, RPC params) are already plain JSON.
        return value
    if origin is Union or origin is types.UnionType:
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ProtocolError(f"{where}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ProtocolError as exc:
                errors.append(str(exc))
        raise ProtocolError(errors[0] if len(errors) == 1 else f"{where}: wrong type")
    if value is None:
        raise ProtocolError(f"{where}: must not be null")
    if origin is Literal:
        allowed = get_args(hint)
        if not isinstance(value, str) or value not in allowed:
            raise ProtocolError(f"{where}: must be one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        (item,) = get_args(hint)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        _, item = get_args(hint)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path=where)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{where}: expected an integer")
        return value
    if hint is float:
        if not _is_number(value):
            raise ProtocolError(f"{where}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string")
        # Also for what does not come through decode (the enrol request's body).
        _check_text(value, where)
        return value
    raise ProtocolError(f"{where}: unsupported type {hint!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_text(value: str, where: str | None = None) -> None:
    # JSON may spell an unpaired surrogate ("\\ud800"): such a string is not
    # Unicode text, and can be neither stored (SQLite is UTF-8) nor encoded
    # again. isascii() is O(1), so ordinary strings cost nothing here.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            what = f"{where}: text" if where else "frame has a string that"
            raise ProtocolError(f"{what} is not Unicode text (an unpaired surrogate)") from None


def _check_values(value: Any, depth: int) -> None:
    """Refuse what JSON allows but nobody should send: deep nesting, huge or
    non-finite numbers, giant strings, strings that are not Unicode text."""
    if depth > MAX_NESTING:
        raise ProtocolError(f"frame nests deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if len(k) > MAX_STRING:
                raise ProtocolError("frame has an oversized key")
            _check_text(k)
            _check_values(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_values(v, depth + 1)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ProtocolError("frame has an integer outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("frame has a number that is not finite")
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ProtocolError(f"frame has a string longer than {MAX_STRING} characters")
        _check_text(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# ---------------------------------------------------------------------------
# Announce-and-approve: a host with no token announces itself on a pending
# WebSocket, proves it holds an Ed25519 key by signing the server's nonce,
# and waits for the operator to accept or reject it. These frames are only
# valid on ANNOUNCE_PATH (never on the agent socket) and decode with
# ``decode_announce``.

ANNOUNCE_PATH = "/ws/announce"
ANNOUNCE_NONCE_BYTES = 32
ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
# Signed before the nonce: a signature made for this handshake can never
# pass for a signature over anything else the key might sign.
ANNOUNCE_SIGNING_CONTEXT = b"restic-manager announce proof v1\x00"

AnnounceOutcome = Literal["rejected", "expired", "refused"]


@dataclass(frozen=True)
class Announce(Message):
    """Agent -> server, first frame: who this host says it is, and its public key."""

    TYPE: ClassVar[str] = "announce"
    protocol_version: int
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    hostname: str
    os: str
    arch: str
    agent_version: str
    restic_version: str | None = None
    # True when reconnecting after a drop: an outcome decided while the agent
    # was away (rejected, expired) is then delivered instead of a new request.
    resume: bool = False


@dataclass(frozen=True)
class AnnounceChallenge(Message):
    """Server -> agent: sign ``announce_signed_bytes(nonce, key, cert pin)``."""

    TYPE: ClassVar[str] = "announce.challenge"
    nonce: str  # base64, ANNOUNCE_NONCE_BYTES random bytes, valid for one proof only
    fingerprint: str  # the server's reading of the key, for the agent to check


@dataclass(frozen=True)
class AnnounceProof(Message):
    TYPE: ClassVar[str] = "announce.proof"
    signature: str  # base64 of the 64-byte Ed25519 signature


@dataclass(frozen=True)
class AnnouncePending(Message):
    """Server -> agent: listed in the app; wait for the operator."""

    TYPE: ClassVar[str] = "announce.pending"
    pending_id: int
    fingerprint: str
    expires_at: float
    duplicate: str | None = None  # why the app flags the hostname, if it does


@dataclass(frozen=True)
class AnnounceAccepted(Message):
    """Server -> agent: the operator accepted; the same material token enrolment yields."""

    TYPE: ClassVar[str] = "announce.accepted"
    host_id: int
    bearer: str
    hostname: str

    def __repr__(self) -> str:
        return (
            f"AnnounceAccepted(host_id={self.host_id}, bearer=<redacted>, "
            f"hostname={self.hostname!r})"
        )


@dataclass(frozen=True)
class AnnounceEnrolled(Message):
    """Agent -> server: the enrolment was written to disk (or why it was not)."""

    TYPE: ClassVar[str] = "announce.enrolled"
    ok: bool
    message: str | None = None


@dataclass(frozen=True)
class AnnounceRejected(Message):
    """Server -> agent, then a close: the request is over without enrolment."""

    TYPE: ClassVar[str] = "announce.rejected"
    outcome: AnnounceOutcome
    message: str


ANNOUNCE_AGENT_MESSAGES: tuple[type[Message], ...] = (
    Announce,
    AnnounceProof,
    AnnounceEnrolled,
    Error,
)
ANNOUNCE_SERVER_MESSAGES: tuple[type[Message], ...] = (
    AnnounceChallenge,
    AnnouncePending,
    AnnounceAccepted,
    AnnounceRejected,
    Error,
)
ANNOUNCE_MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (*ANNOUNCE_AGENT_MESSAGES, *ANNOUNCE_SERVER_MESSAGES)
}


def decode_announce(data: str | bytes, *, allowed: tuple[type[Message], ...]) -> Envelope:
    """``decode`` for the announce socket: only its own frames (and Error) pass."""
    obj = parse_frame(data)
    cls = ANNOUNCE_MESSAGE_TYPES.get(obj["type"])
    if cls is None or cls not in allowed:
        raise ProtocolError(f"unknown message type {obj['type']!r}")
    payload = from_dict(cls, obj["payload"])
    return Envelope(type=obj["type"], id=obj["id"], ts=float(obj["ts"]), payload=payload)


def key_fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64>`` of a raw public key, as OpenSSH prints key fingerprints
    (unpadded base64), so the operator compares the same text on both screens."""
    digest = hashlib.sha256(public_key).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def announce_signed_bytes(nonce: bytes, public_key: bytes, cert_sha256: str) -> bytes:
    """What the agent signs: the nonce, bound to its own key and to the server
    certificate it pinned, so a proof is good for this handshake only."""
    return (
        ANNOUNCE_SIGNING_CONTEXT
        + nonce
        + public_key
        + bytes.fromhex(normalize_fingerprint(cert_sha256))
    )


def b64decode_exact(text: str, size: int, what: str) -> bytes:
    """Strict base64 of exactly ``size`` bytes; ProtocolError naming ``what`` otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError(f"{what} must be base64") from None
    if len(raw) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw
