"""Application settings kept in the database (the ``setting`` table, JSON values).

For now: the opt-in Prometheus endpoint. Its bearer token is shown once and
only its SHA-256 is stored, like API tokens.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from server_core import audit, tokens
from server_core.errors import InvalidInput
from server_core.models import Setting
from server_core.services.context import Actor, ServiceContext
from server_core.views import MetricsSettingsView

METRICS_KEY = "metrics"
# Compared against when no token is set, so a scrape takes as long either way.
_NO_TOKEN_HASH = "0" * 64


class MetricsAccess(Enum):
    DISABLED = "disabled"
    DENIED = "denied"
    GRANTED = "granted"


def _read(key: str) -> dict[str, Any]:
    row = Setting.get_or_none(Setting.key == key)
    if row is None:
        return {}
    value = json.loads(row.value)
    return value if isinstance(value, dict) else {}


def _write(key: str, value: dict[str, Any]) -> None:
    Setting.insert(key=key, value=json.dumps(value, sort_keys=True)).on_conflict_replace().execute()


def _metrics_view(value: dict[str, Any]) -> MetricsSettingsView:
    return MetricsSettingsView(
        enabled=bool(value.get("enabled")), token_set=bool(value.get("token_sha256"))
    )


def metrics_settings() -> MetricsSettingsView:
    """Store thread."""
    return _metrics_view(_read(METRICS_KEY))


def _token_is_current(value: dict[str, Any], raw: str) -> bool:
    stored = value.get("token_sha256")
    # Hashed and compared even without a token or with an empty one, so a
    # refusal takes as long as an acceptance.
    matches = tokens.token_matches(raw, str(stored or _NO_TOKEN_HASH))
    return matches and bool(stored) and bool(raw)


def check_metrics_token(raw: str) -> bool:
    """Store thread."""
    return _token_is_current(_read(METRICS_KEY), raw)


def metrics_access(authorization: str | None) -> MetricsAccess:
    """What a scrape with this ``Authorization`` header may do (store thread).

    Enabled without a token yet: every scrape is denied, none can match.
    """
    value = _read(METRICS_KEY)
    if not value.get("enabled"):
        return MetricsAccess.DISABLED
    scheme, _, raw = (authorization or "").partition(" ")
    current = _token_is_current(value, raw.strip())
    return MetricsAccess.GRANTED if current and scheme.lower() == "bearer" else MetricsAccess.DENIED


class SettingsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def metrics_settings(self) -> MetricsSettingsView:
        return await self._ctx.store.call(metrics_settings)

    async def set_metrics(self, enabled: bool, actor: Actor) -> MetricsSettingsView:
        """Turn ``GET /metrics`` on or off (a scrape also needs the token)."""
        if not isinstance(enabled, bool):
            raise InvalidInput("'enabled' must be true or false", field="enabled")

        def run() -> MetricsSettingsView:
            value = _read(METRICS_KEY)
            before = bool(value.get("enabled"))
            if before != enabled:
                value["enabled"] = enabled
                _write(METRICS_KEY, value)
                audit.record(
                    actor.kind,
                    "settings.metrics_updated",
                    actor_id=actor.id,
                    target_kind="setting",
                    target_id=METRICS_KEY,
                    payload={"before": {"enabled": before}, "after": {"enabled": enabled}},
                )
            return _metrics_view(value)

        return await self._ctx.store.transaction(run)

    async def new_metrics_token(self, actor: Actor) -> str:
        """A new scrape token, returned this once; any previous token stops working."""
        raw = tokens.new_token("rmmetrics")

        def run() -> None:
            value = _read(METRICS_KEY)
            replaced = bool(value.get("token_sha256"))
            value["token_sha256"] = tokens.hash_token(raw)
            _write(METRICS_KEY, value)
            audit.record(
                actor.kind,
                "settings.metrics_token_created",
                actor_id=actor.id,
                target_kind="setting",
                target_id=METRICS_KEY,
                payload={"replaced": replaced},
            )

        await self._ctx.store.transaction(run)
        return raw

    async def check_metrics_token(self, raw: str) -> bool:
        """True when ``raw`` is the current scrape token (constant time)."""
        return await self._ctx.store.call(check_metrics_token, raw)

    async def metrics_access(self, authorization: str | None) -> MetricsAccess:
        return await self._ctx.store.call(metrics_access, authorization)
