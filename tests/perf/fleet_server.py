"""The control plane as the fleet benchmarks run it: its own process, the
headless ``ControlPlane`` that ``restic-manager serve`` runs, plus a loop-lag
probe on its loop.

    python tests/perf/fleet_server.py --data-dir DIR

Prints one JSON line when both listeners are up (agent URL, certificate pin,
API URL), then answers commands read from stdin, one JSON line each:
``status`` (connected agents, events applied), ``lags`` (every lag sample so
far as [time.monotonic(), ms]: the clock is system-wide, so the benchmark can
cut them into phases it timed itself), ``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from asyncio import sslproto
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keyring.backends.fail

from app import logging_setup
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from tests.perf.benchlib import LagProbe, raise_open_files_limit


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> int:
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=args.data_dir,
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            advertise_host="127.0.0.1",
            keyring_backend=keyring.backends.fail.Keyring(),  # type: ignore[no-untyped-call]
        )
    )
    probe = LagProbe(args.lag_interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cp.start()
    probe.start()
    emit(
        {
            "ready": True,
            "agent_url": cp.agent_url,
            "pin": cp.certificate.sha256,
            "api_url": cp.api_url,
        }
    )

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "stop":
                stop.set()
                return
            if line == "status":
                emit(
                    {
                        "connected": cp.hub.connected_count(),
                        "events_applied": cp.ingestor.applied,
                    }
                )
            elif line == "lags":
                emit({"lags": [[round(t, 4), round(ms, 3)] for t, ms in probe.samples]})
            else:
                emit({"error": f"unknown command {line!r}"})

    task = asyncio.ensure_future(commands())
    await stop.wait()
    task.cancel()
    await probe.stop()
    await cp.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--lag-interval", type=float, default=0.01)
    parser.add_argument("--log-level", default="INFO", help="as `restic-manager serve` logs")
    parser.add_argument(
        "--ssl-read-kib",
        type=int,
        default=0,
        help="experiment: asyncio's per-connection TLS read buffer in KiB (stdlib: 256)",
    )
    parser.add_argument(
        "--patch",
        action="append",
        default=[],
        help="experiment: apply tests/perf/patches/NAME.py first (repeatable)",
    )
    args = parser.parse_args()
    for name in args.patch:
        importlib.import_module(f"tests.perf.patches.{name}")
    if args.ssl_read_kib:
        sslproto.SSLProtocol.max_size = args.ssl_read_kib * 1024
    raise_open_files_limit()
    logging_setup.configure(args.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
