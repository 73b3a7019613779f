from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.protocol import redact_url
from server_core import migrations
from server_core.credentials import parse_repository
from server_core.errors import InvalidInput
from server_core.models import ALL_MODELS, Host, Job, JobLogLine
from server_core.store import Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db.sqlite3")
    s.open_sync()
    yield s
    s.close_sync()


def test_wal_foreign_keys_and_schema_version(store: Store) -> None:
    assert store.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert migrations.current_version(store.db) == migrations.MIGRATIONS[-1][0]


def test_frozen_schema_matches_the_models(store: Store) -> None:
    # The models may only describe columns some migration created.
    for model in ALL_MODELS:
        table = model._meta.table_name
        columns = {row[1] for row in store.db.execute_sql(f'PRAGMA table_info("{table}")')}
        assert set(model._meta.columns) <= columns, table


def test_migrate_is_idempotent_and_refuses_a_newer_database(store: Store, tmp_path: Path) -> None:
    assert migrations.migrate(store.db) == migrations.MIGRATIONS[-1][0]
    store.db.execute_sql("INSERT INTO schema_version VALUES (999, 'future', 0)")
    with pytest.raises(migrations.MigrationError, match="newer restic-manager"):
        migrations.migrate(store.db)


def test_log_lines_are_unique_per_job_and_cascade(store: Store) -> None:
    host = Host.create(name="h", created_at=0)
    Job.create(id="j", host=host, kind="backup", status="running", actor="operator", created_at=0)
    JobLogLine.create(job="j", seq=1, ts=0, stream="stdout", text="a")
    with pytest.raises(Exception, match="UNIQUE"):
        JobLogLine.create(job="j", seq=1, ts=0, stream="stdout", text="b")
    host.delete_instance()
    assert JobLogLine.select().count() == 0


def test_a_second_process_sees_committed_rows(store: Store, tmp_path: Path) -> None:
    Host.create(name="visible", created_at=0)
    other = sqlite3.connect(tmp_path / "db.sqlite3")
    assert other.execute("SELECT name FROM host").fetchall() == [("visible",)]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "rest:http://agent:s3cret@127.0.0.1:8000/repo",
            "rest:http://agent:***@127.0.0.1:8000/repo",
        ),
        ("rest:https://u@h/", "rest:https://u@h/"),
        ("/srv/restic", "/srv/restic"),
        ("s3:https://s3.example/bucket", "s3:https://s3.example/bucket"),
        ("sftp:user@host:/srv", "sftp:user@host:/srv"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "x"}, "repository.url"),
        ({"url": "/r"}, "repository.password"),
        ({"url": "/r", "password": ""}, "repository.password"),
        ({"url": "/r", "password": "abc"}, "repository.password"),
        ({"url": "/r\n", "password": "pass"}, "repository.url"),
        ({"url": "/r", "password": "pass", "env": {"RESTIC_PASSWORD": "x"}}, "repository.env"),
        ({"url": "/r", "password": "pass", "env": {"lower": "x"}}, "repository.env"),
        ({"url": "/r", "password": "pass", "extra": 1}, "repository"),
        ("nope", "repository"),
    ],
)
def test_parse_repository_names_the_bad_field(body: object, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_repository(body)
    assert err.value.field == field


def test_parse_repository_ok() -> None:
    creds = parse_repository({"url": " /r ", "password": "pass", "env": {"AWS_ACCESS_KEY_ID": "k"}})
    assert creds.url == "/r" and creds.env == {"AWS_ACCESS_KEY_ID": "k"}


def test_fleet_rows_show_each_hosts_latest_finished_backup(store: Store) -> None:
    from server_core.services.hosts import host_views

    for name in ("a", "b", "c"):
        Host.create(name=name, created_at=0)
    rows = [
        ("j1", 1, "backup", "failed", False, 10.0),
        ("j2", 1, "backup", "succeeded", True, 20.0),
        ("j3", 2, "backup", "succeeded", False, 5.0),
        ("j4", 2, "init", "failed", False, 50.0),  # not a backup
        ("j5", 2, "backup", "running", False, None),  # not finished
    ]
    for job_id, host, kind, status, warnings, at in rows:
        Job.create(
            id=job_id,
            host=host,
            kind=kind,
            status=status,
            warnings=warnings,
            actor="operator",
            created_at=0,
            finished_at=at,
        )
    views = {v.name: (v.last_backup_at, v.last_backup_status) for v in host_views()}
    assert views == {
        "a": (20.0, "succeeded_with_warnings"),
        "b": (5.0, "succeeded"),
        "c": (None, None),
    }
