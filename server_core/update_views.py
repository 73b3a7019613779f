"""Read models of agent self-updates, for the API and the UI (plain frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# One host's update, as a fleet run or the host page shows it.
PENDING = "pending"  # waiting its turn in a fleet run
UPDATING = "updating"  # command.update sent; waiting for the agent to come back
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"  # offline, busy, already current, no build for it
NOT_STARTED = "not_started"  # the fleet run halted or was cancelled before this host
HOST_STATES = (PENDING, UPDATING, SUCCEEDED, FAILED, SKIPPED, NOT_STARTED)

# A fleet run.
RUNNING = "running"
CANCELLED = "cancelled"
RUN_STATES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class BundledAgentView:
    """An agent build the app serves (``dist/agents`` or the packaged app's copy)."""

    os: str
    arch: str
    # From the build's sidecar ``<file>.json``; None if the build did not record one
    # (such a build is never offered as an update).
    version: str | None

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.arch}"


@dataclass(frozen=True)
class HostUpdateView:
    host_id: int
    host_name: str
    from_version: str | None
    to_version: str | None
    state: str  # one of HOST_STATES
    job_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # What is happening ("downloading 45 %", "restarting…") or why it failed or was skipped.
    detail: str | None = None


@dataclass(frozen=True)
class FleetUpdateView:
    id: str
    state: str  # one of RUN_STATES
    actor: str
    started_at: float
    finished_at: float | None
    hosts: list[HostUpdateView] = field(default_factory=list)
    # Why it stopped: the failure it halted at, or who cancelled it.
    message: str | None = None
    # The host being updated now (None between hosts and once finished).
    current_host_id: int | None = None


def platform_key(os_name: str | None, arch: str | None) -> str | None:
    return f"{os_name}/{arch}" if os_name and arch else None


def available_update(
    os_name: str | None,
    arch: str | None,
    agent_version: str | None,
    bundled: Mapping[str, str],
) -> str | None:
    """The bundled version a host could update to, or None.

    A host qualifies when it has reported its platform and agent version and
    the app bundles a build for that platform whose version differs: newer or
    older, the app's build is the one it should run. ``bundled`` maps
    ``"os/arch"`` to a version (``UpdateService.bundled_versions()``).
    """
    key = platform_key(os_name, arch)
    if key is None or not agent_version:
        return None
    version = bundled.get(key)
    return version if version and version != agent_version else None
