"""``python -m agent``: the same command line as ``restic-manager-agent``."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
