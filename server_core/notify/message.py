"""What a notification says, per channel kind (pure functions)."""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from server_core.views import AlertView

EVENTS = ("raised", "acknowledged", "resolved", "test")
PREFIX = "[restic-manager]"

_NTFY_PRIORITY = {"critical": "5", "warning": "4", "info": "3"}
_NTFY_SEVERITY_TAG = {
    "critical": "rotating_light",
    "warning": "warning",
    "info": "information_source",
}
_NTFY_EVENT_TAG = {"acknowledged": "eyes", "resolved": "white_check_mark", "test": "test_tube"}


def synthetic_alert(now: float | None = None) -> AlertView:
    """The alert a test send carries: recognisable, tied to no host."""
    ts = time.time() if now is None else now
    return AlertView(
        id=0,
        kind="test",
        severity="info",
        host_id=None,
        host_name=None,
        status="open",
        message="Test notification from restic-manager: this channel works.",
        first_seen_at=ts,
        last_seen_at=ts,
        count=1,
    )


def headline(event: str, alert: AlertView) -> str:
    """'CRITICAL web1: backup_failed', 'RESOLVED web1: backup_failed', …"""
    label = alert.severity.upper() if event == "raised" else event.upper()
    where = alert.host_name or "restic-manager"
    return f"{label} {where}: {alert.kind}"


def subject(event: str, alert: AlertView) -> str:
    return f"{PREFIX} {headline(event, alert)}"


def text_body(event: str, alert: AlertView) -> str:
    if event == "test":
        return (
            f"{alert.message}\n\nSent at {_when(alert.last_seen_at)} to check the channel's "
            "settings; no alert is open.\n"
        )
    what = {
        "raised": "Alert raised",
        "acknowledged": "Alert acknowledged",
        "resolved": "Alert resolved",
    }.get(event, event)
    lines = [
        alert.message,
        "",
        f"{what}.",
        f"Host:       {alert.host_name or '-'}",
        f"Kind:       {alert.kind}",
        f"Severity:   {alert.severity}",
        f"Status:     {alert.status}",
        f"First seen: {_when(alert.first_seen_at)}",
        f"Last seen:  {_when(alert.last_seen_at)}",
        f"Count:      {alert.count}",
    ]
    if alert.acknowledged_at is not None:
        lines.append(f"Acknowledged: {_when(alert.acknowledged_at)}")
    if alert.resolved_at is not None:
        lines.append(f"Resolved:   {_when(alert.resolved_at)}")
    lines.append(f"Alert id:   {alert.id}")
    return "\n".join(lines) + "\n"


def webhook_payload(event: str, alert: AlertView, sent_at: float) -> dict[str, Any]:
    return {"event": event, "alert": dataclasses.asdict(alert), "sent_at": sent_at}


def ntfy_headers(event: str, alert: AlertView) -> dict[str, str]:
    if event == "raised":
        priority = _NTFY_PRIORITY.get(alert.severity, "5")
        tag = _NTFY_SEVERITY_TAG.get(alert.severity, "rotating_light")
    else:
        priority = "3"
        tag = _NTFY_EVENT_TAG.get(event, "bell")
    return {
        "Title": _header_text(headline(event, alert)),
        "Priority": priority,
        "Tags": f"{tag},{_ascii_tag(alert.kind)}",
    }


def _header_text(text: str) -> str:
    # HTTP headers are Latin-1 at best; ntfy decodes RFC 2047 encoded words.
    if text.isascii():
        return text
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"=?UTF-8?B?{encoded}?="


def _ascii_tag(text: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in text)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
