from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from agent.restic.commands import (
    GlobalOptions,
    RepoCredentials,
    ResticCommand,
    backup_cmd,
    check_cmd,
    diff_cmd,
    forget_cmd,
    init_cmd,
    ls_cmd,
    minimal_env,
    probe_cmd,
    prune_cmd,
    redact_url,
    repository_url,
    restore_cmd,
    snapshots_cmd,
    stats_cmd,
    unlock_cmd,
)
from agent.restic.version import ResticVersion

V014 = ResticVersion(0, 14, 0)
V016 = ResticVersion(0, 16, 0)
V018 = ResticVersion(0, 18, 0)

PASSWORD = "repo-Pa55word!"
BACKEND_PASSWORD = "b@ck:end/pw%"
SECRET_KEY = "AWS-s3cr3t-key-value"

# What the agent process itself has in its environment: ambient restic and
# cloud variables must never reach a job.
AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "TMPDIR": "/tmp/agent",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "RESTIC_PASSWORD": "ambient-password",
    "RESTIC_PASSWORD_COMMAND": "cat /etc/shadow",
    "RESTIC_REPOSITORY": "/ambient/repo",
    "AWS_SECRET_ACCESS_KEY": "ambient-aws",
    "PYTHONPATH": "/x",
}
BASE = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "TMPDIR": "/tmp/agent",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
PREFIX = ("/usr/bin/restic", "--cache-dir", "/var/cache/rm")


def opts(version: ResticVersion | None = V014, **kw: int) -> GlobalOptions:
    return GlobalOptions(binary="/usr/bin/restic", cache_dir="/var/cache/rm", version=version, **kw)


