"""The application shell: single instance, tray, quitting, start at login.

In-process tests drive the real SingleInstance and Tray against the real
embedded control plane (offscreen: no system tray, so the tray records its
state and notification requests). The launch tests run the installed
`restic-manager` entry point as a separate process, as an operator would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PySide6.QtCore import QDir, QEvent, QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDialog, QWidget

from agent import protocol as p
from app import autostart
from app.single_instance import SingleInstance, server_name
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fake_agent import FakeAgent, enrol
from ui_qt.context import UiContext
from ui_qt.fleet_health import CRITICAL, OK, WARNING
from ui_qt.fleet_view import FleetView
from ui_qt.tray import Tray

BIN = Path(sys.executable).parent
VIEW_MODULES = ("ui_qt.fleet_view", "ui_qt.host_view", "ui_qt.add_host", "ui_qt.job_window")


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll on the running (qasync) loop; never qtbot.waitUntil in async tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# -- single instance ---------------------------------------------------------


@pytest.fixture
def instances() -> Iterator[list[SingleInstance]]:
    made: list[SingleInstance] = []
    yield made
    for inst in made:
        inst.close()


def _instance(made: list[SingleInstance], data_dir: Path) -> SingleInstance:
    inst = SingleInstance(data_dir)
    made.append(inst)
    return inst


async def test_second_launch_raises_the_first(tmp_path: Path, instances):
    data = tmp_path / "data"
    first = _instance(instances, data)
    assert first.claim() is True
    assert first.listening
    raised = asyncio.get_running_loop().create_future()
    first.raise_requested.connect(lambda: raised.done() or raised.set_result(True))

    second = _instance(instances, data)
    assert second.try_activate_existing() is True
    assert await asyncio.wait_for(raised, 5) is True
    assert first.requests == ["raise"]
    # A second launch through claim() defers too, and does not listen.
    third = _instance(instances, data)
    assert third.claim() is False
    assert not third.listening
    await until(lambda: len(first.requests) == 2, what="the second raise request")


async def test_same_dir_spelled_differently_is_the_same_instance(tmp_path: Path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert server_name(Path("data")) == server_name(tmp_path / "data")
    assert server_name(tmp_path / "x" / ".." / "data") == server_name(tmp_path / "data")
    assert server_name(tmp_path / "other") != server_name(tmp_path / "data")
    # Short enough for sun_path wherever Qt puts it.
    name = server_name(tmp_path / ("d" * 300))
    full = name if os.path.isabs(name) else os.path.join(QDir.tempPath(), name)
    assert len(full) < 104


async def test_a_different_data_dir_is_independent(tmp_path: Path, instances):
    first = _instance(instances, tmp_path / "a")
    assert first.claim()
    other = _instance(instances, tmp_path / "b")
    assert other.try_activate_existing() is False
    assert other.claim() is True
    await asyncio.sleep(0.1)
    assert first.requests == []


async def test_a_stale_socket_from_a_crashed_instance_is_replaced(tmp_path: Path, instances):
    if sys.platform == "win32":
        pytest.skip("named pipes leave nothing behind")
    data = tmp_path / "data"
    name = server_name(data)
    path = name if os.path.isabs(name) else os.path.join(QDir.tempPath(), name)
    # What a killed instance leaves: a socket file nobody listens on.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
    assert os.path.exists(path)
    try:
        fresh = _instance(instances, data)
        assert fresh.try_activate_existing() is False
        assert fresh.claim() is True
        raised = asyncio.get_running_loop().create_future()
        fresh.raise_requested.connect(lambda: raised.done() or raised.set_result(True))
        assert _instance(instances, data).try_activate_existing() is True
        assert await asyncio.wait_for(raised, 5)
    finally:
        for inst in instances:
            inst.close()
        if os.path.exists(path):
            os.unlink(path)


# -- tray ----------------------------------------------------------------------


class StandInWindow:
    """What the tray needs from the main window, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def bring_to_front(self) -> None:
        self.calls.append(("bring_to_front", None))

    def open_host(self, host_id: int) -> None:
        self.calls.append(("open_host", host_id))

    def quit_app(self) -> None:
        self.calls.append(("quit_app", None))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class StandInNavigator:
    def show_fleet(self) -> None: ...

    def open_host(self, host_id: int) -> None: ...

    def open_job(self, job_id: str) -> None: ...

    def add_host(self) -> None: ...


