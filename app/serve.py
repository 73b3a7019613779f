"""`restic-manager serve`: the control plane without any GUI (no Qt import)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from server_core.control_plane import (
    ControlPlane,
    ControlPlaneConfig,
    UnsafeApiListen,
    check_api_listen,
)

log = logging.getLogger(__name__)


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
    try:
        check_api_listen(config.api_listen, config.api_allow_remote)
    except UnsafeApiListen as exc:
        log.error("%s", exc)
        return 2
    # The control plane logs the warning of an API beyond loopback when it starts.
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
