"""Accept and Reject for a host that announced itself (opened from the pending panel).

Accept asks what Add host asks, minus what the host already said: the name
(pre-filled with the announced one), the repository credentials, optional
initial paths and tags, and whether to back up daily with the usual
retention. The form is checked with the same parser the API uses and each
refusal is shown next to its field. Reject asks for an optional reason that
the host's announce command prints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from server_core import cron
from server_core.errors import InvalidInput, ServiceError
from server_core.services.context import OPERATOR, Actor
from server_core.services.enrolment import NewHost, parse_new_host
from server_core.services.pending_hosts import MAX_REASON, AcceptedHost, PendingHostView
from server_core.services.schedules import ScheduleService
from server_core.services.sources import SourceService
from ui_qt.add_host import (
    DEFAULT_BACKUP_TIME,
    KEEP_RULES,
    BackupPlan,
    PlanFailure,
    SecretField,
    apply_plan,
    daily_cron,
    field_for_error,
    field_with_error,
    host_request,
    humanise,
)
from ui_qt.host_tabs.common import guarded
from ui_qt.tasks import AsyncRunner
from ui_qt.widgets.colors import Tone, text_color
from ui_qt.widgets.field_errors import FieldErrorsMixin

log = logging.getLogger(__name__)


class PendingHosts(Protocol):
    """What the panel and dialogs need of server_core's PendingHostService."""

    async def list_pending(self) -> list[PendingHostView]: ...
    async def accept(self, pending_id: int, body: Any, actor: Actor) -> AcceptedHost: ...
    async def reject(self, pending_id: int, reason: Any, actor: Actor) -> None: ...


def fingerprint_font(base: QFont) -> QFont:
    """Large and monospace: the text the operator compares character by character."""
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setPointSizeF(max(base.pointSizeF(), 9.0) * 1.35)
    font.setBold(True)
    return font


DEFAULT_PLAN = BackupPlan(
    cron=daily_cron(DEFAULT_BACKUP_TIME),
    retention={rule: default for rule, default, _, _ in KEEP_RULES},
)


@dataclass(frozen=True)
class AcceptOutcome:
    accepted: AcceptedHost
    plan_failed: PlanFailure | None

    @property
    def complete(self) -> bool:
        return self.accepted.delivered and self.plan_failed is None

    @property
    def message(self) -> str:
        text = self.accepted.message + "."
        if self.plan_failed is not None:
            text += (
                f" Its daily backup could not be set up ({self.plan_failed.reason}); "
                "set it up on the host's Sources and Schedules tabs."
            )
        return text


def _colour(tone: Tone) -> str:
    return str(text_color(tone).name())


