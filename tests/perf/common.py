"""What the UI benchmarks share: frame timing, slow-event attribution, machine
facts (the loop-lag probe and percentiles are benchlib's).

Loop lag is how late a 10 ms ``asyncio.sleep`` wakes up on the shared qasync
loop: anything that holds the loop (a slot, a paint, a callback, the GIL held
by another thread) shows up as lateness. A frame is one ``UpdateRequest``
delivered to a top-level window — Qt's repaint of every dirty widget in it
plus the flush to the (offscreen) backing store. Slow events name what held
the loop (see ``TimedApplication``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import PySide6
import qasync
from PySide6.QtCore import QEvent, QObject, qVersion
from PySide6.QtWidgets import QApplication

from tests.perf import benchlib
from tests.perf.benchlib import LagProbe, summary

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "perf" / "results"


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare two result files (CPU model and
    cores, load at start) plus the Qt in use."""
    return {
        **benchlib.machine(),
        "pyside6": PySide6.__version__,
        "qt": qVersion(),
        "qpa_platform": os.environ.get("QT_QPA_PLATFORM", ""),
    }


class TimedApplication(QApplication):
    """A QApplication that times every top-level event dispatch.

    Frames: every ``UpdateRequest`` (a window's repaint and flush). Slow
    events: any dispatch at or over ``slow_ms``, with what it ran — an
    asyncio callback (qasync turns each one into a Qt timer event: the
    coroutine or callback is named), a socket read, a Qt timer's slots, a
    repaint — so a loop stall can be pinned on its cause. Nested dispatches
    (paint events inside a repaint, signals inside a slot) count towards
    their outermost event only. The override puts one Python call in front
    of every event; ``--no-frame-timer`` measures without it."""

    def __init__(self, argv: list[str], slow_ms: float = 20.0, span_ms: float = 2.0) -> None:
        super().__init__(argv)
        # (end time, duration ms, paint ms per widget class painted in it)
        self.frames: list[tuple[float, float, dict[str, float]]] = []
        # Every dispatch of at least span_ms: (start time, ms, what).
        self.spans: list[tuple[float, float, str]] = []
        self.slow_ms = slow_ms
        self.span_ms = span_ms
        self._depth = 0
        self._timer_type = QEvent.Type.Timer
        self._update_type = QEvent.Type.UpdateRequest
        self._paint_type = QEvent.Type.Paint
        self._paints: dict[str, float] = {}  # widget class -> paint ms, in this dispatch

    def notify(self, receiver: QObject, event: QEvent) -> bool:
        if self._depth:
            if self._depth == 1 and event.type() == self._paint_type:
                return self._timed_paint(receiver, event)
            return super().notify(receiver, event)
        kind = event.type()
        handle = None
        if kind == self._timer_type and isinstance(receiver, qasync._SimpleTimer):
            handle = receiver._SimpleTimer__callbacks.get(event.timerId())  # type: ignore[attr-defined]
        self._depth = 1
        start = time.monotonic()
        try:
            return super().notify(receiver, event)
        finally:
            end = time.monotonic()
            self._depth = 0
            ms = (end - start) * 1000
            paints, self._paints = self._paints, {}
            if kind == self._update_type:
                self.frames.append((end, ms, paints))
            if ms >= self.span_ms:
                what = describe_event(receiver, kind, handle)
                if paints:
                    # Where a slow repaint went: the widgets that took >= 1 ms.
                    parts = sorted(paints.items(), key=lambda kv: kv[1], reverse=True)
                    what += " [" + ", ".join(f"{w} {t:.0f} ms" for w, t in parts if t >= 1) + "]"
                self.spans.append((start, ms, what))

    def _timed_paint(self, receiver: QObject, event: QEvent) -> bool:
        self._depth = 2
        start = time.monotonic()
        try:
            return super().notify(receiver, event)
        finally:
            ms = (time.monotonic() - start) * 1000
            self._depth = 1
            parent = receiver.parent()
            name = type(receiver).__name__
            if name == "QWidget" and parent is not None:  # a scroll area's viewport
                name = f"{type(parent).__name__} viewport"
            self._paints[name] = self._paints.get(name, 0.0) + ms

    def frame_times(self, start: float | None = None, end: float | None = None) -> list[float]:
        return [
            ms
            for t, ms, _paints in self.frames
            if (start is None or t >= start) and (end is None or t <= end)
        ]

    def first_frame_painting(self, widget: str, after: float) -> tuple[float, float] | None:
        """(end time, ms) of the first frame after ``after`` that painted ``widget``."""
        for t, ms, paints in self.frames:
            if t > after and widget in paints:
                return t, ms
        return None

    def slow_events(
        self, start: float | None = None, end: float | None = None, top: int = 12
    ) -> dict[str, Any]:
        """The slowest dispatches in a window and the totals per cause."""
        chosen = [
            e
            for e in self.spans
            if e[1] >= self.slow_ms
            and (start is None or e[0] >= start)
            and (end is None or e[0] <= end)
        ]
        by_cause: dict[str, list[float]] = {}
        for _t, ms, what in chosen:
            by_cause.setdefault(what, []).append(ms)
        causes = sorted(by_cause.items(), key=lambda kv: sum(kv[1]), reverse=True)
        t0 = start or 0.0
        return {
            "threshold_ms": self.slow_ms,
            "slowest": [
                {"at_s": round(t - t0, 3), "ms": round(ms, 1), "what": what}
                for t, ms, what in sorted(chosen, key=lambda e: e[1], reverse=True)[:top]
            ],
            "by_cause": [
                {
                    "what": what,
                    "count": len(times),
                    "total_ms": round(sum(times), 1),
                    "max_ms": round(max(times), 1),
                }
                for what, times in causes[:top]
            ],
        }

    def explain_stall(self, end: float, lag_ms: float, interval_s: float = 0.01) -> dict[str, Any]:
        """What the loop ran while a probe was late: dispatches of >= span_ms
        overlapping the window, summed per cause. ``unexplained_ms`` is the
        part of the window no such dispatch covers — many tiny callbacks,
        or the main thread waiting for the GIL or a CPU."""
        start = end - interval_s - lag_ms / 1000
        by_cause: dict[str, float] = {}
        covered = 0.0
        for t, ms, what in self.spans:
            overlap = min(end, t + ms / 1000) - max(start, t)
            if overlap > 0:
                by_cause[what] = by_cause.get(what, 0.0) + overlap * 1000
                covered += overlap * 1000
        window_ms = (end - start) * 1000
        top = sorted(by_cause.items(), key=lambda kv: kv[1], reverse=True)[:4]
        return {
            "window_ms": round(window_ms, 1),
            "unexplained_ms": round(max(0.0, window_ms - covered), 1),
            "causes": [{"what": what, "ms": round(ms, 1)} for what, ms in top],
        }


