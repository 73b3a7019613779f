"""Parsers, fed with lines captured from restic 0.14.0 and 0.18.0 on this host."""

from __future__ import annotations

import json
import os

import pytest

from agent.restic.parse import (
    BackupError,
    BackupProgress,
    BackupSummary,
    RepoStatsInfo,
    ResticOutputError,
    parse_backup_line,
    parse_snapshots,
    parse_stats,
)

# --- backup --json: status ----------------------------------------------------

V014_STATUS_FIRST = (
    '{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":10000000}'
)
V014_STATUS = (
    '{"message_type":"status","percent_done":0.07846121,"total_files":30,"files_done":1,'
    '"total_bytes":300000000,"bytes_done":23538363,'
    '"current_files":["/tmp/rx/data/f10","/tmp/rx/data/f11"]}'
)
V014_STATUS_ELAPSED = (
    '{"message_type":"status","seconds_elapsed":3,"seconds_remaining":10,'
    '"percent_done":0.22146624,"total_files":30,"files_done":6,"total_bytes":300000000,'
    '"bytes_done":66439872,"current_files":["/tmp/rx/data/f15","/tmp/rx/data/f16"]}'
)
V014_STATUS_ERROR_COUNT = '{"message_type":"status","percent_done":0,"error_count":1}'
# 0.14 reports its verbose "scan finished" event with message_type "status".
V014_SCAN_FINISHED = (
    '{"message_type":"status","action":"scan_finished","item":"","duration":0.204403388,'
    '"data_size":10,"data_size_in_repo":0,"metadata_size":0,"metadata_size_in_repo":0,'
    '"total_files":2}'
)
V018_STATUS = (
    '{"message_type":"status","seconds_remaining":3,"percent_done":0.004814946666666667,'
    '"total_files":30,"total_bytes":300000000,"bytes_done":1444484,'
    '"current_files":["/tmp/rx/data/f1","/tmp/rx/data/f10"]}'
)
V018_STATUS_NO_CURRENT = (
    '{"message_type":"status","seconds_elapsed":16,"seconds_remaining":49,'
    '"percent_done":0.25200725333333335,"total_files":30,"files_done":6,'
    '"total_bytes":300000000,"bytes_done":75602176}'
)
V018_VERBOSE = (
    '{"message_type":"verbose_status","action":"new","item":"/tmp/rx/perm/ok",'
    '"duration":0.007662603,"data_size":3,"data_size_in_repo":85,"metadata_size":0,'
    '"metadata_size_in_repo":0,"total_files":0}'
)


def test_status_014_first_line_omits_zero_fields() -> None:
    assert parse_backup_line(V014_STATUS_FIRST) == BackupProgress(
        percent=0.0,
        files_done=0,
        files_total=1,
        bytes_done=0,
        bytes_total=10_000_000,
        current_file=None,
        seconds_elapsed=0,
        seconds_remaining=None,
    )


def test_status_014() -> None:
    progress = parse_backup_line(V014_STATUS)
    assert isinstance(progress, BackupProgress)
    assert progress.percent == pytest.approx(7.846121)
    assert progress.files_done == 1
    assert progress.files_total == 30
    assert progress.bytes_done == 23_538_363
    assert progress.bytes_total == 300_000_000
    assert progress.current_file == "/tmp/rx/data/f10"
    assert progress.seconds_remaining is None


def test_status_014_with_times() -> None:
    progress = parse_backup_line(V014_STATUS_ELAPSED)
    assert isinstance(progress, BackupProgress)
    assert (progress.seconds_elapsed, progress.seconds_remaining) == (3, 10)
    assert progress.files_done == 6


def test_status_018() -> None:
    progress = parse_backup_line(V018_STATUS)
    assert isinstance(progress, BackupProgress)
    assert progress.percent == pytest.approx(0.4814946666666667)
    assert progress.seconds_remaining == 3
    assert progress.seconds_elapsed == 0
    assert progress.current_file == "/tmp/rx/data/f1"
    end = parse_backup_line(V018_STATUS_NO_CURRENT)
    assert isinstance(end, BackupProgress)
    assert end.current_file is None
    assert (end.seconds_elapsed, end.seconds_remaining) == (16, 49)


