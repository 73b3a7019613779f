"""AlertService against a real SQLite store: dedup, lifecycle, refusals,
audit, published changes, and the host's presence mode."""

from __future__ import annotations

import pytest

from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.events import AlertChanged, HostChanged
from server_core.services.alerts import AlertService
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR, Actor

from .conftest import Services, add_host

API = Actor("api", "token-1")


@pytest.fixture
def alerts(svc: Services) -> AlertService:
    return AlertService(svc.ctx)


def changes(svc: Services) -> list[tuple[int, str]]:
    return [(e.alert_id, e.transition) for e in svc.events if isinstance(e, AlertChanged)]


async def audit_of(svc: Services, action: str) -> list:
    return await svc.store.call(list_audit, action=action)


async def test_fire_raises_once_then_bumps_the_same_key(svc, alerts):
    host = await add_host(svc)
    first = await alerts.fire("update_failed", host, "Update of the agent on web1 failed: timeout")
    assert (first.kind, first.severity, first.status, first.count) == (
        "update_failed",
        "warning",
        "open",
        1,
    )
    assert first.host_name == "web1"
    second = await alerts.fire("update_failed", host, "Update failed again: checksum mismatch")
    assert second.id == first.id
    assert second.count == 2
    assert second.message == "Update failed again: checksum mismatch"
    assert second.last_seen_at >= first.last_seen_at
    assert changes(svc) == [(first.id, "raised"), (first.id, "bumped")]
    # A bump is not a new problem: one audit entry, for the raise.
    raised = await audit_of(svc, "alert.raised")
    assert [(a.actor_kind, a.target_id) for a in raised] == [("system", str(first.id))]
    assert raised[0].payload["kind"] == "update_failed"


async def test_fire_keys_by_suffix_and_refuses_unknown_kinds_and_hosts(svc, alerts):
    host = await add_host(svc)
    a = await alerts.fire("backup_failed", host, "a", key_suffix=1)
    b = await alerts.fire("backup_failed", host, "b", key_suffix=2)
    assert a.id != b.id
    with pytest.raises(InvalidInput) as err:
        await alerts.fire("disk_full", host, "x")
    assert err.value.field == "kind"
    with pytest.raises(NotFound):
        await alerts.fire("update_failed", 999, "x")


async def test_acknowledge_then_resolve_is_audited_with_the_actor(svc, alerts):
    host = await add_host(svc)
    alert = await alerts.fire("update_failed", host, "boom")
    [acked] = await alerts.acknowledge([alert.id], OPERATOR)
    assert acked.status == "acknowledged" and acked.acknowledged_at is not None
    [resolved] = await alerts.resolve([alert.id], API)
    assert resolved.status == "resolved" and resolved.resolved_at is not None
    assert changes(svc)[-2:] == [(alert.id, "acknowledged"), (alert.id, "resolved")]
    [ack_entry] = await audit_of(svc, "alert.acknowledged")
    assert (ack_entry.actor_kind, ack_entry.target_kind, ack_entry.target_id) == (
        "operator",
        "alert",
        str(alert.id),
    )
    assert ack_entry.payload["before"] == "open"
    [res_entry] = await audit_of(svc, "alert.resolved")
    assert (res_entry.actor_kind, res_entry.actor_id) == ("api", "token-1")
    assert res_entry.payload["before"] == "acknowledged"


async def test_an_open_alert_can_be_resolved_directly(svc, alerts):
    host = await add_host(svc)
    alert = await alerts.fire("update_failed", host, "boom")
    [resolved] = await alerts.resolve([alert.id], OPERATOR)
    assert resolved.status == "resolved" and resolved.acknowledged_at is None


async def test_refused_transitions_name_the_alert_and_change_nothing(svc, alerts):
    host = await add_host(svc)
    one = await alerts.fire("update_failed", host, "boom")
    two = await alerts.fire("stale_backup", host, "late")
    await alerts.acknowledge([one.id], OPERATOR)
    with pytest.raises(Conflict) as err:
        await alerts.acknowledge([two.id, one.id], OPERATOR)
    assert f"alert {one.id} (update_failed on web1) is already acknowledged" in err.value.message
    # All or nothing: the open one was not acknowledged either.
    assert (await alerts.get_alert(two.id)).status == "open"
    await alerts.resolve([one.id], OPERATOR)
    with pytest.raises(Conflict, match="already resolved"):
        await alerts.resolve([one.id], OPERATOR)
    with pytest.raises(Conflict, match="already resolved"):
        await alerts.acknowledge([one.id], OPERATOR)
    with pytest.raises(NotFound, match="alert 9999 does not exist"):
        await alerts.resolve([two.id, 9999], OPERATOR)
    assert (await alerts.get_alert(two.id)).status == "open"
    for bad in ([], "1", [0], [True], ["x"]):
        with pytest.raises(InvalidInput) as invalid:
            await alerts.acknowledge(bad, OPERATOR)
        assert invalid.value.field == "ids"
    assert len(await audit_of(svc, "alert.acknowledged")) == 1
    assert len(await audit_of(svc, "alert.resolved")) == 1


