"""Danger zone: delete the host (type its name to confirm)."""

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
from ui_qt.host_tabs.common import RED, HostTab, error_label, error_text, guarded, set_error
from ui_qt.navigator import Navigator


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

        box = QGroupBox("Delete this host")
        box.setObjectName("dangerBox")
        box.setStyleSheet(
            f"QGroupBox#dangerBox {{ border: 1px solid {RED}; border-radius: 4px;"
            " margin-top: 1.4em; padding: 10px; }"
            " QGroupBox#dangerBox::title { subcontrol-origin: margin; left: 10px;"
            f" padding: 0 4px; color: {RED}; font-weight: bold; }}"
        )
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
        # The same padding and weight in both states, so enabling it never clips the text.
        self.delete_button.setStyleSheet(
            "QPushButton { padding: 5px 14px; font-weight: bold; }"
            f" QPushButton:enabled {{ color: white; background: {RED}; border: none;"
            " border-radius: 3px; }"
        )
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
        layout.addWidget(box)
        layout.addStretch(1)
        self._describe(None)

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

    def _update_button(self) -> None:
        name = self.host_name
        # Exactly the name: no trimming, no case folding.
        self.delete_button.setEnabled(
            not self.deleting and name is not None and self.confirm.text() == name
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
