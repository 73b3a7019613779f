#!/usr/bin/env python3
"""Build the agent (one file) and the desktop app (one folder) with PyInstaller.

    python packaging/build.py agent     dist/agents/restic-manager-agent-<os>-<arch>[.exe]
    python packaging/build.py app       dist/restic-manager/ (bundles dist/agents/*), smoke-checked
    python packaging/build.py all       both: what `make dist` runs
    python packaging/build.py measure   size and `--version` time of this platform's agent (JSON)

A build is skipped when nothing that goes into it changed: a fingerprint of
the sources, the spec, this script, Python and the installed packages is kept
in .cache/dist/ next to the SHA-256 of what it produced. ``--force`` rebuilds.
PyInstaller's work files go to build/pyinstaller/; dist/ and build/ are
git-ignored. Run it with the project's venv (``.venv/bin/python``); it builds
for the machine it runs on (PyInstaller cannot cross-build).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
DIST = ROOT / "dist"
AGENTS_OUT = DIST / "agents"
APP_OUT = DIST / "restic-manager"
CACHE = ROOT / ".cache" / "dist"
WORK = ROOT / "build" / "pyinstaller"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent import platform_info  # noqa: E402  (needs ROOT on sys.path)
from server_core.agent_downloads import agent_file_name, sha256_file  # noqa: E402

AGENT_EXE = "restic-manager-agent"
APP_EXE = "restic-manager"
# What the built agent must never contain (agent.spec refuses these too; this
# checks the artifact itself).
AGENT_FORBIDDEN = ("PySide6", "shiboken6", "peewee", "server_core", "ui_qt", "app", "qasync")

Log = Callable[[str], None]


def _exe(name: str) -> str:
    return name + ".exe" if sys.platform == "win32" else name


def target() -> tuple[str, str]:
    """This machine's (os, arch), spelled as the agent reports them."""
    return platform_info.os_name(), platform_info.arch()