def test_status_with_only_error_count() -> None:
    progress = parse_backup_line(V014_STATUS_ERROR_COUNT)
    assert isinstance(progress, BackupProgress)
    assert progress.files_total == 0


@pytest.mark.parametrize("line", [V014_SCAN_FINISHED, V018_VERBOSE])
def test_verbose_events_ignored(line: str) -> None:
    assert parse_backup_line(line) is None


def test_percent_is_clamped() -> None:
    progress = parse_backup_line('{"message_type":"status","percent_done":1.7}')
    assert isinstance(progress, BackupProgress)
    assert progress.percent == 100.0


# --- backup --json: summary ---------------------------------------------------

V014_SUMMARY = (
    '{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,'
    '"dirs_new":3,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":7,"tree_blobs":4,'
    '"data_added":10001812,"total_files_processed":1,"total_bytes_processed":10000000,'
    '"total_duration":0.27966393,"snapshot_id":"4f273b57"}'
)
V018_SUMMARY = (
    '{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,'
    '"dirs_new":3,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":6,"tree_blobs":4,'
    '"data_added":10001748,"data_added_packed":10002084,"total_files_processed":1,'
    '"total_bytes_processed":10000000,"total_duration":0.833557147,'
    '"backup_start":"2026-11-21T21:43:18.355054843Z","backup_end":"2026-11-21T21:43:19.18861198Z",'
    '"snapshot_id":"cea537cb0c46dc90de714bfae69f63eed6fbc0cd1cc75197616818bbee81ce6d"}'
)


def test_summary_014() -> None:
    summary = parse_backup_line(V014_SUMMARY)
    assert summary == BackupSummary(
        files_new=1,
        files_changed=0,
        files_unmodified=0,
        dirs_new=3,
        dirs_changed=0,
        dirs_unmodified=0,
        data_added=10_001_812,
        total_files_processed=1,
        total_bytes_processed=10_000_000,
        total_duration=0.27966393,
        snapshot_id="4f273b57",
    )


def test_summary_018_full_snapshot_id_and_to_dict() -> None:
    summary = parse_backup_line(V018_SUMMARY)
    assert isinstance(summary, BackupSummary)
    assert summary.snapshot_id is not None and len(summary.snapshot_id) == 64
    as_dict = summary.to_dict()
    assert as_dict["data_added"] == 10_001_748
    assert as_dict["total_duration"] == pytest.approx(0.833557147)
    assert set(as_dict) == {
        "files_new",
        "files_changed",
        "files_unmodified",
        "dirs_new",
        "dirs_changed",
        "dirs_unmodified",
        "data_added",
        "total_files_processed",
        "total_bytes_processed",
        "total_duration",
        "snapshot_id",
    }


def test_summary_without_snapshot_and_zero_fields() -> None:
    summary = parse_backup_line('{"message_type":"summary","files_unmodified":5}')
    assert isinstance(summary, BackupSummary)
    assert summary.snapshot_id is None
    assert summary.files_unmodified == 5
    assert summary.files_new == 0
    assert summary.total_duration == 0.0


# --- backup --json: per-file errors (stderr) ----------------------------------

V014_ERROR_PATH = (
    '{"message_type":"error","error":{"Op":"open","Path":"/tmp/rx/perm/locked","Err":13},'
    '"during":"archival","item":"/tmp/rx/perm/locked"}'
)
V014_ERROR_EMPTY = '{"message_type":"error","error":{},"during":"scan","item":"/tmp/rx/perm/sub"}'
V018_ERROR = (
    '{"message_type":"error","error":{"message":"open /tmp/rx/perm/locked: permission denied"},'
    '"during":"archival","item":"/tmp/rx/perm/locked"}'
)
V018_EXIT_ERROR = (
    '{"message_type":"exit_error","code":3,"message":"Warning: at least one source file '
    'could not be read"}'
)


def test_error_018() -> None:
    assert parse_backup_line(V018_ERROR) == BackupError(
        item="/tmp/rx/perm/locked",
        during="archival",
        message="open /tmp/rx/perm/locked: permission denied",
    )


def test_error_014_path_error() -> None:
    error = parse_backup_line(V014_ERROR_PATH)
    assert isinstance(error, BackupError)
    assert error.item == "/tmp/rx/perm/locked"
    assert error.during == "archival"
    assert error.message.startswith("open /tmp/rx/perm/locked: errno 13")
    if os.name == "posix":
        assert error.message.endswith(f"({os.strerror(13)})")


