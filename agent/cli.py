"""``restic-manager-agent``: enrol (or announce) this host, or run the agent.

Exit codes (scripts and the service unit rely on them): 0 ok, 2 usage or
configuration error (the service manager does not restart the agent:
someone has to fix it), 3 the state dir cannot be written (disk full,
read-only; retried, as it may clear by itself), 75 restart into a new
binary after a self-update, 1 any other failure. A failure prints one
line on stderr (the journal, under systemd) that says what went wrong and
what to do about it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from agent.version import __version__

PROG = "restic-manager-agent"
# The enrolment token's environment variable: a process's command line is
# readable by every user of the host (ps, /proc/*/cmdline), its environment is not.
TOKEN_ENV = "RM_ENROL_TOKEN"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse would print the whole usage and call sys.exit itself; one line
    # that names the problem and the fix is easier to read in an install log.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{PROG} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="restic-manager agent: runs restic on this host for the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p_enrol = sub.add_parser("enrol", help="enrol this host with a one-time token from the app")
    p_enrol.add_argument("--server", required=True, help="https://HOST:PORT of restic-manager")
    p_enrol.add_argument(
        "--token",
        help=f"the one-time enrolment token; better given in ${TOKEN_ENV}, which other "
        "users cannot read the way they can read a command line",
    )
    p_enrol.add_argument(
        "--cert-sha256",
        required=True,
        help="SHA-256 fingerprint of the server certificate (hex; colons and case ignored)",
    )
    p_enrol.add_argument("--config", required=True, type=Path, help="config file to write")
    p_enrol.add_argument(
        "--state-dir", type=Path, help="where the agent keeps its state (default: per OS)"
    )
    p_enrol.add_argument("--restic", help="path to the restic binary (default: from PATH)")
    p_enrol.add_argument("--hostname", help="name to enrol under (default: this machine's)")

    p_announce = sub.add_parser(
        "announce",
        help="ask the app to add this host (no token): prints a key fingerprint to compare",
    )
    p_announce.add_argument("--server", required=True, help="https://HOST:PORT of restic-manager")
    p_announce.add_argument(
        "--cert-sha256",
        required=True,
        help="SHA-256 fingerprint of the server certificate (hex; colons and case ignored)",
    )
    p_announce.add_argument("--config", required=True, type=Path, help="config file to write")
    p_announce.add_argument(
        "--state-dir", type=Path, help="where the agent keeps its state and key (default: per OS)"
    )
    p_announce.add_argument("--restic", help="path to the restic binary (default: from PATH)")
    p_announce.add_argument("--hostname", help="name to announce (default: this machine's)")

    p_run = sub.add_parser("run", help="run the agent (as a service)")
    p_run.add_argument("--config", required=True, type=Path, help="the agent's config file")

    # What the Windows service's image path runs (installers/install.ps1).
    p_service = sub.add_parser("service", help="run as the Windows service (Windows only)")
    p_service.add_argument("--config", required=True, type=Path, help="the agent's config file")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    except SystemExit as exc:
        # --help and --version end here.
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command == "enrol":
        return _enrol(args, out, err)
    if args.command == "announce":
        return _announce(args, out, err)
    if args.command == "run":
        return _run(args, err)
    if args.command == "service":
        return _service(args, err)
    print(f"{PROG}: error: missing command: enrol, announce or run (see '{PROG} --help')", file=err)
    return EXIT_USAGE


def _enrol(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    token = args.token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        print(
            f"{PROG}: error: no enrolment token: set ${TOKEN_ENV} (or pass --token); "
            "copy it from the app's Add host page",
            file=err,
        )
        return EXIT_USAGE
    # Imported here: it pulls in aiohttp (~0.2 s), which --version and --help do not need.
    from agent import enrol as enrol_mod

    async def go() -> tuple[enrol_mod.EnrolResult, str | None]:
        restic_version, restic_note = await _restic_version(args.restic)
        result = await enrol_mod.enrol(
            server_url=args.server,
            token=token,
            cert_sha256=args.cert_sha256,
            config_path=args.config,
            state_dir=args.state_dir,
            restic_path=args.restic,
            hostname=args.hostname,
            restic_version=restic_version,
        )
        return result, restic_note

    try:
        result, note = asyncio.run(go())
    except enrol_mod.EnrolError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; nothing was written", file=err)
        return EXIT_FAILURE
    print(
        f"Enrolled as host {result.hostname!r} (id {result.host_id}); config written to "
        f"{result.config_path}. Start the agent with: {PROG} run --config {result.config_path}"
        + (f" ({note})" if note else ""),
        file=out,
    )
    return EXIT_OK


async def _restic_version(restic: str | None) -> tuple[str | None, str | None]:
    """restic's version and a note when it is missing; a bad --restic is a usage error."""
    from agent.enrol import EnrolError
    from agent.jobs import find_restic_binary
    from agent.restic.version import ResticNotFound

    # restic's finder falls back to PATH; an explicit --restic that does
    # not exist is a typo the operator should hear about now.
    if restic and shutil.which(restic) is None:
        raise EnrolError(f"--restic {restic!r} is not an executable file", EXIT_USAGE)
    try:
        binary = await find_restic_binary(restic)
    except ResticNotFound:
        return None, "restic was not found in PATH: install it before the first backup"
    return str(binary.version), None


def _announce(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here, as for enrol: --version and --help stay fast.
    from agent import announce as announce_mod
    from agent import enrol as enrol_mod

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    async def go() -> tuple[enrol_mod.EnrolResult, str | None]:
        # Before the key is created: a typo in --restic leaves nothing behind.
        version, note = await _restic_version(args.restic)
        prepared = announce_mod.prepare(
            server_url=args.server,
            cert_sha256=args.cert_sha256,
            config_path=args.config,
            state_dir=args.state_dir,
            restic_path=args.restic,
            hostname=args.hostname,
        )
        identity = prepared.identity
        say(
            announce_mod.banner(
                identity.fingerprint,
                prepared.plan.hostname,
                prepared.plan.server,
                identity.path,
                prepared.created_key,
            )
        )
        announcer = announce_mod.Announcer(prepared, say=say, restic_version=version)
        return await announcer.run(), note

    try:
        result, note = asyncio.run(go())
    except enrol_mod.EnrolError as exc:
        print(f"{PROG}: error: {exc}", file=err, flush=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(
            f"{PROG}: error: interrupted; nothing was written (the request stays listed in "
            "the app until it expires)",
            file=err,
        )
        return EXIT_FAILURE
    say(
        f"Accepted: enrolled as host {result.hostname!r} (id {result.host_id}); config written "
        f"to {result.config_path}. Start the agent with: {PROG} run --config {result.config_path}"
        + (f" ({note})" if note else "")
    )
    return EXIT_OK


def _run(args: argparse.Namespace, err: TextIO) -> int:
    from agent.client import AgentStartError, run_agent

    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return asyncio.run(run_agent(args.config))
    except AgentStartError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        logging.getLogger("agent").debug("agent failed", exc_info=True)
        print(f"{PROG}: error: the agent stopped unexpectedly: {exc}", file=err)
        return EXIT_FAILURE
    finally:
        root.removeHandler(handler)


def _service(args: argparse.Namespace, err: TextIO) -> int:
    # pywin32 is imported inside: Linux never loads it.
    from agent import windows_service

    try:
        return windows_service.run_service(args.config)
    except windows_service.ServiceUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
