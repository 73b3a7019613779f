"""Notification channels (webhook, ntfy, SMTP): their settings, test sends,
and delivering raised / acknowledged / resolved alerts to them.

Secrets are write-only: sealed with the data key in the channel row and
never returned. Delivery runs one worker per channel (see
``server_core.notify.delivery``) so a broken channel never delays the
others; every attempt is stored and announced as ``ChannelsChanged``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
import peewee as pw

from server_core import audit
from server_core.crypto import SecretDecryptError
from server_core.errors import Conflict, InvalidInput
from server_core.events import AlertChanged, ChannelsChanged, Event
from server_core.models import NotificationChannel
from server_core.notify import records
from server_core.notify.channel_config import (
    ChannelSpec,
    config_changes,
    parse_new,
    parse_update,
)
from server_core.notify.delivery import ChannelQueues, Delivery, Outcome
from server_core.notify.message import synthetic_alert
from server_core.notify.senders import Senders, SendResult
from server_core.services.alerts import views_by_id
from server_core.services.context import Actor, ServiceContext
from server_core.views import AlertView, ChannelView, DeliveryView, TestResult

log = logging.getLogger(__name__)

T = TypeVar("T")

NOTIFIED_TRANSITIONS = frozenset({"raised", "acknowledged", "resolved"})
DEFAULT_RETRY_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600)
MAX_DELIVERIES = 1000
SMTP_THREADS = 8
_UNREADABLE_SECRETS = (
    "the channel's stored secrets cannot be decrypted (was the data key replaced?): "
    "enter them again in the channel's settings"
)

# A session is borrowed (the caller closes it); a factory's session is ours.
HttpSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession] | None


class NotificationService:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        http: HttpSource = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        timeout_s: float = 10.0,
        smtp_ssl_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._ctx = ctx
        self._http = http
        self._session_obj: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._retry_delays = tuple(retry_delays_s)
        self._executor: ThreadPoolExecutor | None = None
        self._senders = Senders(
            self._session,
            timeout_s=timeout_s,
            smtp_executor=self._smtp_executor,
            ssl_context=smtp_ssl_context or ssl.create_default_context,
        )
        self._queues = ChannelQueues(self._attempt, self._retry_delays)
        self._events: asyncio.Queue[AlertChanged] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if self._dispatcher is not None:
            return
        self._queues = ChannelQueues(self._attempt, self._retry_delays)
        self._events = asyncio.Queue()
        self._unsubscribe = self._ctx.bus.subscribe(self._on_event)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="notify-dispatch")

    async def stop(self) -> None:
        """Stop delivering: pending notifications and retries are dropped."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        await self._queues.close()
        if self._owns_session and self._session_obj is not None:
            await self._session_obj.close()
        self._session_obj = None
        self._owns_session = False
        if self._executor is not None:
            # A thread stuck in an SMTP exchange ends at its socket timeout.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _session(self) -> aiohttp.ClientSession:
        if isinstance(self._http, aiohttp.ClientSession):
            return self._http
        if self._session_obj is None or self._session_obj.closed:
            factory = self._http or aiohttp.ClientSession
            self._session_obj = factory()
            self._owns_session = True
        return self._session_obj

    def _smtp_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=SMTP_THREADS, thread_name_prefix="notify-smtp"
            )
        return self._executor

    # -- channels ----------------------------------------------------------

    async def list_channels(self) -> list[ChannelView]:
        box = self._ctx.box

        def run() -> list[ChannelView]:
            rows = NotificationChannel.select().order_by(
                pw.fn.lower(NotificationChannel.name), NotificationChannel.id
            )
            return [records.channel_view(box, row) for row in rows]

        return await self._ctx.store.call(run)

    async def get_channel(self, channel_id: int) -> ChannelView:
        box = self._ctx.box
        return await self._ctx.store.call(
            lambda: records.channel_view(box, records.require_channel(channel_id))
        )

    async def create_channel(self, body: dict[str, Any], actor: Actor) -> ChannelView:
        spec = parse_new(body)
        box = self._ctx.box

        def run() -> ChannelView:
            records.check_name_free(spec.name)
            row = records.save(box, spec)
            audit.record(
                actor.kind,
                "notification_channel.created",
                actor_id=actor.id,
                target_kind="notification_channel",
                target_id=row.id,
                payload=_audit_shape(spec),
            )
            return records.channel_view(box, row)

        view = await self._write(run, spec.name)
        self._ctx.bus.publish(ChannelsChanged(view.id))
        return view

    async def update_channel(
        self, channel_id: int, body: dict[str, Any], actor: Actor
    ) -> ChannelView:
        box = self._ctx.box

        def run() -> tuple[ChannelView, bool]:
            row = records.require_channel(channel_id)
            before = records.spec_or_blank_secrets(box, row)
            after = parse_update(before, body)
            changes = config_changes(before, after)
            if changes:
                if after.name != before.name:
                    records.check_name_free(after.name, except_id=channel_id)
                records.save(box, after, row)
                audit.record(
                    actor.kind,
                    "notification_channel.updated",
                    actor_id=actor.id,
                    target_kind="notification_channel",
                    target_id=channel_id,
                    payload={"name": after.name, "changes": changes},
                )
            return records.channel_view(box, row), bool(changes)

        view, changed = await self._write(run, body.get("name"))
        if changed:
            self._ctx.bus.publish(ChannelsChanged(channel_id))
        return view

    async def delete_channel(self, channel_id: int, actor: Actor) -> None:
        def run() -> None:
            row = records.require_channel(channel_id)
            audit.record(
                actor.kind,
                "notification_channel.deleted",
                actor_id=actor.id,
                target_kind="notification_channel",
                target_id=channel_id,
                payload={"name": row.name, "kind": row.kind},
            )
            row.delete_instance()

        await self._ctx.store.transaction(run)
        await self._queues.forget(channel_id)
        self._ctx.bus.publish(ChannelsChanged(channel_id))

    async def _write(self, fn: Callable[[], T], name: Any) -> T:
        try:
            return await self._ctx.store.transaction(fn)
        except pw.IntegrityError:
            # Only the unique name can clash; another writer got there first.
            raise Conflict(
                f"a notification channel named {name!r} already exists; choose another name",
                field="name",
            ) from None

    # -- test sends --------------------------------------------------------

    async def test_channel(self, channel_id: int, actor: Actor) -> TestResult:
        """Send a synthetic alert on a saved channel now (not behind its queue),
        whether or not it is enabled; the attempt is stored and audited."""
        box = self._ctx.box

        def load() -> ChannelSpec | None:
            try:
                return records.spec_of(box, records.require_channel(channel_id))
            except SecretDecryptError:
                return None

        spec = await self._ctx.store.call(load)
        if spec is None:
            result = SendResult(False, _UNREADABLE_SECRETS, 0)
        else:
            result = await self._senders.send(spec, "test", synthetic_alert())

        def run() -> None:
            row = NotificationChannel.get_or_none(NotificationChannel.id == channel_id)
            if row is None:
                return  # deleted while the test was in flight
            records.record_attempt(
                channel_id,
                None,
                "test",
                ok=result.ok,
                detail=result.detail,
                latency_ms=result.latency_ms,
            )
            audit.record(
                actor.kind,
                "notification_channel.tested",
                actor_id=actor.id,
                target_kind="notification_channel",
                target_id=channel_id,
                payload={
                    "name": row.name,
                    "ok": result.ok,
                    "detail": result.detail,
                    "latency_ms": result.latency_ms,
                },
            )

        await self._ctx.store.transaction(run)
        self._ctx.bus.publish(ChannelsChanged(channel_id))
        return TestResult(result.ok, result.detail, result.latency_ms)

    async def test_config(
        self, body: dict[str, Any], *, channel_id: int | None = None
    ) -> TestResult:
        """Send a synthetic alert with unsaved settings (nothing is stored).

        With ``channel_id`` the body is read as an update of that channel, so
        secrets left out are taken from the stored ones (editing a channel)."""
        if channel_id is None:
            spec = parse_new(body, name_required=False)
        else:
            box = self._ctx.box
            spec = await self._ctx.store.call(
                lambda: parse_update(
                    records.spec_or_blank_secrets(box, records.require_channel(channel_id)),
                    body,
                )
            )
        result = await self._senders.send(spec, "test", synthetic_alert())
        return TestResult(result.ok, result.detail, result.latency_ms)

    async def list_deliveries(
        self, channel_id: int | None = None, limit: int = 200
    ) -> list[DeliveryView]:
        """Attempts, newest first."""
        if limit < 1:
            raise InvalidInput("'limit' must be at least 1", field="limit")
        limit = min(limit, MAX_DELIVERIES)
        return await self._ctx.store.call(records.deliveries, channel_id, limit)

    # -- delivery ----------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # Called synchronously by the bus: only hand the event over.
        if isinstance(event, AlertChanged) and event.transition in NOTIFIED_TRANSITIONS:
            self._events.put_nowait(event)

    async def _dispatch_loop(self) -> None:
        # One dispatcher keeps the events of an alert in order on every channel.
        while True:
            event = await self._events.get()
            try:
                alert, channel_ids = await self._ctx.store.call(_targets, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not look up alert %s for notification", event.alert_id)
                continue
            if alert is None:
                continue  # gone already (its host was removed)
            for channel_id in channel_ids:
                self._queues.submit(channel_id, Delivery(event.transition, alert))

    async def _attempt(self, channel_id: int, delivery: Delivery, number: int) -> Outcome:
        box = self._ctx.box

        def load() -> ChannelSpec | None:
            row = NotificationChannel.get_or_none(NotificationChannel.id == channel_id)
            if row is None or not row.enabled:
                return None
            return records.spec_of(box, row)

        try:
            spec = await self._ctx.store.call(load)
        except SecretDecryptError:
            await self._record(
                channel_id, delivery, SendResult(False, _UNREADABLE_SECRETS, 0), number
            )
            return Outcome.DROPPED
        if spec is None:
            return Outcome.DROPPED
        result = await self._senders.send(spec, delivery.event, delivery.alert)
        await self._record(channel_id, delivery, result, number)
        return Outcome.DELIVERED if result.ok else Outcome.FAILED

    async def _record(
        self, channel_id: int, delivery: Delivery, result: SendResult, number: int
    ) -> None:
        try:
            stored = await self._ctx.store.transaction(
                records.record_attempt,
                channel_id,
                delivery.alert.id,
                delivery.event,
                ok=result.ok,
                detail=result.detail,
                latency_ms=result.latency_ms,
                attempt=number,
            )
        except Exception:
            log.exception("could not store a delivery attempt on channel %s", channel_id)
            return
        if stored:
            self._ctx.bus.publish(ChannelsChanged(channel_id))


def _targets(event: AlertChanged) -> tuple[AlertView | None, list[int]]:
    found = views_by_id([event.alert_id])
    if not found:
        return None, []
    return found[0], records.channels_wanting(event.severity)


def _audit_shape(spec: ChannelSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "name": spec.name,
        "enabled": spec.enabled,
        "min_severity": spec.min_severity,
        "config": spec.config,
        "secret_fields": spec.secret_fields,
    }
