"""Screenshots of the job window: a running backup and finished ones.

``render(path_dir)`` writes ``job-running.png`` (progress and a live log),
``job-finished.png`` (the final summary) and ``job-failed-dark.png`` (a failed
job on a dark palette, to check the error's contrast) into ``path_dir`` and
returns their paths. It drives the real ``JobWindow`` through its normal
load path, with stand-in job and host services returning fixed data, so no
control plane is needed. Call it from a script (it runs its own qasync loop)
or ``await render_async(path_dir)`` from an async test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from tests.helpers.palettes import dark_palette

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QApplication

from server_core.views import JobView, LogLineView
from ui_qt.context import UiContext
from ui_qt.job_window import JobWindow
from ui_qt.tasks import AsyncRunner

MiB = 1024**2
GiB = 1024**3
JOB_ID = "7c41e09a5be84d1f9a3f6c2d0e8b1a55"


def sample_log(start: float) -> list[LogLineView]:
    entries: list[tuple[str, str]] = [
        ("agent", "restic 0.18.0 · repository sftp:backup@nas-01:/srv/restic/web-02"),
        ("hook", "hook(pre): dumping postgres to /var/backups/pg/app.sql"),
        ("hook", "hook(pre): pg_dump finished in 4.2 s (1.9 GiB)"),
        ("stdout", "open repository"),
        ("stdout", "lock repository"),
        ("stdout", "using parent snapshot 1a9f03c2"),
        ("stdout", "load index files"),
        ("stdout", "start scan on [/srv/data /etc /var/backups/pg]"),
        ("stdout", "start backup on [/srv/data /etc /var/backups/pg]"),
    ]
    for i in range(36):
        path = f"/srv/data/projects/{('atlas', 'borealis', 'cygnus')[i % 3]}/assets/img-{i:04d}.png"
        entries.append(
            ("stdout", f"modified  {path}, saved in 0.{i % 9 + 1}31s (2.{i % 7} MiB added)")
        )
        if i == 17:
            entries.append(
                (
                    "stderr",
                    "error: open /srv/data/projects/cygnus/.cache/lock: permission denied",
                )
            )
    entries.append(
        ("stdout", "new       /var/backups/pg/app.sql, saved in 38.112s (412 MiB added)")
    )
    return [
        LogLineView(seq, start + seq * 1.7, stream, text)
        for seq, (stream, text) in enumerate(entries, start=1)
    ]


def finished_log(start: float) -> list[LogLineView]:
    lines = sample_log(start)
    tail = [
        ("stdout", "scan finished in 2.134s: 2830 files, 40.000 GiB"),
        ("stdout", "Files:        1204 new,    37 changed,  1589 unmodified"),
        ("stdout", "Dirs:           12 new,    48 changed,   310 unmodified"),
        ("stdout", "Added to the repository: 1.214 GiB (612.4 MiB stored)"),
        ("stdout", "processed 2830 files, 40.000 GiB in 6:41"),
        ("agent", "snapshot 3fa2c1d0 saved: 1204 new, 37 changed files, 1.2 GiB added"),
        ("hook", "hook(post): RM_JOB_STATUS=succeeded; removed /var/backups/pg/app.sql"),
        ("agent", "2214 snapshot(s) in the repository"),
    ]
    base = len(lines)
    lines += [
        LogLineView(base + i + 1, start + 400 + i, stream, text)
        for i, (stream, text) in enumerate(tail)
    ]
    return lines


def sample_jobs(now: float) -> dict[str, tuple[JobView, list[LogLineView]]]:
    started = now - 192
    running = JobView(
        id=JOB_ID,
        host_id=2,
        kind="backup",
        status="running",
        actor="operator",
        source_group_id=1,
        schedule_id=None,
        created_at=started - 2,
        started_at=started,
        finished_at=None,
        exit_code=None,
        error=None,
        warnings=False,
        summary=None,
        progress={
            "percent": 42.7,
            "files_done": 1204,
            "files_total": 2830,
            "bytes_done": int(17.1 * GiB),
            "bytes_total": 40 * GiB,
            "current_file": "/srv/data/projects/borealis/renders/final/sequence-04/frame-000731.exr",
            "eta_seconds": 258,
        },
        log_lines=0,
        log_lines_reported=None,
    )
    running_log = sample_log(started)
    running = dataclasses.replace(running, log_lines=len(running_log))
    done_log = finished_log(started)
    finished = dataclasses.replace(
        running,
        status="succeeded",
        finished_at=started + 401,
        exit_code=0,
        progress={**(running.progress or {}), "percent": 100.0},
        summary={
            "files_new": 1204,
            "files_changed": 37,
            "files_unmodified": 1589,
            "data_added": int(1.214 * GiB),
            "total_files_processed": 2830,
            "total_bytes_processed": 40 * GiB,
            "total_duration": 401.2,
            "snapshot_id": "3fa2c1d0" + "9e" * 28,
        },
        log_lines=len(done_log),
        log_lines_reported=len(done_log),
    )
    fail_log = [
        *sample_log(started)[:12],
        LogLineView(
            13,
            started + 30,
            "stderr",
            "Fatal: unable to open repository at sftp:backup@nas-01:/srv/restic/web-02: "
            "ssh: connect to host nas-01 port 22: Connection refused",
        ),
        LogLineView(14, started + 31, "agent", "job failed: restic exited with code 1"),
    ]
    failed = dataclasses.replace(
        running,
        status="failed",
        finished_at=started + 31,
        exit_code=1,
        error=(
            "Fatal: unable to open repository at sftp:backup@nas-01:/srv/restic/web-02: "
            "ssh: connect to host nas-01 port 22: Connection refused"
        ),
        progress=None,
        log_lines=len(fail_log),
        log_lines_reported=len(fail_log),
    )
    return {
        "running": (running, running_log),
        "finished": (finished, done_log),
        "failed": (failed, fail_log),
    }


class _Jobs:
    def __init__(self, job: JobView, lines: list[LogLineView]) -> None:
        self.job = job
        self.lines = lines

    async def get_job(self, job_id: str) -> JobView:
        return self.job

    async def log(
        self, job_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[LogLineView]:
        newer = [line for line in self.lines if line.seq > after_seq]
        return newer[:limit] if limit is not None else newer

    async def cancel(self, job_id: str, actor: Any) -> None:
        pass


@dataclasses.dataclass
class _Host:
    name: str


class _Hosts:
    async def get_host(self, host_id: int) -> _Host:
        return _Host("web-02")


class _Bridge(QObject):
    jobs_changed = Signal(object)
    job_logs_appended = Signal(object)


async def _shoot(job: JobView, lines: list[LogLineView], settings_dir: Path, out: Path) -> Path:
    settings = QSettings(str(settings_dir / f"{out.stem}.ini"), QSettings.Format.IniFormat)
    runner = AsyncRunner()
    ctx = UiContext(
        hosts=cast(Any, _Hosts()),
        jobs=cast(Any, _Jobs(job, lines)),
        enrolment=cast(Any, None),
        sources=cast(Any, None),
        schedules=cast(Any, None),
        maintenance=cast(Any, None),
        restore=cast(Any, None),
        alerts=cast(Any, None),
        notifications=cast(Any, None),
        audit=cast(Any, None),
        settings_service=cast(Any, None),
        server_info=cast(Any, None),
        bridge=cast(Any, _Bridge()),
        runner=runner,
        settings=settings,
    )
    window = JobWindow(ctx, job.id)
    window.resize(980, 700)
    window.show()
    deadline = time.monotonic() + 10
    while window.job is None or window.log_model.rowCount() < len(lines):
        if time.monotonic() > deadline:
            raise AssertionError("the job window did not load")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)  # let layouts settle and paint
    QApplication.processEvents()
    window.grab().save(str(out))
    window.close()
    await runner.drain()
    return out


async def render_async(path_dir: str | Path) -> list[Path]:
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)  # closing a shot must not stop the loop
    jobs = sample_jobs(time.time())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shots = [
                await _shoot(*jobs["running"], Path(tmp), out / "job-running.png"),
                await _shoot(*jobs["finished"], Path(tmp), out / "job-finished.png"),
            ]
            light = app.palette()
            app.setPalette(dark_palette())
            try:
                shots.append(await _shoot(*jobs["failed"], Path(tmp), out / "job-failed-dark.png"))
            finally:
                app.setPalette(light)
            return shots
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)


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
    for path in render(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
