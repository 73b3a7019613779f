"""Add this computer, through real widgets against the real embedded control plane:
a real agent enrolled in-process, started as a detached process (this machine
has no systemd user session), connecting over real TLS, initialising a real
restic repository in a local folder and making a real backup from the
dialog's button. The systemd user path runs against a fake systemctl (see
tests/unit/app/test_local_agent.py) that starts the unit's ExecStart= itself.

No qtbot.waitUntil/waitSignal here (they hang on the qasync loop): waits are
bounded asyncio polling loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

from app import local_agent as la
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from server_core.services.enrolment import AgentEndpoint, parse_new_host
from tests.helpers.fleet import make_tree
from tests.helpers.restic_bins import RESTIC_BINARIES
from tests.unit.app.test_local_agent import fake_calls, install_fake_systemctl
from ui_qt.add_this_computer import DONE, FAILED, AddThisComputerDialog, generate_password
from ui_qt.fleet_view import FleetView

_KEEP: list[QWidget] = []


@pytest.fixture(autouse=True)
def _keep_windows() -> Iterator[None]:
    yield
    _KEEP.clear()


@pytest.fixture
def agents_to_kill() -> Iterator[list[Callable[[], int | None]]]:
    """Pid getters of agents a test started detached; killed (by pid) at the end."""
    getters: list[Callable[[], int | None]] = []
    yield getters
    for get in getters:
        pid = get()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def restic_018() -> str:
    binary = RESTIC_BINARIES.get("0.18")
    assert binary, "restic 0.18 is not installed: run `make bootstrap`"
    return binary


class Recorder:
    """A Navigator that writes down what the dialog asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def show_fleet(self) -> None:
        self.calls.append(("show_fleet", None))

    def open_host(self, host_id: int) -> None:
        self.calls.append(("open_host", host_id))

    def open_job(self, job_id: str) -> None:
        self.calls.append(("open_job", job_id))

    def add_host(self) -> None:
        self.calls.append(("add_host", None))


