"""Add / edit a notification channel: its kind's fields, inline errors at the
field the service names, and "Send test" to try the settings before saving.

Secrets (webhook secret header, ntfy token, SMTP password) are write-only:
the service never returns them. A set secret shows an empty password field
with "(unchanged)" as placeholder; leaving it empty keeps the stored value,
typing replaces it, "Remove" clears it on save.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import ChannelView, TestResult
from ui_qt.add_host import SecretField as MaskedField
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import GREEN, GREY, RED, error_text, guarded
from ui_qt.host_tabs.forms import FieldErrors, SavingDialog

KINDS = (("webhook", "Webhook (JSON POST)"), ("ntfy", "ntfy"), ("smtp", "E-mail (SMTP)"))
SEVERITIES = (
    ("info", "Info and above"),
    ("warning", "Warning and above"),
    ("critical", "Critical only"),
)
SECURITIES = (("starttls", "STARTTLS"), ("tls", "TLS (implicit)"), ("none", "None (plain text)"))
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}

_SPLIT_RECIPIENTS = re.compile(r"[,;\s]+")


def recipients(text: str) -> list[str]:
    """``"a@x, b@y; c@z"`` → the addresses, in order, without empties."""
    return [part for part in _SPLIT_RECIPIENTS.split(text.strip()) if part]


def test_result_text(result: TestResult) -> tuple[str, str]:
    """(text, colour) for a test's outcome: ``✓ HTTP 200 · 42 ms``."""
    mark = "✓" if result.ok else "✗"
    return f"{mark} {result.detail} · {result.latency_ms:,} ms", GREEN if result.ok else RED


class SecretField(MaskedField):
    """A password-type input (with Show) for a write-only secret, plus Remove.

    ``value()`` is what to send: the typed text, ``None`` to clear a stored
    secret, or ``UNCHANGED`` to leave it out of the request."""

    UNCHANGED = object()
    changed = Signal()

    def __init__(self, object_name: str, placeholder: str, stored: bool) -> None:
        super().__init__(placeholder)
        self.stored = stored
        self.cleared = False
        self._placeholder = placeholder
        self.edit.setObjectName(object_name)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setObjectName(f"{object_name}Remove")
        self.remove_button.setCheckable(True)
        self.remove_button.setToolTip("Delete the stored value when saving")
        self.remove_button.toggled.connect(self._remove)
        self.remove_button.setVisible(stored)
        row = self.layout()
        assert isinstance(row, QHBoxLayout)
        row.addWidget(self.remove_button)
        self.edit.textChanged.connect(self._typed)
        self._update_placeholder()

    def _remove(self, on: bool) -> None:
        self.cleared = on
        if on:
            self.edit.clear()
        self.edit.setEnabled(not on)
        self.remove_button.setText("Keep" if on else "Remove")
        self._update_placeholder()
        self.changed.emit()

    def _typed(self, _text: str) -> None:
        self.changed.emit()

    def _update_placeholder(self) -> None:
        if self.cleared:
            self.edit.setPlaceholderText("(removed when you save)")
        elif self.stored:
            self.edit.setPlaceholderText("(unchanged)")
        else:
            self.edit.setPlaceholderText(self._placeholder)

    def value(self) -> Any:
        if self.cleared:
            return None
        text = self.edit.text()
        if text:
            return text
        return self.UNCHANGED if self.stored else None