def _fingerprint_box(view: PendingHostView) -> QLabel:
    label = QLabel(view.fingerprint)
    label.setObjectName("dialogFingerprint")
    label.setFont(fingerprint_font(label.font()))
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class AcceptPendingDialog(FieldErrorsMixin, QDialog):
    finished_accept = Signal(object)  # AcceptOutcome

    def __init__(
        self,
        view: PendingHostView,
        pending: PendingHosts,
        runner: AsyncRunner,
        parent: QWidget | None = None,
        *,
        sources: SourceService | None = None,
        schedules: ScheduleService | None = None,
    ) -> None:
        super().__init__(parent)
        self.view = view
        self._pending = pending
        self._runner = runner
        self._sources = sources
        self._schedules = schedules
        self._errors: dict[str, QLabel] = {}
        self.outcome: AcceptOutcome | None = None
        self.setWindowTitle(f"Accept {view.hostname}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setModal(True)

        intro = QLabel(
            f"<b>{_escape(view.hostname)}</b> ({_escape(view.source_ip)}) asks to be added. "
            "Accept it only if its screen shows this fingerprint:"
        )
        intro.setWordWrap(True)
        intro.setMinimumWidth(660)

        box = QGroupBox("Host and repository")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.hostname = QLineEdit(view.hostname)
        self.hostname.setToolTip("The name the host appears under in the fleet")
        self.repo_url = QLineEdit()
        self.repo_url.setPlaceholderText("/srv/restic/web1  ·  sftp:backup@nas:/restic/web1")
        self.repo_url.setToolTip(
            "Anything restic accepts as a repository: a local path, sftp:, rest:, s3:, b2:, …"
        )
        self.repo_password = SecretField("the restic repository password")
        self.backend_username = QLineEdit()
        self.backend_username.setPlaceholderText("optional (e.g. rest-server user)")
        self.backend_password = SecretField("optional")
        self.paths = QPlainTextEdit()
        self.paths.setPlaceholderText("/etc\n/home")
        self.paths.setTabChangesFocus(True)
        self.paths.setFixedHeight(self.paths.fontMetrics().lineSpacing() * 3 + 14)
        self.tags = QLineEdit()
        self.tags.setPlaceholderText("production, web")
        hostname_hint = (
            f"Flagged: {view.duplicate}. Choose another name if it is a different machine."
            if view.duplicate
            else None
        )
        form.addRow("&Hostname:", self._with_error(self.hostname, "hostname", hostname_hint))
        form.addRow("Repository &URL:", self._with_error(self.repo_url, "repo_url"))
        form.addRow("Repository &password:", self._with_error(self.repo_password, "repo_password"))
        form.addRow(
            "Backend user&name:", self._with_error(self.backend_username, "backend_username")
        )
        form.addRow(
            "Backend pass&word:", self._with_error(self.backend_password, "backend_password")
        )
        form.addRow(
            "Initial &paths:",
            self._with_error(self.paths, "paths", "Absolute paths on the host, one per line."),
        )
        form.addRow("&Tags:", self._with_error(self.tags, "tags", "Comma separated."))

        self.auto_backup = QCheckBox(
            f"Back up &automatically {cron.describe(DEFAULT_PLAN.cron)}, keeping "
            f"{DEFAULT_PLAN.describe_retention()}"
        )
        self.auto_backup.setChecked(sources is not None and schedules is not None)
        self.auto_backup.setVisible(sources is not None and schedules is not None)
        plan_row = self._with_error(self.auto_backup, "schedule")

        self.form_error = QLabel()
        self.form_error.setObjectName("formError")
        self.form_error.setWordWrap(True)
        self.form_error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
        self.form_error.setVisible(False)

        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.reject)
        self.submit_button = QPushButton("Accept and enrol")
        self.submit_button.setObjectName("acceptSubmit")
        self.submit_button.setDefault(True)
        self.submit_button.clicked.connect(self.submit)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.submit_button)

        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.addWidget(intro)
        layout.addWidget(_fingerprint_box(view))
        layout.addWidget(box)
        layout.addWidget(plan_row)
        layout.addWidget(self.form_error)
        layout.addLayout(buttons)

        for edit in (self.hostname, self.repo_url, self.backend_username, self.tags):
            edit.textEdited.connect(self._clear_errors)
        for secret in (self.repo_password, self.backend_password):
            secret.edit.textEdited.connect(self._clear_errors)
        self.paths.textChanged.connect(self._clear_errors)
        self.auto_backup.toggled.connect(self._clear_errors)
        self.repo_url.setFocus()

    def _with_error(self, widget: QWidget, key: str, hint: str | None = None) -> QWidget:
        # The hostname's hint is a warning: the name is flagged as a duplicate.
        tone = Tone.WARN if key == "hostname" else Tone.MUTED
        return field_with_error(widget, key, self._errors, hint, hint_colour=_colour(tone))

    def request_body(self) -> dict[str, Any]:
        """The form as the accept request the API also takes."""
        return host_request(
            hostname=self.hostname.text(),
            repo_url=self.repo_url.text(),
            repo_password=self.repo_password.text(),
            backend_username=self.backend_username.text(),
            backend_password=self.backend_password.text(),
            paths=self.paths.toPlainText(),
            tags=self.tags.text(),
        )

    def plan(self, new: NewHost) -> BackupPlan | None:
        if not self.auto_backup.isChecked() or not self.auto_backup.isVisibleTo(self):
            return None
        if not new.initial_paths:
            raise InvalidInput(
                "automatic backups need something to back up: add initial paths above, or "
                "untick this and set sources and a schedule up later on the host's tabs",
                field="schedule",
            )
        return DEFAULT_PLAN

    def validate(self) -> tuple[NewHost, BackupPlan | None] | None:
        """Check the form without touching the database; show what is wrong where it is."""
        self._clear_errors()
        try:
            new = parse_new_host(self.request_body())
            return new, self.plan(new)
        except InvalidInput as exc:
            self.show_error(exc.field, exc.message)
            return None

    def show_error(self, api_field: str | None, message: str) -> None:
        key = field_for_error(api_field)
        label = self._errors.get(key) if key is not None else None
        if label is None:
            self.form_error.setText(humanise(message))
            self.form_error.setVisible(True)
            return
        label.setText(humanise(message))
        label.setVisible(True)

    def submit(self) -> None:
        if not self.submit_button.isEnabled():
            return
        checked = self.validate()
        if checked is None:
            return
        new, plan = checked
        body = self.request_body()
        self._set_busy(True)
        pending, sources, schedules = self._pending, self._sources, self._schedules
        pending_id = self.view.id

        async def accept() -> AcceptOutcome:
            accepted = await pending.accept(pending_id, body, OPERATOR)
            failed = None
            if plan is not None and sources is not None and schedules is not None:
                failed = await apply_plan(
                    sources, schedules, accepted.host_id, new.initial_paths, plan, OPERATOR
                )
            return AcceptOutcome(accepted, failed)

        self._runner.run(
            accept(),
            what=f"Accepting {self.view.hostname}",
            on_done=guarded(self, self._on_accepted),
            on_error=guarded(self, self._on_failed),
        )

    def _set_busy(self, busy: bool) -> None:
        self.submit_button.setEnabled(not busy)
        self.submit_button.setText("Enrolling…" if busy else "Accept and enrol")
        self.cancel_button.setEnabled(not busy)

    def _on_accepted(self, outcome: AcceptOutcome) -> None:
        self.outcome = outcome
        self.repo_password.clear()
        self.backend_password.clear()
        self.finished_accept.emit(outcome)
        self.accept()

    def _on_failed(self, exc: Exception) -> None:
        self._set_busy(False)
        if isinstance(exc, ServiceError):
            self.show_error(exc.field, exc.message)
            return
        log.error("accepting a pending host failed", exc_info=exc)
        self.show_error(None, f"The host could not be accepted: {exc or type(exc).__name__}")


