"""Pure builders for restic command lines and environments.

Nothing here touches the file system, the network or os.environ: every input
arrives as an argument so the exact argv and env can be asserted in tests.

Secrets reach restic only through its environment (RESTIC_REPOSITORY,
RESTIC_PASSWORD, backend variables). argv is visible to every user of the host
through /proc and `ps`, and it is what ends up in job logs.
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.protocol import RepoCredentials, redact_url

if TYPE_CHECKING:
    from agent.restic.version import ResticVersion

__all__ = [
    "BASE_ENV_KEYS",
    "RETRY_LOCK",
    "GlobalOptions",
    "RepoCredentials",
    "ResticCommand",
    "backup_cmd",
    "check_cmd",
    "diff_cmd",
    "forget_cmd",
    "init_cmd",
    "ls_cmd",
    "minimal_env",
    "probe_cmd",
    "prune_cmd",
    "redact_url",
    "repository_env",
    "repository_url",
    "restore_cmd",
    "snapshots_cmd",
    "stats_cmd",
    "unlock_cmd",
]

# How long forget/prune/check wait for another process's lock before failing.
# Long enough to ride out a concurrent backup's lock refresh, short enough that
# a stale lock surfaces as an error the operator sees.
RETRY_LOCK = "1m"

# Variables copied from the agent's own environment. restic gets nothing else
# from it, so an ambient RESTIC_PASSWORD, RESTIC_PASSWORD_COMMAND or cloud key
# on the host can never leak into (or override) a job.
BASE_ENV_KEYS: tuple[str, ...] = (
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    # sftp: restic runs ssh, which needs the agent socket for key auth.
    "SSH_AUTH_SOCK",
    # REST/S3/B2 behind a proxy or a private CA: Go honours these.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    # Windows: Go's networking and crypto fail without SYSTEMROOT; temp and
    # profile directories live in these.
    "SYSTEMROOT",
    "WINDIR",
    "USERPROFILE",
    "LOCALAPPDATA",
    "APPDATA",
    "TEMP",
    "TMP",
)

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_RESERVED_ENV = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
    }
)
# Values of backend variables with these words in their name are scrubbed from
# restic's stderr; region names and the like stay readable.
_SECRET_ENV_WORDS = ("KEY", "SECRET", "TOKEN", "PASS", "SAS", "AUTH", "CREDENTIAL")
# Scrubbing a two-letter password would shred every message that contains those
# letters; restic itself never prints the password, so this is a second line
# of defence for the long secrets that matter.
_MIN_SCRUB_LEN = 4

_SNAPSHOT_ID_RE = re.compile(r"(latest|[0-9a-fA-F]{8,64})\Z")
_DURATION_RE = re.compile(r"(\d+[ymdh])+\Z")
_URL_PASSWORD_RE = re.compile(r"(://[^/@\s:]*:)[^/@\s]*@")


def _is_reserved_env(name: str) -> bool:
    # RESTIC_FROM_PASSWORD_COMMAND and friends (used by `copy`) would run a
    # command or swap the repository just as well as the plain names.
    if name in _RESERVED_ENV:
        return True
    return name.startswith("RESTIC_") and ("PASSWORD" in name or "REPOSITORY" in name)


# One credentials type from the wire to restic's environment.
__all__ = ["RepoCredentials", "redact_url"]


@dataclass(frozen=True)
class ResticCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    # Strings the runner scrubs from restic's stderr before anyone sees it.
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        env = {name: "***" for name in self.env}
        return f"ResticCommand(argv={self.argv!r}, env={env!r})"

    def display(self) -> str:
        """The command line for logs; argv never carries a secret."""
        return shlex.join(self.argv)


@dataclass(frozen=True)
class GlobalOptions:
    binary: str
    cache_dir: str
    limit_upload_kib: int | None = None
    limit_download_kib: int | None = None
    version: ResticVersion | None = None


def minimal_env(base_env: Mapping[str, str]) -> dict[str, str]:
    """The subset of the agent's environment that restic may inherit."""
    return {key: base_env[key] for key in BASE_ENV_KEYS if key in base_env}


def _check_text(what: str, value: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\0" in value:
        raise ValueError(f"{what} must not contain a NUL character")


def repository_url(creds: RepoCredentials) -> str:
    """The repository URL restic sees, with REST credentials injected."""
    _check_text("repository URL", creds.url)
    if creds.username is None and creds.backend_password is None:
        return creds.url
    if not creds.url.startswith("rest:"):
        raise ValueError(
            "username/backend password are only supported for rest: repositories; "
            "pass other backend credentials as environment variables"
        )
    if not creds.username:
        raise ValueError("a REST backend password needs a username")
    parts = urllib.parse.urlsplit(creds.url[len("rest:") :])
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"unsupported REST URL {redact_url(creds.url)!r}")
    if "@" in parts.netloc:
        raise ValueError("the REST URL already contains credentials; give them only once")
    userinfo = urllib.parse.quote(creds.username, safe="")
    if creds.backend_password is not None:
        userinfo += ":" + urllib.parse.quote(creds.backend_password, safe="")
    # Splice rather than urlunsplit so the rest of the URL stays byte-identical.
    head = f"rest:{parts.scheme}://"
    return head + userinfo + "@" + creds.url[len(head) :]