CREDS = RepoCredentials(url="/srv/repo", password=PASSWORD)
S3_CREDS = RepoCredentials(
    url="s3:s3.amazonaws.com/bucket/repo",
    password=PASSWORD,
    env={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
)
REST_CREDS = RepoCredentials(
    url="rest:https://backup.lan:8000/host1/",
    password=PASSWORD,
    username="ag ent",
    backend_password=BACKEND_PASSWORD,
)


def expect_env(url: str = "/srv/repo", **extra: str) -> dict[str, str]:
    return {**BASE, **extra, "RESTIC_REPOSITORY": url, "RESTIC_PASSWORD": PASSWORD}


# --- env and credentials ------------------------------------------------------


def test_minimal_env_drops_ambient_secrets() -> None:
    assert minimal_env(AGENT_ENV) == BASE
    assert minimal_env({}) == {}


def test_env_for_local_repo() -> None:
    cmd = snapshots_cmd(opts(), CREDS, AGENT_ENV)
    assert dict(cmd.env) == expect_env()


def test_env_for_backend_variables() -> None:
    cmd = snapshots_cmd(opts(), S3_CREDS, AGENT_ENV)
    assert dict(cmd.env) == expect_env(
        "s3:s3.amazonaws.com/bucket/repo",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
    )


def test_rest_url_injection_percent_encodes() -> None:
    cmd = snapshots_cmd(opts(), REST_CREDS, AGENT_ENV)
    assert cmd.env["RESTIC_REPOSITORY"] == (
        "rest:https://ag%20ent:b%40ck%3Aend%2Fpw%25@backup.lan:8000/host1/"
    )
    assert BACKEND_PASSWORD not in " ".join(cmd.argv)


def test_rest_url_username_only() -> None:
    creds = RepoCredentials(url="rest:http://10.0.0.1:8000/", password="pw", username="u")
    assert repository_url(creds) == "rest:http://u@10.0.0.1:8000/"


@pytest.mark.parametrize(
    ("creds", "message"),
    [
        (
            RepoCredentials(url="/srv/repo", password="pw", username="u", backend_password="p"),
            "only supported for rest:",
        ),
        (
            RepoCredentials(url="rest:http://h:8000/", password="pw", backend_password="p"),
            "needs a username",
        ),
        (
            RepoCredentials(url="rest:http://a:b@h:8000/", password="pw", username="u"),
            "already contains credentials",
        ),
        (
            RepoCredentials(url="rest:ftp://h/", password="pw", username="u"),
            "unsupported REST URL",
        ),
        (RepoCredentials(url="", password="pw"), "repository URL must not be empty"),
    ],
)
def test_repository_url_rejects(creds: RepoCredentials, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        snapshots_cmd(opts(), creds, BASE)


def test_empty_password_rejected() -> None:
    with pytest.raises(ValueError, match="password must not be empty"):
        snapshots_cmd(opts(), RepoCredentials(url="/r", password=""), BASE)


@pytest.mark.parametrize(
    "name",
    [
        "aws_secret",
        "1ABC",
        "A-B",
        "A B",
        "",
        "PATH=x",
        "RESTIC_REPOSITORY",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_FROM_PASSWORD_COMMAND",
    ],
)
def test_bad_env_names_rejected(name: str) -> None:
    creds = RepoCredentials(url="/r", password="pw", env={name: "x"})
    with pytest.raises(ValueError, match=name.split("=")[0] or "invalid"):
        snapshots_cmd(opts(), creds, BASE)


def test_env_value_with_nul_rejected() -> None:
    creds = RepoCredentials(url="/r", password="pw", env={"B2_ACCOUNT_KEY": "a\0b"})
    with pytest.raises(ValueError, match="NUL"):
        snapshots_cmd(opts(), creds, BASE)


def test_allowed_restic_tuning_variable() -> None:
    creds = RepoCredentials(url="/r", password="pw", env={"RESTIC_COMPRESSION": "max"})
    assert snapshots_cmd(opts(), creds, BASE).env["RESTIC_COMPRESSION"] == "max"


# --- no secret in argv or repr --------------------------------------------------

ALL_CREDS = RepoCredentials(
    url="rest:https://backup.lan:8000/host1/",
    password=PASSWORD,
    username="agent",
    backend_password=BACKEND_PASSWORD,
    env={"B2_ACCOUNT_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "eu-central-9"},
)
SECRETS = (PASSWORD, BACKEND_PASSWORD, "b%40ck%3Aend%2Fpw%25", SECRET_KEY, "eu-central-9")

SNAP = "0123abcd"
BUILDERS: list[Callable[[GlobalOptions, RepoCredentials, Mapping[str, str]], ResticCommand]] = [
    init_cmd,
    lambda o, c, e: backup_cmd(o, c, e, includes=["/etc"], excludes=["*.tmp"], tags=["etc"]),
    snapshots_cmd,
    stats_cmd,
    unlock_cmd,
    probe_cmd,
    lambda o, c, e: forget_cmd(o, c, e, tag="etc", keep_daily=7, prune=True),
    prune_cmd,
    lambda o, c, e: check_cmd(o, c, e, read_data_subset_percent=5),
    lambda o, c, e: ls_cmd(o, c, e, SNAP),
    lambda o, c, e: restore_cmd(o, c, e, SNAP, "/restore", ["/etc"]),
    lambda o, c, e: diff_cmd(o, c, e, SNAP, "latest"),
]


@pytest.mark.parametrize("version", [V014, V018, None])
@pytest.mark.parametrize("builder", BUILDERS)
def test_no_secret_in_argv_or_repr(
    builder: Callable[[GlobalOptions, RepoCredentials, Mapping[str, str]], ResticCommand],
    version: ResticVersion | None,
) -> None:
    cmd = builder(opts(version), ALL_CREDS, AGENT_ENV)
    shown = " ".join(cmd.argv) + repr(cmd) + str(cmd) + cmd.display()
    for secret in SECRETS:
        assert secret not in shown
    assert "RESTIC_PASSWORD" in repr(cmd)  # names are shown, values are not
    assert cmd.env["RESTIC_PASSWORD"] == PASSWORD
    assert cmd.argv[:3] == PREFIX


def test_credentials_repr_hides_secrets() -> None:
    inline = RepoCredentials(url="rest:http://u:inline-secret@h:8000/", password=PASSWORD)
    for creds in (ALL_CREDS, inline):
        text = repr(creds) + str(creds) + f"{creds}"
        for secret in (*SECRETS, "inline-secret"):
            assert secret not in text
    assert "B2_ACCOUNT_KEY" in repr(ALL_CREDS)
    assert "u:***@h" in repr(inline)


def test_redact_url() -> None:
    assert redact_url("rest:http://u:p@h:1/x") == "rest:http://u:***@h:1/x"
    assert redact_url("rest:http://h:1/x") == "rest:http://h:1/x"
    assert redact_url("/srv/repo") == "/srv/repo"


def test_secrets_listed_for_scrubbing() -> None:
    cmd = probe_cmd(opts(), ALL_CREDS, BASE)
    assert set(cmd.secrets) == {PASSWORD, BACKEND_PASSWORD, "b%40ck%3Aend%2Fpw%25", SECRET_KEY}
    # Longest first, so a secret that contains another is replaced whole.
    assert [len(s) for s in cmd.secrets] == sorted((len(s) for s in cmd.secrets), reverse=True)
    short = probe_cmd(opts(), RepoCredentials(url="/r", password="pw"), BASE)
    assert short.secrets == ()


def test_display_quotes() -> None:
    cmd = backup_cmd(opts(), CREDS, BASE, includes=["/my docs"], excludes=[], tags=[])
    assert cmd.display() == (
        "/usr/bin/restic --cache-dir /var/cache/rm backup --json -- '/my docs'"
    )


# --- exact argv per builder ---------------------------------------------------


def test_global_limits() -> None:
    cmd = stats_cmd(opts(limit_upload_kib=512, limit_download_kib=2048), CREDS, BASE)
    assert cmd.argv == (
        *PREFIX,
        "--limit-upload",
        "512",
        "--limit-download",
        "2048",
        "stats",
        "--json",
        "--mode",
        "raw-data",
    )
    assert stats_cmd(opts(limit_upload_kib=0), CREDS, BASE).argv[3] == "stats"
    with pytest.raises(ValueError, match="--limit-download"):
        stats_cmd(opts(limit_download_kib=-1), CREDS, BASE)


@pytest.mark.parametrize(
    ("version", "expected"),
    [(V014, ("init",)), (None, ("init",)), (ResticVersion(0, 15, 0), ("init", "--json"))],
)
def test_init(version: ResticVersion | None, expected: tuple[str, ...]) -> None:
    cmd = init_cmd(opts(version), CREDS, AGENT_ENV)
    assert cmd.argv == (*PREFIX, *expected)
    assert dict(cmd.env) == expect_env()


def test_backup() -> None:
    cmd = backup_cmd(
        opts(),
        CREDS,
        BASE,
        includes=["/etc", "/home/user"],
        excludes=["*.tmp", "/home/*/.cache"],
        tags=["daily", "etc"],
        host="web1",
    )
    assert cmd.argv == (
        *PREFIX,
        "backup",
        "--json",
        "--tag",
        "daily",
        "--tag",
        "etc",
        "--exclude",
        "*.tmp",
        "--exclude",
        "/home/*/.cache",
        "--host",
        "web1",
        "--",
        "/etc",
        "/home/user",
    )


def test_backup_path_that_looks_like_a_flag_stays_a_path() -> None:
    cmd = backup_cmd(opts(), CREDS, BASE, includes=["/--help"], excludes=[], tags=[])
    assert cmd.argv[-2:] == ("--", "/--help")


@pytest.mark.parametrize("path", ["etc", "./etc", "../etc", "~/docs", ""])
def test_backup_rejects_relative_include(path: str) -> None:
    with pytest.raises(ValueError, match=r"absolute|empty"):
        backup_cmd(opts(), CREDS, BASE, includes=["/ok", path], excludes=[], tags=[])


def test_backup_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one include"):
        backup_cmd(opts(), CREDS, BASE, includes=[], excludes=[], tags=[])
    with pytest.raises(ValueError, match="comma"):
        backup_cmd(opts(), CREDS, BASE, includes=["/a"], excludes=[], tags=["a,b"])
    with pytest.raises(ValueError, match="exclude pattern"):
        backup_cmd(opts(), CREDS, BASE, includes=["/a"], excludes=[""], tags=[])


def test_snapshots() -> None:
    assert snapshots_cmd(opts(), CREDS, BASE).argv == (*PREFIX, "snapshots", "--json")
    assert snapshots_cmd(opts(), CREDS, BASE, tags=["etc"], host="web1").argv == (
        *PREFIX,
        "snapshots",
        "--json",
        "--tag",
        "etc",
        "--host",
        "web1",
    )


def test_simple_commands() -> None:
    assert stats_cmd(opts(), CREDS, BASE).argv == (
        *PREFIX,
        "stats",
        "--json",
        "--mode",
        "raw-data",
    )
    assert unlock_cmd(opts(), CREDS, BASE).argv == (*PREFIX, "unlock")
    assert unlock_cmd(opts(), CREDS, BASE, remove_all=True).argv == (
        *PREFIX,
        "unlock",
        "--remove-all",
    )
    assert probe_cmd(opts(), CREDS, BASE).argv == (*PREFIX, "cat", "config")


@pytest.mark.parametrize(
    ("version", "retry"),
    [(V014, ()), (None, ()), (V016, ("--retry-lock", "1m")), (V018, ("--retry-lock", "1m"))],
)
def test_forget(version: ResticVersion | None, retry: tuple[str, ...]) -> None:
    cmd = forget_cmd(
        opts(version),
        CREDS,
        BASE,
        tag="etc",
        keep_last=3,
        keep_hourly=24,
        keep_daily=7,
        keep_weekly=4,
        keep_monthly=12,
        keep_yearly=2,
        keep_within="1y6m",
        host="web1",
        prune=True,
    )
    assert cmd.argv == (
        *PREFIX,
        "forget",
        *retry,
        "--json",
        "--tag",
        "etc",
        "--host",
        "web1",
        "--group-by",
        "host",
        "--keep-last",
        "3",
        "--keep-hourly",
        "24",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "12",
        "--keep-yearly",
        "2",
        "--keep-within",
        "1y6m",
        "--prune",
    )


def test_forget_minimal() -> None:
    cmd = forget_cmd(opts(), CREDS, BASE, tag="etc", keep_daily=7)
    assert cmd.argv == (
        *PREFIX,
        "forget",
        "--json",
        "--tag",
        "etc",
        "--group-by",
        "host",
        "--keep-daily",
        "7",
    )


def test_forget_rejects_bad_policy() -> None:
    with pytest.raises(ValueError, match="at least one keep"):
        forget_cmd(opts(), CREDS, BASE, tag="etc")
    with pytest.raises(ValueError, match="--keep-daily"):
        forget_cmd(opts(), CREDS, BASE, tag="etc", keep_daily=0)
    with pytest.raises(ValueError, match="--keep-within"):
        forget_cmd(opts(), CREDS, BASE, tag="etc", keep_within="7 days")
    with pytest.raises(ValueError, match="tag"):
        forget_cmd(opts(), CREDS, BASE, tag="", keep_daily=1)


@pytest.mark.parametrize(("version", "extra"), [(V014, ()), (V016, ("--retry-lock", "1m"))])
def test_prune(version: ResticVersion, extra: tuple[str, ...]) -> None:
    assert prune_cmd(opts(version), CREDS, BASE).argv == (*PREFIX, "prune", *extra)


@pytest.mark.parametrize(
    ("version", "extra"),
    [
        (V014, ()),
        (None, ()),
        (V016, ("--retry-lock", "1m")),
        (ResticVersion(0, 17, 3), ("--retry-lock", "1m")),
        (V018, ("--retry-lock", "1m", "--json")),
    ],
)
def test_check(version: ResticVersion | None, extra: tuple[str, ...]) -> None:
    assert check_cmd(opts(version), CREDS, BASE).argv == (*PREFIX, "check", *extra)
    assert check_cmd(opts(version), CREDS, BASE, read_data_subset_percent=10).argv == (
        *PREFIX,
        "check",
        *extra,
        "--read-data-subset",
        "10%",
    )


@pytest.mark.parametrize("percent", [0, 101, -5])
def test_check_rejects_bad_subset(percent: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.100"):
        check_cmd(opts(), CREDS, BASE, read_data_subset_percent=percent)


def test_ls() -> None:
    full = "a" * 64
    assert ls_cmd(opts(), CREDS, BASE, full).argv == (*PREFIX, "ls", "--json", full)
    assert ls_cmd(opts(), CREDS, BASE, "latest").argv[-1] == "latest"


@pytest.mark.parametrize("snap", ["", "abc", "--help", "0123abcz", "latest; rm", "../x"])
def test_snapshot_ids_validated(snap: str) -> None:
    with pytest.raises(ValueError, match="snapshot id"):
        ls_cmd(opts(), CREDS, BASE, snap)
    with pytest.raises(ValueError, match="snapshot id"):
        diff_cmd(opts(), CREDS, BASE, SNAP, snap)


@pytest.mark.parametrize(
    ("version", "json_flag"), [(V014, ()), (None, ()), (V016, ("--json",)), (V018, ("--json",))]
)
def test_restore(version: ResticVersion | None, json_flag: tuple[str, ...]) -> None:
    cmd = restore_cmd(opts(version), CREDS, BASE, SNAP, "/srv/restore", ["/etc/nginx", "/home/a"])
    assert cmd.argv == (
        *PREFIX,
        "restore",
        *json_flag,
        "--target",
        "/srv/restore",
        "--include",
        "/etc/nginx",
        "--include",
        "/home/a",
        SNAP,
    )
    assert restore_cmd(opts(version), CREDS, BASE, SNAP, "/").argv[-3:] == (
        "--target",
        "/",
        SNAP,
    )


def test_restore_rejects_relative_target() -> None:
    with pytest.raises(ValueError, match="absolute"):
        restore_cmd(opts(), CREDS, BASE, SNAP, "restore")


def test_diff() -> None:
    assert diff_cmd(opts(), CREDS, BASE, SNAP, "89abcdef").argv == (
        *PREFIX,
        "diff",
        SNAP,
        "89abcdef",
    )
    assert diff_cmd(opts(), CREDS, BASE, SNAP, "89abcdef", json_output=True).argv == (
        *PREFIX,
        "diff",
        "--json",
        SNAP,
        "89abcdef",
    )


@pytest.mark.parametrize("builder", BUILDERS)
def test_v014_never_gets_newer_flags(
    builder: Callable[[GlobalOptions, RepoCredentials, Mapping[str, str]], ResticCommand],
) -> None:
    # Flags restic 0.14 rejects ("unknown flag") or ignores in ways that
    # change the output format we parse.
    argv = builder(opts(V014), CREDS, BASE).argv
    assert "--retry-lock" not in argv
    if argv[3] in ("init", "restore", "check"):
        assert "--json" not in argv


def test_env_is_read_only() -> None:
    cmd = probe_cmd(opts(), CREDS, BASE)
    with pytest.raises(TypeError):
        cmd.env["RESTIC_PASSWORD"] = "x"  # type: ignore[index]
