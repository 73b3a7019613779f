"""installers/install.sh, run for real as root on a separate "host".

The host is a network namespace whose only route is to the control plane's
agent listener (conftest.py's ``remote`` fixture: ``restic-manager serve`` with the
built agent bundled) plus a private mount namespace whose /etc, /usr/local,
/var/lib and /var/spool are overlays (tests/helpers/sandbox_host.py): the
installer writes to its real default paths, and the overlays' upper
directories show exactly what it wrote.

There is no systemd in the namespace. The install goes through install.sh's
systemd path with a ``systemctl`` test double on PATH (it records its calls
and runs the unit's ExecStart in the background) and a ``/run/systemd/system``
marker; the ``--no-systemd`` path is covered by the offline bundle test. The
command run is exactly the Linux install command the API returns.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet import make_tree, wait_for
from tests.helpers.sandbox_host import SandboxHost, sandbox_host
from tests.integration.conftest import Remote

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = ROOT / "installers" / "install.sh"
UNIT = "restic-manager-agent"
CONFIG = "/etc/restic-manager-agent/config.toml"
STATE = "/var/lib/restic-manager-agent"
BIN = "/usr/local/lib/restic-manager-agent/restic-manager-agent"

# A restic job the operator already had: reported, never touched.
CRON_JOB = "# nightly backup\n30 1 * * * root restic -r /srv/repo backup /home >/dev/null\n"
TIMER_LINE = (
    "Thu 2026-01-01 03:00:00 UTC 5h left Wed 2025-12-31 03:00:00 UTC 19h ago "
    "restic-backup.timer restic-backup.service\n"
)


def _new_host(remote: Remote, tmp: Path, name: str) -> dict[str, Any]:
    source = make_tree(tmp / f"src-{name}", files=12, size=10_000)
    created: dict[str, Any] = remote.api.post(
        "/enrolment-tokens",
        {
            "hostname": name,
            "repository": {
                "url": str(tmp / f"repo-{name}"),
                "password": "pw-" + secrets.token_hex(8),
            },
            "initial_paths": [str(source)],
        },
    )
    created["source"] = source
    return created


def _token_state(remote: Remote, host_id: int, token_id: int | None = None) -> str:
    tokens = remote.api.get(f"/hosts/{host_id}/enrolment-tokens")
    if token_id is None:
        return str(tokens[0]["state"])
    return str(next(t["state"] for t in tokens if t["id"] == token_id))


def _snapshot(host: SandboxHost) -> dict[str, tuple[int, int, str]]:
    """(mode, mtime_ns, sha256) of everything the host has written."""
    seen = {}
    for path in sorted(host.written()):
        real = host.path(path)
        st = real.lstat()
        digest = hashlib.sha256(real.read_bytes()).hexdigest() if real.is_file() else ""
        seen[path] = (st.st_mode, st.st_mtime_ns, digest)
    return seen


def _wrong(pin: str) -> str:
    return ("0" if pin[0] != "0" else "1") + pin[1:]


@pytest.fixture
def fresh_host(remote: Remote, tmp_path: Path) -> Iterator[SandboxHost]:
    with sandbox_host(
        tmp_path / "host",
        remote.host,
        fake_systemd=True,
        files={"/etc/cron.d/restic-nightly": CRON_JOB},
    ) as host:
        (host.systemd_dir / "timers").write_text(TIMER_LINE)
        yield host


def test_the_install_command_installs_enrols_starts_and_backs_up(
    built_agent: Path,
    remote: Remote,
    fresh_host: SandboxHost,
    tmp_path: Path,
):
    host = fresh_host
    created = _new_host(remote, tmp_path, "inst1")
    command = created["install_command"]
    assert command.startswith("sudo sh -c ") and "install.sh" in command

    done = host.run(command, timeout=90)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "the server's certificate matches the pin" in out
    assert "Enrolled as host 'inst1'" in out
    assert "the service restic-manager-agent is running" in out

    # What it wrote, and nothing else.
    assert host.written() >= {
        CONFIG,
        CONFIG + ".key",
        STATE,
        STATE + "/secrets.bin",
        BIN,
        "/usr/local/lib/restic-manager-agent/uninstall.sh",
        "/usr/local/bin/restic-manager-agent",
        "/etc/systemd/system/restic-manager-agent.service",
    }
    allowed = ("/etc/restic-manager-agent", "/var/lib/restic-manager-agent", "/usr/local/")
    allowed_exact = {"/etc/systemd", "/etc/systemd/system", "/etc/cron.d"}
    stray = [
        p
        for p in host.written()
        if not p.startswith(allowed)
        and p not in allowed_exact
        and p != "/etc/cron.d/restic-nightly"
        and p != "/etc/systemd/system/restic-manager-agent.service"
    ]
    assert stray == []
    for directory in ("/etc/restic-manager-agent", STATE):
        assert host.path(directory).stat().st_mode & 0o777 == 0o700, directory
    for secret in (CONFIG, CONFIG + ".key", STATE + "/secrets.bin"):
        assert host.path(secret).stat().st_mode & 0o777 == 0o600, secret
    assert host.path(BIN).stat().st_mode & 0o777 == 0o755
    assert (
        hashlib.sha256(host.path(BIN).read_bytes()).digest()
        == hashlib.sha256(built_agent.read_bytes()).digest()
    )
    assert (host.upper / "usr/local/bin/restic-manager-agent").readlink() == Path(BIN)

    # The hardened unit, installed as served, enabled and started.
    unit = host.path("/etc/systemd/system/restic-manager-agent.service").read_text()
    assert unit == (ROOT / "installers" / "restic-manager-agent.service").read_text()
    for line in (
        f"ExecStart={BIN} run --config {CONFIG}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "Restart=always",
        "ReadWritePaths=/var/lib/restic-manager-agent /usr/local/lib/restic-manager-agent",
    ):
        assert line in unit.splitlines(), line
    calls = host.systemctl_calls()
    assert calls[:4] == [
        "daemon-reload",
        f"enable {UNIT}.service",
        f"restart {UNIT}.service",
        f"is-active --quiet {UNIT}.service",
    ], calls

    # The existing restic jobs are listed with how to disable them, and left alone.
    assert "/etc/cron.d/restic-nightly" in out and "30 1 * * * root restic" in out
    assert "systemctl disable --now restic-backup.timer" in out
    assert host.path("/etc/cron.d/restic-nightly").read_text() == CRON_JOB
    assert not any(c.startswith(("disable", "stop", "mask")) for c in calls), calls

    # The agent the double started connects from the other "host" and backs up.
    api, host_id = remote.api, created["host_id"]
    view = wait_for(
        lambda: (
            (h := api.get(f"/hosts/{host_id}"))["status"] == "online"
            and h["repo_status"] != "unknown"
            and h
        ),
        40,
        "the installed agent to connect and probe its repository",
    )
    assert view["repo_status"] == "ready", view
    group = api.get(f"/hosts/{host_id}/source-groups")[0]
    job_id = api.post(f"/hosts/{host_id}/jobs", {"kind": "backup", "source_group_id": group["id"]})[
        "job_id"
    ]
    job = wait_for(
        lambda: (j := api.get(f"/jobs/{job_id}"))["status"] in ("succeeded", "failed") and j,
        40,
        "the backup",
    )
    log = (host.systemd_dir / f"{UNIT}.log").read_text()[-3000:]
    assert job["status"] == "succeeded", (job, log)
    assert job["summary"]["files_new"] == 12

    # Running the command again, even with a valid token of another host, is a no-op.
    before = _snapshot(host)
    other = _new_host(remote, tmp_path, "inst1-again")
    again = other["install_command"]
    second = host.run(again, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already enrolled" in second.stdout and "nothing was changed" in second.stdout
    assert "--force-reenrol" in second.stdout
    assert _snapshot(host) == before
    assert host.systemctl_calls()[len(calls) :] == ["list-timers --all --no-legend --plain"]
    assert _token_state(remote, other["host_id"]) == "active"  # never sent to the server
    assert api.get(f"/hosts/{host_id}")["status"] == "online"


def test_a_wrong_pin_aborts_before_anything_is_written(
    remote: Remote,
    fresh_host: SandboxHost,
    tmp_path: Path,
):
    host = fresh_host
    created = _new_host(remote, tmp_path, "inst-wrong-pin")
    words = shlex.split(created["install_command"])
    pin = words[words.index("--cert-sha256") + 1]
    assert pin == remote.cert_sha256
    words[words.index("--cert-sha256") + 1] = _wrong(pin)
    seeded = host.written()

    # The install command itself: it never fetches install.sh.
    bootstrap = host.run(shlex.join(words), timeout=60)
    assert bootstrap.returncode != 0
    assert "does not match --cert-sha256" in bootstrap.stderr
    assert "nothing was installed" in bootstrap.stderr

    # install.sh as the command would run it, with the wrong pin.
    direct = host.run(
        [
            "sh",
            str(INSTALL_SH),
            "--server",
            remote.agent_url,
            "--token",
            created["token"],
            "--cert-sha256",
            _wrong(pin),
        ],
        timeout=60,
    )
    assert direct.returncode == 1, direct.stdout + direct.stderr
    assert "does not match --cert-sha256" in direct.stderr
    assert f"presented {pin}" in direct.stderr
    assert "Nothing was changed" in direct.stderr

    # Nothing written: not the target dirs, not a temporary file, no service.
    assert host.written() == seeded
    for path in (CONFIG, STATE, BIN, "/etc/systemd/system/restic-manager-agent.service"):
        assert not host.path(path).exists(), path
    assert list(host.tmpdir.iterdir()) == []
    assert host.systemctl_calls() == []
    # The token never left the host.
    assert _token_state(remote, created["host_id"]) == "active"


def test_install_sh_refuses_clearly_without_root_or_systemd(
    remote: Remote,
    tmp_path: Path,
):
    with sandbox_host(tmp_path / "host", remote.host, fake_systemd=False) as host:
        created = _new_host(remote, tmp_path, "inst-no-systemd")
        args = [
            "--server",
            remote.agent_url,
            "--token",
            created["token"],
            "--cert-sha256",
            remote.cert_sha256,
        ]
        no_systemd = host.run(["sh", str(INSTALL_SH), *args], timeout=60)
        assert no_systemd.returncode == 1
        assert "systemd is not running" in no_systemd.stderr
        assert "--no-systemd" in no_systemd.stderr
        not_root = host.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                str(INSTALL_SH),
                *args,
            ],
            timeout=30,
        )
        assert not_root.returncode == 1 and "run this as root" in not_root.stderr
        usage = host.run(
            [
                "sh",
                str(INSTALL_SH),
                "--server",
                "http://x:1",
                "--token",
                "t",
                "--cert-sha256",
                "ab",
            ],
            timeout=30,
        )
        assert usage.returncode == 2 and "https://HOST:PORT" in usage.stderr
        assert host.written() == set()
        assert _token_state(remote, created["host_id"]) == "active"


def test_force_reenrol_keeps_the_old_enrolment_until_the_new_one_works(
    remote: Remote,
    fresh_host: SandboxHost,
    tmp_path: Path,
):
    host = fresh_host
    first = _new_host(remote, tmp_path, "inst-force-a")
    assert host.run(first["install_command"], timeout=90).returncode == 0
    api = remote.api
    wait_for(lambda: api.get(f"/hosts/{first['host_id']}")["status"] == "online", 30, "online")
    old_config = host.path(CONFIG).read_text()

    # A token that fails: the previous enrolment is put back and its agent restarted.
    second = _new_host(remote, tmp_path, "inst-force-b")
    token_id = api.get(f"/hosts/{second['host_id']}/enrolment-tokens")[0]["id"]
    api.call("DELETE", f"/enrolment-tokens/{token_id}")
    failed = host.run(second["install_command"] + " --force-reenrol", timeout=90)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "token revoked" in failed.stderr
    assert "the previous enrolment" in failed.stdout and "was put back" in failed.stdout
    assert host.path(CONFIG).read_text() == old_config
    assert host.service_pid(UNIT) is not None
    wait_for(lambda: api.get(f"/hosts/{first['host_id']}")["status"] == "online", 30, "back")

    # A good token: enrolled as the other host, the old files kept aside.
    third = _new_host(remote, tmp_path, "inst-force-c")
    done = host.run(third["install_command"] + " --force-reenrol", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enrolling it again" in done.stdout and "Enrolled as host 'inst-force-c'" in done.stdout
    assert f"host_id = {third['host_id']}" in host.path(CONFIG).read_text()
    aside = [p for p in host.written() if "/etc/restic-manager-agent/.previous-" in p]
    assert any(p.endswith("/config") for p in aside), aside
    wait_for(lambda: api.get(f"/hosts/{third['host_id']}")["status"] == "online", 30, "new host")
    wait_for(lambda: api.get(f"/hosts/{first['host_id']}")["status"] == "offline", 30, "old off")
