"""classify() against the exact stderr and exit codes restic printed on this host.

Captured with /usr/bin/restic (0.14.0) and the trixie build (0.18.0) against
local repositories, an rclone REST server (wrong login, append-only) and
unreachable addresses. tests/integration/test_restic_real.py re-checks the
local cases live.
"""

from __future__ import annotations

import pytest

from agent.restic.errors import ResticErrorKind, classify, error_summary
from agent.restic.version import ResticVersion

K = ResticErrorKind
V014 = ResticVersion(0, 14, 0)
V017 = ResticVersion(0, 17, 0)
V018 = ResticVersion(0, 18, 0)

# --- restic 0.14.0: everything exits 1 ----------------------------------------

V014_ALREADY = "Fatal: create repository at /tmp/rx/repo14 failed: config file already exists\n\n"
V014_WRONG_PASSWORD = "Fatal: wrong password or no key found\n"
V014_NO_REPO = (
    "Fatal: unable to open config file: stat /tmp/rx/nope14/config: no such file or directory\n"
    "Is there a repository at the following location?\n"
    "/tmp/rx/nope14\n"
)
V014_LOCKED = (
    "unable to create lock in backend: repository is already locked by PID 5180 on vm by root "
    "(UID 0, GID 0)\n"
    "lock was created at 2026-11-21 21:43:02 (1.590027778s ago)\n"
    "storage ID c5feada2\n"
    "the `unlock` command can be used to remove stale locks\n"
)
V014_REFUSED = (
    'Fatal: unable to open config file: client.Head: Head "http://127.0.0.1:1/x/config": '
    "dial tcp 127.0.0.1:1: connect: connection refused\n"
    "Is there a repository at the following location?\n"
    "rest:http://127.0.0.1:1/x/\n"
)
V014_NO_HOST = (
    'Fatal: unable to open config file: client.Head: Head "http://nosuchhost.invalid:8000/x/'
    'config": dial tcp: lookup nosuchhost.invalid on 10.255.255.53:53: no such host\n'
    "Is there a repository at the following location?\n"
    "rest:http://nosuchhost.invalid:8000/x/\n"
)
V014_REST_401 = (
    "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
    "Is there a repository at the following location?\n"
    "rest:http://ag ent:***@127.0.0.1:18999/x/\n"
)
V014_PERMISSION = (
    "Fatal: unable to open repository at /tmp/rx/repo14: ReadDir: open /tmp/rx/repo14/keys: "
    "permission denied\n"
)
V014_APPEND_ONLY_FORGET = (
    "Remove(<snapshot/de4b461a4a>) returned error, retrying after 552.330144ms: blob not "
    "removed, server response: 403 Forbidden (403)\n"
    "blob not removed, server response: 403 Forbidden (403)\n"
    "github.com/restic/restic/internal/backend/rest.(*Backend).Remove\n"
    "\tgithub.com/restic/restic/internal/backend/rest/rest.go:399\n"
)

# --- restic 0.18.0: exit codes 10/11/12, exit_error JSON with --json ----------

V018_ALREADY = (
    "Fatal: create repository at /tmp/rx/repo18 failed: Fatal: unable to open repository at "
    "/tmp/rx/repo18: config file already exists\n\n"
)
V018_ALREADY_JSON = (
    '{"message_type":"exit_error","code":1,"message":"Fatal: create repository at '
    "/tmp/rx/repo18 failed: Fatal: unable to open repository at /tmp/rx/repo18: config file "
    'already exists\\n"}\n'
)
V018_WRONG_PASSWORD_JSON = (
    '{"message_type":"exit_error","code":12,"message":"Fatal: wrong password or no key found"}\n'
)
V018_WRONG_PASSWORD = "Fatal: wrong password or no key found\n"
V018_NO_REPO_JSON = (
    '{"message_type":"exit_error","code":10,"message":"Fatal: repository does not exist: '
    "unable to open config file: stat /tmp/rx/nope18/config: no such file or directory\\n"
    'Is there a repository at the following location?\\n/tmp/rx/nope18"}\n'
)
V018_NO_REPO = (
    "Fatal: repository does not exist: unable to open config file: stat /tmp/rx/nope18/config: "
    "no such file or directory\n"
    "Is there a repository at the following location?\n"
    "/tmp/rx/nope18\n"
)
V018_LOCKED_JSON = (
    '{"message_type":"exit_error","code":11,"message":"unable to create lock in backend: '
    "repository is already locked by PID 5266 on vm by root (UID 0, GID 0)\\nlock was created "
    "at 2026-11-21 21:43:07 (1.473877349s ago)\\nstorage ID 2dad0412\\nthe `unlock` command "
    'can be used to remove stale locks"}\n'
)
V018_LOCKED = (
    "repo already locked, waiting up to 0s for the lock\n"
    "unable to create lock in backend: repository is already locked by PID 5266 on vm by root "
    "(UID 0, GID 0)\n"
    "lock was created at 2026-11-21 21:43:07 (2.032957349s ago)\n"
    "storage ID 2dad0412\n"
    "the `unlock` command can be used to remove stale locks\n"
)
# 0.18 retries an unreachable REST server for minutes; this is the end after
# the job was stopped.
V018_REFUSED = (
    "Stat(<config/>) returned error, retrying after 1.184653123s: Head "
    '"http://:***@127.0.0.1:1/x/config": dial tcp 127.0.0.1:1: connect: connection refused\n'
    "\x1b[2Ksignal terminated received, cleaning up\n"
    "Fatal: unable to open config file: context canceled\n"
    "Is there a repository at the following location?\n"
    "rest:http://127.0.0.1:1/x/\n"
)
V018_REST_401 = (
    "Stat(<config/>) failed: unexpected HTTP response (401): 401 Unauthorized\n"
    "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
    "Is there a repository at the following location?\n"
    "rest:http://ag ent:***@127.0.0.1:18999/x/\n"
)
V018_PERMISSION = (
    "Stat(<config/>) failed: stat /tmp/rx/repo18/config: permission denied\n"
    "Fatal: unable to open config file: stat /tmp/rx/repo18/config: permission denied\n"
    "Is there a repository at the following location?\n"
    "/tmp/rx/repo18\n"
)
# 0.18 exits 0 here although nothing was removed: callers must look at stderr.
V018_APPEND_ONLY_FORGET = (
    "Remove(<snapshot/82c629c7d9>) failed: unexpected HTTP response (403): 403 Forbidden\n"
    "unable to remove snapshot/82c629c7d9977fe5fe09d097ee121e1893c5492a1f68f09ad51bbe87590a48cb "
    "from the repository\n"
)


