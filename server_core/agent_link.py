"""What services need from the agent hub, as a narrow interface."""

from __future__ import annotations

from typing import Protocol

from agent.protocol import Message


class AgentLink(Protocol):
    def is_connected(self, host_id: int) -> bool: ...

    async def send(self, host_id: int, message: Message) -> bool:
        """Send to the host's live connection; False when it is not connected."""
        ...

    async def disconnect(self, host_id: int, reason: str) -> None: ...