def test_error_014_empty_object() -> None:
    assert parse_backup_line(V014_ERROR_EMPTY) == BackupError(
        item="/tmp/rx/perm/sub", during="scan", message="error during scan"
    )


def test_error_plain_string() -> None:
    error = parse_backup_line('{"message_type":"error","error":"boom"}')
    assert error == BackupError(item=None, during=None, message="boom")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "Warning: at least one source file could not be read",
        "/tmp/rx/missing does not exist, skipping",
        "\x1b[2Ksignal interrupt received, cleaning up",
        "{not json",
        '{"message_type":"status"',
        "[1, 2]",
        '"status"',
        '{"no_type": 1}',
        '{"message_type":"initialized","id":"7d22","repository":"/tmp/rx/repo18"}',
        V018_EXIT_ERROR,
    ],
)
def test_non_backup_lines_yield_none(line: str) -> None:
    assert parse_backup_line(line) is None


def test_wrong_field_types_do_not_crash() -> None:
    progress = parse_backup_line(
        '{"message_type":"status","percent_done":"x","total_files":true,'
        '"files_done":2.0,"current_files":"notalist","seconds_remaining":null}'
    )
    assert progress == BackupProgress(
        percent=0.0,
        files_done=2,
        files_total=0,
        bytes_done=0,
        bytes_total=0,
        current_file=None,
        seconds_elapsed=0,
        seconds_remaining=None,
    )


# --- snapshots --json ---------------------------------------------------------

V014_SNAPSHOTS = (
    '[{"time":"2026-11-21T21:43:05.134316032Z","tree":"a87dbf7d9473ec1f0c1a1288126ea06005500c7b'
    'b70d694d98c0c4fe3b0fa8e3","paths":["/tmp/rx/data/f1"],"hostname":"vm","username":"root",'
    '"id":"4f273b57669814c191537076046a8293d9c6a129d82789703949a7402b3bceab",'
    '"short_id":"4f273b57"},'
    '{"time":"2026-11-21T21:57:51.807028753Z","tree":"8ca407fffd2f5f7dbe30fb94f4e68900d86c060e3'
    '79059d61183184b31eda7d2","paths":["/tmp/rx/perm/ok"],"hostname":"vm","username":"root",'
    '"excludes":["*.tmp"],"tags":["a"],"id":"810b7f804e086f0399ed389f4710226724f426958105ad0b28'
    '4c3d123c04a416","short_id":"810b7f80"}]\n'
)
V018_SNAPSHOTS = (
    '[{"time":"2026-11-21T21:43:10.210997512Z","tree":"8b6f62f6be0d3dfcde2e511a22caa3dc3684a806f'
    '1ee6041e471dc44c244f58e","paths":["/tmp/rx/data/f1"],"hostname":"vm","username":"root",'
    '"program_version":"restic 0.18.0","summary":{"backup_start":"2026-11-21T21:43:10.210997512Z",'
    '"backup_end":"2026-11-21T21:43:10.905404528Z","files_new":1,"files_changed":0,'
    '"files_unmodified":0,"dirs_new":3,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":9,'
    '"tree_blobs":4,"data_added":10001949,"data_added_packed":10002448,'
    '"total_files_processed":1,"total_bytes_processed":10000000},'
    '"id":"2118464c2d0c79deec63756e1fd5e711014038a8926a606dfb5d1baae04e7e31",'
    '"short_id":"2118464c"}]\n'
)


def test_snapshots_014() -> None:
    snaps = parse_snapshots(V014_SNAPSHOTS)
    assert [s.short_id for s in snaps] == ["4f273b57", "810b7f80"]
    first, second = snaps
    assert first.id.startswith("4f273b57") and len(first.id) == 64
    assert first.time == "2026-11-21T21:43:05.134316032Z"
    assert first.hostname == "vm"
    assert first.paths == ("/tmp/rx/data/f1",)
    assert first.tags == ()
    assert first.tree is not None and first.tree.startswith("a87dbf7d")
    assert first.summary is None
    assert first.program_version is None
    assert second.tags == ("a",)
    assert second.username == "root"


