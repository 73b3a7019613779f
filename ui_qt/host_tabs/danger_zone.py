"""Danger zone: re-initialise the repository, delete the host (type its name to confirm)."""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from server_core.services.context import OPERATOR
from server_core.views import HostView
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import (
    GREEN,
    RED,
    HostTab,
    error_label,
    error_text,
    guarded,
    set_error,
)
from ui_qt.navigator import Navigator

# The same padding and weight in both states, so enabling it never clips the text.
DANGER_BUTTON = (
    "QPushButton { padding: 5px 14px; font-weight: bold; }"
    f" QPushButton:enabled {{ color: white; background: {RED}; border: none;"
    " border-radius: 3px; }"
)


def danger_box(title: str, object_name: str) -> QGroupBox:
    box = QGroupBox(title)
    box.setObjectName(object_name)
    box.setStyleSheet(
        f"QGroupBox#{object_name} {{ border: 1px solid {RED}; border-radius: 4px;"
        " margin-top: 1.4em; padding: 10px; }"
        f" QGroupBox#{object_name}::title {{ subcontrol-origin: margin; left: 10px;"
        f" padding: 0 4px; color: {RED}; font-weight: bold; }}"
    )
    return box


class DangerZoneTab(HostTab):
    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        on_deleting: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_deleting(True)`` when the delete starts, ``(False)`` if it failed."""
        super().__init__(ctx, navigator, host_id)
        self._on_deleting = on_deleting
        self.deleting = False

        self.reinit_box = self._build_reinit()
        box = danger_box("Delete this host", "dangerBox")
        self.explain = QLabel()
        self.explain.setWordWrap(True)
        self.prompt = QLabel()
        self.confirm = QLineEdit()
        self.confirm.setObjectName("confirmName")
        self.confirm.setMaximumWidth(320)
        self.confirm.textChanged.connect(self._update_button)
        self.confirm.returnPressed.connect(self.delete)
        self.delete_button = QPushButton("Delete host")
        self.delete_button.setObjectName("deleteHost")
        self.delete_button.setStyleSheet(DANGER_BUTTON)
        self.delete_button.setEnabled(False)
        self.delete_button.clicked.connect(self.delete)
        self.error = error_label()

        row = QHBoxLayout()
        row.addWidget(self.confirm, 1)
        row.addWidget(self.delete_button)
        row.addStretch(1)
        inner = QVBoxLayout(box)
        inner.addWidget(self.explain)
        inner.addSpacing(6)
        inner.addWidget(self.prompt)
        inner.addLayout(row)
        inner.addWidget(self.error)

        layout = QVBoxLayout(self)
        layout.addWidget(self.reinit_box)
        layout.addSpacing(8)
        layout.addWidget(box)
        layout.addStretch(1)
        self._describe(None)

    def _build_reinit(self) -> QGroupBox:
        self.reiniting = False
        box = danger_box("Re-initialise the repository", "reinitBox")
        self.reinit_explain = QLabel(
            "Runs <code>restic init</code> against this host's repository again, with the "
            "everyday credential. Use it after the repository was deleted or moved to new, "
            "empty storage. restic refuses to initialise a location that already holds a "
            "repository, so existing backups are not overwritten — but a new repository "
            "starts empty: its snapshot list, statistics and trend start over."
        )
        self.reinit_explain.setWordWrap(True)
        self.reinit_prompt = QLabel("Loading…")
        self.reinit_confirm = QLineEdit()
        self.reinit_confirm.setObjectName("reinitConfirmName")
        self.reinit_confirm.setMaximumWidth(320)
        self.reinit_confirm.textChanged.connect(self._update_button)
        self.reinit_confirm.returnPressed.connect(self.reinit)
        self.reinit_button = QPushButton("Re-initialise")
        self.reinit_button.setObjectName("reinitRepo")
        self.reinit_button.setStyleSheet(DANGER_BUTTON)
        self.reinit_button.setEnabled(False)
        self.reinit_button.clicked.connect(self.reinit)
        self.reinit_status = QLabel()
        self.reinit_status.setObjectName("reinitStatus")
        self.reinit_status.setWordWrap(True)
        self.reinit_status.hide()
        row = QHBoxLayout()
        row.addWidget(self.reinit_confirm, 1)
        row.addWidget(self.reinit_button)
        row.addStretch(1)
        inner = QVBoxLayout(box)
        inner.addWidget(self.reinit_explain)
        inner.addSpacing(6)
        inner.addWidget(self.reinit_prompt)
        inner.addLayout(row)
        inner.addWidget(self.reinit_status)
        return box

    @property
    def host_name(self) -> str | None:
        return self.host.name if self.host is not None else None

    def set_host(self, host: HostView) -> None:
        super().set_host(host)
        self._describe(host.name)
        self._update_button()

    def _describe(self, name: str | None) -> None:
        name = html.escape(name) if name else None
        shown = f"<b>{name}</b>" if name else "this host"
        self.explain.setText(
            f"Deleting {shown} removes it from the control plane with its jobs, job logs, "
            "snapshot list, source groups, schedules and stored credentials. Its agent's "
            "access is revoked and its connection is closed at once; to manage the machine "
            "again it must be enrolled anew.<br><br>The repository and the backups in it "
            "are <b>not</b> touched."
        )
        self.prompt.setText(f"Type <b>{name}</b> to confirm:" if name else "Loading…")
        self.confirm.setPlaceholderText(name or "")
        self.reinit_prompt.setText(f"Type <b>{name}</b> to confirm:" if name else "Loading…")
        self.reinit_confirm.setPlaceholderText(name or "")

    def _update_button(self) -> None:
        name = self.host_name
        # Exactly the name: no trimming, no case folding.
        self.delete_button.setEnabled(
            not self.deleting and name is not None and self.confirm.text() == name
        )
        self.reinit_button.setEnabled(
            not self.deleting
            and not self.reiniting
            and name is not None
            and self.reinit_confirm.text() == name
        )

    def reinit(self) -> None:
        if not self.reinit_button.isEnabled():
            return
        self.reiniting = True
        self._update_button()
        self.reinit_button.setText("Starting…")
        self.reinit_status.hide()

        def finished() -> None:
            self.reiniting = False
            self.reinit_button.setText("Re-initialise")
            self._update_button()

        def done(job_id: str) -> None:
            self.reinit_confirm.clear()
            finished()
            self.reinit_status.setStyleSheet(f"color: {GREEN};")
            self.reinit_status.setText(
                "restic init started: the repository status in the header updates when it finishes."
            )
            self.reinit_status.show()
            self.navigator.open_job(job_id)

        def failed(exc: Exception) -> None:
            finished()
            self.reinit_status.setStyleSheet(f"color: {RED};")
            self.reinit_status.setText(f"Could not re-initialise: {error_text(exc)}")
            self.reinit_status.show()

        self.ctx.runner.run(
            self.ctx.maintenance.reinit(self.host_id, OPERATOR),
            what=f"re-initialising the repository of {self.host_name}",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def delete(self) -> None:
        if not self.delete_button.isEnabled():
            return
        self.deleting = True
        self._update_button()
        self.delete_button.setText("Deleting…")
        set_error(self.error, None)
        if self._on_deleting is not None:
            self._on_deleting(True)
        self.ctx.runner.run(
            self.ctx.hosts.delete_host(self.host_id, OPERATOR),
            what=f"deleting host {self.host_name}",
            on_done=guarded(self, self._deleted),
            on_error=guarded(self, self._failed),
        )

    def _deleted(self, _result: None) -> None:
        self.delete_button.setText("Deleted")
        self.navigator.show_fleet()

    def _failed(self, exc: Exception) -> None:
        self.deleting = False
        if self._on_deleting is not None:
            self._on_deleting(False)
        self.delete_button.setText("Delete host")
        self._update_button()
        set_error(self.error, f"Could not delete the host: {error_text(exc)}")
