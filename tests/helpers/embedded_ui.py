"""A real control plane on loopback ports with the views' context around it,
for screenshot scripts that run outside pytest's fixtures."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import keyring.backends.fail
from PySide6.QtCore import QSettings

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from ui_qt.bridge import EventBridge
from ui_qt.context import UiContext
from ui_qt.tasks import AsyncRunner


@dataclass(frozen=True)
class EmbeddedUi:
    cp: ControlPlane
    ui: UiContext
    workdir: Path  # a temporary directory removed on exit


@asynccontextmanager
async def embedded_ui(prefix: str = "rm-shots-") -> AsyncIterator[EmbeddedUi]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cp = ControlPlane(
            ControlPlaneConfig(
                data_dir=Path(tmp) / "data",
                agent_listen=Endpoint("127.0.0.1", 0),
                api_listen=Endpoint("127.0.0.1", 0),
                keyring_backend=keyring.backends.fail.Keyring(),
                # No bundled agent builds: a local dist/ must not change the pictures.
                agents_dir=Path(tmp) / "agents",
            )
        )
        await cp.start()
        bridge = EventBridge(cp.bus)
        runner = AsyncRunner()
        ui = UiContext.for_control_plane(
            cp,
            bridge=bridge,
            runner=runner,
            settings=QSettings(str(Path(tmp) / "ui.ini"), QSettings.Format.IniFormat),
        )
        try:
            yield EmbeddedUi(cp, ui, Path(tmp))
        finally:
            await runner.drain()
            bridge.close()
            await cp.stop()
