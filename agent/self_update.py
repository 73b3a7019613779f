"""Replacing the packaged agent with the build the control plane offers.

``command.update`` names a download (normally ``/agent/binary?os=…&arch=…`` on
the control plane's agent listener), its SHA-256 and the version it holds.
The agent:

1. fetches it over TLS pinned to the same certificate as its WebSocket, into a
   temporary file next to its own executable, hashing as it writes — a hash
   that differs from the command's refuses the update with nothing replaced;
2. runs ``<new> --version`` and requires the announced version — a binary
   that does not even start here is never installed;
3. keeps the running binary as ``<name>.old`` and moves the new one into
   place with ``os.replace``: on POSIX the executable's path always holds a
   complete binary (the old one or the new one, never a partial or missing
   file), so a crash at any point leaves a runnable agent;
4. exits with :data:`EXIT_RESTART`, for the service manager to start the new
   binary: the systemd unit has ``Restart=always`` (any exit restarts it);
   under ``Restart=on-failure`` the non-zero code restarts it too. On Windows
   the service's recovery actions must restart it (install.ps1 sets them).

Only the packaged (PyInstaller one-file) agent updates itself: an agent run
from a Python environment belongs to that environment's package manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from agent import protocol
from agent.enrol import pin_ssl

PROGRAM = "restic-manager-agent"
# "Updated, start me again": EX_TEMPFAIL, distinct from the CLI's 0/1/2 so
# the journal tells a self-update restart from a crash.
EXIT_RESTART = 75
OLD_SUFFIX = ".old"
# The agent is ~15 MB; anything far beyond is not an agent build.
MAX_BINARY_BYTES = 256 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 20.0
VERSION_CHECK_TIMEOUT_S = 60.0
CHUNK_BYTES = 1024 * 1024

NOT_PACKAGED = (
    "self-update needs the packaged agent: this agent runs from a Python environment "
    "({python}); update it there (pip, or the checkout it was installed from), or "
    "install the packaged agent with the install command shown in the app"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int | None], None]


class SelfUpdateError(Exception):
    """The update cannot go ahead; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Installed:
    target: Path  # where the new binary now is
    previous: Path  # the binary it replaced, kept as <name>.old


def running_executable() -> Path:
    """The packaged agent's own file (symlinks resolved: the file is what is replaced)."""
    if not getattr(sys, "frozen", False):
        raise SelfUpdateError(NOT_PACKAGED.format(python=sys.executable))
    return Path(sys.executable).resolve()


