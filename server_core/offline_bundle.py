"""Offline installer bundles: one file that installs and enrols one host which
cannot reach anything but the app (a USB stick, an air-gapped copy).

- Linux: a self-extracting shell script. A short POSIX ``sh`` header holds the
  server URL, the certificate pin and the token; an uncompressed tar archive
  follows it with the agent binary, optionally a restic binary, ``install.sh``,
  ``uninstall.sh``, the systemd unit and their SHA-256 sums. Running it as root
  checks the archive, unpacks it into a private temporary folder and runs
  ``install.sh --offline`` (no curl, openssl or python needed on the host).
- Windows: a ``.zip`` with ``install.ps1``, ``uninstall.ps1``, ``install.cmd``
  (right-click → Run as administrator), ``bundle.json`` (URL, pin, token), the
  Windows agent, and optionally ``restic.exe``.

Each export mints a fresh one-time enrolment token through the enrolment
service (so the host's other unused tokens stop working, as with Regenerate),
and the file is written 0600: it holds a secret. The token expires like any
other; a bundle used after that fails to enrol with a message saying so.
Building is blocking file work and runs in an executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from server_core import audit
from server_core.agent_downloads import (
    AGENT_BASENAME,
    agent_file_name,
    list_bundled,
    sha256_file,
)
from server_core.errors import Conflict, InvalidInput, NotFound
from server_core.models import Host
from server_core.services.context import Actor, ServiceContext
from server_core.services.enrolment import AgentEndpoint, EnrolmentGrant, EnrolmentService

BUNDLE_OSES = ("linux", "windows")
_ARCH = re.compile(r"^[a-z0-9_]{1,16}$")
# A restic binary is ~25-35 MB; anything far larger is not one.
MAX_RESTIC_BYTES = 256 * 2**20
_CHUNK = 1024 * 1024
# Free space wanted beyond the bundle's own size before a token is minted.
_SPACE_MARGIN = 16 * 2**20

LINUX_INSTALL_FILES = ("install.sh", "uninstall.sh", f"{AGENT_BASENAME}.service")
WINDOWS_INSTALL_FILES = ("install.ps1", "uninstall.ps1")

# ELF e_machine / PE Machine values of the architectures the agent is built for.
_ELF_MACHINE = {"amd64": 62, "arm64": 183, "arm": 40, "386": 3}
_PE_MACHINE = {"amd64": 0x8664, "arm64": 0xAA64, "386": 0x14C, "arm": 0x1C4}

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class BundleRequest:
    """A validated export request."""

    host_id: int
    os: str
    arch: str
    restic_path: Path | None = None


def parse_bundle_request(host_id: int, body: dict[str, Any]) -> BundleRequest:
    """The API's body (``{"os", "arch"?, "restic_path"?}``), checked at the edge."""
    unknown = sorted(set(body) - {"os", "arch", "restic_path"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    os_name = body.get("os")
    if os_name not in BUNDLE_OSES:
        raise InvalidInput("'os' must be 'linux' or 'windows'", field="os")
    arch = body.get("arch", "amd64")
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise InvalidInput(
            "'arch' must be a platform name such as amd64 or arm64 (default amd64)", field="arch"
        )
    restic = body.get("restic_path")
    if restic is not None and not isinstance(restic, str):
        raise InvalidInput("'restic_path' must be a string (a path on the app's machine)")
    return BundleRequest(
        host_id=host_id,
        os=str(os_name),
        arch=arch,
        restic_path=_restic_path(restic) if restic else None,
    )


def _restic_path(raw: str) -> Path:
    if "\0" in raw or not Path(raw).is_absolute():
        raise InvalidInput(
            f"'restic_path' must be an absolute path on the app's machine (got {raw[:200]!r})",
            field="restic_path",
        )
    return Path(raw)


@dataclass(frozen=True)
class OfflineBundle:
    """A written bundle. ``grant`` carries the token inside it (the Add-host page
    shows the same token's install commands afterwards)."""

    path: Path
    filename: str
    size: int
    sha256: str
    host_id: int
    hostname: str
    os: str
    arch: str
    agent_version: str | None
    includes_restic: bool
    grant: EnrolmentGrant


def bundle_filename(hostname: str, os_name: str, arch: str) -> str:
    """``restic-manager-agent-<host>-<os>-<arch>.sh`` (``.zip`` for Windows)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", hostname)[:64] or "host"
    ext = "zip" if os_name == "windows" else "sh"
    return f"{AGENT_BASENAME}-{safe}-{os_name}-{arch}.{ext}"


@dataclass(frozen=True)
class _Inputs:
    """Everything read from disk before a token is minted."""

    agent: Path
    agent_version: str | None
    installers: dict[str, Path]
    restic: Path | None


@dataclass(frozen=True)
class _Secrets:
    server_url: str
    cert_sha256: str
    token: str
    hostname: str
    expires_at: float


class OfflineBundleService:
    def __init__(
        self,
        ctx: ServiceContext,
        enrolment: EnrolmentService,
        *,
        endpoint: Callable[[], AgentEndpoint],
        agents_dir: Path,
        installers_dir: Path,
    ) -> None:
        self._ctx = ctx
        self._enrolment = enrolment
        self._endpoint = endpoint
        self._agents_dir = agents_dir
        self._installers_dir = installers_dir

    async def bundled_platforms(self) -> list[str]:
        """``os/arch`` of every agent build a bundle can carry."""
        agents = await asyncio.get_running_loop().run_in_executor(
            None, list_bundled, self._agents_dir
        )
        return [a.platform for a in agents]

    async def build(
        self,
        request: BundleRequest,
        dest: Path,
        actor: Actor,
        *,
        progress: Progress | None = None,
    ) -> OfflineBundle:
        """Write the bundle to ``dest`` (0600, replaced atomically).

        Everything that can be checked is checked before the token is minted,
        so a refused export leaves the host's current install command working.
        ``progress`` is called on the event loop with (fraction, what)."""
        loop = asyncio.get_running_loop()
        report = _loop_progress(loop, progress)
        report(0.0, "Checking the agent build")
        host = await self._ctx.store.call(_unenrolled_host_name, request.host_id)
        inputs = await loop.run_in_executor(None, self._check_inputs, request, dest)

        report(0.05, "Minting a one-time enrolment token")
        # Also refuses (Conflict) a host that is enrolled already.
        grant = await self._enrolment.regenerate_token(request.host_id, actor)
        endpoint = self._endpoint()
        secret = _Secrets(
            server_url=endpoint.server_url,
            cert_sha256=endpoint.cert_sha256,
            token=grant.token,
            hostname=host,
            expires_at=grant.expires_at,
        )
        write = _write_linux if request.os == "linux" else _write_windows
        try:
            size, digest = await loop.run_in_executor(
                None, _write_private, dest, lambda f: write(f, request, inputs, secret, report)
            )
        except BaseException:
            # Nobody has seen this token: revoke it rather than leave a live secret behind.
            if grant.token_id is not None:
                with contextlib.suppress(Exception):
                    await self._enrolment.revoke_token(grant.token_id, actor)
            raise
        filename = bundle_filename(host, request.os, request.arch)
        await self._ctx.store.transaction(
            audit.record,
            actor.kind,
            "offline_bundle.exported",
            actor_id=actor.id,
            target_kind="host",
            target_id=request.host_id,
            payload={
                "os": request.os,
                "arch": request.arch,
                "file": filename,
                "size": size,
                "sha256": digest,
                "token_id": grant.token_id,
                "token_expires_at": grant.expires_at,
                "agent_version": inputs.agent_version,
                "includes_restic": inputs.restic is not None,
            },
        )
        report(1.0, "Done")
        return OfflineBundle(
            path=dest,
            filename=filename,
            size=size,
            sha256=digest,
            host_id=request.host_id,
            hostname=host,
            os=request.os,
            arch=request.arch,
            agent_version=inputs.agent_version,
            includes_restic=inputs.restic is not None,
            grant=grant,
        )

    # -- checks (executor) ---------------------------------------------------------

    def _check_inputs(self, request: BundleRequest, dest: Path) -> _Inputs:
        platform = f"{request.os}/{request.arch}"
        agents = {a.platform: a for a in list_bundled(self._agents_dir)}
        agent = agents.get(platform)
        if agent is None:
            have = ", ".join(sorted(agents)) or "none"
            raise NotFound(
                f"no agent build for {platform} is bundled with this app (bundled: {have}): "
                f"build {agent_file_name(request.os, request.arch)} on a {platform} machine "
                f"(`python packaging/build.py agent`, see packaging/README.md) and copy it into "
                f"{self._agents_dir}"
            )
        names = LINUX_INSTALL_FILES if request.os == "linux" else WINDOWS_INSTALL_FILES
        installers = {name: self._installers_dir / name for name in names}
        missing = [name for name, path in installers.items() if not path.is_file()]
        if missing:
            raise NotFound(
                f"{', '.join(missing)} missing from {self._installers_dir}: use a build of "
                "restic-manager that includes the installers/ folder"
            )
        restic = None
        if request.restic_path is not None:
            restic = _check_restic(request.restic_path, request.os, request.arch)
        _check_destination(dest)
        size = agent.path.stat().st_size + sum(p.stat().st_size for p in installers.values())
        if restic is not None:
            size += restic.stat().st_size
        free = shutil.disk_usage(dest.parent).free
        if free < size + _SPACE_MARGIN:
            raise InvalidInput(
                f"not enough free space in {dest.parent}: the bundle needs about "
                f"{(size + _SPACE_MARGIN) / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free",
                field="dest",
            )
        return _Inputs(agent.path, agent.version, installers, restic)


def _unenrolled_host_name(host_id: int) -> str:
    host: Host | None = Host.get_or_none(Host.id == host_id)
    if host is None:
        raise NotFound(f"host {host_id} does not exist")
    if host.enrolled_at is not None:
        raise Conflict(
            f"{host.name} is already enrolled: an offline bundle is for a host whose agent "
            "has not enrolled yet (delete the host and add it again to re-install its agent)"
        )
    return str(host.name)


def _loop_progress(loop: asyncio.AbstractEventLoop, progress: Progress | None) -> Progress:
    """A progress callback safe to call from the executor; it runs ``progress`` on the loop."""

    def report(fraction: float, what: str) -> None:
        if progress is None:
            return
        value = min(1.0, max(0.0, fraction))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            progress(value, what)
        else:
            loop.call_soon_threadsafe(progress, value, what)

    return report


def _check_restic(path: Path, os_name: str, arch: str) -> Path:
    shown = str(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidInput(
            f"the restic binary {shown} cannot be read: {exc.strerror or exc}", field="restic_path"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{shown} is not a file: pick the restic binary", field="restic_path")
    if st.st_size > MAX_RESTIC_BYTES or st.st_size < 64:
        raise InvalidInput(
            f"{shown} ({st.st_size / 2**20:.1f} MiB) does not look like a restic binary",
            field="restic_path",
        )
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise InvalidInput(
            f"the restic binary {shown} cannot be read: {exc.strerror or exc}", field="restic_path"
        ) from None
    found = _binary_platform(head)
    wanted = f"{os_name}/{arch}"
    if found is None:
        kind = "a Linux (ELF)" if os_name == "linux" else "a Windows (.exe)"
        raise InvalidInput(
            f"{shown} is not {kind} program: pick the restic binary for {wanted} "
            "(from https://github.com/restic/restic/releases, unpacked)",
            field="restic_path",
        )
    if found != wanted:
        raise InvalidInput(
            f"{shown} is restic for {found}, but this bundle is for {wanted}: "
            f"pick the {wanted} build",
            field="restic_path",
        )
    return path


def _binary_platform(head: bytes) -> str | None:
    """``linux/amd64``, ``windows/arm64``, … from an executable's first bytes;
    ``os/unknown`` for an architecture the agent is not built for."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        endian = "<" if head[5] == 1 else ">"
        (machine,) = struct.unpack(endian + "H", head[18:20])
        arch = next((a for a, m in _ELF_MACHINE.items() if m == machine), "unknown")
        return f"linux/{arch}"
    if head[:2] == b"MZ" and len(head) >= 64:
        (offset,) = struct.unpack("<I", head[60:64])
        if offset + 6 <= len(head) and head[offset : offset + 4] == b"PE\0\0":
            (machine,) = struct.unpack("<H", head[offset + 4 : offset + 6])
            arch = next((a for a, m in _PE_MACHINE.items() if m == machine), "unknown")
            return f"windows/{arch}"
    return None


def _check_destination(dest: Path) -> None:
    parent = dest.parent
    if not parent.is_dir():
        raise InvalidInput(f"the folder {parent} does not exist", field="dest")
    if dest.is_dir():
        raise InvalidInput(f"{dest} is a folder: choose a file name", field="dest")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write to {parent}: choose another folder", field="dest")


# -- writing (executor) -------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what goes to the file."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)


def _write_private(dest: Path, write: Callable[[_HashingWriter], None]) -> tuple[int, str]:
    """Write through ``write`` to a new 0600 file next to ``dest``, then rename it."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            write(out)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)  # also where the umask or an ACL default said otherwise
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out.size, out.digest.hexdigest()


@dataclass(frozen=True)
class _Member:
    name: str
    source: Path
    mode: int

    @property
    def size(self) -> int:
        return self.source.stat().st_size


class _Copier:
    """Reports progress by bytes copied, between two fractions of the whole job."""

    def __init__(self, total: int, report: Progress, start: float, end: float) -> None:
        self._total = max(1, total)
        self._done = 0
        self._report = report
        self._start = start
        self._span = end - start
        self._last = -1.0

    def advance(self, n: int, what: str) -> None:
        self._done += n
        fraction = self._start + self._span * min(1.0, self._done / self._total)
        # About a hundred reports per job, not one per chunk.
        if fraction - self._last >= 0.01 or self._done >= self._total:
            self._last = fraction
            self._report(fraction, what)

    def copy(self, src: IO[bytes], dst: IO[bytes] | _HashingWriter, what: str) -> None:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            self.advance(len(chunk), what)


class _CountingReader:
    """A source file that reports what tarfile reads from it."""

    def __init__(self, src: IO[bytes], copier: _Copier, what: str) -> None:
        self._src = src
        self._copier = copier
        self._what = what

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        self._copier.advance(len(data), self._what)
        return data


def _linux_members(request: BundleRequest, inputs: _Inputs) -> list[_Member]:
    members = [_Member(agent_file_name("linux", request.arch), inputs.agent, 0o755)]
    if inputs.restic is not None:
        members.append(_Member("restic", inputs.restic, 0o755))
    for name, path in inputs.installers.items():
        members.append(_Member(name, path, 0o755 if name.endswith(".sh") else 0o644))
    return members


def _tar_info(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _tar_payload(out: IO[bytes], members: list[_Member], copier: _Copier, now: float) -> None:
    """An uncompressed ustar archive, SHA256SUMS first. The agent is compressed
    already, and plain tar needs no gzip on the host."""
    sums = "".join(f"{sha256_file(m.source)}  {m.name}\n" for m in members).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_tar_info("SHA256SUMS", len(sums), 0o644, now), io.BytesIO(sums))
        for m in members:
            with m.source.open("rb") as src:
                reader = _CountingReader(src, copier, f"Adding {m.name}")
                tar.addfile(_tar_info(m.name, m.size, m.mode, now), reader)


def _sh(value: str) -> str:
    return shlex.quote(value)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ts))


_LINUX_HEADER = """#!/bin/sh
# restic-manager offline installer for the host {hostname} ({platform}), made {made}.
#
# THIS FILE CONTAINS A ONE-TIME ENROLMENT TOKEN: treat it like a password. Keep it
# on removable media or a private folder and delete it once the host shows as online
# in the app. The token works once and expires at {expires}; after that, export a
# new bundle (Add host → Offline bundle…).
#
# Run it as root on {hostname}:  sh {filename} [--no-systemd] [--force-reenrol]
# It needs no network access except to restic-manager at {server_url}, and no curl,
# openssl or python: it unpacks the agent{restic_note}, install.sh and the systemd
# unit into a private temporary folder and runs install.sh --offline.
set -eu
RM_SERVER={server_url_q}
RM_CERT_SHA256={pin_q}
RM_TOKEN={token_q}
PAYLOAD_OFFSET={offset}
PAYLOAD_SHA256={payload_sha256}

main() {{
	if [ ! -f "$0" ]; then
		echo "restic-manager bundle: run this file as 'sh FILE', not through a pipe" >&2
		exit 2
	fi
	if [ "$(id -u)" != 0 ]; then
		echo "restic-manager bundle: run this as root (e.g. sudo sh $0)" >&2
		exit 1
	fi
	umask 077
	d=$(mktemp -d "${{TMPDIR:-/tmp}}/restic-manager-bundle.XXXXXX")
	trap 'rm -rf "$d"' EXIT
	trap 'exit 130' INT TERM
	tail -c +"$PAYLOAD_OFFSET" "$0" >"$d/payload.tar"
	if [ "$(sha256sum "$d/payload.tar" | cut -c1-64)" != "$PAYLOAD_SHA256" ]; then
		echo "restic-manager bundle: this file is damaged or incomplete" \\
			"(checksum mismatch): copy it again" >&2
		exit 1
	fi
	tar -xf "$d/payload.tar" -C "$d"
	rm -f "$d/payload.tar"
	sh "$d/install.sh" --offline "$d" --server "$RM_SERVER" --token "$RM_TOKEN" \\
		--cert-sha256 "$RM_CERT_SHA256" "$@"
}}

main "$@"
exit $?
"""


def _write_linux(
    out: _HashingWriter,
    request: BundleRequest,
    inputs: _Inputs,
    secret: _Secrets,
    report: Progress,
) -> None:
    now = time.time()
    members = _linux_members(request, inputs)
    # The payload goes to a private temporary file first: its SHA-256 and size
    # belong in the header, which comes first.
    report(0.08, "Checksumming the files")
    copier = _Copier(sum(m.size for m in members), report, 0.1, 0.85)
    with _private_tempfile() as payload:
        _tar_payload(payload, members, copier, now)
        payload_sha = hashlib.sha256()
        payload.seek(0)
        while chunk := payload.read(_CHUNK):
            payload_sha.update(chunk)
        fields = {
            "hostname": _comment(secret.hostname),
            "platform": f"{request.os}/{request.arch}",
            "made": _when(now),
            "expires": _when(secret.expires_at),
            "filename": bundle_filename(secret.hostname, request.os, request.arch),
            "server_url": _comment(secret.server_url),
            "restic_note": ", restic" if inputs.restic is not None else "",
            "server_url_q": _sh(secret.server_url),
            "pin_q": _sh(secret.cert_sha256),
            "token_q": _sh(secret.token),
            "payload_sha256": payload_sha.hexdigest(),
        }
        # The offset is printed at a fixed width, so the header's length does not
        # depend on it.
        header = _LINUX_HEADER.format(offset="0" * 10, **fields)
        offset = len(header.encode("utf-8")) + 1
        header = _LINUX_HEADER.format(offset=f"{offset:010d}", **fields)
        assert len(header.encode("utf-8")) + 1 == offset
        out.write(header.encode("utf-8"))
        payload_size = payload.tell()
        payload.seek(0)
        _Copier(payload_size, report, 0.85, 0.99).copy(payload, out, "Writing the bundle")


def _comment(text: str) -> str:
    """Text safe inside a shell comment line."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def _private_tempfile() -> IO[bytes]:
    # Unnamed (O_TMPFILE or unlinked at once) and 0600: the token is not in it,
    # but the payload is what the bundle vouches for.
    return tempfile.TemporaryFile(prefix="restic-manager-bundle-")


_INSTALL_CMD = (
    "@echo off\r\n"
    "rem restic-manager offline installer: right-click, Run as administrator.\r\n"
    'powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0install.ps1" '
    '-Offline "%~dp0."\r\n'
    "if errorlevel 1 pause\r\n"
)

_WINDOWS_README = """restic-manager offline installer for the host {hostname} ({platform}),
made {made}.

THIS FOLDER CONTAINS A ONE-TIME ENROLMENT TOKEN (bundle.json): treat it like a
password, and delete it once the host shows as online in the app. The token
works once and expires at {expires}; after that, export a new bundle.

Install: unpack the zip, then right-click install.cmd -> Run as administrator
(or, in an elevated PowerShell:
  powershell -ExecutionPolicy Bypass -File .\\install.ps1 -Offline .)
The host needs no network access except to restic-manager at {server_url}.
"""


def _write_windows(
    out: _HashingWriter,
    request: BundleRequest,
    inputs: _Inputs,
    secret: _Secrets,
    report: Progress,
) -> None:
    now = time.time()
    made = _when(now)
    config = {
        "server_url": secret.server_url,
        "cert_sha256": secret.cert_sha256,
        "token": secret.token,
        "hostname": secret.hostname,
        "os": request.os,
        "arch": request.arch,
        "agent_version": inputs.agent_version,
        "made_at": now,
        "token_expires_at": secret.expires_at,
        "includes_restic": inputs.restic is not None,
    }
    files: list[tuple[str, Path]] = [(f"{AGENT_BASENAME}.exe", inputs.agent)]
    if inputs.restic is not None:
        files.append(("restic.exe", inputs.restic))
    files += list(inputs.installers.items())
    copier = _Copier(sum(p.stat().st_size for _, p in files), report, 0.1, 0.99)
    sums: list[str] = []
    stamp = time.localtime(now)[:6]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            digest = hashlib.sha256()
            with path.open("rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    copier.advance(len(chunk), f"Adding {name}")
            sums.append(f"{digest.hexdigest()}  {name}\n")
        texts = {
            "bundle.json": json.dumps(config, indent=2) + "\n",
            "SHA256SUMS": "".join(sums),
            "install.cmd": _INSTALL_CMD,
            "README.txt": _WINDOWS_README.format(
                hostname=secret.hostname,
                platform=f"{request.os}/{request.arch}",
                made=made,
                expires=_when(secret.expires_at),
                server_url=secret.server_url,
            ).replace("\n", "\r\n"),
        }
        for name, text in texts.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            zf.writestr(info, text.encode("utf-8"))


__all__ = [
    "BUNDLE_OSES",
    "BundleRequest",
    "OfflineBundle",
    "OfflineBundleService",
    "bundle_filename",
    "parse_bundle_request",
]
