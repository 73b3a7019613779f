"""What the one-file agent runs: ``restic-manager-agent`` with its usual CLI.

A separate file rather than ``agent/__main__.py``: PyInstaller puts the
entry script's folder on its search path, and ``agent/`` on that path would
make ``protocol``, ``jobs``, … importable as top-level modules too.
"""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
