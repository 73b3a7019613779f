"""Screenshots of the restore browser (issue 5), with a real control plane and a
protocol-speaking fake agent answering tree.list / tree.find from a fake index.

``async def render(path_dir, ui)`` (``ui`` wired to a running control plane on
a qasync loop; ``scripts/screenshots.py`` provides one) writes:

- restore-indexing.png — the first browse of a snapshot: the index being built;
- restore-browser.png — an expanded tree with a selection and its totals;
- restore-search.png — "Search snapshot" matches, one ticked;
- restore-target.png — the target page, a new directory typed;
- restore-target-in-place.png — in place: the warning and the host name typed;
- restore-confirm.png — the summary before Restore;
- restore-job-running.png — the restore's job window with live progress;
- host-restore-header.png — the Snapshots tab with two rows picked for Diff and
  the header's "Last restore".
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QApplication, QWidget

from agent import protocol as p
from tests.e2e.screenshot_host_view import _agent, _run, _settle, _snapshot, _until
from tests.helpers.fake_agent import FakeIndex, IndexAnswerer
from ui_qt.context import UiContext
from ui_qt.host_view import HostView
from ui_qt.job_window import JobWindow
from ui_qt.restore.browser import RestoreBrowser

KiB = 1024
MiB = 1024**2
GiB = 1024**3
H = 3600.0
D = 86400.0


def _save(widget: QWidget, path: Path) -> Path:
    # No processEvents() here: from a coroutine it would re-enter the loop.
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    return path


async def _pause(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)  # the qasync loop runs Qt's events meanwhile


def server_tree(now: float) -> dict[str, tuple[int, float]]:
    """A believable file server: home directories, web roots, configuration."""
    rnd = random.Random(5)
    files: dict[str, tuple[int, float]] = {}

    def add(path: str, size: int, age_days: float) -> None:
        files[path] = (size, now - age_days * D - rnd.random() * H)

    for name in ("hosts", "fstab", "hostname", "resolv.conf", "crontab", "passwd", "group"):
        add(f"/etc/{name}", rnd.randint(80, 3000), rnd.uniform(30, 400))
    for name in ("nginx.conf", "mime.types", "sites-enabled/shop.conf", "sites-enabled/blog.conf"):
        add(f"/etc/nginx/{name}", rnd.randint(400, 9000), rnd.uniform(5, 200))
    for name in ("postgresql.conf", "pg_hba.conf"):
        add(f"/etc/postgresql/16/main/{name}", rnd.randint(2000, 30000), rnd.uniform(10, 90))
    docs = [
        "invoices/2024-03-invoice-1041.pdf",
        "invoices/2024-04-invoice-1057.pdf",
        "invoices/2024-05-invoice-1063.pdf",
        "contracts/hosting-agreement-2024.pdf",
        "contracts/nda-acme.pdf",
        "quarterly-report-Q1.xlsx",
        "quarterly-report-Q2.xlsx",
        "budget-2024.ods",
        "meeting-notes.md",
    ]
    for doc in docs:
        add(f"/home/alice/Documents/{doc}", rnd.randint(40 * KiB, 3 * MiB), rnd.uniform(1, 60))
    for n in range(1, 43):
        add(f"/home/alice/Pictures/2024/IMG_{4100 + n}.jpg", rnd.randint(2 * MiB, 6 * MiB), 40)
    for n in range(1, 9):
        add(f"/home/alice/projects/shop/src/module{n}.py", rnd.randint(2 * KiB, 40 * KiB), 3)
    add("/home/alice/projects/shop/README.md", 6 * KiB, 20)
    add("/home/alice/.bashrc", 3 * KiB, 300)
    add("/home/bob/notes.txt", 12 * KiB, 8)
    add("/home/bob/backup-plan.odt", 88 * KiB, 15)
    for n in range(1, 31):
        add(f"/srv/www/shop/static/img/product-{n:03d}.webp", rnd.randint(30, 400) * KiB, 12)
    add("/srv/www/shop/index.php", 9 * KiB, 12)
    add("/srv/www/blog/wp-config.php", 3 * KiB, 100)
    for n in range(1, 8):
        add(f"/var/backups/postgres/shop-2024-05-0{n}.sql.gz", rnd.randint(300, 420) * MiB, 8 - n)
    return files


async def _populate(
    ui: UiContext, session: aiohttp.ClientSession, now: float
) -> tuple[int, Any, list[p.SnapshotInfo]]:
    host_id, agent = await _agent(
        ui,
        session,
        "files-01",
        repository={"url": "sftp:backup@nas.lan:/srv/restic/files-01", "password": "pw-files-01"},
        initial_paths=["/etc", "/home", "/srv", "/var/backups"],
        tags=["prod", "files"],
    )
    await agent.expect(p.ConfigUpdate)
    probe = await agent.expect(p.CommandRun)
    await _run(
        agent,
        probe.job_id,
        "init",
        "system",
        now - 40 * D,
        2.0,
        status="succeeded",
        exit_code=0,
        repo_status="ready",
    )
    paths = ["/etc", "/home", "/srv", "/var/backups"]
    snaps = [
        _snapshot(n, now - hours * H, paths, "files-01")
        for n, hours in enumerate((150, 126, 102, 78, 54, 30, 6))
    ]
    snaps[-1] = p.SnapshotInfo(**{**p.to_dict(snaps[-1]), "tags": ["default", "before-upgrade"]})
    ids = {await agent.send(p.SnapshotsReport(collected_at=now - 60, snapshots=snaps))}
    await agent.acked(ids)
    host = await ui.hosts.get_host(host_id)
    await agent.send(p.ScheduleAck(version=host.schedule_version))
    return host_id, agent, snaps


class _Navigator:
    def __init__(self, ui: UiContext) -> None:
        self.ui = ui
        self.windows: list[JobWindow] = []

    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None:
        window = JobWindow(self.ui, job_id)
        window.resize(960, 640)
        window.show()
        self.windows.append(window)

    def add_host(self) -> None: ...


def _row(browser: RestoreBrowser, *names: str) -> QModelIndex:
    proxy = browser.browse.proxy
    parent = QModelIndex()
    index = QModelIndex()
    for name in names:
        for row in range(proxy.rowCount(parent)):
            if proxy.index(row, 0, parent).data().rstrip("/") == name:
                index = proxy.index(row, 0, parent)
                break
        else:
            raise LookupError(name)
        parent = index
    return index


async def _open(browser: RestoreBrowser, *names: str) -> None:
    model = browser.browse.model
    assert model is not None
    index = _row(browser, *names)
    browser.browse.tree.expand(index)
    node = model.node(browser.browse.proxy.mapToSource(index))
    await _until(lambda: node.children is not None and not node.loading, "/".join(names))


def _tick(
    browser: RestoreBrowser, *names: str, state: Qt.CheckState = Qt.CheckState.Checked
) -> None:
    browser.browse.proxy.setData(_row(browser, *names), state, Qt.ItemDataRole.CheckStateRole)


async def _restore_job(agent: Any, answers: IndexAnswerer, now: float) -> None:
    """The agent's side of the restore: started, a log, progress."""
    command = await answers.expect(p.CommandRun)
    args = p.from_dict(p.RestoreArgs, command.args)
    await agent.send(
        p.JobStarted(
            job_id=command.job_id, seq=1, kind="restore", actor="operator", started_at=now - 47
        )
    )
    lines = [
        (
            "agent",
            f"restic restore {args.snapshot_id[:8]} --target /root/restore-files-01 "
            + " ".join(f"--include {x}" for x in args.paths[:3]),
        ),
        (
            "stdout",
            f"restoring snapshot {args.snapshot_id[:8]} of [/etc /home /srv /var/backups] "
            "at 2024-05-07 to /root/restore-files-01",
        ),
    ]
    for n in range(1, 19):
        lines.append(("stdout", f"restored /home/alice/Pictures/2024/IMG_{4100 + n}.jpg"))
    ids = {
        await agent.send(
            p.JobLog(
                job_id=command.job_id,
                seq=2,
                lines=[
                    p.LogLine(seq=i, ts=now - 45 + i, stream=s, text=t)  # type: ignore[arg-type]
                    for i, (s, t) in enumerate(lines, start=1)
                ],
            )
        )
    }
    ids.add(
        await agent.send(
            p.JobProgress(
                job_id=command.job_id,
                seq=3,
                progress=p.Progress(
                    percent=41.8,
                    files_done=19,
                    files_total=54,
                    bytes_done=int(93.4 * MiB),
                    bytes_total=int(223.6 * MiB),
                    current_file="/home/alice/Pictures/2024/IMG_4119.jpg",
                    eta_seconds=64,
                ),
            )
        )
    )
    # No waiting for acks here: the answerer reads them; the window shows the result.
    del ids


