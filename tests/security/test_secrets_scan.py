"""No secret in plaintext on disk, in logs, on argv or on the LAN.

One full run with real processes: a `restic-manager serve` control plane, an
agent on a separate "host" (a network namespace), real restic against a real
REST backend (`rclone serve restic`: an append-only one for the everyday
credential, a second one on the same directory for the admin credential).
The run enrols the agent, backs up twice, forgets and prunes with the admin
credential, and restores. Every secret is random and distinctive:

- the repository password, the everyday and the admin backend passwords
  (chosen here, with characters a URL must escape),
- the enrolment token, the host's bearer and the operator API token
  (minted by the product).

Then it looks for each secret, in several encodings (plain, URL-encoded,
hex, UTF-16, base64 at every alignment), in:

- every file under the control plane's data dir and the agent's config and
  state dirs (raw bytes: SQLite databases, WAL files, caches, logs), while
  the processes run and again after they stopped;
- the output of every process the product runs, and the job logs, job
  records and audit log the control plane stores;
- the command line of every process on the machine, sampled every few
  milliseconds for the whole run (restic's environment is the intended
  channel: it is read only to prove the sampling saw the right processes);
- a packet capture of the agent's link to the control plane.

Each check has a positive control so it cannot pass by seeing nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from agent.enrol import secrets_file_for
from tests.helpers import netns
from tests.helpers.fleet import Api, child_env, free_port, make_tree, wait_for
from tests.helpers.restic_bins import RESTIC_BINARIES

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
# One restic version keeps the run short; RM_SECRETS_SCAN_RESTIC=0.14 checks the other.
RESTIC_VERSION = os.environ.get("RM_SECRETS_SCAN_RESTIC", "0.18")
# The restic commands each operator job must be seen running.
JOB_KINDS = ("backup", "forget", "prune", "restore")
RESTIC_COMMANDS = {
    "backup",
    "cat",
    "check",
    "diff",
    "find",
    "forget",
    "init",
    "key",
    "ls",
    "prune",
    "restore",
    "snapshots",
    "stats",
    "unlock",
    "version",
}
EVERYDAY_USER = "backup"
ADMIN_USER = "admin"
# Text that would show the agent link is not encrypted.
PLAINTEXT_MARKERS = (b"HTTP/1.1", b"Upgrade: websocket", b"Bearer ", b'"payload"', b"hello")


# -- the detector -------------------------------------------------------------------


def encodings(secret: str) -> dict[str, bytes]:
    """The byte strings that would betray ``secret`` wherever it lands.

    Base64 is aligned in groups of three bytes, so a secret embedded in a
    longer encoded string (an HTTP Basic header, a JSON blob) shows up as
    one of three shifted encodings, each cut to its complete groups.
    """
    raw = secret.encode()
    forms: dict[str, bytes] = {
        "plain": raw,
        "url": quote(secret, safe="").encode(),
        "form-url": quote_plus(secret).encode(),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "utf-16": secret.encode("utf-16-le"),
    }
    for shift in range(3):
        part = raw[shift:]
        whole = len(part) // 3 * 4
        forms[f"base64@{shift}"] = base64.b64encode(part)[:whole]
        forms[f"base64url@{shift}"] = base64.urlsafe_b64encode(part)[:whole]
    unique: dict[str, bytes] = {}
    for name, value in forms.items():
        if value not in unique.values():
            unique[name] = value
    return unique


class Secrets:
    """Named secrets and their encodings; more may be added while threads read."""

    def __init__(self) -> None:
        self._needles: tuple[tuple[str, str, bytes], ...] = ()
        self.values: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        assert len(value) >= 16, f"{name} is too short to be distinctive"
        self.values[name] = value
        self._needles = self._needles + tuple(
            (name, form, needle) for form, needle in encodings(value).items()
        )

    def find(self, blob: bytes) -> list[tuple[str, str]]:
        """(secret name, encoding) for each secret ``blob`` betrays."""
        return [(name, form) for name, form, needle in self._needles if needle in blob]


@dataclass
class FileScan:
    files: int = 0
    bytes: int = 0
    hits: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def scan_tree(roots: list[Path], found: Secrets) -> FileScan:
    scan = FileScan()
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                continue  # a temporary file gone between listing and reading
            scan.files += 1
            scan.bytes += len(blob)
            scan.names.add(path.name)
            scan.hits += [f"{path}: {name} ({form})" for name, form in found.find(blob)]
    return scan


# -- /proc sampling -----------------------------------------------------------------


@dataclass
class ResticRun:
    pid: int
    argv: list[str]
    command: str | None
    # Which secrets its environment carries (the intended channel, never flagged).
    env_secrets: set[str]
    # Started by this test's agent (its cache dir is on the command line), not
    # by another test running on the machine at the same time.
    ours: bool


class ProcWatcher:
    """Samples every process's command line for the whole run."""

    def __init__(self, found: Secrets, agent_dir: Path) -> None:
        self._found = found
        self._agent_dir = str(agent_dir) + os.sep
        self._stop = threading.Event()
        self.runs: dict[tuple[int, bytes], ResticRun] = {}
        self.leaks: list[str] = []
        self.sweeps = 0
        self.cmdlines: set[tuple[int, bytes]] = set()

    def run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    self._look(int(entry))
            self.sweeps += 1
            time.sleep(0.002)

    def _look(self, pid: int) -> None:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if not raw or (pid, raw) in self.cmdlines:
            return
        self.cmdlines.add((pid, raw))
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        self.leaks += [f"pid {pid} {argv[0]}: {n} ({f})" for n, f in self._found.find(raw)]
        if os.path.basename(argv[0]) != "restic":
            return
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            environ = b""
        command = next((a for a in argv[1:] if a in RESTIC_COMMANDS), None)
        env_secrets = {name for name, form in self._found.find(environ)}
        ours = any(a.startswith(self._agent_dir) for a in argv)
        self.runs[(pid, raw)] = ResticRun(pid, argv, command, env_secrets, ours)

    def stop(self) -> None:
        self._stop.set()

    def ours(self) -> list[ResticRun]:
        return [r for r in list(self.runs.values()) if r.ours]

    def by_command(self, command: str) -> list[ResticRun]:
        return [r for r in self.ours() if r.command == command]


