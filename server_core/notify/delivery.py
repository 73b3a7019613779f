"""Per-channel delivery: one queue and one worker task per channel, so a
dead or slow channel only ever delays its own notifications."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from server_core.views import AlertView

log = logging.getLogger(__name__)

MAX_QUEUED = 1000


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    FAILED = "failed"  # worth retrying
    DROPPED = "dropped"  # channel deleted or disabled, or retrying cannot help


@dataclass(frozen=True)
class Delivery:
    event: str  # raised | acknowledged | resolved
    alert: AlertView


# (channel_id, delivery, attempt number starting at 1) -> outcome
AttemptFn = Callable[[int, Delivery, int], Awaitable[Outcome]]


class ChannelQueues:
    def __init__(self, attempt: AttemptFn, retry_delays_s: Sequence[float]) -> None:
        self._attempt = attempt
        self._delays = tuple(retry_delays_s)
        self._queues: dict[int, asyncio.Queue[Delivery]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._closed = False

    def submit(self, channel_id: int, delivery: Delivery) -> None:
        if self._closed:
            return
        queue = self._queues.get(channel_id)
        if queue is None:
            queue = self._queues[channel_id] = asyncio.Queue(MAX_QUEUED)
            self._workers[channel_id] = asyncio.create_task(
                self._run(channel_id, queue), name=f"notify-channel-{channel_id}"
            )
        try:
            queue.put_nowait(delivery)
        except asyncio.QueueFull:
            log.warning(
                "notification channel %s has %d notifications waiting; dropping %s of alert %s",
                channel_id,
                MAX_QUEUED,
                delivery.event,
                delivery.alert.id,
            )

    def backlog(self, channel_id: int) -> int:
        """Notifications waiting (not counting the one being attempted)."""
        queue = self._queues.get(channel_id)
        return 0 if queue is None else queue.qsize()

    async def forget(self, channel_id: int) -> None:
        """Stop delivering on a channel (it was deleted)."""
        self._queues.pop(channel_id, None)
        task = self._workers.pop(channel_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._workers.values())
        self._workers.clear()
        self._queues.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, channel_id: int, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            delivery = await queue.get()
            try:
                await self._deliver(channel_id, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivering on notification channel %s failed", channel_id)
            finally:
                queue.task_done()

    async def _deliver(self, channel_id: int, delivery: Delivery) -> None:
        attempts = len(self._delays) + 1
        for number in range(1, attempts + 1):
            outcome = await self._attempt(channel_id, delivery, number)
            if outcome is not Outcome.FAILED:
                return
            if number < attempts:
                await asyncio.sleep(self._delays[number - 1])
        log.warning(
            "giving up on %s of alert %s on notification channel %s after %d attempts",
            delivery.event,
            delivery.alert.id,
            channel_id,
            attempts,
        )
