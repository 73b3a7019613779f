"""The Sources, Schedules and Repo tabs (and the re-init danger zone) against a real
in-process control plane; a protocol-speaking fake agent where a job must reach one.

Waiting is bounded asyncio polling (never qtbot.waitUntil inside an async test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from agent import protocol as p
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR
from tests.e2e.test_host_view import (
    Agents,
    FakeNavigator,
    add_host,
    finish_job,
    make_view,
    until,
)
from ui_qt.context import UiContext
from ui_qt.host_tabs.schedule_dialog import ScheduleDialog
from ui_qt.host_tabs.source_group_dialog import SourceGroupDialog
from ui_qt.host_view import HostView

GROUP = {
    "name": "databases",
    "includes": ["/var/lib/postgresql"],
    "excludes": [],
    "retention": {"keep_daily": 7},
    "retry_max": 1,
    "retry_backoff_seconds": 60,
    "pre_hook": None,
    "post_hook": None,
}


@pytest.fixture
async def agents(control_plane: ControlPlane) -> AsyncIterator[Agents]:
    async with aiohttp.ClientSession() as session:
        fleet = Agents(control_plane, session)
        yield fleet
        await fleet.close()


@pytest.fixture
def navigator() -> FakeNavigator:
    return FakeNavigator()


@pytest.fixture
async def views(ui: UiContext) -> AsyncIterator[list[HostView]]:
    made: list[HostView] = []
    yield made
    for view in made:
        if shiboken6.isValid(view):
            view.hide()  # not close(): closing the last window would quit the app
            view.deleteLater()
    await asyncio.sleep(0.05)


async def host_with_group(ui: UiContext) -> tuple[int, str, int]:
    """A host (not enrolled) with one source group "default"."""
    host_id, token = await add_host(ui)
    groups = await ui.sources.list_groups(host_id)
    if not groups:
        groups = [await ui.sources.create_group(host_id, {**GROUP, "name": "default"}, OPERATOR)]
    return host_id, token, groups[0].id


def set_lines(edit: Any, text: str) -> None:
    edit.setPlainText(text)


def closed(dialog: Any) -> bool:
    """Accepted dialogs delete themselves (WA_DeleteOnClose)."""
    return not shiboken6.isValid(dialog) or not dialog.isVisible()


# -- sources -----------------------------------------------------------------------------


async def test_groups_are_added_edited_and_deleted_with_errors_at_the_field(
    qtbot, views, ui, navigator
):
    host_id, _token, _gid = await host_with_group(ui)
    view = make_view(views, ui, navigator, host_id)
    tab = view.sources_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: tab.data is not None and tab.groups, "the groups")

    # Add, with a relative path: the service's message under the includes field.
    qtbot.mouseClick(tab.add_button, Qt.MouseButton.LeftButton)
    dialog = tab.dialog
    assert isinstance(dialog, SourceGroupDialog) and dialog.isVisible()
    qtbot.keyClicks(dialog.name, "databases")
    set_lines(dialog.includes, "/var/lib/postgresql\nrelative/dir")
    set_lines(dialog.excludes, "*.tmp\n  \n*.log")
    dialog.keep["keep_hourly"].setValue(24)
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    includes_error = dialog.errors.labels["includes"]
    await until(lambda: includes_error.isVisibleTo(dialog), "the includes error")
    assert "absolute path" in includes_error.text() and "relative/dir" in includes_error.text()
    assert not dialog.errors.labels["name"].isVisibleTo(dialog)
    assert dialog.isVisible() and not dialog.saving

    set_lines(dialog.includes, "/var/lib/postgresql\n/etc/postgresql")
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: closed(dialog), "the dialog to close")
    await until(lambda: any(g.name == "databases" for g in tab.groups), "the new row")
    stored = next(g for g in await ui.sources.list_groups(host_id) if g.name == "databases")
    assert stored.includes == ["/var/lib/postgresql", "/etc/postgresql"]
    assert stored.excludes == ["*.tmp", "*.log"]
    assert stored.retention["keep_hourly"] == 24 and stored.retention["keep_daily"] == 7
    row = [g.id for g in tab.groups].index(stored.id)
    assert tab.table.item(row, tab.EXCLUDES).text() == "2 patterns"
    assert "hourly 24" in tab.table.item(row, tab.RETENTION).text()
    assert tab.table.item(row, tab.USED_BY).text() == "not scheduled"

    # Edit: a bad keep_within lands under that field (service field retention.keep_within).
    tab.select_group(stored.id)
    qtbot.mouseClick(tab.edit_button, Qt.MouseButton.LeftButton)
    dialog = tab.dialog
    assert isinstance(dialog, SourceGroupDialog) and dialog.group == stored
    assert dialog.name.text() == "databases" and dialog.keep["keep_hourly"].value() == 24
    dialog.keep_within.setText("forever")
    dialog.keep["keep_hourly"].setValue(0)  # "unset"
    assert dialog.keep["keep_hourly"].text() == "unset"
    set_lines(dialog.pre_hook, "pg_dumpall > /var/backups/all.sql")
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    within_error = dialog.errors.labels["keep_within"]
    await until(lambda: within_error.isVisibleTo(dialog), "the keep_within error")
    assert "keep_within" in within_error.text()
    dialog.keep_within.setText("30d")
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: closed(dialog), "the dialog to close")
    edited = await ui.sources.get_group(host_id, stored.id)
    assert edited.retention.get("keep_hourly") is None
    assert edited.retention["keep_within"] == "30d"
    assert edited.pre_hook == "pg_dumpall > /var/backups/all.sql"
    await until(
        lambda: tab.table.item(row, tab.HOOKS).text() == "pre", "the hooks column to update"
    )
    assert "within 30d" in tab.table.item(row, tab.RETENTION).text()

    # Delete asks first; then the row goes.
    tab.select_group(stored.id)
    qtbot.mouseClick(tab.delete_button, Qt.MouseButton.LeftButton)
    box = tab.confirm_box
    assert box is not None and "databases" in box.text()
    box.button(QMessageBox.StandardButton.Yes).click()
    await until(lambda: all(g.name != "databases" for g in tab.groups), "the row to go")
    assert not tab.refusal.isVisible()

    # The last group cannot go: the refusal says so (no confirmation needed first).
    (last,) = tab.groups
    tab.select_group(last.id)
    qtbot.mouseClick(tab.delete_button, Qt.MouseButton.LeftButton)
    await until(lambda: tab.refusal.isVisibleTo(view), "the refusal")
    assert "last group" in tab.refusal.body.text()
    assert [g.id for g in await ui.sources.list_groups(host_id)] == [last.id]


async def test_a_group_in_a_schedule_is_not_deleted_and_the_reason_names_it(
    qtbot, views, ui, navigator
):
    host_id, _token, gid = await host_with_group(ui)
    other = await ui.sources.create_group(host_id, GROUP, OPERATOR)
    schedule = await ui.schedules.create_schedule(
        host_id, {"cron": "0 3 * * *", "enabled": True, "source_group_ids": [other.id]}, OPERATOR
    )
    view = make_view(views, ui, navigator, host_id)
    tab = view.sources_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: len(tab.groups) == 2, "the groups")
    row = [g.id for g in tab.groups].index(other.id)
    assert tab.table.item(row, tab.USED_BY).text() == "every day at 03:00"
    tab.select_group(other.id)
    assert "in a schedule" in tab.delete_button.toolTip()
    qtbot.mouseClick(tab.delete_button, Qt.MouseButton.LeftButton)
    await until(lambda: tab.refusal.isVisibleTo(view), "the refusal")
    assert "Cannot delete 'databases'" in tab.refusal.title.text()
    assert f"#{schedule.id} (0 3 * * *)" in tab.refusal.body.text()
    assert len(await ui.sources.list_groups(host_id)) == 2
    assert gid in [g.id for g in tab.groups]


async def test_default_hooks_are_saved_with_the_warning_shown(qtbot, views, ui, navigator):
    host_id, _token, _gid = await host_with_group(ui)
    view = make_view(views, ui, navigator, host_id)
    tab = view.sources_tab
    view.tabs.setCurrentWidget(tab)
    box = tab.hooks_box
    await until(lambda: box.loaded == ("", ""), "the default hooks")
    assert not box.save_button.isEnabled()
    warning = box.findChildren(type(box.status))[0]
    assert "root" in warning.text() and "service user" in warning.text()
    qtbot.keyClicks(box.pre, "systemctl stop app")
    assert box.save_button.isEnabled() and box.status.text() == "Unsaved changes"
    qtbot.mouseClick(box.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: box.status.text().startswith("Saved"), "the save")
    hooks = await ui.sources.default_hooks(host_id)
    assert hooks.pre_hook == "systemctl stop app" and hooks.post_hook is None
    await until(lambda: tab.table.item(0, tab.HOOKS).text() == "host defaults", "the column")


async def test_back_up_now_with_a_bandwidth_limit(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    probe = await agent.expect(p.CommandRun)
    await finish_job(agent, probe, status="succeeded", exit_code=0, repo_status="ready")
    view = make_view(views, ui, navigator, host_id)
    tab = view.sources_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: tab.backup_buttons, "the groups")
    (group,) = tab.groups
    button = tab.backup_buttons[group.id]
    (action,) = button.menu().actions()
    action.trigger()
    dialog = tab.dialog
    assert dialog is not None and dialog.objectName() == "bandwidthDialog"
    dialog.upload.setValue(512)  # type: ignore[attr-defined]
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    command = await agent.expect(p.CommandRun)
    assert command.kind == "backup" and command.source_group.id == group.id
    assert command.bandwidth is not None and command.bandwidth.upload_kib_s == 512
    await until(lambda: navigator.jobs == [command.job_id], "the job window")


# -- schedules ------------------------------------------------------------------------------


async def test_schedule_added_with_preview_and_the_conflict_banner_appears(
    qtbot, views, ui, navigator
):
    host_id, _token, gid = await host_with_group(ui)
    group = await ui.sources.get_group(host_id, gid)
    body = {**GROUP, "name": group.name, "includes": group.includes}
    await ui.sources.update_group(
        host_id, gid, {**body, "retention": {"keep_hourly": 24, "keep_daily": 7}}, OPERATOR
    )
    view = make_view(views, ui, navigator, host_id)
    tab = view.schedules_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: tab.data is not None, "the schedules")
    assert tab.stack.currentWidget() is tab.empty
    # Not scheduled yet: the banner says so already.
    assert tab.conflicts.isVisibleTo(view)
    assert "not in any enabled schedule" in tab.conflicts.body.text()

    qtbot.mouseClick(tab.add_button, Qt.MouseButton.LeftButton)
    dialog = tab.dialog
    assert isinstance(dialog, ScheduleDialog)
    # The only group is ticked for a new schedule; the default is daily at 02:00.
    assert dialog.checked_groups() == [gid]
    assert dialog.description.text() == "Every day at 02:00"
    runs = dialog.preview.text().splitlines()
    assert len(runs) == 5 and all("02:00" in r for r in runs)
    # Live (off the loop, debounced): the hourly rule conflicts with a daily schedule.
    await until(
        lambda: dialog.conflicts.isVisibleTo(dialog) and "keep_hourly" in dialog.conflicts.text(),
        "the live conflict",
    )

    dialog.cron.setText("61 * * * *")
    cron_error = dialog.errors.labels["cron"]
    assert cron_error.isVisibleTo(dialog) and "minute" in cron_error.text()
    assert dialog.preview.text() == "—"
    quick = dialog.quick.findData("0 * * * *")
    dialog.quick.setCurrentIndex(quick)
    dialog.quick.activated.emit(quick)
    assert dialog.cron.text() == "0 * * * *"
    assert dialog.description.text() == "Every hour on the hour"
    assert not cron_error.isVisibleTo(dialog)
    await until(
        lambda: not dialog.conflict_preview.pending and not dialog.conflicts.isVisibleTo(dialog),
        "the conflict to clear",
    )

    dialog.cron.setText("30 2 * * *")
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: closed(dialog), "the dialog to close")
    await until(lambda: tab.schedules, "the new schedule")
    (schedule,) = tab.schedules
    assert schedule.cron == "30 2 * * *" and schedule.source_group_ids == [gid]
    assert tab.table.item(0, tab.DESCRIPTION).text() == "every day at 02:30"
    assert tab.table.item(0, tab.GROUPS).text() == "default"
    assert tab.table.item(0, tab.NEXT).text().startswith("in ")
    assert tab.table.item(0, tab.LAST).text() == "not yet"
    await until(lambda: view.next_run.text().startswith("in "), "the header's next backup")
    # The banner now names the retention conflict, here and on the Sources tab.
    await until(lambda: "keep_hourly" in tab.conflicts.body.text(), "the conflict banner")
    sources = view.sources_tab
    await until(lambda: "keep_hourly" in sources.conflicts.body.text(), "the Sources banner")
    assert sources.conflicts.isVisibleTo(view) is False  # another tab is current
    view.tabs.setCurrentWidget(sources)
    assert sources.conflicts.isVisibleTo(view)

    # Unticking "On" disables it through the service.
    view.tabs.setCurrentWidget(tab)
    tab.table.item(0, tab.ENABLED).setCheckState(Qt.CheckState.Unchecked)
    await until(lambda: tab.schedules and not tab.schedules[0].enabled, "the disabled schedule")
    assert not (await ui.schedules.get_schedule(host_id, schedule.id)).enabled
    assert tab.table.item(0, tab.NEXT).text() == "disabled"


async def test_an_invalid_schedule_is_refused_at_the_groups_field(qtbot, views, ui, navigator):
    host_id, _token, _gid = await host_with_group(ui)
    await ui.sources.create_group(host_id, GROUP, OPERATOR)
    view = make_view(views, ui, navigator, host_id)
    tab = view.schedules_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: tab.data is not None and len(tab.data.groups) == 2, "the groups")
    qtbot.mouseClick(tab.add_button, Qt.MouseButton.LeftButton)
    dialog = tab.dialog
    assert isinstance(dialog, ScheduleDialog) and dialog.checked_groups() == []
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    label = dialog.errors.labels["source_group_ids"]
    await until(lambda: label.isVisibleTo(dialog), "the groups error")
    assert "at least one source group" in label.text()
    assert await ui.schedules.list_schedules(host_id) == []
    dialog.reject()


# -- repo ------------------------------------------------------------------------------------


async def test_a_locked_repository_shows_a_banner_and_unlock_dispatches_a_job(
    qtbot, views, ui, agents, navigator
):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    probe = await agent.expect(p.CommandRun)
    await finish_job(agent, probe, status="succeeded", exit_code=0, repo_status="ready")
    view = make_view(views, ui, navigator, host_id)
    tab = view.repo_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: "ready" in view.repo_status.text(), "the ready status")
    assert not tab.lock_banner.isVisibleTo(view)

    # A check finds a lock left behind by a killed restic.
    check = await ui.maintenance.run_now(host_id, "check", OPERATOR)
    command = await agent.expect(p.CommandRun)
    assert command.job_id == check and command.kind == "check"
    await finish_job(
        agent,
        command,
        status="failed",
        exit_code=1,
        error="Fatal: unable to create lock in backend: repository is already locked by PID 4121",
        repo_status="locked",
    )
    await until(lambda: tab.lock_banner.isVisibleTo(view), "the lock banner")
    assert "locked" in view.repo_status.text()
    assert "#d9822b" in view.repo_status.text()  # its own colour (amber), not ready's green

    qtbot.mouseClick(tab.unlock_button, Qt.MouseButton.LeftButton)
    unlock = await agent.expect(p.CommandRun)
    assert unlock.kind == "unlock" and unlock.actor == "operator"
    await until(lambda: navigator.jobs == [unlock.job_id], "the unlock job window")
    assert "Unlock sent" in tab.lock_note.text()
    await finish_job(agent, unlock, status="succeeded", exit_code=0, repo_status="ready")
    await until(lambda: not tab.lock_banner.isVisibleTo(view), "the banner to go")


async def test_maintenance_is_edited_and_saved(qtbot, views, ui, navigator):
    host_id, _token, _gid = await host_with_group(ui)
    view = make_view(views, ui, navigator, host_id)
    tab = view.repo_tab
    view.tabs.setCurrentWidget(tab)
    box = tab.maintenance_box
    await until(lambda: box.view is not None, "the maintenance settings")
    defaults = box.view
    assert defaults is not None and defaults.enabled
    forget = box.rows["forget"]
    assert forget.on.isChecked() and forget.cron.text() == defaults.forget_cron
    assert forget.description.text() == "every day at 03:30"
    assert not box.save_button.isEnabled()

    # A broken cron: flagged while typing, refused by the service at that field.
    forget.cron.setText("0 25 * * *")
    assert forget.error.isVisibleTo(view) and "hour" in forget.error.text()
    qtbot.mouseClick(box.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: not box.saving, "the refused save")
    assert "forget_cron" in forget.error.text()
    assert (await ui.maintenance.get(host_id)).forget_cron == defaults.forget_cron

    forget.cron.setText("15 1 * * *")
    box.rows["prune"].on.setChecked(False)
    box.subset.setValue(12)
    assert box.status.text() == "Unsaved changes"
    qtbot.mouseClick(box.save_button, Qt.MouseButton.LeftButton)
    await until(lambda: box.status.text() == "Saved.", "the save")
    stored = await ui.maintenance.get(host_id)
    assert stored.forget_cron == "15 1 * * *"
    assert stored.prune_cron is None
    assert stored.check_subset_percent == 12
    assert not box.save_button.isEnabled()
    assert "off" in box.rows["prune"].next.text()
    # The host's schedule set moved on; the agent (never connected) has not acked it.
    await until(lambda: "agent at version 0 of" in view.schedule_sync.text(), "the header")


async def test_repo_stats_and_the_trend_chart_follow_the_agents_reports(
    qtbot, views, ui, agents, navigator
):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    view = make_view(views, ui, navigator, host_id)
    tab = view.repo_tab
    view.tabs.setCurrentWidget(tab)
    await until(lambda: tab.stats_box.stats is not None, "the first stats")
    assert tab.chart.stack.currentWidget() is tab.chart.empty
    gib = 1024**3
    await agent.send(
        p.RepoStatsReport(
            collected_at=time.time(),
            total_size=3 * gib,
            total_uncompressed_size=5 * gib,
            snapshot_count=4,
        )
    )
    await until(lambda: tab.stats_box.values["size"].text() == "3.0 GiB", "the new size")
    assert "×1.67" in tab.stats_box.values["raw"].text()
    assert tab.stats_box.values["snapshots"].text() == "4"
    await until(lambda: tab.chart.disk.count() == 1, "a point on the chart")
    assert tab.chart.stack.currentWidget() is tab.chart.view
    assert tab.chart.y_axis.titleText() == "GiB"
    qtbot.mouseClick(tab.chart.buttons[365], Qt.MouseButton.LeftButton)
    assert tab.chart.days == 365 and tab.chart.disk.count() == 1


async def test_bandwidth_caps_are_saved_and_pushed(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    view = make_view(views, ui, navigator, host_id)
    box = view.repo_tab.bandwidth_box
    await until(lambda: box.loaded is not None, "the caps")
    box.upload.setValue(2048)
    assert box.save_button.isEnabled()
    qtbot.mouseClick(box.save_button, Qt.MouseButton.LeftButton)
    update = await agent.expect(p.ConfigUpdate)
    assert update.bandwidth.upload_kib_s == 2048 and update.bandwidth.download_kib_s is None
    await until(lambda: "Saved" in box.status.text(), "the saved note")

    # A view opened later shows the stored caps, not "unlimited".
    again = make_view(views, ui, navigator, host_id)
    box2 = again.repo_tab.bandwidth_box
    await until(lambda: box2.loaded is not None, "the caps in a new view")
    assert box2.values() == (2048, 0)


async def test_reinit_needs_the_host_name_and_starts_init(qtbot, views, ui, agents, navigator):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    probe = await agent.expect(p.CommandRun)
    await finish_job(agent, probe, status="succeeded", exit_code=0, repo_status="ready")
    view = make_view(views, ui, navigator, host_id)
    danger = view.danger_tab
    await until(lambda: "ready" in view.repo_status.text(), "the probe result")
    view.tabs.setCurrentWidget(danger)
    await until(lambda: danger.host_name == "web1", "the host name")
    qtbot.keyClicks(danger.reinit_confirm, "web")
    assert not danger.reinit_button.isEnabled()
    qtbot.keyClicks(danger.reinit_confirm, "1")
    assert danger.reinit_button.isEnabled() and not danger.delete_button.isEnabled()
    qtbot.mouseClick(danger.reinit_button, Qt.MouseButton.LeftButton)
    command = await agent.expect(p.CommandRun)
    assert command.kind == "init" and command.actor == "operator"
    await until(lambda: navigator.jobs == [command.job_id], "the job window")
    assert danger.reinit_confirm.text() == ""


async def test_the_header_says_whether_the_agent_has_the_schedule_set(
    qtbot, views, ui, agents, navigator
):
    host_id, token = await add_host(ui)
    agent = await agents.connect(token)
    view = make_view(views, ui, navigator, host_id)
    (group,) = await ui.sources.list_groups(host_id)
    await ui.schedules.create_schedule(
        host_id, {"cron": "0 4 * * *", "enabled": True, "source_group_ids": [group.id]}, OPERATOR
    )
    pushed = await agent.expect(p.ScheduleSet)
    while (host := await ui.hosts.get_host(host_id)).schedule_version != pushed.version:
        pushed = await agent.expect(p.ScheduleSet)
    await until(
        lambda: f"agent at version 0 of {pushed.version}" in view.schedule_sync.text(),
        "the pending version",
    )
    assert host.schedule_acked_version == 0
    await agent.send(p.ScheduleAck(version=pushed.version))
    await until(lambda: "agent in sync" in view.schedule_sync.text(), "the acked version")
    assert "agent in sync" in view.schedules_tab.sync.text()
