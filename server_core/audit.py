"""Audit entries. Called inside the transaction that makes the change, so
a change and its audit entry are committed together or not at all."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from server_core.models import AuditEntry

ActorKind = Literal["operator", "api", "agent", "system"]


def record(
    actor_kind: ActorKind,
    action: str,
    *,
    target_kind: str | None = None,
    target_id: str | int | None = None,
    actor_id: str | int | None = None,
    payload: dict[str, Any] | None = None,
    ts: float | None = None,
) -> None:
    AuditEntry.create(
        ts=time.time() if ts is None else ts,
        actor_kind=actor_kind,
        actor_id=None if actor_id is None else str(actor_id),
        action=action,
        target_kind=target_kind,
        target_id=None if target_id is None else str(target_id),
        payload=json.dumps(payload or {}, sort_keys=True),
    )
