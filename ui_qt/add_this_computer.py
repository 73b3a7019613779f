"""Add this computer: enrol the machine the app runs on and watch its first backup.

Page 1 asks where the repository goes (a folder), its password (typed twice,
or generated and shown once), what to back up (home by default; the
repository folder is left out automatically), tags and how often to back up,
and says how the agent will keep running here (systemd user service, or a
background process plus autostart when there is no systemd user session).

Page 2 walks through the setup and shows each step as it happens: host
added → agent enrolled → backups configured → agent started → connected (the
bridge says so) → repository initialised (the init job's result) → a
"Back up now" button that starts the first backup and opens its job window.
A failure says what failed and what to do; a failed enrolment removes the
host again, later failures keep it and offer Retry.

The Qt side only: enrolling and starting the agent go through the
``LocalAgentLauncher`` passed in (``app.local_agent.LocalAgent`` in the app).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import shiboken6
from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QColor, QFontDatabase, QGuiApplication, QPalette
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import InvalidInput, ServiceError
from server_core.services.context import OPERATOR
from server_core.services.enrolment import DEFAULT_GROUP, NewHost, parse_new_host
from server_core.views import HostView, JobView
from ui_qt.add_host import SecretField, field_with_error
from ui_qt.context import UiContext
from ui_qt.formatting import duration, human_bytes
from ui_qt.navigator import Navigator
from ui_qt.widgets.colors import Tone, current_palette, fill_color, is_dark, text_color
from ui_qt.widgets.field_errors import FieldErrorsMixin

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 60.0
MIN_PASSWORD = 8
# (label, cron or None): a desktop is often off at night; a missed run is caught up.
SCHEDULES: list[tuple[str, str | None]] = [
    ("Every day at 12:00", "0 12 * * *"),
    ("Every hour", "0 * * * *"),
    ("Every 6 hours", "0 */6 * * *"),
    ("Not now (only when I click Back up now)", None),
]
# No l/1/o/0: read aloud or copied by hand without mistakes.
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"

PENDING, RUNNING, DONE, WARN, FAILED = "pending", "running", "done", "warn", "failed"
STEPS: list[tuple[str, str]] = [
    ("host", "Add this computer to the fleet"),
    ("enrol", "Enrol the agent"),
    ("configure", "Configure the backup"),
    ("start", "Start the agent in the background"),
    ("connect", "Agent connected"),
    ("repo", "Repository initialised"),
    ("backup", "First backup"),
]
_TONE = {PENDING: Tone.MUTED, RUNNING: Tone.NEUTRAL, DONE: Tone.OK, WARN: Tone.WARN}


def generate_password(groups: int = 6, size: int = 5) -> str:
    """About 150 bits, in groups that are easy to copy: ``k7m2p-x9qrt-…``."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size)) for _ in range(groups))


# -- what the dialog needs from the app (app.local_agent implements it) ---------------


class ServicePlanView(Protocol):
    @property
    def mode(self) -> str: ...  # systemd-user | detached | unsupported

    @property
    def summary(self) -> str: ...

    @property
    def details(self) -> str: ...

    @property
    def probe(self) -> str: ...


class FolderPlanView(Protocol):
    @property
    def repository(self) -> Path: ...

    @property
    def sources(self) -> Sequence[str]: ...

    @property
    def excludes(self) -> Sequence[str]: ...

    @property
    def existing_repository(self) -> bool: ...


