"""Add host: the form, then the install commands and a live "awaiting agent" panel.

Page 1 collects what the control plane needs (hostname, repository
credentials, an optional admin credential, initial paths, tags) and
validates it with the same pure parser the API uses, showing each refusal
next to the field it concerns. It also asks when to back up and how long
to keep snapshots (on by default: daily at 02:00, keep 7 daily / 4 weekly /
12 monthly), applied to the host's "default" source group right after the
host is created. Page 2 shows the one-time install commands
with a ticking expiry, follows the host as its agent enrols, connects and
probes the repository, and lists the host's enrolment tokens with
Regenerate / Revoke.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import shiboken6
from PySide6.QtCore import Qt, QTime, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTimeEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from server_core import cron
from server_core.errors import InvalidInput, ServiceError
from server_core.offline_bundle import OfflineBundleService
from server_core.plan_input import parse_retention
from server_core.services.context import OPERATOR, Actor
from server_core.services.enrolment import (
    DEFAULT_GROUP,
    EnrolmentGrant,
    NewHost,
    parse_new_host,
)
from server_core.services.schedules import ScheduleService
from server_core.services.sources import SourceService
from server_core.views import EnrolmentTokenView, HostView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.formatting import absolute_time, relative_time
from ui_qt.install_commands import InstallCommandsPanel
from ui_qt.offline_bundle_dialog import OfflineBundleDialog
from ui_qt.widgets.colors import Tone, fill_color, text_color
from ui_qt.widgets.field_errors import FieldErrorsMixin

log = logging.getLogger(__name__)

TICK_MS = 250  # the countdown shows seconds; a quarter-second tick never skips one
# Nightly, when hosts are idle; a host that was off catches the missed run up.
DEFAULT_BACKUP_TIME = QTime(2, 0)
# (retention rule, default, the word after the spin box, its period)
KEEP_RULES: tuple[tuple[str, int, str, str], ...] = (
    ("keep_daily", 7, "daily", "days"),
    ("keep_weekly", 4, "weekly", "weeks"),
    ("keep_monthly", 12, "monthly", "months"),
)
KEEP_MAX = 9999

# InvalidInput.field (or its prefix) -> the form field that shows the message.
_FIELD_FOR_ERROR: dict[str, str] = {
    "hostname": "hostname",
    "repository": "repo_url",
    "repository.url": "repo_url",
    "repository.password": "repo_password",
    "repository.username": "backend_username",
    "repository.backend_password": "backend_password",
    "repository.env": "env",
    "admin_repository": "admin_url",
    "admin_repository.url": "admin_url",
    "admin_repository.password": "admin_password",
    "initial_paths": "paths",
    "tags": "tags",
    "retention": "keep",
    "keep": "keep",
    "cron": "schedule",
    "schedule": "schedule",
}

# The parser names fields as the API spells them; the form speaks its own labels.
_HUMAN_NAMES: dict[str, str] = {
    "hostname": "The hostname",
    "repository.url": "The repository URL",
    "repository.password": "The repository password",
    "repository.username": "The backend username",
    "repository.backend_password": "The backend password",
    "repository.env": "The environment variables",
    "admin_repository.url": "The admin repository URL",
    "admin_repository.password": "The admin password",
    "initial_paths": "Initial paths",
    "tags": "Tags",
}
_QUOTED_NAME = re.compile(r"'(" + "|".join(re.escape(k) for k in _HUMAN_NAMES) + r")'")


def humanise(message: str) -> str:
    """``'repository.password' is required`` → ``The repository password is required``."""
    text = _QUOTED_NAME.sub(lambda m: _HUMAN_NAMES[m.group(1)], message)
    return text[:1].upper() + text[1:]


def field_for_error(api_field: str | None) -> str | None:
    """The form field that shows an error about ``api_field`` (None: the form as a whole)."""
    while api_field:
        if api_field in _FIELD_FOR_ERROR:
            return _FIELD_FOR_ERROR[api_field]
        api_field = api_field.rpartition(".")[0]
    return None


def countdown(seconds: float) -> str:
    """mm:ss, rounded up so that 00:00 means the token is really gone."""
    whole = max(0, math.ceil(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


@dataclass(frozen=True)
class BackupPlan:
    """When the new host backs up and how long its snapshots are kept."""

    cron: str
    retention: dict[str, int]  # only the rules that are set

    def describe(self) -> str:
        """``every day at 02:00, keeping 7 daily, 4 weekly and 12 monthly snapshots``"""
        return f"{cron.describe(self.cron)}, keeping {self.describe_retention()}"

    def describe_retention(self) -> str:
        """``7 daily, 4 weekly and 12 monthly snapshots``"""
        kept = [
            f"{self.retention[key]} {word}"
            for key, _, word, _ in KEEP_RULES
            if key in self.retention
        ]
        listed = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
        return f"{listed} snapshots"


@dataclass(frozen=True)
class PlanFailure:
    """Which step of applying a BackupPlan failed ('group' or 'schedule') and why."""

    step: str
    reason: str


def daily_cron(at: QTime) -> str:
    return f"{at.minute()} {at.hour()} * * *"


def _reason(exc: Exception) -> str:
    if isinstance(exc, ServiceError):
        return exc.message
    log.error("applying the new host's schedule and retention failed", exc_info=exc)
    return str(exc) or type(exc).__name__


async def apply_plan(
    sources: SourceService,
    schedules: ScheduleService,
    host_id: int,
    includes: list[str],
    plan: BackupPlan,
    actor: Actor,
) -> PlanFailure | None:
    """Give the new host its default source group with ``plan``'s retention, and a schedule.

    The control plane creates the group "default" from the initial paths only
    when the agent enrols (and only if the host has no group by then), so it
    is created here, now, with the same paths; if it already exists its
    retention is set instead. Returns what could not be done (empty when all
    went well): the host exists by now, so a failure must not hide its
    install commands.
    """
    try:
        group = _default_group(await sources.list_groups(host_id))
        if group is None:
            group = await sources.create_group(
                host_id,
                {"name": DEFAULT_GROUP, "includes": includes, "retention": plan.retention},
                actor,
            )
        else:
            # update_group replaces the whole group: send back everything but the retention.
            group = await sources.update_group(
                host_id,
                group.id,
                {
                    "name": group.name,
                    "includes": group.includes,
                    "excludes": group.excludes,
                    "retention": {**group.retention, **plan.retention},
                    "retry_max": group.retry_max,
                    "retry_backoff_seconds": group.retry_backoff_seconds,
                    "pre_hook": group.pre_hook,
                    "post_hook": group.post_hook,
                },
                actor,
            )
    except Exception as exc:
        return PlanFailure("group", _reason(exc))
    try:
        await schedules.create_schedule(
            host_id,
            {"cron": plan.cron, "enabled": True, "source_group_ids": [group.id]},
            actor,
        )
    except Exception as exc:
        return PlanFailure("schedule", _reason(exc))
    return None


def _default_group(groups: list[SourceGroupView]) -> SourceGroupView | None:
    return next((g for g in groups if g.name == DEFAULT_GROUP), None)


def _colour(tone: Tone) -> str:
    return str(text_color(tone).name())


def field_with_error(
    widget: QWidget,
    key: str,
    errors: dict[str, QLabel],
    hint: str | None = None,
    *,
    hint_colour: str | None = None,
    after: QWidget | None = None,
) -> QWidget:
    """The field, an optional hint under it (grey unless ``hint_colour``), a hidden
    red error line kept as ``errors[key]`` (see FieldErrorsMixin), then ``after``."""
    box = QWidget()
    column = QVBoxLayout(box)
    column.setContentsMargins(0, 0, 0, 0)
    column.setSpacing(2)
    column.addWidget(widget)
    if hint:
        note = QLabel(hint)
        note.setWordWrap(True)
        note.setStyleSheet(f"color: {hint_colour or _colour(Tone.MUTED)}")
        column.addWidget(note)
    error = QLabel()
    error.setObjectName(f"error_{key}")
    error.setWordWrap(True)
    error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
    error.setVisible(False)
    column.addWidget(error)
    if after is not None:
        column.addWidget(after)
    errors[key] = error
    return box


def host_request(
    *,
    hostname: str,
    repo_url: str,
    repo_password: str,
    backend_username: str,
    backend_password: str,
    paths: str,
    tags: str,
) -> dict[str, Any]:
    """An add-host request (as the API takes it) from the texts of a host form:
    paths one per line, tags comma separated."""
    repository: dict[str, Any] = {"url": repo_url, "password": repo_password}
    if backend_username.strip():
        repository["username"] = backend_username.strip()
    if backend_password:
        repository["backend_password"] = backend_password
    return {
        "hostname": hostname.strip(),
        "repository": repository,
        "initial_paths": [line.strip() for line in paths.splitlines() if line.strip()],
        "tags": [t.strip() for t in tags.split(",") if t.strip()],
    }


def _dot(tone: Tone) -> str:
    return f'<span style="color:{fill_color(tone).name()}; font-size:14pt">●</span>'


class SecretField(QWidget):
    """A masked line edit with a Show/Hide toggle."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.edit.setPlaceholderText(placeholder)
        self.toggle = QToolButton()
        self.toggle.setText("Show")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("Show or hide what you typed")
        self.toggle.toggled.connect(self._on_toggle)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.toggle)
        self.setFocusProxy(self.edit)

    def _on_toggle(self, shown: bool) -> None:
        self.edit.setEchoMode(QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password)
        self.toggle.setText("Hide" if shown else "Show")

    def text(self) -> str:
        return self.edit.text()

    def clear(self) -> None:
        self.edit.clear()
        self.toggle.setChecked(False)


