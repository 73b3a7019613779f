"""Settings → Metrics: the opt-in Prometheus endpoint.

``GET /metrics`` on the operator API listener answers only when enabled here
and only with the bearer token generated here. The token is shown once (only
its hash is stored); generating another replaces it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import MetricsSettingsView
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import (
    AMBER,
    GREEN,
    GREY,
    confirm,
    error_label,
    error_text,
    guarded,
    set_error,
)
from ui_qt.install_commands import CommandBox, CopyButton
from ui_qt.settings.common import CopyableField

TOKEN_FILE = "/etc/prometheus/restic-manager.token"


def scrape_url(base: str | None) -> str | None:
    return f"{base.rstrip('/')}/metrics" if base else None


def prometheus_snippet(base: str | None) -> str:
    """A scrape job for prometheus.yml (the token read from a file, not pasted in)."""
    parts = urlsplit(base) if base else None
    target = parts.netloc if parts and parts.netloc else "HOST:PORT"
    scheme = parts.scheme if parts and parts.scheme else "http"
    return (
        "scrape_configs:\n"
        "  - job_name: restic-manager\n"
        f"    scheme: {scheme}\n"
        "    metrics_path: /metrics\n"
        "    authorization:\n"
        "      type: Bearer\n"
        f"      credentials_file: {TOKEN_FILE}\n"
        "    static_configs:\n"
        f'      - targets: ["{target}"]\n'
    )


def is_loopback(base: str | None) -> bool:
    host = urlsplit(base).hostname if base else None
    return host in ("127.0.0.1", "::1", "localhost")


class MetricsPage(QWidget):
    loaded = Signal()
    token_created = Signal()

    def __init__(self, ctx: UiContext) -> None:
        super().__init__()
        self.setObjectName("metricsPage")
        self.ctx = ctx
        self.settings: MetricsSettingsView | None = None
        self._filling = False
        self.confirm_box: QMessageBox | None = None

        intro = QLabel(
            "Prometheus can scrape the fleet's state — hosts online, last backups, repository "
            "sizes, snapshot counts, open alerts, job durations — from the operator API "
            "listener. Off by default; a scrape needs the token generated here."
        )
        intro.setWordWrap(True)

        self.enabled = QCheckBox("Serve metrics at /metrics")
        self.enabled.setObjectName("metricsEnabled")
        self.enabled.toggled.connect(self._toggled)
        self.state = QLabel()
        self.state.setObjectName("metricsState")
        self.state.setWordWrap(True)

        self.generate = QPushButton("Generate token")
        self.generate.setObjectName("metricsGenerateToken")
        self.generate.clicked.connect(self.generate_token)
        token_field = CopyableField("metricsToken", "metrics token", mono=True)
        self.token = token_field.edit
        self.copy_token = token_field.copy_button
        self.token_warning = QLabel(
            "Copy the token now: it is not shown again. Save it where Prometheus reads it "
            f"({TOKEN_FILE} in the example below). Generating another token replaces this one."
        )
        self.token_warning.setObjectName("metricsTokenWarning")
        self.token_warning.setWordWrap(True)
        self.token_warning.setStyleSheet(f"color: {AMBER};")
        self.token_box = QFrame()
        self.token_box.setObjectName("metricsTokenBox")
        self.token_box.setFrameShape(QFrame.Shape.StyledPanel)
        token_layout = QVBoxLayout(self.token_box)
        token_row = QHBoxLayout()
        token_row.addWidget(token_field, 1)
        self.dismiss = QPushButton("Done")
        self.dismiss.setObjectName("metricsDismissToken")
        self.dismiss.setToolTip("Hide the token (it cannot be shown again)")
        self.dismiss.clicked.connect(self.dismiss_token)
        token_row.addWidget(self.dismiss)
        token_layout.addLayout(token_row)
        token_layout.addWidget(self.token_warning)
        self.token_box.hide()

        self.url = QLineEdit()
        self.url.setObjectName("metricsScrapeUrl")
        self.url.setReadOnly(True)
        self.url.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.url_note = QLabel()
        self.url_note.setObjectName("metricsUrlNote")
        self.url_note.setWordWrap(True)
        self.url_note.setStyleSheet(f"color: {GREY};")
        self.snippet = CommandBox(lines=9, max_lines=12)
        self.snippet.setObjectName("metricsSnippet")
        self.copy_snippet = CopyButton(self.snippet, "prometheus.yml snippet")
        self.copy_snippet.setObjectName("metricsCopySnippet")
        snippet_row = QHBoxLayout()
        snippet_row.addWidget(self.snippet, 1)
        snippet_row.addWidget(self.copy_snippet, 0, Qt.AlignmentFlag.AlignTop)

        self.error = error_label()
        self.error.setObjectName("metricsError")

        token_buttons = QHBoxLayout()
        token_buttons.addWidget(self.generate)
        token_buttons.addStretch(1)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("", self.enabled)
        form.addRow("Status", self.state)
        token_cell = QWidget()
        token_cell_layout = QVBoxLayout(token_cell)
        token_cell_layout.setContentsMargins(0, 0, 0, 0)
        token_cell_layout.addLayout(token_buttons)
        token_cell_layout.addWidget(self.token_box)
        form.addRow("Token", token_cell)
        url_cell = QWidget()
        url_layout = QVBoxLayout(url_cell)
        url_layout.setContentsMargins(0, 0, 0, 0)
        url_layout.setSpacing(2)
        url_layout.addWidget(self.url)
        url_layout.addWidget(self.url_note)
        form.addRow("Scrape URL", url_cell)
        form.addRow("prometheus.yml", snippet_row)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addSpacing(6)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addStretch(1)

        self._show_endpoint()
        self.reload()

    # -- state ------------------------------------------------------------------------

    def _show_endpoint(self) -> None:
        base = self.ctx.server_info().api_url
        url = scrape_url(base)
        self.url.setText(url or "")
        self.url.setPlaceholderText("the API listener's address + /metrics")
        if base is None:
            self.url_note.setText("The API listener's address is not known to this window.")
        elif is_loopback(base):
            self.url_note.setText(
                "The API listener accepts connections from this computer only: run Prometheus "
                "here, or start the app with the API on a reachable address."
            )
        else:
            self.url_note.setText("Reachable from other machines on the listener's network.")
        self.snippet.setPlainText(prometheus_snippet(base))

    def reload(self) -> None:
        self.ctx.runner.run(
            self.ctx.settings_service.metrics_settings(),
            what="reading the metrics settings",
            on_done=guarded(self, self._loaded),
            on_error=guarded(self, self._failed_to_load),
        )

    def _failed_to_load(self, exc: Exception) -> None:
        set_error(self.error, f"Could not read the metrics settings: {error_text(exc)}")

    def _loaded(self, settings: MetricsSettingsView) -> None:
        set_error(self.error, None)
        self.settings = settings
        self._filling = True
        try:
            self.enabled.setChecked(settings.enabled)
        finally:
            self._filling = False
        self.enabled.setEnabled(True)
        self.generate.setText("Replace token…" if settings.token_set else "Generate token")
        if settings.enabled and settings.token_set:
            self.state.setText("On: scrapes with the token are answered.")
            self.state.setStyleSheet(f"color: {GREEN};")
        elif settings.enabled:
            self.state.setText("On, but no token yet: every scrape is refused (401).")
            self.state.setStyleSheet(f"color: {AMBER};")
        else:
            self.state.setText("Off: /metrics answers 404.")
            self.state.setStyleSheet(f"color: {GREY};")
        self.loaded.emit()

    def state_text(self) -> str:
        return self.state.text()

    # -- actions -----------------------------------------------------------------------

    def _toggled(self, on: bool) -> None:
        if self._filling:
            return
        self.set_enabled(on)

    def set_enabled(self, on: bool) -> None:
        self.enabled.setEnabled(False)
        set_error(self.error, None)

        def failed(exc: Exception) -> None:
            set_error(self.error, f"Could not change the setting: {error_text(exc)}")
            self.reload()

        self.ctx.runner.run(
            self.ctx.settings_service.set_metrics(on, OPERATOR),
            what="turning metrics on" if on else "turning metrics off",
            on_done=guarded(self, self._loaded),
            on_error=guarded(self, failed),
        )

    def generate_token(self) -> None:
        if self.settings is not None and self.settings.token_set:
            self.confirm_box = confirm(
                self,
                "Replace the metrics token",
                "Generate a new token? The current one stops working at once: update "
                "Prometheus with the new token.",
                "Replace",
                "confirmReplaceMetricsToken",
                self.create_token,
            )
            return
        self.create_token()

    def create_token(self) -> None:
        self.generate.setEnabled(False)
        set_error(self.error, None)

        def done(token: str) -> None:
            self.generate.setEnabled(True)
            self.token.setText(token)
            self.token_box.show()
            self.token_created.emit()
            self.reload()

        def failed(exc: Exception) -> None:
            self.generate.setEnabled(True)
            set_error(self.error, f"Could not generate a token: {error_text(exc)}")

        self.ctx.runner.run(
            self.ctx.settings_service.new_metrics_token(OPERATOR),
            what="generating a metrics token",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    def dismiss_token(self) -> None:
        """Forget the shown token (it cannot be shown again)."""
        self.token.clear()
        self.token_box.hide()


__all__ = ["MetricsPage", "prometheus_snippet", "scrape_url"]
