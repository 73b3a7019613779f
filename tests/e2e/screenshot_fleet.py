"""Screenshots of the fleet view: a realistic fleet, and the empty state.

``render(path_dir)`` writes ``fleet.png`` and ``fleet-empty.png`` into
``path_dir`` and returns their paths. It drives the real ``FleetView``
through its normal refresh path, with a stand-in host service that returns
a fixed fleet (online, offline, never connected, failing, init failed), so
no control plane is needed. Call it from a script (it runs its own qasync
loop) or ``await render_async(path_dir)`` from an async test.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from tests.helpers.palettes import dark_palette

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QApplication

from server_core.views import HostView, ServerInfo
from ui_qt.context import UiContext
from ui_qt.fleet_view import FleetView
from ui_qt.tasks import AsyncRunner

GiB = 1024**3


def size_history(end: float, growth: float, gaps: tuple[int, ...] = ()) -> list[int | None]:
    """30 daily repository sizes ending at ``end`` bytes (None on the ``gaps`` days)."""
    out: list[int | None] = []
    for day in range(30):
        wobble = 0.004 * ((day * 7919) % 5 - 2)
        value = end * (1 - growth * (29 - day) / 29 + wobble)
        out.append(None if day in gaps else int(value))
    return out


def sample_fleet(now: float | None = None) -> list[HostView]:
    now = time.time() if now is None else now
    h, d = 3600.0, 86400.0

    def host(id_: int, name: str, **kw: Any) -> HostView:
        base: dict[str, Any] = {
            "status": "online",
            "enrolled": True,
            "os": "linux",
            "arch": "amd64",
            "agent_version": "0.1.0",
            "restic_version": "0.18.0",
            "last_seen_at": now - 20,
            "last_backup_at": None,
            "last_backup_status": None,
            "repo_status": "ready",
            "repo_status_error": None,
            "snapshot_count": 0,
            "repo_size_bytes": None,
            "open_alerts": 0,
            "tags": [],
            "presence_mode": "always_on",
            "created_at": now - 90 * d,
        }
        base.update(kw)
        return HostView(id=id_, name=name, **base)

    return [
        host(
            1,
            "backup-nas-01",
            last_backup_at=now - 2 * h,
            last_backup_status="succeeded",
            snapshot_count=412,
            repo_size_bytes=int(1.24 * 1024 * GiB),
            tags=["prod", "storage"],
            next_run_at=now + 4 * h + 12 * 60,
            size_history=size_history(1.24 * 1024 * GiB, 0.08),
        ),
        host(
            2,
            "web-02",
            arch="arm64",
            restic_version="0.14.0",
            last_backup_at=now - 40 * 60,
            last_backup_status="succeeded_with_warnings",
            snapshot_count=96,
            repo_size_bytes=int(38.4 * GiB),
            tags=["prod", "web"],
            next_run_at=now + 20 * 60,
            size_history=size_history(38.4 * GiB, 0.15, gaps=(3, 4)),
        ),
        host(
            3,
            "web-10",
            last_backup_at=now - 5 * h,
            last_backup_status="failed",
            snapshot_count=87,
            repo_size_bytes=int(12.9 * GiB),
            open_alerts=2,
            tags=["prod", "web"],
            repo_status="locked",
            next_run_at=now + 55 * 60,
            size_history=size_history(12.9 * GiB, 0.02),
        ),
        host(
            4,
            "db-primary",
            status="offline",
            last_seen_at=now - 3 * d,
            last_backup_at=now - 3 * d - h,
            last_backup_status="succeeded",
            snapshot_count=230,
            repo_size_bytes=220 * GiB,
            open_alerts=1,
            tags=["prod", "db"],
            next_run_at=now - 2 * h,  # missed while offline: runs once when it is back
            size_history=size_history(220 * GiB, 0.05, gaps=(27, 28, 29)),
        ),
        host(
            5,
            "laptop-anna",
            status="offline",
            os="windows",
            agent_version="0.1.0",
            restic_version="0.17.3",
            last_seen_at=now - 6 * h,
            last_backup_at=now - 26 * h,
            last_backup_status="succeeded",
            snapshot_count=58,
            repo_size_bytes=84 * GiB,
            presence_mode="laptop",
            next_run_at=now + 22 * h,
            size_history=size_history(84 * GiB, 0.3, gaps=(5, 6, 12, 13, 19, 20)),
            tags=["laptop"],
        ),
        host(
            6,
            "build-runner",
            repo_status="init_failed",
            repo_status_error=(
                "Fatal: create repository at s3:s3.amazonaws.com/acme-backups/ci failed: "
                "client.BucketExists: Access Denied."
            ),
            open_alerts=1,
            tags=["ci"],
        ),
        host(
            7,
            "mail-01",
            repo_status="unknown",
            last_seen_at=now - 5,
            tags=["prod"],
        ),
        host(
            8,
            "new-fileserver",
            status="offline",
            enrolled=False,
            os=None,
            arch=None,
            agent_version=None,
            restic_version=None,
            last_seen_at=None,
            repo_status="unknown",
            created_at=now - 10 * 60,
            tags=["storage"],
        ),
    ]


class _Hosts:
    def __init__(self, views: list[HostView]) -> None:
        self.views = views

    async def list_hosts(self) -> list[HostView]:
        return list(self.views)


class _Bridge(QObject):
    hosts_changed = Signal(object)
    hosts_removed = Signal(object)


class _Navigator:
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...


def _info() -> ServerInfo:
    return ServerInfo(
        version="0.1.0",
        agent_url="https://192.168.1.20:8765",
        cert_sha256="5f1c9a27e04b3d8862aa0f7d1c3e9b4426d0f11be8c2a93575f4e0d61b2c7a90",
        data_dir="/home/operator/.local/share/restic-manager",
        key_source="keyring",
    )


async def _shoot(views: list[HostView], settings_dir: Path, out: Path) -> Path:
    settings = QSettings(str(settings_dir / f"{out.stem}.ini"), QSettings.Format.IniFormat)
    runner = AsyncRunner()
    ctx = UiContext(
        hosts=cast(Any, _Hosts(views)),
        jobs=cast(Any, None),
        enrolment=cast(Any, None),
        sources=cast(Any, None),
        schedules=cast(Any, None),
        maintenance=cast(Any, None),
        restore=cast(Any, None),
        alerts=cast(Any, None),
        notifications=cast(Any, None),
        audit=cast(Any, None),
        settings_service=cast(Any, None),
        server_info=_info,
        bridge=cast(Any, _Bridge()),
        runner=runner,
        settings=settings,
    )
    view = FleetView(ctx, _Navigator())
    loaded = asyncio.Event()
    view.refreshed.connect(loaded.set)
    view.resize(1320, 620)
    view.show()
    await asyncio.wait_for(loaded.wait(), 10)
    await asyncio.sleep(0.1)  # let layouts settle and paint
    QApplication.processEvents()
    view.grab().save(str(out))
    view.close()
    view.deleteLater()
    await runner.drain()
    return out


async def render_async(path_dir: str | Path) -> list[Path]:
    """fleet.png, fleet-empty.png, and fleet-dark.png (the same fleet on a dark palette)."""
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    with tempfile.TemporaryDirectory() as tmp:
        shots = [
            await _shoot(sample_fleet(), Path(tmp), out / "fleet.png"),
            await _shoot([], Path(tmp), out / "fleet-empty.png"),
        ]
        light = app.palette()
        app.setPalette(dark_palette())
        try:
            shots.append(await _shoot(sample_fleet(), Path(tmp), out / "fleet-dark.png"))
        finally:
            app.setPalette(light)
        return shots


def render(path_dir: str | Path) -> list[Path]:
    app = QApplication.instance() or QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(render_async(path_dir))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


if __name__ == "__main__":
    import sys

    for path in render(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
