"""Audit log: who did what, when — filtered, sorted, one entry's payload in
full, CSV export. Read-only: the log is append-only and nothing here edits
or deletes an entry.

Every read goes through ``AuditService`` on the runner. A filter change
starts a new query (older answers for an earlier filter are dropped); text
fields wait for a short pause in typing. While the range is open-ended
("last 24 hours", "all time") the view follows the log live: change signals
from the bridge are throttled into at most one small "what is new on top"
query per second, merged above the rows already shown.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

from PySide6.QtCore import QDateTime, QItemSelection, QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDateTimeEdit,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from server_core.errors import ServiceError
from server_core.views import AuditPage, AuditQuery
from server_core.views import AuditView as AuditEntry
from ui_qt.audit_model import (
    ACTOR_KINDS,
    ENTRY_ROLE,
    TIME_PRESETS,
    AuditModel,
    AuditSortProxy,
    Column,
    action_choices,
    actor_text,
    build_query,
    entry_time,
    pretty_payload,
    target_text,
)
from ui_qt.context import UiContext
from ui_qt.host_tabs.common import GREY, error_label, error_text, guarded, set_error
from ui_qt.navigator import Navigator

PAGE_SIZE = 500
TYPING_PAUSE_MS = 300
LIVE_THROTTLE_MS = 1000
DEFAULT_PRESET = "day"


class AuditView(QWidget):
    """The Audit log page (``navigator`` opens a host or job an entry names)."""

    # Emitted after each answer is shown (tests and screenshots wait on it).
    loaded = Signal()
    exported = Signal(str)  # the path written

    def __init__(
        self, ctx: UiContext, navigator: Navigator | None = None, *, page_size: int = PAGE_SIZE
    ) -> None:
        super().__init__()
        self.setObjectName("auditView")
        self.ctx = ctx
        self.navigator = navigator
        self.page_size = page_size
        self._generation = 0  # bumped per new query; stale answers are dropped
        self._loading = False
        self._more = False
        self._live_pending = False
        self._live_running = False
        self._stale = False  # something changed while the page was hidden
        self._known_actions: set[str] = set()
        self.query: AuditQuery | None = None
        self.last_export: Path | None = None
        self.fetches = 0

        title = QLabel("Audit log")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        title.setFont(font)
        subtitle = QLabel(
            "Every change by an operator, an API token, an agent or the system. "
            "Append-only: entries cannot be edited or deleted."
        )
        subtitle.setWordWrap(True)
        subtitle.setStyleSheet(f"color: {GREY};")

        # -- filters -------------------------------------------------------------
        self.preset = QComboBox()
        self.preset.setObjectName("auditTimePreset")
        for key, label, _seconds in TIME_PRESETS:
            self.preset.addItem(label, key)
        self.preset.setCurrentIndex(self.preset.findData(DEFAULT_PRESET))
        now = QDateTime.currentDateTime()
        self.from_edit = QDateTimeEdit(now.addDays(-1))
        self.from_edit.setObjectName("auditFrom")
        self.to_edit = QDateTimeEdit(now)
        self.to_edit.setObjectName("auditTo")
        for edit in (self.from_edit, self.to_edit):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd HH:mm")
        self.from_label = QLabel("from")
        self.to_label = QLabel("to")

        self.actor = QComboBox()
        self.actor.setObjectName("auditActor")
        for value, label in ACTOR_KINDS:
            self.actor.addItem(label, value)
        self.action = QComboBox()
        self.action.setObjectName("auditAction")
        self.action.setMinimumContentsLength(24)
        self.action.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.action.addItem("All actions", None)
        self.target = QLineEdit()
        self.target.setObjectName("auditTarget")
        self.target.setPlaceholderText("host:3")
        self.target.setToolTip('A kind ("host") or kind:id ("host:3", "job:…")')
        self.target.setMaximumWidth(160)
        self.text = QLineEdit()
        self.text.setObjectName("auditText")
        self.text.setPlaceholderText("Search actions, actors, targets and payloads…")
        self.text.setClearButtonEnabled(True)
        self.clear_button = QPushButton("Clear filters")
        self.clear_button.setObjectName("auditClearFilters")
        self.clear_button.clicked.connect(self.clear_filters)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setObjectName("auditExport")
        self.export_button.setToolTip("Every entry that matches the filters, not just those shown")
        self.export_button.clicked.connect(self.export_csv)

        row1 = QHBoxLayout()
        row1.addWidget(QLabel("When"))
        row1.addWidget(self.preset)
        row1.addWidget(self.from_label)
        row1.addWidget(self.from_edit)
        row1.addWidget(self.to_label)
        row1.addWidget(self.to_edit)
        row1.addSpacing(12)
        row1.addWidget(QLabel("Actor"))
        row1.addWidget(self.actor)
        row1.addSpacing(12)
        row1.addWidget(QLabel("Action"))
        row1.addWidget(self.action)
        row1.addStretch(1)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Target"))
        row2.addWidget(self.target)
        row2.addSpacing(12)
        row2.addWidget(QLabel("Search"))
        row2.addWidget(self.text, 1)
        row2.addWidget(self.clear_button)
        row2.addSpacing(12)
        row2.addWidget(self.export_button)

        self.filter_error = error_label()
        self.filter_error.setObjectName("auditFilterError")
        self.error = error_label()
        self.error.setObjectName("auditError")
        self.status = QLabel()
        self.status.setObjectName("auditStatus")
        self.status.setStyleSheet(f"color: {GREY};")
        self.export_status = QLabel()
        self.export_status.setObjectName("auditExportStatus")
        self.export_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.export_status.hide()

        # -- table ---------------------------------------------------------------
        self.model = AuditModel(self)
        self.proxy = AuditSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("auditTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(Column.TIME, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        char = self.fontMetrics().horizontalAdvance("0")
        for col, chars in (
            (Column.TIME, 21),
            (Column.ACTOR, 16),
            (Column.ACTION, 28),
            (Column.TARGET, 22),
        ):
            self.table.setColumnWidth(col, char * chars)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(self._double_clicked)

        self.empty = QLabel()
        self.empty.setObjectName("auditEmpty")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet(f"color: {GREY}; font-size: 14px;")
        self.empty_clear = QPushButton("Clear filters")
        self.empty_clear.setObjectName("auditEmptyClear")
        self.empty_clear.clicked.connect(self._empty_clicked)
        empty_page = QWidget()
        empty_layout = QVBoxLayout(empty_page)
        empty_layout.addStretch(1)
        empty_layout.addWidget(self.empty)
        empty_layout.addWidget(self.empty_clear, 0, Qt.AlignmentFlag.AlignHCenter)
        empty_layout.addStretch(2)
        self.table_stack = QStackedWidget()
        self.table_stack.addWidget(self.table)
        self.table_stack.addWidget(empty_page)

        self.load_older_button = QPushButton("Load older entries")
        self.load_older_button.setObjectName("auditLoadOlder")
        self.load_older_button.clicked.connect(self.load_older)
        self.load_older_button.setEnabled(False)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.table_stack, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.load_older_button)
        left_layout.addLayout(bottom)

        # -- details ---------------------------------------------------------------
        self.details_header = QLabel("Select an entry to see its details.")
        self.details_header.setObjectName("auditDetailsHeader")
        self.details_header.setWordWrap(True)
        self.details_header.setTextFormat(Qt.TextFormat.RichText)
        self.details_header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.payload = QPlainTextEdit()
        self.payload.setObjectName("auditPayload")
        self.payload.setReadOnly(True)
        self.payload.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        # Wrapped: a long message is read whole without scrolling sideways.
        self.payload.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.payload.setPlaceholderText("The entry's payload, as recorded")
        self.open_target_button = QPushButton()
        self.open_target_button.setObjectName("auditOpenTarget")
        self.open_target_button.clicked.connect(self.open_target)
        self.open_target_button.hide()
        details = QWidget()
        details.setObjectName("auditDetails")
        details_layout = QVBoxLayout(details)
        details_layout.setContentsMargins(6, 0, 0, 0)
        details_layout.addWidget(self.details_header)
        details_layout.addWidget(self.payload, 1)
        details_layout.addWidget(self.open_target_button, 0, Qt.AlignmentFlag.AlignLeft)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(details)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(0, False)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(subtitle)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(self.filter_error)
        layout.addWidget(self.error)
        layout.addWidget(self.export_status)
        layout.addWidget(self.splitter, 1)

        # -- wiring ------------------------------------------------------------------
        self._typing = QTimer(self)
        self._typing.setSingleShot(True)
        self._typing.setInterval(TYPING_PAUSE_MS)
        self._typing.timeout.connect(self.apply_filters)
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_THROTTLE_MS)
        self._live_timer.timeout.connect(self._refresh_newest)

        self.preset.currentIndexChanged.connect(self._preset_changed)
        self.actor.currentIndexChanged.connect(self.apply_filters)
        self.action.currentIndexChanged.connect(self._action_changed)
        self.from_edit.dateTimeChanged.connect(self._typed)
        self.to_edit.dateTimeChanged.connect(self._typed)
        self.target.textChanged.connect(self._typed)
        self.text.textChanged.connect(self._typed)
        self.target.returnPressed.connect(self.apply_filters)
        self.text.returnPressed.connect(self.apply_filters)

        bridge = ctx.bridge
        bridge.audit_appended.connect(self._changed)
        for signal in (
            bridge.hosts_changed,
            bridge.hosts_removed,
            bridge.jobs_changed,
            bridge.sources_changed,
            bridge.alerts_changed,
        ):
            signal.connect(self._changed)
        bridge.channels_changed.connect(self._changed)

        self._show_custom(False)
        self._filling_actions = False
        self._load_actions()
        self.apply_filters()

    # -- filters ---------------------------------------------------------------------

    def _preset_changed(self, *_: object) -> None:
        self._show_custom(self.preset.currentData() == "custom")
        self.apply_filters()

    def _show_custom(self, on: bool) -> None:
        for w in (self.from_label, self.from_edit, self.to_label, self.to_edit):
            w.setVisible(on)

    def _action_changed(self, *_: object) -> None:
        if not self._filling_actions:
            self.apply_filters()

    def _typed(self, *_: object) -> None:
        self._typing.start()

    def set_preset(self, key: str) -> None:
        self.preset.setCurrentIndex(self.preset.findData(key))

    def set_custom_range(self, since: float, until: float) -> None:
        self.from_edit.setDateTime(QDateTime.fromSecsSinceEpoch(int(since)))
        self.to_edit.setDateTime(QDateTime.fromSecsSinceEpoch(int(until)))
        self.set_preset("custom")
        self.apply_filters()

    def set_actor(self, kind: str | None) -> None:
        self.actor.setCurrentIndex(self.actor.findData(kind))

    def set_action(self, value: str | None) -> None:
        """Select an action (exact, or a "family." prefix); added to the list if unknown."""
        index = self.action.findData(value)
        if index < 0 and value:
            self.action.addItem(value, value)
            index = self.action.count() - 1
        self.action.setCurrentIndex(max(0, index))

    def filters_active(self) -> bool:
        """Anything narrower than the default view (the time range aside)."""
        return bool(
            self.preset.currentData() == "custom"
            or self.actor.currentData()
            or self.action.currentData()
            or self.target.text().strip()
            or self.text.text().strip()
        )

    def clear_filters(self) -> None:
        for widget in (self.preset, self.actor, self.action, self.target, self.text):
            widget.blockSignals(True)
        self.preset.setCurrentIndex(self.preset.findData(DEFAULT_PRESET))
        self._show_custom(False)
        self.actor.setCurrentIndex(0)
        self.action.setCurrentIndex(0)
        self.target.clear()
        self.text.clear()
        for widget in (self.preset, self.actor, self.action, self.target, self.text):
            widget.blockSignals(False)
        self.apply_filters()

    def current_query(self, *, before_id: int | None = None) -> AuditQuery:
        """The query the filter bar describes (ValueError when it is malformed)."""
        custom = self.preset.currentData() == "custom"
        return build_query(
            preset=str(self.preset.currentData()),
            now=time.time(),
            custom_from=self.from_edit.dateTime().toSecsSinceEpoch() if custom else None,
            custom_to=self.to_edit.dateTime().toSecsSinceEpoch() if custom else None,
            actor_kind=self.actor.currentData(),
            action=self.action.currentData(),
            target=self.target.text(),
            text=self.text.text(),
            limit=self.page_size,
            before_id=before_id,
        )

    def is_live(self) -> bool:
        """New entries can match (no upper bound): follow the log as it grows."""
        return self.query is not None and self.query.until is None

    # -- loading ---------------------------------------------------------------------

    def reload(self) -> None:
        self._load_actions()
        self.apply_filters()

    def apply_filters(self, *_: object) -> None:
        """Start a fresh query from the filter bar (replaces what is shown)."""
        self._typing.stop()
        try:
            query = self.current_query()
        except ValueError as exc:
            set_error(self.filter_error, str(exc))
            return
        set_error(self.filter_error, None)
        self.query = query
        self._generation += 1
        generation = self._generation
        self._loading = True
        self._update_status()
        self.fetches += 1
        self.ctx.runner.run(
            self.ctx.audit.search(query),
            what="reading the audit log",
            on_done=guarded(self, lambda page: self._loaded(generation, page)),
            on_error=guarded(self, lambda exc: self._failed(generation, exc)),
        )

    def _loaded(self, generation: int, page: AuditPage) -> None:
        if generation != self._generation:
            return
        self._loading = False
        set_error(self.error, None)
        self._more = page.more
        self.model.reset(page.entries)
        self._note_actions(page.entries)
        self._after_change()
        if self.proxy.rowCount():
            self.table.selectRow(0)
        else:
            self._show_entry(None)
        self.loaded.emit()

    def _failed(self, generation: int, exc: Exception) -> None:
        if generation != self._generation:
            return
        self._loading = False
        if isinstance(exc, ServiceError) and exc.field:
            set_error(self.filter_error, error_text(exc))
        else:
            set_error(self.error, f"Could not read the audit log: {error_text(exc)}")
        self._update_status()
        self.loaded.emit()

    def load_older(self) -> None:
        """The next page of older matching entries, added below."""
        oldest = self.model.oldest_id()
        if self.query is None or oldest is None or not self._more or self._loading:
            return
        query = replace(self.query, before_id=oldest)
        generation = self._generation
        self._loading = True
        self._update_status()
        self.fetches += 1

        def done(page: AuditPage) -> None:
            if generation != self._generation:
                return
            self._loading = False
            self._more = page.more
            self.model.append_older(page.entries)
            self._note_actions(page.entries)
            self._after_change()
            self.loaded.emit()

        self.ctx.runner.run(
            self.ctx.audit.search(query),
            what="reading older audit entries",
            on_done=guarded(self, done),
            on_error=guarded(self, lambda exc: self._failed(generation, exc)),
        )

    # -- live ------------------------------------------------------------------------

    def _changed(self, *_: object) -> None:
        if not self.is_live():
            return
        if not self.isVisible():
            # Another page is shown: catch up once this one is shown again
            # rather than query the log on every heartbeat of the fleet.
            self._stale = True
            return
        if not self._live_timer.isActive():
            self._live_timer.start()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self._refresh_newest()

    def _refresh_newest(self) -> None:
        """Fetch the newest page for the current filters and put what is new on top."""
        if not self.is_live() or self._loading:
            if self.is_live():
                self._live_timer.start()  # try again once the current load is shown
            return
        if self._live_running:
            self._live_pending = True
            return
        try:
            # Recomputed: "last hour" moves with the clock.
            query = self.current_query()
        except ValueError:
            return
        generation = self._generation
        self._live_running = True
        self.fetches += 1

        def done(page: AuditPage) -> None:
            self._live_running = False
            if generation == self._generation:
                newest = self.model.newest_id()
                fresh = [e for e in page.entries if newest is None or e.id > newest]
                if page.more and len(fresh) == len(page.entries) and newest is not None:
                    # More arrived than a page holds: a gap would be left below
                    # the new rows, so start over from the newest page.
                    self._more = True
                    self.model.reset(page.entries)
                else:
                    if not self.model.entries:
                        self._more = page.more
                    self.model.merge_newer(fresh)
                self._note_actions(fresh)
                self._after_change()
                if self.table.selectionModel().selectedRows() == [] and self.proxy.rowCount():
                    self.table.selectRow(0)
                self.loaded.emit()
            if self._live_pending:
                self._live_pending = False
                self._live_timer.start()

        def failed(exc: Exception) -> None:
            self._live_running = False
            set_error(self.error, f"Could not refresh the audit log: {error_text(exc)}")

        self.ctx.runner.run(
            self.ctx.audit.search(query),
            what="refreshing the audit log",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )

    # -- action list -----------------------------------------------------------------

    def _load_actions(self) -> None:
        self.ctx.runner.run(
            self.ctx.audit.actions(),
            what="listing audit actions",
            on_done=guarded(self, self._fill_actions),
            on_error=guarded(self, lambda _exc: None),  # the combo keeps what it has
        )

    def _note_actions(self, entries: list[AuditEntry]) -> None:
        if any(e.action not in self._known_actions for e in entries):
            self._load_actions()

    def _fill_actions(self, actions: list[str]) -> None:
        self._known_actions = set(actions)
        current = self.action.currentData()
        self._filling_actions = True
        try:
            self.action.clear()
            self.action.addItem("All actions", None)
            for label, value in action_choices(actions):
                self.action.addItem(label, value)
            index = self.action.findData(current)
            if index < 0 and current:
                self.action.addItem(current, current)
                index = self.action.count() - 1
            self.action.setCurrentIndex(max(0, index))
        finally:
            self._filling_actions = False

    def action_values(self) -> list[str | None]:
        return [self.action.itemData(i) for i in range(self.action.count())]

    # -- presentation ------------------------------------------------------------------

    def _after_change(self) -> None:
        empty = self.model.rowCount() == 0
        if empty:
            preset = self.preset.currentData()
            if self.filters_active():
                self.empty.setText("No entries match these filters.")
                self.empty_clear.setText("Clear filters")
                self.empty_clear.show()
            elif preset == "all":
                self.empty.setText(
                    "Nothing recorded yet.\nChanges made here, through the API, by agents "
                    "and by the system appear as they happen."
                )
                self.empty_clear.hide()
            else:
                self.empty.setText(f"Nothing recorded in the {self.preset.currentText().lower()}.")
                self.empty_clear.setText("Show all time")
                self.empty_clear.show()
        self.table_stack.setCurrentIndex(1 if empty else 0)
        self._update_status()

    def _empty_clicked(self) -> None:
        if self.filters_active():
            self.clear_filters()
        else:
            self.set_preset("all")

    def empty_text(self) -> str:
        """The empty-state message, '' while rows are shown."""
        return self.empty.text() if self.table_stack.currentIndex() == 1 else ""

    def _update_status(self) -> None:
        n = self.model.rowCount()
        if self._loading and n == 0:
            text = "Loading…"
        else:
            noun = "entry" if n == 1 else "entries"
            text = f"{n:,} {noun}"
            if self._more:
                text += " shown · older entries match too"
            if self.is_live():
                text += " · updating live"
            if self._loading:
                text += " · loading…"
        self.status.setText(text)
        self.load_older_button.setEnabled(self._more and not self._loading)
        self.load_older_button.setVisible(self._more or n >= self.page_size)

    def has_more(self) -> bool:
        return self._more

    def selected_entry(self) -> AuditEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        entry = rows[0].data(ENTRY_ROLE)
        return entry if isinstance(entry, AuditEntry) else None

    def select_entry(self, entry_id: int) -> bool:
        for row in range(self.proxy.rowCount()):
            entry = self.proxy.index(row, 0).data(ENTRY_ROLE)
            if entry.id == entry_id:
                self.table.selectRow(row)
                return True
        return False

    def _selection_changed(self, _selected: QItemSelection, _deselected: QItemSelection) -> None:
        self._show_entry(self.selected_entry())

    def _show_entry(self, entry: AuditEntry | None) -> None:
        if entry is None:
            self.details_header.setText("Select an entry to see its details.")
            self.payload.clear()
            self.open_target_button.hide()
            return
        rows = [
            ("When", entry_time(entry.ts)),
            ("Actor", actor_text(entry)),
            ("Action", entry.action),
            ("Target", target_text(entry)),
            ("Entry", f"#{entry.id}"),
        ]
        self.details_header.setText(
            "<table cellspacing='0' cellpadding='1'>"
            + "".join(
                f"<tr><td style='color:{GREY}; padding-right:8px'>{k}</td>"
                f"<td><b>{html.escape(v, quote=False)}</b></td></tr>"
                for k, v in rows
            )
            + "</table>"
        )
        self.payload.setPlainText(pretty_payload(entry.payload))
        label = self._target_link(entry)
        self.open_target_button.setVisible(label is not None)
        if label is not None:
            self.open_target_button.setText(label)

    def _target_link(self, entry: AuditEntry) -> str | None:
        if self.navigator is None or not entry.target_id:
            return None
        if entry.target_kind == "host" and entry.target_id.isdigit():
            return f"Open host {entry.target_id}"
        if entry.target_kind == "job":
            return "Open job"
        return None

    def open_target(self) -> None:
        entry = self.selected_entry()
        if entry is None or self.navigator is None or not entry.target_id:
            return
        if entry.target_kind == "host" and entry.target_id.isdigit():
            self.navigator.open_host(int(entry.target_id))
        elif entry.target_kind == "job":
            self.navigator.open_job(entry.target_id)

    def _double_clicked(self, _index: QModelIndex) -> None:
        self.open_target()

    def payload_text(self) -> str:
        return self.payload.toPlainText()

    # -- CSV export --------------------------------------------------------------------

    def export_csv(self) -> QFileDialog | None:
        """Ask where to save (a window-modal dialog, no nested loop), then export."""
        try:
            query = self.current_query()
        except ValueError as exc:
            set_error(self.filter_error, str(exc))
            return None
        start = Path.home() / time.strftime("audit-%Y%m%d-%H%M.csv")
        dialog = QFileDialog(self, "Export audit log", str(start), "CSV files (*.csv)")
        dialog.setObjectName("auditExportDialog")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("csv")
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def chosen(path: str) -> None:
            if path:
                self.export_to(Path(path), query)

        dialog.fileSelected.connect(guarded(self, chosen))
        dialog.open()
        return dialog

    def export_to(self, path: Path, query: AuditQuery | None = None) -> None:
        """Write every entry matching ``query`` (default: the filters) to ``path``,
        chunk by chunk in a worker thread."""
        if query is None:
            try:
                query = self.current_query()
            except ValueError as exc:
                set_error(self.filter_error, str(exc))
                return
        self.export_button.setEnabled(False)
        self.export_status.setStyleSheet(f"color: {GREY};")
        self.export_status.setText(f"Exporting to {path}…")
        self.export_status.show()

        def done(rows: int) -> None:
            self.export_button.setEnabled(True)
            self.last_export = path
            self.export_status.setStyleSheet("")
            noun = "entry" if rows == 1 else "entries"
            self.export_status.setText(f"Exported {rows:,} {noun} to {path}")
            self.exported.emit(str(path))

        def failed(exc: Exception) -> None:
            self.export_button.setEnabled(True)
            self.export_status.hide()
            set_error(self.error, f"Could not export the audit log to {path}: {error_text(exc)}")

        self.ctx.runner.run(
            write_csv(self.ctx, query, path),
            what="exporting the audit log",
            on_done=guarded(self, done),
            on_error=guarded(self, failed),
        )


async def write_csv(ctx: UiContext, query: AuditQuery, path: Path) -> int:
    """Stream the matching entries to ``path`` (file I/O off the loop); returns
    how many entries were written. A failed export leaves no partial file."""
    tmp = path.with_name(path.name + ".part")
    handle: IO[str] = await asyncio.to_thread(_open_for_csv, tmp)
    rows = 0
    try:
        async for chunk in ctx.audit.csv_chunks(query):
            rows += await asyncio.to_thread(_write_chunk, handle, chunk)
        await asyncio.to_thread(handle.close)
        await asyncio.to_thread(tmp.replace, path)
    except BaseException:
        await asyncio.to_thread(_discard, handle, tmp)
        raise
    return max(0, rows - 1)  # the header row


def _open_for_csv(path: Path) -> IO[str]:
    # newline="" as the csv module asks: the rows carry their own \r\n.
    return path.open("w", encoding="utf-8", newline="")


def _write_chunk(handle: IO[str], chunk: str) -> int:
    handle.write(chunk)
    # Payloads may hold newlines inside quoted cells: count records, not lines.
    return sum(1 for _ in csv.reader(io.StringIO(chunk)))


def _discard(handle: IO[str], path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


__all__ = ["AuditView", "write_csv"]
