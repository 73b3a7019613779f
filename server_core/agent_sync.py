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
from server_core import credentials
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
        maintenance=MaintenanceSpec(
            enabled=maint.enabled,
            forget_cron=maint.forget_cron,
            prune_cron=maint.prune_cron,
            check_cron=maint.check_cron,
            check_subset_percent=maint.check_subset_percent,
        )
        if maint is not None
        else MaintenanceSpec(),
    )


def command_for(box: SecretBox, job: Job) -> CommandRun:
    group = None
    if job.source_group_id is not None:
        row = SourceGroup.get_or_none(SourceGroup.id == job.source_group_id)
        group = group_spec(box, row) if row is not None else None
    return CommandRun(
        job_id=job.id,
        kind=job.kind,
        actor=job.actor,
        source_group=group,
        args=json.loads(job.args),
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
