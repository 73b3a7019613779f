"""The dependencies every service shares, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from server_core.agent_link import AgentLink
from server_core.audit import ActorKind
from server_core.crypto import SecretBox
from server_core.events import EventBus
from server_core.store import Store


@dataclass(frozen=True)
class Actor:
    """Who asked for a change, as the audit log records it."""

    kind: ActorKind
    id: str | None = None


OPERATOR = Actor("operator")
SYSTEM = Actor("system")


@dataclass(frozen=True)
class ServiceContext:
    store: Store
    box: SecretBox
    bus: EventBus
    agents: AgentLink
