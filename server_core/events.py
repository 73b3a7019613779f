"""In-process change notifications from server_core to whoever listens (the Qt bridge, tests).

Subscribers are called synchronously on the event loop and must be cheap:
the Qt bridge only records what changed and coalesces repaints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostChanged:
    host_id: int


@dataclass(frozen=True)
class HostRemoved:
    host_id: int


@dataclass(frozen=True)
class JobChanged:
    job_id: str
    host_id: int


@dataclass(frozen=True)
class JobLogAppended:
    job_id: str
    host_id: int
    last_seq: int


@dataclass(frozen=True)
class SnapshotsChanged:
    host_id: int


@dataclass(frozen=True)
class SourcesChanged:
    """Source groups, schedules, maintenance or default hooks of a host changed."""

    host_id: int


@dataclass(frozen=True)
class RepoStatsChanged:
    host_id: int


@dataclass(frozen=True)
class AuditAppended:
    count: int


@dataclass(frozen=True)
class AlertChanged:
    """An alert was raised, re-fired (count bumped), acknowledged or resolved."""

    alert_id: int
    host_id: int | None
    transition: str  # raised | bumped | acknowledged | resolved
    severity: str


@dataclass(frozen=True)
class ChannelsChanged:
    """Notification channels were added, edited, removed or attempted a delivery."""

    channel_id: int | None = None


@dataclass(frozen=True)
class PendingHostsChanged:
    """A host announced itself, reconnected, went away, or was accepted, rejected or expired."""

    pending_id: int | None = None


@dataclass(frozen=True)
class UpdatesChanged:
    """An agent update moved on: one host's (host_id) or the fleet run's (None)."""

    host_id: int | None = None


Event = (
    HostChanged
    | HostRemoved
    | JobChanged
    | JobLogAppended
    | SnapshotsChanged
    | SourcesChanged
    | RepoStatsChanged
    | AuditAppended
    | AlertChanged
    | ChannelsChanged
    | UpdatesChanged
    | PendingHostsChanged
)
Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:
                # A broken listener must never break ingestion.
                log.exception("event subscriber failed on %s", type(event).__name__)

    def publish_all(self, events: list[Event]) -> None:
        for event in dict.fromkeys(events):
            self.publish(event)
