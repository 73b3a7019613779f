"""Settings → Notifications: the channels alerts are sent on, how their last
delivery went, a test button, and every recent delivery attempt.

The tray notifies every alert regardless; channels add webhook, ntfy and
e-mail. The page re-reads on ``bridge.channels_changed`` (a channel saved or
a delivery attempted anywhere, the API included), one fetch at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import ChannelView, DeliveryView, TestResult
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.host_tabs.common import (
    GREEN,
    GREY,
    RED,
    SingleFlight,
    alive,
    confirm_delete,
    error_label,
    error_text,
    guarded,
    record_table,
    set_error,
)
from ui_qt.settings.channel_dialog import KINDS, SEVERITIES, ChannelDialog, test_result_text

RECENT_DELIVERIES = 200

KIND_LABELS = {value: label.split(" (")[0] for value, label in KINDS}
SEVERITY_LABELS = dict(SEVERITIES)
EVENT_LABELS = {
    "raised": "raised",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
    "test": "test",
}


@dataclass(frozen=True)
class NotificationsData:
    channels: list[ChannelView]
    deliveries: list[DeliveryView]  # newest first
    last: dict[int, DeliveryView]  # channel id → its newest attempt


async def fetch_notifications(ctx: UiContext) -> NotificationsData:
    service = ctx.notifications
    channels = await service.list_channels()
    deliveries = await service.list_deliveries(None, RECENT_DELIVERIES)
    last: dict[int, DeliveryView] = {}
    for d in deliveries:
        if d.channel_id not in last or d.id > last[d.channel_id].id:
            last[d.channel_id] = d
    # A quiet channel's last attempt may be older than the recent ones.
    quiet = [c.id for c in channels if c.id not in last]
    if quiet:
        found = await asyncio.gather(
            *(service.list_deliveries(cid, 1) for cid in quiet), return_exceptions=True
        )
        for items in found:
            if isinstance(items, list) and items:
                last[items[0].channel_id] = items[0]
    return NotificationsData(channels, deliveries, last)


def delivery_text(d: DeliveryView | None, now: float | None = None) -> tuple[str, str]:
    """(text, colour) of a channel's last delivery: ``✓ HTTP 200 · 3 min ago``."""
    if d is None:
        return "nothing sent yet", GREY
    mark = "✓" if d.ok else "✗"
    detail = d.detail or ("delivered" if d.ok else "failed")
    return f"{mark} {detail} · {relative_time(d.ts, now)}", GREEN if d.ok else RED


def delivery_time(ts: float, now: float | None = None) -> str:
    """``14:03:27`` today, ``2024-05-01 14:03`` before: a log reads better in clock time."""
    when = dt.datetime.fromtimestamp(ts)
    today = dt.datetime.fromtimestamp(time.time() if now is None else now).date()
    return when.strftime("%H:%M:%S") if when.date() == today else when.strftime("%Y-%m-%d %H:%M")