def _files(root: Path, patterns: Iterable[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(found)


def fingerprint(files: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """One hash over file names + contents, the interpreter and every installed package."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    # A set: the checkout's own egg-info shows up once per sys.path entry naming it.
    packages = sorted(
        {
            f"{d.metadata['Name']}=={d.version}".lower()
            for d in metadata.distributions()
            if d.metadata["Name"]
        }
    )
    for line in (sys.version, sys.platform, *packages, *extra):
        digest.update(line.encode() + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One build of a target at a time (a test and `make dist` may race)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: builds there are run by hand, one at a time.
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamp_ok(stamp: Path, key: str, output: Path) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("key") != key or not output.exists():
        return False
    if output.is_file():
        return bool(recorded.get("sha256") == sha256_file(output))
    return True


def _pyinstaller(spec: Path, distpath: Path, workpath: Path, env: dict[str, str], log: Log) -> None:
    shutil.rmtree(distpath, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(distpath),
        "--workpath",
        str(workpath),
        str(spec),
    ]
    log(f"running PyInstaller on {spec.relative_to(ROOT)} ...")
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        raise SystemExit(f"PyInstaller failed on {spec.name} (exit {result.returncode})")
    log(f"PyInstaller finished in {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------- the agent


def agent_inputs() -> list[Path]:
    return [
        *_files(ROOT / "agent", ["**/*.py"]),
        PACKAGING / "agent.spec",
        PACKAGING / "agent_entry.py",
        Path(__file__).resolve(),
    ]


def agent_path() -> Path:
    return AGENTS_OUT / agent_file_name(*target())


def bundled_modules(binary: Path) -> set[str]:
    """Top-level names of every module and library inside a one-file build."""
    from PyInstaller.archive.readers import CArchiveReader, ZlibArchiveReader

    names: set[str] = set()
    archive = CArchiveReader(str(binary))
    for name, entry in archive.toc.items():
        typecode = entry[-1]
        if typecode == "z":  # the PYZ: pure-Python modules
            pyz = archive.open_embedded_archive(name)
            assert isinstance(pyz, ZlibArchiveReader)
            names.update(module.split(".", 1)[0] for module in pyz.toc)
        else:
            names.add(name.replace("\\", "/").split("/", 1)[0].split(".", 1)[0])
    return names


def check_agent_contents(binary: Path) -> None:
    modules = bundled_modules(binary)
    leaked = sorted(modules & set(AGENT_FORBIDDEN))
    qt_libs = sorted(n for n in modules if n.startswith(("libQt", "Qt6", "libpyside")))
    if leaked or qt_libs:
        raise SystemExit(f"the agent build contains {leaked + qt_libs}: it must stay standalone")


def agent_version(binary: Path) -> str:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 2 or words[0] != AGENT_EXE:
        raise SystemExit(
            f"the built agent does not run: `{binary} --version` exited {out.returncode}: "
            f"{(out.stdout + out.stderr).strip()[:500]}"
        )
    return words[1]


def ensure_agent(*, force: bool = False, log: Log = print) -> Path:
    """This platform's agent in dist/agents/, built only if its inputs changed."""
    os_name, arch = target()
    output = agent_path()
    stamp = CACHE / f"{output.name}.json"
    with _locked("agent"):
        key = fingerprint(agent_inputs(), [os_name, arch])
        if not force and _stamp_ok(stamp, key, output):
            log(f"agent is up to date: {output.relative_to(ROOT)}")
            return output
        stamp.unlink(missing_ok=True)
        distpath = WORK / "agent-out"
        _pyinstaller(PACKAGING / "agent.spec", distpath, WORK / "agent", {}, log)
        built = distpath / _exe(AGENT_EXE)
        check_agent_contents(built)
        version = agent_version(built)
        digest = sha256_file(built)
        AGENTS_OUT.mkdir(parents=True, exist_ok=True)
        staging = output.with_name(output.name + ".tmp")
        shutil.copy2(built, staging)
        os.replace(staging, output)
        info = {
            "os": os_name,
            "arch": arch,
            "version": version,
            "sha256": digest,
            "size": output.stat().st_size,
        }
        output.with_name(output.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
        output.with_name(output.name + ".sha256").write_text(f"{digest}  {output.name}\n")
        stamp.write_text(json.dumps({"key": key, "sha256": digest}) + "\n")
        log(f"agent {version} for {os_name}/{arch}: {output.relative_to(ROOT)} ({_mb(info)})")
        return output


def _mb(info: dict[str, object]) -> str:
    size = info["size"]
    assert isinstance(size, int)
    return f"{size / 1e6:.2f} MB = {size / 2**20:.2f} MiB"


def measure_agent(binary: Path, runs: int = 5) -> dict[str, object]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(binary), "--version"], capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - started)
    size = binary.stat().st_size
    return {
        "binary": str(binary),
        "size_bytes": size,
        "size_mb": round(size / 1e6, 2),
        "size_mib": round(size / 2**20, 2),
        "version_seconds_median": round(statistics.median(times), 3),
        "version_seconds_all": [round(t, 3) for t in times],
    }


# ---------------------------------------------------------------- the app


def app_inputs() -> list[Path]:
    return [
        *_files(ROOT, ["app/**/*.py", "ui_qt/**/*.py", "server_core/**/*.py", "agent/**/*.py"]),
        *_files(ROOT / "resources", ["**/*"]),
        *_files(ROOT / "installers", ["**/*"]),
        *_files(AGENTS_OUT, ["*"]),
        PACKAGING / "app.spec",
        PACKAGING / "app_entry.py",
        Path(__file__).resolve(),
    ]


def ensure_app(*, force: bool = False, smoke: bool = True, log: Log = print) -> Path:
    """dist/restic-manager/ with every agent build in dist/agents/, rebuilt if inputs changed."""
    native_agent = ensure_agent(force=force, log=log)
    stamp = CACHE / "app.json"
    with _locked("app"):
        key = fingerprint(app_inputs())
        if not force and _stamp_ok(stamp, key, APP_OUT) and (APP_OUT / _exe(APP_EXE)).is_file():
            log(f"app is up to date: {APP_OUT.relative_to(ROOT)}")
            return APP_OUT
        # Whatever happens next, an interrupted build or a failed smoke check
        # must not pass for up to date.
        stamp.unlink(missing_ok=True)
        distpath = WORK / "app-out"
        _pyinstaller(
            PACKAGING / "app.spec", distpath, WORK / "app", {"RM_AGENTS_DIR": str(AGENTS_OUT)}, log
        )
        built = distpath / APP_EXE
        # app/local_agent.py looks for the agent next to the app's executable
        # ("Add this computer" on a packaged app).
        shutil.copy2(native_agent, built / _exe(AGENT_EXE))
        shutil.rmtree(APP_OUT, ignore_errors=True)
        shutil.move(str(built), APP_OUT)
        if smoke:
            smoke_app(APP_OUT, log=log)
        stamp.write_text(json.dumps({"key": key}) + "\n")
        log(f"app: {APP_OUT.relative_to(ROOT)} ({_du(APP_OUT) / 1e6:.0f} MB)")
        return APP_OUT


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, token: str) -> dict[str, object] | None:
    # Only ever http://127.0.0.1:<port> built by this script.
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fetch_pinned(url: str, cert_sha256: str) -> tuple[int, bytes]:
    """GET over TLS, trusting exactly the certificate with this SHA-256 (as agents do)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin below is the check
    parsed = urllib.parse.urlsplit(url)
    with (
        socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=parsed.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
        if hashlib.sha256(der).hexdigest() != cert_sha256.replace(":", "").lower():
            raise SystemExit(f"smoke check: {url} presented a certificate other than the pin")
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {parsed.hostname}\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := tls.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def smoke_app(app_dir: Path, *, log: Log = print) -> None:
    """The packaged app answers --help, creates an API token, serves the API headless,
    serves this platform's agent binary with the right hash, and starts its GUI offscreen."""
    exe = app_dir / _exe(APP_EXE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "PYTEST_"))}
    # No keyring daemon needed: the control plane falls back to its key file.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    out = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if out.returncode != 0 or "serve" not in out.stdout:
        raise SystemExit(f"smoke check: `{exe.name} --help` failed: {out.stderr[-2000:]}")
    log("smoke: --help ok")
    with tempfile.TemporaryDirectory(prefix="rm-smoke-") as tmp:
        _smoke_serve(exe, Path(tmp) / "serve", env, log)
        env_gui = {**env, "QT_QPA_PLATFORM": "offscreen"}
        _smoke_gui(exe, Path(tmp) / "gui", env_gui, log)


