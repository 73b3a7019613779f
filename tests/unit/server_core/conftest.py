"""Shared fixtures for the backup-plan services (sources, schedules,
maintenance) against a real SQLite store.

The agent link is a recorder, not a mock of behaviour under test: the
services only hand it messages, and the tests read what was handed over.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.protocol import Message, RepoCredentials, encode
from server_core import credentials
from server_core.crypto import SecretBox
from server_core.events import Event, EventBus
from server_core.models import Host
from server_core.services.context import ServiceContext
from server_core.services.hosts import HostService
from server_core.services.jobs import JobService
from server_core.services.maintenance import MaintenanceService
from server_core.services.schedules import ScheduleService
from server_core.services.sources import SourceService
from server_core.store import Store


@dataclass
class RecordingAgents:
    """An AgentLink that records what would go on the wire (encoded, so a
    message too big or malformed for the protocol fails here too)."""

    connected: set[int] = field(default_factory=set)
    sent: list[tuple[int, Message]] = field(default_factory=list)

    def is_connected(self, host_id: int) -> bool:
        return host_id in self.connected

    async def send(self, host_id: int, message: Message) -> bool:
        if host_id not in self.connected:
            return False
        encode(message)
        self.sent.append((host_id, message))
        return True

    async def disconnect(self, host_id: int, reason: str) -> None:
        self.connected.discard(host_id)

    def of_type(self, cls: type[Message]) -> list[Message]:
        return [m for _, m in self.sent if isinstance(m, cls)]


@dataclass
class Services:
    store: Store
    ctx: ServiceContext
    agents: RecordingAgents
    events: list[Event]
    jobs: JobService
    hosts: HostService
    sources: SourceService
    schedules: ScheduleService
    maintenance: MaintenanceService


@pytest.fixture
async def plan_store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "db.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def svc(plan_store: Store) -> Services:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    agents = RecordingAgents()
    ctx = ServiceContext(store=plan_store, box=SecretBox(os.urandom(32)), bus=bus, agents=agents)
    jobs = JobService(ctx)
    return Services(
        store=plan_store,
        ctx=ctx,
        agents=agents,
        events=events,
        jobs=jobs,
        hosts=HostService(ctx, jobs),
        sources=SourceService(ctx, jobs),
        schedules=ScheduleService(ctx),
        maintenance=MaintenanceService(ctx, jobs),
    )


async def add_host(
    svc: Services,
    name: str = "web1",
    *,
    admin: bool = False,
    online: bool = False,
    repo_status: str = "ready",
) -> int:
    """An enrolled host with an everyday (and optionally admin) credential."""

    def run() -> int:
        host = Host.create(
            name=name,
            created_at=time.time(),
            enrolled_at=time.time(),
            tags=json.dumps([]),
            repo_status=repo_status,
            online=online,
        )
        box = svc.ctx.box
        credentials.save(box, host.id, "everyday", RepoCredentials(url="/srv/r", password="day"))
        if admin:
            credentials.save(
                box,
                host.id,
                "admin",
                RepoCredentials(url="rest:http://admin:adm1n@h/r", password="adminpw"),
            )
        return int(host.id)

    host_id = await svc.store.transaction(run)
    if online:
        svc.agents.connected.add(host_id)
    return host_id


GROUP = {
    "name": "etc",
    "includes": ["/etc"],
    "excludes": ["*.tmp"],
    "retention": {"keep_daily": 7, "keep_weekly": 4},
    "retry_max": 2,
    "retry_backoff_seconds": 60,
}
