"""A throw-away Linux "host" for running installers for real as root.

It runs in a network namespace from ``tests.helpers.netns`` (the only route is
to the root side's veth address, where the control plane listens; no internet)
and in a private mount namespace in which ``/etc``, ``/usr/local``, ``/var/lib``
and ``/var/spool`` are overlays: an installer writes to its real default paths,
the machine's own files are untouched, and every file it wrote shows up in the
overlays' upper directories for the test to inspect (``written()``).

Optional parts:
- ``fake_systemd``: a tmpfs ``/run`` with ``/run/systemd/system`` (what "systemd
  is running" looks like) and a ``systemctl`` test double on PATH that records
  its calls and runs a unit's ``ExecStart`` in the background (there is no real
  systemd in the namespace to start services);
- ``hide``: commands made absent (overlay whiteouts in ``/usr/bin`` and ``/bin``),
  e.g. curl and openssl for a host that has neither.

A ``sudo`` shim on PATH runs its arguments (the tests run as root; the install
command the app prints starts with sudo).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import netns

OVERLAID = ("/etc", "/usr/local", "/var/lib", "/var/spool")
READY = "sandbox-ready"

SYSTEMCTL_DOUBLE = r"""#!/bin/sh
# systemctl test double (tests/helpers/sandbox_host.py): records every call and
# runs a unit's ExecStart in the background; there is no systemd to do it.
dir="$FAKE_SYSTEMD_DIR"
printf '%s\n' "$*" >>"$dir/calls.log"
unit() { u=${1%.service}; printf '%s' "$u"; }
unit_file() { printf '/etc/systemd/system/%s.service' "$(unit "$1")"; }
pid_of() { cat "$dir/$(unit "$1").pid" 2>/dev/null; }
is_active() { p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
start() {
    is_active "$1" && return 0
    f=$(unit_file "$1")
    [ -f "$f" ] || { echo "Unit $1 not found." >&2; exit 5; }
    cmd=$(sed -n 's/^ExecStart=//p' "$f")
    setsid sh -c "exec $cmd" >>"$dir/$(unit "$1").log" 2>&1 </dev/null &
    echo $! >"$dir/$(unit "$1").pid"
}
stop() {
    p=$(pid_of "$1")
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null
    i=0
    while kill -0 "$p" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    rm -f "$dir/$(unit "$1").pid"
}
case $1 in
daemon-reload) ;;
enable) shift; now=0; [ "$1" = --now ] && { now=1; shift; }
    touch "$dir/$(unit "$1").enabled"; if [ $now = 1 ]; then start "$1"; fi ;;
disable) shift; now=0; [ "$1" = --now ] && { now=1; shift; }
    rm -f "$dir/$(unit "$1").enabled"; if [ $now = 1 ]; then stop "$1"; fi ;;
