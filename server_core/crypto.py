"""Secrets at rest: an AEAD box for database fields and the data key behind it.

Every secret the control plane stores (repo passwords, hook scripts, channel
credentials) is sealed with :class:`SecretBox` under one 32-byte data key. The
key itself lives in the OS keyring when one is usable, otherwise in a 0600
file in the data dir (with a visible warning).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keyring
import keyring.backend
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEYRING_SERVICE = "restic-manager"
KEY_FILE_NAME = "data.key"
# Non-secret record that the key was put in the keyring. Without it, a keyring
# that is merely locked or unreachable on a later start would look exactly like
# a first start, and we would mint a fresh key that cannot open the database.
KEYRING_MARKER_NAME = "data-key.keyring.json"

_FORMAT_V1 = b"v1"
_MIN_BLOB = len(_FORMAT_V1) + NONCE_SIZE + TAG_SIZE
_KEY_ID_CONTEXT = b"restic-manager data-key id\x00"

_KEYRING_HOWTO = (
    "To keep the key in the OS keyring instead, run restic-manager in a desktop "
    "session with a Secret Service provider (GNOME Keyring, KWallet) or the "
    "Windows Credential Manager / macOS Keychain; on a headless Linux server "
    "install gnome-keyring and dbus and start "
    "'gnome-keyring-daemon --unlock --components=secrets' inside the D-Bus "
    "session that runs restic-manager. The key file keeps being used as long "
    "as it exists."
)


class SecretDecryptError(Exception):
    """A sealed value could not be opened (tampered, wrong row, wrong key)."""


class DataKeyError(Exception):
    """The data key cannot be loaded safely; the message says how to fix it."""


def row_aad(table: str, row_id: int | str, field: str) -> str:
    """Associated data binding a ciphertext to one field of one row.

    Binding stops a ciphertext from being copied into another row or column
    (e.g. swapping an everyday password for an admin one) and still opening.
    ``table`` and ``row_id`` may not contain ':' so the string parses one way
    only; ``field`` may (e.g. ``"everyday:password"``).
    """
    row = str(row_id)
    if not table or ":" in table:
        raise ValueError(f"table must be non-empty and contain no ':', got {table!r}")
    if not row or ":" in row:
        raise ValueError(f"row_id must be non-empty and contain no ':', got {row!r}")
    if not field:
        raise ValueError("field must be non-empty")
    return f"{table}:{row}:{field}"


class SecretBox:
    """AES-256-GCM with a random 96-bit nonce per message.

    Random nonces are safe for far more messages than a control plane will
    ever seal under one key (the birthday bound is ~2**32 messages).
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"SecretBox needs a {KEY_SIZE}-byte key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key redacted>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        where = aad.decode("utf-8", "replace")
        if len(blob) < _MIN_BLOB:
            raise SecretDecryptError(
                f"cannot decrypt secret for {where!r}: value is truncated "
                f"({len(blob)} bytes, at least {_MIN_BLOB} expected)"
            )
        if not blob.startswith(_FORMAT_V1):
            raise SecretDecryptError(
                f"cannot decrypt secret for {where!r}: unknown format "
                f"(expected prefix {_FORMAT_V1!r}, got {bytes(blob[:2])!r})"
            )
        start = len(_FORMAT_V1)
        nonce = blob[start : start + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[start + NONCE_SIZE :], aad)
        except InvalidTag:
            raise SecretDecryptError(
                f"cannot decrypt secret for {where!r}: authentication failed — the "
                "value was altered, belongs to another row or field, or was sealed "
                "with a different data key (was the data key replaced?)"
            ) from None

    def seal_text(self, text: str, aad: str) -> bytes:
        return self.seal(text.encode("utf-8"), aad.encode("utf-8"))

    def open_text(self, blob: bytes, aad: str) -> str:
        raw = self.open(blob, aad.encode("utf-8"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretDecryptError(
                f"secret for {aad!r} decrypted but is not UTF-8 text (sealed with seal()?)"
            ) from None

    def seal_json(self, obj: Any, aad: str) -> bytes:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.seal_text(text, aad)

    def open_json(self, blob: bytes, aad: str) -> Any:
        text = self.open_text(blob, aad)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise SecretDecryptError(
                f"secret for {aad!r} decrypted but is not JSON (sealed with seal_text()?)"
            ) from None


@dataclass(frozen=True)
class DataKeyInfo:
    key: bytes
    source: Literal["keyring", "file"]
    warning: str | None

    def __repr__(self) -> str:
        # The default dataclass repr would print the key into any log or traceback.
        return f"DataKeyInfo(key=<redacted>, source={self.source!r}, warning={self.warning!r})"


def key_id(key: bytes) -> str:
    """A short, non-secret identifier of a key, to tell keys apart in files and logs."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def load_or_create_data_key(
    data_dir: Path,
    *,
    keyring_backend: keyring.backend.KeyringBackend | None = None,
    logger: logging.Logger,
) -> DataKeyInfo:
    """Return the data dir's data key, creating it on first use.

    Order: an existing ``data.key`` file always wins (a data dir that started
    on a file key must not switch keys when a keyring shows up later); then
    the OS keyring; then a new key file plus a warning.
    """
    data_dir = _ensure_private_dir(data_dir)
    key_file = data_dir / KEY_FILE_NAME
    marker = data_dir / KEYRING_MARKER_NAME
    username = "data-key:" + str(data_dir)
    backend, unusable_reason = _usable_backend(keyring_backend)

    if os.path.lexists(key_file):
        key = _read_key_file(key_file)
        if backend is not None:
            _warn_if_keyring_differs(backend, username, key, key_file, logger)
        warning = (
            f"The data key is stored on disk in {key_file}, protected only by its file "
            "permissions (0600): anyone who can read it and the database can decrypt the "
            "stored repository passwords. " + _KEYRING_HOWTO
        )
        logger.warning("%s", warning)
        return DataKeyInfo(key=key, source="file", warning=warning)

    if backend is not None:
        try:
            key = _key_from_keyring(backend, username, marker, logger)
        except _KeyringUnusable as exc:
            unusable_reason = str(exc)
        else:
            return DataKeyInfo(key=key, source="keyring", warning=None)

    if marker.exists():
        raise DataKeyError(
            f"The data key for {data_dir} was stored in the OS keyring "
            f"(service {KEYRING_SERVICE!r}, user {username!r}), but the keyring is not "
            f"usable now: {unusable_reason}. Unlock or start the keyring and try again. "
            f"Creating a new key would make the stored secrets unreadable; if the keyring "
            f"entry is truly lost, move {data_dir} aside and start with a fresh data dir."
        )
    key = secrets.token_bytes(KEY_SIZE)
    if not _create_private_file(key_file, key):
        # Another process created the file between our check and our link.
        key = _read_key_file(key_file)
    warning = (
        f"No usable OS keyring ({unusable_reason}); the data key was written to "
        f"{key_file} (mode 0600), protected only by file permissions: anyone who can "
        "read it and the database can decrypt the stored repository passwords. " + _KEYRING_HOWTO
    )
    logger.warning("%s", warning)
    return DataKeyInfo(key=key, source="file", warning=warning)


class _KeyringUnusable(Exception):
    pass


def _usable_backend(
    given: keyring.backend.KeyringBackend | None,
) -> tuple[keyring.backend.KeyringBackend | None, str]:
    try:
        backend = given if given is not None else keyring.get_keyring()
    except Exception as exc:
        return None, f"keyring could not be initialised: {type(exc).__name__}: {exc}"
    if isinstance(backend, keyring.backends.fail.Keyring):
        return None, "no keyring backend is available (keyring chose the 'fail' backend)"
    # The null backend accepts writes and forgets them: worse than failing.
    if isinstance(backend, keyring.backends.null.Keyring):
        return None, "the keyring backend is the 'null' backend, which stores nothing"
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        chained: list[Any] = list(getattr(backend, "backends", []))
        if not chained:
            return None, "the chained keyring backend has no backends to chain"
    return backend, ""


def _key_from_keyring(
    backend: keyring.backend.KeyringBackend,
    username: str,
    marker: Path,
    logger: logging.Logger,
) -> bytes:
    where = f"OS keyring entry (service {KEYRING_SERVICE!r}, user {username!r})"
    try:
        stored = backend.get_password(KEYRING_SERVICE, username)
    except Exception as exc:
        raise _KeyringUnusable(f"reading the keyring failed: {type(exc).__name__}: {exc}") from exc

    if stored is not None:
        key = _decode_keyring_value(stored, where)
        recorded = _read_marker(marker)
        if recorded is not None and recorded != key_id(key):
            raise DataKeyError(
                f"The {where} holds a different data key (id {key_id(key)}) from the one "
                f"this data dir was set up with (id {recorded}); secrets stored in it "
                "cannot be decrypted with it. Restore the original keyring entry, or move "
                "the data dir aside and start fresh."
            )
        if recorded is None:
            _write_marker(marker, username, key)
        logger.info("data key loaded from the %s", where)
        return key

    if marker.exists():
        raise DataKeyError(
            f"The {where} that holds this data dir's key is missing, so the stored "
            "secrets cannot be decrypted. Restore the keyring entry (e.g. from a backup of "
            "the keyring), or move the data dir aside and start fresh."
        )
    key = secrets.token_bytes(KEY_SIZE)
    encoded = base64.b64encode(key).decode("ascii")
    try:
        backend.set_password(KEYRING_SERVICE, username, encoded)
        read_back = backend.get_password(KEYRING_SERVICE, username)
    except Exception as exc:
        raise _KeyringUnusable(
            f"writing to the keyring failed: {type(exc).__name__}: {exc}"
        ) from exc
    if read_back != encoded:
        # Some backends drop writes silently; a key we cannot read back is lost.
        with contextlib.suppress(Exception):
            backend.delete_password(KEYRING_SERVICE, username)
        raise _KeyringUnusable("the keyring did not return the key that was just stored")
    _write_marker(marker, username, key)
    logger.info("new data key created in the %s", where)
    return key


def _decode_keyring_value(stored: str, where: str) -> bytes:
    try:
        key = base64.b64decode(stored.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        key = b""
    if len(key) != KEY_SIZE:
        raise DataKeyError(
            f"The {where} does not hold a base64-encoded {KEY_SIZE}-byte key. It was "
            "altered by something else; restore it, or delete it and start with a fresh "
            "data dir."
        )
    return key


def _warn_if_keyring_differs(
    backend: keyring.backend.KeyringBackend,
    username: str,
    key: bytes,
    key_file: Path,
    logger: logging.Logger,
) -> None:
    try:
        stored = backend.get_password(KEYRING_SERVICE, username)
    except Exception as exc:
        logger.debug("keyring not consulted: %s: %s", type(exc).__name__, exc)
        return
    if stored is None:
        return
    try:
        other = base64.b64decode(stored.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        other = b""
    if other != key:
        logger.warning(
            "The OS keyring (service %r, user %r) holds a different data key than %s; "
            "the key file wins. Remove the stale keyring entry once you have confirmed "
            "the app can read its stored secrets.",
            KEYRING_SERVICE,
            username,
            key_file,
        )


def _read_marker(marker: Path) -> str | None:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataKeyError(
            f"{marker} is unreadable or corrupt ({exc}); it records which keyring key "
            "this data dir uses. Restore it, or delete it if you are sure the keyring "
            "entry is the right key."
        ) from exc
    value = data.get("key_id") if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise DataKeyError(f"{marker} has no 'key_id'; restore it or delete it")
    return value


def _write_marker(marker: Path, username: str, key: bytes) -> None:
    body = {"service": KEYRING_SERVICE, "username": username, "key_id": key_id(key)}
    tmp = marker.with_name(f".{marker.name}.{secrets.token_hex(6)}.tmp")
    _create_private_file(tmp, (json.dumps(body, indent=2) + "\n").encode("utf-8"))
    os.replace(tmp, marker)
    _fsync_dir(marker.parent)


def _read_key_file(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DataKeyError(
            f"Cannot open the data key file {path}: {exc}. It must be a regular file "
            "(not a symlink) readable by the user running restic-manager."
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DataKeyError(f"The data key file {path} is not a regular file.")
        if os.name != "nt" and st.st_mode & 0o077:
            raise DataKeyError(
                f"The data key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it is "
                f"accessible to other users. Fix it with 'chmod 600 {path}' (and check "
                "who may have copied it)."
            )
        data = fh.read(KEY_SIZE + 1)
    if len(data) != KEY_SIZE:
        raise DataKeyError(
            f"The data key file {path} holds {len(data)}{'+' if len(data) > KEY_SIZE else ''} "
            f"bytes, expected exactly {KEY_SIZE}: it is truncated or not a restic-manager "
            "key. Restore it from a backup; without the original key the stored secrets "
            "cannot be decrypted (move the data dir aside to start fresh)."
        )
    return data


def _create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``; False if it already exists.

    The bytes go to a temp file first and are hard-linked into place, so a
    crash never leaves a half-written key under the final name and an
    existing file is never replaced.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                # The mode passed to open() is filtered by the umask; this is not.
                os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_private_dir(data_dir: Path) -> Path:
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
    return data_dir.resolve()
