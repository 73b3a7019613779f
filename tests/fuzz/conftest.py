"""Shared set-up of the hostile-input tests.

``make test`` runs them with a small budget; ``make fuzz`` sets FUZZ_SCALE
(how many times more examples) and FUZZ_RESULTS (a directory for the figures
RELIABILITY.md quotes).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.live import LivePlane

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
RESULTS_DIR = os.environ.get("FUZZ_RESULTS")


def budget(examples: int, **extra: Any) -> settings:
    """Hypothesis settings for ``examples`` in `make test`, scaled for `make fuzz`."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
        **extra,
    )


class Figures:
    """Counters a test adds to; written as JSON when FUZZ_RESULTS is set."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter[str]] = {}
        self.values: dict[str, Any] = {}

    def count(self, group: str, key: str, n: int = 1) -> None:
        self.counters.setdefault(group, Counter())[key] += n

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def dump(self, path: Path) -> None:
        data = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scale": SCALE,
            **{k: dict(sorted(v.items())) for k, v in self.counters.items()},
            **self.values,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    fig = Figures()
    yield fig
    if RESULTS_DIR:
        fig.dump(Path(RESULTS_DIR) / f"{request.module.__name__.rsplit('.', 1)[-1]}.json")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlane]:
    plane = LivePlane(tmp_path_factory.mktemp("live") / "data").start()
    try:
        yield plane
    finally:
        plane.stop()
