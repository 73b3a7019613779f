"""Last page of the restore browser: what is about to happen, in one place."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from ui_qt.formatting import human_bytes
from ui_qt.host_tabs.common import RED, error_label, snapshot_timestamp
from ui_qt.host_tabs.snapshots_tab import snapshot_time_text
from ui_qt.restore.browse_page import Selection
from ui_qt.restore.target_page import Target

SHOWN_PATHS = 6


def paths_html(paths: list[str]) -> str:
    shown = "<br>".join(html.escape(p) for p in paths[:SHOWN_PATHS])
    more = len(paths) - SHOWN_PATHS
    if more > 0:
        shown += f"<br><i>… and {more:,} more</i>"
    return shown


class ConfirmPage(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.heading = QLabel("Ready to restore")
        font = self.heading.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.2)
        self.heading.setFont(font)
        self.host = self._value("confirmHost")
        self.snapshot = self._value("confirmSnapshot")
        self.paths = self._value("confirmPaths")
        self.paths.setTextFormat(Qt.TextFormat.RichText)
        self.files = self._value("confirmFiles")
        self.size_value = self._value("confirmSize")
        self.target = self._value("confirmTarget")
        self.target.setTextFormat(Qt.TextFormat.RichText)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(8)
        for caption, value in (
            ("Host", self.host),
            ("Snapshot", self.snapshot),
            ("Paths", self.paths),
            ("Files", self.files),
            ("Size", self.size_value),
            ("Target", self.target),
        ):
            label = QLabel(caption)
            label.setEnabled(False)
            form.addRow(label, value)
        self.note = QLabel(
            "Restore starts a job on the host; its window shows the progress and can cancel it."
        )
        self.note.setWordWrap(True)
        self.note.setEnabled(False)
        self.error = error_label()
        self.error.setObjectName("restoreError")
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addSpacing(6)
        layout.addLayout(form)
        layout.addSpacing(10)
        layout.addWidget(self.note)
        layout.addWidget(self.error)
        layout.addStretch(1)

    @staticmethod
    def _value(name: str) -> QLabel:
        label = QLabel()
        label.setObjectName(name)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def show_plan(self, host_name: str, selection: Selection, target: Target) -> None:
        snap = selection.snapshot
        self.host.setText(host_name)
        when = snapshot_time_text(snapshot_timestamp(snap.time), snap.time)
        self.snapshot.setText(f"{snap.short_id} · {when}")
        self.snapshot.setToolTip(snap.id)
        count = len(selection.paths)
        self.paths.setText(
            f"{count:,} selected path{'s' if count != 1 else ''}:<br>{paths_html(selection.paths)}"
        )
        self.files.setText(f"{selection.totals.files:,}")
        self.size_value.setText(human_bytes(selection.totals.bytes))
        where = html.escape(target.describe(host_name, snap.short_id))
        if target.in_place:
            where = f'<span style="color:{RED}"><b>{where}</b></span>'
        self.target.setText(where)
        self.heading.setText("Ready to restore in place" if target.in_place else "Ready to restore")
        self.error.hide()