def normalize_sha256(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.match(digest):
        raise SelfUpdateError(
            f"the update names an invalid SHA-256 ({value[:80]!r}): expected 64 hex digits"
        )
    return digest


def download_url(url: str, server_url: str) -> str:
    """The absolute URL to fetch: a path is taken relative to the control plane;
    a full URL must point at the control plane itself (the pin is its certificate)."""
    base = urlsplit(server_url)
    resolved = urljoin(server_url.rstrip("/") + "/", url) if url.startswith("/") else url
    parts = urlsplit(resolved)
    if parts.scheme != "https" or (parts.hostname, parts.port) != (base.hostname, base.port):
        raise SelfUpdateError(
            f"refusing to download the update from {protocol.redact_url(url)[:200]!r}: "
            f"it must come from the control plane this agent is enrolled with ({server_url})"
        )
    return resolved


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        body: Any = await resp.json(content_type=None)
        message = body["error"]["message"]
        return str(message)[:500]
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return (await resp.text(errors="replace"))[:300].strip() or resp.reason or ""


async def download(
    url: str,
    *,
    cert_sha256: str,
    expected_sha256: str,
    dest_dir: Path,
    name: str,
    progress: Progress | None = None,
    max_bytes: int = MAX_BINARY_BYTES,
    time_limit_s: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Fetch ``url`` into a new file in ``dest_dir`` and check its SHA-256.

    The file is created there (not in /tmp) so the final rename stays on one
    file system. On any failure it is removed and nothing else is touched.
    """
    expected = normalize_sha256(expected_sha256)
    loop = asyncio.get_running_loop()
    try:
        # Windows runs (for the --version check) only what it takes for a program.
        suffix = ".new.exe" if os.name == "nt" else ".new"
        fd, raw_path = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=dest_dir)
    except OSError as exc:
        raise SelfUpdateError(
            f"cannot write next to the agent in {dest_dir}: {exc.strerror or exc}; the "
            "service must be allowed to write there (systemd: ReadWritePaths= in the unit)"
        ) from None
    path = Path(raw_path)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            client_timeout = aiohttp.ClientTimeout(
                total=time_limit_s, connect=CONNECT_TIMEOUT_S, sock_read=60.0
            )
            async with (
                aiohttp.ClientSession(timeout=client_timeout) as session,
                session.get(url, ssl=pin_ssl(cert_sha256)) as resp,
            ):
                if resp.status != 200:
                    detail = await _error_text(resp)
                    raise SelfUpdateError(
                        f"the control plane answered HTTP {resp.status} for the agent "
                        f"download: {detail}"
                    )
                total = resp.content_length
                if total is not None and total > max_bytes:
                    raise SelfUpdateError(
                        f"the offered binary is {total} bytes, more than the {max_bytes} an "
                        "agent build can be"
                    )
                announced = resp.headers.get("X-Content-SHA256", "").strip().lower()
                if announced and announced != expected:
                    raise SelfUpdateError(
                        "the app's bundled agent changed since the update was sent (it now "
                        f"serves {announced[:16]}…, the update named {expected[:16]}…): "
                        "start the update again"
                    )
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    done += len(chunk)
                    if done > max_bytes:
                        raise SelfUpdateError(
                            f"the download exceeds {max_bytes} bytes: not an agent build"
                        )
                    digest.update(chunk)
                    await loop.run_in_executor(None, out.write, chunk)
                    if progress is not None:
                        progress(done, total)
            await loop.run_in_executor(None, _flush, out)
        got = digest.hexdigest()
        if got != expected:
            raise SelfUpdateError(
                f"the downloaded binary's SHA-256 is {got}, not the {expected} the update "
                "named: nothing was replaced"
            )
        return path
    except aiohttp.ServerFingerprintMismatch as exc:
        _discard(path)
        raise SelfUpdateError(
            f"the download server's certificate does not match the pin ({exc.got.hex()[:16]}… "
            f"instead of {exc.expected.hex()[:16]}…): nothing was replaced"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        _discard(path)
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise SelfUpdateError(f"downloading the new agent failed: {reason}") from None
    except BaseException:
        _discard(path)
        raise


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _flush(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())


async def check_runs(
    binary: Path, expected_version: str, time_limit_s: float = VERSION_CHECK_TIMEOUT_S
) -> None:
    """Run ``binary --version``: it must start here and be the announced version."""
    await asyncio.get_running_loop().run_in_executor(None, _make_executable, binary)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise SelfUpdateError(
            f"the new agent cannot be started here ({exc.strerror or exc}): nothing was replaced"
        ) from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), time_limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SelfUpdateError(
            f"the new agent did not answer --version within {time_limit_s:.0f} s: nothing was "
            "replaced"
        ) from None
    text = out.decode(errors="replace").strip()
    words = text.split()
    if proc.returncode != 0 or len(words) != 2 or words[0] != PROGRAM:
        raise SelfUpdateError(
            f"the new agent does not run here (`--version` exited {proc.returncode}: "
            f"{text[:300]!r}): nothing was replaced"
        )
    if words[1] != expected_version:
        raise SelfUpdateError(
            f"the downloaded agent is version {words[1]}, not the {expected_version} the "
            "update announced: nothing was replaced"
        )


def _size(path: Path) -> int:
    return path.stat().st_size


def _make_executable(path: Path) -> None:
    path.chmod(0o755)


def install(new_file: Path, target: Path) -> Installed:
    """Put ``new_file`` at ``target`` and keep the binary it replaces as ``<target>.old``.

    POSIX: ``.old`` is made by hard-linking (or copying) the current binary and
    renaming it into place, then the new file is renamed over ``target`` —
    every step is a rename, so ``target`` is never missing or half-written.
    Windows cannot replace a running executable but can rename it: the current
    one moves to ``.old`` first, and comes back if the second rename fails.
    """
    previous = target.with_name(target.name + OLD_SUFFIX)
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError as exc:
        raise SelfUpdateError(f"cannot read the running agent {target}: {exc}") from None
    try:
        new_file.chmod(mode | 0o500)
        if os.name == "nt":
            _swap_windows(new_file, target, previous)
        else:
            _keep_previous(target, previous)
            os.replace(new_file, target)
            _sync_dir(target.parent)
    except OSError as exc:
        raise SelfUpdateError(
            f"installing the new agent as {target} failed: {exc.strerror or exc}"
        ) from None
    return Installed(target=target, previous=previous)


def _keep_previous(target: Path, previous: Path) -> None:
    staging = previous.with_name(previous.name + ".tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(target, staging)
    except OSError:
        # A file system without hard links: a copy is as good a backup.
        shutil.copy2(target, staging)
    os.replace(staging, previous)


def _swap_windows(new_file: Path, target: Path, previous: Path) -> None:
    previous.unlink(missing_ok=True)
    os.replace(target, previous)
    try:
        os.replace(new_file, target)
    except OSError:
        os.replace(previous, target)
        raise


def _sync_dir(folder: Path) -> None:
    # The renames are durable only once the directory is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def update(
    command: protocol.CommandUpdate,
    *,
    server_url: str,
    cert_sha256: str,
    target: Path,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> Installed:
    """Download, verify and install the build ``command`` names in place of ``target``."""
    tell = say or (lambda _text: None)
    expected = normalize_sha256(command.sha256)
    url = download_url(command.url, server_url)
    tell(f"downloading agent {command.version} from {protocol.redact_url(url)}")
    new_file = await download(
        url,
        cert_sha256=cert_sha256,
        expected_sha256=expected,
        dest_dir=target.parent,
        name=target.name,
        progress=progress,
    )
    try:
        size = await asyncio.get_running_loop().run_in_executor(None, _size, new_file)
        tell(f"downloaded {size / 1e6:.1f} MB; SHA-256 {expected} verified")
        await check_runs(new_file, command.version)
        tell(f"the new binary runs here and reports version {command.version}")
        installed = await asyncio.get_running_loop().run_in_executor(
            None, install, new_file, target
        )
    except BaseException:
        _discard(new_file)
        raise
    tell(f"installed {installed.target}; the previous binary is kept as {installed.previous}")
    return installed
