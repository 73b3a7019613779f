from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import keyring.backend
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.core
import keyring.errors
import pytest
from keyring.compat import properties

from server_core.crypto import (
    KEY_FILE_NAME,
    KEYRING_MARKER_NAME,
    KEYRING_SERVICE,
    DataKeyError,
    DataKeyInfo,
    SecretBox,
    SecretDecryptError,
    load_or_create_data_key,
    row_aad,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
LOG = logging.getLogger("test.crypto")


# --- test keyring backends -------------------------------------------------
# keyring registers every KeyringBackend subclass for auto-selection; a
# priority that raises keeps these out of keyring.get_keyring() for the rest
# of the test session. They are only ever passed in explicitly.


class _TestBackend(keyring.backend.KeyringBackend):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("test backend: never auto-selected")

    def get_password(self, service: str, username: str) -> str | None:
        raise NotImplementedError

    def set_password(self, service: str, username: str, password: str) -> None:
        raise NotImplementedError


class DictKeyring(_TestBackend):
    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}
        self.reads = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.reads += 1
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class RaisingKeyring(_TestBackend):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("collection is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError("collection is locked")


class SetFailsKeyring(DictKeyring):
    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError("read-only keyring")


class DroppingKeyring(DictKeyring):
    """Accepts writes and forgets them, like a misconfigured backend."""

    def set_password(self, service: str, username: str, password: str) -> None:
        return None


class WeirdErrorKeyring(DictKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise OSError("dbus socket vanished")


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # A permissive umask proves the 0600 does not come from the environment.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- SecretBox --------------------------------------------------------------

KEY = bytes(range(32))
AAD = b"host_credentials:42:everyday:password"


def test_round_trip_bytes_text_json() -> None:
    box = SecretBox(KEY)
    assert box.open(box.seal(b"s3cret", AAD), AAD) == b"s3cret"
    assert box.open(box.seal(b"", AAD), AAD) == b""
    assert box.open_text(box.seal_text("pässwörd ✓ 🔑", "t:1:f"), "t:1:f") == "pässwörd ✓ 🔑"
    obj = {"url": "rest:https://x/", "password": "pw", "n": [1, 2, None]}
    assert box.open_json(box.seal_json(obj, "t:1:f"), "t:1:f") == obj


def test_blob_layout_and_random_nonce() -> None:
    box = SecretBox(KEY)
    a = box.seal(b"hello", AAD)
    b = box.seal(b"hello", AAD)
    assert a.startswith(b"v1")
    assert len(a) == 2 + 12 + 5 + 16
    assert a[2:14] != b[2:14]
    assert b"hello" not in a


def test_every_tampered_byte_is_rejected() -> None:
    box = SecretBox(KEY)
    blob = box.seal(b"hello", AAD)
    # Covers the version prefix, nonce, ciphertext body and tag alike.
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(SecretDecryptError):
            box.open(bytes(bad), AAD)


@pytest.mark.parametrize("cut", [0, 1, 2, 14, 29])
def test_truncated_blob_is_rejected(cut: int) -> None:
    box = SecretBox(KEY)
    blob = box.seal(b"", AAD)
    assert len(blob) == 30
    with pytest.raises(SecretDecryptError, match="truncated"):
        box.open(blob[:cut], AAD)


def test_appended_bytes_are_rejected() -> None:
    box = SecretBox(KEY)
    with pytest.raises(SecretDecryptError):
        box.open(box.seal(b"x", AAD) + b"\x00", AAD)


def test_wrong_aad_is_rejected_with_clear_message() -> None:
    box = SecretBox(KEY)
    blob = box.seal_text("pw", "host_credentials:42:everyday:password")
    with pytest.raises(SecretDecryptError, match=r"42:admin:password.*another row"):
        box.open_text(blob, "host_credentials:42:admin:password")
    with pytest.raises(SecretDecryptError):
        box.open_text(blob, "host_credentials:43:everyday:password")


def test_wrong_key_is_rejected() -> None:
    blob = SecretBox(KEY).seal(b"pw", AAD)
    with pytest.raises(SecretDecryptError, match="different data key"):
        SecretBox(bytes(32)).open(blob, AAD)


def test_open_text_and_json_reject_wrong_kind() -> None:
    box = SecretBox(KEY)
    with pytest.raises(SecretDecryptError, match="UTF-8"):
        box.open_text(box.seal(b"\xff\xfe", b"a:1:b"), "a:1:b")
    with pytest.raises(SecretDecryptError, match="JSON"):
        box.open_json(box.seal_text("not json", "a:1:b"), "a:1:b")


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33)])
def test_box_rejects_bad_key_length(key: bytes) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        SecretBox(key)