@contextlib.contextmanager
def watching(found: Secrets, agent_dir: Path) -> Iterator[ProcWatcher]:
    watcher = ProcWatcher(found, agent_dir)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop()
        thread.join(10)


# -- processes ----------------------------------------------------------------------


class Procs:
    """Every process this test starts, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env or child_env()
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def listening(proc: subprocess.Popen[bytes], host: str, port: int, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0

    wait_for(up, 20, what, interval=0.05)


def wait_job(api: Api, job_id: str, timeout: float = 60) -> dict[str, Any]:
    job: dict[str, Any] = wait_for(
        lambda: (
            (j := api.get(f"/jobs/{job_id}"))["status"] in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout,
        f"job {job_id} to finish",
        interval=0.1,
    )
    return job


def run_job(api: Api, host_id: int, body: dict[str, Any]) -> dict[str, Any]:
    job = wait_job(api, api.post(f"/hosts/{host_id}/jobs", body)["job_id"])
    assert job["status"] == "succeeded", job
    return job


def tshark_fields(pcap: Path, port: int, *fields: str, display: str = "") -> list[list[str]]:
    # Two passes, so segments that are part of a larger TLS record say so.
    argv = ["tshark", "-n", "-2", "-r", str(pcap), "-d", f"tcp.port=={port},tls", "-T", "fields"]
    for name in fields:
        argv += ["-e", name]
    if display:
        argv += ["-Y", display]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def split_capture(src: Path, dest: Path, display: str) -> None:
    subprocess.run(
        ["tshark", "-n", "-r", str(src), "-Y", display, "-F", "pcap", "-w", str(dest)],
        capture_output=True,
        timeout=60,
        check=True,
    )


# -- the tests ----------------------------------------------------------------------


def test_the_detector_finds_every_encoding_anywhere() -> None:
    # The scan below is only as good as this: each encoding, at any offset,
    # inside a larger blob, and inside an HTTP Basic header.
    found = Secrets()
    secret = "pw-" + secrets.token_urlsafe(18) + " +/@:%"
    found.add("s", secret)
    rng = random.Random(7)
    for form, needle in encodings(secret).items():
        for offset in range(4):
            blob = rng.randbytes(offset) + needle + rng.randbytes(5)
            assert ("s", form) in found.find(blob), (form, offset)
    for user in ("a", "ab", "abc", EVERYDAY_USER):
        header = b"Authorization: Basic " + base64.b64encode(f"{user}:{secret}".encode())
        assert found.find(header), user
    assert found.find(b"nothing to see " * 100) == []


def _tools_or_fail() -> str:
    missing = [t for t in ("rclone", "htpasswd", "tshark", "dumpcap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing from the test environment: run `make bootstrap`")
    restic = RESTIC_BINARIES.get(RESTIC_VERSION)
    assert restic, f"restic {RESTIC_VERSION} is not installed: run `make bootstrap`"
    return restic


def test_no_secret_on_disk_in_logs_on_argv_or_on_the_wire(tmp_path: Path) -> None:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"the secrets scan runs the agent on a separate host: {reason}")
    restic = _tools_or_fail()
    found = Secrets()
    # Characters a URL must escape, so a credential that went into a URL unescaped
    # or escaped is caught either way.
    found.add("repository password", f"RepoPw-{secrets.token_urlsafe(18)}+/ &=")
    found.add("everyday backend password", f"BkEvd-{secrets.token_urlsafe(18)}+/@:%")
    found.add("admin backend password", f"BkAdm-{secrets.token_urlsafe(18)}+/@:%")
    pw = found.values

    htpasswd = tmp_path / "htpasswd"
    for flags, user, name in (
        ("-Bbc", EVERYDAY_USER, "everyday backend password"),
        ("-Bb", ADMIN_USER, "admin backend password"),
    ):
        subprocess.run(["htpasswd", flags, str(htpasswd), user, pw[name]], check=True)
    rest_root = tmp_path / "rest-root"
    rest_root.mkdir()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    agent_dir = tmp_path / "agent"
    config = agent_dir / "etc" / "config.toml"
    state_dir = agent_dir / "state"
    logs = tmp_path / "logs"
    logs.mkdir()
    src = make_tree(tmp_path / "src", files=40, size=4096, seed=17)
    procs = Procs()
    figures: dict[str, Any] = {}

    disk = FileScan()

    def check_disk(stage: str) -> None:
        """Everything on disk now, while the processes run."""
        scan = scan_tree([data_dir, agent_dir], found)
        assert scan.hits == [], f"{stage}:\n" + "\n".join(scan.hits)
        disk.files += scan.files
        disk.bytes += scan.bytes
        disk.names |= scan.names

    with netns.netns_host("sec") as host, watching(found, agent_dir) as watcher:
        try:
            # The backends, reachable from the agent's namespace only over its veth.
            rest_ports = {}
            for name, append_only in (("everyday", True), ("admin", False)):
                port = free_port()
                argv = ["rclone", "serve", "restic", str(rest_root)]
                argv += ["--addr", f"{host.root_ip}:{port}", "--htpasswd", str(htpasswd)]
                proc = procs.start(
                    [*argv, "--append-only"] if append_only else argv,
                    tmp_path / f"rclone-{name}.log",
                )
                listening(proc, host.root_ip, port, f"rclone ({name})")
                rest_ports[name] = port

            api_token = subprocess.run(
                [
                    str(BIN / "restic-manager"),
                    *("api-token", "create", "--data-dir", str(data_dir), "--name", "scan"),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=child_env(),
            )
            (logs / "api-token.stderr").write_text(api_token.stderr)
            found.add("API token", api_token.stdout.strip())
            api_port = free_port()
            server = procs.start(
                [
                    str(BIN / "restic-manager"),
                    *("serve", "--data-dir", str(data_dir)),
                    *("--agent-listen", f"{host.root_ip}:0"),
                    *("--api-listen", f"127.0.0.1:{api_port}"),
                ],
                logs / "server.log",
            )
            api = Api(f"http://127.0.0.1:{api_port}/api/v1", found.values["API token"])
            listening(server, "127.0.0.1", api_port, "the control plane")
            info = wait_for(lambda: api.get("/server"), 30, "the control plane to answer")
            agent_port = int(info["agent_url"].rsplit(":", 1)[1].split("/")[0])

            # Everything on the agent's link from before enrolment to after shutdown.
            all_pcap = tmp_path / "veth.pcap"
            capture_err = tmp_path / "dumpcap.err"
            with capture_err.open("wb") as err:
                capture = subprocess.Popen(
                    ["dumpcap", "-i", host.veth_root, "-f", "tcp", "-P", "-w", str(all_pcap)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            procs.procs.append(capture)
            wait_for(
                lambda: b"Capturing on" in capture_err.read_bytes(), 20, "dumpcap", interval=0.05
            )

            def rest(name: str, user: str, secret: str) -> dict[str, str]:
                return {
                    "url": f"rest:http://{host.root_ip}:{rest_ports[name]}/",
                    "password": pw["repository password"],
                    "username": user,
                    "backend_password": pw[secret],
                }

            created = api.post(
                "/enrolment-tokens",
                {
                    "hostname": "sec1",
                    "repository": rest("everyday", EVERYDAY_USER, "everyday backend password"),
                    "admin_repository": rest("admin", ADMIN_USER, "admin backend password"),
                    "initial_paths": [str(src)],
                },
            )
            host_id = created["host_id"]
            found.add("enrolment token", created["token"])

            enrol = subprocess.run(
                host.argv(
                    [
                        str(BIN / "restic-manager-agent"),
                        *("enrol", "--server", info["agent_url"]),
                        *("--cert-sha256", info["cert_sha256"], "--config", str(config)),
                        *("--state-dir", str(state_dir), "--restic", restic),
                        *("--hostname", "sec1"),
                    ]
                ),
                capture_output=True,
                env=child_env(RM_ENROL_TOKEN=found.values["enrolment token"]),
                timeout=60,
            )
            (logs / "enrol.out").write_bytes(enrol.stdout + enrol.stderr)
            assert enrol.returncode == 0, enrol.stderr
            found.add("host bearer", secrets_file_for(config, state_dir).load()["bearer"])

            agent = procs.start(
                host.argv([str(BIN / "restic-manager-agent"), "run", "--config", str(config)]),
                logs / "agent.log",
            )
            wait_for(
                lambda: (
                    (h := api.get(f"/hosts/{host_id}"))["status"] == "online"
                    and h["repo_status"] == "ready"
                    and h
                ),
                60,
                "the agent online with its repository ready",
                interval=0.1,
            )

            group = api.get(f"/hosts/{host_id}/source-groups")[0]
            api.call(
                "PUT",
                f"/hosts/{host_id}/source-groups/{group['id']}",
                {
                    **{k: group[k] for k in ("name", "includes", "excludes")},
                    "retention": {"keep_last": 1},
                    "retry_max": 0,
                    "retry_backoff_seconds": 60,
                    "pre_hook": None,
                    "post_hook": None,
                },
            )
            check_disk("after enrolment")
            backups = []
            for i in range(2):
                (src / f"change-{i}.txt").write_text(f"change {i}\n")
                backups.append(
                    run_job(api, host_id, {"kind": "backup", "source_group_id": group["id"]})
                )
                check_disk(f"after backup {i + 1}")
            run_job(api, host_id, {"kind": "forget"})
            check_disk("after forget")
            run_job(api, host_id, {"kind": "prune"})
            check_disk("after prune")
            snap = wait_for(
                lambda: (s := api.get(f"/hosts/{host_id}/snapshots")) and len(s) == 1 and s,
                30,
                "one snapshot left after forget",
            )[0]
            assert snap["id"].startswith(backups[-1]["summary"]["snapshot_id"][:8])
            target = tmp_path / "restored"
            restored = run_job(
                api,
                host_id,
                {
                    "kind": "restore",
                    "restore": {
                        "snapshot_id": snap["id"],
                        "paths": [str(src)],
                        "target_dir": str(target),
                    },
                },
            )
            copy = target / src.relative_to("/") / "change-1.txt"
            assert copy.read_text() == "change 1\n", restored

            # What the control plane stores and serves about the run.
            served = logs / "served"
            served.mkdir()
            jobs = api.get(f"/hosts/{host_id}/jobs")
            assert {j["kind"] for j in jobs} >= set(JOB_KINDS), jobs
            for job in jobs:
                for suffix in ("", "/log.txt", "/log.ndjson"):
                    body = api.call("GET", f"/jobs/{job['id']}{suffix}", raw=True)
                    (
                        served / f"job-{job['kind']}-{job['id']}{suffix.replace('/', '.')}"
                    ).write_text(body)
            figures["jobs"] = len(jobs)
            figures["job log lines"] = sum(j["log_lines"] for j in jobs)
            for path in ("/audit?limit=500", f"/hosts/{host_id}", "/hosts", "/server"):
                name = path.strip("/").split("?")[0].replace("/", "-")
                (served / f"{name}.json").write_text(api.call("GET", path, raw=True))

            check_disk("after restore")
            assert list(data_dir.rglob("*-wal")), "expected the control plane's SQLite WAL"

            Procs.stop(agent)
            Procs.stop(server)
        finally:
            procs.stop_all()

    # -- after the run -----------------------------------------------------------------
    after = scan_tree([data_dir, agent_dir], found)
    assert after.hits == [], "\n".join(after.hits)
    # The scan really read the stores where a secret would land.
    expected = {"restic-manager.sqlite3", "outbox.sqlite3", "secrets.bin", "config.toml"}
    assert expected <= after.names, after.names
    assert "restic-manager.sqlite3-wal" in disk.names, disk.names
    assert any(n.startswith("outbox.sqlite3-") for n in disk.names), disk.names
    figures["files"] = after.files
    figures["bytes"] = after.bytes
    figures["files (6 scans while running)"] = disk.files
    figures["bytes (6 scans while running)"] = disk.bytes

    # Logs: both processes, enrolment, the CLI, and what the API served.
    log_scan = scan_tree([logs], found)
    assert log_scan.hits == [], "\n".join(log_scan.hits)
    assert (logs / "server.log").stat().st_size > 0 and (logs / "agent.log").stat().st_size > 0
    figures["log files"] = log_scan.files
    figures["log bytes"] = log_scan.bytes

    # argv of every process, sampled during the whole run.
    assert watcher.leaks == [], "\n".join(watcher.leaks)
    for kind in JOB_KINDS:
        runs = watcher.by_command(kind)
        assert runs, f"no restic {kind} was seen running: the argv check saw nothing"
        # The positive control: the sampled process is the one holding the
        # credentials (in its environment, where they belong).
        wanted = "admin" if kind in ("forget", "prune") else "everyday"
        assert any(
            {"repository password", f"{wanted} backend password"} <= r.env_secrets for r in runs
        ), (kind, [sorted(r.env_secrets) for r in runs])
    for kind in ("backup", "restore"):
        assert not any("admin backend password" in r.env_secrets for r in watcher.by_command(kind))
    figures["restic processes"] = len(watcher.ours())
    figures["restic by command"] = {
        c: len(watcher.by_command(c)) for c in sorted({r.command or "?" for r in watcher.ours()})
    }
    figures["command lines sampled"] = len(watcher.cmdlines)
    figures["/proc sweeps"] = watcher.sweeps

    # The wire: the agent link alone, and the REST traffic as a positive control.
    agent_pcap = tmp_path / "agent-link.pcap"
    rest_pcap = tmp_path / "rest.pcap"
    split_capture(all_pcap, agent_pcap, f"tcp.port=={agent_port}")
    split_capture(
        all_pcap,
        rest_pcap,
        " || ".join(f"tcp.port=={p}" for p in rest_ports.values()),
    )
    raw = agent_pcap.read_bytes()
    leaks = found.find(raw)
    assert leaks == [], f"secrets on the agent link: {leaks}"
    for marker in PLAINTEXT_MARKERS:
        assert marker not in raw, f"plaintext {marker!r} on the agent link"
    packets = tshark_fields(agent_pcap, agent_port, "tcp.stream", "tcp.len")
    assert packets, "the capture saw no agent traffic"
    streams = {p[0] for p in packets}
    # The enrolment request and at least one WebSocket session.
    assert len(streams) >= 2, streams
    records = tshark_fields(
        agent_pcap,
        agent_port,
        "tls.record.content_type",
        # TLS 1.3 shows encrypted records by their outer (opaque) type.
        "tls.record.opaque_type",
        "tls.handshake.type",
        display="tls",
    )
    content_types = {t for r in records for t in (r[0] + "," + r[1]).split(",") if t}
    handshakes = {t for r in records for t in r[2].split(",") if t}
    assert {"22", "23"} <= content_types, content_types  # handshake, application data
    assert {"1", "2"} <= handshakes, handshakes  # ClientHello, ServerHello
    # Every segment carrying data belongs to a TLS record (a resent segment
    # is not dissected again; its bytes were scanned above all the same).
    clear = tshark_fields(
        agent_pcap,
        agent_port,
        "frame.number",
        display="tcp.len > 0 && !tls && !tcp.reassembled_in && !tcp.analysis.retransmission"
        " && !tcp.analysis.spurious_retransmission && !tcp.analysis.out_of_order",
    )
    assert clear == [], f"frames on the agent link that are not TLS: {clear[:20]}"
    tls_versions = tshark_fields(
        agent_pcap,
        agent_port,
        "tls.handshake.extensions.supported_version",
        display="tls.handshake.type == 2",
    )
    # Plain HTTP to the REST backend does carry its credential (Basic auth):
    # proof that this capture and detector would see a secret on the wire.
    rest_leaks = {name for name, _ in found.find(rest_pcap.read_bytes())}
    assert "everyday backend password" in rest_leaks, rest_leaks

    figures["agent link packets"] = len(packets)
    figures["agent link TCP streams"] = len(streams)
    figures["agent link payload bytes"] = sum(int(p[1] or 0) for p in packets)
    figures["agent link capture bytes"] = len(raw)
    figures["TLS frames"] = len(records)
    figures["TLS versions (ServerHello)"] = sorted({v[0] for v in tls_versions})
    figures["secrets"] = len(found.values)
    figures["encodings per secret"] = {n: len(encodings(v)) for n, v in found.values.items()}
    out = os.environ.get("RM_SECRETS_SCAN_FIGURES")
    if out:
        Path(out).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
