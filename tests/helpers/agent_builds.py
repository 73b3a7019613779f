"""PyInstaller-built agents for tests, through packaging/build.py (never a copy of it).

``standard_agent()`` is this checkout's build in dist/agents/. ``agent_with_version(v)``
is the same sources built with ``agent/version.py`` saying ``v``: the script
is run from a copy of ``agent/`` and ``packaging/`` under
``.cache/agent-versions/<v>/`` (build.py builds what sits next to it, and keeps
its own cache there), so two builds that differ only in their version exist
side by side without touching the checkout. Each is rebuilt only when the
agent's sources change (~20 s), like the standard one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_DIR = ROOT / ".cache" / "agent-versions"
_VERSION_LINE = re.compile(r'^__version__ = ".*"$', re.MULTILINE)
_SAFE = re.compile(r"^[0-9A-Za-z.+_-]{1,40}$")


def _build(build_script: Path) -> Path:
    out = subprocess.run(
        [sys.executable, str(build_script), "agent", "--print-path"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=build_script.parents[1],
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(
            f"building the agent with {build_script} failed:\n{out.stdout[-2000:]}\n"
            f"{out.stderr[-4000:]}"
        )
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path


def standard_agent() -> Path:
    """This checkout's agent (dist/agents/restic-manager-agent-<os>-<arch>)."""
    return _build(ROOT / "packaging" / "build.py")


def agent_with_version(version: str) -> Path:
    """The checkout's agent sources, built to report ``version``."""
    if not _SAFE.match(version):
        raise ValueError(f"a test build version must be a short plain string, got {version!r}")
    tree = VERSIONS_DIR / version
    tree.mkdir(parents=True, exist_ok=True)
    for name in ("agent", "packaging"):
        shutil.rmtree(tree / name, ignore_errors=True)
        shutil.copytree(
            ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    version_py = tree / "agent" / "version.py"
    text, count = _VERSION_LINE.subn(f'__version__ = "{version}"', version_py.read_text())
    if count != 1:
        raise AssertionError(f"agent/version.py has no single __version__ line to override: {text}")
    version_py.write_text(text)
    return _build(tree / "packaging" / "build.py")