def test_box_repr_hides_key() -> None:
    assert KEY.hex() not in repr(SecretBox(KEY))


def test_row_aad() -> None:
    assert row_aad("host_credentials", 42, "everyday:password") == (
        "host_credentials:42:everyday:password"
    )
    assert row_aad("channels", "abc", "smtp_password") == "channels:abc:smtp_password"
    bad_args: list[tuple[str, int | str, str]] = [
        ("", 1, "f"),
        ("a:b", 1, "f"),
        ("t", "1:2", "f"),
        ("t", "", "f"),
        ("t", 1, ""),
    ]
    for bad in bad_args:
        with pytest.raises(ValueError):
            row_aad(*bad)


# --- data key: keyring path ---------------------------------------------------


def test_keyring_path_stores_base64_key_and_reuses_it(tmp_path: Path) -> None:
    backend = DictKeyring()
    data_dir = tmp_path / "data"
    first = load_or_create_data_key(data_dir, keyring_backend=backend, logger=LOG)
    assert first.source == "keyring"
    assert first.warning is None
    assert len(first.key) == 32
    username = "data-key:" + str(data_dir.resolve())
    assert base64.b64decode(backend.store[(KEYRING_SERVICE, username)]) == first.key
    assert not (data_dir / KEY_FILE_NAME).exists()
    assert _mode(data_dir) == 0o700

    second = load_or_create_data_key(data_dir, keyring_backend=backend, logger=LOG)
    assert second == first


def test_keyring_username_uses_resolved_path(tmp_path: Path) -> None:
    backend = DictKeyring()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    a = load_or_create_data_key(tmp_path / "link", keyring_backend=backend, logger=LOG)
    b = load_or_create_data_key(tmp_path / "real", keyring_backend=backend, logger=LOG)
    assert a.key == b.key
    assert list(backend.store) == [(KEYRING_SERVICE, f"data-key:{(tmp_path / 'real').resolve()}")]


def test_distinct_data_dirs_get_distinct_keys(tmp_path: Path) -> None:
    backend = DictKeyring()
    a = load_or_create_data_key(tmp_path / "a", keyring_backend=backend, logger=LOG)
    b = load_or_create_data_key(tmp_path / "b", keyring_backend=backend, logger=LOG)
    assert a.key != b.key


def test_data_key_info_repr_hides_key(tmp_path: Path) -> None:
    info = load_or_create_data_key(tmp_path, keyring_backend=DictKeyring(), logger=LOG)
    assert info.key.hex() not in repr(info)
    assert repr(info.key) not in repr(info)


# --- data key: file fallback ----------------------------------------------------


