"""Credentials tab: the everyday and admin repository credentials.

Secrets are write-only here: the summary shows what the service reports
(URL with any embedded password removed, username, variable *names*, whether
a password is set) and the edit form's password and environment fields
always open empty.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from server_core.services.context import OPERATOR
from server_core.views import CredentialSummary
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.host_tabs.common import (
    GREEN,
    GREY,
    HostTab,
    SingleFlight,
    error_label,
    error_text,
    guarded,
    set_error,
)
from ui_qt.navigator import Navigator

SLOTS = {
    "everyday": (
        "Everyday credential",
        "Used for backups, snapshot listings and checks. Saving it sends it to the agent "
        "at once and re-probes the repository.",
    ),
    "admin": (
        "Admin credential (optional)",
        "For forget and prune on append-only repositories. The agent gets it only for "
        "those jobs and discards it afterwards.",
    ),
}
REDACTED_MARK = ":***@"


def parse_env(text: str) -> dict[str, str]:
    """NAME=value lines (blank lines and # comments ignored); ValueError names the line."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"line {number}: expected NAME=value")
        env[name.strip()] = value
    return env


class CredentialForm(QWidget):
    """The edit form of one slot. Nothing secret is ever put into it."""

    def __init__(self, slot: str) -> None:
        super().__init__()
        self.slot = slot
        self.url = QLineEdit()
        self.url.setPlaceholderText(
            "e.g. /srv/restic, sftp:backup@nas:/repo, s3:s3.amazonaws.com/b"
        )
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setPlaceholderText("required: type the repository password")
        self.username = QLineEdit()
        self.username.setPlaceholderText("optional: backend user (REST server, SFTP…)")
        self.backend_password = QLineEdit()
        self.backend_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.backend_password.setPlaceholderText("optional")
        self.env = QPlainTextEdit()
        self.env.setPlaceholderText("AWS_ACCESS_KEY_ID=…\nAWS_SECRET_ACCESS_KEY=…")
        self.env.setFixedHeight(72)
        for name, widget in (
            ("url", self.url),
            ("password", self.password),
            ("username", self.username),
            ("backend_password", self.backend_password),
            ("env", self.env),
        ):
            widget.setObjectName(f"{slot}-{name}")

        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for name, label, widget in (
            ("url", "Repository URL", self.url),
            ("password", "Repository password", self.password),
            ("username", "Backend username", self.username),
            ("backend_password", "Backend password", self.backend_password),
            ("env", "Environment", self.env),
        ):
            form.addRow(label, self._with_error(name, widget))
        self.env_hint = QLabel()
        self.env_hint.setWordWrap(True)
        self.env_hint.setEnabled(False)
        form.addRow("", self.env_hint)

        self.general_error = error_label()
        self.general_error.setObjectName(f"{slot}-error")
        self.save = QPushButton("Save")
        self.save.setObjectName(f"{slot}-save")
        self.save.setDefault(True)
        self.cancel = QPushButton("Cancel")
        self.cancel.setObjectName(f"{slot}-cancel")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel)
        buttons.addWidget(self.save)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.general_error)
        layout.addLayout(buttons)

    def _with_error(self, name: str, widget: QWidget) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(widget)
        label = error_label()
        label.setObjectName(f"{self.slot}-{name}-error")
        layout.addWidget(label)
        self.errors[name] = label
        return box

    def open_for(self, current: CredentialSummary | None) -> None:
        """Start an edit: the URL and username (not secret) are offered, the rest is empty."""
        self.clear()
        if current is not None:
            self.url.setText(current.url)
            self.username.setText(current.username or "")
            if current.env_keys:
                self.env_hint.setText(
                    "Saving replaces the whole credential: type the values of "
                    f"{', '.join(current.env_keys)} again to keep them."
                )
        self.env_hint.setVisible(bool(self.env_hint.text()))

    def clear(self) -> None:
        for line in (self.url, self.password, self.username, self.backend_password):
            line.clear()
        self.env.clear()
        self.env_hint.clear()
        self.clear_errors()

    def clear_errors(self) -> None:
        for label in (*self.errors.values(), self.general_error):
            set_error(label, None)

    def show_error(self, field: str | None, message: str) -> None:
        """Put a message next to the field it is about (``repository.url`` → url)."""
        name = (field or "").rsplit(".", 1)[-1]
        label = self.errors.get(name, self.general_error)
        set_error(label, message)

    def value(self) -> dict[str, Any]:
        """The repository object for HostService.set_credentials; ValueError(field, msg)."""
        url = self.url.text().strip()
        if REDACTED_MARK in url:
            raise ValueError(
                "url",
                "the URL still holds *** where its password was hidden: type the password "
                "into the URL again, or remove it and use the backend password field",
            )
        try:
            env = parse_env(self.env.toPlainText())
        except ValueError as exc:
            raise ValueError("env", str(exc)) from None
        return {
            "url": url,
            "password": self.password.text(),
            "username": self.username.text().strip() or None,
            "backend_password": self.backend_password.text() or None,
            "env": env,
        }


