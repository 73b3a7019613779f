"""A real control plane on loopback ports with the views' context around it,
for screenshot scripts that run outside pytest's fixtures."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import keyring.backends.fail
import qasync
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from ui_qt.bridge import EventBridge
from ui_qt.context import UiContext
from ui_qt.tasks import AsyncRunner

T = TypeVar("T")


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


def run_with_embedded_ui(
    render: Callable[[EmbeddedUi], Awaitable[T]], prefix: str = "rm-shots-"
) -> T:
    """Run ``render`` to completion on a fresh qasync loop around a temporary
    control plane: a screenshot script's standalone entry point."""
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    async def main() -> T:
        async with embedded_ui(prefix) as env:
            return await render(env)

    try:
        result: T = loop.run_until_complete(main())
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()
