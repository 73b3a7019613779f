"""A small real repository with two snapshots, for the browse/restore/diff tests.

Snapshot 1 is of ``src`` as made by ``make_tree``; snapshot 2 after
``change_tree`` (one file changed, one removed, one added). ``expected``
keeps snapshot 1's file contents for byte-for-byte comparisons.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import protocol
from agent.jobs import JobRunner, JobSettings, ResticBinary
from agent.outbox import Outbox
from agent.redact import Redactor

REPO_ROOT = Path(__file__).resolve().parents[3]
RESTICS = {
    "0.14": Path("/usr/bin/restic"),
    "0.18": REPO_ROOT / ".cache" / "restic-0.18" / "usr" / "bin" / "restic",
}
PASSWORD = "Browse-Passw0rd-xyz"
WEIRD = "we[ir]d*name?.txt"


@dataclass
class Repo:
    path: Path
    src: Path
    snapshots: list[str]  # full ids, oldest first
    expected: dict[str, bytes]  # snapshot 1: path -> content

    def creds(self) -> protocol.RepoCredentials:
        return protocol.RepoCredentials(url=str(self.path), password=PASSWORD)


def restic_env(repo: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
    }


def restic(repo: Path, *args: str, binary: str = "/usr/bin/restic") -> str:
    out = subprocess.run(
        [binary, "--cache-dir", str(repo.parent / "cache"), *args],
        env=restic_env(repo),
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def make_tree(src: Path) -> None:
    rng = random.Random(7)
    (src / "docs" / "sub" / "deep").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("alpha\n" * 50)
    (src / "docs" / "b.txt").write_text("bravo\n" * 70)
    (src / "docs" / "sub" / "deep" / "c.bin").write_bytes(rng.randbytes(50_000))
    (src / "photos").mkdir()
    for i in range(30):
        (src / "photos" / f"img{i:02d}.png").write_bytes(rng.randbytes(rng.randint(10, 3000)))
    (src / "weird").mkdir()
    (src / "weird" / WEIRD).write_text("weird\n")
    (src / "weird" / "weird-name.txt").write_text("decoy\n")
    (src / "weird" / "space name.txt").write_text("space\n")
    (src / "weird" / "\u00fcn\u00efcode.txt").write_text("unicode\n")
    (src / "empty").mkdir()
    (src / "link").symlink_to("docs/a.txt")


def change_tree(src: Path) -> None:
    (src / "docs" / "a.txt").write_text("alpha changed\n")
    (src / "docs" / "b.txt").unlink()
    (src / "new.txt").write_text("new\n")


def snapshot_contents(src: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()
    }


def make_repo(base: Path) -> Repo:
    base.mkdir(parents=True, exist_ok=True)
    repo, src = base / "repo", base / "src"
    src.mkdir()
    make_tree(src)
    expected = snapshot_contents(src)
    restic(repo, "init")
    first = backup(repo, src)
    change_tree(src)
    second = backup(repo, src)
    return Repo(repo, src, [first, second], expected)


def backup(repo: Path, path: Path, *flags: str) -> str:
    """Back ``path`` up; the new snapshot's full id (0.14's summary has the short one)."""
    restic(repo, "backup", "--host", "testhost", *flags, str(path))
    listed = json.loads(restic(repo, "snapshots", "--json"))
    newest = max(listed, key=lambda s: s["time"])
    return str(newest["id"])


def copy_repo(repo: Repo, base: Path) -> Repo:
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(repo.path, base / "repo")
    return Repo(base / "repo", repo.src, list(repo.snapshots), dict(repo.expected))


@dataclass
class Harness:
    runner: JobRunner
    outbox: Outbox
    emitted: list[protocol.Message] = field(default_factory=list)

    def emit(self, message: protocol.Message) -> None:
        frame = protocol.encode(message)
        assert PASSWORD not in frame
        self.emitted.append(message)

    def events(self, job_id: str) -> list[Any]:
        return [m for m in self.emitted if getattr(m, "job_id", None) == job_id]

    def finished(self, job_id: str) -> protocol.JobFinished:
        (done,) = [m for m in self.events(job_id) if isinstance(m, protocol.JobFinished)]
        return done

    def text(self, job_id: str) -> str:
        return "\n".join(
            line.text
            for m in self.events(job_id)
            if isinstance(m, protocol.JobLog)
            for line in m.lines
        )

    def progress(self, job_id: str) -> list[protocol.Progress]:
        return [m.progress for m in self.events(job_id) if isinstance(m, protocol.JobProgress)]


class harness_for:  # reads like a function at the call site
    def __init__(self, state: Path, restic: ResticBinary, repo: Repo | None, **kwargs: Any) -> None:
        self._state = state
        self._restic = restic
        self._repo = repo
        self._kwargs = kwargs

    async def __aenter__(self) -> Harness:
        self._state.mkdir(parents=True, exist_ok=True)
        outbox = Outbox(self._state / "outbox.sqlite3")
        h = Harness(runner=None, outbox=outbox)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {"grace_seconds": 5.0, "progress_interval": 0.2}
        settings = self._kwargs.pop("settings", None)
        kwargs.update(self._kwargs)
        h.runner = JobRunner(
            emit=h.emit,
            store=outbox,
            state_dir=self._state,
            redactor=Redactor([]),
            restic=self._restic,
            **kwargs,
        )
        if settings is not None:
            h.runner.update_settings(settings)
        elif self._repo is not None:
            h.runner.update_settings(JobSettings(repository=self._repo.creds()))
        self.h = h
        return h

    async def __aexit__(self, *exc: object) -> None:
        await self.h.runner.shutdown()
        self.h.outbox.close()