async def render(path_dir: str | Path, ui: UiContext) -> list[Path]:
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    now = time.time()
    shots: list[Path] = []
    try:
        async with aiohttp.ClientSession() as session:
            host_id, agent, snaps = await _populate(ui, session, now)
            files = server_tree(now)
            indexes = {s.id: FakeIndex(files) for s in snaps}
            latest = snaps[-1]
            indexes[latest.id] = FakeIndex(files, building_polls=4, nodes_per_poll=61_337)
            answers = IndexAnswerer(agent, indexes).start()
            navigator = _Navigator(ui)
            view = HostView(ui, navigator, host_id)
            view.resize(1180, 720)
            view.show()
            await _settle(view)

            browser = view.snapshots_tab.open_restore(latest.id)
            assert isinstance(browser, RestoreBrowser)
            browser.resize(1060, 720)
            page = browser.browse
            await _until(lambda: "Indexing" in page.opening_label.text(), "the indexing note")
            await _until(lambda: "245,348" in page.opening_label.text(), "a later poll")
            shots.append(_save(browser, out / "restore-indexing.png"))
            await _until(lambda: page.stack.currentWidget() is page.tree, "the tree")

            await _open(browser, "home")
            await _open(browser, "home", "alice")
            await _open(browser, "home", "alice", "Documents")
            await _open(browser, "home", "alice", "Documents", "invoices")
            await _open(browser, "etc")
            _tick(browser, "home", "alice", "Documents")
            _tick(
                browser,
                "home",
                "alice",
                "Documents",
                "budget-2024.ods",
                state=Qt.CheckState.Unchecked,
            )
            _tick(browser, "home", "alice", "Pictures")
            _tick(browser, "etc", "nginx")
            page.tree.setCurrentIndex(_row(browser, "home", "alice", "Documents", "invoices"))
            await _pause()
            shots.append(_save(browser, out / "restore-browser.png"))

            page.filter.setText("shop")
            page.search()
            await _until(lambda: page.results.model.rowCount() > 0, "the matches")
            wanted = "/etc/nginx/sites-enabled/shop.conf"
            model = page.model
            assert model is not None
            item = page.results.item_for("/var/backups/postgres/shop-2024-05-07.sql.gz")
            assert item is not None
            item.setCheckState(Qt.CheckState.Checked)
            await _until(
                lambda: (
                    model.effective_state(str(item.data(Qt.ItemDataRole.UserRole)))
                    == Qt.CheckState.Checked
                ),
                "the ticked match",
            )
            page.results.view.setCurrentIndex(page.results.model.index(0, 0))
            assert model.effective_state(wanted) == Qt.CheckState.Checked  # /etc/nginx is ticked
            await _pause()
            shots.append(_save(browser, out / "restore-search.png"))
            page.show_tree()
            page.filter.clear()

            browser.next()
            await _until(lambda: browser.step == 1, "the target page")
            browser.target_page.target_dir.setText("~/restore-files-01")
            await _pause(0.1)
            shots.append(_save(browser, out / "restore-target.png"))
            browser.target_page.in_place.setChecked(True)
            browser.target_page.confirm.setText("files-0")
            await _pause(0.1)
            shots.append(_save(browser, out / "restore-target-in-place.png"))
            browser.target_page.new_dir.setChecked(True)

            browser.next()
            await _pause(0.1)
            shots.append(_save(browser, out / "restore-confirm.png"))

            browser.next()
            await _until(lambda: bool(navigator.windows), "the job window")
            await _restore_job(agent, answers, now)
            window = navigator.windows[0]
            await _until(lambda: window.progress_panel.isVisible(), "the progress")
            await _until(lambda: window.log_model.rowCount() >= 20, "the log")
            await _pause(0.4)
            shots.append(_save(window, out / "restore-job-running.png"))

            # A diff picked in the Snapshots tab, and the header's last restore.
            tab = view.snapshots_tab
            view.tabs.setCurrentWidget(tab)
            await _until(lambda: len(tab.model.rows) == len(snaps), "the rows")
            tab.select_snapshots([snaps[-1].id, snaps[-2].id])
            await _until(lambda: "running" in view.last_restore.text(), "the last restore")
            await _pause()
            shots.append(_save(view, out / "host-restore-header.png"))

            for window in navigator.windows:
                window.close()
            view.close()
            view.deleteLater()
            await answers.stop()
            await agent.ws.close()
            await _pause(0.3)
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)
    return shots
