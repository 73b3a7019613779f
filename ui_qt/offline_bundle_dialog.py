"""Offline bundle…: one file that installs and enrols a host which cannot reach
anything but the app (opened from the Add host result page).

The operator picks the host's platform, optionally a restic binary to carry
along, and where to save. The file holds a fresh one-time enrolment token, so
the dialog says to treat it like a password; the token replaces the one in the
install commands on the Add host page, which then shows the new token's
commands (either works, once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from server_core.offline_bundle import (
    BundleRequest,
    OfflineBundle,
    OfflineBundleService,
    bundle_filename,
)
from server_core.services.context import OPERATOR
from ui_qt.formatting import absolute_time
from ui_qt.host_tabs.common import guarded
from ui_qt.tasks import AsyncRunner
from ui_qt.widgets.colors import Tone, text_color

log = logging.getLogger(__name__)

# (os, arch, label): what the agent is built for (packaging/README.md).
PLATFORMS: tuple[tuple[str, str, str], ...] = (
    ("linux", "amd64", "Linux, x86-64"),
    ("linux", "arm64", "Linux, ARM64"),
    ("windows", "amd64", "Windows, x86-64"),
    ("windows", "arm64", "Windows, ARM64"),
)


def _colour(tone: Tone) -> str:
    return str(text_color(tone).name())


class OfflineBundleDialog(QDialog):
    """Window-modal over the Add host dialog; file pickers are non-blocking."""

    built = Signal(object)  # OfflineBundle
    failed = Signal(str)

    def __init__(
        self,
        bundles: OfflineBundleService,
        runner: AsyncRunner,
        host_id: int,
        hostname: str,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.bundles = bundles
        self.runner = runner
        self.host_id = host_id
        self.hostname = hostname
        self.result_bundle: OfflineBundle | None = None
        self._dest_edited = False
        self.setWindowTitle(f"Offline bundle — {hostname}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setMinimumWidth(620)

        intro = QLabel(
            f"One file that installs and enrols the agent on <b>{_escape(hostname)}</b> "
            "without any download: copy it to the host (a USB stick will do) and run it as "
            "root — or on Windows, unzip it and run <i>install.cmd</i> as administrator. "
            "The host only needs to reach this app."
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)

        self.warning = QLabel(
            "<b>The file contains a one-time enrolment token: treat it like a password.</b> "
            "Keep it off shared folders and delete it once the host is online. The token "
            "expires in an hour like any other, and making a bundle replaces the token in "
            "the install commands (they are updated to the new one)."
        )
        self.warning.setObjectName("bundleWarning")
        self.warning.setWordWrap(True)
        self.warning.setTextFormat(Qt.TextFormat.RichText)
        self.warning.setStyleSheet(f"color: {_colour(Tone.WARN)}")

        self.platform = QComboBox()
        for os_name, arch, label in PLATFORMS:
            self.platform.addItem(label, (os_name, arch))
        self.platform.currentIndexChanged.connect(self._platform_changed)
        self.bundled_note = QLabel()
        self.bundled_note.setWordWrap(True)
        self.bundled_note.setStyleSheet(f"color: {_colour(Tone.MUTED)}")

        self.restic = QLineEdit()
        self.restic.setPlaceholderText("optional: a restic binary for the host's platform")
        self.restic.setClearButtonEnabled(True)
        self.restic_button = QPushButton("Browse…")
        self.restic_button.clicked.connect(self.choose_restic)
        restic_row = QHBoxLayout()
        restic_row.addWidget(self.restic, 1)
        restic_row.addWidget(self.restic_button)

        self.dest = QLineEdit()
        self.dest.textEdited.connect(self._dest_typed)
        self.dest_button = QPushButton("Choose…")
        self.dest_button.clicked.connect(self.choose_destination)
        dest_row = QHBoxLayout()
        dest_row.addWidget(self.dest, 1)
        dest_row.addWidget(self.dest_button)

        form = QFormLayout()
        form.addRow("Host platform", self.platform)
        form.addRow("", self.bundled_note)
        form.addRow("restic binary", restic_row)
        form.addRow("Save as", dest_row)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setObjectName("bundleStatus")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.create_button = QPushButton("Create bundle")
        self.create_button.setDefault(True)
        self.create_button.clicked.connect(self.make_bundle)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.create_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.warning)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.addLayout(buttons)

        self._platform_changed()
        self.runner.run(
            self.bundles.bundled_platforms(),
            what="Listing the bundled agent builds",
            on_done=guarded(self, self._show_bundled),
            on_error=guarded(self, lambda exc: None),
        )

    # -- the form ----------------------------------------------------------------------

    def selected_platform(self) -> tuple[str, str]:
        os_name, arch = self.platform.currentData()
        return str(os_name), str(arch)

    def select_platform(self, os_name: str, arch: str) -> None:
        for i in range(self.platform.count()):
            if self.platform.itemData(i) == (os_name, arch):
                self.platform.setCurrentIndex(i)
                return
        raise ValueError(f"no platform {os_name}/{arch}")

    def _platform_changed(self) -> None:
        if not self._dest_edited:
            os_name, arch = self.selected_platform()
            folder = Path(self.dest.text()).parent if self.dest.text() else Path.home()
            self.dest.setText(str(folder / bundle_filename(self.hostname, os_name, arch)))

    def _dest_typed(self, _text: str) -> None:
        self._dest_edited = True

    def _show_bundled(self, platforms: list[str]) -> None:
        have = ", ".join(platforms) if platforms else "none"
        self.bundled_note.setText(
            f"Agent builds in this app: {have}. Another platform needs its build copied "
            "into the app first (see packaging/README.md)."
        )

    def choose_restic(self) -> QFileDialog:
        start = self.restic.text().strip() or str(Path.home())
        dialog = QFileDialog(self, "Choose the restic binary for the host", start)
        dialog.setObjectName("resticFileDialog")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(guarded(self, self.restic.setText))
        dialog.open()
        return dialog

    def choose_destination(self) -> QFileDialog:
        os_name, _ = self.selected_platform()
        pattern = "Zip archives (*.zip)" if os_name == "windows" else "Shell scripts (*.sh)"
        dialog = QFileDialog(self, "Save the offline bundle", self.dest.text(), pattern)
        dialog.setObjectName("bundleSaveDialog")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("zip" if os_name == "windows" else "sh")
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(guarded(self, self._destination_chosen))
        dialog.open()
        return dialog

    def _destination_chosen(self, path: str) -> None:
        if path:
            self.dest.setText(path)
            self._dest_edited = True

    # -- building ----------------------------------------------------------------------

    def make_bundle(self) -> None:
        if not self.create_button.isEnabled():
            return
        os_name, arch = self.selected_platform()
        dest_text = self.dest.text().strip()
        if not dest_text:
            self._show_error("Choose where to save the bundle.")
            return
        restic_text = self.restic.text().strip()
        dest = Path(dest_text).expanduser()
        restic = Path(restic_text).expanduser() if restic_text else None
        if not dest.is_absolute() or (restic is not None and not restic.is_absolute()):
            self._show_error("Give full paths (starting with / or a drive letter).")
            return
        self._set_busy(True)
        self.status.setText("")
        self.runner.run(
            self.bundles.build(
                BundleRequest(self.host_id, os_name, arch, restic),
                dest,
                OPERATOR,
                progress=guarded_progress(self),
            ),
            what="Creating an offline bundle",
            on_done=guarded(self, self._on_built),
            on_error=guarded(self, self._on_failed),
        )

    def show_progress(self, fraction: float, what: str) -> None:
        self.progress.setValue(round(fraction * 100))
        self.status.setText(_escape(what) + "…" if fraction < 1 else _escape(what))

    def _set_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy or self.progress.value() == 100)
        if busy:
            self.progress.setValue(0)
        for widget in (
            self.create_button,
            self.platform,
            self.restic,
            self.restic_button,
            self.dest,
            self.dest_button,
        ):
            widget.setEnabled(not busy)

    def _on_built(self, bundle: OfflineBundle) -> None:
        self.result_bundle = bundle
        self._set_busy(False)
        self.progress.setValue(100)
        self.progress.setVisible(True)
        run = (
            f"sudo sh {_escape(bundle.path.name)}"
            if bundle.os == "linux"
            else "unzip it, then right-click <i>install.cmd</i> → Run as administrator"
        )
        restic = " and restic" if bundle.includes_restic else ""
        self.status.setProperty("state", "done")
        self.status.setText(
            f'<span style="color:{_colour(Tone.OK)}"><b>Saved</b></span> '
            f"{_escape(str(bundle.path))} ({bundle.size / 2**20:.1f} MiB: the agent "
            f"{_escape(bundle.agent_version or '')}{restic}).<br>"
            f"SHA-256 <tt>{bundle.sha256}</tt><br>"
            f"On {_escape(bundle.hostname)}: {run}.<br>"
            f"The token inside expires at {absolute_time(bundle.grant.expires_at)}; "
            "after that, make a new bundle."
        )
        self.create_button.setText("Create another")
        self.close_button.setDefault(True)
        self.built.emit(bundle)

    def _on_failed(self, exc: Exception) -> None:
        self._set_busy(False)
        self.progress.setVisible(False)
        if isinstance(exc, ServiceError):
            message = exc.message
        else:
            log.error("creating an offline bundle failed", exc_info=exc)
            message = f"The bundle could not be written: {exc or type(exc).__name__}"
        self._show_error(message)
        self.failed.emit(message)

    def _show_error(self, message: str) -> None:
        self.status.setProperty("state", "error")
        self.status.setText(f'<span style="color:{_colour(Tone.BAD)}">{_escape(message)}</span>')

    def state(self) -> str:
        """'' (nothing yet) | done | error — for tests."""
        value = self.status.property("state")
        return str(value) if value else ""


def guarded_progress(dialog: OfflineBundleDialog) -> Callable[[float, str], None]:
    """The progress callback: does nothing once the dialog is gone."""

    def show(update: tuple[float, str]) -> None:
        dialog.show_progress(update[0], update[1])

    alive = guarded(dialog, show)

    def report(fraction: float, what: str) -> None:
        alive((fraction, what))

    return report


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
