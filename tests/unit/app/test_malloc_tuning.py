"""glibc's mmap threshold, fixed at start-up (app/malloc_tuning.py).

Each case runs in a fresh interpreter: mallopt changes the whole process.
What is measured is glibc's own count of mmapped blocks (mallinfo2).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

# Frees a 1 MiB block (which, untuned, raises glibc's threshold to 1 MiB),
# then holds twenty 300 KiB buffers, as a burst of large frames would.
SCRIPT = """
import ctypes, sys
from app.malloc_tuning import tune_malloc

tuned = tune_malloc() if sys.argv[1] == "tune" else False

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
big = bytearray(1024 * 1024)
del big
held = [bytearray(300 * 1024) for _ in range(20)]
print(int(tuned), libc.mallinfo2().hblks)
"""


def _run(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=REPO_ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return out[0] == "1", int(out[1])


def test_untuned_glibc_carves_large_buffers_from_the_heap() -> None:
    # The behaviour the tuning exists for: if this stops holding, so does the reason.
    tuned, mmapped = _run("plain")
    assert not tuned
    assert mmapped < 20


def test_large_buffers_keep_their_own_mapping_once_tuned() -> None:
    tuned, mmapped = _run("tune")
    assert tuned
    assert mmapped >= 20, f"only {mmapped} of 20 large buffers were mmapped"


def test_the_operators_own_setting_wins() -> None:
    tuned, _ = _run("tune", MALLOC_MMAP_THRESHOLD_="1048576")
    assert not tuned


def test_the_command_line_tunes_malloc_before_anything_else(tmp_path: Path) -> None:
    # `restic-manager` (GUI or serve) goes through app.cli.main.
    code = (
        "import sys, app.malloc_tuning as m\n"
        "calls = []\n"
        "m.tune_malloc = lambda: calls.append(1) or True\n"
        "from app import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(len(calls))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip().endswith("1")
