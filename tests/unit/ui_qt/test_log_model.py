"""LogModel and LogView: batching, storage, display roles, follow, a million lines."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

from server_core.views import LogLineView
from ui_qt.log_model import MAX_DISPLAY_CHARS, LogModel, LogView, stream_colours

T0 = 1_700_000_000.0


def lines(first: int, count: int, stream: str = "stdout", text: str = "line") -> list[LogLineView]:
    return [
        LogLineView(seq, T0 + seq, stream, f"{text} {seq}") for seq in range(first, first + count)
    ]


def hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


@pytest.fixture
def model(qapp: QApplication) -> Iterator[LogModel]:
    model = LogModel()
    yield model
    # Deleted here, on the GUI thread: left to the garbage collector, a Qt
    # object can be freed later from whichever thread runs the collection.
    shiboken6.delete(model)


def data(model: LogModel, row: int, role: int) -> Any:
    # Called on the model itself: QModelIndex.data() of an empty role returns
    # None through PySide6 6.12 without a reference (see _pin_singletons).
    return model.data(model.index(row), role)


def test_one_rows_inserted_per_append(model: LogModel) -> None:
    inserted: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _parent, first, last: inserted.append((first, last)))
    assert model.append_lines(lines(1, 250)) == 250
    assert model.append_lines(lines(251, 1)) == 1
    assert model.append_lines([]) == 0
    assert model.append_lines(lines(252, 4000)) == 4000
    assert inserted == [(0, 249), (250, 250), (251, 4250)]
    assert model.rowCount() == 4251
    assert model.rowCount(model.index(3)) == 0  # a list: rows have no children
    assert model.last_seq == 4251


def test_lines_round_trip_exactly(model: LogModel) -> None:
    texts = ["plain", "", "ünïcødé ✓ 🗄", "tab\there", "two\nlines", "x" * 5000, "\udcff lone"]
    batch = [LogLineView(i + 1, T0 + i * 0.5, "stdout", t) for i, t in enumerate(texts)]
    batch.append(LogLineView(99, T0 + 9, "weird-stream", "from an unknown stream"))
    model.append_lines(batch[:3])
    model.append_lines(batch[3:])
    assert [model.line(r) for r in range(model.rowCount())] == [
        (b.seq, b.ts, b.stream, b.text) for b in batch
    ]
    assert list(model.lines(2, 3)) == [model.line(2), model.line(3)]
    assert model.max_chars == MAX_DISPLAY_CHARS  # capped for the view's width
    assert model.memory_bytes() > sum(len(t) for t in texts)


def test_display_is_time_then_text(model: LogModel) -> None:
    model.append_lines(
        [
            LogLineView(1, T0, "stdout", "scan finished"),
            LogLineView(2, T0 + 61, "stdout", "a\tb"),
            LogLineView(3, T0 + 62, "stdout", "one\ntwo"),
        ]
    )
    display = Qt.ItemDataRole.DisplayRole
    assert data(model, 0, display) == f"{hms(T0)}  scan finished"
    assert data(model, 1, display) == f"{hms(T0 + 61)}  a       b"
    assert data(model, 2, display) == f"{hms(T0 + 62)}  one ⏎ two"
    assert data(model, 0, LogModel.SeqRole) == 1
    assert data(model, 1, LogModel.TextRole) == "a\tb"
    assert data(model, 2, LogModel.StreamRole) == "stdout"
    assert data(model, 2, LogModel.TimestampRole) == T0 + 62
    tip = data(model, 0, Qt.ItemDataRole.ToolTipRole)
    assert "stdout" in tip and "line 1" in tip and "scan finished" in tip
    assert model.data(QModelIndex(), display) is None


def test_streams_are_told_apart(model: LogModel) -> None:
    model.append_lines(
        [
            LogLineView(1, T0, "stdout", "out"),
            LogLineView(2, T0, "stderr", "err"),
            LogLineView(3, T0, "agent", "agent says"),
            LogLineView(4, T0, "hook", "hook(pre): hello"),
        ]
    )
    fg = Qt.ItemDataRole.ForegroundRole
    assert data(model, 0, fg) is None  # the palette's own text colour
    brushes = [data(model, row, fg) for row in (1, 2, 3)]
    assert all(isinstance(b, QBrush) for b in brushes)
    assert len({b.color().name() for b in brushes}) == 3
    assert model.foreground(1) is not None and model.foreground(0) is None
    font = data(model, 2, Qt.ItemDataRole.FontRole)
    assert isinstance(font, QFont) and font.italic()
    assert data(model, 0, Qt.ItemDataRole.FontRole) is None


def test_colours_follow_the_palette(model: LogModel) -> None:
    light, dark = QPalette(), QPalette()
    light.setColor(QPalette.ColorRole.Base, QColor("#ffffff"))
    dark.setColor(QPalette.ColorRole.Base, QColor("#1e1e1e"))
    assert stream_colours(light)["stderr"] != stream_colours(dark)["stderr"]
    model.append_lines([LogLineView(1, T0, "stderr", "err")])
    changed: list[int] = []
    model.dataChanged.connect(lambda *_: changed.append(1))
    model.set_palette(dark)
    assert model.foreground(0).color() == stream_colours(dark)["stderr"]
    model.set_palette(light)
    assert model.foreground(0).color() == stream_colours(light)["stderr"]
    assert len(changed) == 2  # the view repaints with the new colours


def test_clear_resets(model: LogModel) -> None:
    model.append_lines(lines(1, 10))
    resets: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.clear()
    assert resets == [1]
    assert model.rowCount() == 0 and model.last_seq == 0 and model.max_chars == 0
    model.append_lines(lines(5, 2))
    assert model.line(0) == (5, T0 + 5, "stdout", "line 5")


@contextmanager
def shown_view(model: LogModel) -> Iterator[LogView]:
    view = LogView(model)
    view.resize(700, 300)
    view.show()
    QApplication.processEvents()
    try:
        yield view
    finally:
        view.close()
        shiboken6.delete(view)  # now, on this thread (see the model fixture)


def settle() -> None:
    for _ in range(3):
        QApplication.processEvents()


def test_view_follows_until_scrolled_up_and_again_at_the_bottom(model: LogModel) -> None:
    with shown_view(model) as view:
        bar = view.verticalScrollBar()
        model.append_lines(lines(1, 500))
        settle()
        assert bar.maximum() > 0
        assert view.following and bar.value() == bar.maximum()

        bar.setValue(10)  # the operator scrolls up
        assert not view.following
        model.append_lines(lines(501, 500))
        settle()
        assert bar.value() == 10 and bar.maximum() > 500

        bar.setValue(bar.maximum())  # back at the bottom: follow again
        assert view.following
        model.append_lines(lines(1001, 500))
        settle()
        assert bar.value() == bar.maximum()
        assert view.indexAt(view.viewport().rect().bottomLeft()).row() >= 1490

        seen: list[bool] = []
        view.following_changed.connect(seen.append)
        bar.setValue(0)
        view.set_following(True)
        assert seen == [False, True] and bar.value() == bar.maximum()


def test_column_grows_with_the_widest_line(model: LogModel) -> None:
    with shown_view(model) as view:
        model.append_lines(lines(1, 5))
        settle()
        narrow = view.columnWidth(0)
        assert narrow >= view.viewport().width()
        model.append_lines([LogLineView(6, T0, "stdout", "w" * 400)])
        settle()
        assert view.columnWidth(0) > narrow
        shown = f"{hms(T0)}  " + "w" * 400
        assert view.columnWidth(0) >= view.fontMetrics().horizontalAdvance(shown) + 6
        assert view.horizontalScrollBar().maximum() > 0


def test_copy_selected_lines(model: LogModel) -> None:
    with shown_view(model) as view:
        model.append_lines(lines(1, 20))
        select = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        view.selectionModel().select(model.index(12), select)
        view.selectionModel().select(model.index(3), select)
        assert view.selected_text() == f"{hms(T0 + 4)}  line 4\n{hms(T0 + 13)}  line 13"
        view.copy_selection()
        assert QApplication.clipboard().text() == view.selected_text()


def test_a_million_lines_in_chunks(model: LogModel) -> None:
    """Correctness at 10⁶ lines appended to a visible view in 10k chunks.
    The worst chunk time is printed; timing is judged in tests/perf."""
    inserted: list[int] = []
    model.rowsInserted.connect(lambda _p, first, last: inserted.append(last - first + 1))
    streams = ("stdout", "stdout", "stderr", "agent")
    chunk, total = 10_000, 1_000_000
    times: list[float] = []
    with shown_view(model) as view:
        for first in range(1, total + 1, chunk):
            batch = [
                LogLineView(s, T0 + s / 100, streams[s % 4], f"/srv/data/file-{s:07d}.dat")
                for s in range(first, first + chunk)
            ]
            start = time.perf_counter()
            model.append_lines(batch)
            QApplication.processEvents()  # layout and paint, as the loop would
            times.append(time.perf_counter() - start)
        assert inserted == [chunk] * (total // chunk)
        assert model.rowCount() == total and model.last_seq == total
        for row in (0, 1, 499_999, 999_999):
            seq = row + 1
            assert model.line(row) == (
                seq,
                T0 + seq / 100,
                streams[seq % 4],
                f"/srv/data/file-{seq:07d}.dat",
            )
        assert view.following and view.at_bottom()
    print(
        f"\n10^6 lines in {len(times)} chunks of {chunk}: worst {max(times) * 1e3:.1f} ms,"
        f" median {statistics.median(times) * 1e3:.1f} ms;"
        f" storage {model.memory_bytes() / 2**20:.1f} MiB"
    )
