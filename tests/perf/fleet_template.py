"""A control-plane data directory with N hosts enrolled, for the fleet benchmarks.

Enrolment goes through the services (``add_host`` then ``redeem``, what the
enrol endpoint runs) instead of N HTTPS round trips; each host gets the
default source group. The state is then settled the way a fleet that has
been running looks after a control-plane restart: every first ``init``
probe finished, every agent at the current plan version, so a connecting
agent gets ``config.update`` and nothing else; maintenance plans are off so
no forget/prune window can fire during a run. Built once per code version
and cached under tests/perf/.cache (the key hashes the server's schema and
enrolment code); each run copies it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keyring.backends.fail

from agent import protocol as p
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.models import Host, Job, Maintenance, SourceGroup
from server_core.services.api_tokens import create_api_token
from server_core.services.context import OPERATOR
from server_core.services.enrolment import parse_new_host
from tests.perf.benchlib import CACHE, ROOT

REPO_URL = "/srv/restic/bench"
PATHS = ["/etc", "/home", "/srv"]
_KEYED = [
    "server_core/migrations.py",
    "server_core/models.py",
    "server_core/services/enrolment.py",
    "server_core/tokens.py",
    "server_core/crypto.py",
    "tests/perf/fleet_template.py",
]


@dataclass(frozen=True)
class Agent:
    host_id: int
    bearer: str
    group_id: int
    schedule_version: int
    name: str


@dataclass(frozen=True)
class Template:
    data_dir: Path
    api_token: str
    agents: list[Agent]

    def copy_to(self, dest: Path) -> Path:
        shutil.copytree(self.data_dir, dest)
        return dest


def _key(hosts: int) -> str:
    digest = hashlib.sha256(str(hosts).encode())
    for rel in _KEYED:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:12]


async def template(hosts: int) -> Template:
    home = CACHE / f"fleet-{hosts}-{_key(hosts)}"
    meta = home / "fleet.json"
    if not meta.is_file():
        for stale in CACHE.glob(f"fleet-{hosts}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        print(f"enrolling {hosts} hosts through the services (once; cached) ...", flush=True)
        began = time.monotonic()
        tmp = home.with_name(home.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        await _build(tmp / "data", tmp / "fleet.json", hosts)
        tmp.rename(home)
        print(f"  took {time.monotonic() - began:.1f} s", flush=True)
    info = json.loads(meta.read_text())
    return Template(
        data_dir=home / "data",
        api_token=info["api_token"],
        agents=[Agent(**a) for a in info["agents"]],
    )


async def _build(data: Path, meta: Path, hosts: int) -> None:
    cp = ControlPlane(
        ControlPlaneConfig(
            data_dir=data,
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            advertise_host="127.0.0.1",
            keyring_backend=keyring.backends.fail.Keyring(),  # type: ignore[no-untyped-call]
        )
    )
    await cp.start()
    try:
        bearers: dict[int, str] = {}
        for i in range(hosts):
            grant = await cp.enrolment.add_host(
                parse_new_host(
                    {
                        "hostname": f"sim{i:04d}",
                        "repository": {"url": f"{REPO_URL}/{i}", "password": f"pw-{i}"},
                        "initial_paths": PATHS,
                    }
                ),
                OPERATOR,
            )
            response = await cp.enrolment.redeem(
                p.EnrolRequest(
                    token=grant.token,
                    hostname=f"sim{i:04d}",
                    os="linux",
                    arch="amd64",
                    agent_version="sim",
                    restic_version="0.18.0",
                ),
                "127.0.0.1",
            )
            bearers[response.host_id] = response.bearer

        def settle() -> tuple[str, list[dict[str, object]]]:
            now = time.time()
            Job.update(
                status="succeeded", dispatched_at=now, started_at=now, finished_at=now
            ).where(Job.kind == "init").execute()
            Host.update(repo_status="ready", schedule_acked_version=Host.schedule_version).execute()
            # No maintenance window may fall inside a run (a Sunday 04:30 prune
            # for the whole fleet would swamp the figures): the load stays the
            # benchmark's own.
            Maintenance.update(enabled=False).execute()
            token = create_api_token("bench", OPERATOR)
            groups = dict(SourceGroup.select(SourceGroup.host, SourceGroup.id).tuples())
            rows = []
            for host in Host.select().order_by(Host.id):
                rows.append(
                    {
                        "host_id": host.id,
                        "bearer": bearers[host.id],
                        "group_id": groups[host.id],
                        "schedule_version": host.schedule_version,
                        "name": host.name,
                    }
                )
            return token, rows

        token, rows = await cp.store.transaction(settle)
    finally:
        await cp.stop()
    meta.write_text(json.dumps({"api_token": token, "agents": rows}) + "\n")