class GcWatch:
    """Times every garbage collection (the app runs them from a timer on the
    GUI thread, so each one holds the loop for as long as it takes)."""

    def __init__(self) -> None:
        self.collections: list[tuple[float, int, float]] = []  # (end time, generation, ms)
        self._start = 0.0

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.monotonic()
        else:
            end = time.monotonic()
            self.collections.append((end, info["generation"], (end - self._start) * 1000))

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for generation in (0, 1, 2):
            times = [
                ms
                for t, g, ms in self.collections
                if g == generation and (start is None or t >= start) and (end is None or t <= end)
            ]
            out[f"gen{generation}"] = {
                "count": len(times),
                "total_ms": round(sum(times), 1),
                "max_ms": round(max(times), 1) if times else 0.0,
            }
        return out


def explain_stalls(app: QApplication, probe: LagProbe, t0: float, count: int = 5) -> Any:
    if not isinstance(app, TimedApplication):
        return probe.worst(count)
    out = []
    for stall in probe.worst(count):
        out.append(
            {
                "at_s": round(stall["at"] - t0, 3),
                "lag_ms": stall["lag_ms"],
                **app.explain_stall(stall["at"], stall["lag_ms"], probe.interval_s),
            }
        )
    return out


def _qualname(fn: Any) -> str:
    fn = getattr(fn, "__func__", fn)
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _innermost(coro: Any) -> str:
    """The chain of coroutines a task is suspended in, innermost last."""
    names: list[str] = []
    while coro is not None and len(names) < 6:
        names.append(getattr(coro, "__qualname__", type(coro).__name__))
        coro = getattr(coro, "cr_await", None)
    return " > ".join(names)


def describe_handle(handle: Any) -> str:
    callback = getattr(handle, "_callback", None)
    args: tuple[Any, ...] = getattr(handle, "_args", ()) or ()
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return f"task {_innermost(owner.get_coro())}"
    name = _qualname(callback)
    if name.endswith("__notifier_cb_wrapper") and len(args) >= 4:
        real = args[3]  # (notifiers, notifier, fd, callback, args)
        transport = getattr(real, "__self__", None)
        protocol = getattr(transport, "_protocol", None)
        app_protocol = getattr(protocol, "_app_protocol", None)
        what = type(app_protocol or protocol).__name__ if protocol is not None else ""
        return f"socket ready: {_qualname(real)}" + (f" ({what})" if what else "")
    closure = getattr(getattr(callback, "__func__", callback), "__closure__", None) or ()
    inner = []
    for cell in closure:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value) and hasattr(value, "__qualname__"):
            inner.append(_qualname(value))
    return f"callback {name}" + (f" [{', '.join(inner)}]" if inner else "")


def describe_event(receiver: QObject, kind: QEvent.Type, handle: Any) -> str:
    if handle is not None:
        return describe_handle(handle)
    cls = type(receiver).__name__
    if kind == QEvent.Type.UpdateRequest:
        return f"repaint {cls}"
    parent = receiver.parent() if kind == QEvent.Type.Timer else None
    if parent is not None:
        return f"{kind.name} {cls} of {type(parent).__name__}"
    return f"{kind.name} {cls}"


def application(frame_timer: bool) -> QApplication:
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    # qasync's loop.time() is time.monotonic(): frames and lag share one clock.
    return TimedApplication(sys.argv[:1]) if frame_timer else QApplication(sys.argv[:1])


def frames_of(app: QApplication, start: float | None = None, end: float | None = None) -> Any:
    if isinstance(app, TimedApplication):
        return summary(app.frame_times(start, end))
    return "not measured (--no-frame-timer)"


def slow_events_of(app: QApplication, start: float | None = None, end: float | None = None) -> Any:
    if isinstance(app, TimedApplication):
        return app.slow_events(start, end)
    return "not measured (--no-frame-timer)"


async def until(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02
) -> float:
    """Wait on the loop until ``predicate()``; returns the loop time it became true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)
    return loop.time()
