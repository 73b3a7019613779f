"""HostService.set_tags against a real SQLite store: validation, audit, event."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.protocol import Message
from server_core.crypto import SecretBox
from server_core.errors import InvalidInput, NotFound
from server_core.events import Event, EventBus, HostChanged
from server_core.models import Host
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR, ServiceContext
from server_core.services.hosts import HostService
from server_core.services.jobs import JobService
from server_core.store import Store


class NoAgents:
    def is_connected(self, host_id: int) -> bool:
        return False

    async def send(self, host_id: int, message: Message) -> bool:
        return False

    async def disconnect(self, host_id: int, reason: str) -> None:
        return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "db.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def hosts(store: Store, events: list[Event]) -> HostService:
    bus = EventBus()
    bus.subscribe(events.append)
    ctx = ServiceContext(store=store, box=SecretBox(os.urandom(32)), bus=bus, agents=NoAgents())
    return HostService(ctx, JobService(ctx))


async def new_host(store: Store, tags: list[str]) -> int:
    host = await store.transaction(
        lambda: Host.create(name="web1", created_at=0, tags=json.dumps(tags))
    )
    return int(host.id)


async def tag_audits(store: Store) -> list[dict[str, object]]:
    rows = await store.call(lambda: list_audit(action="host.tags_updated"))
    return [dict(r.payload, actor=r.actor_kind, target=r.target_id) for r in rows]


async def test_tags_are_replaced_audited_and_announced(store, hosts, events):
    host_id = await new_host(store, ["old"])
    stored = await hosts.set_tags(host_id, ["prod", "db", "prod", "site:fra-1/rack.2"], OPERATOR)
    assert stored == ["prod", "db", "site:fra-1/rack.2"]  # de-duplicated, order kept
    assert (await hosts.get_host(host_id)).tags == stored
    assert await tag_audits(store) == [
        {"before": ["old"], "after": stored, "actor": "operator", "target": str(host_id)}
    ]
    assert events == [HostChanged(host_id)]


async def test_clearing_tags_is_allowed(store, hosts):
    host_id = await new_host(store, ["a", "b"])
    assert await hosts.set_tags(host_id, [], OPERATOR) == []
    assert (await hosts.get_host(host_id)).tags == []


async def test_unchanged_tags_are_not_audited_twice(store, hosts, events):
    host_id = await new_host(store, [])
    await hosts.set_tags(host_id, ["x"], OPERATOR)
    await hosts.set_tags(host_id, ["x"], OPERATOR)
    assert len(await tag_audits(store)) == 1
    assert events == [HostChanged(host_id)]


@pytest.mark.parametrize(
    "bad",
    [
        ["has space"],
        [""],
        ["-leading-dash"],
        ["x" * 65],
        ["ok", 3],
        "prod",  # a string is not a list
        ["semi;colon"],
    ],
)
async def test_invalid_tags_are_refused_and_nothing_changes(store, hosts, events, bad):
    host_id = await new_host(store, ["keep"])
    with pytest.raises(InvalidInput) as err:
        await hosts.set_tags(host_id, bad, OPERATOR)
    assert err.value.field == "tags"
    assert "'tags' must be" in err.value.message
    assert (await hosts.get_host(host_id)).tags == ["keep"]
    assert await tag_audits(store) == []
    assert events == []


async def test_unknown_host(hosts):
    with pytest.raises(NotFound):
        await hosts.set_tags(999, ["a"], OPERATOR)
