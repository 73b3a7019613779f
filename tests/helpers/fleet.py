"""Real processes for integration tests: a control plane, agents, an API client.

Everything here drives the shipped entry points (`restic-manager serve`,
`restic-manager-agent enrol/run`) as separate processes over real TLS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "PYTEST_"))}
    # No keyring daemon in these processes: the control plane falls back to its key file.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env.update(extra)
    return env


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Api:
    base: str
    token: str | None = None

    def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            raise ApiError(exc.code, parsed) from None
        if raw:
            return payload.decode()
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body if body is not None else {})


@dataclass
class ControlPlaneProcess:
    data_dir: Path
    log_path: Path
    agent_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # The agent listener's address: 0.0.0.0 lets agents in network namespaces in.
    agent_host: str = "127.0.0.1"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v1"

    @property
    def agent_url(self) -> str:
        return f"https://127.0.0.1:{self.agent_port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "restic-manager"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--agent-listen",
                f"{self.agent_host}:{self.agent_port}",
                "--api-listen",
                f"127.0.0.1:{self.api_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        wait_for(self._listening, 30, "the control plane to listen")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"control plane exited: {self.log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.api_port), timeout=0.5):
                return True
        except OSError:
            return False

    def create_api_token(self, name: str = "tests") -> str:
        out = subprocess.run(
            [
                str(BIN / "restic-manager"),
                "api-token",
                "create",
                "--data-dir",
                str(self.data_dir),
                "--name",
                name,
            ],
            check=True,
            capture_output=True,
            env=child_env(),
        )
        lines = out.stdout.decode().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class AgentProcess:
    workdir: Path
    restic: str
    hostname: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "etc" / "config.toml"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def enrol(self, server: str, token: str, cert_sha256: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(BIN / "restic-manager-agent"),
                "enrol",
                "--server",
                server,
                "--cert-sha256",
                cert_sha256,
                "--config",
                str(self.config),
                "--state-dir",
                str(self.state_dir),
                "--restic",
                self.restic,
                "--hostname",
                self.hostname,
            ],
            capture_output=True,
            text=True,
            # As install.sh does: the token never on a command line.
            env=child_env(RM_ENROL_TOKEN=token),
            timeout=60,
        )

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "restic-manager-agent"), "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def make_tree(root: Path, files: int, size: int, seed: int = 1) -> Path:
    """A reproducible source tree of incompressible files."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / f"d{i % 7}" / f"e{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
    return root


@dataclass
class ResticWatcher:
    """Samples /proc for restic processes to prove no secret reached argv."""

    seen: list[list[str]] = field(default_factory=list)
    _stop: bool = False

    def run(self) -> None:
        while not self._stop:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
                if argv and re.search(r"(^|/)restic$", argv[0]) and argv not in self.seen:
                    self.seen.append(argv)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop = True


def files_containing(roots: list[Path], needle: bytes) -> list[Path]:
    hits = []
    for root in roots:
        if not root.exists():
            continue
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            try:
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def put_group(api: Api, host_id: int, group: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """PUT a source group as the API listed it, with ``changes`` applied."""
    body = {
        key: group[key]
        for key in (
            "name",
            "includes",
            "excludes",
            "retention",
            "retry_max",
            "retry_backoff_seconds",
            "pre_hook",
            "post_hook",
        )
    }
    body.update(changes)
    return api.call("PUT", f"/hosts/{host_id}/source-groups/{group['id']}", body)  # type: ignore[no-any-return]
