"""app.local_agent: which agent to run, folder checks, service detection, the
systemd user unit, and the detached start script run for real."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import local_agent as la
from server_core.errors import InvalidInput
from server_core.services.enrolment import AgentEndpoint

# -- a stand-in for systemctl ----------------------------------------------------------
#
# A MOCK, because this machine has no systemd user session (`systemctl --user`
# says "offline"; we run as root in a container), so the real unit cannot be
# loaded here. The fake records every argv, answers from answers.json, and with
# "launch" set it starts the unit's ExecStart= the way systemd would, so a test
# can prove the command in the unit really runs the agent.
FAKE_SYSTEMCTL = textwrap.dedent(
    """\
    #!{python}
    import json, os, shlex, subprocess, sys
    from pathlib import Path

    state = Path(os.environ["FAKE_SYSTEMCTL_DIR"])
    args = sys.argv[1:]
    with open(state / "calls.jsonl", "a") as f:
        f.write(json.dumps(args) + "\\n")
    answers_file = state / "answers.json"
    answers = json.loads(answers_file.read_text()) if answers_file.exists() else {{}}
    if args[:1] != ["--user"]:
        print("the fake systemctl only knows --user", file=sys.stderr)
        sys.exit(1)
    cmd = args[1:]
    if cmd == ["is-system-running"]:
        said = answers.get("is-system-running", "running")
        print(said)
        sys.exit(0 if said == "running" else 1)
    if cmd[:1] == ["is-active"]:
        said = answers.get("is-active", "inactive")
        print(said)
        sys.exit(0 if said == "active" else 3)
    if answers.get("fail") == cmd[0]:
        print("Failed to " + cmd[0] + " unit: Access denied", file=sys.stderr)
        sys.exit(1)
    if answers.get("launch") and (cmd[0] == "restart" or "--now" in cmd):
        unit = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / cmd[-1]
        lines = unit.read_text().splitlines()
        env = dict(os.environ)
        for line in lines:
            if line.startswith("Environment="):
                name, _, value = shlex.split(line[len("Environment="):])[0].partition("=")
                env[name] = value
        start = next(l for l in lines if l.startswith("ExecStart="))[len("ExecStart="):]
        log = open(state / "service.log", "ab")
        proc = subprocess.Popen(
            shlex.split(start), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        (state / "service.pid").write_text(str(proc.pid))
    sys.exit(0)
    """
)


def install_fake_systemctl(root: Path, **answers: object) -> tuple[Path, Path]:
    """A fake systemctl in ``root/bin``; returns (bin dir, its state dir)."""
    bindir, state = root / "bin", root / "systemctl-state"
    bindir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    script = bindir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(python=sys.executable))
    script.chmod(0o755)
    (state / "answers.json").write_text(json.dumps(answers))
    return bindir, state


def fake_calls(state: Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def user_env(tmp: Path, *, path_dirs: list[Path] | None = None, **extra: str) -> dict[str, str]:
    """An environment whose user dirs all live under ``tmp`` (nothing touches ~)."""
    dirs = [str(d) for d in (path_dirs or [])]
    env = {
        "HOME": str(tmp / "home"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "PATH": os.pathsep.join([*dirs, "/usr/local/bin", "/usr/bin", "/bin"]),
    }
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def no_endpoint() -> AgentEndpoint:
    raise AssertionError("these tests do not enrol")


# -- which agent -------------------------------------------------------------------------


def test_a_packaged_app_runs_the_agent_shipped_next_to_it(tmp_path: Path) -> None:
    app = tmp_path / "dist" / "restic-manager"
    app.parent.mkdir()
    app.write_text("")
    bundled = app.parent / "restic-manager-agent"
    bundled.write_text("#!/bin/sh\n")
    bundled.chmod(0o755)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "restic-manager-agent").write_text("#!/bin/sh\n")
    (on_path / "restic-manager-agent").chmod(0o755)

    got = la.resolve_agent_command(frozen=True, executable=str(app), search_path=str(on_path))
    assert got == la.AgentCommand((str(bundled),), "bundled")
    # Not packaged: the one on PATH.
    got = la.resolve_agent_command(frozen=False, executable=str(app), search_path=str(on_path))
    assert got == la.AgentCommand((str(on_path / "restic-manager-agent"),), "path")


def test_a_dev_checkout_runs_this_interpreter_with_the_package_on_its_path(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    got = la.resolve_agent_command(frozen=False, search_path=str(empty))
    assert got.argv == (sys.executable, "-m", "agent") and got.origin == "python"
    root = dict(got.env)["PYTHONPATH"]
    assert (Path(root) / "agent" / "__main__.py").is_file()
    # And that command really is the agent.
    out = subprocess.run(
        [*got.argv, "--version"],
        env={**os.environ, **dict(got.env)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.startswith("restic-manager-agent ")


def test_the_local_agent_reaches_the_listener_on_loopback() -> None:
    assert la.local_server_url("0.0.0.0", 8765) == "https://127.0.0.1:8765"
    assert la.local_server_url("", 8765) == "https://127.0.0.1:8765"
    assert la.local_server_url("::", 8765) == "https://[::1]:8765"
    assert la.local_server_url("10.0.0.5", 9000) == "https://10.0.0.5:9000"
    assert la.local_server_url("fd00::5", 9000) == "https://[fd00::5]:9000"


def test_agent_files_live_in_the_users_data_dir(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    paths = la.default_agent_paths(env, "linux")
    assert paths.base == tmp_path / "data" / "restic-manager-agent"
    assert paths.config.parent == paths.base and paths.state_dir == paths.base / "state"
    assert paths.log.parent == paths.state_dir
    # A relative XDG_DATA_HOME is ignored, as the spec says.
    env["XDG_DATA_HOME"] = "relative/dir"
    assert la.default_agent_paths(env, "linux").base == (
        tmp_path / "home" / ".local" / "share" / "restic-manager-agent"
    )
    win = la.default_agent_paths({"LOCALAPPDATA": r"C:\Users\me\AppData\Local"}, "win32")
    assert win.base.name == "restic-manager-agent"
    assert la.unit_path(user_env(tmp_path)) == (
        tmp_path / "config" / "systemd" / "user" / "restic-manager-agent.service"
    )


# -- folders ---------------------------------------------------------------------------------


def test_a_repository_inside_home_is_excluded_from_its_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    plan = la.plan_folders("~/restic-backups", ["~", "  ", str(home)], home=home)
    assert plan.repository == home / "restic-backups"
    assert plan.sources == (str(home),)  # blank lines dropped, duplicates merged
    assert plan.excludes == (str(home / "restic-backups"),)
    assert not plan.existing_repository
    # Outside the sources: nothing to exclude.
    other = la.plan_folders(str(tmp_path / "repo"), [str(home)], home=home)
    assert other.excludes == ()


def test_the_exclude_is_the_path_restic_walks_with_glob_characters_escaped(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real home"
    real.mkdir()
    link = tmp_path / "home"
    link.symlink_to(real)
    repo = real / "backups [restic]*"
    plan = la.plan_folders(str(repo), [str(link)], home=link)
    assert plan.excludes == (str(link / "backups \\[restic]\\*"),)


@pytest.mark.parametrize(
    ("repository", "sources", "field", "words"),
    [
        ("", ["HOME"], "repository", "Choose a folder"),
        ("restic-backups", ["HOME"], "repository", "absolute path"),
        ("HOME/file.txt", ["HOME"], "repository", "is a file"),
        ("HOME/stuff", ["HOME"], "repository", "not empty and is not a restic repository"),
        ("HOME/repo", [], "sources", "at least one folder"),
        ("HOME/repo", ["docs"], "sources", "not an absolute path"),
        ("HOME/repo", ["HOME/missing"], "sources", "does not exist"),
        ("HOME/stuff", ["HOME/stuff/a"], "repository", "not empty"),
        ("HOME/repo", ["HOME/repo"], "sources", "the repository folder itself"),
        ("HOME", ["HOME/stuff"], "repository", "not empty"),
    ],
)
def test_folder_mistakes_name_the_field_and_the_fix(
    tmp_path: Path, repository: str, sources: list[str], field: str, words: str
) -> None:
    home = tmp_path / "home"
    (home / "stuff" / "a").mkdir(parents=True)
    (home / "file.txt").write_text("x")
    (home / "repo").mkdir()
    sub = [s.replace("HOME", str(home)) for s in sources]
    with pytest.raises(InvalidInput) as caught:
        la.plan_folders(repository.replace("HOME", str(home)), sub, home=home)
    assert caught.value.field == field
    assert words in caught.value.message


def test_a_source_inside_the_repository_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "keys").mkdir(parents=True)
    (repo / "config").write_text("x")
    with pytest.raises(InvalidInput) as caught:
        la.plan_folders(str(repo), [str(repo / "keys")], home=tmp_path)
    assert caught.value.field == "sources"
    assert "inside the repository folder" in caught.value.message


def test_an_existing_repository_is_accepted(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "keys").mkdir(parents=True)
    (repo / "config").write_text("x")
    (tmp_path / "src").mkdir()
    plan = la.plan_folders(str(repo), [str(tmp_path / "src")], home=tmp_path)
    assert plan.existing_repository


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_place_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(InvalidInput, match="cannot write"):
        la.plan_folders(str(locked / "repo"), [str(tmp_path)], home=tmp_path)


# -- can it run as a service? ------------------------------------------------------------


def test_no_systemd_user_session_here_means_the_detached_fallback() -> None:
    # The real systemctl of this machine: no user manager runs (container, root).
    plan = la.detect_service(platform="linux", env=dict(os.environ))
    if plan.mode == la.SYSTEMD:
        pytest.skip("this machine does have a systemd user session")
    assert plan.mode == la.DETACHED
    assert "No systemd user session" in plan.summary
    assert "offline" in plan.summary or "not installed" in plan.summary
    assert "autostart" in plan.details and "logged out" in plan.details
    assert "enrolling-hosts.md" in plan.details


def test_detection_without_systemctl_or_off_linux(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plan = la.detect_service(platform="linux", env={"PATH": str(empty)})
    assert plan.mode == la.DETACHED and "not installed" in plan.summary
    for platform, name in (("win32", "Windows"), ("darwin", "macOS")):
        plan = la.detect_service(platform=platform, env={})
        assert plan.mode == la.UNSUPPORTED
        assert name in plan.summary and "Add host" in plan.details


@pytest.mark.parametrize(
    ("said", "mode"),
    [("running", la.SYSTEMD), ("degraded", la.SYSTEMD), ("offline", la.DETACHED)],
)
def test_detection_reads_what_the_user_manager_says(tmp_path: Path, said: str, mode: str) -> None:
    bindir, state = install_fake_systemctl(tmp_path, **{"is-system-running": said})
    env = user_env(tmp_path, path_dirs=[bindir], FAKE_SYSTEMCTL_DIR=str(state))
    plan = la.detect_service(platform="linux", env=env)
    assert plan.mode == mode
    assert said in plan.probe
    assert fake_calls(state) == [["--user", "is-system-running"]]


# -- the systemd user unit --------------------------------------------------------------------


def test_unit_quoting_survives_spaces_percent_and_dollar() -> None:
    command = la.AgentCommand(
        ("/opt/my apps/python", "-m", "agent"), "python", (("PYTHONPATH", "/src/50% off"),)
    )
    unit = la.systemd_unit(command, Path("/home/me/$data/config.toml"))
    assert 'ExecStart="/opt/my apps/python" -m agent run --config /home/me/$$data/config.toml' in (
        unit
    )
    assert 'Environment="PYTHONPATH=/src/50%% off"' in unit


async def test_the_systemd_path_writes_a_unit_without_secrets_and_enables_it(
    tmp_path: Path,
) -> None:
    bindir, state = install_fake_systemctl(tmp_path)
    env = user_env(tmp_path, path_dirs=[bindir], FAKE_SYSTEMCTL_DIR=str(state))
    command = la.AgentCommand(("/usr/bin/restic-manager-agent",), "path")
    agent = la.LocalAgent(endpoint=no_endpoint, env=env, platform="linux", command=command)
    assert (await agent.detect()).mode == la.SYSTEMD

    started = await agent.start(la.SYSTEMD)
    unit = tmp_path / "config" / "systemd" / "user" / "restic-manager-agent.service"
    text = unit.read_text()
    config = tmp_path / "data" / "restic-manager-agent" / "config.toml"
    assert f"ExecStart=/usr/bin/restic-manager-agent run --config {config}\n" in text
    assert "Restart=always" in text and "WantedBy=default.target" in text
    assert "StartLimitIntervalSec=0" in text
    assert "RestartPreventExitStatus=2\n" in text
    settings = [line.lower() for line in text.splitlines() if not line.startswith("#")]
    for word in ("token", "bearer", "password", "secret", "restic_"):
        assert not any(word in line for line in settings), word
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert fake_calls(state) == [
        ["--user", "is-system-running"],
        ["--user", "daemon-reload"],
        ["--user", "is-active", "restic-manager-agent.service"],
        ["--user", "enable", "--now", "restic-manager-agent.service"],
    ]
    assert started.mode == la.SYSTEMD
    assert started.log_hint == "journalctl --user -u restic-manager-agent.service"
    assert "disable --now" in started.stop_hint

    # Set up again while it runs: the new config needs a restart, not just --now.
    (state / "calls.jsonl").unlink()
    (state / "answers.json").write_text(json.dumps({"is-active": "active"}))
    await agent.start(la.SYSTEMD)
    assert fake_calls(state)[-2:] == [
        ["--user", "enable", "restic-manager-agent.service"],
        ["--user", "restart", "restic-manager-agent.service"],
    ]


async def test_a_failing_systemctl_says_what_failed_and_where_to_look(tmp_path: Path) -> None:
    bindir, state = install_fake_systemctl(tmp_path, fail="enable")
    env = user_env(tmp_path, path_dirs=[bindir], FAKE_SYSTEMCTL_DIR=str(state))
    agent = la.LocalAgent(
        endpoint=no_endpoint,
        env=env,
        platform="linux",
        command=la.AgentCommand(("/usr/bin/restic-manager-agent",), "path"),
    )
    with pytest.raises(la.LocalAgentError) as caught:
        await agent.start(la.SYSTEMD)
    message = str(caught.value)
    assert "systemctl --user enable --now restic-manager-agent.service" in message
    assert "Access denied" in message and "journalctl --user -u" in message


async def test_unsupported_platforms_are_told_to_use_add_host(tmp_path: Path) -> None:
    agent = la.LocalAgent(endpoint=no_endpoint, env=user_env(tmp_path), platform="win32")
    with pytest.raises(la.LocalAgentError, match="Add host"):
        await agent.start(la.UNSUPPORTED)


async def test_enrolment_against_nothing_fails_clearly_and_writes_nothing(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = la.LocalAgent(
        endpoint=lambda: AgentEndpoint(f"https://127.0.0.1:{port}", "ab" * 32),
        env=user_env(tmp_path),
        platform="linux",
        restic="/usr/bin/restic",
    )
    with pytest.raises(la.LocalAgentError, match=r"cannot connect to https://127\.0\.0\.1"):
        await agent.enrol("rme_not-a-real-token")
    assert not agent.paths.config.exists()
    # The directories it made for the agent are private.
    assert stat.S_IMODE(agent.paths.base.stat().st_mode) == 0o700
    assert stat.S_IMODE(agent.paths.state_dir.stat().st_mode) == 0o700


async def test_without_restic_the_enrolment_stops_before_it_starts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    agent = la.LocalAgent(
        endpoint=no_endpoint,  # never reached
        env={**user_env(tmp_path), "PATH": str(empty)},
        platform="linux",
    )
    with pytest.raises(la.LocalAgentError, match="restic is not installed"):
        await agent.enrol("rme_token")
    assert not agent.paths.config.exists()


# -- the detached fallback, with a stand-in agent process -------------------------------------

FAKE_AGENT = "import sys, time\nprint('fake agent', sys.argv[1:], flush=True)\ntime.sleep(120)\n"


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[la.LocalAgent, la.AgentCommand]]:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    command = la.AgentCommand((sys.executable, str(script)), "python")
    agent = la.LocalAgent(
        endpoint=no_endpoint, env=user_env(tmp_path), platform="linux", command=command
    )
    yield agent, command
    pid = la.running_agent_pid(agent.paths)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("with_flock", [True, False], ids=["flock", "pid-file"])
async def test_detached_start_survives_in_its_own_session_and_runs_once(
    stand_in: tuple[la.LocalAgent, la.AgentCommand], tmp_path: Path, with_flock: bool
) -> None:
    agent, command = stand_in
    paths = agent.paths
    if not with_flock:
        # The same, on a system without util-linux's flock.
        env = {**agent._env, "PATH": str(tmp_path / "no-flock")}
        (tmp_path / "no-flock").mkdir()
        for tool in ("sh", "cat", "wc", "mv", "tr", "grep", "kill"):
            found = subprocess.run(
                ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True
            ).stdout.strip()
            if found.startswith("/"):
                (tmp_path / "no-flock" / tool).symlink_to(found)
        agent = la.LocalAgent(endpoint=no_endpoint, env=env, platform="linux", command=command)
    script_text = la.start_script(command, paths, flock="/usr/bin/flock" if with_flock else None)
    assert ("flock" in script_text) == with_flock

    started = await agent.start(la.DETACHED)
    pid = started.pid
    assert pid is not None and la.running_agent_pid(paths) == pid
    assert os.getsid(pid) != os.getsid(0)  # a session of its own
    assert stat.S_IMODE(paths.start_script.stat().st_mode) == 0o700
    entry = tmp_path / "config" / "autostart" / "restic-manager-agent.desktop"
    assert f"Exec={paths.start_script}\n" in entry.read_text()
    deadline = time.monotonic() + 10
    while "fake agent" not in (paths.log.read_text() if paths.log.exists() else ""):
        assert time.monotonic() < deadline, "the agent's output did not reach its log"
        await asyncio.sleep(0.05)
    assert f"'run', '--config', '{paths.config}'" in paths.log.read_text()

    # What login would do while it still runs: the script refuses a second agent.
    again = await asyncio.to_thread(
        subprocess.run, [str(paths.start_script)], env=agent._env, timeout=30
    )
    assert again.returncode == la.LOCK_CONFLICT_EXIT
    assert la.running_agent_pid(paths) == pid

    # Starting it from the app again replaces the running one.
    restarted = await agent.start(la.DETACHED)
    assert restarted.pid is not None and restarted.pid != pid
    assert not la._alive(pid)
    assert await agent.stop_detached() == restarted.pid
    assert not la._alive(restarted.pid)


async def test_an_agent_that_dies_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "import sys\nprint('config.toml is not valid TOML', file=sys.stderr)\nsys.exit(2)\n"
    )
    agent = la.LocalAgent(
        endpoint=no_endpoint,
        env=user_env(tmp_path),
        platform="linux",
        command=la.AgentCommand((sys.executable, str(script)), "python"),
    )
    with pytest.raises(la.LocalAgentError) as caught:
        await agent.start(la.DETACHED)
    assert "exit status 2" in str(caught.value)
    assert "config.toml is not valid TOML" in str(caught.value)


def test_a_recycled_pid_is_never_taken_for_the_agent(tmp_path: Path) -> None:
    paths = la.AgentPaths.under(tmp_path / "agent")
    paths.state_dir.mkdir(parents=True)
    paths.pid_file.write_text(str(os.getpid()))  # this test runner: not an agent
    assert la.running_agent_pid(paths) is None
    assert la.stop_detached(paths) is None
    assert os.getpid()  # still alive


def test_autostart_entry_quotes_the_script_path() -> None:
    entry = la.autostart_entry(Path("/home/me/My Data/start-agent.sh"))
    assert 'Exec="/home/me/My Data/start-agent.sh"' in entry
    assert "Type=Application" in entry and "NoDisplay=true" in entry
    words = shlex.split(entry.split("Exec=")[1].splitlines()[0])
    assert words == ["/home/me/My Data/start-agent.sh"]
