"""Screenshots of the Audit log and Settings pages, for people to look at.

    python -m tests.e2e.screenshot_audit_settings [DIR]     (default: screenshots/)

Renders against a real embedded control plane in a temporary data dir. The
audit entries come from real service calls (hosts added, tags changed,
channels saved and tested) plus agent and system entries recorded the way
the hub and the alert engine record them. Channels send to a real local
HTTP sink, a real SMTP server and a closed port:
- audit-log.png               the log, newest first, an entry's payload in the details pane
- audit-filtered.png          filtered: operator actions on hosts, searched for "prod"
- settings-notifications.png  three channels, their last deliveries, a test result
- settings-channel-dialog.png editing a webhook: secret "(unchanged)", a test result
- settings-channel-error.png  adding an e-mail channel: a bad recipient, shown at its field
- settings-metrics.png        metrics on, a freshly generated token, the scrape config
- settings-general.png        data dir, agent URL, certificate, key source
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from aiohttp import web
from aiosmtpd.controller import Controller
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from server_core import audit
from server_core.control_plane import ControlPlane
from server_core.services.context import OPERATOR, Actor
from server_core.services.enrolment import parse_new_host
from tests.helpers.embedded_ui import run_with_embedded_ui
from ui_qt.audit_view import AuditView
from ui_qt.context import UiContext
from ui_qt.settings import SettingsView

AUDIT_SIZE = (1400, 820)
SETTINGS_SIZE = (1100, 800)


async def _until(predicate: Callable[[], Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the view did not get there in time")
        await asyncio.sleep(0.05)


async def _settle(ui: UiContext) -> None:
    """Let layouts, the bridge and pending reads run before grabbing."""
    await asyncio.sleep(0.3)
    await ui.runner.drain()
    await asyncio.sleep(0.2)
    QApplication.processEvents()


class _Mailbox:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


class _Port0Controller(Controller):  # type: ignore[misc]
    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sink() -> tuple[web.AppRunner, str]:
    async def handle(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hooks/restic-manager"


async def _populate(cp: ControlPlane, ui: UiContext, hook_url: str, smtp_port: int) -> dict:
    hosts = {}
    for name, tags in (("web1", ["prod", "web"]), ("db1", ["prod", "db"]), ("laptop-ana", [])):
        new = parse_new_host(
            {
                "hostname": name,
                "repository": {"url": f"/srv/restic/{name}", "password": "hunter2hunter2"},
                "initial_paths": ["/etc", "/home"],
                "tags": tags,
            }
        )
        hosts[name] = (await ui.enrolment.add_host(new, OPERATOR)).host_id
    await ui.hosts.set_tags(hosts["web1"], ["prod", "web", "eu-west"], Actor("api", "ci-deploy"))

    now = time.time()

    def agents_and_system() -> None:
        for name, age in (("web1", 3000), ("db1", 2900)):
            audit.record(
                "agent",
                "host.enrolled",
                actor_id=name,
                target_kind="host",
                target_id=hosts[name],
                payload={"agent_version": "0.6.0", "os": "linux", "arch": "amd64"},
                ts=now - age,
            )
        audit.record(
            "agent",
            "job.finished",
            actor_id="db1",
            target_kind="job",
            target_id="3f9c2a7e",
            payload={
                "kind": "backup",
                "status": "failed",
                "error": "Fatal: wrong password or no key found",
                "duration_s": 2.4,
            },
            ts=now - 1500,
        )
        audit.record(
            "system",
            "alert.raised",
            target_kind="alert",
            target_id=1,
            payload={
                "kind": "backup_failed",
                "severity": "critical",
                "host": "db1",
                "message": "Backup of db1 failed: wrong password or no key found",
            },
            ts=now - 1498,
        )

    await cp.store.transaction(agents_and_system)

    n = ui.notifications
    hook = await n.create_channel(
        {
            "kind": "webhook",
            "name": "Ops webhook",
            "min_severity": "warning",
            "config": {"url": hook_url, "secret_header": "X-Token: s3cret"},
        },
        OPERATOR,
    )
    ntfy = await n.create_channel(
        {
            "kind": "ntfy",
            "name": "Phone (ntfy)",
            "min_severity": "critical",
            "config": {"topic_url": f"http://127.0.0.1:{_closed_port()}/backups"},
        },
        OPERATOR,
    )
    mail = await n.create_channel(
        {
            "kind": "smtp",
            "name": "On-call e-mail",
            "min_severity": "info",
            "enabled": False,
            "config": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "from": "restic-manager@example.org",
                "to": ["oncall@example.org", "ops@example.org"],
            },
        },
        OPERATOR,
    )
    await n.test_channel(hook.id, OPERATOR)
    await n.test_channel(ntfy.id, OPERATOR)
    await n.test_channel(mail.id, OPERATOR)
    await ui.hosts.set_tags(hosts["db1"], ["prod", "db", "postgres"], OPERATOR)
    return {"hook": hook, "hosts": hosts}


async def render_with(cp: ControlPlane, ui: UiContext, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    sink, hook_url = await _sink()
    smtp = _Port0Controller(_Mailbox(), hostname="127.0.0.1", port=0)
    smtp.start()
    paths: list[Path] = []
    try:
        made = await _populate(cp, ui, hook_url, smtp.port)

        # -- audit ------------------------------------------------------------------
        view = AuditView(ui, None)
        view.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        view.resize(*AUDIT_SIZE)
        view.show()
        await _settle(ui)
        view.splitter.setSizes([980, 420])
        for row in range(view.proxy.rowCount()):
            entry = view.proxy.index(row, 0).data(Qt.ItemDataRole.UserRole + 2)
            if entry.action == "alert.raised":
                view.table.selectRow(row)
        await _settle(ui)
        paths.append(out / "audit-log.png")
        view.grab().save(str(paths[-1]))

        view.set_actor("operator")
        view.set_action("host.")
        view.text.setText("prod")
        view.apply_filters()
        await _until(lambda: not view._loading)
        await _settle(ui)
        paths.append(out / "audit-filtered.png")
        view.grab().save(str(paths[-1]))
        view.hide()
        view.deleteLater()

        # -- settings ----------------------------------------------------------------
        settings = SettingsView(ui)
        settings.resize(*SETTINGS_SIZE)
        settings.show()
        page = settings.notifications
        await _until(lambda: page.data is not None and len(page.channels) == 3)
        page.select_channel(made["hook"].id)
        page.test_selected()
        await _until(lambda: page.last_test is not None)
        await _settle(ui)
        paths.append(out / "settings-notifications.png")
        settings.grab().save(str(paths[-1]))

        dialog = page.edit_selected()
        assert dialog is not None
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        dialog.send_test()
        await _until(lambda: dialog.test_result is not None)
        await _settle(ui)
        paths.append(out / "settings-channel-dialog.png")
        dialog.grab().save(str(paths[-1]))
        dialog.reject()

        # Adding an e-mail channel, refused at the field the service names.
        dialog = page.add_channel()
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        dialog.kind.setCurrentIndex(dialog.kind.findData("smtp"))
        dialog.name.setText("Backups team")
        dialog.smtp_host.setText("smtp.example.org")
        dialog.username.setText("restic-manager")
        dialog.password.edit.setText("app-password")
        dialog.mail_from.setText("restic-manager@example.org")
        dialog.to.setText("backups@example.org, oncall.example.org")
        dialog.save()
        await _until(lambda: not dialog.saving)
        await _settle(ui)
        paths.append(out / "settings-channel-error.png")
        dialog.grab().save(str(paths[-1]))
        dialog.reject()

        settings.show_tab("metrics")
        metrics = settings.metrics
        metrics.set_enabled(True)
        await _until(lambda: metrics.settings is not None and metrics.settings.enabled)
        metrics.create_token()
        await _until(lambda: bool(metrics.token.text()))
        await _settle(ui)
        paths.append(out / "settings-metrics.png")
        settings.grab().save(str(paths[-1]))

        settings.show_tab("general")
        await _settle(ui)
        paths.append(out / "settings-general.png")
        settings.grab().save(str(paths[-1]))
        settings.notifications.stop()
        settings.hide()
        settings.deleteLater()
        await _settle(ui)
    finally:
        smtp.stop()
        await sink.cleanup()
    return paths


def render(path_dir: str | Path) -> list[Path]:
    """Write the audit and settings screenshots into ``path_dir``; returns the files."""
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)
    return run_with_embedded_ui(lambda env: render_with(env.cp, env.ui, Path(path_dir)))


if __name__ == "__main__":
    for path in render(sys.argv[1] if len(sys.argv) > 1 else "screenshots"):
        print(path)
