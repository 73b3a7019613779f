"""Small pieces shared by the host view and its tabs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

import shiboken6
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QLabel, QMessageBox, QTableWidget, QWidget

from server_core.errors import NotFound, ServiceError
from server_core.views import HostView, ScheduleView, SourceGroupView
from ui_qt.context import UiContext
from ui_qt.navigator import Navigator
from ui_qt.tasks import AsyncRunner

T = TypeVar("T")

# Text colours readable on both light and dark palettes.
GREEN = "#2e9d4a"
RED = "#d64541"
AMBER = "#d9822b"
BLUE = "#2f7fd8"
GREY = "#8a8a8a"

JOB_STATUS_COLOURS = {
    "queued": GREY,
    "running": BLUE,
    "succeeded": GREEN,
    "succeeded_with_warnings": AMBER,
    "failed": RED,
    "cancelled": GREY,
}


def colour(name: str) -> QColor:
    return QColor(name)


def alive(obj: QObject) -> bool:
    """False once Qt has deleted the C++ side (a view closed mid-fetch)."""
    return bool(shiboken6.isValid(obj))


def guarded(owner: QObject, fn: Callable[[T], None]) -> Callable[[T], None]:
    """``fn`` as a task callback that does nothing once ``owner`` is deleted."""

    def call(value: T) -> None:
        if alive(owner):
            fn(value)

    return call


def error_text(exc: BaseException) -> str:
    """What to tell the operator: a service's own message, else the exception."""
    if isinstance(exc, ServiceError):
        return exc.message
    return str(exc) or type(exc).__name__


def show_error(parent: QWidget, title: str, exc: BaseException | str) -> QMessageBox:
    """A non-modal error box (a nested exec() loop would fight the asyncio loop)."""
    text = exc if isinstance(exc, str) else error_text(exc)
    return show_message(parent, title, text, QMessageBox.Icon.Warning)


def show_message(
    parent: QWidget, title: str, text: str, icon: QMessageBox.Icon = QMessageBox.Icon.Information
) -> QMessageBox:
    box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("hostViewMessage")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.show()
    return box


def confirm(
    parent: QWidget,
    title: str,
    text: str,
    ok_text: str,
    object_name: str,
    on_ok: Callable[[], None],
) -> QMessageBox:
    """A window-modal "<ok_text> / Cancel" question (``open()``: no nested loop);
    ``on_ok`` runs only on the first button."""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        title,
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        parent,
    )
    box.setObjectName(object_name)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    yes = box.button(QMessageBox.StandardButton.Yes)
    yes.setText(ok_text)
    box.buttonClicked.connect(lambda button: on_ok() if button is yes else None)
    box.open()
    return box


def confirm_delete(
    parent: QWidget, title: str, text: str, object_name: str, on_delete: Callable[[], None]
) -> QMessageBox:
    """A window-modal "Delete / Cancel" question; ``on_delete`` runs only on Delete."""
    return confirm(parent, title, text, "Delete", object_name, on_delete)


def record_table(
    columns: Sequence[str],
    object_name: str,
    *,
    row_height: int | None = None,
    single_selection: bool = True,
) -> QTableWidget:
    """A read-only table of records (channels, schedules, source groups…):
    whole rows are selected, no row numbers; ``row_height`` in pixels."""
    table = QTableWidget(0, len(columns))
    table.setObjectName(object_name)
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    if single_selection:
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().hide()
    if row_height is not None:
        table.verticalHeader().setDefaultSectionSize(row_height)
    return table


def error_label() -> QLabel:
    """An inline error line, hidden until it has something to say."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {RED};")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def set_error(label: QLabel, text: str | None) -> None:
    label.setText(text or "")
    label.setVisible(bool(text))


def snapshot_timestamp(text: str) -> float | None:
    """restic's RFC 3339 time (nanoseconds, offset or Z) as a POSIX timestamp."""
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def plan_key(groups: list[SourceGroupView], schedules: list[ScheduleView]) -> object:
    """What retention/schedule conflicts depend on. The check is costly (it
    samples cron intervals), so tabs ask for it again only when this changes,
    not on every heartbeat that reloads them."""
    return (
        [(g.id, g.name, sorted(g.retention.items(), key=str)) for g in groups],
        [(s.id, s.cron, s.enabled, tuple(s.source_group_ids)) for s in schedules],
    )


class SingleFlight(Generic[T]):
    """One fetch in flight at a time. Requests that arrive meanwhile fold
    into a single extra fetch once the current one is done, so a burst of
    change signals costs at most two queries."""

    def __init__(
        self,
        owner: QObject,
        runner: AsyncRunner,
        what: str,
        fetch: Callable[[], Coroutine[Any, Any, T]],
        on_done: Callable[[T], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._owner = owner
        self._runner = runner
        self._what = what
        self._fetch = fetch
        self._on_done = on_done
        self._on_error = on_error
        self._running = False
        self._again = False
        self.stopped = False
        self.fetches = 0

    @property
    def busy(self) -> bool:
        return self._running

    def request(self) -> None:
        if self.stopped:
            return
        if self._running:
            self._again = True
            return
        self._start()

    def stop(self) -> None:
        self.stopped = True
        self._again = False

    def _start(self) -> None:
        self._running = True
        self._again = False
        self.fetches += 1
        self._runner.run(self._fetch(), what=self._what, on_done=self._done, on_error=self._failed)

    def _done(self, value: T) -> None:
        self._running = False
        if self.stopped or not alive(self._owner):
            return
        self._on_done(value)
        if self._again:
            self._start()

    def _failed(self, exc: Exception) -> None:
        self._running = False
        if self.stopped or not alive(self._owner):
            return
        self._on_error(exc)
        if self._again:
            self._start()


class HostTab(QWidget):
    """Base of the host tabs: what they share and how they report that the
    host vanished under them (a fetch answered NotFound)."""

    host_missing = Signal()

    def __init__(self, ctx: UiContext, navigator: Navigator, host_id: int) -> None:
        super().__init__()
        self.ctx = ctx
        self.navigator = navigator
        self.host_id = host_id
        self.host: HostView | None = None

    def reload(self) -> None:
        """Fetch what the tab shows again."""

    def set_host(self, host: HostView) -> None:
        """The header read the host again (name, status, …)."""
        self.host = host

    def tick(self) -> None:
        """Called every few seconds to refresh relative times."""

    def host_gone(self) -> None:
        """The host was deleted: stop fetching."""

    def fetch_failed(self, what: str, exc: Exception, label: QLabel) -> None:
        if isinstance(exc, NotFound):
            self.host_missing.emit()
            return
        set_error(label, f"Could not load {what}: {error_text(exc)}")
