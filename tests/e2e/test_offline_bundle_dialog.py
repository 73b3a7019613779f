"""Offline bundle… on the Add host result page, through real widgets against
the real embedded control plane and the agent build in dist/agents.

No qtbot.waitUntil/waitSignal (they hang on the qasync loop): waits are
asyncio futures fed by signals, or bounded polling.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from server_core.services.context import OPERATOR
from tests.e2e import test_add_host as add_host_tests
from tests.e2e.test_add_host import (
    click,
    fill_valid_form,
    open_dialog,
    submit_and_wait_created,
    wait_until,
)
from tests.helpers.restic_bins import RESTIC_BINARIES
from ui_qt.add_host import AddHostDialog
from ui_qt.offline_bundle_dialog import OfflineBundleDialog

AGENT = Path(__file__).resolve().parents[2] / "dist" / "agents" / "restic-manager-agent-linux-amd64"


@pytest.fixture(autouse=True)
def _forget_windows() -> Iterator[None]:
    yield
    add_host_tests._WINDOWS.clear()


async def added_host(ui, qtbot, tmp_path: Path) -> AddHostDialog:
    dialog = open_dialog(ui, qtbot)
    await fill_valid_form(qtbot, dialog, "airgap", tmp_path / "repo")
    await submit_and_wait_created(qtbot, dialog)
    return dialog


async def built_or_failed(bundle: OfflineBundleDialog) -> tuple[str, object]:
    done = asyncio.get_running_loop().create_future()
    bundle.built.connect(lambda b: done.done() or done.set_result(("built", b)))
    bundle.failed.connect(lambda m: done.done() or done.set_result(("failed", m)))
    click_create(bundle)
    return await asyncio.wait_for(done, 30)


def click_create(bundle: OfflineBundleDialog) -> None:
    bundle.create_button.click()


@pytest.mark.skipif(not AGENT.is_file(), reason="no built agent: run packaging/build.py agent")
async def test_a_bundle_from_the_add_host_page_replaces_the_shown_token(
    ui, control_plane, qtbot, tmp_path
):
    restic = RESTIC_BINARIES.get("0.18")
    assert restic, "restic 0.18 is not installed: run `make bootstrap`"
    # The e2e control plane bundles no build by default: give it this machine's.
    agents = control_plane.downloads.agents_dir
    agents.mkdir(parents=True, exist_ok=True)
    for built in (AGENT, AGENT.with_name(AGENT.name + ".json")):
        shutil.copy2(built, agents / built.name)
    dialog = await added_host(ui, qtbot, tmp_path)
    first = dialog.grant
    assert first is not None
    assert dialog.bundle_button.isVisibleTo(dialog) and dialog.bundle_button.isEnabled()

    click(qtbot, dialog.bundle_button)
    bundle = dialog.bundle_dialog
    assert isinstance(bundle, OfflineBundleDialog) and bundle.isVisible()
    assert "treat it like a password" in bundle.warning.text()
    assert bundle.selected_platform() == ("linux", "amd64")
    assert bundle.dest.text().endswith("restic-manager-agent-airgap-linux-amd64.sh")
    await wait_until(lambda: "linux/amd64" in bundle.bundled_note.text(), 10, "bundled builds")

    # Both pickers are non-blocking dialogs the test can answer.
    usb = tmp_path / "usb"
    usb.mkdir()
    picker = bundle.choose_destination()
    assert isinstance(picker, QFileDialog)
    assert picker.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    picker.selectFile(str(usb / "airgap.sh"))
    picker.accept()
    assert bundle.dest.text() == str(usb / "airgap.sh")
    chooser = bundle.choose_restic()
    chooser.selectFile(restic)
    chooser.accept()
    assert bundle.restic.text() == restic

    seen: list[int] = []
    bundle.progress.valueChanged.connect(seen.append)
    kind, result = await built_or_failed(bundle)
    assert kind == "built", bundle.status.text()
    assert bundle.state() == "done" and bundle.progress.value() == 100
    assert len(seen) > 3 and seen == sorted(seen)
    saved = usb / "airgap.sh"
    assert saved.stat().st_mode & 0o777 == 0o600
    header = saved.read_bytes()[:4000].decode(errors="replace")
    token = re.search(r"^RM_TOKEN=(\S+)$", header, re.M).group(1)  # type: ignore[union-attr]
    assert "Saved" in bundle.status.text() and "sudo sh airgap.sh" in bundle.status.text()
    assert "restic" in bundle.status.text()

    # The Add host page now shows the bundle's token; the first one is revoked.
    assert dialog.grant is result.grant
    assert dialog.grant.token == token != first.token
    assert token in dialog.commands.linux.toPlainText()
    await wait_until(
        lambda: [t.state for t in dialog.tokens] == ["active", "revoked"], 10, "token states"
    )
    assert "Token expires in" in dialog.countdown_text()

    # A platform whose agent is not bundled: a clear error, and the token stays.
    bundle.select_platform("windows", "amd64")
    bundle.restic.clear()
    bundle.dest.setText(str(usb / "airgap.zip"))
    kind, message = await built_or_failed(bundle)
    assert kind == "failed"
    assert "no agent build for windows/amd64" in str(message)
    assert bundle.state() == "error" and "windows/amd64" in bundle.status.text()
    assert bundle.create_button.isEnabled()
    assert dialog.grant.token == token
    assert not (usb / "airgap.zip").exists()
    bundle.close()


async def test_the_button_is_disabled_once_the_host_is_gone(ui, qtbot, tmp_path):
    dialog = await added_host(ui, qtbot, tmp_path)
    assert dialog.bundle_button.isEnabled()
    assert dialog.grant is not None
    await ui.hosts.delete_host(dialog.grant.host_id, OPERATOR)
    await wait_until(lambda: not dialog.bundle_button.isEnabled(), 10, "the button to turn off")
