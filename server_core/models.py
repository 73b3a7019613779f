"""The control plane's data model (peewee over SQLite).

The tables are created by numbered migrations in ``migrations.py``; these
classes only describe them for queries. Secrets are stored as AEAD blobs
(``*_enc`` columns) bound to their row; tokens are stored as SHA-256.
"""

from __future__ import annotations

import peewee as pw

# Bound to a concrete database by Store.open(); left unbound so that no
# connection exists as an import side effect.


class BaseModel(pw.Model):  # type: ignore[misc]  # peewee ships no type hints
    class Meta:
        legacy_table_names = False


class Host(BaseModel):
    name = pw.TextField(unique=True)
    created_at = pw.FloatField()
    enrolled_at = pw.FloatField(null=True)
    bearer_hash = pw.TextField(null=True, unique=True)
    os = pw.TextField(null=True)
    arch = pw.TextField(null=True)
    agent_version = pw.TextField(null=True)
    restic_version = pw.TextField(null=True)
    online = pw.BooleanField(default=False)
    last_seen_at = pw.FloatField(null=True)
    last_ip = pw.TextField(null=True)
    tags = pw.TextField(default="[]")  # JSON list
    presence_mode = pw.TextField(default="always_on")  # always_on | laptop
    repo_status = pw.TextField(default="unknown")  # unknown | ready | init_failed | locked
    repo_status_error = pw.TextField(null=True)
    repo_status_at = pw.FloatField(null=True)
    schedule_version = pw.IntegerField(default=0)
    schedule_acked_version = pw.IntegerField(default=0)
    upload_kib_s = pw.IntegerField(null=True)
    download_kib_s = pw.IntegerField(null=True)
    default_hooks_enc = pw.BlobField(null=True)
    restore_dir = pw.TextField(null=True)


class EnrolmentToken(BaseModel):
    host = pw.ForeignKeyField(Host, backref="enrolment_tokens", on_delete="CASCADE")
    token_hash = pw.TextField(unique=True)
    created_at = pw.FloatField()
    expires_at = pw.FloatField()
    used_at = pw.FloatField(null=True)
    revoked_at = pw.FloatField(null=True)
    initial_paths = pw.TextField(default="[]")  # JSON list


class HostCredential(BaseModel):
    host = pw.ForeignKeyField(Host, backref="credentials", on_delete="CASCADE")
    slot = pw.TextField()  # everyday | admin
    # AEAD(JSON{url,password,username,backend_password,env}), bound to host+slot.
    secret_enc = pw.BlobField()
    url_display = pw.TextField()  # the URL with any embedded password removed
    updated_at = pw.FloatField()

    class Meta:
        indexes = ((("host", "slot"), True),)


class SourceGroup(BaseModel):
    host = pw.ForeignKeyField(Host, backref="source_groups", on_delete="CASCADE")
    name = pw.TextField()
    includes = pw.TextField()  # JSON list
    excludes = pw.TextField(default="[]")
    retention = pw.TextField(default="{}")  # JSON object, keep_* keys
    retry_max = pw.IntegerField(default=0)
    retry_backoff_seconds = pw.IntegerField(default=300)
    hooks_enc = pw.BlobField(null=True)  # AEAD(JSON{pre, post})
    created_at = pw.FloatField()
    updated_at = pw.FloatField()

    class Meta:
        indexes = ((("host", "name"), True),)


class Schedule(BaseModel):
    host = pw.ForeignKeyField(Host, backref="schedules", on_delete="CASCADE")
    cron = pw.TextField()
    enabled = pw.BooleanField(default=True)
    created_at = pw.FloatField()
    updated_at = pw.FloatField()
    last_run_at = pw.FloatField(null=True)


class ScheduleGroup(BaseModel):
    schedule = pw.ForeignKeyField(Schedule, backref="group_links", on_delete="CASCADE")
    source_group = pw.ForeignKeyField(SourceGroup, backref="schedule_links", on_delete="CASCADE")

    class Meta:
        indexes = ((("schedule", "source_group"), True),)


class Maintenance(BaseModel):
    host = pw.ForeignKeyField(Host, backref="maintenance", on_delete="CASCADE", unique=True)
    enabled = pw.BooleanField(default=True)
    forget_cron = pw.TextField(null=True)
    prune_cron = pw.TextField(null=True)
    check_cron = pw.TextField(null=True)
    check_subset_percent = pw.IntegerField(default=5)
    last_forget_at = pw.FloatField(null=True)
    last_prune_at = pw.FloatField(null=True)
    last_check_at = pw.FloatField(null=True)
    last_check_status = pw.TextField(null=True)
    created_at = pw.FloatField(null=True)  # v2; null for rows from before it


class Job(BaseModel):
    id = pw.TextField(primary_key=True)  # uuid hex, minted by whoever started the job
    host = pw.ForeignKeyField(Host, backref="jobs", on_delete="CASCADE")
    kind = pw.TextField()
    status = pw.TextField()  # queued | running | succeeded | failed | cancelled
    actor = pw.TextField()  # operator | schedule | system | agent
    source_group = pw.ForeignKeyField(SourceGroup, null=True, on_delete="SET NULL")
    schedule = pw.ForeignKeyField(Schedule, null=True, on_delete="SET NULL")
    args = pw.TextField(default="{}")  # JSON, never secrets
    created_at = pw.FloatField()
    started_at = pw.FloatField(null=True)
    finished_at = pw.FloatField(null=True)
    exit_code = pw.IntegerField(null=True)
    error = pw.TextField(null=True)
    warnings = pw.BooleanField(default=False)
    summary = pw.TextField(null=True)  # JSON
    progress = pw.TextField(null=True)  # JSON
    last_seq = pw.IntegerField(default=0)
    log_lines = pw.IntegerField(default=0)
    log_lines_reported = pw.IntegerField(null=True)  # what the agent says it wrote
    dispatched_at = pw.FloatField(null=True)  # when command.run last went out
    cancel_requested_at = pw.FloatField(null=True)

    class Meta:
        indexes = ((("host", "created_at"), False), (("host", "kind", "finished_at"), False))


