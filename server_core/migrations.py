"""Numbered schema migrations.

Ids of rows that outlive their deletion in audit entries, scripts and
in-flight agent events use AUTOINCREMENT, so an id is never handed to a
second host, group or token.

Each migration is frozen SQL: the model classes may grow, but what version
N created never changes. Later migrations use column-level ``ALTER TABLE``
only — rebuilding a parent table in SQLite with foreign keys on would
cascade deletes into every child table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import peewee as pw

_V1_INITIAL_SCHEMA = """
CREATE TABLE "host" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "name" TEXT NOT NULL,
    "created_at" REAL NOT NULL,
    "enrolled_at" REAL,
    "bearer_hash" TEXT,
    "os" TEXT,
    "arch" TEXT,
    "agent_version" TEXT,
    "restic_version" TEXT,
    "online" INTEGER NOT NULL,
    "last_seen_at" REAL,
    "last_ip" TEXT,
    "tags" TEXT NOT NULL,
    "presence_mode" TEXT NOT NULL,
    "repo_status" TEXT NOT NULL,
    "repo_status_error" TEXT,
    "repo_status_at" REAL,
    "schedule_version" INTEGER NOT NULL,
    "schedule_acked_version" INTEGER NOT NULL,
    "upload_kib_s" INTEGER,
    "download_kib_s" INTEGER,
    "default_hooks_enc" BLOB,
    "restore_dir" TEXT
);
CREATE UNIQUE INDEX "host_name" ON "host" ("name");
CREATE UNIQUE INDEX "host_bearer_hash" ON "host" ("bearer_hash");
CREATE TABLE "enrolment_token" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "host_id" INTEGER NOT NULL,
    "token_hash" TEXT NOT NULL,
    "created_at" REAL NOT NULL,
    "expires_at" REAL NOT NULL,
    "used_at" REAL,
    "revoked_at" REAL,
    "initial_paths" TEXT NOT NULL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "enrolment_token_host_id" ON "enrolment_token" ("host_id");
CREATE UNIQUE INDEX "enrolment_token_token_hash" ON "enrolment_token" ("token_hash");
CREATE TABLE "host_credential" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "slot" TEXT NOT NULL,
    "secret_enc" BLOB NOT NULL,
    "url_display" TEXT NOT NULL,
    "updated_at" REAL NOT NULL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "host_credential_host_id" ON "host_credential" ("host_id");
CREATE UNIQUE INDEX "host_credential_host_id_slot" ON "host_credential" ("host_id", "slot");
CREATE TABLE "source_group" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "host_id" INTEGER NOT NULL,
    "name" TEXT NOT NULL,
    "includes" TEXT NOT NULL,
    "excludes" TEXT NOT NULL,
    "retention" TEXT NOT NULL,
    "retry_max" INTEGER NOT NULL,
    "retry_backoff_seconds" INTEGER NOT NULL,
    "hooks_enc" BLOB,
    "created_at" REAL NOT NULL,
    "updated_at" REAL NOT NULL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "source_group_host_id" ON "source_group" ("host_id");
CREATE UNIQUE INDEX "source_group_host_id_name" ON "source_group" ("host_id", "name");
CREATE TABLE "schedule" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "host_id" INTEGER NOT NULL,
    "cron" TEXT NOT NULL,
    "enabled" INTEGER NOT NULL,
    "created_at" REAL NOT NULL,
    "updated_at" REAL NOT NULL,
    "last_run_at" REAL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "schedule_host_id" ON "schedule" ("host_id");
CREATE TABLE "schedule_group" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "schedule_id" INTEGER NOT NULL,
    "source_group_id" INTEGER NOT NULL,
    FOREIGN KEY ("schedule_id") REFERENCES "schedule" ("id") ON DELETE CASCADE,
    FOREIGN KEY ("source_group_id") REFERENCES "source_group" ("id") ON DELETE CASCADE
);
CREATE INDEX "schedule_group_schedule_id" ON "schedule_group" ("schedule_id");
CREATE INDEX "schedule_group_source_group_id" ON "schedule_group" ("source_group_id");
CREATE UNIQUE INDEX "schedule_group_schedule_id_source_group_id"
    ON "schedule_group" ("schedule_id", "source_group_id");
CREATE TABLE "maintenance" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "enabled" INTEGER NOT NULL,
    "forget_cron" TEXT,
    "prune_cron" TEXT,
    "check_cron" TEXT,
    "check_subset_percent" INTEGER NOT NULL,
    "last_forget_at" REAL,
    "last_prune_at" REAL,
    "last_check_at" REAL,
    "last_check_status" TEXT,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "maintenance_host_id" ON "maintenance" ("host_id");