@pytest.mark.parametrize(
    ("code", "stderr", "version", "kind"),
    [
        (1, V014_ALREADY, V014, K.ALREADY_INITIALISED),
        (1, V014_WRONG_PASSWORD, V014, K.WRONG_PASSWORD),
        (1, V014_NO_REPO, V014, K.NOT_INITIALISED),
        (1, V014_LOCKED, V014, K.LOCKED),
        (1, V014_REFUSED, V014, K.REPO_UNREACHABLE),
        (1, V014_NO_HOST, V014, K.REPO_UNREACHABLE),
        (1, V014_REST_401, V014, K.PERMISSION_DENIED),
        (1, V014_PERMISSION, V014, K.PERMISSION_DENIED),
        (1, V014_APPEND_ONLY_FORGET, V014, K.PERMISSION_DENIED),
        (1, V018_ALREADY, V018, K.ALREADY_INITIALISED),
        (1, V018_ALREADY_JSON, V018, K.ALREADY_INITIALISED),
        (12, V018_WRONG_PASSWORD_JSON, V018, K.WRONG_PASSWORD),
        (12, V018_WRONG_PASSWORD, V018, K.WRONG_PASSWORD),
        (10, V018_NO_REPO_JSON, V018, K.NOT_INITIALISED),
        (10, V018_NO_REPO, V018, K.NOT_INITIALISED),
        (11, V018_LOCKED_JSON, V018, K.LOCKED),
        (11, V018_LOCKED, V018, K.LOCKED),
        (1, V018_REFUSED, V018, K.REPO_UNREACHABLE),
        (1, V018_REST_401, V018, K.PERMISSION_DENIED),
        (1, V018_PERMISSION, V018, K.PERMISSION_DENIED),
        (0, V018_APPEND_ONLY_FORGET, V018, K.PERMISSION_DENIED),
        (1, "Fatal: something new\n", V018, K.UNKNOWN),
        (1, "", V014, K.UNKNOWN),
    ],
)
def test_classify_observed(
    code: int, stderr: str, version: ResticVersion, kind: ResticErrorKind
) -> None:
    assert classify(code, stderr, version) is kind
    # Without a known version the text alone must still be enough.
    assert classify(code, stderr, None) is kind


@pytest.mark.parametrize(
    ("code", "version", "kind"),
    [
        (10, V017, K.NOT_INITIALISED),
        (11, V017, K.LOCKED),
        (12, ResticVersion(0, 17, 1), K.WRONG_PASSWORD),
        (12, V018, K.WRONG_PASSWORD),
    ],
)
def test_exit_codes_win_over_silent_stderr(
    code: int, version: ResticVersion, kind: ResticErrorKind
) -> None:
    assert classify(code, "", version) is kind


@pytest.mark.parametrize(
    ("code", "version"),
    [(10, V014), (11, V014), (12, V017), (10, None), (12, ResticVersion(0, 16, 0))],
)
def test_exit_codes_ignored_where_version_lacks_them(
    code: int, version: ResticVersion | None
) -> None:
    assert classify(code, "", version) is K.UNKNOWN


def test_kind_values_are_strings() -> None:
    assert str(K.WRONG_PASSWORD) == "wrong_password"
    assert f"{K.LOCKED}" == "locked"
    assert {k.value for k in K} == {
        "already_initialised",
        "not_initialised",
        "wrong_password",
        "locked",
        "repo_unreachable",
        "permission_denied",
        "unknown",
    }


@pytest.mark.parametrize(
    ("stderr", "summary"),
    [
        (V018_WRONG_PASSWORD_JSON, "Fatal: wrong password or no key found"),
        (
            "/tmp/rx/missing2 does not exist, skipping\n"
            '{"message_type":"exit_error","code":1,"message":"Fatal: all source '
            'directories/files do not exist"}\n',
            "Fatal: all source directories/files do not exist",
        ),
        (
            V014_NO_REPO,
            "Fatal: unable to open config file: stat /tmp/rx/nope14/config: no such file or "
            "directory\nIs there a repository at the following location?\n/tmp/rx/nope14",
        ),
        # No "Fatal:" line: the last lines, which name the lock holder.
        (V014_LOCKED, V014_LOCKED.strip()),
        (V014_APPEND_ONLY_FORGET, "blob not removed, server response: 403 Forbidden (403)"),
        ("", ""),
    ],
)
def test_error_summary(stderr: str, summary: str) -> None:
    assert error_summary(stderr) == summary


def test_error_summary_is_bounded() -> None:
    assert len(error_summary("Fatal: " + "x" * 50_000)) == 1000
