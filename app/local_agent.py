"""An agent on this computer, for the user of the desktop app ("Add this computer").

The app is not always running (DESIGN.md principle 1), so the agent it sets
up here must outlive it. Two ways, best first:

- **systemd user service** (Linux with a reachable ``systemctl --user``):
  ``~/.config/systemd/user/restic-manager-agent.service``, enabled and
  started; systemd restarts it and starts it at login.
- **detached process + XDG autostart** (Linux without a systemd user
  session): a small start script, run in a new session so it survives the
  app, logging into the state dir, plus an autostart entry that runs the
  same script at the next login. ``flock`` keeps it to one agent even when
  the one started here is still running at the next login.

Anything else (Windows, macOS) gets an explanation and the normal Add host
install commands.

The agent keeps its config (and the key of its secrets file) in
``<user data dir>/restic-manager-agent`` and its state in ``…/state``; both
directories are 0700 and the agent writes its files 0600 itself.

No Qt here. The dialog (``ui_qt.add_this_computer``) drives ``LocalAgent``
through its ``LocalAgentLauncher`` protocol; every blocking step (systemctl,
starting a process, writing files, the enrolment's own event loop) runs in a
worker thread so the app's loop never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import agent
from agent import cli as agent_cli
from agent import platform_info
from agent.config import ensure_private_dir
from server_core.errors import InvalidInput
from server_core.services.enrolment import AgentEndpoint

if TYPE_CHECKING:
    from server_core.control_plane import ControlPlane

Mode = Literal["systemd-user", "detached", "unsupported"]
SYSTEMD: Mode = "systemd-user"
DETACHED: Mode = "detached"
UNSUPPORTED: Mode = "unsupported"

APP_DIR_NAME = "restic-manager-agent"
UNIT_NAME = "restic-manager-agent.service"
AUTOSTART_NAME = "restic-manager-agent.desktop"
START_SCRIPT_NAME = "start-agent.sh"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "enrolling-hosts.md"

# What `systemctl --user is-system-running` prints when a user manager answers
# (degraded: some unit failed, the manager itself works).
USABLE_MANAGER_STATES = frozenset({"running", "degraded", "starting", "initializing"})
# The start script's exit status when another agent holds the lock (EX_TEMPFAIL).
LOCK_CONFLICT_EXIT = 75
# The log is moved aside at start once it is this big (one old copy is kept).
LOG_ROTATE_BYTES = 10 * 1024 * 1024
SYSTEMCTL_TIMEOUT_S = 30.0
# A detached agent that dies this soon after starting is reported as failed.
START_SETTLE_S = 2.0
STOP_GRACE_S = 10.0


class LocalAgentError(Exception):
    """A step failed; ``str()`` says what went wrong and what to do."""


# -- where things go --------------------------------------------------------------


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _xdg(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name)
    # The XDG spec: a relative value is invalid and must be ignored.
    return Path(value) if value and os.path.isabs(value) else default


def user_data_dir(env: Mapping[str, str], platform: str) -> Path:
    """The per-user data location (as ``app.paths.default_data_dir`` picks it)."""
    if platform == "win32":
        return Path(env.get("LOCALAPPDATA") or _home(env) / "AppData" / "Local")
    if platform == "darwin":
        return _home(env) / "Library" / "Application Support"
    return _xdg(env, "XDG_DATA_HOME", _home(env) / ".local" / "share")


def user_config_dir(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", _home(env) / ".config")


def unit_path(env: Mapping[str, str]) -> Path:
    return user_config_dir(env) / "systemd" / "user" / UNIT_NAME


def autostart_path(env: Mapping[str, str]) -> Path:
    return user_config_dir(env) / "autostart" / AUTOSTART_NAME


@dataclass(frozen=True)
class AgentPaths:
    """The local agent's files: config (+ secrets key) in ``base``, state below it."""

    base: Path
    config: Path
    state_dir: Path
    log: Path
    pid_file: Path
    lock_file: Path
    start_script: Path

    @classmethod
    def under(cls, base: Path) -> AgentPaths:
        state = base / "state"
        return cls(
            base=base,
            config=base / "config.toml",
            state_dir=state,
            log=state / "agent.log",
            pid_file=state / "agent.pid",
            lock_file=state / "agent.lock",
            start_script=base / START_SCRIPT_NAME,
        )