class NotificationsPage(QWidget):
    loaded = Signal()
    tested = Signal(object)  # TestResult or Exception

    CHANNEL_COLUMNS = ("Name", "Kind", "Sends to", "Min severity", "Enabled", "Last delivery")
    NAME, KIND, TARGET, SEVERITY, ENABLED, LAST = range(6)
    DELIVERY_COLUMNS = ("Time", "Channel", "Event", "Alert", "Result", "Latency", "Attempt")

    def __init__(self, ctx: UiContext) -> None:
        super().__init__()
        self.setObjectName("notificationsPage")
        self.ctx = ctx
        self.data: NotificationsData | None = None
        self.channels: list[ChannelView] = []
        self.dialog: ChannelDialog | None = None
        self.confirm_box: QWidget | None = None
        self._filling = False
        self.testing: set[int] = set()
        self.last_test: TestResult | None = None

        intro = QLabel(
            "The tray shows every alert. Channels also send alerts elsewhere: raised, "
            "acknowledged and resolved, at or above each channel's severity. A failed "
            "delivery is retried with backoff."
        )
        intro.setWordWrap(True)

        row_height = self.fontMetrics().height() + 10
        self.table = record_table(self.CHANNEL_COLUMNS, "channelTable", row_height=row_height)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.TARGET, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(self.LAST, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(self.TARGET, self.fontMetrics().horizontalAdvance("x" * 34))
        header.setMinimumSectionSize(70)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemChanged.connect(self._item_changed)
        self.table.doubleClicked.connect(lambda _i: self.edit_selected())
        self.empty = QLabel(
            "No channels yet. Add a webhook, an ntfy topic or an e-mail address to hear "
            "about alerts when you are away from this computer."
        )
        self.empty.setObjectName("channelsEmpty")
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet(f"color: {GREY};")
        self.empty.hide()

        self.add_button = QPushButton("Add channel…")
        self.add_button.setObjectName("addChannel")
        self.add_button.clicked.connect(self.add_channel)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.setObjectName("editChannel")
        self.edit_button.clicked.connect(self.edit_selected)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setObjectName("deleteChannel")
        self.delete_button.clicked.connect(self.delete_selected)
        self.test_button = QPushButton("Send test")
        self.test_button.setObjectName("testChannel")
        self.test_button.setToolTip("Send a synthetic alert on the selected channel now")
        self.test_button.clicked.connect(self.test_selected)
        buttons = QHBoxLayout()
        for b in (self.add_button, self.edit_button, self.delete_button, self.test_button):
            buttons.addWidget(b)
        buttons.addStretch(1)

        self.test_status = QLabel()
        self.test_status.setObjectName("channelTestResult")
        self.test_status.setWordWrap(True)
        self.test_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = error_label()
        self.error.setObjectName("notificationsError")

        deliveries_title = QLabel("Recent deliveries")
        font = deliveries_title.font()
        font.setBold(True)
        deliveries_title.setFont(font)
        self.delivery_filter = QComboBox()
        self.delivery_filter.setObjectName("deliveryFilter")
        self.delivery_filter.addItem("All channels", None)
        self.delivery_filter.currentIndexChanged.connect(lambda _i: self._fill_deliveries())
        dhead = QHBoxLayout()
        dhead.addWidget(deliveries_title)
        dhead.addStretch(1)
        dhead.addWidget(self.delivery_filter)
        self.deliveries = record_table(
            self.DELIVERY_COLUMNS, "deliveryTable", row_height=row_height, single_selection=False
        )
        self.deliveries.setWordWrap(False)
        dheader = self.deliveries.horizontalHeader()
        dheader.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        dheader.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.deliveries_empty = QLabel("No delivery attempts yet.")
        self.deliveries_empty.setObjectName("deliveriesEmpty")
        self.deliveries_empty.setStyleSheet(f"color: {GREY};")

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.empty)
        layout.addLayout(buttons)
        layout.addWidget(self.test_status)
        layout.addWidget(self.error)
        layout.addSpacing(6)
        layout.addLayout(dhead)
        layout.addWidget(self.deliveries, 3)
        layout.addWidget(self.deliveries_empty)

        self.flight: SingleFlight[NotificationsData] = SingleFlight(
            self,
            ctx.runner,
            "reading notification channels",
            lambda: fetch_notifications(ctx),
            self._loaded,
            lambda exc: set_error(self.error, f"Could not read the channels: {error_text(exc)}"),
        )
        ctx.bridge.channels_changed.connect(self.reload)
        self._update_buttons()
        self.reload()

    # -- loading -------------------------------------------------------------------------

    def reload(self, *_: object) -> None:
        self.flight.request()

    def _loaded(self, data: NotificationsData) -> None:
        set_error(self.error, None)
        self.data = data
        selected = self.selected_channel()
        self.channels = list(data.channels)
        self._filling = True
        try:
            self.table.setRowCount(len(self.channels))
            for row, channel in enumerate(self.channels):
                self._fill_row(row, channel, data.last.get(channel.id))
        finally:
            self._filling = False
        if selected is not None:
            self.select_channel(selected.id)
        elif self.channels and not self.table.selectedItems():
            self.table.selectRow(0)
        self.empty.setVisible(not self.channels)
        self._fill_filter()
        self._fill_deliveries()
        self._update_buttons()
        self.loaded.emit()

    def _fill_row(self, row: int, channel: ChannelView, last: DeliveryView | None) -> None:
        def item(text: str) -> QTableWidgetItem:
            it = QTableWidgetItem(text)
            it.setData(Qt.ItemDataRole.UserRole, channel.id)
            it.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            if not channel.enabled:
                it.setForeground(QBrush(QColor(GREY)))
            return it

        self.table.setItem(row, self.NAME, item(channel.name))
        self.table.setItem(row, self.KIND, item(KIND_LABELS.get(channel.kind, channel.kind)))
        target = item(channel_target(channel))
        target.setToolTip(channel_target(channel))
        self.table.setItem(row, self.TARGET, target)
        self.table.setItem(
            row,
            self.SEVERITY,
            item(SEVERITY_LABELS.get(channel.min_severity, channel.min_severity)),
        )
        enabled = item("")
        enabled.setFlags(
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsUserCheckable
        )
        enabled.setCheckState(Qt.CheckState.Checked if channel.enabled else Qt.CheckState.Unchecked)
        enabled.setToolTip("Untick to stop sending on this channel (settings are kept)")
        self.table.setItem(row, self.ENABLED, enabled)
        text, colour = delivery_text(last)
        last_item = item(text)
        last_item.setForeground(QBrush(QColor(colour)))
        if last is not None:
            latency = f", {last.latency_ms} ms" if last.latency_ms is not None else ""
            last_item.setToolTip(f"{last.event}, attempt {last.attempt}{latency}")
        self.table.setItem(row, self.LAST, last_item)

    def _fill_filter(self) -> None:
        current = self.delivery_filter.currentData()
        self.delivery_filter.blockSignals(True)
        self.delivery_filter.clear()
        self.delivery_filter.addItem("All channels", None)
        for c in self.channels:
            self.delivery_filter.addItem(c.name, c.id)
        index = self.delivery_filter.findData(current)
        self.delivery_filter.setCurrentIndex(max(0, index))
        self.delivery_filter.blockSignals(False)

    def _fill_deliveries(self) -> None:
        data = self.data
        wanted = self.delivery_filter.currentData()
        shown = [
            d for d in (data.deliveries if data else []) if wanted is None or d.channel_id == wanted
        ]
        self.deliveries.setRowCount(len(shown))
        for row, d in enumerate(shown):
            mark, colour = ("✓", GREEN) if d.ok else ("✗", RED)
            cells = (
                delivery_time(d.ts),
                d.channel_name,
                EVENT_LABELS.get(d.event, d.event),
                f"#{d.alert_id}" if d.alert_id is not None else "—",
                f"{mark} {d.detail or ('delivered' if d.ok else 'failed')}",
                f"{d.latency_ms:,} ms" if d.latency_ms is not None else "—",
                str(d.attempt),
            )
            for col, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if col == 4:
                    it.setForeground(QBrush(QColor(colour)))
                    it.setToolTip(d.detail or "")
                if col == 0:
                    it.setToolTip(f"{absolute_time(d.ts)} ({relative_time(d.ts)})")
                self.deliveries.setItem(row, col, it)
        self.deliveries.setVisible(bool(shown))
        self.deliveries_empty.setVisible(not shown)

    # -- selection --------------------------------------------------------------------------

    def selected_channel(self) -> ChannelView | None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self.channels[row] if row < len(self.channels) else None

    def select_channel(self, channel_id: int) -> bool:
        for row, c in enumerate(self.channels):
            if c.id == channel_id:
                self.table.selectRow(row)
                return True
        return False

    def _update_buttons(self) -> None:
        chosen = self.selected_channel()
        self.edit_button.setEnabled(chosen is not None)
        self.delete_button.setEnabled(chosen is not None)
        self.test_button.setEnabled(chosen is not None and chosen.id not in self.testing)

    def row_texts(self) -> list[list[str]]:
        """What the channel table shows (tests, screenshots)."""
        out = []
        for row in range(self.table.rowCount()):
            cells = []
            for col in range(self.table.columnCount()):
                item = self.table.item(row, col)
                if item is None:
                    cells.append("")
                elif col == self.ENABLED:
                    cells.append("yes" if item.checkState() == Qt.CheckState.Checked else "no")
                else:
                    cells.append(item.text())
            out.append(cells)
        return out

    # -- editing ------------------------------------------------------------------------------

    def _open(self, channel: ChannelView | None) -> ChannelDialog:
        if self.dialog is not None and alive(self.dialog):
            self.dialog.reject()
        dialog = ChannelDialog(self.ctx, channel, self)
        self.dialog = dialog
        dialog.accepted.connect(self.reload)
        dialog.open()
        return dialog

    def add_channel(self) -> ChannelDialog:
        return self._open(None)

    def edit_selected(self) -> ChannelDialog | None:
        channel = self.selected_channel()
        return self._open(channel) if channel is not None else None

    def delete_selected(self) -> None:
        channel = self.selected_channel()
        if channel is None:
            return
        self.confirm_box = confirm_delete(
            self,
            "Delete channel",
            f"Delete the notification channel “{channel.name}”?\n\n"
            "Alerts are no longer sent there; its delivery history is removed with it.",
            "confirmDeleteChannel",
            lambda: self.delete_channel(channel),
        )

    def delete_channel(self, channel: ChannelView) -> None:
        self.ctx.runner.run(
            self.ctx.notifications.delete_channel(channel.id, OPERATOR),
            what="deleting a notification channel",
            on_done=guarded(self, lambda _r: self.reload()),
            on_error=guarded(
                self,
                lambda exc: set_error(self.error, f"Could not delete: {error_text(exc)}"),
            ),
        )

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() != self.ENABLED:
            return
        channel = next(
            (c for c in self.channels if c.id == item.data(Qt.ItemDataRole.UserRole)), None
        )
        if channel is None:
            return
        enabled = item.checkState() == Qt.CheckState.Checked
        if enabled != channel.enabled:
            self.set_enabled(channel, enabled)

    def set_enabled(self, channel: ChannelView, enabled: bool) -> None:
        set_error(self.error, None)

        def failed(exc: Exception) -> None:
            set_error(self.error, f"Could not change “{channel.name}”: {error_text(exc)}")
            self.reload()

        self.ctx.runner.run(
            self.ctx.notifications.update_channel(channel.id, {"enabled": enabled}, OPERATOR),
            what="enabling a channel" if enabled else "disabling a channel",
            on_done=guarded(self, lambda _v: self.reload()),
            on_error=guarded(self, failed),
        )

    # -- test -------------------------------------------------------------------------------------

    def test_selected(self) -> None:
        channel = self.selected_channel()
        if channel is None or channel.id in self.testing:
            return
        self.testing.add(channel.id)
        self._update_buttons()
        self.test_status.setStyleSheet(f"color: {GREY};")
        self.test_status.setText(f"Sending a test alert on “{channel.name}”…")

        def done(result: TestResult) -> None:
            self.testing.discard(channel.id)
            self.last_test = result
            text, colour = test_result_text(result)
            self.test_status.setText(f"Test on “{channel.name}”: {text}")
            self.test_status.setStyleSheet(f"color: {colour};")
            self._update_buttons()
            self.tested.emit(result)
            self.reload()

        def failed(exc: Exception) -> None:
            self.testing.discard(channel.id)
            self.test_status.setText(f"Test on “{channel.name}” failed: {error_text(exc)}")
            self.test_status.setStyleSheet(f"color: {RED};")
            self._update_buttons()
            self.tested.emit(exc)

        self.ctx.runner.run(
            self.ctx.notifications.test_channel(channel.id, OPERATOR),
            what="testing a notification channel",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def stop(self) -> None:
        self.flight.stop()


def channel_target(channel: ChannelView) -> str:
    """Where a channel sends, for a tooltip (never a secret: those are not in config)."""
    config = channel.config
    if channel.kind == "webhook":
        return str(config.get("url", ""))
    if channel.kind == "ntfy":
        return str(config.get("topic_url", ""))
    to = ", ".join(str(t) for t in config.get("to", []))
    return f"{to} via {config.get('host', '')}:{config.get('port', '')}"


__all__ = ["NotificationsPage", "channel_target", "delivery_text", "fetch_notifications"]
