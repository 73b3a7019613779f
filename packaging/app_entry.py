"""What the packaged desktop app runs: ``restic-manager`` with its usual CLI."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
