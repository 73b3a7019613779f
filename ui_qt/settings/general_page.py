"""Settings → General: what this control plane is and where it keeps things —
data directory, the address agents connect to, the certificate fingerprint
they pin, where the data key comes from, and any start-up warnings."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from server_core.views import ServerInfo
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import AMBER, GREEN, GREY
from ui_qt.settings.common import CopyableField

KEY_SOURCES = {
    "keyring": "The operating system's keyring",
    "file": "A key file in the data directory, protected only by its file permissions",
}


def key_source_text(source: str) -> str:
    """What encrypts the stored secrets, in words (ServerInfo.key_source)."""
    return KEY_SOURCES.get(source, source)


def fingerprint_groups(sha256: str) -> str:
    """``ab12cd…`` → ``AB:12:CD:…``, the way certificate tools print it."""
    clean = sha256.replace(":", "").strip()
    if len(clean) != 64:
        return sha256
    return ":".join(clean[i : i + 2] for i in range(0, 64, 2)).upper()


class GeneralPage(QWidget):
    def __init__(self, ctx: UiContext) -> None:
        super().__init__()
        self.setObjectName("generalPage")
        self.ctx = ctx
        self.version = QLabel()
        self.version.setObjectName("generalVersion")
        self.data_dir = CopyableField("generalDataDir", "data directory")
        self.agent_url = CopyableField("generalAgentUrl", "agent URL", mono=True)
        self.api_url = CopyableField("generalApiUrl", "API URL", mono=True)
        self.cert = CopyableField("generalCertSha256", "certificate SHA-256", mono=True)
        self.cert_note = QLabel(
            "Agents pin this fingerprint at enrolment and refuse a server whose certificate "
            "does not match it. It is embedded in every install command."
        )
        self.cert_note.setWordWrap(True)
        self.cert_note.setStyleSheet(f"color: {GREY};")
        self.key_source = QLabel()
        self.key_source.setObjectName("generalKeySource")
        self.key_source.setWordWrap(True)
        self.key_source.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warnings = QLabel()
        self.warnings.setObjectName("generalWarnings")
        self.warnings.setWordWrap(True)
        self.warnings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Version", self.version)
        form.addRow("Data directory", self.data_dir)
        form.addRow("Agent URL", self.agent_url)
        self._api_row = form.rowCount()
        form.addRow("Operator API", self.api_url)
        cert_cell = QWidget()
        cert_layout = QVBoxLayout(cert_cell)
        cert_layout.setContentsMargins(0, 0, 0, 0)
        cert_layout.setSpacing(2)
        cert_layout.addWidget(self.cert)
        cert_layout.addWidget(self.cert_note)
        form.addRow("Certificate SHA-256", cert_cell)
        form.addRow("Data key from", self.key_source)
        form.addRow("Warnings", self.warnings)
        self.form = form
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)
        self.reload()

    def reload(self) -> None:
        # server_info() reads attributes of the running control plane: no I/O.
        self.show_info(self.ctx.server_info())

    def show_info(self, info: ServerInfo) -> None:
        api = info.api_url
        self.version.setText(info.version)
        self.data_dir.set_text(info.data_dir)
        self.agent_url.set_text(info.agent_url)
        self.api_url.set_text(api or "")
        self.form.setRowVisible(self._api_row, api is not None)
        self.cert.set_text(info.cert_sha256)
        self.cert.edit.setToolTip(fingerprint_groups(info.cert_sha256))
        self.key_source.setText(key_source_text(info.key_source))
        if info.warnings:
            self.warnings.setText("\n".join(f"⚠ {w}" for w in info.warnings))
            self.warnings.setStyleSheet(f"color: {AMBER};")
        else:
            self.warnings.setText("None")
            self.warnings.setStyleSheet(f"color: {GREEN};")
