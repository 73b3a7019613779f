"""Turning a failed restic run into something an operator can act on.

restic 0.14 exits with 1 for every repository problem; 0.17 added exit codes
10 (no repository) and 11 (locked) and 0.17.1 added 12 (wrong password). The
texts matched below were observed from restic 0.14.0 and 0.18.0 (see
tests/unit/agent/test_restic_errors.py for the captured messages).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum

from agent.restic.version import ResticVersion

__all__ = ["ResticErrorKind", "classify", "error_summary"]


class ResticErrorKind(StrEnum):
    ALREADY_INITIALISED = "already_initialised"
    NOT_INITIALISED = "not_initialised"
    WRONG_PASSWORD = "wrong_password"
    LOCKED = "locked"
    REPO_UNREACHABLE = "repo_unreachable"
    PERMISSION_DENIED = "permission_denied"
    UNKNOWN = "unknown"


# Order matters. A wrong REST login, an unreachable server and a permission
# problem all end in "unable to open config file ... Is there a repository at
# the following location?", so the specific causes are tested before the
# generic "no repository" wording. All needles are lower case.
_RULES: tuple[tuple[ResticErrorKind, tuple[str, ...]], ...] = (
    (
        ResticErrorKind.ALREADY_INITIALISED,
        (
            "config file already exists",
            # restic before 0.10
            "repository master key and config already initialized",
        ),
    ),
    (ResticErrorKind.WRONG_PASSWORD, ("wrong password or no key found",)),
    (ResticErrorKind.LOCKED, ("repository is already locked",)),
    (
        ResticErrorKind.PERMISSION_DENIED,
        (
            "permission denied",
            # Windows
            "access is denied",
            # REST / S3 / B2 refusing the backend credentials or the operation
            # (an append-only rest-server answers forget with 403).
            "401 unauthorized",
            "403 forbidden",
            "accessdenied",
        ),
    ),
    (
        ResticErrorKind.REPO_UNREACHABLE,
        (
            "connection refused",
            "no such host",
            "dial tcp",
            "i/o timeout",
            "network is unreachable",
            "no route to host",
            "connection reset by peer",
            "connection timed out",
            "tls handshake timeout",
            "context deadline exceeded",
            "server misbehaving",
            "unable to start the sftp session",
        ),
    ),
    # A lock that could not be written for another reason (full disk, a
    # flaky backend) is still a lock problem for the job.
    (ResticErrorKind.LOCKED, ("unable to create lock",)),
    (
        ResticErrorKind.NOT_INITIALISED,
        (
            "repository does not exist",
            "unable to open config file",
            "is there a repository at the following location?",
        ),
    ),
)


def classify(exit_code: int, stderr: str, version: ResticVersion | None) -> ResticErrorKind:
    """Classify a restic failure from its exit code and stderr.

    Callers decide success from the exit code first (0 = ok, 3 = snapshot made
    with unreadable files); this only answers *why* a run went wrong.
    """
    if version is not None:
        if version.exit_codes_10_11:
            if exit_code == 10:
                return ResticErrorKind.NOT_INITIALISED
            if exit_code == 11:
                return ResticErrorKind.LOCKED
        if version.exit_code_12 and exit_code == 12:
            return ResticErrorKind.WRONG_PASSWORD
    text = stderr.lower()
    for kind, needles in _RULES:
        if any(needle in text for needle in needles):
            return kind
    return ResticErrorKind.UNKNOWN


_SUMMARY_MAX = 1000
_STACK_PREFIXES = ("github.com/", "golang.org/", "google.golang.org/", "runtime.", "main.")
_SOURCE_LINE_RE = re.compile(r"\S+\.(go|s):\d+\Z")


def error_summary(stderr: str) -> str:
    """The most useful short message from restic's stderr, for job results.

    0.17+ ends a `--json` run with an `exit_error` object; otherwise the
    "Fatal:" line and what follows it; otherwise the last lines. Retry chatter
    and Go stack traces (0.14 prints them for some backend errors) are skipped.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("message_type") == "exit_error":
            message = obj.get("message")
            if isinstance(message, str) and message.strip():
                return message.strip()[:_SUMMARY_MAX]
    useful = [
        line
        for line in lines
        if "retrying after" not in line
        and not line.startswith(_STACK_PREFIXES)
        and not _SOURCE_LINE_RE.match(line)
    ]
    for index, line in enumerate(useful):
        if line.startswith("Fatal:"):
            return "\n".join(useful[index : index + 3])[:_SUMMARY_MAX]
    # restic's lock message spans four lines and names the lock holder first.
    return "\n".join(useful[-5:])[:_SUMMARY_MAX]
