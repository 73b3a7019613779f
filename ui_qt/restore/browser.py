"""The restore browser window: pick and tick → choose the target → confirm → live job.

A top-level window per host (it deletes itself when closed). The restore
starts through ``RestoreService.start_restore``; the job window then takes
over (``navigator.open_job``) and this window closes.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from server_core.services.context import OPERATOR
from server_core.views import HostView
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import error_text, guarded, set_error
from ui_qt.navigator import Navigator
from ui_qt.restore.browse_page import MAX_PATHS, BrowsePage, Selection
from ui_qt.restore.confirm_page import ConfirmPage
from ui_qt.restore.target_page import Target, TargetPage
from ui_qt.restore.tree_model import PAGE, POLL_S

STEPS = ("1 Choose files", "2 Choose target", "3 Confirm")


class RestoreBrowser(QWidget):
    started = Signal(str)  # the restore job's id

    def __init__(
        self,
        ctx: UiContext,
        navigator: Navigator,
        host_id: int,
        snapshot_id: str | None = None,
        parent: QWidget | None = None,
        *,
        page: int = PAGE,
        poll_s: float = POLL_S,
    ) -> None:
        super().__init__(parent)
        self.setWindowFlag(Qt.WindowType.Window, True)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
        self.setObjectName("restoreBrowser")
        self.ctx = ctx
        self.navigator = navigator
        self.host_id = host_id
        self.host_name = f"host {host_id}"
        self.selection: Selection | None = None
        self.chosen: Target | None = None
        self.job_id: str | None = None
        self._busy = False
        self.setWindowTitle("Restore")
        self.resize(1000, 700)

        self.browse = BrowsePage(ctx, host_id, snapshot_id, page=page, poll_s=poll_s)
        self.browse.selection_changed.connect(self._update_buttons)
        self.target_page = TargetPage()
        self.target_page.changed.connect(self._update_buttons)
        self.confirm_page = ConfirmPage()
        self.pages = QStackedWidget()
        for widget in (self.browse, self.target_page, self.confirm_page):
            self.pages.addWidget(widget)

        self.steps = QLabel()
        self.steps.setObjectName("restoreSteps")
        self.steps.setTextFormat(Qt.TextFormat.RichText)
        self.status = QLabel()
        self.status.setObjectName("restoreStatus")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.close)
        self.back_button = QPushButton("← Back")
        self.back_button.setObjectName("restoreBack")
        self.back_button.clicked.connect(self.back)
        self.next_button = QPushButton("Next →")
        self.next_button.setObjectName("restoreNext")
        self.next_button.setDefault(True)
        self.next_button.clicked.connect(self.next)
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.next_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.steps)
        layout.addWidget(self.pages, 1)
        layout.addLayout(buttons)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.close)
        self._update_buttons()

        ctx.runner.run(
            ctx.hosts.get_host(host_id),
            what="loading the host",
            on_done=guarded(self, self._host_loaded),
            on_error=lambda _exc: None,  # the browse page reports what matters
        )

    # -- state ------------------------------------------------------------------------

    def _host_loaded(self, host: HostView) -> None:
        self.host_name = host.name
        self.setWindowTitle(f"Restore from {host.name}")
        self.browse.set_host_name(host.name)
        snap = self.browse.snapshot
        self.target_page.set_context(host.name, snap.short_id if snap else "")

    @property
    def step(self) -> int:
        return self.pages.currentIndex()

    def _update_buttons(self) -> None:
        step = self.step
        self.steps.setText(
            "  ›  ".join(
                f"<b>{text}</b>" if n == step else f'<span style="color:gray">{text}</span>'
                for n, text in enumerate(STEPS)
            )
        )
        self.back_button.setVisible(step > 0)
        self.back_button.setEnabled(not self._busy)
        if step == 0:
            self.next_button.setText("Next →")
            self.next_button.setEnabled(not self._busy and self.browse.has_selection())
        elif step == 1:
            self.next_button.setText("Next →")
            self.next_button.setEnabled(not self._busy and self.target_page.target() is not None)
        else:
            in_place = self.chosen is not None and self.chosen.in_place
            self.next_button.setText("Restore in place" if in_place else "Restore")
            self.next_button.setEnabled(not self._busy and self.selection is not None)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self._busy = busy
        self.status.setStyleSheet("")
        self.status.setText(text)
        self._update_buttons()

    # -- navigation -------------------------------------------------------------------

    def back(self) -> None:
        if self.step > 0 and not self._busy:
            self.pages.setCurrentIndex(self.step - 1)
            self.status.setText("")
            self._update_buttons()

    def next(self) -> None:
        if not self.next_button.isEnabled():
            return
        if self.step == 0:
            self._to_target()
        elif self.step == 1:
            self._to_confirm()
        else:
            self.start()

    def _too_many(self, count: int) -> bool:
        if count <= MAX_PATHS:
            return False
        set_error(
            self.browse.selection_error,
            f"{count:,} separate paths are selected; one restore takes at most "
            f"{MAX_PATHS:,}. Tick whole folders instead of many single files.",
        )
        return True

    def _to_target(self) -> None:
        # Counted before listing anything: a folder of 10⁵ files with one
        # unticked would be listed in full only to be refused.
        if self._too_many(self.browse.current_totals().paths):
            return
        self._set_busy(True, "Collecting the selected paths…")

        def done(selection: Selection) -> None:
            self._set_busy(False)
            if not selection.paths:
                set_error(self.browse.selection_error, "Nothing is selected.")
                return
            if self._too_many(len(selection.paths)):
                return
            self.selection = selection
            self.target_page.set_context(self.host_name, selection.snapshot.short_id)
            self.pages.setCurrentWidget(self.target_page)
            self._update_buttons()
            self.target_page.target_dir.setFocus()

        def failed(exc: Exception) -> None:
            self._set_busy(False)
            set_error(
                self.browse.selection_error, f"Could not list the selection: {error_text(exc)}"
            )

        self.ctx.runner.run(
            self.browse.resolved_selection(),
            what="collecting the selection",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def _to_confirm(self) -> None:
        target = self.target_page.target()
        if target is None or self.selection is None:
            return
        self.chosen = target
        self.confirm_page.show_plan(self.host_name, self.selection, target)
        self.pages.setCurrentWidget(self.confirm_page)
        self._update_buttons()

    def start(self) -> None:
        selection, target = self.selection, self.chosen
        if selection is None or target is None or self._busy:
            return
        self._set_busy(True, "Starting the restore…")
        set_error(self.confirm_page.error, None)

        def done(job_id: str) -> None:
            self.job_id = job_id
            self._set_busy(False, "Restore started.")
            self.started.emit(job_id)
            self.navigator.open_job(job_id)
            self.close()

        def failed(exc: Exception) -> None:
            self._set_busy(False)
            text = error_text(exc)
            field = exc.field if isinstance(exc, ServiceError) else None
            if field in ("target_dir", "confirm_hostname"):
                text += " (go Back to change the target)"
            set_error(self.confirm_page.error, f"The restore was not started: {text}")

        self.ctx.runner.run(
            self.ctx.restore.start_restore(
                self.host_id,
                selection.snapshot.id,
                selection.paths,
                target_dir=target.target_dir,
                in_place=target.in_place,
                confirm_hostname=target.confirm_hostname,
                actor=OPERATOR,
            ),
            what="starting the restore",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def closeEvent(self, event: QCloseEvent) -> None:
        self.browse.shutdown()
        super().closeEvent(event)
