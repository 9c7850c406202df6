"""The gateway's certificate authority: a CA, the server certificate for the hub
and join endpoints, and node client certificates issued from CSRs."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeio import write_atomic

from ._errors import GatewayError

__all__ = [
    "NODE_ORG",
    "NOT_BEFORE_SLACK",
    "GatewayPki",
    "PkiError",
    "cert_issued_at",
    "load_or_create_pki",
    "node_from_peercert",
    "server_ssl_context",
    "sign_node_csr",
    "spki_pin",
]

NODE_ORG = "edgeflock:nodes"
# A node certificate's notBefore lies this far before its issue (clock skew on
# boards). The exact issue time (microseconds since the epoch) is the serial
# number's high bits, above 64 random ones: X.509 times have whole seconds only,
# and a revocation must tell apart certificates issued within one second.
NOT_BEFORE_SLACK = datetime.timedelta(minutes=5)
_SERIAL_RANDOM_BITS = 64


class PkiError(GatewayError):
    """A certificate, key or CSR is missing, invalid or not acceptable."""


@dataclass(frozen=True, slots=True)
class GatewayPki:
    ca_cert_pem: bytes
    ca_cert_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    ca_pin: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def spki_pin(cert_pem: bytes) -> str:
    """``sha256:`` + hex SHA-256 of the certificate's SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _server_names(sans: Sequence[str]) -> list[str]:
    return ["localhost", "127.0.0.1", "::1", socket.gethostname(), *sans]


def _cert_sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def load_or_create_pki(data_dir: Path, *, sans: Sequence[str] = ()) -> GatewayPki:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_crt, ca_key = data_dir / "ca.crt", data_dir / "ca.key"
    srv_crt, srv_key = data_dir / "server.crt", data_dir / "server.key"
    try:
        if ca_crt.exists() and ca_key.exists():
            ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
            key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PkiError(f"{ca_key}: not an EC key")
            ca_priv = key
        else:
            ca_priv = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflock-ca")])
            now = _now()
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(ca_priv.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(ca_priv.public_key()), critical=False
                )
                .sign(ca_priv, hashes.SHA256())
            )
            write_atomic(ca_key, _key_pem(ca_priv), 0o600)
            write_atomic(ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
            for stale in (srv_crt, srv_key):
                stale.unlink(missing_ok=True)
        wanted = _server_names(sans)
        reissue = True
        if srv_crt.exists() and srv_key.exists():
            srv = x509.load_pem_x509_certificate(srv_crt.read_bytes())
            reissue = (
                not set(wanted) <= _cert_sans(srv)
                or srv.issuer != ca_cert.subject
                or srv.not_valid_after_utc < _now() + datetime.timedelta(days=30)
            )
        if reissue:
            skey = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflock-gateway")])
                )
                .issuer_name(ca_cert.subject)
                .public_key(skey.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName(_san_entries(wanted)), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
                )
                .sign(ca_priv, hashes.SHA256())
            )
            write_atomic(srv_key, _key_pem(skey), 0o600)
            write_atomic(srv_crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except (OSError, ValueError) as exc:
        raise PkiError(f"gateway PKI in {data_dir}: {exc}") from exc
    pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    return GatewayPki(pem, ca_crt, ca_key, srv_crt, srv_key, spki_pin(pem))


def sign_node_csr(pki: GatewayPki, csr_pem: bytes, node: str, *, days: int = 365) -> bytes:
    """A client certificate for ``node`` over the CSR's public key (its subject is ignored)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not match its public key")
    key = serialization.load_pem_private_key(pki.ca_key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an EC key")
    ca = x509.load_pem_x509_certificate(pki.ca_cert_pem)
    now = _now()
    issued_us = int(now.timestamp() * 1_000_000)
    serial = issued_us << _SERIAL_RANDOM_BITS | secrets.randbits(_SERIAL_RANDOM_BITS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORG),
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(serial)
        .not_valid_before(now - NOT_BEFORE_SLACK)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def server_ssl_context(pki: GatewayPki, *, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki.server_cert_path), str(pki.server_key_path))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pki.ca_cert_pem.decode())
    return ctx


def node_from_peercert(cert: dict[str, Any] | None) -> str:
    """The node a verified client certificate names (CN, with O=edgeflock:nodes)."""
    if not cert:
        raise PkiError("no client certificate")
    attrs: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            attrs[name] = value
    if attrs.get("organizationName") != NODE_ORG or not attrs.get("commonName"):
        raise PkiError(f"not a node certificate: {attrs}")
    return attrs["commonName"]


def cert_issued_at(cert: dict[str, Any] | None) -> float:
    """When a verified node certificate (``getpeercert()``) was issued, in
    seconds since the epoch: from its serial number (see ``sign_node_csr``), or
    for a certificate with a random serial, its notBefore plus the slack."""
    try:
        not_before = ssl.cert_time_to_seconds(str((cert or {})["notBefore"]))
        serial = int(str((cert or {})["serialNumber"]), 16)
    except (KeyError, ValueError) as exc:
        raise PkiError(f"certificate without a readable notBefore: {exc!r}") from exc
    slack = NOT_BEFORE_SLACK.total_seconds()
    issued = (serial >> _SERIAL_RANDOM_BITS) / 1_000_000
    return issued if not_before <= issued < not_before + slack + 1 else not_before + slack