def default_agent_paths(env: Mapping[str, str], platform: str) -> AgentPaths:
    return AgentPaths.under(user_data_dir(env, platform) / APP_DIR_NAME)


# -- which agent to run ---------------------------------------------------------------


@dataclass(frozen=True)
class AgentCommand:
    """How to start the agent: argv before ``run``/``enrol``, plus environment it needs."""

    argv: tuple[str, ...]
    origin: Literal["bundled", "path", "python"]
    env: tuple[tuple[str, str], ...] = ()


def resolve_agent_command(
    *,
    frozen: bool | None = None,
    executable: str | None = None,
    search_path: str | None = None,
) -> AgentCommand:
    """The agent binary shipped next to a packaged app, else ``restic-manager-agent``
    on PATH, else this interpreter's ``-m agent`` (a dev checkout or venv)."""
    exe = Path(executable or sys.executable)
    is_frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    if is_frozen:
        for name in ("restic-manager-agent", "restic-manager-agent.exe"):
            bundled = exe.parent / name
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return AgentCommand((str(bundled),), "bundled")
    found = shutil.which("restic-manager-agent", path=search_path)
    if found:
        return AgentCommand((os.path.abspath(found),), "path")
    # A service starts in another directory: say where the package is, so a
    # checkout that is not pip-installed still imports.
    package_root = str(Path(agent.__file__).resolve().parent.parent)
    return AgentCommand((str(exe), "-m", "agent"), "python", (("PYTHONPATH", package_root),))


def local_server_url(listen_host: str, port: int) -> str:
    """How an agent on this machine reaches the agent listener: loopback when it
    listens on every address, else the address it listens on."""
    if listen_host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif listen_host == "::":
        host = "[::1]"
    elif ":" in listen_host:
        host = f"[{listen_host}]"
    else:
        host = listen_host
    return f"https://{host}:{port}"


# -- what the folders mean ----------------------------------------------------------------

_GLOB_CHARS = re.compile(r"([*?\[\\])")


@dataclass(frozen=True)
class FolderPlan:
    """A checked choice of repository folder and what to back up."""

    repository: Path
    sources: tuple[str, ...]
    # The repository where it lies inside a source, as restic sees it there.
    excludes: tuple[str, ...]
    existing_repository: bool


def _expand(text: str, home: Path) -> str:
    if text == "~" or text.startswith("~/"):
        return str(home) + text[1:]
    return text


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def exclude_pattern(path: str) -> str:
    """A restic ``--exclude`` that matches exactly ``path`` (glob characters escaped)."""
    return _GLOB_CHARS.sub(r"\\\1", path)


def plan_folders(repository: str, sources: Sequence[str], *, home: Path) -> FolderPlan:
    """Check the repository folder and the folders to back up; raises InvalidInput
    (field ``repository`` or ``sources``) with a message that says what to change."""
    text = repository.strip()
    if not text:
        raise InvalidInput("Choose a folder for the repository.", field="repository")
    text = _expand(text, home)
    if not os.path.isabs(text):
        raise InvalidInput(
            f"The repository folder must be an absolute path (like {home / 'restic-backups'}).",
            field="repository",
        )
    repo = Path(os.path.normpath(text))
    existing = False
    if repo.exists():
        if not repo.is_dir():
            raise InvalidInput(f"{repo} is a file, not a folder.", field="repository")
        if not os.access(repo, os.W_OK | os.X_OK):
            raise InvalidInput(
                f"You cannot write to {repo}; choose a folder of your own.", field="repository"
            )
        existing = (repo / "config").is_file() and (repo / "keys").is_dir()
        if not existing and any(repo.iterdir()):
            raise InvalidInput(
                f"{repo} is not empty and is not a restic repository; choose an empty or "
                "new folder (or an existing repository).",
                field="repository",
            )
    else:
        parent = repo.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidInput(
                f"{repo} cannot be created: you cannot write to {parent}.", field="repository"
            )

    chosen: list[str] = []
    for line in sources:
        item = _expand(line.strip(), home)
        if not item:
            continue
        if not os.path.isabs(item):
            raise InvalidInput(
                f"{item!r} is not an absolute path; give folders like {home}.", field="sources"
            )
        item = os.path.normpath(item)
        if not os.path.exists(item):
            raise InvalidInput(f"{item} does not exist.", field="sources")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise InvalidInput("Choose at least one folder to back up.", field="sources")

    real_repo = Path(os.path.realpath(repo))
    excludes: list[str] = []
    for item in chosen:
        real = Path(os.path.realpath(item))
        if real == real_repo:
            raise InvalidInput(
                f"{item} is the repository folder itself; back up something else.",
                field="sources",
            )
        if _inside(real, real_repo):
            raise InvalidInput(
                f"{item} is inside the repository folder {repo}; a repository cannot hold "
                "what it backs up.",
                field="sources",
            )
        if _inside(real_repo, real):
            # As restic walks it: the source path, not the resolved one.
            seen = os.path.join(item, str(real_repo.relative_to(real)))
            pattern = exclude_pattern(seen)
            if pattern not in excludes:
                excludes.append(pattern)
    return FolderPlan(
        repository=repo,
        sources=tuple(chosen),
        excludes=tuple(excludes),
        existing_repository=existing,
    )


