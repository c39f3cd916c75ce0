"""Test PKI made at test time with the cryptography library: a CA, client certificates
(valid, expired, not yet valid, for another appliance, from another CA), keys, a fleet key."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def ca(cn: str = "Test Hospital Fleet CA") -> tuple[Any, x509.Certificate]:
    k = key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(k, hashes.SHA256()))
    return k, cert


def client(ca_key: Any, ca_cert: x509.Certificate, cn: str, *, start: datetime.datetime =
           NOW - DAY, end: datetime.datetime = NOW + 365 * DAY,
           k: Any = None) -> tuple[Any, x509.Certificate]:
    k = k or key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .sign(ca_key, hashes.SHA256()))
    return k, cert


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(k: Any, password: bytes | None = None) -> bytes:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 enc))


def fleet_pub() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_bundle(directory: Path, appliance: str = "ward4b-01") -> dict[str, Any]:
    """ca.pem, client.pem, client.key and fleet.pub for `appliance` in `directory`."""
    ca_key, ca_cert = ca()
    k, cert = client(ca_key, ca_cert, appliance)
    (directory / "ca.pem").write_bytes(pem_cert(ca_cert))
    (directory / "client.pem").write_bytes(pem_cert(cert))
    (directory / "client.key").write_bytes(pem_key(k))
    (directory / "fleet.pub").write_bytes(fleet_pub())
    return {"ca_key": ca_key, "ca_cert": ca_cert, "key": k, "cert": cert}