def test_snapshots_018_with_summary() -> None:
    (snap,) = parse_snapshots(V018_SNAPSHOTS)
    assert snap.short_id == "2118464c"
    assert snap.program_version == "restic 0.18.0"
    assert snap.summary is not None
    assert snap.summary.data_added == 10_001_949
    assert snap.summary.total_files_processed == 1
    assert snap.summary.snapshot_id == snap.id
    assert snap.summary.total_duration == pytest.approx(0.694407, abs=1e-5)


def test_snapshots_without_short_id() -> None:
    (snap,) = parse_snapshots('[{"id":"0123456789abcdef","time":"2024-01-01T00:00:00Z"}]')
    assert snap.short_id == "01234567"
    assert snap.hostname == ""
    assert snap.paths == ()
    assert snap.tree is None


@pytest.mark.parametrize("text", ["[]", "[]\n", "null", "  null\n"])
def test_snapshots_empty(text: str) -> None:
    assert parse_snapshots(text) == []


def test_snapshots_after_stray_stdout_line() -> None:
    text = "some warning on stdout\n" + V014_SNAPSHOTS
    assert len(parse_snapshots(text)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a JSON list"),
        ("Fatal: wrong password or no key found", "not a JSON list"),
        ('[{"id": "abc"', "not a JSON list"),
        ('{"id": "abc"}', "not a JSON list"),
        ("[1]", "snapshot #0 is not a JSON object"),
        ('[{"time": "2024-01-01T00:00:00Z"}]', "snapshot #0 has no id"),
        ('[{"id": "abcdef12"}]', "no id or time"),
    ],
)
def test_snapshots_malformed(text: str, message: str) -> None:
    with pytest.raises(ResticOutputError, match=message):
        parse_snapshots(text)


def test_output_error_is_a_value_error() -> None:
    assert issubclass(ResticOutputError, ValueError)


# --- stats --json --mode raw-data ---------------------------------------------

V014_STATS = (
    '{"total_size":20003509,"total_file_count":0,"total_blob_count":22,"snapshots_count":2}\n'
)
V014_STATS_EMPTY = '{"total_size":0,"total_file_count":0,"snapshots_count":0}\n'
V018_STATS = (
    '{"total_size":20003589,"total_uncompressed_size":20004433,'
    '"compression_ratio":1.0000421924285687,"compression_progress":100,'
    '"compression_space_saving":0.004219064844279696,"total_blob_count":23,'
    '"snapshots_count":2}\n'
)


def test_stats_014() -> None:
    assert parse_stats(V014_STATS) == RepoStatsInfo(
        total_size=20_003_509,
        total_uncompressed_size=None,
        compression_ratio=None,
        blob_count=22,
        snapshots_count=2,
    )
    assert parse_stats(V014_STATS_EMPTY) == RepoStatsInfo(0, None, None, None, 0)


def test_stats_018() -> None:
    assert parse_stats(V018_STATS) == RepoStatsInfo(
        total_size=20_003_589,
        total_uncompressed_size=20_004_433,
        compression_ratio=pytest.approx(1.0000421924285687),  # type: ignore[arg-type]
        blob_count=23,
        snapshots_count=2,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a JSON dict"),
        ("[]", "not a JSON dict"),
        ('{"total_size": 1', "not a JSON dict"),
        ('{"snapshots_count": 1}', "no total_size"),
        ('{"total_size": "big"}', "no total_size"),
    ],
)
def test_stats_malformed(text: str, message: str) -> None:
    with pytest.raises(ResticOutputError, match=message):
        parse_stats(text)


def test_parse_forget_counts_kept_and_removed_snapshots() -> None:
    from agent.restic.parse import ForgetResult, parse_forget

    doc = json.dumps(
        [
            {
                "tags": None,
                "host": "h",
                "keep": [{"id": "a"}, {"id": "b"}],
                "remove": [{"id": "c"}],
            },
            {"tags": None, "host": "h", "keep": [{"id": "d"}], "remove": None},
        ]
    )
    assert parse_forget(doc) == ForgetResult(kept=3, removed=1)
    # restic prints nothing when no snapshot matched the tag.
    assert parse_forget("") == ForgetResult(kept=0, removed=0)
    with pytest.raises(ResticOutputError):
        parse_forget("Fatal: something")