def _api_token(exe: Path, data_dir: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(exe), "api-token", "create", "--data-dir", str(data_dir), "--name", "smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"smoke check: api-token create failed: {out.stderr[-2000:]}")
    return out.stdout.strip()


def _wait_server_info(
    proc: subprocess.Popen[bytes], api: str, token: str, log_file: Path, what: str
) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"smoke check: {what} exited {proc.returncode}: {log_file.read_text()[-3000:]}"
            )
        info = _get_json(f"{api}/api/v1/server", token)
        if info is not None:
            return info
        time.sleep(0.2)
    raise SystemExit(f"smoke check: {what} did not answer /api/v1/server within 60 s")


def _stop(proc: subprocess.Popen[bytes], what: str, log_file: Path) -> None:
    proc.terminate()
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"smoke check: {what} did not stop on SIGTERM within 30 s") from None
    if code != 0:
        raise SystemExit(f"smoke check: {what} exited {code}: {log_file.read_text()[-3000:]}")


def _run_app(
    exe: Path, args: list[str], env: dict[str, str], log_file: Path
) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as sink:
        return subprocess.Popen([str(exe), *args], stdout=sink, stderr=subprocess.STDOUT, env=env)


def _smoke_serve(exe: Path, data_dir: Path, env: dict[str, str], log: Log) -> None:
    data_dir.mkdir(parents=True)
    token = _api_token(exe, data_dir, env)
    api_port = _free_port()
    log_file = data_dir.parent / "serve.log"
    args = ["serve", "--data-dir", str(data_dir), "--agent-listen", "127.0.0.1:0"]
    proc = _run_app(exe, [*args, "--api-listen", f"127.0.0.1:{api_port}"], env, log_file)
    try:
        info = _wait_server_info(proc, f"http://127.0.0.1:{api_port}", token, log_file, "serve")
        if not info.get("cert_sha256") or not info.get("agent_url"):
            raise SystemExit(f"smoke check: /api/v1/server answered {info}")
        log(f"smoke: serve answers /api/v1/server (version {info.get('version')})")
        _check_served_agent(str(info["agent_url"]), str(info["cert_sha256"]), log)
    finally:
        _stop(proc, "serve", log_file)


def _check_served_agent(agent_url: str, pin: str, log: Log) -> None:
    os_name, arch = target()
    url = f"{agent_url}/agent/binary.sha256?os={os_name}&arch={arch}"
    status, body = _fetch_pinned(url, pin)
    expected = sha256_file(agent_path())
    served = body.decode(errors="replace").split(" ", 1)[0] if status == 200 else ""
    if status == 404 and not body.startswith(b"{"):
        raise SystemExit(
            f"smoke check: {url} is not routed: mount AgentDownloads "
            "(server_core/agent_downloads.py) on the agent listener"
        )
    if served != expected:
        raise SystemExit(
            f"smoke check: the agent listener answered {status} for {url} "
            f"(expected the hash {expected}): {body[:300]!r}"
        )
    log(f"smoke: the agent listener serves the bundled {os_name}/{arch} agent")


def _smoke_gui(exe: Path, data_dir: Path, env: dict[str, str], log: Log) -> None:
    data_dir.mkdir(parents=True)
    token = _api_token(exe, data_dir, env)
    api_port = _free_port()
    log_file = data_dir.parent / "gui.log"
    args = ["--data-dir", str(data_dir), "--agent-listen", "127.0.0.1:0"]
    args += ["--api-listen", f"127.0.0.1:{api_port}", "--minimized"]
    proc = _run_app(exe, args, env, log_file)
    try:
        _wait_server_info(proc, f"http://127.0.0.1:{api_port}", token, log_file, "the GUI")
        log("smoke: the GUI starts (offscreen) with its embedded control plane")
    finally:
        _stop(proc, "the GUI", log_file)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["agent", "app", "all", "measure", "smoke-app"])
    parser.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    parser.add_argument("--no-smoke", action="store_true", help="skip the packaged app's check")
    parser.add_argument(
        "--print-path", action="store_true", help="print only the agent's path (for tests)"
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.print_path else sys.stdout, flush=True)

    if args.what == "agent":
        path = ensure_agent(force=args.force, log=log)
        if args.print_path:
            print(path)
    elif args.what in ("app", "all"):
        ensure_app(force=args.force, smoke=not args.no_smoke, log=log)
    elif args.what == "smoke-app":
        smoke_app(APP_OUT, log=log)
    else:
        print(json.dumps(measure_agent(ensure_agent(log=log)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
