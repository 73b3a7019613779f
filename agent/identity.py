"""This host's Ed25519 identity for announce-and-approve.

The public key, not the hostname, is what the operator approves: the app
shows its fingerprint and so does ``announce``, and the two must match.
The private key is created once and kept (0600) in the state directory,
so a re-run or a reconnect announces the same identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol
from agent.config import create_private_file

IDENTITY_FILE_NAME = "identity_ed25519.pem"


class IdentityError(Exception):
    """The key file exists but cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    path: Path

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def fingerprint(self) -> str:
        return protocol.key_fingerprint(self.public_bytes)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def __repr__(self) -> str:
        return f"Identity(path={str(self.path)!r}, fingerprint={self.fingerprint!r})"


def identity_path_for(state_dir: Path) -> Path:
    return state_dir / IDENTITY_FILE_NAME


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """The identity stored at ``path``, creating it first if there is none.

    Returns ``(identity, created)``. Two processes racing to create it end up
    with the same key: the file is created exclusively and the loser reads
    the winner's."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            created = create_private_file(path, pem)
        except OSError as exc:
            raise IdentityError(
                f"cannot create the host key {path}: {exc}; check --state-dir and its permissions"
            ) from None
        if created:
            return Identity(key, path), True
    return _load(path), False


def _load(path: Path) -> Identity:
    try:
        if os.name != "nt" and path.stat().st_mode & 0o077:
            raise IdentityError(
                f"the host key {path} is readable by other users; run 'chmod 600 {path}' "
                "(or delete it to announce with a new key)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read the host key {path}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(
            f"the host key {path} is not a readable private key; delete it to announce "
            "with a new key (the app will show a new fingerprint)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(
            f"the host key {path} is not an Ed25519 key; delete it to announce with a new key"
        )
    return Identity(key, path)
