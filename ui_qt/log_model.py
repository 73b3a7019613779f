"""A job log as a virtualised model and view that stay smooth at a million lines.

Lines are kept column-wise in flat buffers instead of one Python object per
line: ``array`` columns for seq and timestamp, one byte per line for the
stream, and the UTF-8 text of every line in one ``bytearray`` with an offset
column. A million 60-character lines cost about 85 MB this way (a list of
tuples of ``str`` would cost more than twice that), and the view only ever
asks for the few rows on screen.

Rows are appended in batches: one ``beginInsertRows``/``endInsertRows`` per
call, so the view lays itself out once per batch, not once per line. Callers
keep batches at or below ``MAX_BATCH`` lines so a single append never holds
the shared event loop for long.

The view is a one-column ``QTableView`` with fixed-height rows rather than a
``QListView``: measured here with PySide6 6.12, a ``QListView`` (even with
uniform item sizes) re-lays out every row after each insert and calls the
Python ``rowCount`` twice per row while doing it (~3 µs per row: 3 s per
batch at a million lines), whereas a table's fixed-size header sections cost
nothing per row — 10k-line batches take ~12 ms whatever the log's length.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, islice
from typing import Any, Protocol

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import (
    QAction,
    QBrush,
    QColor,
    QFont,
    QFontDatabase,
    QKeySequence,
    QPainter,
    QPalette,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHeaderView,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QWidget,
)

# The most lines one append should carry (the loop is held while it runs).
MAX_BATCH = 10_000
# Widest line the view makes room for (longer lines are elided; the tooltip
# and a saved log have them in full).
MAX_DISPLAY_CHARS = 1_000
TIME_PREFIX_CHARS = len("HH:MM:SS  ")
STREAMS = ("stdout", "stderr", "agent", "hook")

Index = QModelIndex | QPersistentModelIndex


class LogLineLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def stream(self) -> str: ...
    @property
    def text(self) -> str: ...


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Base).lightness() < 128


def stream_colours(palette: QPalette) -> dict[str, QColor]:
    """Foreground per stream for this palette (stdout uses the palette's text)."""
    if is_dark(palette):
        return {
            "stderr": QColor("#ffb74d"),  # amber
            "agent": QColor("#64b5f6"),  # blue
            "hook": QColor("#ce93d8"),  # violet
        }
    return {
        "stderr": QColor("#b35c00"),
        "agent": QColor("#1565c0"),
        "hook": QColor("#7b1fa2"),
    }


def _display_text(text: str) -> str:
    if "\t" in text:
        text = text.expandtabs(8)
    if "\n" in text or "\r" in text:
        text = text.replace("\r\n", " ⏎ ").replace("\n", " ⏎ ").replace("\r", "")
    return text


class LogModel(QAbstractListModel):
    """One row per log line; display text is ``HH:MM:SS  text``."""

    SeqRole = Qt.ItemDataRole.UserRole + 1
    TimestampRole = Qt.ItemDataRole.UserRole + 2
    StreamRole = Qt.ItemDataRole.UserRole + 3
    TextRole = Qt.ItemDataRole.UserRole + 4

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._seq = array("q")
        self._ts = array("d")
        self._stream = bytearray()
        self._offsets = array("q", [0])  # line i is _buf[_offsets[i]:_offsets[i + 1]]
        self._buf = bytearray()
        self._stream_names: list[str] = list(STREAMS)
        self._stream_codes: dict[str, int] = {s: i for i, s in enumerate(STREAMS)}
        self._max_chars = 0
        self._brushes: dict[int, QBrush] = {}
        self._agent_font = QFont()
        self._agent_font.setItalic(True)
        app = QApplication.instance()
        self.set_palette(app.palette() if isinstance(app, QApplication) else QPalette())

    # -- writing -------------------------------------------------------------

    def append_lines(self, lines: Sequence[LogLineLike]) -> int:
        """Append a batch (one rowsInserted for the whole batch); returns its size."""
        if not lines:
            return 0
        codes = self._stream_codes
        streams = bytearray()
        for line in lines:
            code = codes.get(line.stream)
            if code is None:
                code = self._new_stream(line.stream)
            streams.append(code)
        encoded = [line.text.encode("utf-8", "surrogatepass") for line in lines]
        base = self._offsets[-1]
        first = len(self._seq)
        self.beginInsertRows(QModelIndex(), first, first + len(lines) - 1)
        self._seq.extend(line.seq for line in lines)
        self._ts.extend(line.ts for line in lines)
        self._stream += streams
        self._buf += b"".join(encoded)
        # accumulate() starts with ``base`` itself, which is already the last offset.
        self._offsets.extend(islice(accumulate(map(len, encoded), initial=base), 1, None))
        widest = max(len(line.text) for line in lines)
        self._max_chars = max(self._max_chars, min(widest, MAX_DISPLAY_CHARS))
        self.endInsertRows()
        return len(lines)

    def _new_stream(self, name: str) -> int:
        if len(self._stream_names) >= 255:
            return 0
        self._stream_names.append(name)
        self._stream_codes[name] = len(self._stream_names) - 1
        return self._stream_codes[name]

    def clear(self) -> None:
        self.beginResetModel()
        self._seq = array("q")
        self._ts = array("d")
        self._stream = bytearray()
        self._offsets = array("q", [0])
        self._buf = bytearray()
        self._max_chars = 0
        self.endResetModel()

    def set_palette(self, palette: QPalette) -> None:
        """Pick stream colours that read well on this palette (light or dark)."""
        colours = stream_colours(palette)
        self._brushes = {
            self._stream_codes[name]: QBrush(colour) for name, colour in colours.items()
        }
        if self._seq:
            self.dataChanged.emit(
                self.index(0), self.index(len(self._seq) - 1), [Qt.ItemDataRole.ForegroundRole]
            )

    # -- reading -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq[-1] if self._seq else 0

    @property
    def max_chars(self) -> int:
        """Characters in the widest line so far (capped at MAX_DISPLAY_CHARS)."""
        return self._max_chars

    def text(self, row: int) -> str:
        return self._buf[self._offsets[row] : self._offsets[row + 1]].decode(
            "utf-8", "surrogatepass"
        )

    def stream(self, row: int) -> str:
        return self._stream_names[self._stream[row]]

    def foreground(self, row: int) -> QBrush | None:
        """The stream colour of a row; None for stdout (the palette's text)."""
        return self._brushes.get(self._stream[row])

    def line(self, row: int) -> tuple[int, float, str, str]:
        """(seq, ts, stream, text) of a row."""
        return self._seq[row], self._ts[row], self.stream(row), self.text(row)

    def lines(
        self, first: int = 0, last: int | None = None
    ) -> Iterable[tuple[int, float, str, str]]:
        end = len(self._seq) if last is None else last + 1
        for row in range(first, end):
            yield self.line(row)

    def memory_bytes(self) -> int:
        """What the line storage takes (buffers only, without allocator slack)."""
        return (
            self._seq.itemsize * len(self._seq)
            + self._ts.itemsize * len(self._ts)
            + len(self._stream)
            + self._offsets.itemsize * len(self._offsets)
            + len(self._buf)
        )

    def rowCount(self, parent: Index | None = None) -> int:
        if parent is not None and parent.isValid():
            return 0
        return len(self._seq)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = index.row()
        if not index.isValid() or row >= len(self._seq):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            stamp = time.strftime("%H:%M:%S", time.localtime(self._ts[row]))
            return f"{stamp}  {_display_text(self.text(row))}"
        if role == Qt.ItemDataRole.ForegroundRole:
            return self._brushes.get(self._stream[row])
        if role == Qt.ItemDataRole.FontRole:
            return self._agent_font if self._stream[row] == 2 else None
        if role == Qt.ItemDataRole.ToolTipRole:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._ts[row]))
            text = self.text(row)
            if len(text) > 4000:
                text = text[:4000] + "…"
            return f"{stamp} · {self.stream(row)} · line {self._seq[row]}\n{text}"
        if role == self.SeqRole:
            return self._seq[row]
        if role == self.TimestampRole:
            return self._ts[row]
        if role == self.StreamRole:
            return self.stream(row)
        if role == self.TextRole:
            return self.text(row)
        return None