def user_env(tmp: Path, *path_dirs: Path, **extra: str) -> dict[str, str]:
    """This user's environment, with home and the XDG dirs inside ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "PYTEST_"))}
    env.update(
        HOME=str(tmp / "home"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_DATA_HOME=str(tmp / "data"),
        PATH=os.pathsep.join([*(str(d) for d in path_dirs), env.get("PATH", "")]),
    )
    env.update(extra)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return env


def launcher_for(
    cp: ControlPlane, env: dict[str, str], *, pin: str | None = None, **kwargs: Any
) -> la.LocalAgent:
    return la.LocalAgent(
        endpoint=lambda: AgentEndpoint(
            la.local_server_url("127.0.0.1", cp.agent_port), pin or cp.certificate.sha256
        ),
        env=env,
        platform="linux",
        restic=restic_018(),
        **kwargs,
    )


def open_dialog(ui, qtbot, launcher: la.LocalAgent, navigator: Any = None, **kw: Any):
    keeper = QWidget()  # closing the last window would quit the app, and the loop
    qtbot.addWidget(keeper)
    keeper.show()
    _KEEP.append(keeper)
    dialog = AddThisComputerDialog(ui, launcher, navigator, keeper, **kw)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def detected(dialog: AddThisComputerDialog) -> Any:
    return await wait_until(lambda: dialog.plan, 15, "the service detection")


# -- the fallback path, for real -----------------------------------------------------------


async def test_this_computer_is_backed_up_by_a_detached_agent(
    ui, qtbot, control_plane, tmp_path, agents_to_kill
):
    env = user_env(tmp_path)
    home = Path(env["HOME"])
    make_tree(home / "Documents", files=40, size=4096)
    (home / "notes.txt").write_text("remember the milk\n")
    launcher = launcher_for(control_plane, env)
    agents_to_kill.append(lambda: la.running_agent_pid(launcher.paths))
    from ui_qt.main_window import MainWindow

    window = MainWindow(ui)  # the real navigator: Back up now opens a real job window
    qtbot.addWidget(window)
    dialog = open_dialog(ui, qtbot, launcher, window)

    plan = await detected(dialog)
    # This machine: root in a container, `systemctl --user` answers "offline".
    assert plan.mode == la.DETACHED
    assert "No systemd user session" in dialog.service_summary.text()
    assert "offline" in dialog.service_summary.text()
    assert "logged out" in dialog.service_details.text()
    assert "enrolling-hosts.md" in dialog.service_details.text()
    assert dialog.submit_button.isEnabled()
    assert not dialog.add_host_button.isVisibleTo(dialog)

    # The defaults: a folder in home, and home itself to back up.
    assert dialog.repository.text() == str(home / "restic-backups")
    assert dialog.sources.toPlainText() == str(home)
    click(qtbot, dialog.generate_button)
    password = dialog.generated_text.text()
    assert len(password) >= 30 and dialog.password.text() == dialog.confirm.text() == password
    assert dialog.generated_panel.isVisibleTo(dialog)
    click(qtbot, dialog.copy_button)
    assert QGuiApplication.clipboard().text() == password
    qtbot.keyClicks(dialog.tags, "laptop, home")

    created = asyncio.get_running_loop().create_future()
    dialog.host_created.connect(lambda host_id: created.done() or created.set_result(host_id))
    click(qtbot, dialog.submit_button)
    host_id = int(await asyncio.wait_for(created, 20))
    assert dialog.pages.currentWidget() is dialog.progress_page

    await wait_until(lambda: dialog.step_state("start") in (DONE, FAILED), 60, "the start")
    assert dialog.step_state("start") == DONE, dialog.step_detail("start")
    assert "background" in dialog.step_detail("start")
    await wait_until(lambda: dialog.step_state("connect") == DONE, 60, "the agent to connect")
    await wait_until(lambda: dialog.step_state("repo") in (DONE, FAILED), 90, "the repo probe")
    assert dialog.step_state("repo") == DONE, dialog.step_detail("repo")
    assert (home / "restic-backups" / "config").is_file()  # the real init job made it

    # Secrets left the widgets once the control plane had them.
    assert dialog.password.text() == "" and dialog.confirm.text() == ""
    assert not dialog.generated_panel.isVisibleTo(dialog)

    # The host as the fleet sees it: enrolled, online, tagged, its repository left out
    # of its own backup, backed up daily by the agent itself.
    host = await ui.hosts.get_host(host_id)
    assert host.enrolled and host.status == "online" and host.tags == ["laptop", "home"]
    (group,) = await ui.sources.list_groups(host_id)
    assert group.includes == [str(home)]
    assert group.excludes == [str(home / "restic-backups")]
    (schedule,) = await ui.schedules.list_schedules(host_id)
    assert schedule.cron == "0 12 * * *" and schedule.enabled
    assert "Leaves out" in dialog.step_detail("configure")

    # The agent: private files, its own session, started again at login.
    paths = launcher.paths
    assert mode(paths.base) == 0o700 and mode(paths.state_dir) == 0o700
    assert mode(paths.config) == 0o600
    assert mode(paths.config.with_name("config.toml.key")) == 0o600
    assert mode(paths.state_dir / "secrets.bin") == 0o600
    assert password.encode() not in paths.config.read_bytes()
    pid = la.running_agent_pid(paths)
    assert pid is not None and os.getsid(pid) != os.getsid(0)
    entry = tmp_path / "config" / "autostart" / "restic-manager-agent.desktop"
    assert f"Exec={paths.start_script}" in entry.read_text()

    # One click: a real backup, watched in the job window.
    assert dialog.backup_button.isEnabled()
    click(qtbot, dialog.backup_button)
    await wait_until(lambda: dialog.job_id, 15, "the backup job")
    job_id = dialog.job_id
    assert job_id in window._job_windows  # the job window opened on it
    await wait_until(lambda: dialog.step_state("backup") in (DONE, FAILED), 120, "the backup")
    assert dialog.step_state("backup") == DONE, dialog.step_detail("backup")
    job = await ui.jobs.get_job(job_id)
    snapshot = str(job.summary["snapshot_id"])
    assert f"Snapshot {snapshot[:8]}" in dialog.step_detail("backup")
    assert "backed up" in dialog.outcome.text()
    await wait_until(
        lambda: window._job_windows[job_id].status_label.text() != "…", 15, "the job window"
    )

    # The snapshot holds home but not the repository inside it.
    listing = await asyncio.to_thread(
        subprocess.run,
        [restic_018(), "ls", "--json", snapshot],
        env={
            "RESTIC_REPOSITORY": str(home / "restic-backups"),
            "RESTIC_PASSWORD": password,
            "RESTIC_CACHE_DIR": str(tmp_path / "restic-cache"),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    names = [json.loads(line).get("path", "") for line in listing.stdout.splitlines()[1:]]
    assert str(home / "notes.txt") in names
    assert any(n.startswith(str(home / "Documents")) for n in names)
    assert not any("restic-backups" in n for n in names)

    # Closing the dialog does not stop the agent: it keeps backing up.
    dialog.close()
    for w in list(window._job_windows.values()):
        w.close()
    await asyncio.sleep(1.0)
    assert la.running_agent_pid(paths) == pid
    assert (await ui.hosts.get_host(host_id)).status == "online"


# -- the systemd user path (fake systemctl: no user session here) ----------------------------


async def test_the_systemd_user_service_is_written_enabled_and_runs(
    ui, qtbot, control_plane, tmp_path, agents_to_kill
):
    # A MOCK systemctl: this machine has no systemd user session. It records its
    # argv and, for `enable --now`, runs the unit's ExecStart= as systemd would.
    bindir, state = install_fake_systemctl(tmp_path, launch=True)
    env = user_env(tmp_path, bindir, FAKE_SYSTEMCTL_DIR=str(state))
    launcher = launcher_for(control_plane, env)

    def service_pid() -> int | None:
        path = state / "service.pid"
        return int(path.read_text()) if path.exists() else None

    agents_to_kill.append(service_pid)
    recorder = Recorder()
    dialog = open_dialog(ui, qtbot, launcher, recorder)
    plan = await detected(dialog)
    assert plan.mode == la.SYSTEMD
    assert "systemd user service" in dialog.service_summary.text()
    make_tree(Path(env["HOME"]) / "src", files=5, size=1024)
    dialog.sources.setPlainText(str(Path(env["HOME"]) / "src"))
    dialog.repository.setText(str(tmp_path / "elsewhere" / "repo"))
    dialog.schedule.setCurrentIndex(dialog.schedule.count() - 1)  # no schedule
    qtbot.keyClicks(dialog.password.edit, "correct-horse-battery")
    qtbot.keyClicks(dialog.confirm.edit, "correct-horse-battery")
    click(qtbot, dialog.submit_button)

    await wait_until(lambda: dialog.step_state("start") in (DONE, FAILED), 60, "the start")
    assert dialog.step_state("start") == DONE, dialog.step_detail("start")
    assert "systemd user service" in dialog.step_detail("start")
    # The unit's own command brings the host online and initialises the repository.
    await wait_until(lambda: dialog.step_state("connect") == DONE, 60, "the agent to connect")
    await wait_until(lambda: dialog.step_state("repo") == DONE, 90, "the repository")
    assert dialog.backup_button.isEnabled()

    unit = tmp_path / "config" / "systemd" / "user" / "restic-manager-agent.service"
    text = unit.read_text()
    assert f"run --config {launcher.paths.config}" in text and "Restart=always" in text
    settings = [line.lower() for line in text.splitlines() if not line.startswith("#")]
    for secret in ("correct-horse-battery", "token", "bearer", "password"):
        assert not any(secret in line for line in settings), secret
    assert fake_calls(state) == [
        ["--user", "is-system-running"],
        ["--user", "daemon-reload"],
        ["--user", "is-active", "restic-manager-agent.service"],
        ["--user", "enable", "--now", "restic-manager-agent.service"],
    ]
    # No fallback leftovers beside the service.
    assert not (tmp_path / "config" / "autostart" / "restic-manager-agent.desktop").exists()
    groups = await ui.sources.list_groups(dialog.host_id)
    assert [g.excludes for g in groups] == [[]]  # the repository is elsewhere
    assert await ui.schedules.list_schedules(dialog.host_id) == []
    assert "No schedule" in dialog.step_detail("configure")
    dialog.close()


# -- failures ------------------------------------------------------------------------------


async def test_a_failed_enrolment_removes_the_host_and_keeps_the_form(
    ui, qtbot, control_plane, tmp_path
):
    env = user_env(tmp_path)
    # The wrong certificate pin: the agent refuses to talk to this server.
    launcher = launcher_for(control_plane, env, pin="00" * 32)
    dialog = open_dialog(ui, qtbot, launcher)
    await detected(dialog)
    dialog.generate()
    password = dialog.password.text()
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.step_state("enrol") == FAILED, 30, "the enrolment to fail")
    assert "does not match --cert-sha256" in dialog.step_detail("enrol")
    await wait_until(lambda: dialog.back_button.isVisibleTo(dialog), 10, "Back to the form")
    assert "Removed again" in dialog.step_detail("host")
    assert "Fix the problem" in dialog.outcome.text()
    assert await ui.hosts.list_hosts() == []  # nothing half-done
    assert not launcher.paths.config.exists()
    click(qtbot, dialog.back_button)
    assert dialog.pages.currentWidget() is dialog.form_page
    assert dialog.password.text() == password  # ready to try again
    assert dialog.generated_panel.isVisibleTo(dialog)


async def test_a_start_failure_keeps_the_host_and_retry_finishes_the_job(
    ui, qtbot, control_plane, tmp_path, agents_to_kill
):
    env = user_env(tmp_path)
    broken = tmp_path / "broken_agent.py"
    broken.write_text(
        "import sys\nprint('agent: cannot open the outbox', file=sys.stderr)\nsys.exit(1)\n"
    )
    import sys

    launcher = launcher_for(
        control_plane, env, command=la.AgentCommand((sys.executable, str(broken)), "python")
    )
    agents_to_kill.append(lambda: la.running_agent_pid(launcher.paths))
    dialog = open_dialog(ui, qtbot, launcher)
    await detected(dialog)
    dialog.repository.setText(str(tmp_path / "repo"))
    dialog.generate()
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.step_state("start") == FAILED, 60, "the start to fail")
    assert "exit status 1" in dialog.step_detail("start")
    assert "cannot open the outbox" in dialog.step_detail("start")
    assert dialog.retry_button.isVisibleTo(dialog)
    assert "not running yet" in dialog.outcome.text()
    host = await ui.hosts.get_host(dialog.host_id)
    assert host.enrolled and host.status == "offline"

    launcher._command = la.resolve_agent_command()  # the problem fixed
    click(qtbot, dialog.retry_button)
    await wait_until(lambda: dialog.step_state("connect") == DONE, 60, "the agent to connect")
    await wait_until(lambda: dialog.step_state("repo") == DONE, 90, "the repository")
    assert not dialog.retry_button.isVisibleTo(dialog)
    dialog.close()


async def test_form_mistakes_are_shown_where_they_are_and_nothing_is_created(
    ui, qtbot, control_plane, tmp_path
):
    env = user_env(tmp_path)
    launcher = launcher_for(control_plane, env)
    dialog = open_dialog(ui, qtbot, launcher)
    await detected(dialog)

    click(qtbot, dialog.submit_button)
    assert dialog.shown_errors() == {"password": "Type a password, or click Generate one."}
    qtbot.keyClicks(dialog.password.edit, "short")
    click(qtbot, dialog.submit_button)
    assert "at least 8 characters" in dialog.error_text("password")
    qtbot.keyClicks(dialog.password.edit, "-but-longer")
    qtbot.keyClicks(dialog.confirm.edit, "something else")
    click(qtbot, dialog.submit_button)
    assert dialog.shown_errors() == {
        "confirm": "The two passwords differ; type the same one twice."
    }
    dialog.confirm.edit.setText(dialog.password.text())

    dialog.repository.setText("restic-backups")
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.error_text("repository"), 10, "the folder check")
    assert "absolute path" in dialog.error_text("repository")

    full = Path(env["HOME"]) / "Pictures"
    (full / "2024").mkdir(parents=True)
    dialog.repository.setText(str(full))
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.error_text("repository"), 10, "the folder check")
    assert "not empty and is not a restic repository" in dialog.error_text("repository")

    dialog.repository.setText(str(tmp_path / "repo"))
    dialog.sources.setPlainText(f"{env['HOME']}\n{tmp_path / 'nowhere'}")
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.error_text("sources"), 10, "the folder check")
    assert "does not exist" in dialog.error_text("sources")

    dialog.sources.setPlainText(env["HOME"])
    dialog.tags.setText("not a tag!")
    click(qtbot, dialog.submit_button)
    await wait_until(lambda: dialog.error_text("tags"), 10, "the tags check")
    assert "Tags must be a list of short words" in dialog.error_text("tags")

    assert dialog.pages.currentWidget() is dialog.form_page
    await ui.runner.drain()
    assert await ui.hosts.list_hosts() == []
    assert not launcher.paths.base.exists()


async def test_where_it_cannot_run_the_dialog_says_so_and_offers_add_host(
    ui, qtbot, control_plane, tmp_path
):
    launcher = la.LocalAgent(
        endpoint=lambda: AgentEndpoint("https://127.0.0.1:1", "00" * 32),
        env=user_env(tmp_path),
        platform="win32",
    )
    recorder = Recorder()
    dialog = open_dialog(ui, qtbot, launcher, recorder)
    plan = await detected(dialog)
    assert plan.mode == la.UNSUPPORTED
    assert "not available on Windows" in dialog.service_summary.text()
    assert "Add host" in dialog.service_details.text()
    assert not dialog.submit_button.isEnabled()
    assert dialog.add_host_button.isVisibleTo(dialog)
    click(qtbot, dialog.add_host_button)
    assert recorder.calls == [("add_host", None)]


def test_generated_passwords_are_long_and_different():
    first, second = generate_password(), generate_password()
    assert first != second and len(first) == 35 and first.count("-") == 5
    assert not set(first) & set("l1o0")


# -- the fleet's empty state -----------------------------------------------------------------


async def test_the_empty_fleet_offers_this_computer_until_it_is_in_the_fleet(
    ui, qtbot, control_plane, tmp_path
):
    recorder = Recorder()
    view = FleetView(ui, recorder)
    qtbot.addWidget(view)
    view.show()
    await wait_until(lambda: view.model.loaded(), 10, "the fleet")
    assert view.pages.currentWidget() is view.empty_page
    # Without a launcher (a platform or build that cannot) only Add host is offered.
    assert not view.empty_this_computer_button.isVisibleTo(view)
    assert view.empty_add_button.isVisibleTo(view)
    assert "Add this computer" not in view.empty_body.text()

    launcher = launcher_for(control_plane, user_env(tmp_path))
    view.offer_this_computer(launcher)
    assert view.empty_this_computer_button.isVisibleTo(view)
    assert view.empty_add_button.isVisibleTo(view)
    assert "Add this computer" in view.empty_body.text()
    click(qtbot, view.empty_add_button)
    assert recorder.calls == [("add_host", None)]

    click(qtbot, view.empty_this_computer_button)
    dialog = view._this_computer_dialog
    assert isinstance(dialog, AddThisComputerDialog) and dialog.isVisible()
    click(qtbot, view.empty_this_computer_button)  # the same dialog, raised
    assert view._this_computer_dialog is dialog
    await detected(dialog)
    dialog.close()

    # This computer joins the fleet another way: the offer goes.
    await ui.enrolment.add_host(
        parse_new_host(
            {
                "hostname": launcher.hostname,
                "repository": {"url": str(tmp_path / "r"), "password": "pw-12345678"},
            }
        ),
        OPERATOR,
    )
    await wait_until(lambda: view.pages.currentWidget() is view.fleet_page, 10, "the table")
    assert view.empty_this_computer_button.isHidden()