class NoFleetReads:
    """Hosts for a tray that must not read the fleet itself."""

    async def list_hosts(self, host_ids: list[int] | None = None) -> list[Any]:
        raise AssertionError("the tray read the fleet although the fleet view has it")


@pytest.fixture(params=["own reads", "fleet view rows"])
async def tray(
    ui: UiContext, qtbot: Any, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Tray, StandInWindow]]:
    """The tray on its own (tools, tests) and as the app wires it: following
    the fleet view's model, with no fleet reads of its own."""
    window = StandInWindow()
    if request.param == "fleet view rows":
        view = FleetView(ui, StandInNavigator())  # type: ignore[arg-type]
        qtbot.addWidget(view)
        no_reads = dataclasses.replace(ui, hosts=NoFleetReads())  # type: ignore[arg-type]
        t = Tray(no_reads, window, fleet=view.model)  # type: ignore[arg-type]
    else:
        t = Tray(ui, window)  # type: ignore[arg-type]
    t.start()
    try:
        yield t, window
    finally:
        t.stop()
        await ui.runner.drain()
        t.menu.deleteLater()
        t.deleteLater()


async def add_host(cp: ControlPlane, name: str) -> str:
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
            "initial_paths": ["/etc"],
        }
    )
    return (await cp.enrolment.add_host(new, OPERATOR)).token


async def online_agent(
    cp: ControlPlane, session: aiohttp.ClientSession, name: str
) -> tuple[int, FakeAgent]:
    token = await add_host(cp, name)
    body = await enrol(session, cp.agent_url, cp.certificate.sha256, token, name)
    agent = await FakeAgent.connect(session, cp.agent_url, cp.certificate.sha256, body["bearer"])
    return int(body["host_id"]), agent


def menu_texts(t: Tray) -> list[str]:
    return [a.text() for a in t.attention_menu.actions()]


async def test_tray_follows_the_fleet_and_a_disconnect_alone_is_not_notified(
    control_plane, tray, session
):
    t, window = tray
    await until(lambda: t.refreshes >= 1, what="the first refresh")
    assert t.available is False  # offscreen: no system tray
    assert t.health.level == OK
    assert t.status_action.text() == "No hosts yet"
    assert not t.attention_menu.isEnabled()

    host_id, agent = await online_agent(control_plane, session, "web1")
    await add_host(control_plane, "db1")  # awaiting its agent: not a problem
    await until(lambda: t.health.online == 1 and t.health.total == 2, what="web1 online")
    assert t.health.level == OK
    assert t.icon.toolTip() == "restic-manager — all good\n1/2 online · 1 awaiting agent"
    assert t.notifications == []

    await agent.ws.close()
    await until(lambda: t.health.level == WARNING, what="web1 offline")
    # An agent restart makes no noise: an offline host is notified through its
    # agent_offline alert, after the heartbeat timeout (tests/e2e/test_tray_alerts.py).
    assert t.status_action.text() == "0/2 online · 1 needs attention · 1 awaiting agent"
    assert t.attention_menu.isEnabled()
    assert menu_texts(t) == ["web1 — offline"]

    # The host needing attention opens from the tray menu.
    t.attention_menu.actions()[0].trigger()
    assert ("open_host", host_id) in window.calls
    assert window.calls[-1] == ("bring_to_front", None)
    # Open and Quit go to the window.
    t.open_action.trigger()
    t.quit_action.trigger()
    assert window.calls[-2:] == [("bring_to_front", None), ("quit_app", None)]
    await asyncio.sleep(0.8)
    assert t.notifications == []


