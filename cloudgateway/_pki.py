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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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
    "new_ca",
    "node_from_peercert",
    "read_local_ca",
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

_CaKey = ec.EllipticCurvePrivateKey


class PkiError(GatewayError):
    """A certificate, key or CSR is missing, invalid or not acceptable."""


@dataclass(frozen=True, slots=True)
class GatewayPki:
    ca_cert_pem: bytes
    ca_cert_path: Path
    ca_key_path: Path | None  # None when the CA comes from a shared store
    server_cert_path: Path
    server_key_path: Path
    ca_pin: str
    ca_key_pem: bytes = field(repr=False)


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


def new_ca() -> tuple[bytes, bytes]:
    """A new CA: its certificate and its private key, both PEM."""
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
    return ca_cert.public_bytes(serialization.Encoding.PEM), _key_pem(ca_priv)


def read_local_ca(data_dir: Path) -> tuple[bytes, bytes] | None:
    """The data dir's own CA (``ca.crt``, ``ca.key``), if it has both files."""
    ca_crt, ca_key = data_dir / "ca.crt", data_dir / "ca.key"
    try:
        if ca_crt.exists() and ca_key.exists():
            return ca_crt.read_bytes(), ca_key.read_bytes()
    except OSError as exc:
        raise PkiError(f"gateway PKI in {data_dir}: {exc}") from exc
    return None


def _load_ca(cert_pem: bytes, key_pem: bytes, where: str) -> tuple[x509.Certificate, _CaKey]:
    """The CA's certificate and key, checked to belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{where}: not a PEM certificate and key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{where}: not an EC key")
    if key.public_key() != cert.public_key():
        raise PkiError(f"{where}: the CA key does not belong to the CA certificate")
    return cert, key


def load_or_create_pki(
    data_dir: Path, *, sans: Sequence[str] = (), ca: tuple[bytes, bytes] | None = None
) -> GatewayPki:
    """The gateway's PKI in ``data_dir``: the serving certificate and key (issued
    again when a name in ``sans`` is missing, it expires within 30 days, or
    another CA signed it) and ``ca.crt``.

    Without ``ca`` the CA is the data dir's own (``ca.key``, created on first
    start). With ``ca`` (certificate and key PEM: the fleet's CA from a shared
    store) that CA signs and its key is never written here; a ``ca.key`` of
    another CA in the data dir is refused rather than left beside a ``ca.crt``
    it does not match."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_crt, ca_key = data_dir / "ca.crt", data_dir / "ca.key"
    srv_crt, srv_key = data_dir / "server.crt", data_dir / "server.key"
    try:
        if ca is not None:
            ca_cert, ca_priv = _load_ca(ca[0], ca[1], "the fleet CA")
            if ca_key.exists():
                local = serialization.load_pem_private_key(ca_key.read_bytes(), None)
                if local.public_key() != ca_priv.public_key():
                    raise PkiError(
                        f"{ca_key} is the key of another CA than the fleet's (this data dir "
                        "ran with its own CA): move ca.key and ca.crt away to serve this fleet"
                    )
            if not ca_crt.exists() or ca_crt.read_bytes() != ca[0]:
                write_atomic(ca_crt, ca[0], 0o644)
            key_pem, key_path = ca[1], None
        elif ca_crt.exists() and ca_key.exists():
            key_pem, key_path = ca_key.read_bytes(), ca_key
            ca_cert, ca_priv = _load_ca(ca_crt.read_bytes(), key_pem, str(ca_key))
        else:
            cert_pem, key_pem = new_ca()
            key_path = ca_key
            ca_cert, ca_priv = _load_ca(cert_pem, key_pem, "the new CA")
            write_atomic(ca_key, key_pem, 0o600)
            write_atomic(ca_crt, cert_pem, 0o644)
            for stale in (srv_crt, srv_key):
                stale.unlink(missing_ok=True)
        _ensure_serving_cert(srv_crt, srv_key, ca_cert, ca_priv, _server_names(sans))
    except (OSError, ValueError) as exc:
        raise PkiError(f"gateway PKI in {data_dir}: {exc}") from exc
    pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    return GatewayPki(pem, ca_crt, key_path, srv_crt, srv_key, spki_pin(pem), key_pem)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _ensure_serving_cert(
    srv_crt: Path, srv_key: Path, ca_cert: x509.Certificate, ca_priv: _CaKey, wanted: list[str]
) -> None:
    if srv_crt.exists() and srv_key.exists():
        srv = x509.load_pem_x509_certificate(srv_crt.read_bytes())
        if (
            set(wanted) <= _cert_sans(srv)
            and _issued_by(srv, ca_cert)
            and srv.not_valid_after_utc >= _now() + datetime.timedelta(days=30)
        ):
            return
    skey = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflock-gateway")]))
        .issuer_name(ca_cert.subject)
        .public_key(skey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(_san_entries(wanted)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_priv, hashes.SHA256())
    )
    write_atomic(srv_key, _key_pem(skey), 0o600)
    write_atomic(srv_crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def sign_node_csr(pki: GatewayPki, csr_pem: bytes, node: str, *, days: int = 365) -> bytes:
    """A client certificate for ``node`` over the CSR's public key (its subject is ignored)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not match its public key")
    key = serialization.load_pem_private_key(pki.ca_key_pem, None)
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
