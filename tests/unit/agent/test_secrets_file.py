from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.secrets_file import SecretsError, SecretsFile

SECRET = {
    "token": "rmagent_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5",
    "repos": {"everyday": {"url": "rest:https://agent:pw@h:8000/", "password": "hunter2-ü"}},
}


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _files(tmp_path: Path) -> SecretsFile:
    return SecretsFile(tmp_path / "state" / "secrets.bin", tmp_path / "etc" / "secrets.key")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    assert _files(tmp_path).load() == {}
    assert not (tmp_path / "etc").exists()


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    assert sf.load() == SECRET
    assert _files(tmp_path).load() == SECRET


def test_plaintext_never_on_disk(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    raw = sf.path.read_bytes()
    for needle in ("rmagent_", "hunter2", "agent:pw", "token", "everyday", "password"):
        assert needle.encode() not in raw
        assert needle.encode("utf-16-le") not in raw
    assert raw.startswith(b"v1")


def test_modes_and_dirs(tmp_path: Path, umask_zero: None) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    assert _mode(sf.path) == 0o600
    assert _mode(sf.key_path) == 0o600
    assert _mode(sf.key_path.parent) == 0o700
    assert _mode(sf.path.parent) == 0o700
    assert sf.key_path.stat().st_size == 32
    sf.update(extra="x")
    assert _mode(sf.path) == 0o600
    assert sorted(p.name for p in sf.path.parent.iterdir()) == ["secrets.bin"]
    assert sorted(p.name for p in sf.key_path.parent.iterdir()) == ["secrets.key"]


def test_key_is_created_once_and_kept(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save({"a": 1})
    key = sf.key_path.read_bytes()
    sf.save({"a": 2})
    sf.update(b=3)
    assert sf.key_path.read_bytes() == key
    assert sf.load() == {"a": 2, "b": 3}


def test_update_merges_and_none_removes(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    merged = sf.update(token="t1", admin={"password": "p"})
    assert merged == {"token": "t1", "admin": {"password": "p"}}
    assert sf.update(admin=None) == {"token": "t1"}
    assert sf.load() == {"token": "t1"}


def test_concurrent_updates_are_not_lost(tmp_path: Path) -> None:
    sf = _files(tmp_path)

    def worker(n: int) -> None:
        for i in range(10):
            sf.update(**{f"k{n}_{i}": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sf.load()) == 40


@pytest.mark.parametrize("where", [0, 1, 5, 20, -1])
def test_tamper_is_detected(tmp_path: Path, where: int) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    raw = bytearray(sf.path.read_bytes())
    raw[where] ^= 0x80
    sf.path.write_bytes(bytes(raw))
    with pytest.raises(SecretsError, match=r"[Rr]e-enrol"):
        sf.load()


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    sf.path.write_bytes(sf.path.read_bytes()[:20])
    with pytest.raises(SecretsError, match="truncated"):
        sf.load()


def test_missing_key_with_existing_file(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    sf.key_path.unlink()
    with pytest.raises(SecretsError, match=r"key .* is missing.*Re-enrol"):
        sf.load()
    with pytest.raises(SecretsError):
        sf.update(token="x")


def test_save_after_lost_key_starts_over(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    sf.key_path.unlink()
    sf.save({"token": "new"})
    assert sf.load() == {"token": "new"}


def test_other_installations_key_fails_clearly(tmp_path: Path) -> None:
    a = _files(tmp_path / "a")
    b = _files(tmp_path / "b")
    a.save(SECRET)
    b.save({"x": 1})
    b.path.write_bytes(a.path.read_bytes())
    with pytest.raises(SecretsError, match="another installation"):
        b.load()


def test_refuses_readable_key(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    sf.key_path.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        sf.load()


def test_refuses_wrong_size_key(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    sf.save(SECRET)
    sf.key_path.write_bytes(b"short")
    with pytest.raises(SecretsError, match="expected 32"):
        sf.load()


def test_rejects_unserialisable_data(tmp_path: Path) -> None:
    sf = _files(tmp_path)
    with pytest.raises(ValueError):
        sf.save({"x": float("nan")})
    assert not sf.path.exists()
