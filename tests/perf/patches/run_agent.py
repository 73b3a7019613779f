"""Run the agent (``restic-manager-agent``'s CLI) with experiment patches applied.

python tests/perf/patches/run_agent.py NAME[,NAME...] -- run --config FILE
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

if __name__ == "__main__":
    split = sys.argv.index("--")
    for name in ",".join(sys.argv[1:split]).split(","):
        if name:
            importlib.import_module(f"tests.perf.patches.{name}")
    from agent.cli import main

    sys.exit(main(sys.argv[split + 1 :]))
