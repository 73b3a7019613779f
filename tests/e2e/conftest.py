"""GUI tests: real widgets, offscreen, on the qasync loop shared with server_core."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import keyring.backends.fail
import pytest
import qasync
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from ui_qt.bridge import EventBridge
from ui_qt.context import UiContext
from ui_qt.tasks import AsyncRunner


def _qapp() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    return app


def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    # Qt and asyncio must share one loop, as in the app.
    return {"qasync": lambda: qasync.QEventLoop(_qapp())}


@pytest.fixture
def qapp_settings(tmp_path: Path) -> Iterator[QSettings]:
    settings = QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat)
    yield settings


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
            # No bundled agent builds: what dist/ holds (or not) on this
            # machine must not change what a view shows.
            agents_dir=tmp_path / "agents",
        )
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest.fixture
async def ui(control_plane: ControlPlane, qapp_settings: QSettings) -> AsyncIterator[UiContext]:
    bridge = EventBridge(control_plane.bus)
    runner = AsyncRunner()
    ctx = UiContext.for_control_plane(
        control_plane,
        bridge=bridge,
        runner=runner,
        settings=qapp_settings,
    )
    try:
        yield ctx
    finally:
        await runner.drain()
        bridge.close()
