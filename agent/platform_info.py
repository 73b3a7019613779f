"""What the agent tells the control plane about the machine it runs on."""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

APP_DIR_NAME = "restic-manager-agent"

# The control plane groups hosts and picks agent binaries by Go-style names,
# whatever spelling the kernel or Windows uses.
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "armv7l": "arm",
    "armv6l": "arm",
    "arm": "arm",
}


def os_name() -> str:
    """``linux``, ``windows``, ``darwin``, … as the control plane expects it."""
    return platform.system().lower() or sys.platform


def normalize_arch(machine: str) -> str:
    key = machine.strip().lower()
    return _ARCH_ALIASES.get(key, key or "unknown")


def arch() -> str:
    return normalize_arch(platform.machine())


def hostname(configured: str | None = None) -> str:
    """The configured name if any, else the machine's own short-ish name."""
    if configured and configured.strip():
        return configured.strip()
    return socket.gethostname() or "unknown"


def is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def default_state_dir(
    environ: Mapping[str, str] | None = None,
    *,
    system: str | None = None,
    root: bool | None = None,
) -> Path:
    """Where the agent keeps its outbox, secrets and restic cache by default.

    A system service (root, or any Windows service) uses the machine-wide
    location; an unprivileged user gets a per-user XDG directory so that a
    test install never needs root.
    """
    env = os.environ if environ is None else environ
    system = os_name() if system is None else system
    if system == "windows":
        base = env.get("ProgramData") or env.get("PROGRAMDATA") or r"C:\ProgramData"
        return Path(base) / APP_DIR_NAME
    if is_root() if root is None else root:
        return Path("/var/lib") / APP_DIR_NAME
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_DIR_NAME
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / APP_DIR_NAME
