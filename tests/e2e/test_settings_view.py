"""Settings → Notifications, Metrics and General against the real embedded
control plane, with a real local HTTP sink for webhook channels, a real SMTP
server (aiosmtpd) for e-mail and a closed port for a dead channel.

Waits are bounded asyncio polls (never qtbot.waitUntil in an async test)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import shiboken6
from aiohttp import web
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QCheckBox, QLineEdit, QMessageBox, QWidget

from server_core.services.context import OPERATOR
from tests.helpers.notify_sinks import MailSink, smtp_sink
from ui_qt.context import UiContext
from ui_qt.settings import SettingsView
from ui_qt.settings.channel_dialog import ChannelDialog, recipients
from ui_qt.settings.metrics_page import prometheus_snippet


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Sink:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A real HTTP server on a loopback port that records what it is sent."""
    box = Sink(url="")

    async def handle(request: web.Request) -> web.Response:
        box.requests.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        return web.Response(status=200, text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    box.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest.fixture
def smtp_server() -> Iterator[tuple[MailSink, int]]:
    with smtp_sink() as server:
        yield server


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_WINDOWS: list[QWidget] = []


@pytest.fixture
async def settings_view(qtbot, ui: UiContext) -> AsyncIterator[SettingsView]:
    view = SettingsView(ui)
    _WINDOWS.append(view)
    view.resize(1000, 760)
    view.show()
    await until(lambda: view.notifications.data is not None, "the channels")
    await until(lambda: view.metrics.settings is not None, "the metrics settings")
    yield view
    view.notifications.stop()
    await ui.runner.drain()
    if shiboken6.isValid(view):
        view.hide()  # not close(): closing the last window would quit the app
        view.deleteLater()
    _WINDOWS.clear()
    await asyncio.sleep(0)


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def tick(qtbot, box: QCheckBox) -> None:
    # At the indicator: a check box stretched by its layout ignores clicks
    # beyond its text.
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(8, box.height() // 2))


async def webhook_channel(ui: UiContext, sink: Sink, name: str = "Ops hook", **extra: Any):
    body = {"kind": "webhook", "name": name, "config": {"url": sink.url, **extra}}
    return await ui.notifications.create_channel(body, OPERATOR)


async def dialog_saved(dialog: ChannelDialog) -> None:
    await until(lambda: not dialog.saving, "the save")


# -- channels --------------------------------------------------------------------------


async def test_add_a_webhook_channel_test_it_unsaved_then_save(qtbot, ui, settings_view, sink):
    page = settings_view.notifications
    assert page.empty.isVisible() and page.table.rowCount() == 0
    click(qtbot, page.add_button)
    dialog = page.dialog
    assert isinstance(dialog, ChannelDialog) and dialog.isVisible()
    assert dialog.url.isVisibleTo(dialog) and not dialog.smtp_host.isVisibleTo(dialog)
    assert dialog.secret_header.edit.echoMode() == QLineEdit.EchoMode.Password
    qtbot.keyClicks(dialog.name, "Ops hook")
    qtbot.keyClicks(dialog.url, sink.url)
    qtbot.keyClicks(dialog.secret_header.edit, "X-Token: s3cret-value")

    # "Send test" on the unsaved form reaches the sink with the secret header.
    click(qtbot, dialog.test_button)
    assert dialog.test_text() == "Sending a test alert…"
    await until(lambda: dialog.test_result is not None, "the test result")
    assert dialog.test_text().startswith("✓ HTTP 200 · ")
    assert dialog.test_text().endswith(" ms")
    assert len(sink.requests) == 1
    assert sink.requests[0]["headers"]["X-Token"] == "s3cret-value"
    assert '"test"' in sink.requests[0]["body"]
    assert (await ui.notifications.list_channels()) == []  # nothing saved by a test

    click(qtbot, dialog.save_button)
    await until(lambda: page.table.rowCount() == 1, "the new row")
    assert page.row_texts() == [
        ["Ops hook", "Webhook", sink.url, "Warning and above", "yes", "nothing sent yet"]
    ]
    assert not page.empty.isVisible()
    [channel] = await ui.notifications.list_channels()
    assert channel.secret_fields == ["secret_header"]
    assert "s3cret" not in repr(channel)


async def test_inline_errors_at_the_field_the_service_names(qtbot, ui, settings_view, sink):
    page = settings_view.notifications
    await webhook_channel(ui, sink, name="Taken")
    await until(lambda: page.table.rowCount() == 1, "the row")
    dialog = page.add_channel()

    qtbot.keyClicks(dialog.name, "Taken")
    qtbot.keyClicks(dialog.url, "ftp://example.org/hook")
    click(qtbot, dialog.save_button)
    await dialog_saved(dialog)
    errors = dialog.errors
    assert "http:// or https://" in errors.labels["config.url"].text()
    assert errors.labels["config.url"].isVisible()
    assert not errors.labels["name"].isVisible()
    assert dialog.isVisible()

    dialog.url.setText(sink.url)
    click(qtbot, dialog.save_button)
    await dialog_saved(dialog)
    assert "already exists" in errors.labels["name"].text()
    assert errors.labels["name"].isVisible()
    assert not errors.labels["config.url"].isVisible()

    # The secret header's format, at its own field; a test reports there too.
    dialog.name.setText("Other")
    qtbot.keyClicks(dialog.secret_header.edit, "no colon here")
    click(qtbot, dialog.test_button)
    await until(lambda: not dialog.testing, "the refused test")
    assert "Name: value" in errors.labels["config.secret_header"].text()
    assert dialog.test_text() == "✗ Fix the field marked above, then test again."
    assert sink.requests == []

    # SMTP: its own fields, its own errors.
    dialog.kind.setCurrentIndex(dialog.kind.findData("smtp"))
    assert dialog.smtp_host.isVisibleTo(dialog) and dialog.to.isVisibleTo(dialog)
    assert not dialog.url.isVisibleTo(dialog)
    assert not errors.labels["config.secret_header"].isVisible()
    qtbot.keyClicks(dialog.smtp_host, "127.0.0.1")
    qtbot.keyClicks(dialog.mail_from, "backups@example.org")
    qtbot.keyClicks(dialog.to, "ops@example.org, not-an-address")
    click(qtbot, dialog.save_button)
    await dialog_saved(dialog)
    assert "'not-an-address' is not an e-mail address" in errors.labels["config.to"].text()
    dialog.to.setText("ops@example.org")
    qtbot.keyClicks(dialog.password.edit, "pw")
    click(qtbot, dialog.save_button)
    await dialog_saved(dialog)
    assert "required when a password is set" in errors.labels["config.username"].text()
    dialog.reject()


async def test_smtp_channel_sends_a_real_mail_and_the_port_follows_security(
    qtbot, ui, settings_view, smtp_server
):
    mailbox, smtp_port = smtp_server
    dialog = settings_view.notifications.add_channel()
    dialog.kind.setCurrentIndex(dialog.kind.findData("smtp"))
    assert dialog.port.value() == 587
    dialog.security.setCurrentIndex(dialog.security.findData("tls"))
    assert dialog.port.value() == 465
    dialog.security.setCurrentIndex(dialog.security.findData("none"))
    assert dialog.port.value() == 25
    dialog.port.setValue(smtp_port)
    dialog.security.setCurrentIndex(dialog.security.findData("starttls"))
    assert dialog.port.value() == smtp_port  # chosen by hand: kept
    dialog.security.setCurrentIndex(dialog.security.findData("none"))
    qtbot.keyClicks(dialog.name, "Mail")
    qtbot.keyClicks(dialog.smtp_host, "127.0.0.1")
    qtbot.keyClicks(dialog.mail_from, "backups@example.org")
    qtbot.keyClicks(dialog.to, "ops@example.org; oncall@example.org")
    assert dialog.body()["config"]["to"] == ["ops@example.org", "oncall@example.org"]
    click(qtbot, dialog.test_button)
    await until(lambda: dialog.test_result is not None, "the SMTP test", timeout=15)
    assert dialog.test_result.ok, dialog.test_text()
    assert dialog.test_text().startswith("✓ 250")
    [mail] = mailbox.mails
    assert mail.mail_from == "backups@example.org"
    assert mail.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    assert "Subject: [restic-manager]" in mail.content.decode()
    dialog.reject()


async def test_editing_keeps_a_secret_unless_retyped_or_removed(qtbot, ui, settings_view, sink):
    page = settings_view.notifications
    channel = await webhook_channel(ui, sink, secret_header="X-Token: stored-secret")
    await until(lambda: page.table.rowCount() == 1, "the row")
    page.table.selectRow(0)
    dialog = page.edit_selected()
    assert dialog is not None and dialog.channel == channel
    assert not dialog.kind.isEnabled()
    field_ = dialog.secret_header
    assert field_.edit.text() == "" and field_.edit.placeholderText() == "(unchanged)"
    assert field_.remove_button.isVisible()

    # Unchanged: "Send test" tests the saved channel (and records the attempt).
    click(qtbot, dialog.test_button)
    await until(lambda: dialog.test_result is not None, "the saved test")
    assert sink.requests[-1]["headers"]["X-Token"] == "stored-secret"
    deliveries = await ui.notifications.list_deliveries(channel.id)
    assert [d.event for d in deliveries] == ["test"]

    # Edited but the secret left alone: the unsaved test still uses the stored secret.
    dialog.test_result = None
    dialog.name.setText("Ops hook (renamed)")
    dialog.url.setText(sink.url.replace("/hook", "/renamed"))
    click(qtbot, dialog.test_button)
    await until(lambda: dialog.test_result is not None, "the edited test")
    assert sink.requests[-1]["path"] == "/renamed"
    assert sink.requests[-1]["headers"]["X-Token"] == "stored-secret"
    assert len(await ui.notifications.list_deliveries(channel.id)) == 1  # not recorded

    click(qtbot, dialog.save_button)
    await until(lambda: page.row_texts()[0][0] == "Ops hook (renamed)", "the rename")
    saved = await ui.notifications.get_channel(channel.id)
    assert saved.secret_fields == ["secret_header"]
    assert saved.config["url"].endswith("/renamed")

    # Remove: the stored secret is cleared on save.
    page.table.selectRow(0)
    dialog = page.edit_selected()
    assert dialog is not None
    click(qtbot, dialog.secret_header.remove_button)
    assert dialog.secret_header.edit.placeholderText() == "(removed when you save)"
    assert not dialog.secret_header.edit.isEnabled()
    assert dialog.update_body()["config"]["secret_header"] is None
    click(qtbot, dialog.save_button)
    await until(
        lambda: (not dialog.saving and not shiboken6.isValid(dialog)) or not dialog.isVisible(),
        "the save",
    )
    assert (await ui.notifications.get_channel(channel.id)).secret_fields == []


async def test_test_button_last_delivery_and_live_deliveries(qtbot, ui, settings_view, sink):
    page = settings_view.notifications
    good = await webhook_channel(ui, sink, name="Good")
    dead = await ui.notifications.create_channel(
        {
            "kind": "webhook",
            "name": "Dead",
            "min_severity": "critical",
            "config": {"url": f"http://127.0.0.1:{dead_port()}/hook"},
        },
        OPERATOR,
    )
    await until(lambda: page.table.rowCount() == 2, "both rows")

    page.select_channel(good.id)
    click(qtbot, page.test_button)
    await until(lambda: page.last_test is not None, "the test")
    assert page.test_status.text().startswith("Test on “Good”: ✓ HTTP 200 · ")

    def last_delivery(name: str) -> str:
        return {r[0]: r for r in page.row_texts()}[name][page.LAST]

    await until(lambda: last_delivery("Good").startswith("✓ HTTP 200"), "last delivery")

    page.last_test = None
    page.select_channel(dead.id)
    click(qtbot, page.test_button)
    await until(lambda: page.last_test is not None, "the dead test")
    assert page.test_status.text().startswith("Test on “Dead”: ✗ ")
    await until(lambda: last_delivery("Dead").startswith("✗"), "the failed delivery")
    assert {r[0]: r for r in page.row_texts()}["Dead"][page.SEVERITY] == "Critical only"

    assert page.deliveries.rowCount() == 2
    # A delivery made elsewhere (here: the service directly) shows up live.
    await ui.notifications.test_channel(good.id, OPERATOR)
    await until(lambda: page.deliveries.rowCount() == 3, "the live delivery")
    cells = [page.deliveries.item(0, c).text() for c in range(page.deliveries.columnCount())]
    assert cells[1:3] == ["Good", "test"]
    assert cells[4] == "✓ HTTP 200"
    assert cells[5].endswith(" ms")

    # The filter narrows the deliveries to one channel.
    page.delivery_filter.setCurrentIndex(page.delivery_filter.findData(dead.id))
    assert page.deliveries.rowCount() == 1
    assert page.deliveries.item(0, 1).text() == "Dead"


async def test_enable_toggle_and_delete_with_confirmation(qtbot, ui, settings_view, sink):
    page = settings_view.notifications
    channel = await webhook_channel(ui, sink)
    await until(lambda: page.table.rowCount() == 1, "the row")
    page.table.item(0, page.ENABLED).setCheckState(Qt.CheckState.Unchecked)
    await until(lambda: page.channels and not page.channels[0].enabled, "disabled")
    assert page.row_texts()[0][page.ENABLED] == "no"
    assert (await ui.notifications.get_channel(channel.id)).enabled is False

    page.table.selectRow(0)
    click(qtbot, page.delete_button)
    box = page.confirm_box
    assert isinstance(box, QMessageBox) and "Ops hook" in box.text()
    click(qtbot, box.button(QMessageBox.StandardButton.Cancel))
    await asyncio.sleep(0.05)
    assert len(await ui.notifications.list_channels()) == 1

    click(qtbot, page.delete_button)
    box = page.confirm_box
    assert isinstance(box, QMessageBox)
    click(qtbot, box.button(QMessageBox.StandardButton.Yes))
    await until(lambda: page.table.rowCount() == 0, "the deletion")
    assert await ui.notifications.list_channels() == []
    assert page.empty.isVisible()
    assert not page.edit_button.isEnabled() and not page.test_button.isEnabled()


def test_recipients_split_on_commas_semicolons_and_spaces():
    assert recipients(" a@x.org, b@y.org;c@z.org  d@w.org ,") == [
        "a@x.org",
        "b@y.org",
        "c@z.org",
        "d@w.org",
    ]
    assert recipients("") == []


# -- metrics ----------------------------------------------------------------------------


async def test_metrics_enable_and_a_token_shown_once(qtbot, ui, settings_view):
    metrics = settings_view.metrics
    settings_view.show_tab("metrics")
    assert not metrics.enabled.isChecked()
    assert "Off" in metrics.state_text()
    assert metrics.generate.text() == "Generate token"
    assert not metrics.token_box.isVisible()

    tick(qtbot, metrics.enabled)
    await until(lambda: "no token yet" in metrics.state_text(), "enabled without a token")
    assert (await ui.settings_service.metrics_settings()).enabled

    click(qtbot, metrics.generate)
    await until(lambda: metrics.token.text(), "the token")
    token = metrics.token.text()
    assert metrics.token_box.isVisible() and metrics.token_warning.isVisible()
    assert "not shown again" in metrics.token_warning.text()
    assert await ui.settings_service.check_metrics_token(token)
    await until(lambda: metrics.state_text().startswith("On:"), "on with a token")
    assert metrics.generate.text() == "Replace token…"
    click(qtbot, metrics.copy_token)
    assert QGuiApplication.clipboard().text() == token

    # Replacing asks first; the old token stops working.
    click(qtbot, metrics.generate)
    box = metrics.confirm_box
    assert isinstance(box, QMessageBox) and "stops working" in box.text()
    click(qtbot, box.button(QMessageBox.StandardButton.Yes))
    await until(lambda: metrics.token.text() not in ("", token), "the new token")
    assert not await ui.settings_service.check_metrics_token(token)
    assert await ui.settings_service.check_metrics_token(metrics.token.text())
    click(qtbot, metrics.dismiss)
    assert metrics.token.text() == "" and not metrics.token_box.isVisible()

    tick(qtbot, metrics.enabled)
    await until(lambda: "Off" in metrics.state_text(), "off again")
    assert not (await ui.settings_service.metrics_settings()).enabled


async def test_metrics_scrape_url_and_prometheus_snippet(ui, control_plane, settings_view):
    metrics = settings_view.metrics
    snippet = metrics.snippet.toPlainText()
    assert "metrics_path: /metrics" in snippet and "type: Bearer" in snippet
    api = getattr(control_plane.info(), "api_url", None)
    if api:  # ServerInfo carries the API listener's URL
        assert metrics.url.text() == f"{api}/metrics"
        assert f'targets: ["{api.split("//", 1)[1]}"]' in snippet
    assert 'targets: ["127.0.0.1:8766"]' in prometheus_snippet("http://127.0.0.1:8766")
    assert "scheme: https" in prometheus_snippet("https://backup.example.org:9443")


# -- general ----------------------------------------------------------------------------


async def test_general_shows_the_control_plane_identity(qtbot, ui, control_plane, settings_view):
    general = settings_view.general
    settings_view.show_tab("general")
    info = control_plane.info()
    assert general.data_dir.text() == info.data_dir
    assert general.agent_url.text() == info.agent_url
    assert general.cert.text() == info.cert_sha256
    assert general.version.text() == info.version
    assert general.key_source.text() != ""
    click(qtbot, general.cert.copy_button)
    assert QGuiApplication.clipboard().text() == info.cert_sha256
    if info.warnings:
        assert info.warnings[0] in general.warnings.text()
    else:
        assert general.warnings.text() == "None"
