"""Add host, driven through real widgets against the real embedded control plane,
through to a real agent process that enrols, connects and probes a real
restic repository.

No qtbot.waitUntil/waitSignal here (they hang on the qasync loop): waits are
bounded asyncio polling loops or asyncio.Events fed by signals.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt, QTime
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QPlainTextEdit, QTimeEdit, QWidget

from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.helpers.fleet import AgentProcess, child_env
from tests.helpers.restic_bins import RESTIC_BINARIES
from ui_qt.add_host import (
    AddHostDialog,
    BackupPlan,
    countdown,
    daily_cron,
    field_for_error,
    humanise,
)

PASSWORD = "correct-horse-battery"


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


def type_lines(qtbot, edit: QPlainTextEdit, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        if i:
            qtbot.keyClick(edit, Qt.Key.Key_Return)
        qtbot.keyClicks(edit, line)


_WINDOWS: list[QWidget] = []


@pytest.fixture(autouse=True)
def _keep_windows() -> Iterator[None]:
    yield
    _WINDOWS.clear()


def main_window(qtbot) -> QWidget:
    # Stands in for the main window. It also keeps one window open: closing the
    # last one would quit the QApplication, and with it the qasync loop.
    window = QWidget()
    qtbot.addWidget(window)
    window.show()
    _WINDOWS.append(window)  # qtbot holds widgets weakly
    return window


def open_dialog(ui, qtbot, **kwargs: Any) -> AddHostDialog:
    dialog = AddHostDialog(ui, main_window(qtbot), **kwargs)
    # Deleted on close by design; the test closes it only at the very end.
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


async def submit_and_wait_created(qtbot, dialog: AddHostDialog) -> int:
    created = asyncio.get_running_loop().create_future()
    dialog.host_created.connect(lambda host_id: created.done() or created.set_result(host_id))
    click(qtbot, dialog.submit_button)
    return int(await asyncio.wait_for(created, 15))


async def fill_valid_form(qtbot, dialog: AddHostDialog, name: str, repo: Path) -> None:
    qtbot.keyClicks(dialog.hostname, name)
    qtbot.keyClicks(dialog.repo_url, str(repo))
    qtbot.keyClicks(dialog.repo_password.edit, PASSWORD)
    type_lines(qtbot, dialog.paths, ["/etc", "/var/lib/app"])
    qtbot.keyClicks(dialog.tags, "e2e, web")


# -- pure helpers --------------------------------------------------------------


def test_error_fields_map_to_widgets_and_read_like_the_form():
    assert field_for_error("repository.password") == "repo_password"
    assert field_for_error("repository.env") == "env"
    assert field_for_error("admin_repository.url") == "admin_url"
    assert field_for_error("initial_paths") == "paths"
    assert field_for_error(None) is None and field_for_error("nonsense") is None
    assert humanise("'repository.password' is required") == "The repository password is required"
    assert countdown(3600) == "60:00"
    assert countdown(59.2) == "01:00"
    assert countdown(0.4) == "00:01"
    assert countdown(-3) == "00:00"
    assert field_for_error("retention.keep_daily") == "keep"
    assert daily_cron(QTime(2, 0)) == "0 2 * * *"
    assert daily_cron(QTime(21, 5)) == "5 21 * * *"
    plan = BackupPlan("0 2 * * *", {"keep_daily": 7, "keep_monthly": 12})
    assert plan.describe() == "every day at 02:00, keeping 7 daily and 12 monthly snapshots"
    assert BackupPlan("0 2 * * *", {"keep_weekly": 4}).describe_retention() == (
        "4 weekly snapshots"
    )


# -- the form --------------------------------------------------------------------


async def test_invalid_input_is_shown_inline_and_nothing_is_created(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    qtbot.keyClicks(dialog.hostname, "web1")
    qtbot.keyClicks(dialog.repo_url, str(tmp_path / "repo"))
    type_lines(qtbot, dialog.paths, ["/etc", "relative/dir"])
    qtbot.keyClicks(dialog.tags, "prod, web")

    # No password yet.
    click(qtbot, dialog.submit_button)
    assert dialog.shown_errors() == {"repo_password": "The repository password is required"}
    assert dialog.focusWidget() is dialog.repo_password.edit  # the cursor goes there

    # The password is there now: the relative path is what's wrong.
    qtbot.keyClicks(dialog.repo_password.edit, PASSWORD)
    assert dialog.shown_errors() == {}  # editing clears the stale message
    click(qtbot, dialog.submit_button)
    errors = dialog.shown_errors()
    assert list(errors) == ["paths"]
    assert "'relative/dir' must be an absolute path" in errors["paths"]

    # An unnamed environment variable is refused before the parser even runs.
    dialog.env.add_row("", "AKIA-something")
    click(qtbot, dialog.submit_button)
    assert "has no name" in dialog.error_text("env")

    # Bad input loses nothing the operator typed.
    assert dialog.hostname.text() == "web1"
    assert dialog.repo_password.text() == PASSWORD
    assert dialog.paths.toPlainText() == "/etc\nrelative/dir"
    assert dialog.tags.text() == "prod, web"
    assert dialog.pages.currentWidget() is dialog.form_page
    assert ui.runner.pending() == 0
    assert await ui.hosts.list_hosts() == []


async def test_admin_credential_errors_open_the_collapsed_group(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    assert not dialog.admin_body.isVisibleTo(dialog)
    qtbot.keyClicks(dialog.hostname, "web2")
    qtbot.keyClicks(dialog.repo_url, str(tmp_path / "repo"))
    qtbot.keyClicks(dialog.repo_password.edit, PASSWORD)
    dialog.admin_group.setChecked(True)
    qtbot.keyClicks(dialog.admin_url, "rest:http://127.0.0.1:1/web2")
    click(qtbot, dialog.submit_button)
    assert dialog.shown_errors() == {"admin_password": "The admin password is required"}
    assert dialog.admin_body.isVisibleTo(dialog)
    assert await ui.hosts.list_hosts() == []


async def test_password_show_toggle(ui, qtbot):
    dialog = open_dialog(ui, qtbot)
    edit = dialog.repo_password.edit
    assert edit.echoMode() == edit.EchoMode.Password
    click(qtbot, dialog.repo_password.toggle)
    assert edit.echoMode() == edit.EchoMode.Normal
    assert dialog.repo_password.toggle.text() == "Hide"
    click(qtbot, dialog.repo_password.toggle)
    assert edit.echoMode() == edit.EchoMode.Password


async def test_duplicate_hostname_is_shown_next_to_the_hostname(ui, qtbot, tmp_path):
    await ui.enrolment.add_host(
        parse_new_host({"hostname": "db1", "repository": {"url": "/srv/r", "password": PASSWORD}}),
        OPERATOR,
    )
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "db1", tmp_path / "repo")
    click(qtbot, dialog.submit_button)
    assert not dialog.submit_button.isEnabled()  # busy while the service runs
    await wait_until(lambda: dialog.error_text("hostname"), 10, "the conflict message")
    assert "already exists" in dialog.error_text("hostname")
    assert dialog.submit_button.isEnabled()
    assert dialog.pages.currentWidget() is dialog.form_page
    assert dialog.repo_password.text() == PASSWORD
    assert [h.name for h in await ui.hosts.list_hosts()] == ["db1"]


async def test_environment_and_backend_credentials_are_stored(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "s3host", tmp_path / "repo")
    qtbot.keyClicks(dialog.backend_username, "backup")
    qtbot.keyClicks(dialog.backend_password.edit, "rest-secret")
    dialog.env.add_row("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    dialog.env.add_row("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    dialog.env.add_row("", "")  # a blank row is ignored
    host_id = await submit_and_wait_created(qtbot, dialog)
    (summary,) = await ui.hosts.credential_summaries(host_id)
    assert summary.username == "backup"
    assert summary.env_keys == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    # The secrets do not linger in the widgets once handed over.
    assert dialog.repo_password.text() == "" and dialog.backend_password.text() == ""
    assert dialog.env.rows() == []
    host = await ui.hosts.get_host(host_id)
    assert host.tags == ["e2e", "web"]


# -- schedule and retention -------------------------------------------------------

DEFAULT_RETENTION = {
    "keep_last": None,
    "keep_hourly": None,
    "keep_daily": 7,
    "keep_weekly": 4,
    "keep_monthly": 12,
    "keep_yearly": None,
    "keep_within": None,
}


async def test_by_default_the_host_backs_up_daily_and_keeps_a_sensible_history(
    ui, qtbot, control_plane, tmp_path
):
    dialog = open_dialog(ui, qtbot)
    # Visible defaults: on, 02:00, 7 / 4 / 12.
    assert dialog.auto_backup.isChecked()
    assert dialog.backup_time.time() == QTime(2, 0)
    assert {rule: spin.value() for rule, spin in dialog.keep.items()} == {
        "keep_daily": 7,
        "keep_weekly": 4,
        "keep_monthly": 12,
    }
    await fill_valid_form(qtbot, dialog, "web1", tmp_path / "repo")
    host_id = await submit_and_wait_created(qtbot, dialog)

    (group,) = await ui.sources.list_groups(host_id)
    assert group.name == "default"
    assert group.includes == ["/etc", "/var/lib/app"]
    assert group.retention == DEFAULT_RETENTION
    (schedule,) = await ui.schedules.list_schedules(host_id)
    assert (schedule.cron, schedule.enabled, schedule.source_group_ids) == (
        "0 2 * * *",
        True,
        [group.id],
    )
    assert schedule.next_run_at is not None
    assert await ui.schedules.conflicts(host_id) == []

    # The result page says what was set up, and the commands are there.
    assert dialog.pages.currentWidget() is dialog.result_page
    assert dialog.plan_state() == "applied"
    assert "every day at 02:00" in dialog.plan_note.text()
    assert "7 daily, 4 weekly and 12 monthly snapshots" in dialog.plan_note.text()
    assert dialog.grant is not None and dialog.grant.token in dialog.commands.linux.toPlainText()

    entries = await control_plane.store.call(list_audit, limit=50)
    done = {(e.action, e.actor_kind) for e in entries}
    assert ("source_group.created", "operator") in done
    assert ("schedule.created", "operator") in done


async def test_another_time_and_fewer_rules_typed_with_the_keyboard(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web1", tmp_path / "repo")
    dialog.backup_time.setFocus()
    dialog.backup_time.setSelectedSection(QTimeEdit.Section.HourSection)
    qtbot.keyClicks(dialog.backup_time, "21:30")
    weekly = dialog.keep["keep_weekly"]
    weekly.setFocus()
    weekly.selectAll()
    qtbot.keyClicks(weekly, "0")
    assert weekly.value() == 0
    host_id = await submit_and_wait_created(qtbot, dialog)

    (group,) = await ui.sources.list_groups(host_id)
    assert group.retention == {**DEFAULT_RETENTION, "keep_weekly": None}
    (schedule,) = await ui.schedules.list_schedules(host_id)
    assert schedule.cron == "30 21 * * *"
    assert await ui.schedules.conflicts(host_id) == []
    assert "every day at 21:30, keeping 7 daily and 12 monthly" in dialog.plan_note.text()


async def test_unticking_automatic_backups_creates_neither(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web1", tmp_path / "repo")
    dialog.auto_backup.setFocus()
    qtbot.keyClick(dialog.auto_backup, Qt.Key.Key_Space)
    assert not dialog.auto_backup.isChecked()
    # Greyed out, with the consequence spelled out.
    assert not dialog.backup_time.isEnabled()
    assert not any(spin.isEnabled() for spin in dialog.keep.values())
    assert "forget keeps every snapshot" in dialog.keep_hint.text()
    host_id = await submit_and_wait_created(qtbot, dialog)

    assert await ui.schedules.list_schedules(host_id) == []
    # As before: the agent creates "default" (no retention) from the paths when it enrols.
    assert await ui.sources.list_groups(host_id) == []
    assert dialog.plan_state() == "off"
    assert "Schedules and Sources tabs" in dialog.plan_note.text()


async def test_a_schedule_with_nothing_to_keep_is_refused_at_the_field(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web1", tmp_path / "repo")
    for spin in dialog.keep.values():
        spin.setValue(0)
    click(qtbot, dialog.submit_button)
    errors = dialog.shown_errors()
    assert list(errors) == ["keep"]
    assert "at least one of daily, weekly or monthly" in errors["keep"]
    assert dialog.focusWidget() is dialog.keep["keep_daily"]
    assert dialog.pages.currentWidget() is dialog.form_page
    assert ui.runner.pending() == 0
    assert await ui.hosts.list_hosts() == []

    # Changing a rule clears the stale message.
    dialog.keep["keep_monthly"].setValue(6)
    assert dialog.shown_errors() == {}
    dialog.keep["keep_monthly"].setValue(0)

    # Unticked, all-zero rules are fine: nothing is applied.
    dialog.auto_backup.setChecked(False)
    host_id = await submit_and_wait_created(qtbot, dialog)
    assert await ui.schedules.list_schedules(host_id) == []
    assert await ui.sources.list_groups(host_id) == []


async def test_automatic_backups_need_initial_paths(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    qtbot.keyClicks(dialog.hostname, "web1")
    qtbot.keyClicks(dialog.repo_url, str(tmp_path / "repo"))
    qtbot.keyClicks(dialog.repo_password.edit, PASSWORD)
    click(qtbot, dialog.submit_button)
    errors = dialog.shown_errors()
    assert list(errors) == ["schedule"]
    assert "need something to back up" in errors["schedule"]
    assert dialog.focusWidget() is dialog.auto_backup
    assert await ui.hosts.list_hosts() == []

    type_lines(qtbot, dialog.paths, ["/srv"])
    host_id = await submit_and_wait_created(qtbot, dialog)
    (schedule,) = await ui.schedules.list_schedules(host_id)
    assert schedule.cron == "0 2 * * *"


@pytest.mark.parametrize("step", ["group", "schedule"])
async def test_when_the_plan_cannot_be_applied_the_host_and_its_commands_remain(
    ui, qtbot, tmp_path, monkeypatch, step
):
    # The real services refuse for real: their per-host limits drop to zero.
    if step == "group":
        monkeypatch.setattr("server_core.services.sources.MAX_GROUPS_PER_HOST", 0)
    else:
        monkeypatch.setattr("server_core.services.schedules.MAX_SCHEDULES_PER_HOST", 0)
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web1", tmp_path / "repo")
    host_id = await submit_and_wait_created(qtbot, dialog)

    assert [h.name for h in await ui.hosts.list_hosts()] == ["web1"]
    assert dialog.pages.currentWidget() is dialog.result_page
    assert dialog.grant is not None and dialog.grant.token in dialog.commands.linux.toPlainText()
    assert dialog.commands.copy_linux.isEnabled()
    assert dialog.plan_state() == "failed"
    note = dialog.plan_note.text()
    assert "at most 0" in note  # the service's own reason
    assert "The host was added" in note and "Schedules tab" in note
    assert await ui.schedules.list_schedules(host_id) == []
    groups = await ui.sources.list_groups(host_id)
    if step == "group":
        assert "Schedule and retention were not set" in note
        assert "from the initial paths when it enrols" in note
        assert groups == []
    else:
        assert "No schedule was created" in note
        assert [g.retention for g in groups] == [DEFAULT_RETENTION]


# -- the result page, through to a real agent ------------------------------------


async def test_add_host_through_to_an_enrolled_agent(ui, qtbot, control_plane, tmp_path):
    restic = restic_018()
    repo = tmp_path / "repo"
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web1", repo)
    host_id = await submit_and_wait_created(qtbot, dialog)

    assert dialog.pages.currentWidget() is dialog.result_page
    grant = dialog.grant
    assert grant is not None and grant.host_id == host_id
    pin = control_plane.certificate.sha256
    linux = dialog.commands.linux.toPlainText()
    windows = dialog.commands.windows.toPlainText()
    assert grant.token in linux and pin in linux and control_plane.agent_url in linux
    assert grant.token in windows and pin in windows
    assert "/install/install.ps1" in windows and "-CertSha256 " + pin in windows
    assert dialog.commands.pin.toPlainText() == pin

    click(qtbot, dialog.commands.copy_linux)
    assert QGuiApplication.clipboard().text() == linux
    assert dialog.commands.copy_linux.text() == "Copied ✓"

    # The countdown ticks.
    first = dialog.countdown_text()
    assert "Token expires in" in first and ("59:" in first or "60:00" in first)
    await wait_until(lambda: dialog.countdown_text() != first, 5, "the countdown to tick")

    assert dialog.agent_state() == "waiting"
    assert "Waiting for the agent to connect" in dialog.agent_status.text()
    assert dialog.repo_state() == "hidden"
    await wait_until(lambda: len(dialog.tokens) == 1, 10, "the token list")
    assert dialog.tokens[0].id == grant.token_id and dialog.tokens[0].state == "active"

    # Regenerate: new commands, the old token is revoked.
    click(qtbot, dialog.regenerate_button)
    await wait_until(lambda: dialog.grant is not grant, 10, "a regenerated token")
    second = dialog.grant
    assert second is not None and second.token != grant.token
    assert second.token in dialog.commands.linux.toPlainText()
    assert grant.token not in dialog.commands.windows.toPlainText()
    await wait_until(
        lambda: [t.state for t in dialog.tokens] == ["active", "revoked"], 10, "token states"
    )

    # Revoke the token on screen: the dialog says so and offers Regenerate.
    button = dialog.revoke_button(second.token_id)
    assert button is not None
    click(qtbot, button)
    await wait_until(lambda: "revoked" in dialog.countdown_text(), 10, "the revoked notice")
    assert dialog.expired_regenerate.isVisibleTo(dialog)
    assert not dialog.commands.copy_linux.isEnabled()
    assert [t.state for t in dialog.tokens] == ["revoked", "revoked"]

    # A revoked token really is refused by the control plane.
    refused = AgentProcess(tmp_path / "agent-refused", restic, "web1")
    result = await asyncio.to_thread(refused.enrol, control_plane.agent_url, second.token, pin)
    assert result.returncode != 0
    assert "revoked" in (result.stderr + result.stdout)

    click(qtbot, dialog.expired_regenerate)
    await wait_until(lambda: dialog.grant is not second, 10, "a fresh token")
    third = dialog.grant
    assert third is not None
    await wait_until(lambda: "Token expires in" in dialog.countdown_text(), 5, "the countdown")
    assert not dialog.expired_regenerate.isVisibleTo(dialog)
    assert dialog.commands.copy_linux.isEnabled()

    # A real agent enrols with the token the dialog shows, using the pin it shows.
    words = shlex.split(dialog.commands.linux.toPlainText())
    token = words[words.index("--token") + 1]
    shown_pin = words[words.index("--cert-sha256") + 1]
    server = words[words.index("--server") + 1]
    assert token == third.token
    agent = AgentProcess(tmp_path / "agent", restic, "web1")
    try:
        result = await asyncio.to_thread(agent.enrol, server, token, shown_pin)
        assert result.returncode == 0, result.stderr
        agent.start()
        await wait_until(lambda: dialog.agent_state() == "online", 60, "the panel to turn green")
        assert "Agent connected" in dialog.agent_status.text()
        assert "linux" in dialog.agent_status.text()
        await wait_until(lambda: dialog.repo_state() == "ready", 90, "the repository probe")
        assert "Repository ready" in dialog.repo_status.text()
        assert not dialog.repo_hint.isVisibleTo(dialog)
        assert (repo / "config").is_file()  # the agent initialised the repository
        assert "agent is enrolled" in dialog.countdown_text()
        assert not dialog.regenerate_button.isEnabled()
        await wait_until(lambda: dialog.tokens and dialog.tokens[0].state == "used", 10, "used")
        assert dialog.revoke_button(third.token_id) is None
    finally:
        agent.stop()

    groups = await ui.hosts.list_source_groups(host_id)
    assert [(g.name, g.includes) for g in groups] == [("default", ["/etc", "/var/lib/app"])]
    # Enrolment kept the group the dialog created (with its retention) and its schedule.
    assert groups[0].retention == DEFAULT_RETENTION
    assert [s.source_group_ids for s in await ui.schedules.list_schedules(host_id)] == [
        [groups[0].id]
    ]
    assert await ui.schedules.conflicts(host_id) == []
    actions = [e.action for e in await control_plane.store.call(list_audit, limit=50)]
    assert "enrolment_token.regenerated" in actions and "enrolment_token.revoked" in actions

    # The agent stopped: the panel follows it without a reload.
    await wait_until(lambda: dialog.agent_state() == "enrolled", 30, "the agent to go away")
    dialog.close()


async def test_a_wrong_repository_password_shows_red_with_the_error(
    ui, qtbot, control_plane, tmp_path
):
    restic = restic_018()
    repo = tmp_path / "repo"
    # Someone else's repository: restic init it with a different password.
    env = child_env(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD="not-the-one-typed")
    env["RESTIC_CACHE_DIR"] = str(tmp_path / "cache")
    done = await asyncio.to_thread(
        subprocess.run, [restic, "init"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr

    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web3", repo)
    await submit_and_wait_created(qtbot, dialog)
    assert dialog.grant is not None
    agent = AgentProcess(tmp_path / "agent", restic, "web3")
    try:
        result = await asyncio.to_thread(
            agent.enrol, control_plane.agent_url, dialog.grant.token, dialog.cert_pin()
        )
        assert result.returncode == 0, result.stderr
        agent.start()
        await wait_until(lambda: dialog.repo_state() == "failed", 90, "the failed probe")
    finally:
        agent.stop()
    text = dialog.repo_status.text()
    assert "Repository check failed" in text
    assert "password" in text.lower()
    assert dialog.repo_hint.isVisibleTo(dialog)
    assert "host page" in dialog.repo_hint.text()
    assert dialog.agent_panel.styleSheet().count("#e5534b") == 1  # a red panel


async def test_the_countdown_expires_and_offers_regenerate(ui, qtbot, tmp_path):
    offset = [0.0]
    dialog = open_dialog(ui, qtbot, clock=lambda: time.time() + offset[0])
    await fill_valid_form(qtbot, dialog, "web4", tmp_path / "repo")
    await submit_and_wait_created(qtbot, dialog)
    first = dialog.grant
    assert first is not None
    assert not dialog.expired_regenerate.isVisibleTo(dialog)

    offset[0] = 3600 - 2  # two seconds left
    await wait_until(lambda: "00:02" in dialog.countdown_text(), 5, "00:02")
    await wait_until(lambda: "expired" in dialog.countdown_text(), 5, "the expiry")
    assert "00:00" in dialog.countdown_text()
    assert dialog.expired_regenerate.isVisibleTo(dialog)
    assert not dialog.commands.copy_linux.isEnabled()

    offset[0] = 0.0
    click(qtbot, dialog.expired_regenerate)
    await wait_until(lambda: dialog.grant is not first, 10, "a new token")
    await wait_until(lambda: "Token expires in" in dialog.countdown_text(), 5, "a new countdown")
    assert dialog.grant is not None and dialog.grant.token in dialog.commands.linux.toPlainText()


async def test_a_deleted_host_stops_the_dialog(ui, qtbot, tmp_path):
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "web5", tmp_path / "repo")
    host_id = await submit_and_wait_created(qtbot, dialog)
    await ui.hosts.delete_host(host_id, OPERATOR)
    await wait_until(lambda: dialog.agent_state() == "gone", 10, "the deletion to show")
    assert not dialog.regenerate_button.isEnabled()
    assert "deleted" in dialog.countdown_text()


async def test_closing_with_work_in_flight_is_harmless(ui, qtbot, tmp_path):
    dialog = AddHostDialog(ui, main_window(qtbot))
    dialog.show()
    await fill_valid_form(qtbot, dialog, "web6", tmp_path / "repo")
    click(qtbot, dialog.submit_button)
    dialog.close()  # deleted on close, before add_host returns
    await ui.runner.drain()
    await asyncio.sleep(0.3)  # the bridge's coalesced signal reaches no dead widget
    (host,) = await ui.hosts.list_hosts()
    assert host.name == "web6"
    # The schedule and retention are applied even though nobody is looking any more.
    assert [s.cron for s in await ui.schedules.list_schedules(host.id)] == ["0 2 * * *"]
    assert await ui.schedules.conflicts(host.id) == []


@pytest.mark.skipif(os.environ.get("QT_QPA_PLATFORM") != "offscreen", reason="offscreen only")
async def test_screenshots_render(ui, tmp_path):
    from tests.e2e.screenshot_add_host import render_with

    paths = await render_with(ui, tmp_path)
    assert [p.name for p in paths] == [
        "add-host-form.png",
        "add-host-keep-error.png",
        "add-host-result.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in paths)
