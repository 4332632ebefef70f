"""Test certificates for PostgreSQL over TLS, made with the ``cryptography`` package.

One test CA signs two server certificates: a good one for ``localhost`` and
``127.0.0.1`` (subjectAltName DNS and IP, what ``sslmode=verify-full`` checks),
and one for ``db.example.invalid`` only, for a host-name mismatch. A second,
unrelated CA verifies neither, for a certificate that does not chain to the
trusted root. Keys are ECDSA P-256: quick to make, and every OpenSSL takes them.

As root, the files belong to the ``postgres`` user, so that a
``pgserver.PostgresServer`` given ``ssl_settings(...)`` can read them::

    tls = write_tls_files(Path(tempfile.mkdtemp(prefix="pgsluice-tls-")))
    with PostgresServer(settings=ssl_settings(tls.server_cert, tls.server_key)) as server:
        psycopg.connect(server.url(), sslmode="verify-full", sslrootcert=str(tls.ca_cert))
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GOOD_NAMES = ("localhost", "127.0.0.1")
WRONG_NAME = "db.example.invalid"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files ``write_tls_files`` made."""

    folder: Path
    ca_cert: Path  # the test CA: signs server_cert and wrong_name_cert
    server_cert: Path  # subjectAltName DNS:localhost, IP:127.0.0.1
    server_key: Path
    wrong_name_cert: Path  # subjectAltName DNS:db.example.invalid only
    wrong_name_key: Path
    other_ca_cert: Path  # an unrelated CA: verifies neither server certificate


@dataclass(frozen=True)
class _Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgsluice tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)


def make_ca(common_name: str) -> _Issued:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issued(key, cert)


def make_server_cert(ca: _Issued, names: tuple[str, ...]) -> _Issued:
    """A server certificate signed by ``ca`` for ``names`` (IP addresses become IP subjectAltNames)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _Issued(key, cert)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    # PostgreSQL refuses a key file that its group or others may read.
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_tls_files(folder: Path) -> TlsFiles:
    """Make the CAs and server certificates in ``folder`` (created if missing); as root, owned by ``postgres``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("pgsluice test CA")
    other_ca = make_ca("pgsluice unrelated CA")
    good = make_server_cert(ca, GOOD_NAMES)
    wrong = make_server_cert(ca, (WRONG_NAME,))
    files = TlsFiles(
        folder=folder,
        ca_cert=_write_cert(folder / "ca.crt", ca.cert),
        server_cert=_write_cert(folder / "server.crt", good.cert),
        server_key=_write_key(folder / "server.key", good.key),
        wrong_name_cert=_write_cert(folder / "wrong-name.crt", wrong.cert),
        wrong_name_key=_write_key(folder / "wrong-name.key", wrong.key),
        other_ca_cert=_write_cert(folder / "other-ca.crt", other_ca.cert),
    )
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for path in folder.iterdir():
            shutil.chown(path, "postgres", "postgres")
    return files


def ssl_settings(cert: Path, key: Path) -> dict[str, str]:
    """``PostgresServer`` settings for TLS with ``cert`` and ``key``; RuntimeError if the server could not read them."""
    if os.geteuid() == 0:
        # The server runs as postgres: every folder above the files must let it through.
        for path in (cert, key):
            done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-r", str(path)], check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"the postgres user cannot read {path}: write the TLS files with write_tls_files() "
                    "into a folder postgres can reach (e.g. tempfile.mkdtemp(), not pytest's tmp_path)"
                )
    return {
        "ssl": "on",
        "ssl_cert_file": f"'{cert}'",
        "ssl_key_file": f"'{key}'",
    }
