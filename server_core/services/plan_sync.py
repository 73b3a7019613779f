"""Keeping the agent's copy of the backup plan current.

Every change to groups, schedules, maintenance or default hooks bumps the
host's ``schedule_version`` inside the change's transaction and pushes the
new ``schedule.set`` after the commit. An agent that is offline gets it at
its next hello (the listener compares versions); the agent's
``schedule.ack`` records which version it runs.
"""

from __future__ import annotations

from agent.protocol import MAX_FRAME_BYTES, ProtocolError, encode
from server_core import agent_sync
from server_core.crypto import SecretBox
from server_core.errors import InvalidInput
from server_core.events import HostChanged, SourcesChanged
from server_core.models import Host
from server_core.services.context import ServiceContext


def bump_version(box: SecretBox, host_id: int) -> int:
    """Next plan version (store thread, inside the change's transaction).

    Refuses a plan too large for one frame, so the transaction rolls back
    instead of storing something the agent could never receive.
    """
    Host.update(schedule_version=Host.schedule_version + 1).where(Host.id == host_id).execute()
    plan = agent_sync.schedule_set(box, host_id)
    try:
        encode(plan)
    except ProtocolError:
        raise InvalidInput(
            f"this change makes the host's backup plan larger than the "
            f"{MAX_FRAME_BYTES // 1024} KiB the agent accepts in one message: "
            "use fewer or shorter paths, patterns or hooks"
        ) from None
    return plan.version


async def push(ctx: ServiceContext, host_id: int, *, config: bool = False) -> None:
    """Send the current plan (and the config, for default hooks) if the agent
    is connected, then tell listeners. Build after the commit: what goes out
    is what the database holds."""
    if ctx.agents.is_connected(host_id):
        if config:
            update = await ctx.store.call(agent_sync.config_update, ctx.box, host_id)
            await ctx.agents.send(host_id, update)
        plan = await ctx.store.call(agent_sync.schedule_set, ctx.box, host_id)
        await ctx.agents.send(host_id, plan)
    ctx.bus.publish(SourcesChanged(host_id))
    # The fleet row shows the version and the next run.
    ctx.bus.publish(HostChanged(host_id))