@pytest.mark.parametrize(
    "backend_factory",
    [
        RaisingKeyring,
        SetFailsKeyring,
        DroppingKeyring,
        WeirdErrorKeyring,
        keyring.backends.fail.Keyring,
        keyring.backends.null.Keyring,
    ],
)
def test_unusable_keyring_falls_back_to_0600_file_with_warning(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    umask_zero: None,
    backend_factory: type[keyring.backend.KeyringBackend],
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    info = load_or_create_data_key(tmp_path, keyring_backend=backend_factory(), logger=LOG)
    key_file = tmp_path / KEY_FILE_NAME
    assert info.source == "file"
    assert key_file.read_bytes() == info.key
    assert _mode(key_file) == 0o600
    assert info.warning is not None and str(key_file) in info.warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(key_file) in message and "gnome-keyring" in message
    for leak in (info.key.hex(), base64.b64encode(info.key).decode(), repr(info.key)):
        assert leak not in caplog.text
    assert not (tmp_path / KEYRING_MARKER_NAME).exists()
    # No temp files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_empty_chainer_counts_as_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring.backends.chainer.ChainerBackend, "backends", [], raising=False)
    info = load_or_create_data_key(
        tmp_path,
        keyring_backend=keyring.backends.chainer.ChainerBackend(),  # type: ignore[no-untyped-call]
        logger=LOG,
    )
    assert info.source == "file"


def test_default_keyring_here_falls_back_without_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no backend given, keyring.get_keyring() decides; in this test
    # environment it is the 'fail' backend (no D-Bus session).
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    info = load_or_create_data_key(tmp_path, logger=LOG)
    assert info.source == "file"


def test_key_file_reused_and_preferred_over_keyring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_or_create_data_key(tmp_path, keyring_backend=RaisingKeyring(), logger=LOG)
    # The keyring works now, but the data dir started on a file key.
    backend = DictKeyring()
    second = load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    assert second.key == first.key
    assert second.source == "file"
    assert second.warning is not None
    assert backend.store == {}


def test_key_file_wins_over_different_keyring_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_or_create_data_key(tmp_path, keyring_backend=RaisingKeyring(), logger=LOG)
    backend = DictKeyring()
    username = "data-key:" + str(tmp_path.resolve())
    backend.store[(KEYRING_SERVICE, username)] = base64.b64encode(bytes(32)).decode()
    caplog.set_level(logging.WARNING, logger=LOG.name)
    second = load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    assert second.key == first.key
    assert "different data key" in caplog.text and "file wins" in caplog.text


def test_same_key_in_file_and_keyring_logs_no_conflict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_or_create_data_key(tmp_path, keyring_backend=RaisingKeyring(), logger=LOG)
    backend = DictKeyring()
    backend.store[(KEYRING_SERVICE, "data-key:" + str(tmp_path.resolve()))] = base64.b64encode(
        first.key
    ).decode()
    caplog.set_level(logging.WARNING, logger=LOG.name)
    load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    assert "different data key" not in caplog.text


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_key_file_readable_by_others(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(mode)
    with pytest.raises(DataKeyError, match=r"chmod 600"):
        load_or_create_data_key(tmp_path, keyring_backend=DictKeyring(), logger=LOG)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_refuses_key_file_of_wrong_size(tmp_path: Path, size: int) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_bytes(os.urandom(size))
    key_file.chmod(0o600)
    with pytest.raises(DataKeyError, match=r"expected exactly 32"):
        load_or_create_data_key(tmp_path, keyring_backend=DictKeyring(), logger=LOG)
    assert key_file.stat().st_size == size


def test_refuses_symlinked_key_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / KEY_FILE_NAME).symlink_to(target)
    with pytest.raises(DataKeyError, match="symlink"):
        load_or_create_data_key(data_dir, keyring_backend=DictKeyring(), logger=LOG)


# --- data key: the keyring becomes unavailable later ----------------------------


def test_locked_keyring_after_setup_refuses_instead_of_minting_new_key(tmp_path: Path) -> None:
    load_or_create_data_key(tmp_path, keyring_backend=DictKeyring(), logger=LOG)
    assert (tmp_path / KEYRING_MARKER_NAME).exists()
    with pytest.raises(DataKeyError, match=r"not usable now.*Unlock"):
        load_or_create_data_key(tmp_path, keyring_backend=RaisingKeyring(), logger=LOG)
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_missing_keyring_entry_after_setup_refuses(tmp_path: Path) -> None:
    backend = DictKeyring()
    load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    backend.store.clear()
    with pytest.raises(DataKeyError, match="missing"):
        load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    assert backend.store == {}


def test_replaced_keyring_entry_refuses(tmp_path: Path) -> None:
    backend = DictKeyring()
    load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    (entry,) = backend.store
    backend.store[entry] = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(DataKeyError, match="different data key"):
        load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)