class EnvTable(QWidget):
    """Name/value rows for backend environment variables (S3, B2, Azure…)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Variable", "Value"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.resizeSection(0, 200)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(90)
        self.table.setMaximumHeight(130)
        self.table.setToolTip(
            "Passed to restic's environment on the host, e.g. AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY for S3, B2_ACCOUNT_ID and B2_ACCOUNT_KEY for B2. "
            "Stored encrypted."
        )
        self.add_button = QPushButton("Add variable")
        self.add_button.clicked.connect(lambda: self.add_row())
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

    def add_row(self, name: str = "", value: str = "") -> int:
        row = self.table.rowCount()
        self.table.insertRow(row)
        name_item = QTableWidgetItem(name)
        self.table.setItem(row, 0, name_item)
        self.table.setItem(row, 1, QTableWidgetItem(value))
        if not name:
            self.table.setCurrentCell(row, 0)
            self.table.editItem(name_item)
        return row

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True)
        if not rows and self.table.currentRow() >= 0:
            rows = [self.table.currentRow()]
        for row in rows:
            self.table.removeRow(row)

    def rows(self) -> list[tuple[str, str]]:
        out = []
        for row in range(self.table.rowCount()):
            name_item, value_item = self.table.item(row, 0), self.table.item(row, 1)
            name = name_item.text().strip() if name_item is not None else ""
            value = value_item.text() if value_item is not None else ""
            if name or value:
                out.append((name, value))
        return out

    def values(self) -> dict[str, str]:
        """The variables as a dict; blank rows are ignored, unnamed or repeated ones refused."""
        env: dict[str, str] = {}
        for name, value in self.rows():
            if not name:
                raise InvalidInput(
                    f"a variable with the value {value[:20]!r}… has no name",
                    field="repository.env",
                )
            if name in env:
                raise InvalidInput(f"{name} is listed twice", field="repository.env")
            env[name] = value
        return env


class AddHostDialog(FieldErrorsMixin, QDialog):
    """Non-modal: the operator may keep it open beside a terminal on the new host."""

    host_created = Signal(int)  # host id, once the control plane accepted the form
    host_updated = Signal(object)  # HostView, each time the awaiting panel re-reads the host
    tokens_updated = Signal(object)  # list[EnrolmentTokenView]

    def __init__(
        self,
        ctx: UiContext,
        parent: QWidget | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.clock = clock
        self.setWindowTitle("Add host")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setSizeGripEnabled(True)
        self.resize(720, 760)

        self.grant: EnrolmentGrant | None = None
        self.hostname_added = ""
        self.host: HostView | None = None
        self.tokens: list[EnrolmentTokenView] = []
        self._token_state = "active"  # of the token the commands show
        self._host_gone = False
        self._reload_running = False
        self._reload_again = False
        self._errors: dict[str, QLabel] = {}

        self.pages = QStackedWidget()
        self.form_page = self._build_form_page()
        self.result_page = self._build_result_page()
        self.pages.addWidget(self.form_page)
        self.pages.addWidget(self.result_page)
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        self._tick = QTimer(self)
        self._tick.setInterval(TICK_MS)
        self._tick.timeout.connect(self._update_countdown)
        ctx.bridge.hosts_changed.connect(self._on_hosts_changed)
        ctx.bridge.hosts_removed.connect(self._on_hosts_removed)
        self.hostname.setFocus()

    # -- page 1: the form --------------------------------------------------------

    def _build_form_page(self) -> QWidget:
        page = QWidget()
        outer = QVBoxLayout(page)
        outer.setContentsMargins(0, 0, 0, 0)
        intro = QLabel(
            "Describe the new host and its restic repository. The app then shows a one-time "
            "command to run on the host; the agent it installs gets these credentials "
            "over the encrypted connection."
        )
        intro.setWordWrap(True)
        outer.addWidget(intro)

        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 8, 0)

        host_box = QGroupBox("Host")
        host_form = self._form(host_box)
        self.hostname = QLineEdit()
        self.hostname.setPlaceholderText("web1.example.org")
        self.hostname.setToolTip("The name the host appears under in the fleet")
        self.tags = QLineEdit()
        self.tags.setPlaceholderText("production, web")
        host_form.addRow("&Hostname:", self._with_error(self.hostname, "hostname"))
        host_form.addRow("&Tags:", self._with_error(self.tags, "tags", "Comma separated."))
        column.addWidget(host_box)

        repo_box = QGroupBox("Repository")
        repo_form = self._form(repo_box)
        self.repo_url = QLineEdit()
        self.repo_url.setPlaceholderText("/srv/restic/web1  ·  sftp:backup@nas:/restic/web1")
        self.repo_url.setToolTip(
            "Anything restic accepts as a repository: a local path, sftp:, rest:, s3:, b2:, "
            "azure:, gs:, rclone:…"
        )
        self.repo_password = SecretField("the restic repository password")
        self.backend_username = QLineEdit()
        self.backend_username.setPlaceholderText("optional (e.g. rest-server user)")
        self.backend_password = SecretField("optional")
        self.env = EnvTable()
        repo_form.addRow("Repository &URL:", self._with_error(self.repo_url, "repo_url"))
        repo_form.addRow(
            "Repository &password:", self._with_error(self.repo_password, "repo_password")
        )
        repo_form.addRow(
            "Backend user&name:", self._with_error(self.backend_username, "backend_username")
        )
        repo_form.addRow(
            "Backend pass&word:", self._with_error(self.backend_password, "backend_password")
        )
        repo_form.addRow(
            "Environment:",
            self._with_error(self.env, "env", "Optional, for S3, B2 and other cloud backends."),
        )
        column.addWidget(repo_box)

        self.admin_group = QGroupBox("Admin credential (optional)")
        self.admin_group.setCheckable(True)
        self.admin_group.setChecked(False)
        self.admin_group.setToolTip(
            "A second credential with delete rights, used only for forget and prune when the "
            "everyday one is append-only."
        )
        self.admin_body = QWidget()
        admin_form = self._form(self.admin_body)
        admin_form.setContentsMargins(0, 0, 0, 0)
        self.admin_url = QLineEdit()
        self.admin_url.setPlaceholderText("rest:https://admin@backup.example.org:8000/web1")
        self.admin_password = SecretField("the repository password for this URL")
        admin_form.addRow("Admin U&RL:", self._with_error(self.admin_url, "admin_url"))
        admin_form.addRow(
            "Admin passw&ord:", self._with_error(self.admin_password, "admin_password")
        )
        admin_layout = QVBoxLayout(self.admin_group)
        admin_layout.addWidget(self.admin_body)
        self.admin_body.setVisible(False)
        self.admin_group.toggled.connect(self.admin_body.setVisible)
        column.addWidget(self.admin_group)

        paths_box = QGroupBox("What to back up")
        paths_form = self._form(paths_box)
        self.paths = QPlainTextEdit()
        self.paths.setPlaceholderText("/etc\n/home\n/var/lib/postgresql")
        self.paths.setTabChangesFocus(True)
        self.paths.setFixedHeight(self.paths.fontMetrics().lineSpacing() * 4 + 14)
        paths_form.addRow(
            "Initial &paths:",
            self._with_error(
                self.paths,
                "paths",
                "Absolute paths on the host, one per line. They become the source group "
                "“default”. To add sources later, leave this empty and untick "
                "“Back up automatically” below.",
            ),
        )
        column.addWidget(paths_box)
        column.addWidget(self._build_plan_box())
        column.addStretch(1)

        self.form_scroll = QScrollArea()
        self.form_scroll.setWidgetResizable(True)
        self.form_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.form_scroll.setWidget(body)
        outer.addWidget(self.form_scroll, 1)

        self.form_error = QLabel()
        self.form_error.setObjectName("formError")
        self.form_error.setWordWrap(True)
        self.form_error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
        self.form_error.setVisible(False)
        outer.addWidget(self.form_error)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.reject)
        self.submit_button = QPushButton("Add host")
        self.submit_button.setDefault(True)
        self.submit_button.clicked.connect(self.submit)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.submit_button)
        outer.addLayout(buttons)

        for edit in (self.hostname, self.tags, self.repo_url, self.backend_username):
            edit.textEdited.connect(self._clear_errors)
        for secret in (self.repo_password, self.backend_password, self.admin_password):
            secret.edit.textEdited.connect(self._clear_errors)
        self.admin_url.textEdited.connect(self._clear_errors)
        self.paths.textChanged.connect(self._clear_errors)
        self.env.table.itemChanged.connect(self._clear_errors)
        self.auto_backup.toggled.connect(self._clear_errors)
        for spin in self.keep.values():
            spin.valueChanged.connect(self._clear_errors)
        return page

    def _build_plan_box(self) -> QGroupBox:
        """When to back up and what to keep: two rows, on by default."""
        box = QGroupBox("Schedule and retention")
        form = self._form(box)

        self.auto_backup = QCheckBox("Back up &automatically, every day at")
        self.auto_backup.setChecked(True)
        self.auto_backup.setToolTip(
            "The agent runs this backup itself, also while restic-manager is closed; "
            "a host that was off catches the missed run up when it is back."
        )
        self.backup_time = QTimeEdit(DEFAULT_BACKUP_TIME)
        self.backup_time.setDisplayFormat("HH:mm")
        self.backup_time.setToolTip("In the host's local time")
        self.backup_time.setAccessibleName("Backup time")
        when_row = QWidget()
        when = QHBoxLayout(when_row)
        when.setContentsMargins(0, 0, 0, 0)
        when.addWidget(self.auto_backup)
        when.addWidget(self.backup_time)
        when.addStretch(1)
        form.addRow("Schedule:", self._with_error(when_row, "schedule"))

        self.keep: dict[str, QSpinBox] = {}
        keep_row = QWidget()
        keep = QHBoxLayout(keep_row)
        keep.setContentsMargins(0, 0, 0, 0)
        for i, (rule, default, word, period) in enumerate(KEEP_RULES):
            spin = QSpinBox()
            spin.setRange(0, KEEP_MAX)
            spin.setValue(default)
            spin.setAccessibleName(f"Keep {word} snapshots")
            spin.setToolTip(
                f"forget keeps the newest snapshot of each of the last N {period} that have "
                f"one (restic forget --{rule.replace('_', '-')}); 0 = no such rule"
            )
            # Reads as a sentence: "7 daily, 4 weekly and 12 monthly snapshots".
            last = len(KEEP_RULES) - 1
            after = {last - 1: " and", last: " snapshots"}.get(i, ",")
            keep.addWidget(spin)
            keep.addWidget(QLabel(word + after))
            self.keep[rule] = spin
        keep.addStretch(1)
        self.keep_hint = QLabel()
        self.keep_hint.setWordWrap(True)
        self.keep_hint.setStyleSheet(f"color: {_colour(Tone.MUTED)}")
        keep_label = QLabel("&Keep:")
        keep_label.setBuddy(self.keep[KEEP_RULES[0][0]])
        keep_field = self._with_error(keep_row, "keep", after=self.keep_hint)
        form.addRow(keep_label, keep_field)

        self.auto_backup.toggled.connect(self._on_auto_backup_toggled)
        self._on_auto_backup_toggled(True)
        return box

    def _on_auto_backup_toggled(self, on: bool) -> None:
        # Retention goes with the schedule: off means "set both up later", and
        # greyed-out rules make plain that none will be applied.
        self.backup_time.setEnabled(on)
        for spin in self.keep.values():
            spin.setEnabled(on)
        self.keep_hint.setText(
            "0 = no such rule. Old snapshots are removed by the host's forget maintenance."
            if on
            else "Off: backups run only when you click Back up now, and forget keeps every "
            "snapshot. Set both up later on the host's Sources and Schedules tabs."
        )

    def plan(self) -> BackupPlan | None:
        """The schedule and retention the form asks for (None: automatic backups off).

        Raises InvalidInput naming the form field ('schedule' or 'keep')."""
        if not self.auto_backup.isChecked():
            return None
        retention = {rule: spin.value() for rule, spin in self.keep.items() if spin.value() > 0}
        if not retention:
            raise InvalidInput(
                "set at least one of daily, weekly or monthly: with all at 0 forget never "
                "removes a snapshot and the repository only grows",
                field="keep",
            )
        parse_retention(retention)  # the same bounds the service applies
        if not self.request_body()["initial_paths"]:
            raise InvalidInput(
                "automatic backups need something to back up: add initial paths above, or "
                "untick this and set sources and a schedule up later on the host's tabs",
                field="schedule",
            )
        schedule = cron.validate(daily_cron(self.backup_time.time()))
        return BackupPlan(cron=schedule, retention=retention)

    @staticmethod
    def _form(parent: QWidget) -> QFormLayout:
        form = QFormLayout(parent)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return form

    def _with_error(
        self, widget: QWidget, key: str, hint: str | None = None, *, after: QWidget | None = None
    ) -> QWidget:
        return field_with_error(widget, key, self._errors, hint, after=after)

    def field_widget(self, key: str) -> QWidget:
        widgets: dict[str, QWidget] = {
            "hostname": self.hostname,
            "tags": self.tags,
            "repo_url": self.repo_url,
            "repo_password": self.repo_password.edit,
            "backend_username": self.backend_username,
            "backend_password": self.backend_password.edit,
            "env": self.env.table,
            "admin_url": self.admin_url,
            "admin_password": self.admin_password.edit,
            "paths": self.paths,
            "schedule": self.auto_backup,
            "keep": self.keep[KEEP_RULES[0][0]],
        }
        return widgets[key]

    def _show_error(self, api_field: str | None, message: str) -> None:
        key = field_for_error(api_field)
        if key is None:
            self.form_error.setText(humanise(message))
            self.form_error.setVisible(True)
            return
        label = self._errors[key]
        label.setText(humanise(message))
        label.setVisible(True)
        if key.startswith("admin_"):
            self.admin_group.setChecked(True)
        widget = self.field_widget(key)
        widget.setFocus()
        # Bring the field into view when the form is scrolled.
        self.form_scroll.ensureWidgetVisible(widget)

    def request_body(self) -> dict[str, Any]:
        """The form as the add-host request the API also accepts."""
        body = host_request(
            hostname=self.hostname.text(),
            repo_url=self.repo_url.text(),
            repo_password=self.repo_password.text(),
            backend_username=self.backend_username.text(),
            backend_password=self.backend_password.text(),
            paths=self.paths.toPlainText(),
            tags=self.tags.text(),
        )
        env = self.env.values()
        if env:
            body["repository"]["env"] = env
        if self.admin_group.isChecked():
            body["admin_repository"] = {
                "url": self.admin_url.text(),
                "password": self.admin_password.text(),
            }
        return body

    def validate(self) -> tuple[NewHost, BackupPlan | None] | None:
        """Check the form without touching the database; show what is wrong where it is."""
        self._clear_errors()
        try:
            return parse_new_host(self.request_body()), self.plan()
        except InvalidInput as exc:
            self._show_error(exc.field, exc.message)
            return None

    def submit(self) -> None:
        if not self.submit_button.isEnabled():
            return
        checked = self.validate()
        if checked is None:
            return
        new, plan = checked
        self._set_busy(True)
        # Services, not self: the plan is applied even if the dialog closes meanwhile.
        enrolment, sources, schedules = self.ctx.enrolment, self.ctx.sources, self.ctx.schedules

        async def create() -> tuple[EnrolmentGrant, PlanFailure | None]:
            grant = await enrolment.add_host(new, OPERATOR)
            failed = None
            if plan is not None:
                failed = await apply_plan(
                    sources, schedules, grant.host_id, new.initial_paths, plan, OPERATOR
                )
            return grant, failed

        self.ctx.runner.run(
            create(),
            what="Adding a host",
            on_done=self._alive(lambda done: self._on_created(new.hostname, plan, *done)),
            on_error=self._alive(self._on_create_failed),
        )

    def _set_busy(self, busy: bool) -> None:
        self.submit_button.setEnabled(not busy)
        self.submit_button.setText("Adding…" if busy else "Add host")
        self.form_scroll.setEnabled(not busy)

    def _on_create_failed(self, exc: Exception) -> None:
        self._set_busy(False)
        if isinstance(exc, ServiceError):
            self._show_error(exc.field, exc.message)
            return
        log.error("adding a host failed", exc_info=exc)
        self._show_error(None, f"The host could not be added: {exc or type(exc).__name__}")

    def _on_created(
        self,
        hostname: str,
        plan: BackupPlan | None,
        grant: EnrolmentGrant,
        plan_failed: PlanFailure | None,
    ) -> None:
        self._set_busy(False)
        self.hostname_added = hostname
        # The secrets now live (encrypted) in the control plane; drop them from the widgets.
        for secret in (self.repo_password, self.backend_password, self.admin_password):
            secret.clear()
        self.env.table.setRowCount(0)
        self.setWindowTitle(f"Add host — {hostname}")
        self.heading.setText(
            f"<b>{hostname}</b> was added. Run one of these commands on it to install "
            "and enrol its agent:"
        )
        self._show_plan_outcome(plan, plan_failed)
        self._show_grant(grant)
        self.pages.setCurrentWidget(self.result_page)
        self.submit_button.setDefault(False)
        self.close_button.setDefault(True)
        self.close_button.setFocus()
        self.host_created.emit(grant.host_id)
        self._reload()

    # -- page 2: commands, countdown, awaiting agent, tokens ---------------------

    def _build_result_page(self) -> QWidget:
        page = QWidget()
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        self.heading = QLabel()
        self.heading.setWordWrap(True)
        column.addWidget(self.heading)
        self.plan_note = QLabel()
        self.plan_note.setObjectName("planNote")
        self.plan_note.setTextFormat(Qt.TextFormat.RichText)
        self.plan_note.setWordWrap(True)
        self.plan_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.plan_note)

        self.commands = InstallCommandsPanel()
        column.addWidget(self.commands)

        expiry_row = QHBoxLayout()
        self.expiry_label = QLabel()
        self.expiry_label.setObjectName("expiry")
        self.expiry_label.setTextFormat(Qt.TextFormat.RichText)
        self.expired_regenerate = QPushButton("Regenerate token")
        self.expired_regenerate.setToolTip("Mint a new one-time token and show new commands")
        self.expired_regenerate.clicked.connect(self.regenerate)
        self.expired_regenerate.setVisible(False)
        expiry_row.addWidget(self.expiry_label, 1)
        expiry_row.addWidget(self.expired_regenerate)
        # For a host that cannot download from the app: one file to carry over.
        self.bundle_button = QPushButton("Offline bundle…")
        self.bundle_button.setToolTip(
            "Save one file that installs and enrols the agent without downloading anything "
            "(for a host that can reach only this app)"
        )
        self.bundle_button.clicked.connect(self.open_offline_bundle)
        self.bundle_button.setVisible(self._offline_bundles() is not None)
        self.bundle_dialog: OfflineBundleDialog | None = None
        expiry_row.addWidget(self.bundle_button)
        column.addLayout(expiry_row)

        self.agent_panel = QFrame()
        self.agent_panel.setObjectName("agentPanel")
        panel = QVBoxLayout(self.agent_panel)
        panel.setContentsMargins(12, 8, 12, 8)
        self.agent_status = QLabel()
        self.agent_status.setObjectName("agentStatus")
        self.agent_status.setTextFormat(Qt.TextFormat.RichText)
        self.agent_status.setWordWrap(True)
        self.repo_status = QLabel()
        self.repo_status.setObjectName("repoStatus")
        self.repo_status.setTextFormat(Qt.TextFormat.RichText)
        self.repo_status.setWordWrap(True)
        self.repo_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.repo_hint = QLabel()
        self.repo_hint.setWordWrap(True)
        self.repo_hint.setContentsMargins(24, 0, 0, 0)  # under the text, past the dot
        self.repo_hint.setVisible(False)
        panel.addWidget(self.agent_status)
        panel.addWidget(self.repo_status)
        panel.addWidget(self.repo_hint)
        column.addWidget(self.agent_panel)

        tokens_box = QGroupBox("Enrolment tokens")
        tokens_layout = QVBoxLayout(tokens_box)
        self.tokens_table = QTableWidget(0, 4)
        self.tokens_table.setObjectName("tokensTable")
        self.tokens_table.setHorizontalHeaderLabels(["Created", "Expires", "State", ""])
        self.tokens_table.verticalHeader().setVisible(False)
        self.tokens_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tokens_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.tokens_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.tokens_table.horizontalHeader()
        for i in range(3):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.Stretch)
        # Cell widgets do not count for ResizeToContents: size the column for the button.
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(3, QPushButton("Revoke").sizeHint().width() + 12)
        row_height = self.tokens_table.verticalHeader().defaultSectionSize()
        self.tokens_table.setFixedHeight(header.sizeHint().height() + 4 * row_height + 4)
        tokens_layout.addWidget(self.tokens_table)
        token_buttons = QHBoxLayout()
        self.tokens_error = QLabel()
        self.tokens_error.setWordWrap(True)
        self.tokens_error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
        self.tokens_error.setVisible(False)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip(
            "Mint a new one-time token (the others stop working) and show new commands"
        )
        self.regenerate_button.clicked.connect(self.regenerate)
        token_buttons.addWidget(self.tokens_error, 1)
        token_buttons.addStretch(0)
        token_buttons.addWidget(self.regenerate_button)
        tokens_layout.addLayout(token_buttons)
        column.addWidget(tokens_box)
        column.addStretch(1)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.open_host_button = QPushButton("Open host")
        self.open_host_button.clicked.connect(self._open_host)
        self.open_host_button.setVisible(callable(getattr(self.parent(), "open_host", None)))
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.accept)
        buttons.addWidget(self.open_host_button)
        buttons.addWidget(self.close_button)
        column.addLayout(buttons)
        self._set_agent_panel("waiting")
        return page

    def _show_grant(self, grant: EnrolmentGrant) -> None:
        self.grant = grant
        self._token_state = "active"
        commands = self.ctx.enrolment.install_commands(grant.token)
        self.commands.set_commands(commands.linux, commands.windows, self.cert_pin())
        self.commands.set_usable(True)
        self._tick.start()
        self._update_countdown()

    def plan_state(self) -> str:
        """What became of the schedule and retention: applied | off | failed."""
        return str(self.plan_note.property("state"))

    def _show_plan_outcome(self, plan: BackupPlan | None, failed: PlanFailure | None) -> None:
        if plan is None:
            state, tone = "off", Tone.MUTED
            text = (
                "No automatic backups and no retention yet: set them up on the host's "
                "Schedules and Sources tabs."
            )
        elif failed is not None and failed.step == "group":
            state, tone = "failed", Tone.WARN
            text = (
                "<b>Schedule and retention were not set:</b> the source group "
                f"“{DEFAULT_GROUP}” could not be created ({_escape(failed.reason)}). "
                "The host was added and the commands below work as usual. The agent creates "
                f"“{DEFAULT_GROUP}” from the initial paths when it enrols; then open the host, "
                "set its retention on the Sources tab and add a schedule on the Schedules tab "
                f"({_escape(plan.describe())})."
            )
        elif failed is not None:
            state, tone = "failed", Tone.WARN
            text = (
                f"<b>No schedule was created:</b> {_escape(failed.reason)}. The host was added, "
                f"its group “{DEFAULT_GROUP}” keeps {_escape(plan.describe_retention())}, and "
                "the commands below work as usual. Open the host and add a schedule on its "
                f"Schedules tab ({_escape(cron.describe(plan.cron))})."
            )
        else:
            state, tone = "applied", Tone.MUTED
            text = (
                f"Backs up {_escape(plan.describe())}. Change this on the host's Schedules "
                "and Sources tabs."
            )
        self.plan_note.setText(f'<span style="color:{_colour(tone)}">{text}</span>')
        self.plan_note.setProperty("state", state)

    def cert_pin(self) -> str:
        return self.ctx.server_info().cert_sha256

    def countdown_text(self) -> str:
        return self.expiry_label.text()

    def _update_countdown(self) -> None:
        if self.grant is None:
            return
        enrolled = self.host is not None and self.host.enrolled
        remaining = self.grant.expires_at - self.clock()
        offer_regenerate = False
        if self._host_gone:
            text, tone = "This host was deleted.", Tone.MUTED
        elif enrolled:
            text, tone = "The token was used: the agent is enrolled.", Tone.OK
        elif self._token_state == "revoked":
            text, tone = "This token was revoked. Regenerate to get new commands.", Tone.BAD
            offer_regenerate = True
        elif self._token_state == "used" or remaining <= 0:
            if self._token_state != "used":
                self._token_state = "expired"
            text, tone = "Token expired — 00:00. Regenerate to get new commands.", Tone.BAD
            offer_regenerate = True
        else:
            text = (
                f"Token expires in <b>{countdown(remaining)}</b> "
                f"(at {absolute_time(self.grant.expires_at)}); it works once."
            )
            tone = Tone.NEUTRAL
        if tone is not Tone.NEUTRAL:
            text = f'<span style="color:{_colour(tone)}">{text}</span>'
            self._tick.stop()
        if text != self.expiry_label.text():
            self.expiry_label.setText(text)
        self.expired_regenerate.setVisible(offer_regenerate)
        self.commands.set_usable(not (offer_regenerate or enrolled or self._host_gone))
        # A bundle mints its own token, so an expired one does not stop it.
        self.bundle_button.setEnabled(not (enrolled or self._host_gone))

    # -- the awaiting-agent panel ------------------------------------------------

    def agent_state(self) -> str:
        """waiting | enrolled (not connected) | online | gone."""
        return str(self.agent_panel.property("state"))

    def repo_state(self) -> str:
        """hidden | checking | ready | failed."""
        return str(self.repo_status.property("state"))

    def _set_agent_panel(
        self, state: str, repo: str = "hidden", host: HostView | None = None
    ) -> None:
        if state == "online":
            assert host is not None
            details = ", ".join(
                part
                for part in (
                    "/".join(p for p in (host.os, host.arch) if p),
                    f"agent {host.agent_version}" if host.agent_version else "",
                    f"restic {host.restic_version}" if host.restic_version else "",
                )
                if part
            )
            agent_tone, agent_text = (
                Tone.OK,
                "Agent connected" + (f" — {details}" if details else ""),
            )
        elif state == "enrolled":
            agent_tone, agent_text = (
                Tone.WARN,
                "The agent enrolled but is not connected right now…",
            )
        elif state == "gone":
            agent_tone, agent_text = Tone.MUTED, "This host was deleted."
        else:
            agent_tone, agent_text = Tone.MUTED, "Waiting for the agent to connect…"
        self.agent_status.setText(
            f"{_dot(agent_tone)}&nbsp; <span style='color:{_colour(agent_tone)}'>"
            f"<b>{agent_text}</b></span>"
        )
        self.agent_panel.setProperty("state", state)

        self.repo_status.setProperty("state", repo)
        self.repo_status.setVisible(repo != "hidden")
        self.repo_hint.setVisible(repo == "failed")
        if repo == "checking":
            self.repo_status.setText(
                f"{_dot(Tone.MUTED)}&nbsp; Checking the repository (initialising it if new)…"
            )
        elif repo == "ready":
            self.repo_status.setText(
                f"{_dot(Tone.OK)}&nbsp; <span style='color:{_colour(Tone.OK)}'>"
                "<b>Repository ready</b></span>"
            )
        elif repo == "failed":
            error = (host.repo_status_error if host is not None else None) or "no details"
            self.repo_status.setText(
                f"{_dot(Tone.BAD)}&nbsp; <span style='color:{_colour(Tone.BAD)}'>"
                f"<b>Repository check failed:</b> {_escape(error)}</span>"
            )
            self.repo_hint.setText(
                "Fix the repository URL or credentials on the host page (Credentials); "
                "saving them checks the repository again."
            )

        if repo == "failed":
            tone = Tone.BAD
        elif state == "online":
            tone = Tone.OK
        elif state == "enrolled":
            tone = Tone.WARN
        else:
            tone = Tone.MUTED
        fill = fill_color(tone)
        alpha = 0.10 if tone is Tone.MUTED else 0.16
        self.agent_panel.setStyleSheet(
            "QFrame#agentPanel {"
            f" border: 1px solid {fill.name()}; border-radius: 6px;"
            f" background-color: rgba({fill.red()}, {fill.green()}, {fill.blue()}, {alpha});"
            "}"
        )

    def _apply_host(self, host: HostView) -> None:
        self.host = host
        if host.status == "online":
            state = "online"
        elif host.enrolled:
            state = "enrolled"
        else:
            state = "waiting"
        if not host.enrolled:
            repo = "hidden"
        elif host.repo_status == "ready":
            repo = "ready"
        elif host.repo_status == "init_failed":
            repo = "failed"
        else:
            repo = "checking"
        self._set_agent_panel(state, repo, host)
        self.regenerate_button.setEnabled(not host.enrolled)
        self.regenerate_button.setToolTip(
            "The agent is enrolled: it needs no token any more"
            if host.enrolled
            else "Mint a new one-time token (the others stop working) and show new commands"
        )
        self._update_countdown()
        self.host_updated.emit(host)

    def _on_hosts_changed(self, host_ids: set[int]) -> None:
        if self.grant is not None and self.grant.host_id in host_ids:
            self._reload()

    def _on_hosts_removed(self, host_ids: set[int]) -> None:
        if self.grant is None or self.grant.host_id not in host_ids:
            return
        self._host_gone = True
        self._tick.stop()
        self._set_agent_panel("gone")
        for button in (self.regenerate_button, self.expired_regenerate, self.open_host_button):
            button.setEnabled(False)
        self.tokens_table.setRowCount(0)
        self._update_countdown()

    def _reload(self) -> None:
        """Re-read the host and its tokens; a burst of changes makes one extra read, not many."""
        if self.grant is None or self._host_gone:
            return
        if self._reload_running:
            self._reload_again = True
            return
        self._reload_running = True
        host_id = self.grant.host_id

        async def read() -> tuple[HostView, list[EnrolmentTokenView]]:
            host = await self.ctx.hosts.get_host(host_id)
            tokens = await self.ctx.enrolment.list_tokens(host_id)
            return host, tokens

        self.ctx.runner.run(
            read(),
            what="Reading the new host",
            on_done=self._alive(self._on_reloaded),
            on_error=self._alive(self._on_reload_failed),
        )

    def _on_reloaded(self, result: tuple[HostView, list[EnrolmentTokenView]]) -> None:
        self._reload_running = False
        host, tokens = result
        self._apply_tokens(tokens)
        self._apply_host(host)
        if self._reload_again:
            self._reload_again = False
            self._reload()

    def _on_reload_failed(self, exc: Exception) -> None:
        self._reload_running = False
        self._reload_again = False
        if isinstance(exc, ServiceError) and exc.status == 404:
            self._on_hosts_removed({self.grant.host_id} if self.grant else set())
            return
        log.error("reading the new host failed", exc_info=exc)
        self._show_token_error(f"Could not read the host: {exc}")

    # -- tokens ------------------------------------------------------------------

    def _apply_tokens(self, tokens: list[EnrolmentTokenView]) -> None:
        self.tokens = tokens
        table = self.tokens_table
        table.setRowCount(len(tokens))
        now = self.clock()
        current = self.grant.token_id if self.grant is not None else None
        for row, token in enumerate(tokens):
            created = QTableWidgetItem(relative_time(token.created_at, now))
            created.setToolTip(absolute_time(token.created_at))
            expires = QTableWidgetItem(
                relative_time(token.expires_at, now) if token.state == "active" else "—"
            )
            expires.setToolTip(absolute_time(token.expires_at))
            label = token.state
            if token.state == "used" and token.used_at is not None:
                label += " " + relative_time(token.used_at, now)
            elif token.state == "revoked" and token.revoked_at is not None:
                label += " " + relative_time(token.revoked_at, now)
            if token.id == current:
                label += " · shown above"
            state = QTableWidgetItem(label)
            tone = {"active": Tone.OK, "used": Tone.NEUTRAL, "revoked": Tone.BAD}.get(
                token.state, Tone.MUTED
            )
            state.setForeground(text_color(tone))
            for col, item in enumerate((created, expires, state)):
                table.setItem(row, col, item)
            if token.state == "active":
                button = QPushButton("Revoke")
                button.setToolTip("Make this token unusable now")
                button.clicked.connect(lambda _=False, tid=token.id: self.revoke(tid))
                table.setCellWidget(row, 3, button)
            else:
                table.removeCellWidget(row, 3)
        if current is not None:
            for token in tokens:
                if token.id == current and token.state != self._token_state:
                    self._token_state = token.state
                    self._update_countdown()
        self.tokens_updated.emit(tokens)

    def revoke_button(self, token_id: int) -> QPushButton | None:
        for row, token in enumerate(self.tokens):
            if token.id == token_id:
                widget = self.tokens_table.cellWidget(row, 3)
                return widget if isinstance(widget, QPushButton) else None
        return None

    def _show_token_error(self, message: str) -> None:
        self.tokens_error.setText(message)
        self.tokens_error.setVisible(bool(message))

    def regenerate(self) -> None:
        if self.grant is None:
            return
        self._show_token_error("")
        self.regenerate_button.setEnabled(False)
        self.expired_regenerate.setEnabled(False)
        self.ctx.runner.run(
            self.ctx.enrolment.regenerate_token(self.grant.host_id, OPERATOR),
            what="Regenerating the enrolment token",
            on_done=self._alive(self._on_regenerated),
            on_error=self._alive(self._on_token_action_failed),
        )

    def _on_regenerated(self, grant: EnrolmentGrant) -> None:
        self.expired_regenerate.setEnabled(True)
        self.regenerate_button.setEnabled(True)
        self._show_grant(grant)
        self._reload()

    def revoke(self, token_id: int) -> None:
        self._show_token_error("")
        button = self.revoke_button(token_id)
        if button is not None:
            button.setEnabled(False)
        self.ctx.runner.run(
            self.ctx.enrolment.revoke_token(token_id, OPERATOR),
            what="Revoking an enrolment token",
            on_done=self._alive(lambda _view: self._reload()),
            on_error=self._alive(self._on_token_action_failed),
        )

    def _on_token_action_failed(self, exc: Exception) -> None:
        self.expired_regenerate.setEnabled(True)
        self.regenerate_button.setEnabled(not (self.host is not None and self.host.enrolled))
        if isinstance(exc, ServiceError):
            self._show_token_error(exc.message)
        else:
            log.error("enrolment token action failed", exc_info=exc)
            self._show_token_error(f"Failed: {exc or type(exc).__name__}")
        self._reload()

    # -- offline bundle ------------------------------------------------------------

    def _offline_bundles(self) -> OfflineBundleService | None:
        # None in a context built without the service: the button stays hidden.
        return self.ctx.offline_bundles

    def open_offline_bundle(self) -> OfflineBundleDialog | None:
        bundles = self._offline_bundles()
        if self.grant is None or bundles is None:
            return None
        if self.bundle_dialog is not None and shiboken6.isValid(self.bundle_dialog):
            self.bundle_dialog.raise_()
            return self.bundle_dialog
        dialog = OfflineBundleDialog(
            bundles, self.ctx.runner, self.grant.host_id, self.hostname_added, self
        )
        dialog.setWindowModality(Qt.WindowModality.WindowModal)
        dialog.built.connect(self._on_bundle_built)
        self.bundle_dialog = dialog
        dialog.show()
        return dialog

    def _on_bundle_built(self, bundle: object) -> None:
        # The bundle's token replaced the one shown: show its commands instead.
        grant = getattr(bundle, "grant", None)
        if isinstance(grant, EnrolmentGrant) and not self._host_gone:
            self._show_grant(grant)
            self._reload()

    # -- plumbing ----------------------------------------------------------------

    def _open_host(self) -> None:
        open_host = getattr(self.parent(), "open_host", None)
        if self.grant is not None and callable(open_host):
            open_host(self.grant.host_id)

    def _alive(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """Wrap a completion callback so it does nothing once the dialog is deleted."""

        def call(arg: Any) -> None:
            if shiboken6.isValid(self):
                fn(arg)

        return call

    def closeEvent(self, event: QCloseEvent) -> None:
        self._tick.stop()
        super().closeEvent(event)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