CREATE TABLE "job" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "kind" TEXT NOT NULL,
    "status" TEXT NOT NULL,
    "actor" TEXT NOT NULL,
    "source_group_id" INTEGER,
    "schedule_id" INTEGER,
    "args" TEXT NOT NULL,
    "created_at" REAL NOT NULL,
    "started_at" REAL,
    "finished_at" REAL,
    "exit_code" INTEGER,
    "error" TEXT,
    "warnings" INTEGER NOT NULL,
    "summary" TEXT,
    "progress" TEXT,
    "last_seq" INTEGER NOT NULL,
    "log_lines" INTEGER NOT NULL,
    "log_lines_reported" INTEGER,
    "dispatched_at" REAL,
    "cancel_requested_at" REAL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE,
    FOREIGN KEY ("source_group_id") REFERENCES "source_group" ("id") ON DELETE SET NULL,
    FOREIGN KEY ("schedule_id") REFERENCES "schedule" ("id") ON DELETE SET NULL
);
CREATE INDEX "job_host_id" ON "job" ("host_id");
CREATE INDEX "job_source_group_id" ON "job" ("source_group_id");
CREATE INDEX "job_schedule_id" ON "job" ("schedule_id");
CREATE INDEX "job_host_id_created_at" ON "job" ("host_id", "created_at");
CREATE INDEX "job_host_id_kind_finished_at" ON "job" ("host_id", "kind", "finished_at");
CREATE TABLE "job_log" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "job_id" TEXT NOT NULL,
    "seq" INTEGER NOT NULL,
    "ts" REAL NOT NULL,
    "stream" TEXT NOT NULL,
    "text" TEXT NOT NULL,
    FOREIGN KEY ("job_id") REFERENCES "job" ("id") ON DELETE CASCADE
);
CREATE INDEX "job_log_job_id" ON "job_log" ("job_id");
CREATE UNIQUE INDEX "job_log_job_id_seq" ON "job_log" ("job_id", "seq");
CREATE TABLE "snapshot" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "snapshot_id" TEXT NOT NULL,
    "short_id" TEXT NOT NULL,
    "time" TEXT NOT NULL,
    "hostname" TEXT NOT NULL,
    "paths" TEXT NOT NULL,
    "tags" TEXT NOT NULL,
    "tree" TEXT,
    "seen_at" REAL NOT NULL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "snapshot_host_id" ON "snapshot" ("host_id");
CREATE UNIQUE INDEX "snapshot_host_id_snapshot_id" ON "snapshot" ("host_id", "snapshot_id");
CREATE TABLE "repo_stats" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "collected_at" REAL NOT NULL,
    "total_size" INTEGER NOT NULL,
    "total_uncompressed_size" INTEGER,
    "snapshot_count" INTEGER,
    "blob_count" INTEGER,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "repo_stats_host_id" ON "repo_stats" ("host_id");
CREATE TABLE "repo_stats_daily" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "host_id" INTEGER NOT NULL,
    "day" TEXT NOT NULL,
    "total_size" INTEGER,
    "total_uncompressed_size" INTEGER,
    "snapshot_count" INTEGER,
    "blob_count" INTEGER,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "repo_stats_daily_host_id" ON "repo_stats_daily" ("host_id");
