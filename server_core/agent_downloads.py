"""Agent binaries and install files, served on the agent listener.

These routes need no credentials: the host fetching them is not enrolled
yet. What protects it is the install command: it pins the listener's TLS
certificate and checks the binary against ``/agent/binary.sha256``, fetched
over that same pinned connection.

Where the files come from:

- agent binaries: ``bundled_agents_dir()`` — ``<sys._MEIPASS>/agents`` in the
  packaged app, ``dist/agents`` of the checkout otherwise (``make dist``
  writes them there). One file per platform,
  ``restic-manager-agent-<os>-<arch>`` (``.exe`` on Windows), with an optional
  ``<file>.json`` written by ``packaging/build.py`` that records its version;
- install files: ``bundled_installers_dir()`` — ``<sys._MEIPASS>/installers``
  packaged, ``installers/`` of the checkout otherwise.

Responses never name server paths: anyone on the LAN can ask.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from server_core.api_common import error_response

log = logging.getLogger(__name__)

AGENT_BASENAME = "restic-manager-agent"
BINARY_PATH = "/agent/binary"
BINARY_SHA256_PATH = "/agent/binary.sha256"
INSTALL_PATH_PREFIX = "/install/"
# The only files /install/ serves; anything else is a 404 without touching the disk.
INSTALL_FILES: dict[str, str] = {
    "install.sh": "text/x-shellscript; charset=utf-8",
    "install.ps1": "text/plain; charset=utf-8",
    "restic-manager-agent.service": "text/plain; charset=utf-8",
    "uninstall.sh": "text/x-shellscript; charset=utf-8",
    "uninstall.ps1": "text/plain; charset=utf-8",
}
# Go-style names, as the agent reports them (agent/platform_info.py).
_PLATFORM_WORD = re.compile(r"^[a-z0-9_]{1,16}$")
_BINARY_FILE = re.compile(
    rf"^{re.escape(AGENT_BASENAME)}-(?P<os>[a-z0-9_]{{1,16}})-(?P<arch>[a-z0-9_]{{1,16}})"
    r"(?P<exe>\.exe)?$"
)


def _resource_root() -> Path | None:
    meipass = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and isinstance(meipass, str):
        return Path(meipass)
    return None


def _checkout_root() -> Path:
    return Path(__file__).resolve().parents[1]


def bundled_agents_dir() -> Path:
    """Where the app keeps the agent binaries it serves."""
    frozen = _resource_root()
    return frozen / "agents" if frozen else _checkout_root() / "dist" / "agents"


def bundled_installers_dir() -> Path:
    """Where the app keeps install.sh, install.ps1 and the systemd unit."""
    frozen = _resource_root()
    return frozen / "installers" if frozen else _checkout_root() / "installers"


def agent_file_name(os_name: str, arch: str) -> str:
    suffix = ".exe" if os_name == "windows" else ""
    return f"{AGENT_BASENAME}-{os_name}-{arch}{suffix}"


@dataclass(frozen=True)
class BundledAgent:
    os: str
    arch: str
    path: Path
    # From the build's <file>.json; None for a binary copied in without it.
    version: str | None

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.arch}"


def _read_version(binary: Path) -> str | None:
    sidecar = binary.with_name(binary.name + ".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version else None


def list_bundled(agents_dir: Path) -> list[BundledAgent]:
    """The agent builds in ``agents_dir``, sorted by platform (blocking: file system)."""
    try:
        entries = sorted(agents_dir.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _BINARY_FILE.match(entry.name)
        if match is None or not entry.is_file():
            continue
        if bool(match["exe"]) != (match["os"] == "windows"):
            continue  # a name this module would never serve
        found.append(BundledAgent(match["os"], match["arch"], entry, _read_version(entry)))
    return found


def sha256_file(path: Path) -> str:
    """The file's SHA-256 in hex (blocking: reads the whole file)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class _Found:
    agent: BundledAgent
    sha256: str


