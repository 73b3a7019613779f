"""SourceService against a real SQLite store: CRUD, hooks at rest, the plan
pushed with a new version, deletion rules, Back up now with a bandwidth override."""

from __future__ import annotations

import pytest

from agent.protocol import CommandRun, ConfigUpdate, ScheduleSet
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import HostChanged, SourcesChanged
from server_core.models import Host, Job, SourceGroup
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR

from .conftest import GROUP, Services, add_host


async def version(svc: Services, host_id: int) -> int:
    return int(await svc.store.call(lambda: Host.get_by_id(host_id).schedule_version))


async def test_create_returns_the_view_bumps_the_version_and_pushes(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    view = await svc.sources.create_group(host_id, dict(GROUP, pre_hook="echo hi"), OPERATOR)
    assert view.name == "etc" and view.includes == ["/etc"] and view.excludes == ["*.tmp"]
    assert view.retention["keep_daily"] == 7 and view.retention["keep_hourly"] is None
    assert view.pre_hook == "echo hi" and view.has_pre_hook and not view.has_post_hook
    assert view.schedule_ids == []
    assert await version(svc, host_id) == 1
    (plan,) = svc.agents.of_type(ScheduleSet)
    assert isinstance(plan, ScheduleSet)
    assert plan.version == 1
    assert [g.name for g in plan.source_groups] == ["etc"]
    assert plan.source_groups[0].pre_hook == "echo hi"
    assert plan.source_groups[0].retention.keep_weekly == 4
    assert SourcesChanged(host_id) in svc.events and HostChanged(host_id) in svc.events
    assert await svc.sources.get_group(host_id, view.id) == view
    assert await svc.sources.list_groups(host_id) == [view]


async def test_hooks_are_encrypted_at_rest_and_kept_out_of_the_audit(svc: Services) -> None:
    host_id = await add_host(svc)
    secret = "curl -H 'Token: s3cr3t-hook-token' https://example/ping"
    view = await svc.sources.create_group(host_id, dict(GROUP, post_hook=secret), OPERATOR)
    blob = await svc.store.call(lambda: bytes(SourceGroup.get_by_id(view.id).hooks_enc))
    assert b"s3cr3t" not in blob
    raw = (svc.store.path).read_bytes()
    assert b"s3cr3t-hook-token" not in raw
    entries = await svc.store.call(lambda: list_audit(action="source_group.created"))
    assert entries[0].payload["post_hook"] is True
    assert "s3cr3t" not in str(entries[0].payload)
    # A group's sealed hooks cannot be moved onto another row.
    other = await svc.sources.create_group(host_id, dict(GROUP, name="other"), OPERATOR)

    def swap() -> None:
        SourceGroup.update(hooks_enc=blob).where(SourceGroup.id == other.id).execute()

    await svc.store.call(swap)
    with pytest.raises(Exception, match=r"(?i)decrypt|tag|authentic"):
        await svc.sources.get_group(host_id, other.id)


async def test_offline_host_gets_nothing_now_but_the_version_moves(svc: Services) -> None:
    host_id = await add_host(svc, online=False)
    await svc.sources.create_group(host_id, GROUP, OPERATOR)
    assert svc.agents.sent == []
    assert await version(svc, host_id) == 1


async def test_update_replaces_the_group(svc: Services) -> None:
    host_id = await add_host(svc)
    view = await svc.sources.create_group(host_id, dict(GROUP, pre_hook="a"), OPERATOR)
    updated = await svc.sources.update_group(
        host_id, view.id, {"name": "etc2", "includes": ["/etc", "/opt"]}, OPERATOR
    )
    assert updated.name == "etc2" and updated.includes == ["/etc", "/opt"]
    assert updated.retention["keep_daily"] is None  # full replace: left out = default
    assert updated.pre_hook is None and not updated.has_pre_hook
    assert updated.created_at == view.created_at and updated.updated_at >= view.updated_at
    assert await version(svc, host_id) == 2
    entries = await svc.store.call(lambda: list_audit(action="source_group.updated"))
    assert entries[0].payload["before_name"] == "etc" and entries[0].payload["hooks_changed"]


async def test_names_are_unique_per_host_ignoring_case(svc: Services) -> None:
    a = await add_host(svc, "a")
    b = await add_host(svc, "b")
    await svc.sources.create_group(a, GROUP, OPERATOR)
    await svc.sources.create_group(b, GROUP, OPERATOR)  # another host: fine
    with pytest.raises(Conflict) as err:
        await svc.sources.create_group(a, dict(GROUP, name="ETC"), OPERATOR)
    assert err.value.field == "name" and "'etc' already exists" in err.value.message
    other = await svc.sources.create_group(a, dict(GROUP, name="var"), OPERATOR)
    with pytest.raises(Conflict):
        await svc.sources.update_group(a, other.id, dict(GROUP, name="Etc"), OPERATOR)
    # Renaming a group to its own name (other case) is fine.
    assert (
        await svc.sources.update_group(a, other.id, dict(GROUP, name="VAR"), OPERATOR)
    ).name == "VAR"


async def test_invalid_body_changes_nothing(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    with pytest.raises(InvalidInput) as err:
        await svc.sources.create_group(host_id, dict(GROUP, includes=["relative"]), OPERATOR)
    assert err.value.field == "includes"
    assert await svc.sources.list_groups(host_id) == []
    assert svc.agents.sent == [] and svc.events == []
    assert await version(svc, host_id) == 0


async def test_a_plan_too_big_for_one_frame_is_refused_and_rolled_back(svc: Services) -> None:
    host_id = await add_host(svc)
    big = ["/" + "x" * 4000 + str(i) for i in range(300)]  # ~1.2 MB of paths
    with pytest.raises(InvalidInput, match="larger than the 1024 KiB"):
        await svc.sources.create_group(host_id, dict(GROUP, includes=big), OPERATOR)
    assert await svc.sources.list_groups(host_id) == []
    assert await version(svc, host_id) == 0


async def test_delete_rules(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    etc = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    with pytest.raises(Conflict, match="last group"):
        await svc.sources.delete_group(host_id, etc.id, OPERATOR)
    var = await svc.sources.create_group(host_id, dict(GROUP, name="var"), OPERATOR)
    sched = await svc.schedules.create_schedule(
        host_id, {"cron": "0 2 * * *", "source_group_ids": [var.id]}, OPERATOR
    )
    with pytest.raises(Conflict) as err:
        await svc.sources.delete_group(host_id, var.id, OPERATOR)
    assert f"#{sched.id} (0 2 * * *)" in err.value.message
    assert (await svc.sources.get_group(host_id, var.id)).schedule_ids == [sched.id]
    await svc.schedules.delete_schedule(host_id, sched.id, OPERATOR)
    before = await version(svc, host_id)
    await svc.sources.delete_group(host_id, var.id, OPERATOR)
    assert await version(svc, host_id) == before + 1
    assert [g.name for g in await svc.sources.list_groups(host_id)] == ["etc"]
    last_plan = svc.agents.of_type(ScheduleSet)[-1]
    assert isinstance(last_plan, ScheduleSet)
    assert [g.name for g in last_plan.source_groups] == ["etc"]
    with pytest.raises(NotFound):
        await svc.sources.delete_group(host_id, var.id, OPERATOR)


async def test_groups_of_another_host_are_not_found(svc: Services) -> None:
    a = await add_host(svc, "a")
    b = await add_host(svc, "b")
    group = await svc.sources.create_group(a, GROUP, OPERATOR)
    with pytest.raises(NotFound, match="on host b"):
        await svc.sources.get_group(b, group.id)
    with pytest.raises(NotFound):
        await svc.sources.update_group(b, group.id, GROUP, OPERATOR)
    with pytest.raises(NotFound, match="host 999"):
        await svc.sources.list_groups(999)


async def test_backup_now_with_a_one_off_bandwidth_cap(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    group = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    await svc.hosts.set_bandwidth(host_id, 1000, 2000, OPERATOR)
    svc.agents.sent.clear()

    plain = await svc.sources.backup_now(host_id, group.id, OPERATOR)
    capped = await svc.sources.backup_now(host_id, group.id, OPERATOR, upload_kib_s=100)
    runs = {m.job_id: m for m in svc.agents.of_type(CommandRun) if isinstance(m, CommandRun)}
    assert runs[plain].bandwidth is None  # the agent applies the host caps it holds
    assert runs[plain].source_group is not None and runs[plain].source_group.name == "etc"
    # The override wins where it speaks; the host's cap fills the other direction.
    bw = runs[capped].bandwidth
    assert bw is not None and (bw.upload_kib_s, bw.download_kib_s) == (100, 2000)
    assert "bandwidth" not in runs[capped].args
    assert runs[capped].credentials is None  # backups never get the admin slot
    job = await svc.store.call(lambda: Job.get_by_id(capped))
    assert job.actor == "operator" and '"upload_kib_s": 100' in job.args

    with pytest.raises(InvalidInput) as err:
        await svc.sources.backup_now(host_id, group.id, OPERATOR, download_kib_s=0)
    assert err.value.field == "download_kib_s"
    with pytest.raises(NotFound):
        await svc.sources.backup_now(host_id, 999, OPERATOR)


async def test_backup_now_needs_the_agent(svc: Services) -> None:
    host_id = await add_host(svc, online=False)
    group = await svc.sources.create_group(host_id, GROUP, OPERATOR)
    with pytest.raises(Conflict, match="offline"):
        await svc.sources.backup_now(host_id, group.id, OPERATOR)


async def test_default_hooks(svc: Services) -> None:
    host_id = await add_host(svc, online=True)
    assert (await svc.sources.default_hooks(host_id)).pre_hook is None
    view = await svc.sources.set_default_hooks(host_id, "systemctl stop app", None, OPERATOR)
    assert (view.pre_hook, view.post_hook) == ("systemctl stop app", None)
    assert await svc.sources.default_hooks(host_id) == view
    (config,) = svc.agents.of_type(ConfigUpdate)
    assert isinstance(config, ConfigUpdate) and config.default_pre_hook == "systemctl stop app"
    assert len(svc.agents.of_type(ScheduleSet)) == 1
    assert await version(svc, host_id) == 1
    raw = await svc.store.call(lambda: bytes(Host.get_by_id(host_id).default_hooks_enc))
    assert b"systemctl" not in raw
    cleared = await svc.sources.set_default_hooks(host_id, "", None, OPERATOR)
    assert cleared.pre_hook is None
    with pytest.raises(InvalidInput) as err:
        await svc.sources.set_default_hooks(host_id, None, "x" * 9000, OPERATOR)
    assert err.value.field == "post_hook"
