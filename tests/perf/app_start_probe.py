"""Launches the desktop app (or a bare PySide6 window, ``--bare``) and prints
the ``time.monotonic()`` at which its main window finished its first paint,
then quits it the way SIGTERM does. Used by bench_app_start.py.

    python tests/perf/app_start_probe.py [--bare] -- [restic-manager arguments]

The only thing added to the app is a QApplication subclass created before
the app asks for one (``app.gui`` reuses an existing instance): it looks at
each event after it was handled, for the first ``UpdateRequest`` (repaint and
flush) of a window of class ``MainWindow``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

STARTED = time.monotonic()

from PySide6.QtCore import QEvent, QObject  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow  # noqa: E402

WINDOW_CLASS = "MainWindow"


class FirstPaint(QApplication):
    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv)
        self.painted: float | None = None
        self._update = QEvent.Type.UpdateRequest

    def notify(self, receiver: QObject, event: QEvent) -> bool:
        handled = super().notify(receiver, event)
        if (
            self.painted is None
            and event.type() == self._update
            and type(receiver).__name__ == WINDOW_CLASS
        ):
            self.painted = time.monotonic()
            sys.stdout.write(json.dumps({"painted": self.painted, "probe_started": STARTED}) + "\n")
            sys.stdout.flush()
            # The app's own quit path (it handles SIGTERM); the bare window just quits.
            if BARE:
                self.quit()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        return handled


class MainWindow(QMainWindow):
    pass


BARE = "--bare" in sys.argv


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    app = FirstPaint(sys.argv[:1])
    if BARE:
        window = MainWindow()
        window.setCentralWidget(QLabel("hello"))
        window.resize(1200, 760)
        window.show()
        return int(app.exec())
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from app.cli import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
