"""Pieces of the fault-injection soak: a control plane every namespace can
reach, agents inside network namespaces, the restic processes working on a
repository, and the ground truth read back from the control plane's database
and from the repositories themselves.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.fleet import BIN, AgentProcess, ControlPlaneProcess, child_env
from tests.helpers.netns import NetnsHost

TERMINAL = ("succeeded", "failed", "cancelled")
DB_FILE = "restic-manager.sqlite3"


@dataclass
class ReachablePlane(ControlPlaneProcess):
    """`restic-manager serve` with its agent listener on every address (the
    product's default), so agents in several namespaces reach it over their
    own veth; the operator API stays on loopback. Restarted on the same data
    dir and ports."""

    agent_host: str = "0.0.0.0"

    def url_for(self, host: NetnsHost) -> str:
        return f"https://{host.root_ip}:{self.agent_port}"

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the control plane has, straight from its database."""
        conn = sqlite3.connect(f"file:{self.data_dir / DB_FILE}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(
                "SELECT id, host_id, kind, status, actor, created_at, started_at, finished_at,"
                " error, summary, log_lines, log_lines_reported FROM job ORDER BY created_at"
            ).fetchall()
        finally:
            conn.close()
        return [dict(r) for r in rows]


@dataclass
class NetnsAgent(AgentProcess):
    """`restic-manager-agent run` inside a network namespace (`ip netns exec`
    execs it, so the pid is the agent's own)."""

    netns: NetnsHost | None = None

    def start(self) -> None:
        assert self.netns is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.netns.argv(
                [str(BIN / "restic-manager-agent"), "run", "--config", str(self.config)]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )

    def outbox_size(self) -> int:
        path = self.state_dir / "outbox.sqlite3"
        if not path.exists():
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()


@dataclass(frozen=True)
class ResticProc:
    pid: int
    ppid: int
    argv: list[str]

    @property
    def is_backup(self) -> bool:
        return "backup" in self.argv


def restic_processes(repo: Path) -> list[ResticProc]:
    """Live restic processes whose repository (only ever in their
    environment) is ``repo``; zombies are left out."""
    wanted = f"RESTIC_REPOSITORY={repo}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not argv or not argv[0].endswith(b"restic"):
                continue
            if wanted not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        found.append(
            ResticProc(int(entry), int(fields[1]), [a.decode(errors="replace") for a in argv if a])
        )
    return found


def kill_pid(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def repo_snapshots(restic: str, repo: Path, password: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [restic, "snapshots", "--json", "--no-lock", "--no-cache"],
        env={"PATH": "/usr/bin:/bin", "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout) or []  # type: ignore[no-any-return]


def lock_files(repo: Path) -> list[str]:
    locks = repo / "locks"
    return sorted(p.name for p in locks.iterdir()) if locks.exists() else []
