"""A UiContext that carries an UpdateService, whether or not the app's UiContext
has its ``updates`` field yet (the lead wires it; until then a subclass adds it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from server_core.services.updates import UpdateService
from ui_qt.context import UiContext


def with_updates(ui: UiContext, updates: UpdateService) -> UiContext:
    if "updates" in {f.name for f in dataclasses.fields(UiContext)}:
        return dataclasses.replace(ui, updates=updates)  # type: ignore[call-arg]

    @dataclasses.dataclass(frozen=True)
    class _WithUpdates(UiContext):
        updates: UpdateService | None = None

    fields: dict[str, Any] = {f.name: getattr(ui, f.name) for f in dataclasses.fields(UiContext)}
    return _WithUpdates(**fields, updates=updates)
