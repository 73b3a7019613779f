"""DESIGN.md §2 import rules, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "agent", "server_core", "ui_qt")
UI_FORBIDDEN = ("server_core.models", "server_core.store", "server_core.migrations")
AGENT_ALLOWED_THIRD_PARTY = {"aiohttp", "croniter", "cryptography", "yarl", "multidict"}
# pywin32, imported only inside agent/windows_service.py's functions (Windows only).
AGENT_ALLOWED_THIRD_PARTY |= {"servicemanager", "win32service", "win32serviceutil"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            # `from agent import protocol` names a submodule too.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _is_protocol(name: str) -> bool:
    return name == "agent.protocol" or name.startswith("agent.protocol.")


def violations() -> list[str]:
    import sys

    stdlib = set(sys.stdlib_module_names)
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            for line, name in imports_of(path):
                top = name.split(".")[0]
                where = f"{rel}:{line} imports {name}"
                if package == "agent":
                    if top in ("server_core", "ui_qt", "app", "PySide6", "peewee", "qasync"):
                        problems.append(f"{where}: the agent must stand alone")
                    elif (
                        top not in stdlib
                        and top != "agent"
                        and top not in AGENT_ALLOWED_THIRD_PARTY
                    ):
                        problems.append(f"{where}: not an allowed agent dependency")
                elif package == "server_core":
                    if top in ("ui_qt", "app", "PySide6", "qasync"):
                        problems.append(f"{where}: server_core has no Qt and no app")
                    elif top == "agent" and name != "agent" and not _is_protocol(name):
                        problems.append(f"{where}: server_core may only use agent.protocol")
                elif package == "ui_qt" and (
                    top in ("app", "peewee") or name.startswith(UI_FORBIDDEN)
                ):
                    problems.append(f"{where}: ui_qt goes through server_core services")
    return problems


def test_layering_rules_hold() -> None:
    assert violations() == []


def test_checker_catches_a_violation(tmp_path: Path, monkeypatch) -> None:
    # Guard against a checker that can never fail.
    bad = ROOT / "agent" / "_layering_probe_tmp.py"
    bad.write_text("from server_core import store\nimport PySide6\n")
    try:
        found = violations()
    finally:
        bad.unlink()
    assert any("_layering_probe_tmp.py:1" in p for p in found)
    assert any("_layering_probe_tmp.py:2" in p for p in found)