class LogDelegate(QStyledItemDelegate):
    """Paints a row with a coloured mark in the left gutter for stderr, agent
    and hook lines, so they stand apart without relying on text colour alone."""

    GUTTER = 6

    def __init__(self, model: LogModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = model

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        rect = option.rect
        shifted = QStyleOptionViewItem(option)
        shifted.rect = rect.adjusted(self.GUTTER, 0, 0, 0)
        super().paint(painter, shifted, index)
        # Asked of the model directly: index.data() of a role with no value
        # hands None back through PySide6 6.12 with a missing reference.
        brush = self._model.foreground(index.row())
        if brush is not None:
            painter.fillRect(rect.x() + 1, rect.y() + 2, 3, rect.height() - 4, brush)


class LogView(QTableView):
    """The log on screen: monospace, fixed-height rows, one column as wide as
    the widest line, and auto-scroll ("follow") that stops when the operator
    scrolls up and resumes when they come back to the bottom."""

    following_changed = Signal(bool)
    # Copying more than this many selected lines points at Save log instead.
    COPY_LIMIT = 100_000

    def __init__(self, model: LogModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = model
        self._following = True
        self._scrolling = False  # our own scrollbar moves, not the operator's
        self._fitted_chars = -1
        self.setModel(model)
        self.setItemDelegate(LogDelegate(model, self))
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setCornerButtonEnabled(False)
        self.setTabKeyNavigation(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerItem)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.horizontalHeader().hide()
        self.horizontalHeader().setStretchLastSection(False)
        rows = self.verticalHeader()
        rows.hide()
        rows.setMinimumSectionSize(1)
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self._apply_metrics()

        copy = QAction("Copy", self)
        copy.setShortcut(QKeySequence(QKeySequence.StandardKey.Copy))
        copy.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        copy.triggered.connect(self.copy_selection)
        select_all = QAction("Select all", self)
        select_all.setShortcut(QKeySequence(QKeySequence.StandardKey.SelectAll))
        select_all.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        select_all.triggered.connect(self.selectAll)
        self.addAction(copy)
        self.addAction(select_all)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)

        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range)
        model.rowsInserted.connect(self._on_rows)
        model.modelReset.connect(self._on_reset)

    # -- follow ----------------------------------------------------------------

    @property
    def following(self) -> bool:
        return self._following

    def set_following(self, follow: bool) -> None:
        if follow:
            self._scroll_to_end()
        self._set_following(follow)

    def at_bottom(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum()

    def _set_following(self, follow: bool) -> None:
        if follow != self._following:
            self._following = follow
            self.following_changed.emit(follow)

    def _on_scrolled(self, value: int) -> None:
        if not self._scrolling:
            self._set_following(value >= self.verticalScrollBar().maximum())

    def _on_range(self, _minimum: int, maximum: int) -> None:
        if self._following and self.verticalScrollBar().value() != maximum:
            self._scroll_to_end()

    def _scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        self._scrolling = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._scrolling = False

    # -- geometry --------------------------------------------------------------

    def _apply_metrics(self) -> None:
        fm = self.fontMetrics()
        self.verticalHeader().setDefaultSectionSize(fm.height() + 4)
        self._fitted_chars = -1
        self._fit_column()

    def _fit_column(self) -> None:
        """One column as wide as the widest line, or the viewport if wider (so
        no horizontal scrollbar shows for lines that fit)."""
        chars = self._model.max_chars
        self._fitted_chars = chars
        fm = self.fontMetrics()
        # Measured on a whole run of characters: advances are fractional.
        needed = LogDelegate.GUTTER + fm.horizontalAdvance("M" * (TIME_PREFIX_CHARS + chars + 2))
        width = max(needed, self.viewport().width())
        if self.columnWidth(0) != width:
            self.setColumnWidth(0, width)

    def _on_rows(self, *_args: object) -> None:
        if self._model.max_chars != self._fitted_chars:
            self._fit_column()

    def _on_reset(self) -> None:
        self._fitted_chars = -1
        self._fit_column()
        self._set_following(True)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_column()

    def viewportEvent(self, event: QEvent) -> bool:
        handled = super().viewportEvent(event)
        if event.type() == QEvent.Type.Resize:
            # The viewport narrows when the vertical scrollbar appears.
            self._fit_column()
        return handled

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._apply_metrics()
        elif event.type() == QEvent.Type.PaletteChange:
            self._model.set_palette(self.palette())

    # -- copy ----------------------------------------------------------------

    def selected_text(self) -> str:
        """The selected lines as shown (time and text), in order, capped at COPY_LIMIT."""
        selection = self.selectionModel().selection()
        ranges = (selection.at(i) for i in range(selection.size()))
        rows = sorted((rng.top(), rng.bottom()) for rng in ranges)
        out: list[str] = []
        for top, bottom in rows:
            for row in range(top, min(bottom, top + self.COPY_LIMIT - len(out) - 1) + 1):
                _seq, ts, _stream, text = self._model.line(row)
                out.append(f"{time.strftime('%H:%M:%S', time.localtime(ts))}  {text}")
            if len(out) >= self.COPY_LIMIT:
                break
        return "\n".join(out)

    def copy_selection(self) -> None:
        text = self.selected_text()
        if text:
            QApplication.clipboard().setText(text)
