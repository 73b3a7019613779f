"""The presence sweep's ``last_seen_at`` write as one executemany.

Every 5 s ``AgentHub.sweep`` writes each connected host's last heartbeat
with its own peewee ``Host.update(...).execute()``: ~1,000 statements built
in Python per sweep at 1,000 agents, one store-thread transaction that
everything else on the store (an operator's dispatch, agent events) queues
behind, holding the GIL the loop needs. Here the same rows go in one
``executemany`` of a fixed statement. The real change would go into
server_core/hub.py (the ``run`` inside ``sweep``).
"""

from __future__ import annotations

import logging
import time

from server_core import hub
from server_core.models import Host

log = logging.getLogger(hub.__name__)
_TOUCH = 'UPDATE "host" SET "last_seen_at" = ? WHERE "id" = ?'


async def sweep(self: hub.AgentHub) -> None:
    now = time.monotonic()
    for conn in list(self._connections.values()):
        if now - conn.last_message_at > self._offline_after:
            log.info("host %s silent for %.0f s: offline", conn.host_id, now - conn.last_message_at)
            await self.unregister(conn, "no heartbeat within the timeout")
            self._close_later(conn, "no heartbeat within the timeout")
    rows = [(c.last_seen_wall, c.host_id) for c in self._connections.values()]
    if rows:

        def run() -> None:
            Host._meta.database.connection().executemany(_TOUCH, rows)

        await self._store.transaction(run)


hub.AgentHub.sweep = sweep  # type: ignore[method-assign]
