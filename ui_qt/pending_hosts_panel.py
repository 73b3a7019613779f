"""Fleet: hosts that announced themselves and wait for the operator.

One card per pending host: its key fingerprint large and monospace (what the
operator compares with the host's screen) with a copy button, the hostname it
claims (flagged when another host has it), source IP, OS/arch and when it
announced. Accept asks for the repository credentials and enrols the host over
its open connection; Reject asks for an optional reason the host prints. The
panel hides itself while nobody is waiting and follows changes live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from server_core.services.pending_hosts import PendingHostView
from server_core.services.schedules import ScheduleService
from server_core.services.sources import SourceService
from ui_qt.bridge import EventBridge
from ui_qt.formatting import relative_time
from ui_qt.host_tabs.common import guarded
from ui_qt.pending_host_dialogs import (
    AcceptOutcome,
    AcceptPendingDialog,
    PendingHosts,
    RejectPendingDialog,
    fingerprint_font,
)
from ui_qt.tasks import AsyncRunner
from ui_qt.widgets.colors import Tone, text_color
from ui_qt.widgets.status_dot import OFFLINE, ONLINE, StatusDot

log = logging.getLogger(__name__)

# Relative times ("3 min ago", "expires in 57 min") and expiries move on by themselves.
TICK_MS = 30_000
COPIED_FEEDBACK_MS = 1500
NOTICE_MS = 20_000
# Cards shown before the list scrolls: the fleet table stays in view.
VISIBLE_CARDS = 3


def _muted(label: QLabel) -> QLabel:
    _toned(label, Tone.MUTED)
    return label


def _toned(label: QLabel, tone: Tone) -> None:
    pal = label.palette()
    pal.setColor(label.foregroundRole(), text_color(tone, label.palette()))
    label.setPalette(pal)


def describe(view: PendingHostView, now: float) -> str:
    """``192.0.2.7 · linux/amd64 · agent 0.1.0 · announced 3 min ago · expires in 57 min``"""
    parts = [view.source_ip]
    platform = "/".join(p for p in (view.os, view.arch) if p)
    if platform:
        parts.append(platform)
    if view.agent_version:
        parts.append(f"agent {view.agent_version}")
    parts.append(f"announced {relative_time(view.created_at, now)}")
    left = view.expires_at - now
    parts.append(
        "expires in a moment" if left < 60 else f"expires {relative_time(view.expires_at, now)}"
    )
    return " · ".join(parts)


class PendingHostCard(QFrame):
    accept_requested = Signal(int)
    reject_requested = Signal(int)

    def __init__(self, view: PendingHostView, now: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("pendingHostCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.view = view

        self.dot = StatusDot(ONLINE, 10)
        self.hostname_label = QLabel()
        font = self.hostname_label.font()
        font.setBold(True)
        self.hostname_label.setFont(font)
        self.hostname_label.setTextFormat(Qt.TextFormat.PlainText)
        self.duplicate_label = QLabel()
        self.duplicate_label.setObjectName("pendingDuplicate")
        self.duplicate_label.setTextFormat(Qt.TextFormat.PlainText)
        _toned(self.duplicate_label, Tone.WARN)
        self.state_label = _muted(QLabel("not connected, waiting for it to reconnect"))
        self.state_label.setObjectName("pendingState")
        self.accept_button = QPushButton("Accept…")
        self.accept_button.setObjectName("pendingAccept")
        self.reject_button = QPushButton("Reject…")
        self.reject_button.setObjectName("pendingReject")
        self.accept_button.clicked.connect(lambda: self.accept_requested.emit(self.view.id))
        self.reject_button.clicked.connect(lambda: self.reject_requested.emit(self.view.id))
        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.dot)
        top.addWidget(self.hostname_label)
        top.addWidget(self.duplicate_label)
        top.addWidget(self.state_label)
        top.addStretch(1)
        top.addWidget(self.accept_button)
        top.addWidget(self.reject_button)

        self.fingerprint_label = QLabel()
        self.fingerprint_label.setObjectName("pendingFingerprint")
        self.fingerprint_label.setFont(fingerprint_font(self.font()))
        self.fingerprint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.fingerprint_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.fingerprint_label.setToolTip(
            "The host's key fingerprint. Accept only if the host printed exactly this."
        )
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("pendingCopy")
        self.copy_button.setToolTip("Copy the fingerprint to the clipboard")
        self.copy_button.setAccessibleName("Copy fingerprint")
        self.copy_button.clicked.connect(self.copy_fingerprint)
        middle = QHBoxLayout()
        middle.setContentsMargins(22, 0, 0, 0)
        middle.addWidget(self.fingerprint_label)
        middle.addWidget(self.copy_button)
        middle.addStretch(1)

        self.details_label = _muted(QLabel())
        self.details_label.setTextFormat(Qt.TextFormat.PlainText)
        self.details_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(22, 0, 0, 0)
        bottom.addWidget(self.details_label, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addLayout(middle)
        layout.addLayout(bottom)
        self._copied = QTimer(self)
        self._copied.setSingleShot(True)
        self._copied.setInterval(COPIED_FEEDBACK_MS)
        self._copied.timeout.connect(lambda: self.copy_button.setText("Copy"))
        self.show_view(view, now)

    def show_view(self, view: PendingHostView, now: float) -> None:
        self.view = view
        self.hostname_label.setText(view.hostname)
        self.fingerprint_label.setText(view.fingerprint)
        self.duplicate_label.setText(f"⚠ {view.duplicate}" if view.duplicate else "")
        self.duplicate_label.setVisible(bool(view.duplicate))
        self.details_label.setText(describe(view, now))
        self.dot.set_state(ONLINE if view.connected else OFFLINE)
        self.state_label.setVisible(not view.connected)
        self.dot.setToolTip(
            "Its announce command is connected and waiting"
            if view.connected
            else "Its announce command is not connected right now; it reconnects by itself"
        )
        self.accept_button.setEnabled(view.connected)
        self.accept_button.setToolTip(
            "Enter the repository credentials and enrol this host"
            if view.connected
            else "Accepting needs the host connected: wait for it to reconnect, or run "
            "announce on it again"
        )

    def copy_fingerprint(self) -> None:
        QGuiApplication.clipboard().setText(self.view.fingerprint)
        self.copy_button.setText("Copied")
        self._copied.start()


class PendingHostsPanel(QFrame):
    """Shown above the fleet table while hosts wait; ``refreshed`` after each load."""

    refreshed = Signal()
    # A host was added from here (AcceptOutcome), for views that want to open it.
    host_accepted = Signal(object)

    def __init__(
        self,
        pending: PendingHosts,
        runner: AsyncRunner,
        bridge: EventBridge,
        parent: QWidget | None = None,
        *,
        sources: SourceService | None = None,
        schedules: ScheduleService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("pendingHostsPanel")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self._pending = pending
        self._runner = runner
        self._sources = sources
        self._schedules = schedules
        self._clock = clock
        self._in_flight = False
        self._again = False
        self.views: list[PendingHostView] = []
        self.cards: dict[int, PendingHostCard] = {}
        self.dialog: QWidget | None = None

        self.title = QLabel()
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        hint = _muted(
            QLabel(
                "These hosts ran “restic-manager-agent announce”. Accept one only if the "
                "fingerprint below is exactly the one it printed."
            )
        )
        hint.setWordWrap(True)
        self.notice = QLabel()
        self.notice.setObjectName("pendingNotice")
        self.notice.setWordWrap(True)
        self.notice.setTextFormat(Qt.TextFormat.PlainText)
        self.notice.setVisible(False)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setVisible(False)
        _toned(self.error_label, Tone.BAD)

        self.list_widget = QWidget()
        self.list_layout = QVBoxLayout(self.list_widget)
        self.list_layout.setContentsMargins(0, 0, 0, 0)
        self.list_layout.setSpacing(6)
        self.list_layout.addStretch(1)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setWidget(self.list_widget)
        self.scroll_area.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 0)
        layout.setSpacing(6)
        layout.addWidget(self.title)
        layout.addWidget(hint)
        layout.addWidget(self.notice)
        layout.addWidget(self.error_label)
        layout.addWidget(self.scroll_area)

        self._notice_timer = QTimer(self)
        self._notice_timer.setSingleShot(True)
        self._notice_timer.setInterval(NOTICE_MS)
        self._notice_timer.timeout.connect(self.clear_notice)
        self._tick = QTimer(self)
        self._tick.setInterval(TICK_MS)
        self._tick.timeout.connect(self.reload)
        self._tick.start()
        bridge.pending_hosts_changed.connect(self.reload)
        # Accepting adds a host; a host deleted or renamed changes the duplicate flags.
        bridge.hosts_changed.connect(self._on_hosts_changed)
        bridge.hosts_removed.connect(self._on_hosts_changed)
        self._update_visibility()
        self.reload()

    # -- loading -------------------------------------------------------------------

    def reload(self) -> None:
        if self._in_flight:
            self._again = True
            return
        self._in_flight = True
        self._runner.run(
            self._pending.list_pending(),
            what="Loading pending hosts",
            on_done=guarded(self, self._on_loaded),
            on_error=guarded(self, self._on_load_failed),
        )

    def _on_hosts_changed(self, _ids: object) -> None:
        if self.views:
            self.reload()

    def refreshing(self) -> bool:
        return self._in_flight

    def _on_loaded(self, views: list[PendingHostView]) -> None:
        self._in_flight = False
        self.error_label.setVisible(False)
        self.show_views(views)
        if self._again:
            self._again = False
            self.reload()
        self.refreshed.emit()

    def _on_load_failed(self, exc: Exception) -> None:
        self._in_flight = False
        log.warning("loading pending hosts failed: %s", exc)
        self.error_label.setText(f"Could not load the pending hosts: {exc}")
        self.error_label.setVisible(True)
        if self._again:
            self._again = False
            self.reload()
        self._update_visibility()

    def show_views(self, views: list[PendingHostView]) -> None:
        now = self._clock()
        self.views = list(views)
        wanted = {v.id for v in views}
        for pending_id in [i for i in self.cards if i not in wanted]:
            card = self.cards.pop(pending_id)
            self.list_layout.removeWidget(card)
            card.deleteLater()
        for position, view in enumerate(views):
            existing = self.cards.get(view.id)
            if existing is None:
                card = PendingHostCard(view, now)
                card.accept_requested.connect(self.open_accept)
                card.reject_requested.connect(self.open_reject)
                self.cards[view.id] = card
            else:
                card = existing
                card.show_view(view, now)
            self.list_layout.insertWidget(position, card)
        count = len(views)
        self.title.setText(
            f"{count} host{'s' if count != 1 else ''} asking to be added"
            if count
            else "No hosts are asking to be added"
        )
        self._fit_scroll()
        self._update_visibility()

    def _fit_scroll(self) -> None:
        cards = [self.cards[v.id] for v in self.views[:VISIBLE_CARDS]]
        height = sum(c.sizeHint().height() for c in cards)
        height += self.list_layout.spacing() * max(0, len(cards) - 1)
        self.scroll_area.setFixedHeight(max(0, height) + 2)

    def _update_visibility(self) -> None:
        self.setVisible(
            bool(self.views) or self.notice.isVisibleTo(self) or self.error_label.isVisibleTo(self)
        )

    # -- actions ---------------------------------------------------------------------

    def card(self, pending_id: int) -> PendingHostCard:
        return self.cards[pending_id]

    def open_accept(self, pending_id: int) -> AcceptPendingDialog | None:
        view = next((v for v in self.views if v.id == pending_id), None)
        if view is None:
            return None
        dialog = AcceptPendingDialog(
            view,
            self._pending,
            self._runner,
            self.window(),
            sources=self._sources,
            schedules=self._schedules,
        )
        dialog.finished_accept.connect(self._on_accepted)
        self.dialog = dialog
        dialog.open()
        return dialog

    def open_reject(self, pending_id: int) -> RejectPendingDialog | None:
        view = next((v for v in self.views if v.id == pending_id), None)
        if view is None:
            return None
        dialog = RejectPendingDialog(view, self._pending, self._runner, self.window())
        dialog.rejected_host.connect(self._on_rejected)
        self.dialog = dialog
        dialog.open()
        return dialog

    def _on_accepted(self, outcome: AcceptOutcome) -> None:
        self.show_notice(outcome.message, Tone.OK if outcome.complete else Tone.WARN)
        self.host_accepted.emit(outcome)
        self.reload()

    def _on_rejected(self, view: PendingHostView) -> None:
        self.show_notice(
            f"{view.hostname} was rejected; its announce command stops and shows your reason.",
            Tone.NEUTRAL,
        )
        self.reload()

    def show_notice(self, text: str, tone: Tone) -> None:
        self.notice.setText(text)
        _toned(self.notice, tone)
        self.notice.setVisible(True)
        self._notice_timer.start()
        self._update_visibility()

    def clear_notice(self) -> None:
        self.notice.setVisible(False)
        self._update_visibility()
