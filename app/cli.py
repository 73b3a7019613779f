"""`restic-manager` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app import logging_setup, malloc_tuning
from app.early_quit import EarlyQuit
from app.paths import default_data_dir

if TYPE_CHECKING:
    from server_core.control_plane import Endpoint


def _endpoint(text: str) -> Endpoint:
    # Imported late: the control plane's imports take most of a second, and a
    # quit signal sent meanwhile must already be caught (see app/early_quit.py).
    from server_core.control_plane import Endpoint

    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_ALLOW_REMOTE_HELP = (
    "let --api-listen name an address beyond loopback (the API speaks plain HTTP: "
    "keep it behind a firewall or a TLS tunnel)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restic-manager",
        description="Control plane for restic backups on a fleet of hosts. Without a "
        "command, opens the desktop app (a second launch on the same data dir brings the "
        "running window to the front).",
    )
    parser.add_argument("--log-level", default="INFO")
    # The desktop app's options (no subcommand). Own dests: the subcommands'
    # options of the same name must not be overwritten by these defaults.
    parser.add_argument(
        "--data-dir", dest="gui_data_dir", type=Path, default=None, help="data directory"
    )
    parser.add_argument(
        "--agent-listen",
        dest="gui_agent_listen",
        type=_endpoint,
        default="0.0.0.0:8765",
        help="where agents connect (TLS), HOST:PORT",
    )
    parser.add_argument(
        "--api-listen",
        dest="gui_api_listen",
        type=_endpoint,
        default="127.0.0.1:8766",
        help="the operator API, HOST:PORT (loopback unless --allow-remote-api)",
    )
    parser.add_argument(
        "--allow-remote-api",
        dest="gui_allow_remote_api",
        action="store_true",
        help=_ALLOW_REMOTE_HELP,
    )
    parser.add_argument(
        "--advertise-host",
        dest="gui_advertise_host",
        default=None,
        help="host name or address agents use to reach this app",
    )
    parser.add_argument(
        "--minimized",
        action="store_true",
        help="start in the tray without showing the window",
    )
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the control plane headless (no GUI)")
    serve.add_argument("--data-dir", type=Path, default=None)
    serve.add_argument("--agent-listen", type=_endpoint, default="0.0.0.0:8765")
    serve.add_argument(
        "--api-listen",
        type=_endpoint,
        default="127.0.0.1:8766",
        help="the operator API, HOST:PORT (loopback unless --allow-remote-api)",
    )
    serve.add_argument("--allow-remote-api", action="store_true", help=_ALLOW_REMOTE_HELP)
    serve.add_argument(
        "--advertise-host", default=None, help="host name or address agents use to reach this app"
    )

    token = sub.add_parser("api-token", help="manage operator API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it")
    create.add_argument("--data-dir", type=Path, default=None)
    create.add_argument("--name", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything allocates large buffers: both `serve` and the GUI.
    malloc_tuning.tune_malloc()
    early_quit = EarlyQuit().install()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        early_quit.uninstall()
        raise
    logging_setup.configure(args.log_level)
    if args.command is not None:
        early_quit.uninstall()
        if early_quit.requested:
            print("interrupted", file=sys.stderr)
            return 1
    if args.command == "serve":
        from app.serve import run_serve
        from server_core.control_plane import ControlPlaneConfig, Endpoint

        agent_listen = args.agent_listen
        api_listen = args.api_listen
        if isinstance(agent_listen, str):
            agent_listen = Endpoint.parse(agent_listen)
        if isinstance(api_listen, str):
            api_listen = Endpoint.parse(api_listen)
        config = ControlPlaneConfig(
            data_dir=(args.data_dir or default_data_dir()).expanduser().resolve(),
            agent_listen=agent_listen,
            api_listen=api_listen,
            api_allow_remote=args.allow_remote_api,
            advertise_host=args.advertise_host,
        )
        return asyncio.run(run_serve(config))
    if args.command == "api-token":
        return _api_token_create(args.data_dir or default_data_dir(), args.name)
    return _gui(args, early_quit)


def _gui(args: argparse.Namespace, early_quit: EarlyQuit) -> int:
    from server_core.control_plane import ControlPlaneConfig, UnsafeApiListen, check_api_listen

    try:
        # Before Qt starts: the refusal belongs on the terminal that asked for it.
        check_api_listen(args.gui_api_listen, args.gui_allow_remote_api)
    except UnsafeApiListen as exc:
        early_quit.uninstall()
        print(f"restic-manager: {exc}", file=sys.stderr)
        return 2
    from app.gui import run_gui

    config = ControlPlaneConfig(
        data_dir=(args.gui_data_dir or default_data_dir()).expanduser().resolve(),
        agent_listen=args.gui_agent_listen,
        api_listen=args.gui_api_listen,
        api_allow_remote=args.gui_allow_remote_api,
        advertise_host=args.gui_advertise_host,
    )
    return run_gui(config, minimized=args.minimized, early_quit=early_quit)


def _api_token_create(data_dir: Path, name: str) -> int:
    from server_core.control_plane import DB_FILE
    from server_core.errors import ServiceError
    from server_core.services.api_tokens import create_api_token
    from server_core.services.context import OPERATOR
    from server_core.store import Store

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(data_dir / DB_FILE)
    store.open_sync()
    try:
        with store.db.atomic():
            raw = create_api_token(name, OPERATOR)
    except ServiceError as exc:
        print(f"restic-manager: {exc.message}", file=sys.stderr)
        return 2
    finally:
        store.close_sync()
    print(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