def test_corrupt_keyring_value_refuses(tmp_path: Path) -> None:
    backend = DictKeyring()
    backend.store[(KEYRING_SERVICE, "data-key:" + str(tmp_path.resolve()))] = "not base64!!"
    with pytest.raises(DataKeyError, match="base64-encoded 32-byte"):
        load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)


def test_keyring_key_without_marker_is_adopted(tmp_path: Path) -> None:
    # E.g. a crash between storing the key and writing the marker.
    backend = DictKeyring()
    key = os.urandom(32)
    backend.store[(KEYRING_SERVICE, "data-key:" + str(tmp_path.resolve()))] = base64.b64encode(
        key
    ).decode()
    info = load_or_create_data_key(tmp_path, keyring_backend=backend, logger=LOG)
    assert info.key == key and info.source == "keyring"
    marker = json.loads((tmp_path / KEYRING_MARKER_NAME).read_text())
    assert key.hex() not in json.dumps(marker)


# --- data key: a real OS keyring ---------------------------------------------------

_REAL_KEYRING_SCRIPT = textwrap.dedent(
    """
    import base64, json, logging, sys
    from pathlib import Path
    import keyring
    from server_core.crypto import load_or_create_data_key, key_id

    data_dir = Path(sys.argv[1])
    log = logging.getLogger("real-keyring")
    first = load_or_create_data_key(data_dir, logger=log)
    second = load_or_create_data_key(data_dir, logger=log)
    stored = keyring.get_password("restic-manager", "data-key:" + str(data_dir.resolve()))
    print(json.dumps({
        "backend": type(keyring.get_keyring()).__module__,
        "source": first.source,
        "second_source": second.source,
        "same": first.key == second.key,
        "key_id": key_id(first.key),
        "stored_matches": stored is not None and base64.b64decode(stored) == first.key,
        "key_file": (data_dir / "data.key").exists(),
    }))
    """
)


def test_real_gnome_keyring(tmp_path: Path) -> None:
    if not (shutil.which("dbus-run-session") and shutil.which("gnome-keyring-daemon")):
        pytest.skip("dbus-run-session or gnome-keyring-daemon is not installed")
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    for d in (home, runtime):
        d.mkdir(mode=0o700)
    data_dir = tmp_path / "data"
    script = tmp_path / "probe.py"
    script.write_text(_REAL_KEYRING_SCRIPT)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHON_KEYRING_BACKEND", "DBUS_SESSION_BUS_ADDRESS"}
    }
    # A private HOME keeps the test from touching the user's real keyring.
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(runtime),
        PYTHONPATH=str(REPO_ROOT),
    )
    inner = (
        "echo -n pw | gnome-keyring-daemon --unlock --components=secrets --daemonize >/dev/null; "
        f'exec "{sys.executable}" "{script}" "{data_dir}"'
    )
    proc = subprocess.run(
        ["dbus-run-session", "--", "sh", "-c", inner],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"].endswith("SecretService"), result
    assert result["source"] == "keyring"
    assert result["second_source"] == "keyring"
    assert result["same"] is True
    assert result["stored_matches"] is True
    assert result["key_file"] is False
    assert not (data_dir / KEY_FILE_NAME).exists()
    # The secret landed in the private HOME's keyring, not the real one.
    assert any((home / ".local" / "share" / "keyrings").iterdir())
    marker = json.loads((data_dir / KEYRING_MARKER_NAME).read_text())
    assert marker["key_id"] == result["key_id"]


def test_data_key_info_is_frozen() -> None:
    info = DataKeyInfo(key=bytes(32), source="file", warning=None)
    with pytest.raises(AttributeError):
        info.source = "keyring"  # type: ignore[misc]
