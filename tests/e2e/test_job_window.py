"""The job window against a real in-process control plane, with a fake agent
speaking the real protocol over TLS to drive the job's life.

Waiting is bounded asyncio polling (never qtbot.waitUntil inside an async
test: see ENGINEERING.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol
from ui_qt.context import UiContext
from ui_qt.job_window import JobWindow

MiB = 2**20
SNAPSHOT = "3fa2c1d0" + "9e" * 28
SUMMARY = {
    "files_new": 12,
    "files_changed": 3,
    "files_unmodified": 385,
    "data_added": 5 * MiB,
    "total_files_processed": 400,
    "total_bytes_processed": 40 * MiB,
    "total_duration": 9.5,
    "snapshot_id": SNAPSHOT,
}


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Driver:
    """A fake agent and the job it runs; every event is sent and acked."""

    cp: ControlPlane
    agent: FakeAgent
    host_id: int
    job_id: str
    seq: int = 0
    lines: list[tuple[int, str, str]] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, message: p.Message) -> None:
        await self.agent.acked({await self.agent.send(message)})

    async def start(self, job_id: str | None = None, kind: str = "backup") -> None:
        await self.send(
            p.JobStarted(
                job_id=job_id or self.job_id,
                seq=self.next_seq(),
                kind=kind,  # type: ignore[arg-type]
                actor="operator",
                started_at=time.time() - 3,
            )
        )

    async def progress(self, **fields: Any) -> None:
        await self.send(
            p.JobProgress(job_id=self.job_id, seq=self.next_seq(), progress=p.Progress(**fields))
        )

    async def log(self, entries: list[tuple[str, str]], batch: int = 1000) -> None:
        for start in range(0, len(entries), batch):
            lines = []
            for stream, text in entries[start : start + batch]:
                seq = self.next_seq()
                lines.append(p.LogLine(seq=seq, ts=time.time(), stream=stream, text=text))  # type: ignore[arg-type]
                self.lines.append((seq, stream, text))
            await self.send(p.JobLog(job_id=self.job_id, seq=lines[0].seq, lines=lines))

    async def finish(self, job_id: str | None = None, **fields: Any) -> None:
        await self.send(
            p.JobFinished(
                job_id=job_id or self.job_id,
                seq=self.next_seq(),
                finished_at=time.time(),
                log_lines=len(self.lines),
                **fields,
            )
        )


@pytest.fixture
async def driver(control_plane: ControlPlane) -> AsyncIterator[Driver]:
    """web1 enrolled and connected, with a backup dispatched to it (queued)."""
    cp = control_plane
    async with aiohttp.ClientSession() as session:
        grant = await cp.enrolment.add_host(
            parse_new_host(
                {
                    "hostname": "web1",
                    "repository": {"url": "/srv/restic/web1", "password": "hunter2hunter2"},
                    "initial_paths": ["/srv/data"],
                }
            ),
            OPERATOR,
        )
        body = await enrol(session, cp.agent_url, cp.certificate.sha256, grant.token, "web1")
        agent = await FakeAgent.connect(
            session, cp.agent_url, cp.certificate.sha256, body["bearer"]
        )
        try:
            probe = await agent.expect(p.CommandRun)
            assert probe.kind == "init"
            (group,) = await cp.hosts.list_source_groups(body["host_id"])
            job_id = await cp.jobs.dispatch(
                body["host_id"], "backup", actor=OPERATOR, source_group_id=group.id
            )
            command = await agent.expect(p.CommandRun)
            assert command.job_id == job_id and command.kind == "backup"
            yield Driver(cp, agent, body["host_id"], job_id)
        finally:
            await agent.ws.close()
            await until(lambda: cp.hub.connected_count() == 0, "the agent to leave")


@pytest.fixture
async def windows(ui: UiContext) -> AsyncIterator[Callable[[str], JobWindow]]:
    opened: list[JobWindow] = []
    failures: list[tuple[str, str]] = []
    # As in the app (a tray app): closing the last window must not quit the
    # QApplication, which would stop the shared qasync loop under the test.
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    ui.runner.failed.connect(lambda what, msg: failures.append((what, msg)))

    def open_window(job_id: str) -> JobWindow:
        window = JobWindow(ui, job_id)
        window.resize(960, 680)
        window.show()
        opened.append(window)
        return window

    yield open_window
    for window in opened:
        if not window._closed:
            window.close()
    await asyncio.sleep(0.05)
    app.setQuitOnLastWindowClosed(quit_on_close)
    assert failures == []


def rows(window: JobWindow) -> list[tuple[int, str, str]]:
    model = window.log_model
    return [(seq, stream, text) for seq, _ts, stream, text in model.lines()]


async def test_a_live_job_from_queued_to_summary(driver: Driver, windows) -> None:
    window = windows(driver.job_id)
    await until(lambda: window.status_label.text() == "queued", "the queued job")
    assert window.windowTitle() == "backup — web1 — queued"
    assert window.heading.text() == "Backup on web1"
    assert window.actor_label.text() == "operator"
    assert window.cancel_button.isEnabled()
    assert not window.progress_panel.isVisible() and not window.summary_panel.isVisible()

    await driver.start()
    await until(lambda: window.status_label.text() == "running", "job.started")
    assert window.windowTitle() == "backup — web1 — running"
    assert window.duration_label.text().endswith(" s")
    assert window._clock.isActive()  # the duration ticks while it runs
    assert not window.progress_panel.isVisible()  # nothing reported yet

    await driver.progress(
        percent=30.0,
        files_done=120,
        files_total=400,
        bytes_done=int(12.3 * MiB),
        bytes_total=40 * MiB,
        current_file="/srv/data/reports/q3.pdf",
        eta_seconds=65,
    )
    await until(lambda: window.progress_bar.value() == 300, "the first progress")
    assert window.progress_panel.isVisible()
    assert window.progress_bar.text() == "30.0%"
    assert window.progress_text() == (
        "files 120/400 · 12.3 MiB/40.0 MiB · ETA 1 min 05 s · current: /srv/data/reports/q3.pdf"
    )

    first = [("stdout" if i % 5 else "stderr", f"scanned /srv/data/f{i:03d}") for i in range(60)]
    second = [("stdout", f"uploaded /srv/data/g{i:03d} ✓") for i in range(100)]
    await driver.log(first)
    await driver.log(second, batch=40)
    await until(lambda: window.log_model.rowCount() == 160, "160 log lines")
    assert rows(window) == driver.lines  # in order, none twice
    assert window.log_count_label.text() == "160 lines"

    await driver.progress(percent=75.5, files_done=300, files_total=400, bytes_done=30 * MiB)
    await until(lambda: window.progress_bar.value() == 755, "the second progress")
    assert window.progress_text() == "files 300/400 · 30.0 MiB"

    await driver.finish(status="succeeded", exit_code=0, summary=SUMMARY)
    await until(lambda: window.summary_panel.isVisible(), "the summary")
    fields = {key: label.text() for key, label in window.summary_fields.items()}
    assert fields["result"] == "succeeded"
    assert fields["files"] == "12 new · 3 changed · 385 unmodified"
    assert fields["processed"] == "400 files · 40.0 MiB"
    assert fields["data_added"] == "5.0 MiB"
    assert fields["snapshot"] == "3fa2c1d0"
    assert SNAPSHOT in window.summary_fields["snapshot"].toolTip()
    assert fields["log"] == "160 lines"
    assert fields["duration"].endswith(" s")
    assert not window.summary_fields["error"].isVisible()
    assert not window.progress_panel.isVisible()
    assert not window.cancel_button.isEnabled()
    assert not window._clock.isActive()
    assert window.windowTitle() == "backup — web1 — succeeded"


async def test_failures_in_red_and_warnings_in_amber(driver: Driver, windows) -> None:
    failed = uuid.uuid4().hex
    await driver.start(failed)
    await driver.finish(
        failed,
        status="failed",
        exit_code=1,
        error="Fatal: unable to open config file: permission denied",
    )
    window = windows(failed)
    await until(lambda: window.summary_panel.isVisible(), "the failed summary")
    error = window.summary_fields["error"]
    assert error.isVisible() and "permission denied" in error.text()
    assert "#c62828" in error.styleSheet() or "#ef5350" in error.styleSheet()
    assert window.summary_fields["exit_code"].text() == "1"
    assert not window.summary_fields["files"].isVisible()  # no summary from restic
    assert window.status_label.text() == "failed"

    warned = uuid.uuid4().hex
    await driver.start(warned)
    await driver.finish(warned, status="succeeded", exit_code=3, warnings=True, summary=SUMMARY)
    amber = windows(warned)
    await until(lambda: amber.summary_panel.isVisible(), "the warnings summary")
    result = amber.summary_fields["result"]
    assert result.text() == "succeeded with warnings"
    assert "#b26a00" in result.styleSheet() or "#ffb300" in result.styleSheet()
    assert amber.windowTitle() == "backup — web1 — succeeded with warnings"
    assert amber.summary_fields["exit_code"].text() == "3"


async def test_cancel_confirms_then_sends_command_cancel(
    driver: Driver, windows, qtbot, monkeypatch
) -> None:
    await driver.start()
    window = windows(driver.job_id)
    await until(lambda: window.status_label.text() == "running", "the running job")
    asked: list[str] = []
    answer = QMessageBox.StandardButton.No

    def question(parent, title, text, *args):  # type: ignore[no-untyped-def]
        asked.append(text)
        return answer

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    assert len(asked) == 1 and "backup on web1" in asked[0]
    with pytest.raises(AssertionError, match="no CommandCancel"):
        await driver.agent.expect(p.CommandCancel, timeout=0.5)
    assert window.cancel_button.isEnabled()

    answer = QMessageBox.StandardButton.Yes
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    cancel = await driver.agent.expect(p.CommandCancel)
    assert cancel.job_id == driver.job_id
    assert not window.cancel_button.isEnabled()
    assert window.cancel_button.text() == "Cancelling…"

    await driver.log([("agent", "job cancelled")])
    await driver.finish(status="cancelled", error="cancelled by the operator")
    await until(lambda: window.status_label.text() == "cancelled", "the cancelled job")
    assert window.summary_fields["result"].text() == "cancelled"
    assert window.summary_fields["error"].text() == "cancelled by the operator"
    assert not window.cancel_button.isEnabled()
    assert window.cancel_button.text() == "Cancel job…"


def expected_txt(lines) -> str:
    return "".join(
        f"{dt.datetime.fromtimestamp(x.ts, dt.UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
        f" [{x.stream}] {x.text}\n"
        for x in lines
    )


async def test_save_log_writes_every_stored_line(
    driver: Driver, windows, qtbot, monkeypatch, tmp_path: Path
) -> None:
    await driver.start()
    entries = [
        ("stderr" if i % 97 == 0 else "stdout", f'line {i} · ünïcødé "quoted" \\ {"x" * (i % 50)}')
        for i in range(12_345)
    ]
    await driver.log(entries)
    await driver.finish(status="succeeded", exit_code=0, summary=SUMMARY)
    stored = await driver.cp.jobs.log(driver.job_id)
    assert len(stored) == 12_345

    # Opened after the fact: the existing log is paged in (5000 per call).
    window = windows(driver.job_id)
    await until(lambda: window.log_model.rowCount() == 12_345, "the whole log")
    assert rows(window) == driver.lines
    # What is on screen does not matter to Save log: it reads the service.
    window.log_model.clear()

    saved: list[tuple[str, int]] = []
    window.save_finished.connect(lambda path, n: saved.append((path, n)))
    target = tmp_path / "out" / "web1.txt"
    target.parent.mkdir()
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "Text (*.txt)"))
    )
    qtbot.mouseClick(window.save_button, Qt.MouseButton.LeftButton)
    assert not window.save_button.isEnabled()
    await until(lambda: saved, "the .txt save")
    assert saved == [(str(target), 12_345)]
    assert target.read_text(encoding="utf-8") == expected_txt(stored)
    assert not target.with_name("web1.txt.part").exists()
    assert window.save_button.isEnabled()
    assert "Saved 12,345 lines" in window.notice_label.text()

    # No extension typed, NDJSON picked in the dialog's filter.
    bare = tmp_path / "out" / "web1-log"
    monkeypatch.setattr(
        QFileDialog,
        "getSaveFileName",
        staticmethod(lambda *a, **k: (str(bare), "NDJSON (*.ndjson)")),
    )
    qtbot.mouseClick(window.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: len(saved) == 2, "the .ndjson save")
    ndjson = tmp_path / "out" / "web1-log.ndjson"
    assert saved[1] == (str(ndjson), 12_345)
    records = [json.loads(x) for x in ndjson.read_text(encoding="utf-8").splitlines()]
    assert records == [
        {"seq": x.seq, "ts": x.ts, "stream": x.stream, "text": x.text} for x in stored
    ]
    assert window.ctx.settings.value("job_window/save_dir", "") == str(tmp_path / "out")


async def test_save_log_cancelled_in_the_dialog_writes_nothing(
    driver: Driver, windows, qtbot, monkeypatch, tmp_path: Path
) -> None:
    window = windows(driver.job_id)
    await until(lambda: window.job is not None, "the job")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: ("", "")))
    qtbot.mouseClick(window.save_button, Qt.MouseButton.LeftButton)
    assert window.save_button.isEnabled() and window._saving is None
    assert list(tmp_path.glob("*.txt")) == []


async def test_auto_scroll_stops_when_scrolled_up(driver: Driver, windows) -> None:
    await driver.start()
    window = windows(driver.job_id)
    bar = window.log_view.verticalScrollBar()
    await driver.log([("stdout", f"a{i}") for i in range(300)])
    await until(lambda: window.log_model.rowCount() == 300, "300 lines")
    await until(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), "following")
    assert window.follow_box.isChecked()

    bar.setValue(5)  # the operator scrolls up to read
    assert not window.follow_box.isChecked()
    await driver.log([("stdout", f"b{i}") for i in range(300)])
    await until(lambda: window.log_model.rowCount() == 600, "600 lines")
    await until(lambda: bar.maximum() > 500, "the range to grow")
    await asyncio.sleep(0.1)
    assert bar.value() == 5  # left where they were reading

    bar.setValue(bar.maximum())  # back at the bottom: following again
    assert window.follow_box.isChecked()
    await driver.log([("stdout", f"c{i}") for i in range(300)])
    await until(lambda: window.log_model.rowCount() == 900, "900 lines")
    await until(lambda: bar.maximum() > 800 and bar.value() == bar.maximum(), "the new end")

    bar.setValue(0)
    window.follow_box.setChecked(True)  # the checkbox jumps to the end too
    assert bar.value() == bar.maximum()


async def test_a_missing_job_says_so(ui: UiContext, windows) -> None:
    window = windows("0" * 32)
    await until(lambda: "does not exist" in window.notice_label.text(), "the error")
    assert window.heading.text() == "Job unavailable"
    assert not window.cancel_button.isEnabled()


async def test_a_closed_window_stops_listening(driver: Driver, windows, ui: UiContext) -> None:
    await driver.start()
    window = windows(driver.job_id)
    await until(lambda: window.status_label.text() == "running", "the running job")
    destroyed: list[bool] = []
    window.destroyed.connect(lambda *_: destroyed.append(True))
    window.close()
    await until(lambda: destroyed, "the window to be deleted")
    # Later changes of the job reach no dead widget (the fixture checks the runner).
    await driver.log([("stdout", "after close")])
    await driver.finish(status="succeeded", exit_code=0)
    await asyncio.sleep(0.3)
    assert ui.runner.pending() == 0


async def test_restore_and_diff_summaries(driver: Driver, windows) -> None:
    restore = uuid.uuid4().hex
    await driver.start(restore, kind="restore")
    await driver.finish(
        restore,
        status="succeeded",
        exit_code=0,
        summary={"files_restored": 1234, "bytes_restored": 5 * MiB, "target": "/root/restores/x"},
    )
    window = windows(restore)
    await until(lambda: window.summary_panel.isVisible(), "the restore summary")
    fields = {k: label.text() for k, label in window.summary_fields.items()}
    assert fields["restored"] == "1,234 files · 5.0 MiB"
    assert fields["target"] == "/root/restores/x"
    assert not window.summary_fields["changes"].isVisible()

    diff = uuid.uuid4().hex
    await driver.start(diff, kind="diff")
    await driver.finish(
        diff, status="succeeded", exit_code=0, summary={"added": 3, "removed": 1, "modified": 2}
    )
    window = windows(diff)
    await until(lambda: window.summary_panel.isVisible(), "the diff summary")
    assert window.summary_fields["changes"].text() == "3 added · 1 removed · 2 modified"
    assert not window.summary_fields["restored"].isVisible()
