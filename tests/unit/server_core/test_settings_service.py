"""Metrics settings: opt-in switch and a scrape token kept only as its SHA-256."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from server_core.errors import InvalidInput
from server_core.models import Setting
from server_core.services.audit_log import list_audit
from server_core.services.context import Actor
from server_core.services.settings import MetricsAccess, SettingsService
from server_core.views import MetricsSettingsView

from .conftest import Services

ADMIN = Actor("api", "token:1")


@pytest.fixture
def settings(svc: Services) -> SettingsService:
    return SettingsService(svc.ctx)


async def stored(svc: Services) -> str:
    row = await svc.store.call(lambda: Setting.get_or_none(Setting.key == "metrics"))
    return "" if row is None else str(row.value)


async def audit_of(svc: Services, action: str) -> list[Any]:
    return await svc.store.call(lambda: list_audit(action=action))


async def test_off_and_tokenless_by_default(settings: SettingsService) -> None:
    assert await settings.metrics_settings() == MetricsSettingsView(enabled=False, token_set=False)
    assert await settings.metrics_access(None) is MetricsAccess.DISABLED
    assert not await settings.check_metrics_token("")


async def test_switching_is_audited_once_per_change(
    svc: Services, settings: SettingsService
) -> None:
    view = await settings.set_metrics(True, ADMIN)
    assert view == MetricsSettingsView(enabled=True, token_set=False)
    assert await settings.set_metrics(True, ADMIN) == view  # no change, no entry
    await settings.set_metrics(False, ADMIN)
    entries = await audit_of(svc, "settings.metrics_updated")
    assert [e.payload["after"]["enabled"] for e in entries] == [False, True]
    assert entries[0].actor_kind == "api" and entries[0].actor_id == "token:1"
    assert not (await settings.metrics_settings()).enabled


@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_enabled_must_be_a_boolean(settings: SettingsService, value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        await settings.set_metrics(value, ADMIN)
    assert err.value.field == "enabled"


async def test_token_is_shown_once_and_only_its_hash_is_kept(
    svc: Services, settings: SettingsService
) -> None:
    first = await settings.new_metrics_token(ADMIN)
    assert first.startswith("rmmetrics_") and len(first) > 40
    raw_row = await stored(svc)
    assert first not in raw_row
    assert hashlib.sha256(first.encode()).hexdigest() in raw_row
    assert (await settings.metrics_settings()).token_set
    assert await settings.check_metrics_token(first)
    assert not await settings.check_metrics_token(first + "x")
    assert not await settings.check_metrics_token("")

    second = await settings.new_metrics_token(ADMIN)
    assert second != first
    assert await settings.check_metrics_token(second)
    assert not await settings.check_metrics_token(first)  # the old one stops working

    entries = await audit_of(svc, "settings.metrics_token_created")
    assert [e.payload for e in entries] == [{"replaced": True}, {"replaced": False}]
    assert all(first not in str(e) and second not in str(e) for e in entries)


async def test_scrape_access(settings: SettingsService) -> None:
    token = await settings.new_metrics_token(ADMIN)
    # A token alone does not open the endpoint.
    assert await settings.metrics_access(f"Bearer {token}") is MetricsAccess.DISABLED
    await settings.set_metrics(True, ADMIN)
    assert await settings.metrics_access(f"Bearer {token}") is MetricsAccess.GRANTED
    assert await settings.metrics_access(f"bearer  {token} ") is MetricsAccess.GRANTED
    for header in (None, "", "Bearer", "Bearer ", f"Basic {token}", f"Bearer {token[:-1]}"):
        assert await settings.metrics_access(header) is MetricsAccess.DENIED, header
    # Malformed bytes in a header must be refused, not raise.
    assert await settings.metrics_access("Bearer \udcff") is MetricsAccess.DENIED


async def test_enabled_without_a_token_denies_everyone(settings: SettingsService) -> None:
    await settings.set_metrics(True, ADMIN)
    assert await settings.metrics_access("Bearer ") is MetricsAccess.DENIED
    assert await settings.metrics_access("Bearer " + "0" * 64) is MetricsAccess.DENIED