CREATE UNIQUE INDEX "repo_stats_daily_host_id_day" ON "repo_stats_daily" ("host_id", "day");
CREATE TABLE "alert" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "host_id" INTEGER,
    "kind" TEXT NOT NULL,
    "severity" TEXT NOT NULL,
    "dedup_key" TEXT NOT NULL,
    "status" TEXT NOT NULL,
    "message" TEXT NOT NULL,
    "first_seen_at" REAL NOT NULL,
    "last_seen_at" REAL NOT NULL,
    "count" INTEGER NOT NULL,
    "acknowledged_at" REAL,
    "resolved_at" REAL,
    FOREIGN KEY ("host_id") REFERENCES "host" ("id") ON DELETE CASCADE
);
CREATE INDEX "alert_host_id" ON "alert" ("host_id");
CREATE INDEX "alert_dedup_key_status" ON "alert" ("dedup_key", "status");
CREATE TABLE "notification_channel" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "kind" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "enabled" INTEGER NOT NULL,
    "min_severity" TEXT NOT NULL,
    "config" TEXT NOT NULL,
    "secret_enc" BLOB,
    "created_at" REAL NOT NULL
);
CREATE UNIQUE INDEX "notification_channel_name" ON "notification_channel" ("name");
CREATE TABLE "notification_attempt" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "channel_id" INTEGER NOT NULL,
    "alert_id" INTEGER,
    "ts" REAL NOT NULL,
    "event" TEXT NOT NULL,
    "ok" INTEGER NOT NULL,
    "detail" TEXT,
    "latency_ms" INTEGER,
    FOREIGN KEY ("channel_id") REFERENCES "notification_channel" ("id") ON DELETE CASCADE,
    FOREIGN KEY ("alert_id") REFERENCES "alert" ("id") ON DELETE SET NULL
);
CREATE INDEX "notification_attempt_channel_id" ON "notification_attempt" ("channel_id");
CREATE INDEX "notification_attempt_alert_id" ON "notification_attempt" ("alert_id");
CREATE TABLE "audit_entry" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "ts" REAL NOT NULL,
    "actor_kind" TEXT NOT NULL,
    "actor_id" TEXT,
    "action" TEXT NOT NULL,
    "target_kind" TEXT,
    "target_id" TEXT,
    "payload" TEXT NOT NULL
);
CREATE INDEX "audit_entry_ts" ON "audit_entry" ("ts");
CREATE TABLE "api_token" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "name" TEXT NOT NULL,
    "token_hash" TEXT NOT NULL,
    "created_at" REAL NOT NULL,
    "last_used_at" REAL,
    "revoked_at" REAL
);
CREATE UNIQUE INDEX "api_token_token_hash" ON "api_token" ("token_hash");
CREATE TABLE "pending_host" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "fingerprint" TEXT NOT NULL,
    "public_key" BLOB NOT NULL,
    "hostname" TEXT NOT NULL,
    "source_ip" TEXT NOT NULL,
    "os" TEXT,
    "arch" TEXT,
    "agent_version" TEXT,
    "created_at" REAL NOT NULL,
    "expires_at" REAL NOT NULL,
    "status" TEXT NOT NULL
);
CREATE UNIQUE INDEX "pending_host_fingerprint" ON "pending_host" ("fingerprint");
CREATE TABLE "setting" (
    "key" TEXT NOT NULL PRIMARY KEY,
    "value" TEXT NOT NULL
);
"""


# Issue 4: the repository's file count (files in the latest backup of each
# group) next to its size, and when a host's maintenance plan started, so a
# window that passed before the plan existed is not "due".
_V2_FILE_COUNT_AND_MAINTENANCE_START = """
ALTER TABLE "repo_stats" ADD COLUMN "file_count" INTEGER;
ALTER TABLE "repo_stats_daily" ADD COLUMN "file_count" INTEGER;
ALTER TABLE "maintenance" ADD COLUMN "created_at" REAL;
"""


# Issue 6: who resolved an alert ("system" when its condition cleared, else
# the operator's actor kind). A condition an operator resolved while it still
# held is the same problem, not a new one: the engine must not raise it again
# until the condition clears and returns. Listing alerts by status, newest
# first, is the alerts view's query.
_V3_ALERT_RESOLVED_BY = """
ALTER TABLE "alert" ADD COLUMN "resolved_by" TEXT;
CREATE INDEX "alert_status_last_seen_at" ON "alert" ("status", "last_seen_at");
"""


MIGRATIONS: Sequence[tuple[int, str, str]] = (
    (1, "initial schema", _V1_INITIAL_SCHEMA),
    (2, "repo file count, maintenance start", _V2_FILE_COUNT_AND_MAINTENANCE_START),
    (3, "alert resolved_by", _V3_ALERT_RESOLVED_BY),
)


class MigrationError(RuntimeError):
    pass


def current_version(db: pw.SqliteDatabase) -> int:
    db.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    row = db.execute_sql("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: pw.SqliteDatabase) -> int:
    """Bring the schema up to date; returns the resulting version."""
    version = current_version(db)
    latest = MIGRATIONS[-1][0]
    if version > latest:
        raise MigrationError(
            f"the database is at schema version {version} but this program only knows "
            f"up to {latest}: it was opened by a newer restic-manager"
        )
    for number, description, statements in MIGRATIONS:
        if number <= version:
            continue
        with db.atomic():
            for sql in statements.split(";"):
                if sql.strip():
                    db.execute_sql(sql)
            db.execute_sql(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (number, description, time.time()),
            )
        version = number
    return version
