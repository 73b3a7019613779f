"""Operator API tokens (created in Settings or with `restic-manager api-token create`)."""

from __future__ import annotations

import time

from server_core import audit, tokens
from server_core.errors import InvalidInput
from server_core.models import ApiToken
from server_core.services.context import Actor


def create_api_token(name: str, actor: Actor) -> str:
    """Mint a token (store thread, inside a transaction); returns the raw token once."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("the token name must be 1-100 characters", field="name")
    raw = tokens.new_token("rma")
    row = ApiToken.create(name=name, token_hash=tokens.hash_token(raw), created_at=time.time())
    audit.record(
        actor.kind,
        "api_token.created",
        actor_id=actor.id,
        target_kind="api_token",
        target_id=row.id,
        payload={"name": name},
    )
    return raw


def authenticate_api_token(raw: str) -> int | None:
    """The id of the live token matching ``raw`` (store thread)."""
    row = ApiToken.get_or_none(ApiToken.token_hash == tokens.hash_token(raw))
    if row is None or row.revoked_at is not None or not tokens.token_matches(raw, row.token_hash):
        return None
    now = time.time()
    # Recording every use would turn each API read into a write; a minute is plenty.
    if row.last_used_at is None or now - row.last_used_at > 60:
        ApiToken.update(last_used_at=now).where(ApiToken.id == row.id).execute()
    return int(row.id)
