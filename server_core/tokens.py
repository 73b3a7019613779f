"""Bearer tokens: minted once, shown once, stored only as a hash.

Tokens carry 256 bits of randomness, so a plain SHA-256 is enough: a slow
password hash would only protect low-entropy secrets, and these are not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_TOKEN_BYTES = 32
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def new_token(prefix: str) -> str:
    """``prefix`` tells a leaked token's kind at a glance (e.g. ``rmenrol``)."""
    if not _PREFIX.fullmatch(prefix):
        # '_' would make the prefix ambiguous: token_urlsafe output may contain it.
        raise ValueError(f"token prefix must be ASCII letters, digits or '-', got {prefix!r}")
    return f"{prefix}_{secrets.token_urlsafe(_TOKEN_BYTES)}"


def hash_token(token: str) -> str:
    # surrogatepass: aiohttp decodes malformed header bytes to lone surrogates,
    # and a junk Authorization header must fail to match, not raise.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    # Compared as bytes: compare_digest rejects non-ASCII str with TypeError,
    # and a malformed stored hash must simply not match.
    return hmac.compare_digest(
        hash_token(token).encode("ascii"), stored_hash.encode("utf-8", "replace")
    )
