"""Reading the audit log (it is written by server_core.audit, never edited)."""

from __future__ import annotations

import json

from server_core.models import AuditEntry
from server_core.views import AuditView


def list_audit(
    *,
    limit: int = 500,
    action: str | None = None,
    target_kind: str | None = None,
    target_id: str | None = None,
    since: float | None = None,
) -> list[AuditView]:
    query = AuditEntry.select().order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action == action)
    if target_kind:
        query = query.where(AuditEntry.target_kind == target_kind)
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    if since is not None:
        query = query.where(AuditEntry.ts >= since)
    return [
        AuditView(
            id=e.id,
            ts=e.ts,
            actor_kind=e.actor_kind,
            actor_id=e.actor_id,
            action=e.action,
            target_kind=e.target_kind,
            target_id=e.target_id,
            payload=json.loads(e.payload),
        )
        for e in query
    ]