def repository_env(creds: RepoCredentials, base_env: Mapping[str, str]) -> dict[str, str]:
    """Environment for one restic run against `creds`' repository."""
    _check_text("repository password", creds.password)
    env = minimal_env(base_env)
    for name, value in creds.env.items():
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if _is_reserved_env(name):
            raise ValueError(f"environment variable {name} may not be set by repository settings")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL character")
        env[name] = value
    env["RESTIC_REPOSITORY"] = repository_url(creds)
    env["RESTIC_PASSWORD"] = creds.password
    return env


def _secrets(creds: RepoCredentials) -> tuple[str, ...]:
    found = [creds.password]
    if creds.backend_password:
        found += [creds.backend_password, urllib.parse.quote(creds.backend_password, safe="")]
    found += [
        value
        for name, value in creds.env.items()
        if any(word in name for word in _SECRET_ENV_WORDS)
    ]
    # Longest first so a secret containing another is replaced whole.
    unique = {s for s in found if len(s) >= _MIN_SCRUB_LEN}
    return tuple(sorted(unique, key=len, reverse=True))


def _limit_flag(flag: str, value: int | None) -> list[str]:
    if value is None or value == 0:
        # restic reads 0 as "unlimited" too; omit it to keep argv minimal.
        return []
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"{flag} must be a positive number of KiB/s, got {value!r}")
    return [flag, str(value)]


def _command(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    args: Sequence[str],
) -> ResticCommand:
    _check_text("restic binary", opts.binary)
    _check_text("cache dir", opts.cache_dir)
    argv = [opts.binary, "--cache-dir", opts.cache_dir]
    argv += _limit_flag("--limit-upload", opts.limit_upload_kib)
    argv += _limit_flag("--limit-download", opts.limit_download_kib)
    argv += args
    env = MappingProxyType(repository_env(creds, base_env))
    return ResticCommand(argv=tuple(argv), env=env, secrets=_secrets(creds))


def _retry_lock(opts: GlobalOptions) -> list[str]:
    if opts.version is not None and opts.version.retry_lock:
        return ["--retry-lock", RETRY_LOCK]
    return []


def _tag_args(tags: Sequence[str]) -> list[str]:
    args: list[str] = []
    for tag in tags:
        _check_text("tag", tag)
        if "," in tag:
            # restic splits --tag values on commas: "a,b" would become two tags.
            raise ValueError(f"tag {tag!r} must not contain a comma")
        args += ["--tag", tag]
    return args


def _host_args(host: str | None) -> list[str]:
    if host is None:
        return []
    _check_text("host", host)
    return ["--host", host]


def _snapshot_id(snapshot_id: str) -> str:
    # Also keeps a value starting with "-" from being read as a flag.
    if not _SNAPSHOT_ID_RE.match(snapshot_id):
        raise ValueError(f"invalid snapshot id {snapshot_id!r}")
    return snapshot_id


def init_cmd(
    opts: GlobalOptions, creds: RepoCredentials, base_env: Mapping[str, str]
) -> ResticCommand:
    args = ["init"]
    if opts.version is not None and opts.version.init_json:
        args.append("--json")
    return _command(opts, creds, base_env, args)


def backup_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    *,
    includes: Sequence[str],
    excludes: Sequence[str],
    tags: Sequence[str],
    host: str | None = None,
) -> ResticCommand:
    if not includes:
        raise ValueError("a backup needs at least one include path")
    for path in includes:
        _check_text("include path", path)
        # restic stores a relative path relative to its working directory,
        # which makes the snapshot depend on where the agent happened to run.
        if not os.path.isabs(path):
            raise ValueError(f"include path {path!r} must be absolute")
    args = ["backup", "--json", *_tag_args(tags)]
    for pattern in excludes:
        _check_text("exclude pattern", pattern)
        args += ["--exclude", pattern]
    args += _host_args(host)
    # "--" so that no include path can be read as a flag.
    args += ["--", *includes]
    return _command(opts, creds, base_env, args)


def snapshots_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    *,
    tags: Sequence[str] = (),
    host: str | None = None,
) -> ResticCommand:
    args = ["snapshots", "--json", *_tag_args(tags), *_host_args(host)]
    return _command(opts, creds, base_env, args)