class ChannelDialog(SavingDialog):
    """``channel`` None adds a channel; otherwise edits it (its kind is fixed)."""

    tested = Signal(object)  # TestResult, or the Exception the test raised

    def __init__(
        self, ctx: UiContext, channel: ChannelView | None, parent: QWidget | None = None
    ) -> None:
        title = f"Edit channel “{channel.name}”" if channel else "Add a notification channel"
        super().__init__(ctx.runner, title, "Save" if channel else "Add channel", parent)
        self.setObjectName("channelDialog")
        self.ctx = ctx
        self.channel = channel
        self.testing = False
        self.test_result: TestResult | None = None
        # Before any field is wrapped: error lines that wrap grow the dialog.
        self.errors = _FittingErrors(self.general_error, self._fit_height)
        stored = set(channel.secret_fields) if channel else set()
        config: dict[str, Any] = dict(channel.config) if channel else {}

        # -- common --------------------------------------------------------------------------
        self.name = QLineEdit()
        self.name.setObjectName("channelName")
        self.name.setPlaceholderText("e.g. Ops webhook")
        self.kind = QComboBox()
        self.kind.setObjectName("channelKind")
        for value, label in KINDS:
            self.kind.addItem(label, value)
        self.min_severity = QComboBox()
        self.min_severity.setObjectName("channelMinSeverity")
        for value, label in SEVERITIES:
            self.min_severity.addItem(label, value)
        self.min_severity.setToolTip(
            "Alerts below this severity are not sent on this channel (the tray shows them all)"
        )
        self.enabled = QCheckBox("Enabled")
        self.enabled.setObjectName("channelEnabled")
        self.enabled.setToolTip("A disabled channel keeps its settings but sends nothing")

        # -- webhook -------------------------------------------------------------------------
        self.url = QLineEdit()
        self.url.setObjectName("webhookUrl")
        self.url.setPlaceholderText("https://hooks.example.org/restic-manager")
        self.secret_header = SecretField(
            "webhookSecretHeader", "optional, e.g. X-Token: s3cret", "secret_header" in stored
        )
        kind_rows: list[tuple[str, str, QWidget]] = [
            ("webhook", "URL", self.errors.wrap("config.url", self.url)),
            (
                "webhook",
                "Secret header",
                self.errors.wrap("config.secret_header", self.secret_header),
            ),
            ("webhook", "", _hint("Sent with every POST; the receiver checks it.")),
        ]

        # -- ntfy ----------------------------------------------------------------------------
        self.topic_url = QLineEdit()
        self.topic_url.setObjectName("ntfyTopicUrl")
        self.topic_url.setPlaceholderText("https://ntfy.sh/my-backups")
        self.token = SecretField("ntfyToken", "optional access token", "token" in stored)
        kind_rows += [
            ("ntfy", "Topic URL", self.errors.wrap("config.topic_url", self.topic_url)),
            ("ntfy", "Access token", self.errors.wrap("config.token", self.token)),
        ]

        # -- smtp ----------------------------------------------------------------------------
        self.smtp_host = QLineEdit()
        self.smtp_host.setObjectName("smtpHost")
        self.smtp_host.setPlaceholderText("smtp.example.org")
        self.security = QComboBox()
        self.security.setObjectName("smtpSecurity")
        for value, label in SECURITIES:
            self.security.addItem(label, value)
        self.port = QSpinBox()
        self.port.setObjectName("smtpPort")
        self.port.setRange(1, 65535)
        self.port.setValue(DEFAULT_PORTS["starttls"])
        self.username = QLineEdit()
        self.username.setObjectName("smtpUsername")
        self.username.setPlaceholderText("optional")
        self.password = SecretField("smtpPassword", "needed with a user name", "password" in stored)
        self.mail_from = QLineEdit()
        self.mail_from.setObjectName("smtpFrom")
        self.mail_from.setPlaceholderText("restic-manager@example.org")
        self.to = QLineEdit()
        self.to.setObjectName("smtpTo")
        self.to.setPlaceholderText("ops@example.org, oncall@example.org")
        server_row = QWidget()
        srow = QHBoxLayout(server_row)
        srow.setContentsMargins(0, 0, 0, 0)
        srow.addWidget(self.smtp_host, 1)
        srow.addWidget(QLabel("port"))
        srow.addWidget(self.port)
        kind_rows += [
            ("smtp", "Server", self.errors.wrap("config.host", server_row, "config.port")),
            ("smtp", "Security", self.errors.wrap("config.security", self.security)),
            ("smtp", "User name", self.errors.wrap("config.username", self.username)),
            ("smtp", "Password", self.errors.wrap("config.password", self.password)),
            ("smtp", "From", self.errors.wrap("config.from", self.mail_from)),
            ("smtp", "To", self.errors.wrap("config.to", self.to)),
            ("smtp", "", _hint("Separate recipients with commas.")),
        ]

        # -- test ----------------------------------------------------------------------------
        self.test_button = QPushButton("Send test")
        self.test_button.setObjectName("channelSendTest")
        self.test_button.setToolTip("Send a synthetic alert with these settings now")
        self.test_button.clicked.connect(self.send_test)
        self.test_status = QLabel()
        self.test_status.setObjectName("channelTestStatus")
        self.test_status.setWordWrap(True)
        self.test_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.test_status, 1)

        form = self._form()
        form.addRow("Name", self.errors.wrap("name", self.name))
        form.addRow("Kind", self.errors.wrap("kind", self.kind))
        form.addRow("Min severity", self.errors.wrap("min_severity", self.min_severity))
        form.addRow("", self.errors.wrap("enabled", self.enabled))
        # One form for all kinds (labels line up); a kind's rows show only for it.
        self.kind_rows: dict[str, list[int]] = {kind: [] for kind, _label in KINDS}
        for kind, label, widget in kind_rows:
            form.addRow(label, widget)
            self.kind_rows[kind].append(form.rowCount() - 1)
        self.form = form
        self.form_area.addLayout(form)
        self.form_area.addSpacing(6)
        self.form_area.addLayout(test_row)

        # -- values --------------------------------------------------------------------------
        if channel is not None:
            self.name.setText(channel.name)
            self.kind.setCurrentIndex(self.kind.findData(channel.kind))
            self.kind.setEnabled(False)
            self.kind.setToolTip("A channel's kind is fixed; add a new channel for another kind")
            self.min_severity.setCurrentIndex(self.min_severity.findData(channel.min_severity))
            self.enabled.setChecked(channel.enabled)
            self.url.setText(str(config.get("url", "")))
            self.topic_url.setText(str(config.get("topic_url", "")))
            self.smtp_host.setText(str(config.get("host", "")))
            security = str(config.get("security", "starttls"))
            self.security.setCurrentIndex(max(0, self.security.findData(security)))
            self.port.setValue(int(config.get("port", DEFAULT_PORTS.get(security, 587))))
            self.username.setText(str(config.get("username") or ""))
            self.mail_from.setText(str(config.get("from", "")))
            self.to.setText(", ".join(str(t) for t in config.get("to", [])))
        else:
            self.min_severity.setCurrentIndex(self.min_severity.findData("warning"))
            self.enabled.setChecked(True)
        self._security = str(self.security.currentData())
        self.security.currentIndexChanged.connect(self._security_changed)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._kind_changed()
        self._initial = self._snapshot()
        self.setMinimumWidth(580)
        self.resize(580, self.sizeHint().height())

    @staticmethod
    def _form() -> QFormLayout:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        return form

    def _fit_height(self) -> None:
        """Grow to show every error line whole (a wrapped one needs more height)."""
        layout = self.layout()
        if layout is None:
            return
        layout.activate()
        want = (
            layout.totalHeightForWidth(self.width())
            if layout.hasHeightForWidth()
            else layout.totalSizeHint().height()
        )
        if want > self.height():
            self.resize(self.width(), want)

    def current_kind(self) -> str:
        return str(self.kind.currentData())

    def _kind_changed(self, *_: object) -> None:
        current = self.current_kind()
        for kind, rows in self.kind_rows.items():
            for row in rows:
                self.form.setRowVisible(row, kind == current)
        self.errors.clear()
        if self.isVisible():
            self.adjustSize()

    def _security_changed(self, *_: object) -> None:
        new = str(self.security.currentData())
        # Follow the usual port unless the operator picked another one.
        if self.port.value() == DEFAULT_PORTS.get(self._security):
            self.port.setValue(DEFAULT_PORTS[new])
        self._security = new

    # -- bodies --------------------------------------------------------------------------

    def config(self, *, for_update: bool = False) -> dict[str, Any]:
        """The kind's config from the form. For an update, secrets left alone are
        omitted (kept), removed ones are null; optional fields emptied are null."""
        kind = self.current_kind()
        out: dict[str, Any]
        secrets: dict[str, SecretField]
        if kind == "webhook":
            out = {"url": self.url.text().strip()}
            secrets = {"secret_header": self.secret_header}
        elif kind == "ntfy":
            out = {"topic_url": self.topic_url.text().strip()}
            secrets = {"token": self.token}
        else:
            username = self.username.text().strip()
            out = {
                "host": self.smtp_host.text().strip(),
                "port": self.port.value(),
                "security": str(self.security.currentData()),
                "from": self.mail_from.text().strip(),
                "to": recipients(self.to.text()),
            }
            if username or for_update:
                out["username"] = username or None
            secrets = {"password": self.password}
        for key, field in secrets.items():
            value = field.value()
            if value is SecretField.UNCHANGED:
                continue
            if value is not None or for_update:
                out[key] = value
        return out

    def body(self) -> dict[str, Any]:
        """A whole channel (create, or an unsaved test)."""
        return {
            "kind": self.current_kind(),
            "name": self.name.text().strip(),
            "enabled": self.enabled.isChecked(),
            "min_severity": str(self.min_severity.currentData()),
            "config": self.config(),
        }

    def update_body(self) -> dict[str, Any]:
        return {
            "name": self.name.text().strip(),
            "enabled": self.enabled.isChecked(),
            "min_severity": str(self.min_severity.currentData()),
            "config": self.config(for_update=True),
        }

    def _secret_fields(self) -> list[SecretField]:
        return {
            "webhook": [self.secret_header],
            "ntfy": [self.token],
            "smtp": [self.password],
        }[self.current_kind()]

    def _snapshot(self) -> tuple[Any, ...]:
        secrets = tuple((f.edit.text(), f.cleared) for f in self._secret_fields())
        return (repr(self.body()), secrets)

    def changed(self) -> bool:
        return self._snapshot() != self._initial

    # -- save ----------------------------------------------------------------------------

    def save(self) -> None:
        if self.channel is None:
            self.submit(
                self.ctx.notifications.create_channel(self.body(), OPERATOR),
                "adding a notification channel",
            )
        else:
            self.submit(
                self.ctx.notifications.update_channel(
                    self.channel.id, self.update_body(), OPERATOR
                ),
                "saving the notification channel",
            )

    # -- test ----------------------------------------------------------------------------

    def send_test(self) -> None:
        """Saved and unchanged: test the stored channel (the attempt is recorded).
        Otherwise test what the form says, without saving it."""
        if self.testing:
            return
        self.errors.clear()
        if self.channel is None:
            coro = self.ctx.notifications.test_config(self.body())
        elif not self.changed():
            coro = self.ctx.notifications.test_channel(self.channel.id, OPERATOR)
        else:
            # Edited: test the form as an update of the channel, so secrets
            # left "(unchanged)" are taken from the stored ones.
            coro = self.ctx.notifications.test_config(
                self.update_body(), channel_id=self.channel.id
            )
        self.testing = True
        self.test_button.setEnabled(False)
        self._show_test("Sending a test alert…", GREY)

        def done(result: TestResult) -> None:
            self.testing = False
            self.test_button.setEnabled(True)
            self.test_result = result
            self._show_test(*test_result_text(result))
            self.tested.emit(result)

        def failed(exc: Exception) -> None:
            self.testing = False
            self.test_button.setEnabled(True)
            label = self.errors.show(exc)
            if label is self.errors.general:
                self._show_test(f"✗ {error_text(exc)}", RED)
            else:
                self._show_test("✗ Fix the field marked above, then test again.", RED)
            self.tested.emit(exc)

        self.runner.run(
            coro,
            what="testing the notification channel",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def _show_test(self, text: str, colour: str) -> None:
        self.test_status.setText(text)
        self.test_status.setStyleSheet(f"color: {colour};")

    def test_text(self) -> str:
        return self.test_status.text()


class _FittingErrors(FieldErrors):
    """FieldErrors that let the dialog grow once an error is shown."""

    def __init__(self, general: QLabel, shown: Callable[[], None]) -> None:
        super().__init__(general)
        self._shown = shown

    def show(self, exc: BaseException) -> QLabel:
        label = super().show(exc)
        QTimer.singleShot(0, self._shown)
        return label


def _hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {GREY};")
    return label


__all__ = ["ChannelDialog", "SecretField", "recipients", "test_result_text"]
