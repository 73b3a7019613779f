"""The real restic binaries the tests run against.

0.14.0 is Debian bookworm's package; 0.18.0 is trixie's, unpacked into
.cache/ by the setup. A binary whose file is missing is left out, so tests
parametrised over RESTIC_PARAMS skip rather than fail on a partial setup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

_CANDIDATES: dict[str, Path] = {
    "0.14": Path("/usr/bin/restic"),
    "0.18": REPO_ROOT / ".cache" / "restic-0.18" / "usr" / "bin" / "restic",
}

RESTIC_BINARIES: dict[str, str] = {
    name: str(path) for name, path in _CANDIDATES.items() if path.is_file()
}

# One pytest param per known version; a missing binary becomes a skip with a
# reason instead of silently shrinking the test matrix.
RESTIC_PARAMS: list[object] = [
    pytest.param(
        str(path),
        id=name,
        marks=() if path.is_file() else pytest.mark.skip(reason=f"restic {name} not at {path}"),
    )
    for name, path in _CANDIDATES.items()
]