class RejectPendingDialog(QDialog):
    rejected_host = Signal(object)  # PendingHostView

    def __init__(
        self,
        view: PendingHostView,
        pending: PendingHosts,
        runner: AsyncRunner,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.view = view
        self._pending = pending
        self._runner = runner
        self.setWindowTitle(f"Reject {view.hostname}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setModal(True)
        intro = QLabel(
            f"Reject <b>{_escape(view.hostname)}</b> ({_escape(view.source_ip)})? Its announce "
            "command stops and prints the reason below. Nothing is added; the host may "
            "announce itself again later."
        )
        intro.setWordWrap(True)
        intro.setMinimumWidth(560)
        self.reason = QLineEdit()
        self.reason.setObjectName("rejectReason")
        self.reason.setMaxLength(MAX_REASON)
        self.reason.setPlaceholderText("optional, e.g. “not one of our machines”")
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
        self.error.setVisible(False)
        form = QFormLayout()
        form.addRow("&Reason:", self.reason)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.reject)
        self.submit_button = QPushButton("Reject host")
        self.submit_button.setObjectName("rejectSubmit")
        self.submit_button.clicked.connect(self.submit)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.submit_button)
        layout = QVBoxLayout(self)
        # Wrapped labels get the height their text needs at the dialog's width.
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.addWidget(intro)
        layout.addWidget(_fingerprint_box(view))
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addLayout(buttons)
        self.reason.setFocus()

    def submit(self) -> None:
        if not self.submit_button.isEnabled():
            return
        self.submit_button.setEnabled(False)
        self.error.setVisible(False)
        view = self.view

        def done(_: None) -> None:
            if shiboken6.isValid(self):
                self.rejected_host.emit(view)
                self.accept()

        def failed(exc: Exception) -> None:
            if not shiboken6.isValid(self):
                return
            self.submit_button.setEnabled(True)
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            self.error.setText(humanise(message))
            self.error.setVisible(True)

        self._runner.run(
            self._pending.reject(view.id, self.reason.text(), OPERATOR),
            what=f"Rejecting {view.hostname}",
            on_done=done,
            on_error=failed,
        )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
