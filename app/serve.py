"""`restic-manager serve`: the control plane without any GUI (no Qt import)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys

from server_core.control_plane import ControlPlane, ControlPlaneConfig

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _banner(cp: ControlPlane) -> str:
    return "\n".join(
        [
            "",
            "restic-manager control plane is running.",
            f"  agents connect to  {cp.agent_url}",
            f"  certificate pin    {cp.certificate.sha256}",
            f"  operator API       {cp.api_url}/api/v1",
            f"  data dir           {cp.config.data_dir}",
            "",
            "To enrol a host:",
            f"  1. restic-manager api-token create --data-dir {cp.config.data_dir} --name me",
            "  2. curl -H 'Authorization: Bearer <token>' -X POST \\",
            f"       {cp.api_url}/api/v1/enrolment-tokens \\",
            '       -d \'{"hostname": "web1", "repository": {"url": "/srv/restic", '
            '"password": "..."}, "initial_paths": ["/etc"]}\'',
            "  3. run the install_command it returns on the host.",
            "",
        ]
    )


async def run_serve(config: ControlPlaneConfig) -> int:
    if not _is_loopback(config.api_listen.host):
        log.warning(
            "the operator API listens on %s, not on loopback: anyone who can reach it and "
            "holds an API token controls the fleet; keep it behind a firewall",
            config.api_listen,
        )
    cp = ControlPlane(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cp.start()
    except OSError as exc:
        log.error("could not start the listeners: %s", exc)
        await cp.stop()
        return 1
    print(_banner(cp), file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down")
    await cp.stop()
    return 0
