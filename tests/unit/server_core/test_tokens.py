from __future__ import annotations

import hashlib
import re

import pytest

from server_core.tokens import hash_token, new_token, token_matches


def test_new_token_shape_and_entropy() -> None:
    token = new_token("rmagent")
    prefix, _, body = token.partition("_")
    assert prefix == "rmagent"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body)  # 32 bytes, base64url, no padding
    assert len({new_token("rmagent") for _ in range(200)}) == 200


def test_prefix_may_contain_dash() -> None:
    assert new_token("rm-enrol").startswith("rm-enrol_")


@pytest.mark.parametrize("prefix", ["", "a_b", "a b", "ä", "-x", "x/y"])
def test_bad_prefix_rejected(prefix: str) -> None:
    with pytest.raises(ValueError):
        new_token(prefix)


def test_hash_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    token = new_token("t")
    assert hash_token(token) != token and len(hash_token(token)) == 64


def test_token_matches() -> None:
    token = new_token("t")
    stored = hash_token(token)
    assert token_matches(token, stored)
    assert not token_matches(token + "x", stored)
    assert not token_matches(token[:-1], stored)
    assert not token_matches(new_token("t"), stored)
    assert not token_matches(token, stored.upper())
    assert not token_matches(token, "")


def test_token_matches_never_raises_on_odd_input() -> None:
    stored = hash_token("x")
    assert not token_matches("x", "é" * 64)
    assert not token_matches("\udcff", stored)
    assert not token_matches("\ud800x", stored)
    assert token_matches("ünïcødé", hash_token("ünïcødé"))
