"""A second "host" on this machine: a network namespace joined to the root
namespace by a veth pair (see ENGINEERING.md, "Several hosts on one machine").

Inside, the only network is 10.200.N.0/24: the root side is 10.200.N.1 (where
the control plane listens for it), the host is 10.200.N.2. Its loopback is
its own, so nothing the root namespace binds on 127.0.0.1 is reachable. The
file system is shared: paths mean the same on both sides.

Needs root and iproute2; ``unavailable_reason()`` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def unavailable_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    return None


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")


def _used_subnets() -> set[int]:
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=30, check=True
    )
    return {int(n) for n in re.findall(r"inet 10\.200\.(\d+)\.", out.stdout)}


@dataclass(frozen=True)
class NetnsHost:
    name: str
    subnet: int
    veth_root: str
    veth_host: str

    @property
    def root_ip(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def host_ip(self) -> str:
        return f"10.200.{self.subnet}.2"

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *command]

    def set_link(self, up: bool) -> None:
        """Cut the host off the network (False) or reconnect it (True)."""
        _ip("link", "set", self.veth_root, "up" if up else "down")


@contextlib.contextmanager
def netns_host(tag: str = "h") -> Iterator[NetnsHost]:
    """A fresh namespace with its veth pair, removed on exit whatever happened."""
    used = _used_subnets()
    # A random free /24 high in the range, so helpers running at once rarely collide.
    subnet = random.choice([n for n in range(100, 250) if n not in used])
    suffix = f"{subnet}{os.getpid() % 10000}"
    host = NetnsHost(
        name=f"rm-{tag}-{suffix}",
        subnet=subnet,
        veth_root=f"rmv{suffix}r"[:15],
        veth_host=f"rmv{suffix}h"[:15],
    )
    created = False
    try:
        _ip("netns", "add", host.name)
        created = True
        _ip("link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_host)
        _ip("link", "set", host.veth_host, "netns", host.name)
        _ip("addr", "add", f"{host.root_ip}/24", "dev", host.veth_root)
        _ip("link", "set", host.veth_root, "up")
        _ip("-n", host.name, "addr", "add", f"{host.host_ip}/24", "dev", host.veth_host)
        _ip("-n", host.name, "link", "set", host.veth_host, "up")
        _ip("-n", host.name, "link", "set", "lo", "up")
        yield host
    finally:
        # Deleting the namespace deletes the veth pair with it; the explicit
        # delete covers a failure between creating the pair and moving it.
        if created:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", host.name)
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", host.veth_root)
