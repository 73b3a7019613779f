"""Hooks for the whole suite."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Once Qt is loaded, automatic collection is off during each test and the
    # test's garbage is collected here, on the GUI thread, after its
    # teardown. Left automatic, a collection can start on whatever thread
    # allocates (the store thread, a live control plane's thread in the fuzz
    # tests) and free Qt objects there; Qt then fires a timer at a freed
    # object and the process dies a few tests later. The app does the same
    # (app/gui.py, MainThreadCollector).
    qt_loaded = "PySide6.QtCore" in sys.modules
    if qt_loaded:
        gc.disable()
    try:
        yield
    finally:
        if qt_loaded:
            gc.collect()
            gc.enable()