start) start "$2" ;;
stop) stop "$2" ;;
restart) stop "$2"; start "$2" ;;
is-active) shift; [ "$1" = --quiet ] && shift; is_active "$1" ;;
is-enabled) [ -f "$dir/$(unit "$2").enabled" ] ;;
cat) [ -f "$(unit_file "$2")" ] && cat "$(unit_file "$2")" ;;
list-timers) cat "$dir/timers" 2>/dev/null ;;
*) echo "systemctl double: unsupported: $*" >&2; exit 1 ;;
esac
"""

SUDO_SHIM = '#!/bin/sh\n# The tests run as root: sudo just runs the command.\nexec "$@"\n'


@dataclass
class SandboxHost:
    net: netns.NetnsHost
    root: Path  # upper/, work/, bin/, systemd/ live here
    anchor: subprocess.Popen[bytes]
    fake_systemd: bool

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def systemd_dir(self) -> Path:
        """The systemctl double's records: calls.log, <unit>.pid, <unit>.log, timers."""
        return self.root / "systemd"

    @property
    def tmpdir(self) -> Path:
        """TMPDIR of commands run here (not overlaid: the test can look into it)."""
        return self.root / "tmp"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": f"{self.root / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.tmpdir),
            "FAKE_SYSTEMD_DIR": str(self.systemd_dir),
        }
        env.update(extra or {})
        return env

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` inside this host's network and mount namespaces."""
        return ["nsenter", "-t", str(self.anchor.pid), "-m", "-n", "--", *command]

    def run(
        self,
        command: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        return subprocess.run(
            self.argv(argv),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def written(self) -> set[str]:
        """Every path created or changed in the overlaid trees, as seen on the host."""
        found: set[str] = set()
        for base in OVERLAID:
            top = self.upper / base.lstrip("/")
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    found.add("/" + str((Path(dirpath) / name).relative_to(self.upper)))
        return found

    def new_paths(self) -> set[str]:
        """What ``written()`` holds that did not exist before: not the copies
        overlayfs makes of an existing folder whose entries changed, even if
        every new entry was removed again."""
        return {p for p in self.written() if not os.path.lexists(p)}

    def path(self, host_path: str) -> Path:
        """Where a file the host wrote under an overlaid tree lies on this machine."""
        return self.upper / host_path.lstrip("/")

    def service_pid(self, unit: str) -> int | None:
        pid_file = self.systemd_dir / f"{unit}.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def systemctl_calls(self) -> list[str]:
        log = self.systemd_dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop_services(self) -> None:
        """End what the systemctl double started (by the pids it recorded)."""
        if not self.systemd_dir.is_dir():
            return
        for pid_file in self.systemd_dir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                _stop_pid(int(pid_file.read_text().strip()))


def _stop_pid(pid: int, timeout: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it is our child; otherwise init does.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _setup_script(root: Path, fake_systemd: bool, hide: Sequence[str]) -> str:
    lines = ["set -e"]
    # Files seeded into the upper dirs show up as the host's own (written before
    # the mount: overlayfs does not allow changing its layers while mounted).
    for base in OVERLAID:
        upper = root / "upper" / base.lstrip("/")
        work = root / "work" / base.lstrip("/")
        lines.append(f"mkdir -p {shlex.quote(str(upper))} {shlex.quote(str(work))}")
        lines.append(
            "mount -t overlay overlay -o "
            + shlex.quote(f"lowerdir={base},upperdir={upper},workdir={work}")
            + f" {base}"
        )
    if hide:
        for base in ("/usr/bin", "/bin"):
            if os.path.islink(base):
                continue  # merged /usr: /bin is /usr/bin
            upper = root / "hidden" / base.lstrip("/")
            work = root / "hidden-work" / base.lstrip("/")
            lines.append(f"mkdir -p {shlex.quote(str(upper))} {shlex.quote(str(work))}")
            for name in hide:
                lines.append(f"mknod {shlex.quote(str(upper / name))} c 0 0")
            lines.append(
                "mount -t overlay overlay -o "
                + shlex.quote(f"lowerdir={base},upperdir={upper},workdir={work}")
                + f" {base}"
            )
    lines.append("mount -t tmpfs -o mode=0755 tmpfs /run")
    if fake_systemd:
        lines.append("mkdir -p /run/systemd/system")
    lines.append(f"echo {READY}")
    lines.append("exec sleep 3600")
    return "\n".join(lines)


@contextlib.contextmanager
def sandbox_host(
    root: Path,
    net: netns.NetnsHost,
    *,
    fake_systemd: bool = False,
    hide: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
) -> Iterator[SandboxHost]:
    """A fresh host in the network namespace ``net`` (several may share one, one
    after the other); its services and mounts are gone on exit. ``files`` (path
    on the host → text) are there from the start, e.g. an existing crontab."""
    root.mkdir(parents=True, exist_ok=True)
    for host_path, text in (files or {}).items():
        if not host_path.startswith(tuple(base + "/" for base in OVERLAID)):
            raise ValueError(f"{host_path} is not under an overlaid tree {OVERLAID}")
        seeded = root / "upper" / host_path.lstrip("/")
        seeded.parent.mkdir(parents=True, exist_ok=True)
        seeded.write_text(text)
    (root / "tmp").mkdir(mode=0o700, exist_ok=True)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sudo").write_text(SUDO_SHIM)
    (bin_dir / "sudo").chmod(0o755)
    if fake_systemd:
        (root / "systemd").mkdir(exist_ok=True)
        (bin_dir / "systemctl").write_text(SYSTEMCTL_DOUBLE)
        (bin_dir / "systemctl").chmod(0o755)
    anchor = subprocess.Popen(
        net.argv(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                _setup_script(root, fake_systemd, hide),
            ]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    host = SandboxHost(net, root, anchor, fake_systemd)
    try:
        assert anchor.stdout is not None
        line = anchor.stdout.readline().decode().strip()
        if line != READY:
            anchor.kill()
            _, err = anchor.communicate(timeout=10)
            raise RuntimeError(f"could not set up the sandbox host: {err.decode()[-2000:]}")
        yield host
    finally:
        host.stop_services()
        if anchor.poll() is None:
            anchor.kill()
        anchor.wait(timeout=10)
