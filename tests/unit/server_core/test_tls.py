from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server_core.tls import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    CertificateError,
    ServerCertificate,
    fingerprint_of_der,
    load_or_create_certificate,
    ssl_context,
)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _load(cert: ServerCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_path.read_bytes())


def test_creates_p256_cert_with_sans_and_ten_years(tmp_path: Path) -> None:
    cert = load_or_create_certificate(
        tmp_path / "data",
        common_name="backup-desk",
        extra_names=["192.168.1.10", "backup-desk.lan", "fe80::1", "localhost", " "],
    )
    parsed = _load(cert)
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    assert parsed.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert parsed.subject == parsed.issuer
    cn = parsed.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "backup-desk"

    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["backup-desk", "localhost", "backup-desk.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.168.1.10"),
        ipaddress.ip_address("fe80::1"),
    ]
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert lifetime == dt.timedelta(days=3650)
    assert parsed.not_valid_before_utc <= dt.datetime.now(dt.UTC)

    der = parsed.public_bytes(serialization.Encoding.DER)
    assert cert.sha256 == hashlib.sha256(der).hexdigest() == fingerprint_of_der(der)
    assert len(cert.sha256) == 64 and cert.sha256 == cert.sha256.lower() and ":" not in cert.sha256


def test_ip_common_name_becomes_ip_san(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="10.0.0.5")
    san = _load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)
    assert "10.0.0.5" not in san.get_values_for_type(x509.DNSName)


def test_key_is_unencrypted_pkcs8_with_mode_0600(tmp_path: Path, umask_zero: None) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    assert stat.S_IMODE(cert.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.cert_path.stat().st_mode) == 0o644
    pem = cert.key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    serialization.load_pem_private_key(pem, password=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CERT_FILE_NAME, KEY_FILE_NAME])


def test_reuses_existing_certificate(tmp_path: Path) -> None:
    first = load_or_create_certificate(tmp_path, common_name="a")
    before = first.cert_path.read_bytes(), first.key_path.read_bytes()
    # A changed name must not mint a new cert: agents pin the fingerprint.
    second = load_or_create_certificate(tmp_path, common_name="b", extra_names=["10.1.1.1"])
    assert second == first
    assert (first.cert_path.read_bytes(), first.key_path.read_bytes()) == before


def test_fresh_dirs_get_distinct_certificates(tmp_path: Path) -> None:
    a = load_or_create_certificate(tmp_path / "a", common_name="h")
    b = load_or_create_certificate(tmp_path / "b", common_name="h")
    assert a.sha256 != b.sha256


def test_refuses_group_readable_key(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    cert.key_path.chmod(0o640)
    with pytest.raises(CertificateError, match="chmod 600"):
        load_or_create_certificate(tmp_path, common_name="h")


def test_refuses_cert_without_key(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    cert.key_path.unlink()
    with pytest.raises(CertificateError, match="re-pinned"):
        load_or_create_certificate(tmp_path, common_name="h")


def test_key_without_cert_is_a_half_finished_start(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    cert.cert_path.unlink()
    again = load_or_create_certificate(tmp_path, common_name="h")
    assert again.sha256 != cert.sha256
    assert again.cert_path.exists()


def test_refuses_mismatched_pair(tmp_path: Path) -> None:
    a = load_or_create_certificate(tmp_path / "a", common_name="h")
    b = load_or_create_certificate(tmp_path / "b", common_name="h")
    b.key_path.write_bytes(a.key_path.read_bytes())
    with pytest.raises(CertificateError, match="does not belong"):
        load_or_create_certificate(tmp_path / "b", common_name="h")


def test_refuses_garbage_cert(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    cert.cert_path.write_text("not a certificate")
    with pytest.raises(CertificateError, match="Cannot read"):
        load_or_create_certificate(tmp_path, common_name="h")


def test_ssl_context_refuses_old_tls(tmp_path: Path) -> None:
    ctx = ssl_context(load_or_create_certificate(tmp_path, common_name="h"))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER


async def _handshake(ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        assert await reader.readline() == b"hello\n"
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(der, bytes)
    return der


async def test_real_tls_handshake_presents_pinned_cert(tmp_path: Path) -> None:
    cert = load_or_create_certificate(tmp_path, common_name="h")
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    der = await _handshake(ssl_context(cert), client)
    assert hashlib.sha256(der).hexdigest() == cert.sha256 == fingerprint_of_der(der)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_12_and_13_clients_connect(tmp_path: Path, version: ssl.TLSVersion) -> None:
    # Older-than-1.2 clients cannot be tested here: this OpenSSL refuses to
    # offer them at all, so such a test would pass whatever the server allowed.
    cert = load_or_create_certificate(tmp_path, common_name="h")
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    der = await _handshake(ssl_context(cert), client)
    assert fingerprint_of_der(der) == cert.sha256


async def test_cert_verifies_as_trust_anchor_for_its_sans(tmp_path: Path) -> None:
    # Not how agents connect (they pin), but proves the SANs are well-formed.
    cert = load_or_create_certificate(tmp_path, common_name="h")
    client = ssl.create_default_context(cafile=str(cert.cert_path))
    der = await _handshake(ssl_context(cert), client)
    assert fingerprint_of_der(der) == cert.sha256