# -- how it can run in the background -----------------------------------------------------


@dataclass(frozen=True)
class ServicePlan:
    """How the agent will be kept running here, in words for the operator."""

    mode: Mode
    summary: str
    details: str
    # What was asked of the system and what it answered.
    probe: str = ""


def _docs_hint() -> str:
    return f"see {DOCS}" if DOCS.exists() else "see docs/enrolling-hosts.md"


def _fallback_plan(reason: str, probe: str) -> ServicePlan:
    return ServicePlan(
        mode=DETACHED,
        summary=f"No systemd user session here: {reason}.",
        details=(
            "The agent will run as a background process that keeps running (and backing "
            "up) when you close restic-manager, and an autostart entry starts it again "
            "when you log in to your desktop. The trade-off: unlike a service, nothing "
            "restarts it if it stops, and it does not run while you are logged out. To "
            "run it as a system service instead, use Add host and run the install "
            f"command as root ({_docs_hint()})."
        ),
        probe=probe,
    )


def detect_service(*, platform: str, env: Mapping[str, str], timeout: float = 5.0) -> ServicePlan:
    """Can a systemd user service run the agent? (blocking: call it in a thread)"""
    if not platform.startswith("linux"):
        name = {"win32": "Windows", "darwin": "macOS"}.get(platform, platform)
        return ServicePlan(
            mode=UNSUPPORTED,
            summary=f"Setting up this computer from here is not available on {name} yet.",
            details=(
                "Use Add host instead: it shows the command that installs the agent as a "
                f"service on this computer (run it as an administrator; {_docs_hint()})."
            ),
        )
    systemctl = shutil.which("systemctl", path=env.get("PATH"))
    if systemctl is None:
        return _fallback_plan("systemd is not installed (no systemctl)", "systemctl: not found")
    argv = [systemctl, "--user", "is-system-running"]
    try:
        done = subprocess.run(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _fallback_plan(
            f"`systemctl --user` did not answer within {timeout:.0f} s",
            "systemctl --user is-system-running: timed out",
        )
    except OSError as exc:
        return _fallback_plan(f"`systemctl --user` could not run ({exc})", f"systemctl: {exc}")
    state = (done.stdout.strip().splitlines() or [""])[0].strip()
    said = state or (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
    probe = f"systemctl --user is-system-running: {said}"
    if state in USABLE_MANAGER_STATES:
        return ServicePlan(
            mode=SYSTEMD,
            summary=f"The agent will run as a systemd user service ({UNIT_NAME}).",
            details=(
                "systemd starts it when you log in, restarts it if it stops, and it keeps "
                "backing up when restic-manager is closed. It stops when you log out unless "
                "lingering is on (loginctl enable-linger)."
            ),
            probe=probe,
        )
    return _fallback_plan(f"`systemctl --user` says “{said}”", probe)


# -- systemd user unit ----------------------------------------------------------------------


def _systemd_word(arg: str) -> str:
    """One ExecStart= word: specifiers and variables escaped, quoted when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_assignment(name: str, value: str) -> str:
    text = f"{name}={value}".replace("%", "%%")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_argv(command: AgentCommand, config: Path) -> list[str]:
    return [*command.argv, "run", "--config", str(config)]


def systemd_unit(command: AgentCommand, config: Path) -> str:
    """The user unit: the agent command only; its secrets stay in its encrypted file."""
    lines = [
        "# Written by restic-manager (Add this computer). No secrets here: the agent",
        "# keeps its token and repository credentials in its encrypted secrets file.",
        "[Unit]",
        "Description=restic-manager agent (backs up this computer)",
        # Keep restarting however often it fails: a backup agent that gave up is silent.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_systemd_word(a) for a in run_argv(command, config)),
        *(f"Environment={_systemd_assignment(k, v)}" for k, v in command.env),
        "Restart=always",
        "RestartSec=10",
        # Exit 2 is a configuration error: restarting repeats it and buries
        # the one line that says what to correct.
        "RestartPreventExitStatus=2",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- detached process + autostart -------------------------------------------------------------


def start_script(command: AgentCommand, paths: AgentPaths, *, flock: str | None = None) -> str:
    """``start-agent.sh``: one agent per config, output appended to the log.

    With ``flock`` a second start while one runs exits at once with status
    75; without it, the pid file (the running agent's cmdline must name
    this config) stands in for the lock."""
    q = shlex.quote
    agent_argv = " ".join(q(a) for a in run_argv(command, paths.config))
    lines = [
        "#!/bin/sh",
        "# Starts the restic-manager agent of this user; written by restic-manager",
        f"# (Add this computer). Run at login by the autostart entry {AUTOSTART_NAME}.",
        f"log={q(str(paths.log))}",
        f"pid={q(str(paths.pid_file))}",
        f"cfg={q(str(paths.config))}",
        f'if [ -f "$log" ] && [ "$(wc -c < "$log")" -gt {LOG_ROTATE_BYTES} ]; then',
        '    mv -f "$log" "$log.1"',
        "fi",
        *(f"export {name}={q(value)}" for name, value in command.env),
    ]
    # The pid written is the agent's own: `exec` keeps it.
    record = 'echo $$ > "$0"; exec "$@"'
    if flock:
        lines.append(
            f"exec {q(flock)} -n -E {LOCK_CONFLICT_EXIT} {q(str(paths.lock_file))} "
            f'/bin/sh -c {q(record)} "$pid" {agent_argv} >>"$log" 2>&1'
        )
    else:
        lines += [
            'if [ -r "$pid" ]; then',
            '    old=$(cat "$pid")',
            '    if [ -n "$old" ] && kill -0 "$old" 2>/dev/null \\',
            '        && tr "\\0" "\\n" < "/proc/$old/cmdline" 2>/dev/null | grep -qxF "$cfg"; then',
            f"        exit {LOCK_CONFLICT_EXIT}",
            "    fi",
            "fi",
            f'echo $$ > "$pid"; exec {agent_argv} >>"$log" 2>&1',
        ]
    return "\n".join(lines) + "\n"


def _desktop_quote(arg: str) -> str:
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`"):
        return arg
    return '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'


def autostart_entry(script: Path) -> str:
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            "Version=1.0",
            "Name=restic-manager agent",
            "Comment=Backs up this computer with restic (runs in the background)",
            f"Exec={_desktop_quote(str(script))}",
            "Terminal=false",
            "NoDisplay=true",
            "X-GNOME-Autostart-enabled=true",
            "",
        ]
    )


def running_agent_pid(paths: AgentPaths) -> int | None:
    """The pid in the pid file, if that process is an agent running this config."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # A recycled pid runs something else: it must be an agent `run` on this config.
    wanted = str(paths.config).encode()
    return pid if b"run" in argv and wanted in argv else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, not yet reaped) is as good as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def stop_detached(paths: AgentPaths, grace_s: float = STOP_GRACE_S) -> int | None:
    """Stop the agent the pid file names (only if it runs this config); its pid or None."""
    pid = running_agent_pid(paths)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolledAgent:
    host_id: int
    config: Path
    state_dir: Path


@dataclass(frozen=True)
class StartedAgent:
    mode: Mode
    description: str  # one sentence for the dialog
    log_hint: str  # where its output goes
    stop_hint: str  # how to stop it for good
    pid: int | None = None  # the detached agent's process id


# -- the launcher ------------------------------------------------------------------------------


class LocalAgent:
    """Enrols and starts the agent of this computer (ui_qt's LocalAgentLauncher)."""

    def __init__(
        self,
        *,
        endpoint: Callable[[], AgentEndpoint],
        env: Mapping[str, str] | None = None,
        platform: str | None = None,
        paths: AgentPaths | None = None,
        command: AgentCommand | None = None,
        restic: str | None = None,
        hostname: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._env = dict(os.environ if env is None else env)
        self._platform = sys.platform if platform is None else platform
        self.paths = paths or default_agent_paths(self._env, self._platform)
        self._command = command
        self._restic = restic
        self._hostname = platform_info.hostname(hostname)
        # Popen objects of detached agents: kept so they are not reported as leaked.
        self._children: list[subprocess.Popen[bytes]] = []

    @classmethod
    def for_control_plane(cls, cp: ControlPlane) -> LocalAgent:
        listen = cp.config.agent_listen.host
        return cls(
            endpoint=lambda: AgentEndpoint(
                local_server_url(listen, cp.agent_port), cp.certificate.sha256
            )
        )

    # -- what the dialog shows --------------------------------------------------

    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def home(self) -> Path:
        return _home(self._env)

    @property
    def suggested_repository(self) -> Path:
        return self.home / "restic-backups"

    @property
    def config_path(self) -> Path:
        return self.paths.config

    @property
    def docs(self) -> Path:
        return DOCS

    def command(self) -> AgentCommand:
        if self._command is None:
            self._command = resolve_agent_command(search_path=self._env.get("PATH"))
        return self._command

    # -- steps -------------------------------------------------------------------

    async def detect(self) -> ServicePlan:
        return await asyncio.to_thread(detect_service, platform=self._platform, env=self._env)

    async def check_folders(self, repository: str, sources: Sequence[str]) -> FolderPlan:
        return await asyncio.to_thread(plan_folders, repository, list(sources), home=self.home)

    async def enrol(self, token: str) -> EnrolledAgent:
        return await asyncio.to_thread(self._enrol, token)

    async def start(self, mode: str) -> StartedAgent:
        if mode == SYSTEMD:
            return await asyncio.to_thread(self._start_systemd)
        if mode == DETACHED:
            return await asyncio.to_thread(self._start_detached)
        raise LocalAgentError(
            "This computer cannot run the agent in the background from here; use Add host "
            "and run its install command instead."
        )

    async def stop_detached(self) -> int | None:
        """Stop a detached agent started for this config (tests, switching to systemd)."""
        return await asyncio.to_thread(stop_detached, self.paths)

    # -- blocking parts (worker thread) ---------------------------------------------

    def _enrol(self, token: str) -> EnrolledAgent:
        restic = self._restic or shutil.which("restic", path=self._env.get("PATH"))
        if restic is None:
            # The repository probe right after enrolment would fail anyway.
            raise LocalAgentError(
                "restic is not installed on this computer (not found in PATH): install it "
                "(e.g. `sudo apt install restic`) and try again"
            )
        endpoint = self._endpoint()
        paths = self.paths
        ensure_private_dir(paths.base)
        ensure_private_dir(paths.state_dir)
        argv = [
            "enrol",
            "--server",
            endpoint.server_url,
            "--token",
            token,
            "--cert-sha256",
            endpoint.cert_sha256,
            "--config",
            str(paths.config),
            "--state-dir",
            str(paths.state_dir),
            "--hostname",
            self.hostname,
        ]
        # Absolute: a service does not get the PATH of this session.
        argv += ["--restic", os.path.abspath(restic)]
        # The agent's own enrol command, run here rather than as a process: the
        # one-time token never appears in a command line other users can read.
        out, err = io.StringIO(), io.StringIO()
        code = agent_cli.main(argv, stdout=out, stderr=err)
        if code != 0:
            message = err.getvalue().strip().splitlines()
            text = message[-1] if message else f"exit status {code}"
            raise LocalAgentError(text.removeprefix(f"{agent_cli.PROG}: error: "))
        host_id = 0
        match = re.search(r"\(id (\d+)\)", out.getvalue())
        if match:
            host_id = int(match.group(1))
        return EnrolledAgent(host_id=host_id, config=paths.config, state_dir=paths.state_dir)

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        systemctl = shutil.which("systemctl", path=self._env.get("PATH"))
        if systemctl is None:
            raise LocalAgentError("systemctl is not installed: the service cannot be set up")
        try:
            return subprocess.run(
                [systemctl, "--user", *args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalAgentError(f"`systemctl --user {' '.join(args)}` failed: {exc}") from exc

    def _checked(self, *args: str) -> None:
        done = self._systemctl(*args)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise LocalAgentError(
                f"`systemctl --user {' '.join(args)}` failed: {said}. See "
                f"`systemctl --user status {UNIT_NAME}` and `journalctl --user -u "
                f"{UNIT_NAME}`."
            )

    def _start_systemd(self) -> StartedAgent:
        unit = unit_path(self._env)
        try:
            _write_atomic(unit, systemd_unit(self.command(), self.paths.config), 0o644)
        except OSError as exc:
            raise LocalAgentError(f"Cannot write {unit}: {exc}") from exc
        # A fallback agent from an earlier setup must not run beside the service.
        stop_detached(self.paths)
        with contextlib.suppress(FileNotFoundError):
            autostart_path(self._env).unlink()
        self._checked("daemon-reload")
        active = self._systemctl("is-active", UNIT_NAME).stdout.strip() == "active"
        if active:
            # Running with an older config: `enable --now` would leave it so.
            self._checked("enable", UNIT_NAME)
            self._checked("restart", UNIT_NAME)
        else:
            self._checked("enable", "--now", UNIT_NAME)
        return StartedAgent(
            mode=SYSTEMD,
            description=f"Started the systemd user service {UNIT_NAME} ({unit}).",
            log_hint=f"journalctl --user -u {UNIT_NAME}",
            stop_hint=f"systemctl --user disable --now {UNIT_NAME}",
        )

    def _agent_env(self) -> dict[str, str]:
        # Not the app's restic settings: the agent passes restic what it needs.
        return {k: v for k, v in self._env.items() if not k.startswith("RESTIC_")}

    def _start_detached(self) -> StartedAgent:
        paths = self.paths
        ensure_private_dir(paths.base)
        ensure_private_dir(paths.state_dir)
        stop_detached(paths)
        flock = shutil.which("flock", path=self._env.get("PATH"))
        entry = autostart_path(self._env)
        try:
            _write_atomic(
                paths.start_script, start_script(self.command(), paths, flock=flock), 0o700
            )
            _write_atomic(entry, autostart_entry(paths.start_script), 0o644)
        except OSError as exc:
            raise LocalAgentError(f"Cannot write the agent's start files: {exc}") from exc
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file.unlink()
        try:
            proc = subprocess.Popen(
                [str(paths.start_script)],
                cwd=paths.state_dir,
                env=self._agent_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Its own session: no terminal hang-up or Ctrl+C of the app reaches it.
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise LocalAgentError(f"Cannot start {paths.start_script}: {exc}") from exc
        self._children.append(proc)
        deadline = time.monotonic() + START_SETTLE_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.returncode == LOCK_CONFLICT_EXIT:
            raise LocalAgentError(
                f"Another agent is already running with {paths.config}; stop it and try again."
            )
        if proc.returncode is not None:
            tail = _log_tail(paths.log)
            raise LocalAgentError(
                f"The agent stopped right after starting (exit status {proc.returncode})"
                + (f":\n{tail}" if tail else f"; see {paths.log}")
            )
        pid = running_agent_pid(paths)
        return StartedAgent(
            mode=DETACHED,
            description=(
                f"Started the agent in the background (process {pid or proc.pid}); it keeps "
                f"running when you quit restic-manager, and {entry} starts it at login."
            ),
            log_hint=str(paths.log),
            stop_hint=f"remove {entry} and stop process {pid or proc.pid}",
            pid=pid,
        )
