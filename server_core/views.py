"""Read models handed across the server_core boundary (to the API and the UI).

Plain frozen dataclasses: no peewee objects leave server_core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def as_json(obj: Any) -> Any:
    """A view (or list of views) as JSON-ready data."""
    if isinstance(obj, list):
        return [as_json(o) for o in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [as_json(o) for o in obj]
    if isinstance(obj, dict):
        return {k: as_json(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class HostView:
    id: int
    name: str
    status: str  # online | offline
    enrolled: bool
    os: str | None
    arch: str | None
    agent_version: str | None
    restic_version: str | None
    last_seen_at: float | None
    last_backup_at: float | None
    last_backup_status: str | None
    repo_status: str  # unknown | ready | init_failed | locked
    repo_status_error: str | None
    snapshot_count: int
    repo_size_bytes: int | None
    open_alerts: int
    tags: list[str]
    presence_mode: str
    created_at: float
    # The schedule set the control plane holds and the one the agent last acked.
    schedule_version: int = 0
    schedule_acked_version: int = 0
    # Earliest next firing of any enabled schedule of the host.
    next_run_at: float | None = None
    # Repository size per day for the last 30 days, oldest first (None = no sample).
    size_history: list[int | None] = field(default_factory=list)
    # Bandwidth caps in KiB/s (None = unlimited).
    upload_kib_s: int | None = None
    download_kib_s: int | None = None
    # The most recently queued restore job: its id, status and when it
    # finished (or started, or was queued, while it has not finished).
    latest_restore_job_id: str | None = None
    latest_restore_status: str | None = None
    latest_restore_at: float | None = None


@dataclass(frozen=True)
class CredentialSummary:
    slot: str
    url: str  # with any embedded password removed
    has_password: bool
    username: str | None
    env_keys: list[str]
    updated_at: float


@dataclass(frozen=True)
class SourceGroupView:
    id: int
    host_id: int
    name: str
    includes: list[str]
    excludes: list[str]
    retention: dict[str, Any]
    retry_max: int
    retry_backoff_seconds: int
    has_pre_hook: bool
    has_post_hook: bool
    created_at: float
    updated_at: float
    # The hook commands themselves, for the operator's edit form and the API.
    pre_hook: str | None = None
    post_hook: str | None = None
    # Names of the schedules that back this group up (a group in use cannot be deleted).
    schedule_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class HostHooksView:
    """Host-level default hooks, used by groups that have none of their own."""

    host_id: int
    pre_hook: str | None
    post_hook: str | None


@dataclass(frozen=True)
class ScheduleView:
    id: int
    host_id: int
    cron: str
    enabled: bool
    source_group_ids: list[int]
    description: str  # human-readable cron, e.g. "every day at 02:30"
    next_run_at: float | None  # None when disabled
    last_run_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ConflictView:
    """A retention/schedule combination that will not do what it says."""

    kind: str  # e.g. "keep_hourly_without_hourly_schedule", "group_not_scheduled"
    message: str
    source_group_id: int | None = None
    schedule_id: int | None = None


@dataclass(frozen=True)
class MaintenanceView:
    host_id: int
    enabled: bool
    forget_cron: str | None
    prune_cron: str | None
    check_cron: str | None
    check_subset_percent: int
    last_forget_at: float | None
    last_prune_at: float | None
    last_check_at: float | None
    last_check_status: str | None
    next_forget_at: float | None
    next_prune_at: float | None
    next_check_at: float | None
    # Kinds whose window has passed but which wait for the app and the host.
    due: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RepoStatsPoint:
    day: str  # YYYY-MM-DD (UTC)
    total_size: int | None
    total_uncompressed_size: int | None
    snapshot_count: int | None
    file_count: int | None


@dataclass(frozen=True)
class RepoStatsView:
    host_id: int
    collected_at: float | None
    total_size: int | None
    total_uncompressed_size: int | None
    snapshot_count: int | None
    file_count: int | None
    last_check_at: float | None
    last_check_status: str | None
    last_prune_at: float | None
    history: list[RepoStatsPoint] = field(default_factory=list)


@dataclass(frozen=True)
class JobView:
    id: str
    host_id: int
    kind: str
    status: str
    actor: str
    source_group_id: int | None
    schedule_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    error: str | None
    warnings: bool
    summary: dict[str, Any] | None
    progress: dict[str, Any] | None
    log_lines: int
    # What the agent says it wrote; differs from log_lines only if lines were lost.
    log_lines_reported: int | None


@dataclass(frozen=True)
class LogLineView:
    seq: int
    ts: float
    stream: str
    text: str


@dataclass(frozen=True)
class SnapshotView:
    id: str
    short_id: str
    time: str
    hostname: str
    paths: list[str]
    tags: list[str]


@dataclass(frozen=True)
class TreeEntryView:
    name: str
    type: str  # dir | file | symlink | other
    size: int  # a file's size; for a directory, the bytes of all files below it
    mtime: float | None
    files: int  # for a directory: how many files are below it


@dataclass(frozen=True)
class TreeListing:
    """One directory of a snapshot, as the agent's index answers it.

    While the index is being built, ``state`` is "building", ``nodes`` says
    how far it got and ``entries`` is empty: ask again shortly.
    """

    snapshot_id: str  # the full id
    path: str
    state: str  # building | ready | failed
    nodes: int
    elapsed_s: float
    error: str | None
    entries: list[TreeEntryView] = field(default_factory=list)
    total: int = 0  # children of `path` in all; `entries` may be one page of them


@dataclass(frozen=True)
class FindMatchView:
    snapshot_id: str
    path: str
    type: str
    size: int
    mtime: float | None


@dataclass(frozen=True)
class FindResults:
    matches: list[FindMatchView]
    truncated: bool = False
    # Snapshots whose index is still being built: search again for their matches.
    building: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AuditView:
    id: int
    ts: float
    actor_kind: str
    actor_id: str | None
    action: str
    target_kind: str | None
    target_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class EnrolmentTokenCreated:
    host_id: int
    token: str
    expires_at: float
    install_command: str


@dataclass(frozen=True)
class EnrolmentTokenView:
    """One enrolment token of a host (never the token itself: only its hash is kept)."""

    id: int
    host_id: int
    created_at: float
    expires_at: float
    used_at: float | None
    revoked_at: float | None
    state: str  # active | used | expired | revoked


@dataclass(frozen=True)
class ServerInfo:
    version: str
    agent_url: str
    cert_sha256: str
    data_dir: str
    key_source: str
    warnings: list[str] = field(default_factory=list)
    # The operator API listener, e.g. http://127.0.0.1:8766 (None before it is bound).
    api_url: str | None = None


# -- alerts, notifications, audit, settings -------------------------------------


@dataclass(frozen=True)
class AlertView:
    id: int
    kind: str  # backup_failed | forget_failed | … (server_core.alert_rules.KINDS)
    severity: str  # info | warning | critical
    host_id: int | None
    host_name: str | None
    status: str  # open | acknowledged | resolved
    message: str
    first_seen_at: float
    last_seen_at: float
    count: int
    acknowledged_at: float | None = None
    resolved_at: float | None = None


@dataclass(frozen=True)
class AlertCounts:
    open: int
    acknowledged: int
    # The worst severity among unresolved alerts, None when there are none.
    worst_severity: str | None


@dataclass(frozen=True)
class ChannelView:
    """A notification channel as it may be shown: secrets never leave the service;
    secret_fields names those that are set."""

    id: int
    kind: str  # webhook | ntfy | smtp
    name: str
    enabled: bool
    min_severity: str
    config: dict[str, Any]  # the non-secret part
    secret_fields: list[str]
    created_at: float


@dataclass(frozen=True)
class DeliveryView:
    """One attempt to deliver one notification on one channel."""

    id: int
    channel_id: int
    channel_name: str
    alert_id: int | None
    ts: float
    event: str  # raised | acknowledged | resolved | test
    ok: bool
    detail: str | None  # "HTTP 200", "250 OK", or the error
    latency_ms: int | None
    attempt: int = 1


@dataclass(frozen=True)
class TestResult:
    ok: bool
    detail: str
    latency_ms: int


@dataclass(frozen=True)
class AuditQuery:
    since: float | None = None
    until: float | None = None
    actor_kind: str | None = None  # operator | api | agent | system
    action: str | None = None  # exact, or a prefix ending in "." ("alert.")
    target: str | None = None  # "kind" or "kind:id" ("host:3")
    text: str | None = None  # free text over action, actor, target and payload
    limit: int = 1000
    before_id: int | None = None  # paging: entries older than this id


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditView]
    # True when more matching entries exist beyond this page (older ones).
    more: bool


@dataclass(frozen=True)
class MetricsSettingsView:
    enabled: bool
    token_set: bool
