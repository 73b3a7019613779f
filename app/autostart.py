"""Optional start at login: an XDG autostart entry (Linux desktops), off by default.

``$XDG_CONFIG_HOME/autostart/restic-manager.desktop`` (default
``~/.config/autostart``) starts the app minimised to the tray with the
same data dir and listeners as the running app. Removing the file turns it
off again. Other platforms report ``supported() == False``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ENTRY_NAME = "restic-manager.desktop"
ICON = Path(__file__).resolve().parent.parent / "resources" / "icons" / "app.svg"
_MARKER = "X-restic-manager-autostart=true"


def supported() -> bool:
    return sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))


def autostart_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME")
    # The spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "autostart"


def entry_path(env: Mapping[str, str] | None = None) -> Path:
    return autostart_dir(env) / ENTRY_NAME


def launch_command(
    data_dir: Path,
    *,
    agent_listen: str | None = None,
    api_listen: str | None = None,
    allow_remote_api: bool = False,
) -> list[str]:
    """The command that starts this app again, minimised, on the same data dir."""
    exe = shutil.which("restic-manager") or str(Path(sys.executable).parent / "restic-manager")
    argv = [exe, "--data-dir", str(data_dir)]
    if agent_listen:
        argv += ["--agent-listen", agent_listen]
    if api_listen:
        argv += ["--api-listen", api_listen]
    if allow_remote_api:
        argv.append("--allow-remote-api")
    return [*argv, "--minimized"]


def _quote(arg: str) -> str:
    """One Exec= argument, quoted per the Desktop Entry specification."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`"):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def desktop_entry(command: Sequence[str]) -> str:
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            "Version=1.0",
            "Name=restic-manager",
            "Comment=Backups of your fleet with restic (starts in the tray)",
            "Exec=" + " ".join(_quote(a) for a in command),
            f"Icon={ICON}",
            "Terminal=false",
            "Categories=Utility;Archiving;",
            "X-GNOME-Autostart-enabled=true",
            _MARKER,
            "",
        ]
    )


def is_enabled(env: Mapping[str, str] | None = None) -> bool:
    path = entry_path(env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    lines = {line.strip() for line in text.splitlines()}
    return "Hidden=true" not in lines and "X-GNOME-Autostart-enabled=false" not in lines


def enable(command: Sequence[str], env: Mapping[str, str] | None = None) -> Path:
    """Write the autostart entry (atomically); returns its path."""
    path = entry_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(desktop_entry(command), encoding="utf-8")
    os.replace(tmp, path)
    return path


def disable(env: Mapping[str, str] | None = None) -> None:
    path = entry_path(env)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