class StartedView(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def log_hint(self) -> str: ...

    @property
    def stop_hint(self) -> str: ...

    @property
    def pid(self) -> int | None: ...


class LocalAgentLauncher(Protocol):
    """Enrols and starts an agent on this computer. Every method is safe to await
    on the UI loop (blocking work runs elsewhere); failures raise an exception
    whose text says what went wrong and what to do (InvalidInput for folders)."""

    @property
    def hostname(self) -> str: ...

    @property
    def home(self) -> Path: ...

    @property
    def suggested_repository(self) -> Path: ...

    @property
    def config_path(self) -> Path: ...

    @property
    def docs(self) -> Path: ...

    async def detect(self) -> ServicePlanView: ...

    async def check_folders(self, repository: str, sources: Sequence[str]) -> FolderPlanView: ...

    async def enrol(self, token: str) -> object: ...

    async def start(self, mode: str) -> StartedView: ...


def _colour(tone: Tone) -> str:
    if tone is Tone.MUTED:
        # The palette's placeholder colour is often the text colour with alpha,
        # which rich text drops: mix a solid grey from text and window instead.
        pal = current_palette()
        text, window = pal.color(QPalette.ColorRole.Text), pal.color(QPalette.ColorRole.Window)
        mixed = QColor(
            (text.red() * 55 + window.red() * 45) // 100,
            (text.green() * 55 + window.green() * 45) // 100,
            (text.blue() * 55 + window.blue() * 45) // 100,
        )
        return str(mixed.name())
    return str(text_color(tone).name())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _linked_docs(html: str, docs: Path) -> str:
    """The docs page named in ``html`` as a link to the file, where it exists."""
    if not docs.exists():
        return html
    # Palettes of dark themes often keep a dark link colour: pick a readable one.
    colour = "#8ab4f8" if is_dark() else "#0b57d0"
    url = QUrl.fromLocalFile(str(docs)).toString()
    anchor = f'<a style="color:{colour}" href="{url}">{_escape(docs.name)}</a>'
    for name in (str(docs), f"docs/{docs.name}"):
        if name in html:
            return html.replace(name, anchor, 1)
    return f"{html} ({anchor})"


def _paint_box(frame: QFrame, tone: Tone) -> None:
    fill = fill_color(tone)
    alpha = 0.10 if tone in (Tone.MUTED, Tone.NEUTRAL) else 0.16
    frame.setStyleSheet(
        f"QFrame#{frame.objectName()} {{ border: 1px solid {fill.name()}; border-radius: 6px;"
        f" background-color: rgba({fill.red()}, {fill.green()}, {fill.blue()}, {alpha}); }}"
    )


class StepRow(QWidget):
    """A dot, a bold title and a wrapped detail line under it."""

    def __init__(self, key: str, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self.state = PENDING
        self.dot = QLabel()
        self.dot.setFixedWidth(22)
        self.dot.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.title = QLabel(title)
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.detail = QLabel()
        self.detail.setObjectName(f"stepDetail_{key}")
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail.setOpenExternalLinks(True)
        self.detail.setVisible(False)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 2, 0, 2)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(1)
        grid.addWidget(self.dot, 0, 0, 2, 1)
        grid.addWidget(self.title, 0, 1)
        grid.addWidget(self.detail, 1, 1)
        grid.setColumnStretch(1, 1)
        self._title = title
        self.set_state(PENDING)

    def set_state(self, state: str, detail: str | None = None, *, title: str | None = None) -> None:
        self.state = state
        if title is not None:
            self._title = title
        tone = Tone.BAD if state == FAILED else _TONE.get(state, Tone.NEUTRAL)
        glyph = {PENDING: "○", RUNNING: "◌", DONE: "●", WARN: "●", FAILED: "●"}[state]
        colour = fill_color(tone).name() if state != RUNNING else _colour(Tone.NEUTRAL)
        self.dot.setText(f'<span style="color:{colour}; font-size:13pt">{glyph}</span>')
        weight = "normal" if state == PENDING else "600"
        text_tone = Tone.MUTED if state == PENDING else Tone.NEUTRAL
        suffix = "…" if state == RUNNING else ""
        self.title.setText(
            f'<span style="color:{_colour(text_tone)}; font-weight:{weight}">'
            f"{_escape(self._title)}{suffix}</span>"
        )
        if detail is not None:
            colour = _colour(
                Tone.BAD if state == FAILED else Tone.WARN if state == WARN else Tone.MUTED
            )
            self.detail.setText(f'<span style="color:{colour}">{detail}</span>')
            self.detail.setVisible(bool(detail))


class AddThisComputerDialog(FieldErrorsMixin, QDialog):
    """Non-modal; the setup goes on (and cleans up after itself) if it is closed."""

    service_detected = Signal(object)  # ServicePlanView
    host_created = Signal(int)
    step_changed = Signal(str, str)  # key, state
    backup_started = Signal(str)  # job id

    def __init__(
        self,
        ctx: UiContext,
        launcher: LocalAgentLauncher,
        navigator: Navigator | None = None,
        parent: QWidget | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.launcher = launcher
        self.navigator = navigator
        self.setWindowTitle(f"Add this computer — {launcher.hostname}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setSizeGripEnabled(True)
        self.resize(720, 720)

        self.plan: ServicePlanView | None = None
        self.folders: FolderPlanView | None = None
        self.started: StartedView | None = None
        self.host_id: int | None = None
        self.host: HostView | None = None
        self.job_id: str | None = None
        self.job: JobView | None = None
        self._cron: str | None = None
        self._cron_label = ""
        self._resume_at: str | None = None
        self._busy = False
        self._reading_host = False
        self._read_again = False
        self._errors: dict[str, QLabel] = {}
        self._steps: dict[str, StepRow] = {}

        self.pages = QStackedWidget()
        self.form_page = self._build_form_page()
        self.progress_page = self._build_progress_page()
        self.pages.addWidget(self.form_page)
        self.pages.addWidget(self.progress_page)
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        self._connect_timer = QTimer(self)
        self._connect_timer.setSingleShot(True)
        self._connect_timer.setInterval(int(connect_timeout_s * 1000))
        self._connect_timer.timeout.connect(self._connect_overdue)
        ctx.bridge.hosts_changed.connect(self._on_hosts_changed)
        ctx.bridge.hosts_removed.connect(self._on_hosts_removed)
        ctx.bridge.jobs_changed.connect(self._on_jobs_changed)
        self._detect()

    # -- page 1: the form ---------------------------------------------------------

    def _build_form_page(self) -> QWidget:
        page = QWidget()
        outer = QVBoxLayout(page)
        outer.setContentsMargins(0, 0, 0, 0)
        heading = QLabel(
            f"Back up <b>{_escape(self.launcher.hostname)}</b>, the computer "
            "restic-manager runs on."
        )
        heading.setWordWrap(True)
        outer.addWidget(heading)
        intro = QLabel(
            "restic-manager sets up its agent here and backs up into a repository folder you "
            "choose. The agent keeps backing up on schedule when restic-manager is closed."
        )
        intro.setWordWrap(True)
        outer.addWidget(intro)

        self.service_box = QFrame()
        self.service_box.setObjectName("serviceBox")
        box = QVBoxLayout(self.service_box)
        box.setContentsMargins(12, 8, 12, 8)
        self.service_summary = QLabel("Checking how the agent can run here…")
        self.service_summary.setObjectName("serviceSummary")
        self.service_summary.setWordWrap(True)
        self.service_summary.setTextFormat(Qt.TextFormat.RichText)
        self.service_details = QLabel()
        self.service_details.setObjectName("serviceDetails")
        self.service_details.setWordWrap(True)
        self.service_details.setTextFormat(Qt.TextFormat.RichText)
        self.service_details.setOpenExternalLinks(True)
        self.service_details.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.service_details.setVisible(False)
        box.addWidget(self.service_summary)
        box.addWidget(self.service_details)
        _paint_box(self.service_box, Tone.MUTED)
        outer.addWidget(self.service_box)

        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 8, 0)

        repo_box = QGroupBox("Repository")
        repo_form = self._form(repo_box)
        self.repository = QLineEdit(str(self.launcher.suggested_repository))
        self.repository.setObjectName("repositoryFolder")
        self.repository.setToolTip(
            "A folder on this computer or a mounted disk. An empty or new folder becomes a "
            "new restic repository; an existing repository is used as it is."
        )
        self.choose_button = QPushButton("Choose…")
        self.choose_button.clicked.connect(self._choose_repository)
        folder_row = QWidget()
        row = QHBoxLayout(folder_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.repository, 1)
        row.addWidget(self.choose_button)
        repo_form.addRow(
            "&Folder:",
            self._with_error(
                folder_row,
                "repository",
                "A disk other than the one you back up protects against that disk failing.",
            ),
        )
        self.password = SecretField("the repository password")
        self.confirm = SecretField("the same again")
        self.generate_button = QPushButton("Generate one")
        self.generate_button.setToolTip("Make up a strong password and show it once")
        self.generate_button.clicked.connect(self.generate)
        repo_form.addRow("&Password:", self._with_error(self.password, "password"))
        repo_form.addRow("Con&firm:", self._with_error(self.confirm, "confirm"))
        generate_row = QWidget()
        row = QHBoxLayout(generate_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.generate_button)
        generate_note = QLabel("or let restic-manager make up a strong one")
        generate_note.setStyleSheet(f"color: {_colour(Tone.MUTED)}")
        row.addWidget(generate_note, 1)
        repo_form.addRow("", generate_row)

        self.generated_panel = QFrame()
        self.generated_panel.setObjectName("generatedPanel")
        panel = QVBoxLayout(self.generated_panel)
        panel.setContentsMargins(12, 8, 12, 8)
        line = QHBoxLayout()
        self.generated_text = QLabel()
        self.generated_text.setObjectName("generatedPassword")
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setPointSizeF(mono.pointSizeF() * 1.2)
        self.generated_text.setFont(mono)
        self.generated_text.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the password to the clipboard")
        self.copy_button.clicked.connect(self._copy_password)
        line.addWidget(self.generated_text, 1)
        line.addWidget(self.copy_button)
        panel.addLayout(line)
        warning = QLabel(
            "<b>Store this password somewhere safe</b> (a password manager, or on paper). "
            "Without it the backups cannot be read — not by you, not by anyone. It is shown "
            "only now."
        )
        warning.setWordWrap(True)
        warning.setTextFormat(Qt.TextFormat.RichText)
        panel.addWidget(warning)
        _paint_box(self.generated_panel, Tone.WARN)
        self.generated_panel.setVisible(False)
        repo_form.addRow("", self.generated_panel)
        column.addWidget(repo_box)

        what_box = QGroupBox("What to back up")
        what_form = self._form(what_box)
        self.sources = QPlainTextEdit(str(self.launcher.home))
        self.sources.setObjectName("sources")
        self.sources.setTabChangesFocus(True)
        self.sources.setFixedHeight(self.sources.fontMetrics().lineSpacing() * 4 + 14)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self._add_source)
        sources_row = QWidget()
        row = QHBoxLayout(sources_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.sources, 1)
        row.addWidget(self.add_folder_button, 0, Qt.AlignmentFlag.AlignTop)
        what_form.addRow(
            "F&olders:",
            self._with_error(
                sources_row,
                "sources",
                "One folder per line. The repository folder is left out automatically.",
            ),
        )
        self.schedule = QComboBox()
        self.schedule.setObjectName("schedule")
        for label, cron in SCHEDULES:
            self.schedule.addItem(label, cron)
        self.schedule.setToolTip(
            "The agent runs the backups itself, with or without restic-manager open; a run "
            "missed while the computer was off happens when it is back."
        )
        what_form.addRow("&Automatically:", self.schedule)
        self.tags = QLineEdit()
        self.tags.setPlaceholderText("laptop, home")
        what_form.addRow(
            "&Tags:", self._with_error(self.tags, "tags", "Optional, comma separated.")
        )
        column.addWidget(what_box)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(body)
        self.form_scroll = scroll
        outer.addWidget(scroll, 1)

        self.form_error = QLabel()
        self.form_error.setObjectName("formError")
        self.form_error.setWordWrap(True)
        self.form_error.setStyleSheet(f"color: {_colour(Tone.BAD)}")
        self.form_error.setVisible(False)
        outer.addWidget(self.form_error)

        buttons = QHBoxLayout()
        self.add_host_button = QPushButton("Add host instead…")
        self.add_host_button.setToolTip("Show the install commands to run on this computer")
        self.add_host_button.clicked.connect(self._use_add_host)
        self.add_host_button.setVisible(False)
        buttons.addWidget(self.add_host_button)
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.reject)
        self.submit_button = QPushButton("Set up and start")
        self.submit_button.setObjectName("setUpButton")
        self.submit_button.setDefault(True)
        self.submit_button.setEnabled(False)  # until the detection answered
        self.submit_button.clicked.connect(self.submit)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.submit_button)
        outer.addLayout(buttons)

        self.repository.textEdited.connect(self._clear_errors)
        self.password.edit.textEdited.connect(self._password_edited)
        self.confirm.edit.textEdited.connect(self._password_edited)
        self.sources.textChanged.connect(self._clear_errors)
        self.tags.textEdited.connect(self._clear_errors)
        return page

    @staticmethod
    def _form(parent: QWidget) -> QFormLayout:
        form = QFormLayout(parent)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return form

    def _with_error(self, widget: QWidget, key: str, hint: str | None = None) -> QWidget:
        return field_with_error(widget, key, self._errors, hint, hint_colour=_colour(Tone.MUTED))

    def _show_error(self, key: str | None, message: str) -> None:
        if key not in self._errors:
            self.form_error.setText(message)
            self.form_error.setVisible(True)
            return
        label = self._errors[key]
        label.setText(message)
        label.setVisible(True)
        widget = {
            "repository": self.repository,
            "password": self.password.edit,
            "confirm": self.confirm.edit,
            "sources": self.sources,
            "tags": self.tags,
        }[key]
        widget.setFocus()
        self.form_scroll.ensureWidgetVisible(widget)

    # -- how the agent will run ------------------------------------------------------

    def _detect(self) -> None:
        self.ctx.runner.run(
            self.launcher.detect(),
            what="Checking how the agent can run on this computer",
            on_done=self._alive(self._on_detected),
            on_error=self._alive(self._on_detect_failed),
        )

    def _on_detected(self, plan: ServicePlanView) -> None:
        self.plan = plan
        tone = {"systemd-user": Tone.OK, "detached": Tone.WARN}.get(plan.mode, Tone.BAD)
        self.service_summary.setText(
            f"<span style='color:{_colour(tone)}'><b>{_escape(plan.summary)}</b></span>"
        )
        self.service_details.setText(_linked_docs(_escape(plan.details), self.launcher.docs))
        self.service_details.setToolTip(plan.probe)
        self.service_details.setVisible(True)
        _paint_box(self.service_box, tone)
        supported = plan.mode != "unsupported"
        self.submit_button.setEnabled(supported)
        self.add_host_button.setVisible(not supported)
        self.form_scroll.setEnabled(supported)
        if not supported:
            self.add_host_button.setDefault(True)
        self.service_detected.emit(plan)

    def _on_detect_failed(self, exc: Exception) -> None:
        log.error("detecting the service manager failed", exc_info=exc)
        self.service_summary.setText(
            f"<span style='color:{_colour(Tone.BAD)}'><b>Could not check how the agent can run "
            f"here:</b> {_escape(str(exc))}</span>"
        )
        _paint_box(self.service_box, Tone.BAD)
        self.add_host_button.setVisible(True)

    def _use_add_host(self) -> None:
        if self.navigator is not None:
            self.navigator.add_host()
        self.close()

    # -- the form's helpers ----------------------------------------------------------------

    def _choose_repository(self) -> None:
        current = Path(self.repository.text().strip() or self.launcher.home)
        start = current if current.is_dir() else current.parent
        dialog = QFileDialog(self, "Choose the repository folder", str(start))
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(self._alive(self._repository_chosen))
        dialog.open()

    def _repository_chosen(self, path: str) -> None:
        if path:
            self.repository.setText(path)
            self._clear_errors()

    def _add_source(self) -> None:
        dialog = QFileDialog(self, "Add a folder to back up", str(self.launcher.home))
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(self._alive(self._source_added))
        dialog.open()

    def _source_added(self, path: str) -> None:
        if not path:
            return
        lines = [line for line in self.sources.toPlainText().splitlines() if line.strip()]
        if path not in lines:
            self.sources.setPlainText("\n".join([*lines, path]))

    def generate(self) -> None:
        """Fill both password fields with a new password and show it once."""
        password = generate_password()
        self.password.edit.setText(password)
        self.confirm.edit.setText(password)
        self.generated_text.setText(password)
        self.copy_button.setText("Copy")
        self.generated_panel.setVisible(True)
        self._clear_errors()

    def _copy_password(self) -> None:
        QGuiApplication.clipboard().setText(self.generated_text.text())
        self.copy_button.setText("Copied ✓")

    def _password_edited(self, *_: object) -> None:
        self._clear_errors()
        # Edited by hand: the panel would show a password that is no longer the one.
        if self.generated_panel.isVisible() and self.password.text() != self.generated_text.text():
            self._hide_generated()

    def _hide_generated(self) -> None:
        self.generated_panel.setVisible(False)
        self.generated_text.clear()

    def _paths(self) -> list[str]:
        return [line.strip() for line in self.sources.toPlainText().splitlines() if line.strip()]

    # -- submit ------------------------------------------------------------------------

    def submit(self) -> None:
        if self._busy or not self.submit_button.isEnabled():
            return
        self._clear_errors()
        password = self.password.text()
        if not password:
            self._show_error("password", "Type a password, or click Generate one.")
            return
        if len(password) < MIN_PASSWORD:
            self._show_error(
                "password", f"Use at least {MIN_PASSWORD} characters (or click Generate one)."
            )
            return
        if self.confirm.text() != password:
            self._show_error("confirm", "The two passwords differ; type the same one twice.")
            return
        self._set_busy(True)
        self.ctx.runner.run(
            self.launcher.check_folders(self.repository.text(), self._paths()),
            what="Checking the folders",
            on_done=self._alive(self._on_folders_checked),
            on_error=self._alive(self._on_folders_refused),
        )

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.submit_button.setEnabled(not busy)
        self.submit_button.setText("Checking…" if busy else "Set up and start")
        self.form_scroll.setEnabled(not busy)

    def _on_folders_refused(self, exc: Exception) -> None:
        self._set_busy(False)
        if isinstance(exc, InvalidInput):
            self._show_error(exc.field, exc.message)
            return
        log.error("checking the folders failed", exc_info=exc)
        self._show_error(None, f"Could not check the folders: {exc}")

    def _on_folders_checked(self, folders: FolderPlanView) -> None:
        self._set_busy(False)
        tags = [t.strip() for t in self.tags.text().split(",") if t.strip()]
        try:
            new = parse_new_host(
                {
                    "hostname": self.launcher.hostname,
                    "repository": {
                        "url": str(folders.repository),
                        "password": self.password.text(),
                    },
                    "initial_paths": list(folders.sources),
                    "tags": tags,
                }
            )
        except InvalidInput as exc:
            key = "tags" if exc.field == "tags" else None
            message = exc.message
            if exc.field == "hostname":
                message = (
                    f"This computer's name {self.launcher.hostname!r} cannot be a host name "
                    "(letters, digits, '.', '-', '_'); use Add host with another name."
                )
            self._show_error(key, message.replace("'tags'", "Tags"))
            return
        self.folders = folders
        self._cron = self.schedule.currentData()
        self._cron_label = self.schedule.currentText()
        self._start_setup(new)

    # -- page 2: progress ----------------------------------------------------------------

    def _build_progress_page(self) -> QWidget:
        page = QWidget()
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        self.progress_heading = QLabel()
        self.progress_heading.setWordWrap(True)
        self.progress_heading.setTextFormat(Qt.TextFormat.RichText)
        column.addWidget(self.progress_heading)
        steps = QFrame()
        steps.setObjectName("stepsBox")
        steps_layout = QVBoxLayout(steps)
        steps_layout.setContentsMargins(12, 10, 12, 10)
        steps_layout.setSpacing(4)
        for key, title in STEPS:
            row = StepRow(key, title)
            self._steps[key] = row
            steps_layout.addWidget(row)
        _paint_box(steps, Tone.NEUTRAL)
        column.addWidget(steps)

        self.outcome = QLabel()
        self.outcome.setObjectName("outcome")
        self.outcome.setWordWrap(True)
        self.outcome.setTextFormat(Qt.TextFormat.RichText)
        self.outcome.setOpenExternalLinks(True)
        self.outcome.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.outcome.setVisible(False)
        column.addWidget(self.outcome)
        column.addStretch(1)

        buttons = QHBoxLayout()
        self.back_button = QPushButton("Back to the form")
        self.back_button.clicked.connect(self._back_to_form)
        self.back_button.setVisible(False)
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self.retry)
        self.retry_button.setVisible(False)
        self.open_host_button = QPushButton("Open host")
        self.open_host_button.clicked.connect(self._open_host)
        self.open_host_button.setEnabled(False)
        self.open_host_button.setVisible(self.navigator is not None)
        self.backup_button = QPushButton("Back up now")
        self.backup_button.setObjectName("backupNow")
        self.backup_button.setEnabled(False)
        self.backup_button.setToolTip("Start the first backup and watch it in the job window")
        self.backup_button.clicked.connect(self.back_up_now)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.accept)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.retry_button)
        buttons.addStretch(1)
        buttons.addWidget(self.open_host_button)
        buttons.addWidget(self.backup_button)
        buttons.addWidget(self.close_button)
        column.addLayout(buttons)
        return page

    def step_state(self, key: str) -> str:
        return self._steps[key].state

    def step_detail(self, key: str) -> str:
        label = self._steps[key].detail
        return label.text() if label.isVisibleTo(self) else ""

    def _step(self, key: str, state: str, detail: str | None = None) -> None:
        if not shiboken6.isValid(self):
            return
        row = self._steps[key]
        if row.state == state and detail is None:
            return
        row.set_state(state, detail)
        self.step_changed.emit(key, state)

    def _outcome(self, text: str, tone: Tone = Tone.NEUTRAL) -> None:
        self.outcome.setText(f"<span style='color:{_colour(tone)}'>{text}</span>")
        self.outcome.setVisible(bool(text))

    def _start_setup(self, new: NewHost) -> None:
        folders = self.folders
        assert folders is not None
        self._steps["configure"].set_state(PENDING, title=self._configure_title())
        self.progress_heading.setText(
            f"Setting up <b>{_escape(new.hostname)}</b>: backups of "
            f"{_escape(', '.join(folders.sources))} into {_escape(str(folders.repository))}."
        )
        for key, _title in STEPS:
            self._step(key, PENDING, "")
        self._outcome("")
        self.back_button.setVisible(False)
        self.retry_button.setVisible(False)
        self.pages.setCurrentWidget(self.progress_page)
        self.close_button.setDefault(True)
        self.ctx.runner.run(self._create_and_enrol(new), what="Setting up this computer")

    def _configure_title(self) -> str:
        parts = []
        if self.folders is not None and self.folders.excludes:
            parts.append("leave the repository out of the backup")
        if self._cron:
            parts.append("schedule it")
        return ("Configure the backup: " + " and ".join(parts)) if parts else "Configure the backup"

    async def _create_and_enrol(self, new: NewHost) -> None:
        """Host, then enrolment; a failed enrolment takes the host away again.

        Runs to the end even if the dialog is closed meanwhile: the cleanup must
        happen either way."""
        self._step("host", RUNNING)
        try:
            grant = await self.ctx.enrolment.add_host(new, OPERATOR)
        except Exception as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            if not isinstance(exc, ServiceError):
                log.error("adding this computer failed", exc_info=exc)
            self._step("host", FAILED, _escape(message))
            self._offer_back("Nothing was created. Change what the message says and try again.")
            return
        self.host_id = grant.host_id
        if shiboken6.isValid(self):
            self.host_created.emit(grant.host_id)
            self.open_host_button.setEnabled(True)
        self._step("host", DONE, f"Host {_escape(new.hostname)} (id {grant.host_id}).")

        self._step("enrol", RUNNING, _escape(f"Writing {self.launcher.config_path}"))
        try:
            await self.launcher.enrol(grant.token)
        except Exception as exc:
            log.warning("enrolling the local agent failed: %s", exc)
            removed = await self._remove_host(grant.host_id)
            self._step("enrol", FAILED, _escape(str(exc)))
            if removed:
                self._step("host", FAILED, "Removed again, so nothing is left half-done.")
                self._offer_back("Fix the problem above and try again.")
            else:
                self._offer_back(
                    "The host could not be removed again: delete it in the fleet "
                    "(it is not enrolled) before trying again."
                )
            return
        self._step("enrol", DONE, _escape(f"Config in {self.launcher.config_path}"))
        if shiboken6.isValid(self):
            # The control plane holds it now (encrypted); the widgets need not.
            self.password.clear()
            self.confirm.clear()
            self._hide_generated()
        await self._after_enrol("configure")

    async def _remove_host(self, host_id: int) -> bool:
        try:
            await self.ctx.hosts.delete_host(host_id, OPERATOR)
        except Exception:
            log.exception("removing host %s after a failed enrolment failed", host_id)
            return False
        self.host_id = None
        if shiboken6.isValid(self):
            self.open_host_button.setEnabled(False)
        return True

    async def _after_enrol(self, first: str) -> None:
        """configure → start, from ``first``; a failure stops here with Retry."""
        order = ["configure", "start"]
        for key in order[order.index(first) :]:
            self._step(key, RUNNING, "")
            try:
                detail = await (self._configure() if key == "configure" else self._start())
            except Exception as exc:
                message = exc.message if isinstance(exc, ServiceError) else str(exc)
                log.warning("setting up this computer: %s failed: %s", key, message)
                self._step(key, FAILED, _escape(message))
                self._resume_at = key
                if shiboken6.isValid(self):
                    self.retry_button.setVisible(True)
                    self._outcome(
                        "The host is enrolled but its agent is not running yet. Retry, or "
                        "start it yourself: <code>"
                        + _escape(f"restic-manager-agent run --config {self.launcher.config_path}")
                        + "</code>",
                        Tone.WARN,
                    )
                return
            self._step(key, DONE, detail)
        self._resume_at = None
        if self._steps["connect"].state != DONE:
            self._step("connect", RUNNING, "Waiting for the agent to connect to restic-manager")
        if shiboken6.isValid(self):
            self._connect_timer.start()
            self._read_host()

    async def _configure(self) -> str:
        host_id, folders = self.host_id, self.folders
        assert host_id is not None and folders is not None
        notes = [f"Backs up {_escape(', '.join(folders.sources))}."]
        if folders.excludes:
            groups = await self.ctx.sources.list_groups(host_id)
            group = next((g for g in groups if g.name == DEFAULT_GROUP), None)
            if group is None:
                raise RuntimeError(f"the host has no source group {DEFAULT_GROUP!r}")
            excludes = list(dict.fromkeys([*group.excludes, *folders.excludes]))
            body: dict[str, Any] = {
                "name": group.name,
                "includes": group.includes,
                "excludes": excludes,
                "retention": group.retention,
                "retry_max": group.retry_max,
                "retry_backoff_seconds": group.retry_backoff_seconds,
                "pre_hook": group.pre_hook,
                "post_hook": group.post_hook,
            }
            await self.ctx.sources.update_group(host_id, group.id, body, OPERATOR)
            notes.append(f"Leaves out {_escape(', '.join(folders.excludes))} (the repository).")
        if self._cron:
            groups = await self.ctx.sources.list_groups(host_id)
            schedules = await self.ctx.schedules.list_schedules(host_id)
            if not any(s.cron == self._cron for s in schedules):
                await self.ctx.schedules.create_schedule(
                    host_id,
                    {
                        "cron": self._cron,
                        "enabled": True,
                        "source_group_ids": [g.id for g in groups],
                    },
                    OPERATOR,
                )
            notes.append(f"{_escape(self._cron_label)}.")
        else:
            notes.append("No schedule: backups run when you click Back up now.")
        return " ".join(notes)

    async def _start(self) -> str:
        plan = self.plan
        assert plan is not None
        started = await self.launcher.start(plan.mode)
        self.started = started
        return _escape(f"{started.description} Log: {started.log_hint}.")

    def retry(self) -> None:
        if self._resume_at is None:
            return
        self.retry_button.setVisible(False)
        self._outcome("")
        self.ctx.runner.run(self._after_enrol(self._resume_at), what="Setting up this computer")

    def _offer_back(self, text: str) -> None:
        if not shiboken6.isValid(self):
            return
        self._outcome(text, Tone.BAD)
        self.back_button.setVisible(True)
        self.back_button.setDefault(True)

    def _back_to_form(self) -> None:
        self.back_button.setVisible(False)
        self.pages.setCurrentWidget(self.form_page)
        self.submit_button.setDefault(True)

    # -- connected, repository, backup (driven by the bridge) --------------------------------

    def _on_hosts_changed(self, host_ids: set[int]) -> None:
        if self.host_id is not None and self.host_id in host_ids:
            self._read_host()

    def _on_hosts_removed(self, host_ids: set[int]) -> None:
        if self.host_id is None or self.host_id not in host_ids:
            return
        self.host_id = None
        self._connect_timer.stop()
        self.backup_button.setEnabled(False)
        self.open_host_button.setEnabled(False)
        self._outcome("This host was deleted in the fleet.", Tone.MUTED)

    def _read_host(self) -> None:
        if self.host_id is None or self._steps["enrol"].state != DONE:
            return
        if self._reading_host:
            self._read_again = True
            return
        self._reading_host = True
        self.ctx.runner.run(
            self.ctx.hosts.get_host(self.host_id),
            what="Reading this computer's host",
            on_done=self._alive(self._on_host_read),
            on_error=self._alive(self._on_host_read_failed),
        )

    def _on_host_read_failed(self, exc: Exception) -> None:
        self._reading_host = False
        self._read_again = False
        if isinstance(exc, ServiceError) and exc.status == 404:
            self._on_hosts_removed({self.host_id} if self.host_id is not None else set())
            return
        log.error("reading the host failed", exc_info=exc)

    def _on_host_read(self, host: HostView) -> None:
        self._reading_host = False
        self.host = host
        if host.status == "online":
            self._connect_timer.stop()
            details = ", ".join(
                p
                for p in (
                    "/".join(x for x in (host.os, host.arch) if x),
                    f"agent {host.agent_version}" if host.agent_version else "",
                    f"restic {host.restic_version}" if host.restic_version else "",
                )
                if p
            )
            self._step("connect", DONE, _escape(details))
            if host.repo_status == "ready":
                folders = self.folders
                where = _escape(str(folders.repository)) if folders is not None else "ready"
                verb = (
                    "Opened the existing repository"
                    if (folders is not None and folders.existing_repository)
                    else "Ready"
                )
                self._step("repo", DONE, f"{verb}: {where}")
            elif host.repo_status == "init_failed":
                self._step(
                    "repo",
                    FAILED,
                    _escape(host.repo_status_error or "no details")
                    + "<br>Wrong password for an existing repository, or a folder restic "
                    "cannot write? Fix it on the host page (Credentials); saving checks "
                    "the repository again.",
                )
            else:
                self._step("repo", RUNNING, "Checking the repository (initialising it if new)")
        elif self._steps["connect"].state == DONE:
            self._step("connect", WARN, "The agent disconnected; it reconnects by itself.")
        ready = host.status == "online" and host.repo_status == "ready"
        running = self.job is not None and self.job.status in ("queued", "running")
        self.backup_button.setEnabled(ready and not running)
        if ready and self.job_id is None:
            self.backup_button.setDefault(True)
            self.backup_button.setFocus()
            self._outcome(
                "All set. Click <b>Back up now</b> to watch the first backup run.", Tone.OK
            )
        if self._read_again:
            self._read_again = False
            self._read_host()

    def _connect_overdue(self) -> None:
        if self._steps["connect"].state == DONE:
            return
        started = self.started
        where = started.log_hint if started is not None else str(self.launcher.config_path)
        self._step(
            "connect",
            WARN,
            _escape(
                f"Not connected after {self._connect_timer.interval() // 1000} s. Still "
                f"waiting; the agent's log may say why: {where}"
            ),
        )

    def back_up_now(self) -> None:
        host_id = self.host_id
        if host_id is None or not self.backup_button.isEnabled():
            return
        self.backup_button.setEnabled(False)

        async def go() -> str:
            groups = await self.ctx.sources.list_groups(host_id)
            group = next((g for g in groups if g.name == DEFAULT_GROUP), None) or (
                groups[0] if groups else None
            )
            if group is None:
                raise RuntimeError("this host has no source group to back up")
            return await self.ctx.jobs.dispatch(
                host_id, "backup", actor=OPERATOR, source_group_id=group.id
            )

        self._step("backup", RUNNING, "Starting")
        self.ctx.runner.run(
            go(),
            what="Starting the first backup",
            on_done=self._alive(self._on_backup_started),
            on_error=self._alive(self._on_backup_failed_to_start),
        )

    def _on_backup_started(self, job_id: str) -> None:
        self.job_id = job_id
        self.job = None
        self._step("backup", RUNNING, "Running — the job window shows it live")
        self._outcome("")
        self.backup_started.emit(job_id)
        if self.navigator is not None:
            self.navigator.open_job(job_id)
        self._read_job()

    def _on_backup_failed_to_start(self, exc: Exception) -> None:
        message = exc.message if isinstance(exc, ServiceError) else str(exc)
        self._step("backup", FAILED, _escape(message))
        self.backup_button.setEnabled(True)

    def _on_jobs_changed(self, job_ids: set[str]) -> None:
        if self.job_id is not None and self.job_id in job_ids:
            self._read_job()

    def _read_job(self) -> None:
        if self.job_id is None:
            return
        self.ctx.runner.run(
            self.ctx.jobs.get_job(self.job_id),
            what="Reading the first backup",
            on_done=self._alive(self._on_job_read),
            on_error=lambda exc: log.warning("reading the backup job failed: %s", exc),
        )

    def _on_job_read(self, job: JobView) -> None:
        if job.id != self.job_id:
            return
        self.job = job
        if job.status in ("queued", "running"):
            percent = (job.progress or {}).get("percent")
            text = "Running" + (f" — {percent:.0f} %" if isinstance(percent, int | float) else "")
            self._step("backup", RUNNING, text + " (the job window shows it live)")
            return
        self.backup_button.setEnabled(self.host is not None and self.host.status == "online")
        self.backup_button.setText("Back up again")
        if job.status == "succeeded":
            summary = job.summary or {}
            snapshot = str(summary.get("snapshot_id") or "")[:8]
            parts = [f"Snapshot {snapshot}" if snapshot else "Done"]
            files = summary.get("total_files_processed")
            if isinstance(files, int):
                parts.append(f"{files} files")
            added = summary.get("data_added")
            if isinstance(added, int):
                parts.append(f"{human_bytes(added)} added")
            if job.started_at and job.finished_at:
                parts.append(f"in {duration(job.finished_at - job.started_at)}")
            state = WARN if job.warnings else DONE
            note = " (with warnings: some files could not be read)" if job.warnings else ""
            self._step("backup", state, _escape(", ".join(parts) + note))
            self._outcome(
                "This computer is backed up. The agent keeps going when you close restic-manager.",
                Tone.OK,
            )
        else:
            self._step("backup", FAILED, _escape(job.error or job.status))
            self._outcome("The backup did not finish; the job window has its log.", Tone.BAD)

    def _open_host(self) -> None:
        if self.navigator is not None and self.host_id is not None:
            self.navigator.open_host(self.host_id)

    # -- plumbing ------------------------------------------------------------------------

    def _alive(self, fn: Any) -> Any:
        def call(arg: Any) -> None:
            if shiboken6.isValid(self):
                fn(arg)

        return call

    def closeEvent(self, event: QCloseEvent) -> None:
        self._connect_timer.stop()
        super().closeEvent(event)
