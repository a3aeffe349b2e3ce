"""A throw-away CA and a server certificate for 127.0.0.1, for the tests' TLS servers (kmock as
an AKS API server, Azurite with OAuth)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1)))


def ca(cn: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(cn, _name(cn), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    ca_file: Path
    cert_file: Path  # the server's certificate (PEM), for 127.0.0.1
    key_file: Path  # its private key (PEM, PKCS#8)
    other_ca_pem: bytes  # a CA that signed nothing here


def make_pki(directory: Path) -> Pki:
    ca_key, ca_cert = ca("test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder("127.0.0.1", ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.pem").write_bytes(_pem(cert))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "ca.pem").write_bytes(_pem(ca_cert))
    return Pki(_pem(ca_cert), directory / "ca.pem", directory / "server.pem", directory / "server.key",
               _pem(ca("some-other-ca")[1]))
