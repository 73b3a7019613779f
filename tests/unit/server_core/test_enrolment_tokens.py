"""Enrolment tokens after Add host: listing, regenerating, revoking, install commands.

A real in-process control plane (real SQLite store, real API listener); tokens
are redeemed through the same service call the agent listener makes.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import keyring.backends.fail
import pytest

from agent.protocol import EnrolRequest
from server_core.control_plane import ControlPlane, ControlPlaneConfig, Endpoint
from server_core.errors import Conflict, NotFound, Unauthorized
from server_core.models import EnrolmentToken
from server_core.services.api_tokens import create_api_token
from server_core.services.audit_log import list_audit
from server_core.services.context import OPERATOR, SYSTEM, Actor
from server_core.services.enrolment import (
    WINDOWS_CONFIG,
    AgentEndpoint,
    EnrolmentService,
    default_install_command,
    endpoint_from_command,
    parse_new_host,
    windows_install_command,
)


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(
        ControlPlaneConfig(
            data_dir=tmp_path / "data",
            agent_listen=Endpoint("127.0.0.1", 0),
            api_listen=Endpoint("127.0.0.1", 0),
            keyring_backend=keyring.backends.fail.Keyring(),
        )
    )
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


async def add_host(cp: ControlPlane, name: str = "web1", paths: list[str] | None = None):
    new = parse_new_host(
        {
            "hostname": name,
            "repository": {"url": "/srv/restic/" + name, "password": "hunter2hunter2"},
            "initial_paths": paths if paths is not None else ["/etc", "/home"],
        }
    )
    return await cp.enrolment.add_host(new, OPERATOR)


def enrol_request(token: str, name: str = "web1") -> EnrolRequest:
    return EnrolRequest(token=token, hostname=name, os="linux", arch="amd64", agent_version="t")


async def audit(cp: ControlPlane, action: str):
    return await cp.store.call(list_audit, action=action)


async def test_add_host_lists_one_active_token(cp):
    before = time.time()
    grant = await add_host(cp)
    tokens = await cp.enrolment.list_tokens(grant.host_id)
    assert len(tokens) == 1
    (view,) = tokens
    assert view.host_id == grant.host_id
    assert view.state == "active"
    assert view.used_at is None and view.revoked_at is None
    assert before <= view.created_at <= time.time()
    assert view.expires_at == grant.expires_at
    assert view.id == grant.token_id
    assert not hasattr(view, "token") and not hasattr(view, "token_hash")


async def test_list_tokens_of_unknown_host_is_not_found(cp):
    with pytest.raises(NotFound):
        await cp.enrolment.list_tokens(999)


async def test_token_states_follow_use_and_time(cp):
    grant = await add_host(cp)

    def expire() -> None:
        EnrolmentToken.update(expires_at=time.time() - 1).execute()

    await cp.store.transaction(expire)
    (view,) = await cp.enrolment.list_tokens(grant.host_id)
    assert view.state == "expired"
    with pytest.raises(Unauthorized, match="expired"):
        await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")

    fresh = await cp.enrolment.regenerate_token(grant.host_id, OPERATOR)
    await cp.enrolment.redeem(enrol_request(fresh.token), "127.0.0.1")
    states = [t.state for t in await cp.enrolment.list_tokens(grant.host_id)]
    # Newest first; an expired token is not "revoked" by a regenerate.
    assert states == ["used", "expired"]


async def test_regenerate_revokes_the_old_token_and_keeps_the_initial_paths(cp):
    grant = await add_host(cp, paths=["/etc", "/srv/data"])
    old_id = (await cp.enrolment.list_tokens(grant.host_id))[0].id

    fresh = await cp.enrolment.regenerate_token(grant.host_id, OPERATOR)
    assert fresh.host_id == grant.host_id
    assert fresh.token != grant.token
    assert fresh.expires_at > time.time() + 3500

    tokens = await cp.enrolment.list_tokens(grant.host_id)
    assert [(t.state, t.id == old_id) for t in tokens] == [("active", False), ("revoked", True)]

    with pytest.raises(Unauthorized, match="revoked"):
        await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")
    response = await cp.enrolment.redeem(enrol_request(fresh.token), "127.0.0.1")
    assert response.host_id == grant.host_id

    groups = await cp.hosts.list_source_groups(grant.host_id)
    assert [(g.name, g.includes) for g in groups] == [("default", ["/etc", "/srv/data"])]

    (entry,) = await audit(cp, "enrolment_token.regenerated")
    assert entry.actor_kind == "operator"
    assert entry.target_kind == "host" and entry.target_id == str(grant.host_id)
    assert entry.payload["revoked_token_ids"] == [old_id]
    assert entry.payload["token_id"] == tokens[0].id == fresh.token_id


async def test_regenerate_is_refused_once_the_host_is_enrolled(cp):
    grant = await add_host(cp)
    await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")
    with pytest.raises(Conflict, match="already enrolled") as caught:
        await cp.enrolment.regenerate_token(grant.host_id, OPERATOR)
    assert caught.value.status == 409
    assert [t.state for t in await cp.enrolment.list_tokens(grant.host_id)] == ["used"]
    assert await audit(cp, "enrolment_token.regenerated") == []


async def test_regenerate_for_unknown_host_is_not_found(cp):
    with pytest.raises(NotFound):
        await cp.enrolment.regenerate_token(4242, OPERATOR)


async def test_revoke_makes_the_token_unusable_and_is_audited(cp):
    grant = await add_host(cp)
    (view,) = await cp.enrolment.list_tokens(grant.host_id)
    actor = Actor("api", "token:7")
    revoked = await cp.enrolment.revoke_token(view.id, actor)
    assert revoked.state == "revoked" and revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")

    # Revoking again changes nothing and is not audited twice.
    again = await cp.enrolment.revoke_token(view.id, OPERATOR)
    assert again.revoked_at == revoked.revoked_at
    (entry,) = await audit(cp, "enrolment_token.revoked")
    assert (entry.actor_kind, entry.actor_id) == ("api", "token:7")
    assert entry.target_id == str(grant.host_id)
    assert entry.payload["token_id"] == view.id


async def test_revoke_unknown_or_used_token(cp):
    with pytest.raises(NotFound):
        await cp.enrolment.revoke_token(31337, OPERATOR)
    grant = await add_host(cp)
    await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")
    (view,) = await cp.enrolment.list_tokens(grant.host_id)
    with pytest.raises(Conflict, match="already used"):
        await cp.enrolment.revoke_token(view.id, OPERATOR)
    (after,) = await cp.enrolment.list_tokens(grant.host_id)
    assert after.state == "used" and after.revoked_at is None


async def test_token_changes_are_published_for_the_ui(cp):
    grant = await add_host(cp)
    seen: list[object] = []
    unsubscribe = cp.bus.subscribe(seen.append)
    try:
        await cp.enrolment.regenerate_token(grant.host_id, SYSTEM)
        tokens = await cp.enrolment.list_tokens(grant.host_id)
        await cp.enrolment.revoke_token(tokens[0].id, OPERATOR)
    finally:
        unsubscribe()
    assert [getattr(e, "host_id", None) for e in seen] == [grant.host_id, grant.host_id]


async def test_install_commands_for_both_platforms(cp):
    grant = await add_host(cp)
    commands = cp.enrolment.install_commands(grant.token)
    pin = cp.certificate.sha256
    assert commands.linux == cp.enrolment.install_command(grant.token)
    linux = shlex.split(commands.linux)
    assert linux[linux.index("--token") + 1] == grant.token
    assert linux[linux.index("--cert-sha256") + 1] == pin

    # The Linux command runs install.sh with exactly these arguments.
    assert linux[:3] == ["sudo", "sh", "-c"] and linux[4] == "-"
    assert linux[5:] == ["--server", cp.agent_url, "--token", grant.token, "--cert-sha256", pin]

    win = commands.windows
    assert f"DownloadFile('{cp.agent_url}/install/install.ps1',$f)" in win
    assert f"-eq '{pin}'" in win  # the certificate callback accepts the pinned one only
    assert f"-Server '{cp.agent_url}' -Token {grant.token} -CertSha256 {pin}" in win
    assert WINDOWS_CONFIG == r"$env:ProgramData\restic-manager-agent\config.toml"
    assert "&&" not in win  # Windows PowerShell 5.1 has no &&
    assert "\n" not in win and "\n" not in commands.linux


def test_windows_command_quotes_what_powershell_would_interpret():
    line = windows_install_command("https://h:1/a b", "ab:CD", "t'ok$x")
    assert "-Server 'https://h:1/a b'" in line
    assert "-Token 't''ok$x'" in line  # single quotes: no $ expansion, ' doubled
    assert line.startswith("& { ") and line.endswith("-CertSha256 abcd }")
    assert "-Token '-x'" in windows_install_command("u", "p", "-x")


def test_endpoint_is_recovered_from_the_default_command():
    command = default_install_command("https://[::1]:8765", "0a" * 32)("rme_tok")
    assert endpoint_from_command(command) == AgentEndpoint("https://[::1]:8765", "0a" * 32)
    with pytest.raises(ValueError):
        endpoint_from_command("echo hello")


async def test_a_wired_endpoint_wins_over_the_command(cp):
    service = EnrolmentService(
        cp.ctx,
        install_command=lambda token: f"custom-installer {token}",
        agent_endpoint=lambda: AgentEndpoint("https://cp.example:9999", "ff" * 32),
    )
    commands = service.install_commands("rme_abc")
    assert commands.linux == "custom-installer rme_abc"
    assert "-Server 'https://cp.example:9999' " in commands.windows
    assert commands.windows.endswith(f"-CertSha256 {'ff' * 32} }}")


# -- the operator API ------------------------------------------------------------


@pytest.fixture
async def api(cp) -> AsyncIterator[aiohttp.ClientSession]:
    raw = await cp.store.transaction(create_api_token, "tests", OPERATOR)
    async with aiohttp.ClientSession(
        base_url=cp.api_url, headers={"Authorization": f"Bearer {raw}"}
    ) as session:
        yield session


async def test_api_lists_regenerates_and_revokes(cp, api):
    grant = await add_host(cp)
    async with api.get(f"/api/v1/hosts/{grant.host_id}/enrolment-tokens") as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert [t["state"] for t in listed] == ["active"]
    assert set(listed[0]) == {
        "id",
        "host_id",
        "created_at",
        "expires_at",
        "used_at",
        "revoked_at",
        "state",
    }

    async with api.post(f"/api/v1/hosts/{grant.host_id}/enrolment-tokens") as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["host_id"] == grant.host_id
    assert created["token_id"] != grant.token_id
    assert created["token"].startswith("rme_")
    assert created["expires_at"] > time.time()
    assert created["install_command"] == cp.enrolment.install_command(created["token"])
    assert created["install_commands"]["linux"] == created["install_command"]
    assert created["token"] in created["install_commands"]["windows"]

    tokens = await cp.enrolment.list_tokens(grant.host_id)
    assert [t.state for t in tokens] == ["active", "revoked"]
    async with api.delete(f"/api/v1/enrolment-tokens/{tokens[0].id}") as resp:
        assert resp.status == 204
    assert [t.state for t in await cp.enrolment.list_tokens(grant.host_id)] == [
        "revoked",
        "revoked",
    ]
    (entry,) = await audit(cp, "enrolment_token.revoked")
    assert entry.actor_kind == "api"


async def test_api_errors(cp, api):
    async with api.get("/api/v1/hosts/77/enrolment-tokens") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with api.delete("/api/v1/enrolment-tokens/77") as resp:
        assert resp.status == 404
    async with api.delete("/api/v1/enrolment-tokens/abc") as resp:
        assert resp.status == 404

    grant = await add_host(cp)
    await cp.enrolment.redeem(enrol_request(grant.token), "127.0.0.1")
    async with api.post(f"/api/v1/hosts/{grant.host_id}/enrolment-tokens") as resp:
        assert resp.status == 409
        body = await resp.json()
    assert body["error"]["code"] == "conflict"
    assert "already enrolled" in body["error"]["message"]
    (token,) = await cp.enrolment.list_tokens(grant.host_id)
    async with api.delete(f"/api/v1/enrolment-tokens/{token.id}") as resp:
        assert resp.status == 409


async def test_api_requires_a_token(cp):
    grant = await add_host(cp)
    url = f"/api/v1/hosts/{grant.host_id}/enrolment-tokens"
    async with aiohttp.ClientSession(base_url=cp.api_url) as anon, anon.post(url) as resp:
        assert resp.status == 401
    assert len(await cp.enrolment.list_tokens(grant.host_id)) == 1
