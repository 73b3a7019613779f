from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.restic.version import ResticNotFound, ResticVersion, detect_version, find_restic
from tests.helpers.restic_bins import RESTIC_BINARIES, RESTIC_PARAMS

V014 = ResticVersion(0, 14, 0)
V016 = ResticVersion(0, 16, 0)
V017 = ResticVersion(0, 17, 0)
V0171 = ResticVersion(0, 17, 1)
V018 = ResticVersion(0, 18, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Captured from the two installed binaries.
        ("restic 0.14.0 compiled with go1.19.8 on linux/amd64\n", V014),
        ("restic 0.18.0 compiled with go1.24.4 on linux/amd64\n", V018),
        (
            "restic 0.16.4-dev (compiled manually) compiled with go1.22 on linux/arm64",
            ResticVersion(0, 16, 4),
        ),
        ("restic 0.9 compiled with go1.10", ResticVersion(0, 9, 0)),
        ("restic v0.17.1 compiled with go1.23", V0171),
        ("warning: something\nrestic 0.15.2 compiled with go1.20", ResticVersion(0, 15, 2)),
    ],
)
def test_parse(text: str, expected: ResticVersion) -> None:
    assert ResticVersion.parse(text) == expected


@pytest.mark.parametrize("text", ["", "rustic 0.14.0", "restic version unknown", "0.14.0"])
def test_parse_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse restic version"):
        ResticVersion.parse(text)


def test_str_and_order() -> None:
    assert str(V0171) == "0.17.1"
    assert V014 < V016 < V017 < V0171 < V018
    assert ResticVersion(0, 9, 9) < ResticVersion(0, 10, 0)
    assert max([V018, V014, V0171]) == V018


@pytest.mark.parametrize(
    ("version", "init_json", "restore_json", "retry_lock", "summary", "codes", "code12", "check"),
    [
        (V014, False, False, False, False, False, False, False),
        (ResticVersion(0, 15, 0), True, False, False, False, False, False, False),
        (V016, True, True, True, False, False, False, False),
        (V017, True, True, True, True, True, False, False),
        (V0171, True, True, True, True, True, True, False),
        (V018, True, True, True, True, True, True, True),
        (ResticVersion(1, 0, 0), True, True, True, True, True, True, True),
    ],
)
def test_feature_gates(
    version: ResticVersion,
    init_json: bool,
    restore_json: bool,
    retry_lock: bool,
    summary: bool,
    codes: bool,
    code12: bool,
    check: bool,
) -> None:
    assert version.init_json is init_json
    assert version.restore_json is restore_json
    assert version.retry_lock is retry_lock
    assert version.snapshot_summary is summary
    assert version.exit_codes_10_11 is codes
    assert version.exit_code_12 is code12
    assert version.check_json is check


def _executable(path: Path) -> str:
    path.write_text("#!/bin/sh\necho 'restic 0.15.1 compiled with go1.20 on linux/amd64'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_find_restic_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = _executable(tmp_path / "flag-restic")
    configured = _executable(tmp_path / "configured-restic")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    on_path = _executable(bindir / "restic")
    monkeypatch.setenv("PATH", str(bindir))

    assert find_restic(flag, configured) == flag
    assert find_restic(None, configured) == configured
    assert find_restic(str(tmp_path / "missing"), configured) == configured
    assert find_restic(None, None) == on_path
    # A bare name is looked up on PATH like a shell would.
    assert find_restic("restic", None) == on_path


def test_find_restic_skips_non_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "restic"
    plain.write_text("not executable")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ResticNotFound) as info:
        find_restic(str(plain), str(tmp_path / "nope"))
    message = str(info.value)
    assert str(plain) in message
    assert str(tmp_path / "nope") in message
    assert "PATH" in message


@pytest.mark.parametrize("binary", RESTIC_PARAMS)
async def test_detect_version_real(binary: str) -> None:
    version = await detect_version(binary)
    expected = next(name for name, path in RESTIC_BINARIES.items() if path == binary)
    assert f"{version.major}.{version.minor}" == expected


async def test_detect_version_script(tmp_path: Path) -> None:
    assert await detect_version(_executable(tmp_path / "r")) == ResticVersion(0, 15, 1)


async def test_detect_version_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(ResticNotFound, match="cannot run"):
        await detect_version(str(tmp_path / "missing"))


async def test_detect_version_garbage(tmp_path: Path) -> None:
    script = tmp_path / "r"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    with pytest.raises(ValueError, match="cannot parse"):
        await detect_version(str(script))


async def test_detect_version_failure(tmp_path: Path) -> None:
    script = tmp_path / "r"
    script.write_text("#!/bin/sh\necho boom >&2\nexit 2\n")
    script.chmod(0o755)
    with pytest.raises(ValueError, match="exited with code 2: boom"):
        await detect_version(str(script))


async def test_detect_version_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.restic.version as version_module

    monkeypatch.setattr(version_module, "VERSION_TIMEOUT_SECONDS", 0.3)
    pidfile = tmp_path / "pid"
    script = tmp_path / "r"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    script.chmod(0o755)
    with pytest.raises(TimeoutError):
        await detect_version(str(script))
    pid = int(pidfile.read_text())
    # The hung child was killed and reaped, not left behind.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