async def test_tray_notifies_a_failed_job_once_and_turns_critical(control_plane, tray, session):
    t, _window = tray
    host_id, agent = await online_agent(control_plane, session, "web1")
    await until(lambda: t.health.online == 1, what="web1 online")
    ok_job, bad_job = "a" * 32, "b" * 32
    ids = {
        await agent.send(
            p.JobStarted(job_id=ok_job, seq=1, kind="backup", actor="schedule", started_at=1.0)
        ),
        await agent.send(
            p.JobFinished(job_id=ok_job, seq=2, status="succeeded", finished_at=time.time() - 60)
        ),
    }
    await agent.acked(ids)
    await asyncio.sleep(1.2)  # past the bridge's and the tray's throttling
    assert t.notifications == []

    ids = {
        await agent.send(
            p.JobStarted(job_id=bad_job, seq=1, kind="backup", actor="schedule", started_at=2.0)
        ),
        await agent.send(
            p.JobFinished(
                job_id=bad_job,
                seq=2,
                status="failed",
                finished_at=time.time(),
                exit_code=1,
                error="Fatal: unable to open config file: stat /srv/r/config: no such file",
            )
        ),
    }
    await agent.acked(ids)
    await until(lambda: t.notifications, what="the failure notification")
    note = t.notifications[0]
    # The backup_failed alert's notification (not also one for the failed job).
    assert note.title == "Critical: Backup failed"
    assert note.message.startswith("Ad-hoc backup on web1 failed: Fatal: unable to open config")
    assert (note.level, note.host_id) == (CRITICAL, host_id)
    assert note.alert_id is not None
    await until(lambda: t.health.level == CRITICAL, what="the critical icon")
    assert t.health.failing == 1
    assert "1 failing" in t.icon.toolTip()
    await until(
        lambda: menu_texts(t) == ["web1 — last backup failed; 1 open alert"], what="the menu"
    )

    # The same job changing again (or a replay) is not a new failure.
    t.ctx.bridge.jobs_changed.emit({bad_job})
    await asyncio.sleep(1.0)
    assert len(t.notifications) == 1


async def test_a_burst_of_failures_is_one_notification(control_plane, tray, session):
    t, _window = tray
    _host_id, agent = await online_agent(control_plane, session, "web1")
    await until(lambda: t.health.online == 1, what="web1 online")
    ids = set()
    for n in range(5):
        job = f"{n:032x}"
        ids.add(
            await agent.send(
                p.JobStarted(job_id=job, seq=1, kind="check", actor="schedule", started_at=1.0)
            )
        )
        ids.add(
            await agent.send(
                p.JobFinished(job_id=job, seq=2, status="failed", finished_at=2.0, error="x")
            )
        )
    await agent.acked(ids)
    await until(lambda: t.notifications, what="the notification")
    await asyncio.sleep(1.0)
    # One check_failed alert, raised once and re-fired four times: one notification.
    titles = [n.title for n in t.notifications]
    assert titles == ["Critical: Check failed"], titles
    assert t.notifications[0].message.startswith("Repository check on web1 failed")


# -- the main window's shell hooks ---------------------------------------------


def _stand_in_view_module(name: str) -> types.ModuleType:
    """While another module is still being written: a minimal widget with its name."""

    class _View(QWidget):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.host_id = args[2] if len(args) > 2 else None

    class _Dialog(QDialog):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

    module = types.ModuleType(name)
    module.FleetView = _View  # type: ignore[attr-defined]
    module.HostView = _View  # type: ignore[attr-defined]
    module.JobWindow = _View  # type: ignore[attr-defined]
    module.AddHostDialog = _Dialog  # type: ignore[attr-defined]
    return module