async def test_a_resolved_key_that_fires_again_is_a_new_alert(svc, alerts):
    host = await add_host(svc)
    old = await alerts.fire("update_failed", host, "boom")
    await alerts.resolve([old.id], OPERATOR)
    new = await alerts.fire("update_failed", host, "boom again")
    assert new.id != old.id and new.count == 1 and new.status == "open"
    # An acknowledged alert that fires again stays acknowledged and counts up.
    await alerts.acknowledge([new.id], OPERATOR)
    again = await alerts.fire("update_failed", host, "and again")
    assert (again.id, again.status, again.count) == (new.id, "acknowledged", 2)


async def test_clear_resolves_as_the_system(svc, alerts):
    host = await add_host(svc)
    alert = await alerts.fire("update_failed", host, "boom")
    await alerts.clear("update_failed", host, reason="the agent reconnected at the new version")
    assert (await alerts.get_alert(alert.id)).status == "resolved"
    [entry] = await audit_of(svc, "alert.resolved")
    assert entry.actor_kind == "system"
    assert entry.payload["reason"] == "the agent reconnected at the new version"
    await alerts.clear("update_failed", host)  # nothing unresolved: nothing happens
    assert len(await audit_of(svc, "alert.resolved")) == 1


async def test_list_filters_orders_and_counts(svc, alerts):
    now = [1000.0]
    timed = AlertService(svc.ctx, clock=lambda: now[0])
    web = await add_host(svc, "web1")
    db = await add_host(svc, "db1")
    a = await timed.fire("stale_backup", web, "late")
    now[0] += 10
    b = await timed.fire("backup_failed", db, "broken", key_suffix=1)
    now[0] += 10
    c = await timed.fire("update_failed", web, "update")
    await timed.acknowledge([c.id], OPERATOR)
    await timed.resolve([a.id], OPERATOR)
    assert [v.id for v in await alerts.list_alerts()] == [c.id, b.id, a.id]
    assert [v.id for v in await alerts.list_alerts(status="open")] == [b.id]
    assert [v.id for v in await alerts.list_alerts(host_id=web)] == [c.id, a.id]
    assert [v.id for v in await alerts.list_alerts(limit=1)] == [c.id]
    counts = await alerts.counts()
    assert (counts.open, counts.acknowledged, counts.worst_severity) == (1, 1, "critical")
    with pytest.raises(InvalidInput) as err:
        await alerts.list_alerts(status="closed")
    assert err.value.field == "status"
    with pytest.raises(InvalidInput):
        await alerts.list_alerts(limit=0)
    with pytest.raises(NotFound):
        await alerts.get_alert(12345)
    # The fleet row counts what is not resolved yet: open and acknowledged.
    assert (await svc.hosts.get_host(web)).open_alerts == 1
    assert (await svc.hosts.get_host(db)).open_alerts == 1
    await alerts.resolve([b.id, c.id], OPERATOR)
    assert (await svc.hosts.get_host(web)).open_alerts == 0
    empty = await alerts.counts()
    assert (empty.open, empty.acknowledged, empty.worst_severity) == (0, 0, None)


async def test_presence_mode_is_validated_audited_and_published(svc):
    host = await add_host(svc)
    view = await svc.hosts.set_presence_mode(host, "laptop", OPERATOR)
    assert view.presence_mode == "laptop"
    assert HostChanged(host) in svc.events
    [entry] = await audit_of(svc, "host.presence_changed")
    assert entry.payload == {"before": "always_on", "after": "laptop"}
    svc.events.clear()
    # Setting what is already set changes nothing and says nothing.
    await svc.hosts.set_presence_mode(host, "laptop", OPERATOR)
    assert svc.events == []
    assert len(await audit_of(svc, "host.presence_changed")) == 1
    for bad in ("sometimes", None, ""):
        with pytest.raises(InvalidInput) as err:
            await svc.hosts.set_presence_mode(host, bad, OPERATOR)
        assert err.value.field == "mode"
    with pytest.raises(NotFound):
        await svc.hosts.set_presence_mode(999, "laptop", OPERATOR)