class AgentDownloads:
    """``GET /agent/binary``, ``/agent/binary.sha256`` and ``/install/{name}``."""

    def __init__(self, agents_dir: Path | None = None, installers_dir: Path | None = None) -> None:
        self._agents_dir = agents_dir if agents_dir is not None else bundled_agents_dir()
        self._installers_dir = (
            installers_dir if installers_dir is not None else bundled_installers_dir()
        )
        # path -> ((size, mtime_ns, inode), sha256): a replaced binary is hashed again.
        self._hashes: dict[Path, tuple[tuple[int, int, int], str]] = {}

    @property
    def agents_dir(self) -> Path:
        return self._agents_dir

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(BINARY_PATH, self.binary)
        router.add_get(BINARY_SHA256_PATH, self.binary_sha256)
        router.add_get(INSTALL_PATH_PREFIX + "{name}", self.install_file)

    async def bundled(self) -> list[BundledAgent]:
        return await asyncio.get_running_loop().run_in_executor(
            None, list_bundled, self._agents_dir
        )

    async def sha256(self, agent: BundledAgent) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._sha256_cached, agent)

    def _sha256_cached(self, agent: BundledAgent) -> str:
        st = agent.path.stat()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._hashes.get(agent.path)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = sha256_file(agent.path)
        self._hashes[agent.path] = (key, digest)
        return digest

    async def binary(self, request: web.Request) -> web.StreamResponse:
        found = await self._find(request)
        if isinstance(found, web.Response):
            return found
        name = found.agent.path.name
        return web.FileResponse(
            found.agent.path,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Content-SHA256": found.sha256,
                "Cache-Control": "no-cache",
            },
        )

    async def binary_sha256(self, request: web.Request) -> web.Response:
        found = await self._find(request)
        if isinstance(found, web.Response):
            return found
        # sha256sum's format, so a script can `sha256sum -c` it after renaming.
        return web.Response(
            text=f"{found.sha256}  {found.agent.path.name}\n",
            content_type="text/plain",
            headers={"Cache-Control": "no-cache"},
        )

    async def _find(self, request: web.Request) -> _Found | web.Response:
        words: dict[str, str] = {}
        for field in ("os", "arch"):
            value = request.query.get(field, "")
            if not _PLATFORM_WORD.match(value):
                example = "linux, windows" if field == "os" else "amd64, arm64"
                shown = f"got {value[:40]!r}" if value else "it is missing"
                return error_response(
                    400,
                    "invalid",
                    f"query parameter '{field}' must be a lower-case platform name such as "
                    f"{example} ({shown})",
                    field=field,
                )
            words[field] = value
        bundled = await self.bundled()
        wanted = f"{words['os']}/{words['arch']}"
        for agent in bundled:
            if agent.platform == wanted:
                try:
                    digest = await self.sha256(agent)
                except OSError as exc:
                    # Replaced or removed between listing and hashing.
                    log.warning("agent binary %s unreadable: %s", agent.path, exc)
                    break
                return _Found(agent, digest)
        log.info(
            "no agent build for %s in %s (bundled: %s)",
            wanted,
            self._agents_dir,
            ", ".join(a.platform for a in bundled) or "none",
        )
        return _not_bundled(wanted, [a.platform for a in bundled])

    async def install_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = INSTALL_FILES.get(name)
        if content_type is None:
            return error_response(
                404,
                "not_found",
                f"no install file {name[:60]!r}: this app serves "
                + ", ".join(sorted(INSTALL_FILES)),
            )
        path = self._installers_dir / name
        is_file = await asyncio.get_running_loop().run_in_executor(None, path.is_file)
        if not is_file:
            log.info("install file %s is not in %s", name, self._installers_dir)
            return error_response(
                404,
                "not_bundled",
                f"{name} is not bundled with this app: use a build of restic-manager that "
                "includes the installers/ folder",
            )
        return web.FileResponse(
            path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )


def _not_bundled(wanted: str, bundled: list[str]) -> web.Response:
    have = ", ".join(bundled) if bundled else "none"
    message = (
        f"no agent build for {wanted} is bundled with this app (bundled: {have}). "
        f"Build it on a {wanted} machine with `python packaging/build.py agent` and copy "
        f"dist/agents/{agent_file_name(*wanted.split('/'))} into the agents folder of the app"
        " (see packaging/README.md), or install the agent on that host by hand."
    )
    body = {"error": {"code": "not_bundled", "message": message, "bundled": bundled}}
    return web.json_response(body, status=404)
