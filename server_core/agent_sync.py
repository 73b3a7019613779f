"""What the control plane pushes to an agent: its config, its schedule set,
and the jobs waiting for it. Functions run on the store thread."""

from __future__ import annotations

import json
from typing import Any

from agent.protocol import (
    Bandwidth,
    CommandRun,
    ConfigUpdate,
    MaintenanceSpec,
    Retention,
    ScheduleSet,
    ScheduleSpec,
    SourceGroupSpec,
)
from server_core import credentials, maintenance_plan
from server_core.crypto import SecretBox, row_aad
from server_core.models import Host, Job, Maintenance, Schedule, ScheduleGroup, SourceGroup


def group_hooks(box: SecretBox, group: SourceGroup) -> dict[str, Any]:
    if group.hooks_enc is None:
        return {}
    hooks: dict[str, Any] = box.open_json(
        bytes(group.hooks_enc), row_aad("source_group", group.id, "hooks")
    )
    return hooks


def group_spec(box: SecretBox, group: SourceGroup) -> SourceGroupSpec:
    hooks = group_hooks(box, group)
    return SourceGroupSpec(
        id=group.id,
        name=group.name,
        includes=list(json.loads(group.includes)),
        excludes=list(json.loads(group.excludes)),
        retention=Retention(**json.loads(group.retention)),
        retry_max=group.retry_max,
        retry_backoff_seconds=group.retry_backoff_seconds,
        pre_hook=hooks.get("pre"),
        post_hook=hooks.get("post"),
    )


def config_update(box: SecretBox, host_id: int) -> ConfigUpdate:
    host = Host.get_by_id(host_id)
    hooks: dict[str, Any] = {}
    if host.default_hooks_enc is not None:
        hooks = box.open_json(bytes(host.default_hooks_enc), row_aad("host", host_id, "hooks"))
    return ConfigUpdate(
        repository=credentials.load(box, host_id, "everyday"),
        bandwidth=Bandwidth(upload_kib_s=host.upload_kib_s, download_kib_s=host.download_kib_s),
        default_pre_hook=hooks.get("pre"),
        default_post_hook=hooks.get("post"),
        restore_dir=host.restore_dir,
    )


def schedule_set(box: SecretBox, host_id: int) -> ScheduleSet:
    host = Host.get_by_id(host_id)
    groups = list(SourceGroup.select().where(SourceGroup.host == host_id).order_by(SourceGroup.id))
    schedules = list(Schedule.select().where(Schedule.host == host_id).order_by(Schedule.id))
    links: dict[int, list[int]] = {}
    for link in ScheduleGroup.select().join(Schedule).where(Schedule.host == host_id):
        links.setdefault(link.schedule_id, []).append(link.source_group_id)
    maint = Maintenance.get_or_none(Maintenance.host == host_id)
    # A host whose plan row does not exist yet runs the defaults it would get.
    spec = (
        MaintenanceSpec(
            enabled=maint.enabled,
            forget_cron=maint.forget_cron,
            prune_cron=maint.prune_cron,
            check_cron=maint.check_cron,
            check_subset_percent=maint.check_subset_percent,
        )
        if maint is not None
        else MaintenanceSpec(**maintenance_plan.DEFAULTS)
    )
    return ScheduleSet(
        version=host.schedule_version,
        schedules=[
            ScheduleSpec(
                id=s.id,
                cron=s.cron,
                enabled=s.enabled,
                source_group_ids=sorted(links.get(s.id, [])),
            )
            for s in schedules
        ],
        source_groups=[group_spec(box, g) for g in groups],
        maintenance=spec,
    )


# Jobs that delete data: on an append-only repository only the admin
# credential may do that. It goes out with the job and the agent drops it after.
ADMIN_KINDS = ("forget", "prune")


def run_bandwidth(host: Host, override: Any) -> Bandwidth | None:
    """The caps for one job: a per-run override wins, the host's caps fill
    in the direction it leaves open. None means "the agent's host caps"."""
    if not isinstance(override, dict) or not override:
        return None
    return Bandwidth(
        upload_kib_s=override.get("upload_kib_s") or host.upload_kib_s,
        download_kib_s=override.get("download_kib_s") or host.download_kib_s,
    )


def forget_groups(host_id: int) -> list[dict[str, Any]]:
    """Each group's tag and retention as forget applies them (groups without
    any rule are left out: forget keeps everything of theirs)."""
    out = []
    for g in SourceGroup.select().where(SourceGroup.host == host_id).order_by(SourceGroup.id):
        rules = {k: v for k, v in json.loads(g.retention).items() if v is not None}
        if rules:
            out.append({"id": g.id, "name": g.name, "retention": rules})
    return out


def command_for(box: SecretBox, job: Job) -> CommandRun:
    group = None
    if job.source_group_id is not None:
        row = SourceGroup.get_or_none(SourceGroup.id == job.source_group_id)
        group = group_spec(box, row) if row is not None else None
    args: dict[str, Any] = json.loads(job.args)
    bandwidth = run_bandwidth(Host.get_by_id(job.host_id), args.pop("bandwidth", None))
    admin = None
    if job.kind in ADMIN_KINDS:
        # None when there is no admin slot: the agent uses its everyday one.
        admin = credentials.load(box, job.host_id, "admin")
    if job.kind == "forget" and "groups" not in args:
        # The retention as it is when the job goes out, not when it was queued.
        args["groups"] = forget_groups(job.host_id)
    return CommandRun(
        job_id=job.id,
        kind=job.kind,
        actor=job.actor,
        source_group=group,
        credentials=admin,
        bandwidth=bandwidth,
        args=args,
    )


def pending_for_agent(box: SecretBox, host_id: int) -> tuple[list[CommandRun], list[str]]:
    """What a (re)connecting agent must hear: queued jobs to run, and jobs
    whose cancellation was asked for while it was away."""
    open_jobs = list(
        Job.select()
        .where((Job.host == host_id) & Job.status.in_(("queued", "running")))
        .order_by(Job.created_at)
    )
    commands = [
        command_for(box, job)
        for job in open_jobs
        if job.status == "queued" and job.cancel_requested_at is None
    ]
    cancels = [str(job.id) for job in open_jobs if job.cancel_requested_at is not None]
    return commands, cancels
