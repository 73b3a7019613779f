"""The agent's encrypted secrets: bearer token, repository credentials, hooks.

The file lives in the state dir; its 32-byte AES-256-GCM key lives beside
the config file, in another directory, so a copy of the state dir alone
(a backup of /var/lib, a support bundle) reveals nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.config import create_private_file, write_private_file_atomic

KEY_SIZE = 32
NONCE_SIZE = 12
AAD = b"restic-manager-agent-secrets:v1"
_FORMAT_V1 = b"v1"
_MIN_BLOB = len(_FORMAT_V1) + NONCE_SIZE + 16
_REENROL = (
    "Re-enrol this host (run the install command from restic-manager again) to get "
    "a fresh token and credentials."
)


class SecretsError(Exception):
    """The secrets file or its key cannot be used; the message says what to do."""


class SecretsFile:
    def __init__(self, path: Path, key_path: Path) -> None:
        self._path = path
        self._key_path = key_path
        # update() is read-modify-write; two threads must not interleave it.
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def key_path(self) -> Path:
        return self._key_path

    def load(self) -> dict[str, Any]:
        with self._lock:
            return self._load()

    def save(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._save(data)

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` in and save; a value of None removes that entry.

        Returns the data as saved.
        """
        with self._lock:
            data = self._load()
            for name, value in changes.items():
                if value is None:
                    data.pop(name, None)
                else:
                    data[name] = value
            self._save(data)
            return data

    def _load(self) -> dict[str, Any]:
        try:
            blob = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretsError(f"Cannot read the agent secrets file {self._path}: {exc}") from exc
        key = self._read_key()
        if key is None:
            raise SecretsError(
                f"The agent secrets file {self._path} exists but its key {self._key_path} "
                f"is missing, so it cannot be decrypted. Restore the key file if you have "
                f"a copy; otherwise {_REENROL}"
            )
        if len(blob) < _MIN_BLOB or not blob.startswith(_FORMAT_V1):
            raise SecretsError(
                f"The agent secrets file {self._path} is truncated or not in a known format. "
                + _REENROL
            )
        nonce = blob[len(_FORMAT_V1) : len(_FORMAT_V1) + NONCE_SIZE]
        try:
            plain = AESGCM(key).decrypt(nonce, blob[len(_FORMAT_V1) + NONCE_SIZE :], AAD)
        except InvalidTag:
            raise SecretsError(
                f"Cannot decrypt the agent secrets file {self._path} with the key "
                f"{self._key_path}: the file was altered or the key belongs to another "
                f"installation. {_REENROL}"
            ) from None
        try:
            data = json.loads(plain.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            raise SecretsError(
                f"The agent secrets file {self._path} decrypted but does not hold a JSON "
                f"object. {_REENROL}"
            )
        return data

    def _save(self, data: dict[str, Any]) -> None:
        plain = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        key = self._read_key()
        if key is None:
            # Re-read rather than trust our bytes: another process may have won the race.
            create_private_file(self._key_path, secrets.token_bytes(KEY_SIZE))
            key = self._read_key()
            if key is None:
                raise SecretsError(f"The agent secrets key {self._key_path} vanished")
        nonce = os.urandom(NONCE_SIZE)
        blob = _FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plain.encode("utf-8"), AAD)
        write_private_file_atomic(self._path, blob)

    def _read_key(self) -> bytes | None:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self._key_path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretsError(
                f"Cannot open the agent secrets key {self._key_path}: {exc}. It must be a "
                "regular file (not a symlink) readable by the agent's user."
            ) from exc
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SecretsError(f"The agent secrets key {self._key_path} is not a file.")
            # Windows modes do not reflect ACLs; the installer restricts the dir there.
            if os.name != "nt" and st.st_mode & 0o077:
                raise SecretsError(
                    f"The agent secrets key {self._key_path} has mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: other users can access it. Fix it with "
                    f"'chmod 600 {self._key_path}'."
                )
            key = fh.read(KEY_SIZE + 1)
        if len(key) != KEY_SIZE:
            raise SecretsError(
                f"The agent secrets key {self._key_path} is {len(key)} bytes, expected "
                f"{KEY_SIZE}: it is damaged. {_REENROL}"
            )
        return key
