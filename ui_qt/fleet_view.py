"""Fleet (home): summary tiles, filters and the live hosts table.

Live without reloads: the bridge says which hosts changed; the view asks
``HostService.list_hosts(ids)`` for those hosts only and ``FleetModel.apply``
updates their rows in place. The whole fleet is read once at start and on F5.
At most one refresh is in flight; changes that arrive meanwhile are
collected and fetched by exactly one more.

The model is also the app's fleet snapshot: the tray follows it instead of
reading the fleet a second time.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import shiboken6
from PySide6.QtCore import QByteArray, QEvent, QModelIndex, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QPalette,
    QShortcut,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from server_core.services.context import OPERATOR
from server_core.views import HostView
from ui_qt.add_this_computer import AddThisComputerDialog, LocalAgentLauncher
from ui_qt.context import UiContext
from ui_qt.fleet_model import (
    HOST_ID_ROLE,
    SPARKLINE_ROLE,
    STATUS_FILTERS,
    UPDATE_ROLE,
    Column,
    FleetFilterProxy,
    FleetModel,
    backup_failing,
    host_state,
)
from ui_qt.fleet_update_dialog import FleetUpdateDialog
from ui_qt.navigator import Navigator
from ui_qt.pending_hosts_panel import PendingHostsPanel
from ui_qt.widgets.colors import Tone, text_color
from ui_qt.widgets.icons import icon
from ui_qt.widgets.sparkline import SparklineDelegate
from ui_qt.widgets.status_dot import NEVER, OFFLINE, ONLINE
from ui_qt.widgets.tag_chips import TagChips
from ui_qt.widgets.tiles import SummaryTile
from ui_qt.widgets.update_chip import UpdateChipDelegate

log = logging.getLogger(__name__)

KEY_TEXT = "fleet/filter_text"
KEY_STATUS = "fleet/status"
KEY_TAGS = "fleet/tags"
KEY_SORT_COLUMN = "fleet/sort_column"
KEY_SORT_ORDER = "fleet/sort_order"
# Versioned: a saved header state from before a column was added would shift widths.
KEY_HEADER = "fleet/header2"
# How often hosts whose next run has passed are read again (for their next one).
DUE_CHECK_MS = 30_000
# Past this many changed hosts (everyone went offline), read the whole fleet:
# as cheap, and no statement with thousands of ids.
FULL_READ_ABOVE = 500


class HostTable(QTableView):
    """A table that reports Enter/Return on a row as ``open_requested``
    (``activated`` differs per platform and also fires on double-click)."""

    open_requested = Signal(QModelIndex)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            index = self.currentIndex()
            if index.isValid():
                self.open_requested.emit(index)
                return
        super().keyPressEvent(event)


class FleetView(QWidget):
    """The home page. ``reload()`` is F5; ``refreshed`` fires after each load."""

    refreshed = Signal()

    def __init__(self, ctx: UiContext, navigator: Navigator, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("fleetView")
        self.ctx = ctx
        self.navigator = navigator
        self._in_flight = False
        self._again = False
        # What the next refresh fetches: the whole fleet, or these hosts.
        self._want_full = False
        self._dirty: set[int] = set()
        # What the refresh in flight asked for (None: the whole fleet), and
        # hosts deleted since it started (its result may still carry them).
        self._scope: frozenset[int] | None = None
        self._deleted_in_flight: set[int] = set()
        self._sized = False
        self._header_restored = False
        # Set by the app (offer_this_computer) where it can run a local agent.
        self._this_computer: LocalAgentLauncher | None = None
        self._this_computer_dialog: AddThisComputerDialog | None = None

        self.model = FleetModel(self)
        self.proxy = FleetFilterProxy(self)
        self.proxy.setSourceModel(self.model)

        self.pages = QStackedWidget()
        self.fleet_page = self._build_fleet_page()
        self.empty_page = self._build_empty_page()
        self.pages.addWidget(self.fleet_page)
        self.pages.addWidget(self.empty_page)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        # Hosts that announced themselves wait above the table (or the empty page).
        self.pending_panel = self._build_pending_panel()
        if self.pending_panel is not None:
            outer.addWidget(self.pending_panel)
        outer.addWidget(self.pages)

        find = QShortcut(QKeySequence(QKeySequence.StandardKey.Find), self)
        find.setContext(Qt.ShortcutContext.WindowShortcut)
        find.activated.connect(self.focus_filter)
        self._find_shortcut = find

        self._restore_state()
        self.model.applied.connect(self._on_model_applied)
        for signal in (
            self.proxy.rowsInserted,
            self.proxy.rowsRemoved,
            self.proxy.modelReset,
            self.proxy.layoutChanged,
        ):
            signal.connect(self._update_match_state)
        ctx.bridge.hosts_changed.connect(self._on_hosts_changed)
        ctx.bridge.hosts_removed.connect(self._on_hosts_removed)
        self._due_timer = QTimer(self)
        self._due_timer.setInterval(DUE_CHECK_MS)
        self._due_timer.timeout.connect(self.refresh_due)
        self._due_timer.start()
        self._update_summary()
        self._update_match_state()
        self.reload()

    # -- construction ------------------------------------------------------------

    def _build_fleet_page(self) -> QWidget:
        page = QWidget()
        self.tile_online = SummaryTile(
            "Hosts online", "Hosts whose agent is connected now (click to show them)"
        )
        self.tile_failing = SummaryTile(
            "Backups failing", "Hosts whose most recent backup failed (click to show them)"
        )
        self.tile_repos = SummaryTile(
            "Repos needing attention",
            "Repositories whose initialisation failed, or that an enrolled agent has not "
            "checked yet (click to show them)",
        )
        self.tile_online.clicked.connect(lambda: self._toggle_status(ONLINE))
        self.tile_failing.clicked.connect(lambda: self._toggle_status("failing"))
        self.tile_repos.clicked.connect(lambda: self._toggle_status("attention"))
        tiles = QHBoxLayout()
        tiles.setSpacing(10)
        for tile in (self.tile_online, self.tile_failing, self.tile_repos):
            tiles.addWidget(tile)

        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("fleetFilter")
        self.filter_edit.setPlaceholderText("Filter by name (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.addAction(icon("search"), QLineEdit.ActionPosition.LeadingPosition)
        self.filter_edit.setToolTip(
            "Show hosts whose name contains every word typed here.\n"
            "Esc clears it; ↓ moves to the table."
        )
        self.filter_edit.installEventFilter(self)
        self.status_combo = QComboBox()
        self.status_combo.setObjectName("fleetStatusFilter")
        self.status_combo.setToolTip("Show only hosts in this state")
        for key, label in STATUS_FILTERS.items():
            self.status_combo.addItem(label, key)
        self.count_label = QLabel()
        self.count_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.add_button = QPushButton(icon("add"), "Add host…")
        self.add_button.setToolTip("Enrol a new host (Ctrl+N)")
        self.add_button.clicked.connect(self._add_host)
        filters = QHBoxLayout()
        filters.addWidget(self.filter_edit, 3)
        filters.addWidget(self.status_combo, 1)
        filters.addStretch(1)
        filters.addWidget(self.count_label)
        filters.addWidget(self._build_update_button())
        filters.addWidget(self.add_button)

        self.tag_chips = TagChips()
        self.tag_chips.setObjectName("fleetTagChips")

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setVisible(False)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.no_match = QFrame()
        self.no_match.setObjectName("fleetNoMatch")
        no_match_row = QHBoxLayout(self.no_match)
        no_match_row.setContentsMargins(0, 0, 0, 0)
        self.no_match_label = QLabel("No hosts match the filters.")
        clear = QPushButton("Clear filters")
        clear.setObjectName("clearFilters")
        clear.clicked.connect(self.clear_filters)
        no_match_row.addWidget(self.no_match_label)
        no_match_row.addWidget(clear)
        no_match_row.addStretch(1)
        self.no_match.setVisible(False)

        self.table = HostTable()
        self.table.setObjectName("fleetTable")
        self.table.setModel(self.proxy)
        # The size column also draws the 30-day repository-size sparkline.
        self.table.setItemDelegateForColumn(
            int(Column.SIZE), SparklineDelegate(SPARKLINE_ROLE, self.table)
        )
        # The agent column's "update available" chip.
        self.table.setItemDelegateForColumn(
            int(Column.AGENT), UpdateChipDelegate(UPDATE_ROLE, self.table)
        )
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 10)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        # Size columns from the rows on screen only: Qt's default looks at up
        # to 1,000 rows (a second's stall with a big fleet). Names further
        # down that do not fit are elided; the operator can widen the column.
        header.setResizeContentsPrecision(0)
        header.setStretchLastSection(True)
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.table.doubleClicked.connect(self._open_index)
        self.table.open_requested.connect(self._open_index)

        layout = QVBoxLayout(page)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(8)
        layout.addLayout(tiles)
        layout.addSpacing(4)
        layout.addLayout(filters)
        layout.addWidget(self.tag_chips)
        layout.addWidget(self.error_label)
        layout.addWidget(self.no_match)
        layout.addWidget(self.table, 1)
        return page

    def _build_pending_panel(self) -> PendingHostsPanel | None:
        # A context built without the service shows no panel.
        pending = self.ctx.pending_hosts
        if pending is None:
            return None
        return PendingHostsPanel(
            pending,
            self.ctx.runner,
            self.ctx.bridge,
            sources=self.ctx.sources,
            schedules=self.ctx.schedules,
        )

    # -- agent updates (ui_qt/fleet_update_dialog.py) ------------------------------

    def _build_update_button(self) -> QPushButton:
        self.update_button = QPushButton("Update agents…")
        self.update_button.setObjectName("updateAgents")
        self.update_button.setToolTip(
            "Update every host whose agent differs from the one bundled with this app, "
            "one host at a time"
        )
        self.update_button.clicked.connect(self.open_fleet_update)
        self.update_button.setVisible(self.ctx.updates is not None)
        self._update_dialog: FleetUpdateDialog | None = None
        return self.update_button

    def _load_bundled_versions(self) -> None:
        updates = self.ctx.updates
        if updates is None:
            return

        def loaded(versions: dict[str, str]) -> None:
            if shiboken6.isValid(self):
                self.model.set_bundled_versions(versions)
                self._update_update_button()

        self.ctx.runner.run(
            updates.bundled_versions(), what="reading the bundled agent", on_done=loaded
        )

    def _update_update_button(self) -> None:
        outdated = len(self.model.outdated())
        self.update_button.setText(f"Update agents ({outdated})…" if outdated else "Update agents…")

    def open_fleet_update(self) -> None:
        updates = self.ctx.updates
        if updates is None:
            return
        dialog = self._update_dialog
        if dialog is None or not shiboken6.isValid(dialog):
            dialog = FleetUpdateDialog(
                updates, self.ctx.runner, self.ctx.bridge, self.model.hosts, self.window()
            )
            self._update_dialog = dialog
        else:
            dialog.reload()
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()

    def _update_host(self, host_id: int) -> None:
        updates = self.ctx.updates
        if updates is None:
            return

        def failed(exc: Exception) -> None:
            if shiboken6.isValid(self):
                self.error_label.setText(f"Could not update the agent: {exc}")
                self.error_label.setVisible(True)

        self.ctx.runner.run(
            updates.update_host(host_id, OPERATOR), what="updating the agent", on_error=failed
        )

    def _build_empty_page(self) -> QWidget:
        page = QWidget()
        page.setObjectName("fleetEmpty")
        art = QLabel()
        art.setPixmap(icon("server").pixmap(72, 72))
        art.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("No hosts yet")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        body = QLabel()
        self.empty_body = body
        body.setWordWrap(True)
        body.setTextFormat(Qt.TextFormat.RichText)
        # A fixed width lets the word-wrapped label compute its real height
        # (with only a maximum width, an aligned label collapses).
        body.setFixedWidth(540)
        self.empty_this_computer_button = QPushButton(icon("server"), "Add this computer…")
        self.empty_this_computer_button.setObjectName("emptyAddThisComputer")
        self.empty_this_computer_button.setToolTip(
            "Set up the agent on this computer and back it up to a folder you choose"
        )
        self.empty_this_computer_button.clicked.connect(self._add_this_computer)
        self.empty_add_button = QPushButton(icon("add"), "Add host…")
        self.empty_add_button.setObjectName("emptyAddHost")
        self.empty_add_button.setDefault(True)
        hint = self.empty_add_button.sizeHint()
        self.empty_add_button.setMinimumSize(max(hint.width() + 40, 160), hint.height() + 10)
        self.empty_add_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.empty_add_button.setToolTip("Enrol your first host (Ctrl+N)")
        self.empty_add_button.clicked.connect(self._add_host)
        hint = self.empty_this_computer_button.sizeHint()
        self.empty_this_computer_button.setMinimumSize(
            max(hint.width() + 40, 160), self.empty_add_button.minimumHeight()
        )
        self.empty_this_computer_button.setSizePolicy(
            QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed
        )
        empty_buttons = QHBoxLayout()
        empty_buttons.setSpacing(12)
        empty_buttons.addStretch(1)
        empty_buttons.addWidget(self.empty_this_computer_button)
        empty_buttons.addWidget(self.empty_add_button)
        empty_buttons.addStretch(1)
        self._update_this_computer()
        self.empty_hint = QLabel(self._agent_hint())
        self.empty_hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setFixedWidth(540)
        self.empty_hint.setMinimumHeight(self.empty_hint.heightForWidth(540))
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        column = QVBoxLayout()
        column.setSpacing(12)
        column.addWidget(art)
        column.addWidget(title)
        column.addWidget(body, 0, Qt.AlignmentFlag.AlignHCenter)
        column.addLayout(empty_buttons)
        column.addWidget(self.empty_hint, 0, Qt.AlignmentFlag.AlignHCenter)
        layout = QVBoxLayout(page)
        layout.addStretch(1)
        layout.addLayout(column)
        layout.addStretch(2)
        return page

    def _empty_text(self, this_computer: bool) -> str:
        intro = (
            "<p>restic-manager backs up the computers you add here. Each one runs a small "
            "agent that runs restic on a schedule and sends its backups straight to "
            "your repository.</p>"
        )
        if this_computer:
            return intro + (
                "<p><b>Add this computer…</b> sets up the agent here and backs up into a "
                "folder you choose; a minute later you watch its first backup run.</p>"
                "<p><b>Add host…</b> is for another computer (Linux or Windows): it shows "
                "the install command to run there, and the host appears here as soon as "
                "its agent connects.</p>"
            )
        return intro + (
            "<p>1.&nbsp;Click <b>Add host…</b> and enter the host's name and the "
            "repository its backups go to.<br>"
            "2.&nbsp;Run the install command it shows on that computer (Linux or Windows).<br>"
            "3.&nbsp;The host appears here as soon as its agent connects.</p>"
        )

    def _update_this_computer(self) -> None:
        """Offer "Add this computer" only when the app can run a local agent and this
        computer is not in the fleet yet."""
        launcher = self._this_computer
        name = launcher.hostname.lower() if launcher is not None else None
        offered = name is not None and all(v.name.lower() != name for v in self.model.hosts())
        self.empty_this_computer_button.setVisible(offered)
        self.empty_this_computer_button.setDefault(offered)
        self.empty_add_button.setDefault(not offered)
        text = self._empty_text(offered)
        if self.empty_body.text() != text:
            self.empty_body.setText(text)
            self.empty_body.setMinimumHeight(self.empty_body.heightForWidth(540))

    def _agent_hint(self) -> str:
        try:
            info = self.ctx.server_info()
        except Exception:  # the hint is a nicety; never fail the page for it
            log.debug("no server info for the empty-state hint", exc_info=True)
            return "Shortcut: Ctrl+N"
        return (
            f"Agents connect to {info.agent_url}\n"
            f"certificate SHA-256 {info.cert_sha256[:16]}…  ·  shortcut: Ctrl+N"
        )

    # -- public ------------------------------------------------------------------

    def reload(self) -> None:
        """Fetch the whole fleet again (F5). Coalesces with a refresh already in flight."""
        self._want_full = True
        self._load_bundled_versions()
        self._refresh()

    def _refresh(self) -> None:
        if self._in_flight:
            self._again = True
            return
        if self._want_full or not self.model.loaded() or len(self._dirty) > FULL_READ_ABOVE:
            scope = None
            self._want_full = False
            self._dirty.clear()
            call = self.ctx.hosts.list_hosts()
        elif self._dirty:
            scope = frozenset(self._dirty)
            self._dirty.clear()
            call = self.ctx.hosts.list_hosts(sorted(scope))
        else:
            return
        self._in_flight = True
        self._scope = scope
        self.ctx.runner.run(
            call,
            what="Loading the fleet",
            on_done=self._on_loaded,
            on_error=self._on_load_failed,
        )

    def refreshing(self) -> bool:
        return self._in_flight

    def refresh_due(self) -> None:
        """Re-read the hosts whose next run has passed: nothing else tells the
        view that their schedule moved on (the server computes the next run
        when asked)."""
        if not self.model.loaded():
            return
        now = time.time()
        due = {
            v.id for v in self.model.hosts() if v.next_run_at is not None and v.next_run_at <= now
        }
        if due:
            self._dirty |= due
            self._refresh()

    def offer_this_computer(self, launcher: LocalAgentLauncher | None) -> None:
        """Let the empty fleet offer "Add this computer", set up through ``launcher``."""
        self._this_computer = launcher
        self._update_this_computer()

    def show_hosts(self, views: list[HostView]) -> None:
        """Apply a fleet snapshot to the table (what a refresh does with its result)."""
        self.error_label.setVisible(False)
        self.model.apply(views)

    def focus_filter(self) -> None:
        if self.pages.currentWidget() is self.fleet_page:
            self.filter_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
            self.filter_edit.selectAll()

    def clear_filters(self) -> None:
        self.filter_edit.clear()
        self.status_combo.setCurrentIndex(0)
        self.tag_chips.clear_selection()

    def filter_state(self) -> dict[str, Any]:
        return {
            "text": self.filter_edit.text(),
            "status": self.status_combo.currentData(),
            "tags": sorted(self.tag_chips.selected()),
            "sort_column": self.table.horizontalHeader().sortIndicatorSection(),
            "sort_order": self.table.horizontalHeader().sortIndicatorOrder(),
        }

    def selected_host_id(self) -> int | None:
        index = self.table.currentIndex()
        if not index.isValid():
            return None
        value = index.siblingAtColumn(0).data(HOST_ID_ROLE)
        return int(value) if value is not None else None

    # -- live updates --------------------------------------------------------------

    def _on_hosts_changed(self, ids: object) -> None:
        if isinstance(ids, set | frozenset | list | tuple):
            self._dirty.update(int(i) for i in ids)
        else:  # no ids: read everything
            self._want_full = True
        self._refresh()

    def _on_hosts_removed(self, ids: object) -> None:
        if not isinstance(ids, set | frozenset | list | tuple):
            self.reload()
            return
        removed = {int(i) for i in ids}
        self.model.remove_ids(removed)
        self._dirty -= removed
        if self._in_flight:
            self._deleted_in_flight |= removed

    def _on_loaded(self, views: list[HostView]) -> None:
        if not shiboken6.isValid(self):
            return
        self._in_flight = False
        if self._deleted_in_flight:
            views = [v for v in views if v.id not in self._deleted_in_flight]
            self._deleted_in_flight.clear()
        self.error_label.setVisible(False)
        self.model.apply(views, only=self._scope)
        self._scope = None
        if self._again:
            self._again = False
            self._refresh()
        self.refreshed.emit()

    def _on_load_failed(self, exc: Exception) -> None:
        if not shiboken6.isValid(self):
            return
        log.warning("loading the fleet failed: %s", exc)
        self._in_flight = False
        if self._scope is not None:
            # Still to fetch, with the next change or F5.
            self._dirty |= self._scope - self._deleted_in_flight
        self._scope = None
        self._deleted_in_flight.clear()
        self.error_label.setText(f"Could not load the fleet: {exc}. Press F5 to try again.")
        pal = self.error_label.palette()
        pal.setColor(self.error_label.foregroundRole(), text_color(Tone.BAD, self.palette()))
        self.error_label.setPalette(pal)
        self.error_label.setVisible(True)
        if self._again:
            self._again = False
            self._refresh()

    def _on_model_applied(self) -> None:
        self.tag_chips.set_tags(self.model.all_tags())
        self._update_update_button()
        self._update_summary()
        empty = self.model.loaded() and self.model.rowCount() == 0
        target = self.empty_page if empty else self.fleet_page
        self._update_this_computer()
        if self.pages.currentWidget() is not target:
            self.pages.setCurrentWidget(target)
        if not self._sized and self.model.rowCount() and self.table.isVisible():
            self._size_columns()
        self._update_match_state()

    # -- summary -------------------------------------------------------------------

    def _update_summary(self) -> None:
        if not self.model.loaded():
            for tile in (self.tile_online, self.tile_failing, self.tile_repos):
                tile.set_value("—", "loading…", Tone.NEUTRAL)
            return
        views = self.model.hosts()
        states = [host_state(v) for v in views]
        total = len(views)
        online, offline, never = (states.count(s) for s in (ONLINE, OFFLINE, NEVER))
        parts = []
        if offline:
            parts.append(f"{offline} offline")
        if never:
            parts.append(f"{never} never connected")
        if not parts:
            parts.append("all connected" if total else "no hosts")
        tone = Tone.WARN if offline else Tone.OK if total and online == total else Tone.NEUTRAL
        self.tile_online.set_value(f"{online} / {total}", " · ".join(parts), tone)

        failing = sum(1 for v in views if backup_failing(v))
        warnings = sum(1 for v in views if v.last_backup_status == "succeeded_with_warnings")
        backed_up = sum(1 for v in views if v.last_backup_status is not None)
        if failing:
            detail = f"{failing} of {backed_up} latest backups failed"
        elif warnings:
            detail = "none failed"
        elif backed_up:
            detail = "all latest backups succeeded"
        else:
            detail = "no backups yet"
        if warnings:
            detail += f" · {warnings} with warnings"
        tone = Tone.BAD if failing else Tone.WARN if warnings else Tone.OK
        self.tile_failing.set_value(str(failing), detail, tone if backed_up else Tone.NEUTRAL)

        init_failed = sum(1 for v in views if v.repo_status == "init_failed")
        locked = sum(1 for v in views if v.repo_status == "locked")
        unchecked = sum(1 for v in views if v.repo_status == "unknown" and v.enrolled)
        parts = []
        if init_failed:
            parts.append(f"{init_failed} init failed")
        if locked:
            parts.append(f"{locked} locked")
        if unchecked:
            parts.append(f"{unchecked} not checked")
        ready = sum(1 for v in views if v.repo_status == "ready")
        if not parts:
            parts.append(f"{ready} ready" if ready else "none checked yet")
        tone = Tone.BAD if init_failed else Tone.WARN if unchecked or locked else Tone.OK
        self.tile_repos.set_value(
            str(init_failed + locked + unchecked),
            " · ".join(parts),
            tone if total else Tone.NEUTRAL,
        )

    def _update_match_state(self, *_args: object) -> None:
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        if not self.model.loaded():
            self.count_label.setText("Loading…")
        elif shown == total:
            self.count_label.setText(f"{total} host{'s' if total != 1 else ''}")
        else:
            self.count_label.setText(f"Showing {shown} of {total}")
        self.no_match.setVisible(bool(total) and shown == 0)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        # Loaded while hidden (started in the tray): size the columns now.
        if not self._sized and self.model.rowCount() and self.table.isVisible():
            self._size_columns()

    def _size_columns(self) -> None:
        # Only once the table is on screen: hidden, Qt measures every row
        # whatever the header's resize precision.
        self._sized = True
        if self._header_restored:
            return
        self.table.resizeColumnsToContents()
        header = self.table.horizontalHeader()
        for col in range(self.model.columnCount() - 1):
            width = header.sectionSize(col) + 16
            header.resizeSection(col, min(width, 260))

    # -- filters and settings --------------------------------------------------------

    def _restore_state(self) -> None:
        s = self.ctx.settings
        text = _as_str(s.value(KEY_TEXT, ""))
        status = _as_str(s.value(KEY_STATUS, "all")) or "all"
        try:
            tags = [str(t) for t in json.loads(_as_str(s.value(KEY_TAGS, "[]")) or "[]")]
        except ValueError:
            tags = []
        sort_column = _as_int(s.value(KEY_SORT_COLUMN, int(Column.NAME)), int(Column.NAME))
        if not 0 <= sort_column < len(Column):
            sort_column = int(Column.NAME)
        sort_order = (
            Qt.SortOrder.DescendingOrder
            if _as_int(s.value(KEY_SORT_ORDER, 0), 0) == 1
            else Qt.SortOrder.AscendingOrder
        )
        header_state = s.value(KEY_HEADER)
        header = self.table.horizontalHeader()
        self._header_restored = isinstance(header_state, QByteArray | bytes) and bool(
            header.restoreState(QByteArray(header_state))
        )

        self.filter_edit.setText(text)
        index = self.status_combo.findData(status)
        self.status_combo.setCurrentIndex(max(index, 0))
        self.tag_chips.set_selected(tags)
        self.proxy.set_text(text)
        self.proxy.set_status(str(self.status_combo.currentData()))
        self.proxy.set_tags(tags)
        self.table.sortByColumn(sort_column, sort_order)

        self.filter_edit.textChanged.connect(self._on_text_changed)
        self.status_combo.currentIndexChanged.connect(self._on_status_changed)
        self.tag_chips.selection_changed.connect(self._on_tags_changed)
        header.sortIndicatorChanged.connect(self._on_sort_changed)
        header.sectionResized.connect(self._save_header)
        header.sectionMoved.connect(self._save_header)

    def _on_text_changed(self, text: str) -> None:
        self.proxy.set_text(text)
        self.ctx.settings.setValue(KEY_TEXT, text)

    def _on_status_changed(self, _index: int) -> None:
        status = str(self.status_combo.currentData())
        self.proxy.set_status(status)
        self.ctx.settings.setValue(KEY_STATUS, status)

    def _on_tags_changed(self, tags: object) -> None:
        selected = sorted(str(t) for t in tags) if isinstance(tags, set | frozenset) else []
        self.proxy.set_tags(selected)
        self.ctx.settings.setValue(KEY_TAGS, json.dumps(selected))

    def _on_sort_changed(self, column: int, order: Qt.SortOrder) -> None:
        self.ctx.settings.setValue(KEY_SORT_COLUMN, int(column))
        self.ctx.settings.setValue(
            KEY_SORT_ORDER, 1 if order == Qt.SortOrder.DescendingOrder else 0
        )

    def _save_header(self, *_args: object) -> None:
        if self._sized:
            self.ctx.settings.setValue(KEY_HEADER, self.table.horizontalHeader().saveState())

    def _toggle_status(self, status: str) -> None:
        current = self.status_combo.currentData()
        target = "all" if current == status else status
        self.status_combo.setCurrentIndex(max(self.status_combo.findData(target), 0))

    # -- navigation --------------------------------------------------------------------

    def _open_index(self, index: QModelIndex) -> None:
        if not index.isValid():
            return
        value = index.siblingAtColumn(0).data(HOST_ID_ROLE)
        if value is not None:
            self.navigator.open_host(int(value))

    def _add_host(self) -> None:
        self.navigator.add_host()

    def _add_this_computer(self) -> None:
        launcher = self._this_computer
        if launcher is None:
            return
        dialog = self._this_computer_dialog
        if dialog is None or not shiboken6.isValid(dialog):
            dialog = AddThisComputerDialog(self.ctx, launcher, self.navigator, self.window())
            self._this_computer_dialog = dialog
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()

    def _context_menu(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        host_id = index.siblingAtColumn(0).data(HOST_ID_ROLE)
        name = index.siblingAtColumn(int(Column.NAME)).data()
        menu = QMenu(self)
        open_action = QAction("Open host", menu)
        open_action.triggered.connect(lambda: self.navigator.open_host(int(host_id)))
        copy_action = QAction("Copy host name", menu)
        copy_action.triggered.connect(lambda: QGuiApplication.clipboard().setText(str(name)))
        menu.addAction(open_action)
        menu.addAction(copy_action)
        view = self.model.host(int(host_id))
        target = self.model.update_for(view) if view is not None else None
        if target is not None and self.ctx.updates is not None:
            update_action = QAction(f"Update agent to {target}", menu)
            update_action.triggered.connect(lambda: self._update_host(int(host_id)))
            menu.addAction(update_action)
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.filter_edit and event.type() == QEvent.Type.KeyPress:
            assert isinstance(event, QKeyEvent)
            if event.key() == Qt.Key.Key_Escape and self.filter_edit.text():
                self.filter_edit.clear()
                return True
            if event.key() == Qt.Key.Key_Down and self.proxy.rowCount():
                self.table.setFocus(Qt.FocusReason.TabFocusReason)
                if not self.table.currentIndex().isValid():
                    self.table.selectRow(0)
                return True
        return super().eventFilter(watched, event)


def _as_str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # QSettings returns a list for comma-separated ini values
        return ",".join(str(v) for v in value)
    return str(value)


def _as_int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default
