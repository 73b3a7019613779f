"""The agent's side of announce-and-approve: its key, its arguments, its banner,
and (in process, against a real control plane over TLS) what happens when the
enrolment cannot be written."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent import protocol as p
from agent.announce import Announcer, banner, prepare
from agent.config import load_config
from agent.enrol import EnrolError
from agent.identity import IdentityError, identity_path_for, load_or_create
from server_core.services.context import OPERATOR
from tests.helpers.announce import announce_server

PIN = "ab" * 32


def _prepare(tmp_path: Path, **over: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "server_url": "https://192.0.2.1:8765",
        "cert_sha256": PIN,
        "config_path": tmp_path / "etc" / "config.toml",
        "state_dir": tmp_path / "state",
        "restic_path": None,
        "hostname": "web1",
    }
    args.update(over)
    return prepare(**args)  # type: ignore[arg-type]


def test_the_key_is_created_private_once_and_reused(tmp_path):
    first = _prepare(tmp_path)
    key = identity_path_for(tmp_path / "state")
    assert first.created_key and first.identity.path == key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    second = _prepare(tmp_path)
    assert not second.created_key
    assert second.identity.fingerprint == first.identity.fingerprint
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", first.identity.fingerprint)
    assert first.identity.fingerprint == p.key_fingerprint(first.identity.public_bytes)
    assert "PRIVATE" not in repr(first.identity)


def test_unusable_keys_are_refused_with_what_to_do(tmp_path):
    key = identity_path_for(tmp_path)
    load_or_create(key)
    os.chmod(key, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create(key)
    key.write_bytes(b"garbage")
    os.chmod(key, 0o600)
    with pytest.raises(IdentityError, match="not a readable private key"):
        load_or_create(key)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key.write_bytes(other)
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        load_or_create(key)


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"server_url": "http://192.0.2.1:8765"}, "https://HOST:PORT"),
        ({"cert_sha256": "nope"}, "--cert-sha256"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, over, text):
    with pytest.raises(EnrolError, match=re.escape(text)) as err:
        _prepare(tmp_path, **over)
    assert err.value.exit_code == 2
    assert not (tmp_path / "state").exists()


def test_an_enrolled_host_is_not_announced_again(tmp_path):
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text("")
    with pytest.raises(EnrolError, match="enrolled already") as err:
        _prepare(tmp_path)
    assert err.value.exit_code == 2


def test_the_banner_puts_the_fingerprint_alone_on_its_line(tmp_path):
    prepared = _prepare(tmp_path)
    text = banner(
        prepared.identity.fingerprint, "web1", "https://h:1", prepared.identity.path, True
    )
    lines = text.splitlines()
    assert f"    {prepared.identity.fingerprint}" in lines
    assert "new key created" in text and "web1" in text


async def test_an_enrolment_that_cannot_be_written_is_sent_again_on_the_next_run(tmp_path):
    async with announce_server(tmp_path / "data") as server:
        blocked = tmp_path / "blocked"
        blocked.write_text("a file where the config directory should be")
        prepared = _prepare(
            tmp_path,
            server_url=server.url,
            cert_sha256=server.pin,
            config_path=blocked / "config.toml",
        )
        said: list[str] = []
        announcer = Announcer(prepared, say=said.append, restic_version="0.18.0")
        running = asyncio.create_task(announcer.run())

        async def listed() -> int:
            while True:
                views = await server.pending.list_pending()
                if views and views[0].connected:
                    return views[0].id
                await asyncio.sleep(0.02)

        pending_id = await asyncio.wait_for(listed(), 10)
        accepted = await server.pending.accept(
            pending_id, {"repository": {"url": "/srv/r", "password": "pw-pw-pw"}}, OPERATOR
        )
        with pytest.raises(EnrolError, match="run announce again with the same --state-dir"):
            await running
        assert not accepted.delivered
        assert any("Waiting for the operator" in line for line in said)

        # Fixed path, same key: the enrolment arrives without a new approval.
        fixed = _prepare(
            tmp_path, server_url=server.url, cert_sha256=server.pin, config_path=tmp_path / "c.toml"
        )
        assert fixed.identity.fingerprint == prepared.identity.fingerprint
        result = await asyncio.wait_for(Announcer(fixed, say=said.append).run(), 15)
        assert result.host_id == accepted.host_id
        config = load_config(tmp_path / "c.toml")
        assert config.host_id == accepted.host_id and config.server_url == server.url
        assert config.hostname == "web1"
