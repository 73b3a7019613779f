"""Channels and delivery attempts in the database (store thread only)."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import peewee as pw

from server_core.crypto import SecretBox, SecretDecryptError, row_aad
from server_core.errors import Conflict, NotFound
from server_core.models import Alert, NotificationAttempt, NotificationChannel
from server_core.notify.channel_config import ChannelSpec, severity_rank
from server_core.views import ChannelView, DeliveryView

log = logging.getLogger(__name__)

# Attempts kept per channel; older ones are dropped as new ones arrive.
KEEP_ATTEMPTS = 500
_ATTEMPT_PREFIX = re.compile(r"^\[attempt (\d+)\] ")


def _aad(channel_id: int) -> str:
    return row_aad("notification_channel", channel_id, "secrets")


def require_channel(channel_id: int) -> NotificationChannel:
    row: NotificationChannel | None = NotificationChannel.get_or_none(
        NotificationChannel.id == channel_id
    )
    if row is None:
        raise NotFound(f"notification channel {channel_id} does not exist")
    return row


def open_secrets(box: SecretBox, row: NotificationChannel) -> dict[str, str]:
    if row.secret_enc is None:
        return {}
    data = box.open_json(bytes(row.secret_enc), _aad(int(row.id)))
    return {str(k): str(v) for k, v in dict(data).items()}


def spec_of(box: SecretBox, row: NotificationChannel) -> ChannelSpec:
    """The channel with its secrets; raises SecretDecryptError if they cannot be read."""
    return ChannelSpec(
        kind=str(row.kind),
        name=str(row.name),
        enabled=bool(row.enabled),
        min_severity=str(row.min_severity),
        config=dict(json.loads(row.config)),
        secrets=open_secrets(box, row),
    )


def spec_or_blank_secrets(box: SecretBox, row: NotificationChannel) -> ChannelSpec:
    """As spec_of, but unreadable secrets (data key replaced) count as unset,
    so the operator can re-enter them."""
    try:
        return spec_of(box, row)
    except SecretDecryptError:
        log.warning(
            "the secrets of notification channel %s cannot be decrypted; treating them as unset",
            row.id,
        )
        return ChannelSpec(
            kind=str(row.kind),
            name=str(row.name),
            enabled=bool(row.enabled),
            min_severity=str(row.min_severity),
            config=dict(json.loads(row.config)),
        )


def channel_view(box: SecretBox, row: NotificationChannel) -> ChannelView:
    spec = spec_or_blank_secrets(box, row)
    return ChannelView(
        id=int(row.id),
        kind=spec.kind,
        name=spec.name,
        enabled=spec.enabled,
        min_severity=spec.min_severity,
        config=dict(spec.config),
        secret_fields=spec.secret_fields,
        created_at=float(row.created_at),
    )


def check_name_free(name: str, *, except_id: int | None = None) -> None:
    query = NotificationChannel.select().where(
        pw.fn.lower(NotificationChannel.name) == name.lower()
    )
    if except_id is not None:
        query = query.where(NotificationChannel.id != except_id)
    if query.exists():
        raise Conflict(
            f"a notification channel named {name!r} already exists; choose another name",
            field="name",
        )


def save(
    box: SecretBox, spec: ChannelSpec, row: NotificationChannel | None = None
) -> NotificationChannel:
    """Insert or update a channel from a validated spec."""
    if row is None:
        row = NotificationChannel(created_at=time.time())
    row.kind = spec.kind
    row.name = spec.name
    row.enabled = spec.enabled
    row.min_severity = spec.min_severity
    row.config = json.dumps(spec.config, sort_keys=True)
    if row.id is None:
        # The AAD binds the secrets to the row id, known only once inserted.
        row.secret_enc = None
        row.save()
    row.secret_enc = box.seal_json(spec.secrets, _aad(int(row.id))) if spec.secrets else None
    row.save()
    return row


def channels_wanting(severity: str) -> list[int]:
    """Enabled channels whose minimum severity lets ``severity`` through."""
    rank = severity_rank(severity)
    rows = NotificationChannel.select(
        NotificationChannel.id, NotificationChannel.min_severity
    ).where(NotificationChannel.enabled == True)  # noqa: E712
    return [int(r.id) for r in rows if severity_rank(str(r.min_severity)) <= rank]


def record_attempt(
    channel_id: int,
    alert_id: int | None,
    event: str,
    *,
    ok: bool,
    detail: str,
    latency_ms: int,
    attempt: int = 1,
) -> bool:
    """Store one attempt; False when the channel is gone (deleted meanwhile)."""
    if not NotificationChannel.select().where(NotificationChannel.id == channel_id).exists():
        return False
    if alert_id is not None and not Alert.select().where(Alert.id == alert_id).exists():
        alert_id = None  # removed with its host while the notification was in flight
    NotificationAttempt.create(
        channel=channel_id,
        alert=alert_id,
        ts=time.time(),
        event=event,
        ok=ok,
        detail=pack_detail(attempt, detail),
        latency_ms=latency_ms,
    )
    _prune(channel_id)
    return True


def _prune(channel_id: int) -> None:
    cutoff = (
        NotificationAttempt.select(NotificationAttempt.id)
        .where(NotificationAttempt.channel == channel_id)
        .order_by(NotificationAttempt.id.desc())
        .offset(KEEP_ATTEMPTS)
        .limit(1)
        .scalar()
    )
    if cutoff is not None:
        NotificationAttempt.delete().where(
            (NotificationAttempt.channel == channel_id) & (NotificationAttempt.id <= cutoff)
        ).execute()


def deliveries(channel_id: int | None, limit: int) -> list[DeliveryView]:
    query = (
        NotificationAttempt.select(
            NotificationAttempt, NotificationChannel.name.alias("channel_name")
        )
        .join(NotificationChannel, on=(NotificationAttempt.channel == NotificationChannel.id))
        .objects()
        .order_by(NotificationAttempt.id.desc())
        .limit(limit)
    )
    if channel_id is not None:
        require_channel(channel_id)
        query = query.where(NotificationAttempt.channel == channel_id)
    out: list[DeliveryView] = []
    for row in query:
        attempt, detail = unpack_detail(row.detail)
        out.append(
            DeliveryView(
                id=int(row.id),
                channel_id=int(row.channel_id),
                channel_name=str(row.channel_name),
                alert_id=None if row.alert_id is None else int(row.alert_id),
                ts=float(row.ts),
                event=str(row.event),
                ok=bool(row.ok),
                detail=detail,
                latency_ms=None if row.latency_ms is None else int(row.latency_ms),
                attempt=attempt,
            )
        )
    return out


# NotificationAttempt has no column for the attempt number yet, so it rides
# in front of the detail ("[attempt 3] HTTP 502") and is split off on reading.
def pack_detail(attempt: int, detail: str) -> str:
    return detail if attempt <= 1 else f"[attempt {attempt}] {detail}"


def unpack_detail(stored: Any) -> tuple[int, str | None]:
    if stored is None:
        return 1, None
    text = str(stored)
    match = _ATTEMPT_PREFIX.match(text)
    if match is None:
        return 1, text
    return int(match.group(1)), text[match.end() :]