def stats_cmd(
    opts: GlobalOptions, creds: RepoCredentials, base_env: Mapping[str, str]
) -> ResticCommand:
    return _command(opts, creds, base_env, ["stats", "--json", "--mode", "raw-data"])


def unlock_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    *,
    remove_all: bool = False,
) -> ResticCommand:
    # Plain `unlock` removes only stale locks (dead PID on this host, or older
    # than 30 min), so it is safe to run while another host is backing up.
    args = ["unlock", "--remove-all"] if remove_all else ["unlock"]
    return _command(opts, creds, base_env, args)


def probe_cmd(
    opts: GlobalOptions, creds: RepoCredentials, base_env: Mapping[str, str]
) -> ResticCommand:
    # Reads one small file that needs the key: proves the repository exists,
    # is reachable and the password is right, without taking a lock.
    return _command(opts, creds, base_env, ["cat", "config"])


def forget_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    *,
    tag: str,
    keep_last: int | None = None,
    keep_hourly: int | None = None,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    keep_yearly: int | None = None,
    keep_within: str | None = None,
    host: str | None = None,
    prune: bool = False,
) -> ResticCommand:
    policy: list[str] = []
    for flag, count in (
        ("--keep-last", keep_last),
        ("--keep-hourly", keep_hourly),
        ("--keep-daily", keep_daily),
        ("--keep-weekly", keep_weekly),
        ("--keep-monthly", keep_monthly),
        ("--keep-yearly", keep_yearly),
    ):
        if count is None:
            continue
        # 0 means "unset" in 0.14 but "keep none" is never what a retention
        # policy wants; -1 ("unlimited") does not exist in 0.14.
        if isinstance(count, bool) or count < 1:
            raise ValueError(f"{flag} must be a positive integer, got {count!r}")
        policy += [flag, str(count)]
    if keep_within is not None:
        if not _DURATION_RE.match(keep_within):
            raise ValueError(f"--keep-within must look like '7d' or '1y6m', got {keep_within!r}")
        policy += ["--keep-within", keep_within]
    if not policy:
        # restic would print "no policy was specified" and succeed, hiding a
        # source group whose retention never got configured.
        raise ValueError("forget needs at least one keep_* rule")
    # Grouping by host only: with the tag filter that is one group per source
    # group and host. Grouping by paths (restic's default) would start a new,
    # never-pruned group every time the include list changes.
    args = ["forget", *_retry_lock(opts), "--json", *_tag_args([tag]), *_host_args(host)]
    args += ["--group-by", "host", *policy]
    if prune:
        args.append("--prune")
    return _command(opts, creds, base_env, args)


def prune_cmd(
    opts: GlobalOptions, creds: RepoCredentials, base_env: Mapping[str, str]
) -> ResticCommand:
    return _command(opts, creds, base_env, ["prune", *_retry_lock(opts)])


def check_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    *,
    read_data_subset_percent: int | None = None,
) -> ResticCommand:
    args = ["check", *_retry_lock(opts)]
    if opts.version is not None and opts.version.check_json:
        args.append("--json")
    if read_data_subset_percent is not None:
        if isinstance(read_data_subset_percent, bool) or not 1 <= read_data_subset_percent <= 100:
            raise ValueError(
                f"read_data_subset_percent must be 1..100, got {read_data_subset_percent!r}"
            )
        args += ["--read-data-subset", f"{read_data_subset_percent}%"]
    return _command(opts, creds, base_env, args)


def ls_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    snapshot_id: str,
) -> ResticCommand:
    return _command(opts, creds, base_env, ["ls", "--json", _snapshot_id(snapshot_id)])


def restore_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    snapshot_id: str,
    target: str,
    includes: Sequence[str] = (),
) -> ResticCommand:
    _check_text("restore target", target)
    # The caller expands "~" and picks the directory; a relative target would
    # land wherever the agent's working directory happens to be.
    if not os.path.isabs(target):
        raise ValueError(f"restore target {target!r} must be absolute")
    args = ["restore"]
    if opts.version is not None and opts.version.restore_json:
        args.append("--json")
    args += ["--target", target]
    for pattern in includes:
        _check_text("restore include", pattern)
        args += ["--include", pattern]
    args.append(_snapshot_id(snapshot_id))
    return _command(opts, creds, base_env, args)


def diff_cmd(
    opts: GlobalOptions,
    creds: RepoCredentials,
    base_env: Mapping[str, str],
    snapshot_a: str,
    snapshot_b: str,
    *,
    json_output: bool = False,
) -> ResticCommand:
    # Plain text by default: a diff is streamed to a job log for people.
    args = ["diff", "--json"] if json_output else ["diff"]
    args += [_snapshot_id(snapshot_a), _snapshot_id(snapshot_b)]
    return _command(opts, creds, base_env, args)