@pytest.fixture
def main_window_cls(monkeypatch) -> type:
    missing = [m for m in VIEW_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        monkeypatch.delitem(sys.modules, "ui_qt.main_window", raising=False)
        for name in missing:
            monkeypatch.setitem(sys.modules, name, _stand_in_view_module(name))
    from ui_qt.main_window import MainWindow

    return MainWindow


class QuitCatcher(QObject):
    """Eats the application's Quit event (as the shell does) and counts it."""

    def __init__(self) -> None:
        super().__init__()
        self.quits = 0

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Quit and watched is QApplication.instance():
            self.quits += 1
            return True
        return False


@pytest.fixture
def quit_catcher() -> Iterator[QuitCatcher]:
    catcher = QuitCatcher()
    app = QApplication.instance()
    assert app is not None
    app.installEventFilter(catcher)
    yield catcher
    app.removeEventFilter(catcher)


async def test_window_hides_to_tray_or_quits_without_one(ui, main_window_cls, quit_catcher):
    window = main_window_cls(ui)
    try:
        hidden = []
        window.hidden_to_tray.connect(lambda: hidden.append(True))
        window.show()
        window.close()
        await asyncio.sleep(0.05)
        assert not window.isVisible() and hidden == [True]
        assert quit_catcher.quits == 0

        window.showMinimized()
        window.bring_to_front()
        assert window.isVisible()
        assert not window.isMinimized()

        window.close_to_tray = False  # what the shell sets when there is no tray
        window.close()
        await until(lambda: quit_catcher.quits == 1, what="the quit request")
    finally:
        window.close_to_tray = True
        window.deleteLater()


async def test_shortcuts_and_the_file_menu_hook(ui, main_window_cls, quit_catcher):
    window = main_window_cls(ui)
    try:
        shortcuts = {
            a.shortcut().toString(): a.text()
            for a in window.actions()
            if not a.shortcut().isEmpty()
        }
        assert {"Ctrl+Q", "Ctrl+N", "F5"} <= set(shortcuts)

        extra = QAction("Start at &login", window)
        extra.setCheckable(True)
        window.add_file_action(extra)
        texts = [a.text() for a in window.file_menu.actions()]
        assert texts.index("Start at &login") < texts.index("&Quit")

        window.show()
        window.activateWindow()
        await asyncio.sleep(0.1)
        refreshed = []
        window.refresh = lambda: refreshed.append(True)  # type: ignore[method-assign]
        QTest.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
        await until(lambda: quit_catcher.quits == 1, what="Ctrl+Q to ask the app to quit")
    finally:
        window.deleteLater()


# -- errors the operator must see -------------------------------------------------


async def test_errors_open_one_dialog_and_pile_up_in_it(ui):
    from ui_qt.error_dialog import ErrorReporter

    errors = ErrorReporter()
    ui.runner.failed.connect(errors.action_failed)

    async def boom() -> None:
        raise RuntimeError("the agent is not connected")

    ui.runner.run(boom(), what="starting a backup")
    await until(lambda: errors.history, what="the failure report")
    box = errors.dialog
    assert box is not None and box.isVisible()
    assert box.text() == "Could not finish: starting a backup"
    assert box.informativeText() == "the agent is not connected"

    errors.report("Could not save", "disk full")
    assert errors.dialog is box  # no second dialog
    assert box.text() == "2 errors"
    assert "disk full" in box.detailedText()

    box.close()
    await until(lambda: errors.dialog is None, what="the dialog to close")
    errors.report("Later", "a new one")
    assert errors.dialog is not None and errors.dialog is not box
    assert errors.dialog.text() == "Later"
    errors.dialog.close()
    assert [e.title for e in errors.history][-1] == "Later"


async def test_unhandled_exceptions_are_logged_and_shown(tmp_path: Path, caplog):
    from app.gui import Shell
    from server_core.control_plane import ControlPlaneConfig

    app = QApplication.instance()
    assert isinstance(app, QApplication)
    shell = Shell(
        app, ControlPlaneConfig(data_dir=tmp_path), SingleInstance(tmp_path), minimized=False
    )
    loop = asyncio.get_running_loop()
    old_hook = sys.excepthook
    shell._install_error_hooks(loop)
    try:
        loop.call_soon(lambda: 1 / 0)  # a callback that raises: the loop's handler
        await until(lambda: shell.errors.history, what="the loop's exception handler")
        error = shell.errors.history[0]
        assert error.title == "Something went wrong"
        assert "ZeroDivisionError" in error.message
        assert error.details and "1 / 0" in error.details

        # A peer dropping a TLS handshake is routine: logged, no dialog.
        loop.call_exception_handler(
            {"message": "SSL error", "exception": ConnectionResetError(), "transport": None}
        )
        sys.excepthook(ValueError, ValueError("a slot raised"), None)  # Qt slots end here
        assert [e.message.splitlines()[0] for e in shell.errors.history] == [
            error.message.splitlines()[0],
            "ValueError: a slot raised",
        ]
        assert "unhandled exception" in caplog.text
    finally:
        loop.set_exception_handler(None)
        sys.excepthook = old_hook
        if shell.errors.dialog is not None:
            shell.errors.dialog.close()
        shell.instance.close()
        shell.deleteLater()


def test_the_gc_freezes_start_up_objects_until_it_stops(qapp):
    from app.gui import MainThreadGc

    assert gc.get_freeze_count() == 0
    collector = MainThreadGc()
    was_enabled = gc.isenabled()
    collector.start()
    try:
        assert not gc.isenabled()
        young = len(gc.get_objects())
        collector.freeze()
        # Everything alive is out of the collector's sight: a full collection
        # now walks only what is allocated from here on.
        assert gc.get_freeze_count() >= young // 2
        assert len(gc.get_objects()) < young // 10
    finally:
        collector.stop()
    assert gc.get_freeze_count() == 0, "stop() thaws them, so their garbage can go"
    assert gc.isenabled() == was_enabled
    collector.deleteLater()


# -- start at login --------------------------------------------------------------


def test_start_at_login_entry_is_created_and_removed(tmp_path: Path, monkeypatch):
    config_home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    entry = config_home / "autostart" / "restic-manager.desktop"
    assert autostart.entry_path() == entry
    assert not autostart.is_enabled()  # off by default

    data = tmp_path / "my data"
    command = autostart.launch_command(data, api_listen="127.0.0.1:9999")
    path = autostart.enable(command)
    assert path == entry and autostart.is_enabled()
    text = entry.read_text()
    assert "[Desktop Entry]" in text and "Type=Application" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    assert f'"{data}"' in exec_line  # a path with a space is quoted
    assert exec_line.endswith("--api-listen 127.0.0.1:9999 --minimized")
    assert list(entry.parent.iterdir()) == [entry]  # no temp file left over

    autostart.disable()
    assert not entry.exists() and not autostart.is_enabled()
    autostart.disable()  # idempotent


def test_the_start_at_login_action_writes_and_removes_the_entry(qapp, tmp_path: Path, monkeypatch):
    from app.gui import StartAtLogin
    from server_core.control_plane import ControlPlaneConfig, Endpoint

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    entry = tmp_path / "config" / "autostart" / "restic-manager.desktop"
    parent = QObject()
    reports: list[tuple[str, str]] = []
    config = ControlPlaneConfig(
        data_dir=tmp_path / "data", agent_listen=Endpoint("127.0.0.1", 9765)
    )
    toggle = StartAtLogin(config, lambda t, m: reports.append((t, m)), parent)
    assert toggle.action.isCheckable() and not toggle.action.isChecked()

    toggle.action.setChecked(True)
    exec_line = next(x for x in entry.read_text().splitlines() if x.startswith("Exec="))
    assert f"--data-dir {tmp_path / 'data'} --agent-listen 127.0.0.1:9765 --minimized" in exec_line
    assert "--api-listen" not in exec_line  # the default is not spelled out
    # A fresh action (next launch) shows it checked.
    assert StartAtLogin(config, reports.append, parent).action.isChecked()

    toggle.action.setChecked(False)
    assert not entry.exists()

    # A failure is reported and the check mark tells the truth.
    entry.parent.rmdir()
    entry.parent.write_text("not a directory")
    toggle.action.setChecked(True)
    assert not toggle.action.isChecked()
    assert reports and reports[0][0] == "Could not change start at login"
    parent.deleteLater()


def test_start_at_login_ignores_a_relative_xdg_config_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert autostart.entry_path() == tmp_path / ".config" / "autostart" / "restic-manager.desktop"


def test_exec_quoting_follows_the_desktop_entry_spec():
    line = autostart.desktop_entry(["/opt/rm/bin/restic-manager", 'a "b" $c\\d', "100%"])
    exec_line = next(x for x in line.splitlines() if x.startswith("Exec="))
    assert exec_line == 'Exec=/opt/rm/bin/restic-manager "a \\"b\\" \\$c\\\\d" 100%%'


# -- the real app, launched as a process ---------------------------------------------


def _app_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RESTIC_"))}
    env.update(
        QT_QPA_PLATFORM="offscreen",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    return env


def _launch_args(data: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "restic-manager"),
        "--data-dir",
        str(data),
        "--agent-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        *extra,
    ]


def _needs_views() -> None:
    missing = [m for m in VIEW_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the full app needs {', '.join(missing)}")


async def _wait_for_log(proc: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
    def check() -> re.Match[str] | None:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise AssertionError(f"the app exited ({proc.returncode}):\n{text[-4000:]}")
        return re.search(pattern, text)

    match = await until(check, 60, f"{pattern!r} in the app's log")
    assert isinstance(match, re.Match)
    return match


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_the_app_runs_once_per_data_dir_and_stops_cleanly_on_sigterm(tmp_path: Path, session):
    _needs_views()
    data = tmp_path / "data"
    env = _app_env(tmp_path)
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(_launch_args(data), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        up = await _wait_for_log(
            first, log, r"agents on (https://\S+) \(TLS, cert sha256 (\w+)\), API on (http://\S+)"
        )
        await _wait_for_log(first, log, r"desktop app ready")
        agent_url, pin, api_url = up.group(1), up.group(2), up.group(3)

        # A second launch on the same data dir: exits 0 at once, the first stays up.
        started = time.monotonic()
        second = subprocess.run(
            _launch_args(data), capture_output=True, env=env, timeout=60, check=False
        )
        assert second.returncode == 0, second.stderr.decode()[-3000:]
        assert time.monotonic() - started < 15
        assert b"already running" in second.stderr
        assert b"control plane up" not in second.stderr  # it never opened the DB or ports
        await _wait_for_log(first, log, r"asked this instance to come to the front")
        assert first.poll() is None

        # An agent connected to it sees a clean close when the app stops.
        token = (
            subprocess.run(
                [
                    str(BIN / "restic-manager"),
                    "api-token",
                    "create",
                    "--data-dir",
                    str(data),
                    "--name",
                    "t",
                ],
                capture_output=True,
                env=env,
                timeout=60,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        grant = await _api_post(
            session,
            f"{api_url}/api/v1/enrolment-tokens",
            token,
            {
                "hostname": "web1",
                "repository": {"url": "/srv/r", "password": "hunter2hunter2"},
                "initial_paths": ["/etc"],
            },
        )
        body = await enrol(session, agent_url, pin, grant["token"], "web1")
        agent = await FakeAgent.connect(session, agent_url, pin, body["bearer"])
        await agent.expect(p.ConfigUpdate)

        first.send_signal(signal.SIGTERM)
        closing = await agent.ws.receive(timeout=20)
        while closing.type == aiohttp.WSMsgType.TEXT:  # the probe job etc.
            closing = await agent.ws.receive(timeout=20)
        # The close frame itself: ws.close_code may read 1006 afterwards if
        # the server's socket is gone before the client's reply is written.
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert closing.data == aiohttp.WSCloseCode.GOING_AWAY
        assert closing.extra == "control plane shutting down"
        rc = await until(lambda: first.poll() is not None and (first.returncode,), 30, "exit")
        assert rc == (0,), log.read_text()[-4000:]
        text = log.read_text()
        assert "stopped cleanly" in text
        assert "Traceback" not in text
    finally:
        _stop(first)


async def _api_post(
    session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.json()
        assert r.status in (200, 201), data
        return dict(data)


async def test_quit_on_sigint_and_a_fresh_start_after_it(tmp_path: Path):
    _needs_views()
    data = tmp_path / "data"
    env = _app_env(tmp_path)
    for attempt in range(2):  # the second start reuses the data dir and the socket name
        log = tmp_path / f"run{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _launch_args(data, "--minimized"), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            await _wait_for_log(proc, log, r"desktop app ready")
            proc.send_signal(signal.SIGINT)
            await until(lambda p=proc: p.poll() is not None, 30, "exit")  # type: ignore[misc]
            assert proc.returncode == 0, log.read_text()[-4000:]
            assert "stopped cleanly" in log.read_text()
        finally:
            _stop(proc)


async def test_a_port_in_use_is_explained_and_exits_1(tmp_path: Path):
    env = _app_env(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: subprocess.run(
                [
                    str(BIN / "restic-manager"),
                    "--data-dir",
                    str(tmp_path / "data"),
                    "--agent-listen",
                    "127.0.0.1:0",
                    "--api-listen",
                    f"127.0.0.1:{port}",
                ],
                capture_output=True,
                env=env,
                timeout=60,
                check=False,
            ),
        )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err[-3000:]
    assert f"The API port 127.0.0.1:{port} is already in use" in err
    assert "--api-listen HOST:PORT" in err


def test_cli_keeps_serve_and_api_token_and_adds_the_window_options():
    from app.cli import build_parser

    parser = build_parser()
    serve = parser.parse_args(["serve", "--data-dir", "/x", "--api-listen", "127.0.0.1:1"])
    assert serve.command == "serve" and serve.data_dir == Path("/x")
    assert str(serve.api_listen) == "127.0.0.1:1"
    gui = parser.parse_args(["--data-dir", "/y", "--minimized", "--agent-listen", "127.0.0.1:0"])
    assert gui.command is None and gui.minimized
    assert gui.gui_data_dir == Path("/y") and str(gui.gui_agent_listen) == "127.0.0.1:0"
    assert str(gui.gui_api_listen) == "127.0.0.1:8766"
    with pytest.raises(SystemExit):
        parser.parse_args(["--agent-listen", "nope"])


def test_the_installed_entry_point_has_the_window_options():
    out = subprocess.run(
        [str(BIN / "restic-manager"), "--help"], capture_output=True, timeout=60, check=True
    )
    assert b"--minimized" in out.stdout


def test_api_token_still_works(tmp_path: Path):
    out = subprocess.run(
        [
            str(BIN / "restic-manager"),
            "api-token",
            "create",
            "--data-dir",
            str(tmp_path),
            "--name",
            "me",
        ],
        capture_output=True,
        timeout=60,
        check=True,
        env=_app_env(tmp_path),
    )
    assert out.stdout.decode().strip().startswith("rm")


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for `sig` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


async def test_sigterm_while_starting_is_a_clean_quit(tmp_path: Path):
    """SIGTERM during the second of imports before the loop runs used to kill
    the app with the default action (exit 143)."""
    data = tmp_path / "data"
    log = tmp_path / "early.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _launch_args(data), stdout=out, stderr=subprocess.STDOUT, env=_app_env(tmp_path)
        )
    try:
        await until(lambda: _catches(proc.pid, signal.SIGTERM), 20, "a SIGTERM handler")
        # Caught this early, the app is still importing: nothing is up yet.
        assert "control plane up" not in log.read_text()
        proc.send_signal(signal.SIGTERM)
        rc = await until(lambda: proc.poll() is not None and (proc.returncode,), 30, "exit")
        text = log.read_text()
        assert rc == (0,), text[-4000:]
        assert "quit requested while starting" in text
        assert "control plane up" not in text
        assert "Traceback" not in text
    finally:
        _stop(proc)