class SlotBox(QGroupBox):
    """One credential slot: a read-only summary, or the edit form."""

    def __init__(self, tab: CredentialsTab, slot: str) -> None:
        title, blurb = SLOTS[slot]
        super().__init__(title)
        self.setObjectName(f"slot-{slot}")
        self.tab = tab
        self.slot = slot
        self.current: CredentialSummary | None = None
        self.saving = False

        about = QLabel(blurb)
        about.setWordWrap(True)
        about.setEnabled(False)

        self.url = QLabel()
        self.username = QLabel()
        self.env_keys = QLabel()
        self.password = QLabel()
        self.updated = QLabel()
        for label in (self.url, self.username, self.env_keys):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
        self.url.setObjectName(f"{slot}-summary-url")
        self.password.setObjectName(f"{slot}-summary-password")
        summary_form = QFormLayout()
        summary_form.addRow("Repository URL", self.url)
        summary_form.addRow("Backend username", self.username)
        summary_form.addRow("Environment", self.env_keys)
        summary_form.addRow("Password", self.password)
        summary_form.addRow("Updated", self.updated)
        self.missing = QLabel("Not configured.")
        self.missing.setEnabled(False)
        self.edit = QPushButton("Edit…")
        self.edit.setObjectName(f"{slot}-edit")
        self.edit.clicked.connect(self.start_edit)
        summary = self.summary_page = QWidget()
        summary_layout = QVBoxLayout(summary)
        summary_layout.setContentsMargins(0, 0, 0, 0)
        self.summary_fields = QWidget()
        self.summary_fields.setLayout(summary_form)
        summary_layout.addWidget(self.summary_fields)
        summary_layout.addWidget(self.missing)
        row = QHBoxLayout()
        row.addWidget(self.edit)
        row.addStretch(1)
        summary_layout.addLayout(row)

        self.form = CredentialForm(slot)
        self.form.save.clicked.connect(self.save)
        self.form.cancel.clicked.connect(self.cancel_edit)
        for line in (self.form.url, self.form.password, self.form.username):
            line.returnPressed.connect(self.save)

        # Shown one at a time (not a QStackedWidget, which would size the
        # summary like the taller form).
        self.form.hide()

        self.status = QLabel()
        self.status.setObjectName(f"{slot}-status")
        self.status.setWordWrap(True)
        self.status.setStyleSheet(f"color: {GREEN};")
        self.status.hide()

        layout = QVBoxLayout(self)
        layout.addWidget(about)
        layout.addWidget(summary)
        layout.addWidget(self.form)
        layout.addWidget(self.status)
        self.show_summary(None)

    @property
    def editing(self) -> bool:
        return not self.form.isHidden()

    def show_summary(self, summary: CredentialSummary | None) -> None:
        self.current = summary
        self.summary_fields.setVisible(summary is not None)
        self.missing.setVisible(summary is None)
        self.edit.setText("Edit…" if summary is not None else "Set up…")
        if summary is None:
            return
        self.url.setText(summary.url)
        self.username.setText(summary.username or "—")
        self.env_keys.setText(", ".join(summary.env_keys) or "—")
        if summary.has_password:
            self.password.setText("✓ set (never shown)")
            self.password.setStyleSheet(f"color: {GREEN};")
        else:
            self.password.setText("not set")
            self.password.setStyleSheet(f"color: {GREY};")
        self.updated.setText(relative_time(summary.updated_at))
        self.updated.setToolTip(absolute_time(summary.updated_at))

    def start_edit(self) -> None:
        self.status.hide()
        self.form.open_for(self.current)
        self.summary_page.hide()
        self.form.show()
        (self.form.password if self.form.url.text() else self.form.url).setFocus()

    def cancel_edit(self) -> None:
        self.form.clear()  # nothing typed stays behind
        self.form.hide()
        self.summary_page.show()

    def save(self) -> None:
        if self.saving:
            return
        self.form.clear_errors()
        try:
            repository = self.form.value()
        except ValueError as exc:
            field, message = exc.args
            self.form.show_error(str(field), str(message))
            return
        self.saving = True
        self.form.save.setEnabled(False)
        self.form.save.setText("Saving…")
        self.tab.ctx.runner.run(
            self.tab.ctx.hosts.set_credentials(self.tab.host_id, self.slot, repository, OPERATOR),
            what=f"saving the {self.slot} credential",
            on_done=guarded(self, self._saved),
            on_error=guarded(self, self._failed),
        )

    def _finish(self) -> None:
        self.saving = False
        self.form.save.setEnabled(True)
        self.form.save.setText("Save")

    def _saved(self, _result: None) -> None:
        self._finish()
        self.cancel_edit()
        if self.slot == "everyday":
            online = self.tab.host is not None and self.tab.host.status == "online"
            when = "now" if online else "when the agent next connects"
            text = (
                "Saved. The agent gets the new credential and a repository probe is queued; "
                f"it runs {when} and the repository status above follows its result."
            )
        else:
            text = "Saved. The agent receives it only for forget and prune jobs."
        self.status.setText(text)
        self.status.show()
        self.tab.reload()

    def _failed(self, exc: Exception) -> None:
        self._finish()
        field = exc.field if isinstance(exc, ServiceError) else None
        self.form.show_error(field, error_text(exc))


class CredentialsTab(HostTab):
    def __init__(self, ctx: UiContext, navigator: Navigator, host_id: int) -> None:
        super().__init__(ctx, navigator, host_id)
        self.slots = {slot: SlotBox(self, slot) for slot in SLOTS}
        self.error = error_label()
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.addWidget(self.error)
        for box in self.slots.values():
            layout.addWidget(box)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.loader: SingleFlight[list[CredentialSummary]] = SingleFlight(
            self,
            ctx.runner,
            "loading credentials",
            lambda: ctx.hosts.credential_summaries(host_id),
            self._loaded,
            lambda exc: self.fetch_failed("the credentials", exc, self.error),
        )

    def reload(self) -> None:
        self.loader.request()

    def tick(self) -> None:
        for box in self.slots.values():
            if box.current is not None:
                box.updated.setText(relative_time(box.current.updated_at))

    def host_gone(self) -> None:
        self.loader.stop()

    def _loaded(self, summaries: list[CredentialSummary]) -> None:
        set_error(self.error, None)
        by_slot = {s.slot: s for s in summaries}
        for slot, box in self.slots.items():
            box.show_summary(by_slot.get(slot))
