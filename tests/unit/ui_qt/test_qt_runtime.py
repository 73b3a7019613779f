"""Guards against Qt binding releases that break a long-running app."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
class O(QObject):
    s = Signal(object)
o = O()
o.s.connect(lambda x: None)
before = sys.getrefcount(True)
for _ in range(20000):
    o.s.emit({1})
print(before - sys.getrefcount(True))
"""

NONE_SCRIPT = """
import sys
from PySide6.QtWidgets import QApplication, QLabel
app = QApplication([])
label = QLabel()
before = sys.getrefcount(None)
for _ in range(20000):
    label.setText("x")
    label.update()
print(before - sys.getrefcount(None))
"""


def test_signal_emits_do_not_leak_references() -> None:
    # PySide6 6.12.0 dropped a reference to True per emit and aborted the
    # interpreter after ~3000: the event bridge emits many times a minute.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    assert abs(int(out.stdout.strip())) < 100


def test_void_calls_do_not_leak_references_to_none() -> None:
    # PySide6 6.12.0 (abi3 wheel) on Python 3.11 did: "deallocating None".
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", NONE_SCRIPT], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert abs(int(out.stdout.strip())) < 100
