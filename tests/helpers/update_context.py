"""A UiContext that carries a given UpdateService (e.g. one with a stand-in
agent build directory) instead of the control plane's."""

from __future__ import annotations

import dataclasses

from server_core.services.updates import UpdateService
from ui_qt.context import UiContext


def with_updates(ui: UiContext, updates: UpdateService) -> UiContext:
    return dataclasses.replace(ui, updates=updates)
