"""Finding the restic binary and learning which features it has.

restic's command line grew over the versions the fleet runs (Debian bookworm
ships 0.14.0, trixie 0.18.0). Passing a flag an old restic does not know makes
it fail with "unknown flag", so every version-dependent flag is gated on one of
the properties below.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass

from agent.restic.commands import minimal_env

__all__ = [
    "VERSION_TIMEOUT_SECONDS",
    "ResticNotFound",
    "ResticVersion",
    "detect_version",
    "find_restic",
]

VERSION_TIMEOUT_SECONDS = 15.0

# Release builds print "restic 0.14.0 compiled with go1.19.8 on linux/amd64";
# self-built ones print "restic 0.16.4-dev (compiled manually) compiled with ...".
_VERSION_RE = re.compile(r"\brestic\s+v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class ResticVersion:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def parse(cls, text: str) -> ResticVersion:
        match = _VERSION_RE.search(text)
        if match is None:
            shown = text.strip()[:200] or "<empty>"
            raise ValueError(f"cannot parse restic version from {shown!r}")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    def _at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch) >= (major, minor, patch)

    @property
    def init_json(self) -> bool:
        """`init --json` prints a JSON result (0.14 silently prints text)."""
        return self._at_least(0, 15)

    @property
    def restore_json(self) -> bool:
        """`restore --json` streams progress (ignored before 0.16)."""
        return self._at_least(0, 16)

    @property
    def retry_lock(self) -> bool:
        """Global `--retry-lock`; 0.14 rejects it as an unknown flag."""
        return self._at_least(0, 16)

    @property
    def snapshot_summary(self) -> bool:
        """Snapshots carry a `summary` block with the backup statistics."""
        return self._at_least(0, 17)

    @property
    def exit_codes_10_11(self) -> bool:
        """Exit code 10 = repository does not exist, 11 = repository locked."""
        return self._at_least(0, 17)

    @property
    def exit_code_12(self) -> bool:
        """Exit code 12 = wrong password."""
        return self._at_least(0, 17, 1)

    @property
    def check_json(self) -> bool:
        """`check --json` prints JSON (ignored before 0.18)."""
        return self._at_least(0, 18)


class ResticNotFound(Exception):
    """No usable restic executable was found."""


def _resolve_executable(candidate: str) -> str | None:
    # A bare name such as "restic" is looked up on PATH, like a shell would.
    if os.sep not in candidate and (os.altsep is None or os.altsep not in candidate):
        found = shutil.which(candidate)
        if found is not None:
            return found
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return None


def find_restic(flag: str | None, configured: str | None) -> str:
    """Return the first existing executable of: flag, configured, `restic` on PATH."""
    tried: list[str] = []
    for origin, candidate in (("--restic flag", flag), ("configured path", configured)):
        if not candidate:
            continue
        found = _resolve_executable(candidate)
        if found is not None:
            return found
        tried.append(f"{origin} {candidate!r} (not an executable file)")
    on_path = shutil.which("restic")
    if on_path is not None:
        return on_path
    tried.append("'restic' on PATH (not found)")
    raise ResticNotFound("restic executable not found; tried: " + "; ".join(tried))


async def detect_version(binary: str) -> ResticVersion:
    """Run `binary version` and parse its output.

    Raises ResticNotFound if the binary cannot be started, TimeoutError if it
    does not answer within VERSION_TIMEOUT_SECONDS and ValueError if the output
    is not a restic version line.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "version",
            env=minimal_env(os.environ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise ResticNotFound(f"cannot run {binary!r}: {exc}") from exc
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_SECONDS):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise TimeoutError(
            f"{binary!r} did not answer 'version' within {VERSION_TIMEOUT_SECONDS:.0f} s"
        ) from None
    except BaseException:
        # Cancelled while waiting: never leave the child behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    text = stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        err = stderr.decode("utf-8", "replace").strip()[:500]
        raise ValueError(f"{binary!r} version exited with code {proc.returncode}: {err}")
    return ResticVersion.parse(text)
