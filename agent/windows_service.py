"""The agent as a Windows service, hosted by pywin32.

install.ps1 registers the service with the image path
``"…\\restic-manager-agent.exe" service --config "…\\config.toml"``; the Service
Control Manager starts that command, and ``run_service`` hands the process to
it. Stopping the service sets the agent's stop event, the same clean shutdown
SIGTERM gives on Linux. If the agent ends by itself (a self-update that exits
for a restart, a crash), the service reports a failure so that the recovery
actions install.ps1 sets (restart after 5 s) bring it back.

pywin32 is imported only inside these functions and only on Windows: Linux
builds and the Linux test suite never import it. The module itself imports
only the standard library and the agent, so importing it anywhere is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import Any

SERVICE_NAME = "restic-manager-agent"
DISPLAY_NAME = "restic-manager agent"
DESCRIPTION = "Runs restic backups on this machine for the restic-manager desktop app."
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FILE_BYTES = 5 * 2**20
LOG_FILE_COUNT = 3
# How long the SCM is told to wait for a stop: a running restic is cancelled
# and may need a moment to write its lock and index.
STOP_WAIT_HINT_MS = 60_000

EXIT_OK = 0


class ServiceUnavailable(Exception):
    """This process cannot host the Windows service; the message says why."""


def unavailable_reason() -> str | None:
    """None when pywin32's service modules can be used here."""
    if sys.platform != "win32":
        return "the Windows service exists only on Windows; on Linux use the systemd unit"
    try:
        import servicemanager  # noqa: F401
        import win32service  # noqa: F401
        import win32serviceutil  # noqa: F401
    except ImportError as exc:
        return (
            f"pywin32 is missing ({exc}): use the packaged restic-manager-agent.exe, "
            "or `pip install pywin32` for a source install"
        )
    return None


def service_log_path(state_dir: Path) -> Path:
    return state_dir / "logs" / "agent.log"


def _file_logging(state_dir: Path) -> logging.Handler:
    """A service has no console: the agent logs to a rotating file in its state dir."""
    path = service_log_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_COUNT, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


class AgentServiceRunner:
    """The service's life, without pywin32: runs the agent on its own event loop
    until ``stop()`` (called from the SCM's control thread) or until it ends."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._ready = threading.Event()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def stop(self) -> None:
        """Thread-safe: ask the agent to stop cleanly."""
        self._stop_requested.set()
        self._ready.wait(timeout=30)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    def run(self) -> int:
        """Blocks until the agent stops; the agent's exit code."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        from agent.client import run_agent

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        if self._stop_requested.is_set():
            return EXIT_OK
        return await run_agent(self.config_path, stop=self._stop, install_signal_handlers=False)


def run_service(config_path: Path) -> int:
    """Hand this process to the Service Control Manager (``… service --config PATH``).

    Returns only when the SCM is done with it. Raises ServiceUnavailable off
    Windows or without pywin32."""
    reason = unavailable_reason()
    if reason is not None:
        raise ServiceUnavailable(reason)
    import servicemanager

    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(_service_class(config_path))
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except Exception as exc:
        # 1063 (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT): started from a console.
        if getattr(exc, "winerror", None) == 1063:
            raise ServiceUnavailable(
                "`service` is what the Windows service runs; start it with "
                f"`Start-Service {SERVICE_NAME}`, or run the agent in this console with "
                "`restic-manager-agent.exe run --config PATH`"
            ) from None
        raise
    return EXIT_OK


def _service_class(config_path: Path) -> type[Any]:
    import servicemanager
    import win32service
    import win32serviceutil

    class AgentService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._runner = AgentServiceRunner(config_path)

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            self._runner.stop()

        def SvcShutdown(self) -> None:
            self.SvcStop()

        def SvcDoRun(self) -> None:
            root = logging.getLogger()
            handler = _service_handler(config_path)
            if handler is not None:
                root.addHandler(handler)
            root.setLevel(logging.INFO)
            servicemanager.LogInfoMsg(f"{SERVICE_NAME}: starting (config {config_path})")
            try:
                code = self._runner.run()
            except Exception as exc:
                logging.getLogger("agent").exception("the agent service failed")
                servicemanager.LogErrorMsg(f"{SERVICE_NAME}: the agent failed: {exc}")
                raise
            finally:
                if handler is not None:
                    root.removeHandler(handler)
                    handler.close()
            if not self._runner.stop_requested:
                # Ended by itself: a failure to the SCM, whose recovery actions restart it.
                message = f"{SERVICE_NAME}: the agent exited with code {code}; restarting"
                servicemanager.LogWarningMsg(message)
                raise RuntimeError(message)
            servicemanager.LogInfoMsg(f"{SERVICE_NAME}: stopped")

    return AgentService


def _service_handler(config_path: Path) -> logging.Handler | None:
    from agent.config import ConfigError, load_config

    try:
        state_dir = Path(load_config(config_path).state_dir)
        return _file_logging(state_dir)
    except (ConfigError, OSError):
        # The agent itself reports a bad config; logging stays with the event log.
        return None