class JobLogLine(BaseModel):
    job = pw.ForeignKeyField(Job, backref="log", on_delete="CASCADE")
    seq = pw.IntegerField()
    ts = pw.FloatField()
    stream = pw.TextField()
    text = pw.TextField()

    class Meta:
        table_name = "job_log"
        indexes = ((("job", "seq"), True),)


class Snapshot(BaseModel):
    host = pw.ForeignKeyField(Host, backref="snapshots", on_delete="CASCADE")
    snapshot_id = pw.TextField()
    short_id = pw.TextField()
    time = pw.TextField()
    hostname = pw.TextField()
    paths = pw.TextField()  # JSON list
    tags = pw.TextField(default="[]")
    tree = pw.TextField(null=True)
    seen_at = pw.FloatField()

    class Meta:
        indexes = ((("host", "snapshot_id"), True),)


class RepoStats(BaseModel):
    host = pw.ForeignKeyField(Host, backref="repo_stats", on_delete="CASCADE", unique=True)
    collected_at = pw.FloatField()
    total_size = pw.IntegerField()
    total_uncompressed_size = pw.IntegerField(null=True)
    snapshot_count = pw.IntegerField(null=True)
    blob_count = pw.IntegerField(null=True)
    file_count = pw.IntegerField(null=True)  # v2


class RepoStatsDaily(BaseModel):
    host = pw.ForeignKeyField(Host, backref="repo_stats_history", on_delete="CASCADE")
    day = pw.TextField()  # YYYY-MM-DD (UTC)
    total_size = pw.IntegerField(null=True)
    total_uncompressed_size = pw.IntegerField(null=True)
    snapshot_count = pw.IntegerField(null=True)
    blob_count = pw.IntegerField(null=True)
    file_count = pw.IntegerField(null=True)  # v2

    class Meta:
        indexes = ((("host", "day"), True),)


class Alert(BaseModel):
    host = pw.ForeignKeyField(Host, null=True, backref="alerts", on_delete="CASCADE")
    kind = pw.TextField()
    severity = pw.TextField()  # info | warning | critical
    dedup_key = pw.TextField()
    status = pw.TextField()  # open | acknowledged | resolved
    message = pw.TextField()
    first_seen_at = pw.FloatField()
    last_seen_at = pw.FloatField()
    count = pw.IntegerField(default=1)
    acknowledged_at = pw.FloatField(null=True)
    resolved_at = pw.FloatField(null=True)
    # "system" when the condition cleared, else the actor kind who resolved it.
    resolved_by = pw.TextField(null=True)

    class Meta:
        indexes = ((("dedup_key", "status"), False),)


class NotificationChannel(BaseModel):
    kind = pw.TextField()  # webhook | ntfy | smtp
    name = pw.TextField(unique=True)
    enabled = pw.BooleanField(default=True)
    min_severity = pw.TextField(default="warning")
    config = pw.TextField(default="{}")  # JSON, non-secret part
    secret_enc = pw.BlobField(null=True)  # AEAD(JSON of secret fields)
    created_at = pw.FloatField()


class NotificationAttempt(BaseModel):
    channel = pw.ForeignKeyField(NotificationChannel, backref="attempts", on_delete="CASCADE")
    alert = pw.ForeignKeyField(Alert, null=True, on_delete="SET NULL")
    ts = pw.FloatField()
    event = pw.TextField()  # raised | acknowledged | resolved | test
    ok = pw.BooleanField()
    detail = pw.TextField(null=True)
    latency_ms = pw.IntegerField(null=True)


class AuditEntry(BaseModel):
    ts = pw.FloatField(index=True)
    actor_kind = pw.TextField()  # operator | agent | system | api
    actor_id = pw.TextField(null=True)
    action = pw.TextField()
    target_kind = pw.TextField(null=True)
    target_id = pw.TextField(null=True)
    payload = pw.TextField(default="{}")  # JSON, never secrets


class ApiToken(BaseModel):
    name = pw.TextField()
    token_hash = pw.TextField(unique=True)
    created_at = pw.FloatField()
    last_used_at = pw.FloatField(null=True)
    revoked_at = pw.FloatField(null=True)


class PendingHost(BaseModel):
    fingerprint = pw.TextField(unique=True)
    public_key = pw.BlobField()
    hostname = pw.TextField()
    source_ip = pw.TextField()
    os = pw.TextField(null=True)
    arch = pw.TextField(null=True)
    agent_version = pw.TextField(null=True)
    created_at = pw.FloatField()
    expires_at = pw.FloatField()
    status = pw.TextField(default="pending")  # pending | accepted | rejected | expired


class Setting(BaseModel):
    key = pw.TextField(primary_key=True)
    value = pw.TextField()  # JSON


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Host,
    EnrolmentToken,
    HostCredential,
    SourceGroup,
    Schedule,
    ScheduleGroup,
    Maintenance,
    Job,
    JobLogLine,
    Snapshot,
    RepoStats,
    RepoStatsDaily,
    Alert,
    NotificationChannel,
    NotificationAttempt,
    AuditEntry,
    ApiToken,
    PendingHost,
    Setting,
)
