"""The agent listener's self-signed certificate.

Agents do not trust a CA: they pin the SHA-256 of this certificate, which
the app shows in Settings and embeds in every install command. The cert is
therefore created once and kept; replacing it breaks every enrolled agent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE_NAME = "agent-listener.crt"
KEY_FILE_NAME = "agent-listener.key"
VALIDITY = dt.timedelta(days=3650)


class CertificateError(Exception):
    """The stored certificate or key cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class ServerCertificate:
    cert_path: Path
    key_path: Path
    sha256: str  # lowercase hex of the DER certificate, no colons


def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_or_create_certificate(
    data_dir: Path, *, common_name: str, extra_names: Sequence[str] = ()
) -> ServerCertificate:
    """Return the listener certificate, creating it on first use.

    An existing certificate is reused as is, even if ``common_name`` or
    ``extra_names`` changed since: agents pin the fingerprint, not a name,
    and a new certificate would cut every enrolled agent off.
    """
    if not common_name:
        raise ValueError("common_name must not be empty")
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
    cert_path = data_dir / CERT_FILE_NAME
    key_path = data_dir / KEY_FILE_NAME

    if cert_path.exists() and key_path.exists():
        return _load_existing(cert_path, key_path)
    if cert_path.exists():
        raise CertificateError(
            f"{cert_path} exists but its private key {key_path} is missing. Restore the "
            f"key from a backup; or delete {cert_path} to create a new certificate — every "
            "enrolled agent then has to be re-pinned to the new fingerprint."
        )

    # A key without a certificate is a half-finished first start: nobody can
    # have pinned anything yet, so starting over is safe.
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, common_name, extra_names)
    # The key is written unencrypted: the app has to start unattended, and a
    # passphrase would have to be stored next to it anyway. Mode 0600 is the
    # protection, as for an sshd host key.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(key_path, key_pem, 0o600)
    # The cert goes last: its presence marks the pair as complete.
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ServerCertificate(
        cert_path=cert_path,
        key_path=key_path,
        sha256=fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER)),
    )


def ssl_context(cert: ServerCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=cert.cert_path, keyfile=cert.key_path)
    return ctx


def _self_signed(
    key: ec.EllipticCurvePrivateKey, common_name: str, extra_names: Sequence[str]
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in (common_name, "localhost", "127.0.0.1", "::1", *extra_names):
        name = raw.strip()
        if not name:
            continue
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
            canonical = str(ipaddress.ip_address(name))
        except ValueError:
            general = x509.DNSName(name)
            canonical = name.lower()
        if canonical not in seen:
            seen.add(canonical)
            names.append(general)

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "restic-manager"),
        ]
    )
    # Backdated a little so a client whose clock is slightly behind accepts it.
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _load_existing(cert_path: Path, key_path: Path) -> ServerCertificate:
    st = key_path.stat()
    if os.name != "nt" and st.st_mode & 0o077:
        raise CertificateError(
            f"The TLS private key {key_path} has mode {stat.S_IMODE(st.st_mode):04o}: it is "
            f"accessible to other users. Fix it with 'chmod 600 {key_path}'."
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"Cannot read the TLS certificate {cert_path} or key {key_path}: {exc}. Restore "
            "them from a backup, or delete both to create a new certificate (every "
            "enrolled agent then has to be re-pinned)."
        ) from exc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise CertificateError(
            f"The TLS key {key_path} does not belong to the certificate {cert_path}. Restore "
            "the matching pair, or delete both to create a new certificate (every enrolled "
            "agent then has to be re-pinned)."
        )
    return ServerCertificate(
        cert_path=cert_path,
        key_path=key_path,
        sha256=fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER)),
    )


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    fd = os.open(tmp, flags, mode)
    try:
        try:
            if hasattr(os, "fchmod"):
                # The mode given to open() is filtered by the umask; this is not.
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name != "nt":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
