"""Replica certificates: how gateway replicas prove to each other that they are
replicas of this fleet, for the peer port that relays logs and exec.

A replica certificate is signed by the fleet CA (the one that signs node
certificates) and names the replica in its subject: ``O=edgeflock:replicas``,
``CN=<replica id>``. Its key usage allows both TLS roles (a replica is a peer
server and a peer client). Node certificates carry ``O=edgeflock:nodes``, set
by the CA whatever the CSR asked, so a board's certificate never passes for a
replica's. Each replica keeps its own in its data dir (``replica.crt``,
``replica.key`` mode 0600), issued on start with the fleet CA's key (from the
shared store, or the data dir) and reissued when the CA, the id or the names
change or expiry is near.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeio import write_atomic

from ._pki import GatewayPki, PkiError

__all__ = [
    "REPLICA_ORG",
    "ReplicaCredentials",
    "check_replica_id",
    "issue_replica_cert",
    "load_or_create_replica_credentials",
    "load_or_create_replica_id",
    "peer_client_ssl",
    "peer_server_ssl",
    "replica_from_peercert",
]

REPLICA_ORG = "edgeflock:replicas"
# A DNS label-ish name: what a registry key and a log line can carry as is.
_REPLICA_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VALID_DAYS = 365
_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ReplicaCredentials:
    replica_id: str
    cert_path: Path
    key_path: Path


def check_replica_id(replica_id: str) -> str:
    if not _REPLICA_ID.match(replica_id):
        raise PkiError(
            f"replica id {replica_id!r} must be 1-63 lower-case letters, digits or '-' "
            "(not first or last)"
        )
    return replica_id


def load_or_create_replica_id(data_dir: Path, configured: str | None = None) -> str:
    """``configured`` if given, else the id in ``data_dir/replica.id``, made
    (random, ``r-`` + 12 hex digits) on first start."""
    if configured:
        return check_replica_id(configured)
    path = data_dir / "replica.id"
    try:
        return check_replica_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    replica_id = "r-" + secrets.token_hex(6)
    write_atomic(path, (replica_id + "\n").encode(), 0o644)
    return replica_id


def _names(sans: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n for n in sans if n):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_replica_cert(
    pki: GatewayPki, replica_id: str, sans: Sequence[str] = (), *, days: int = _VALID_DAYS
) -> tuple[bytes, bytes]:
    """A replica certificate for ``replica_id`` (and its private key), both PEM,
    signed by the fleet CA; ``sans`` are the names and addresses it is reached by."""
    check_replica_id(replica_id)
    try:
        ca_key = serialization.load_pem_private_key(pki.ca_key_pem, None)
    except (TypeError, ValueError) as exc:
        raise PkiError(f"cannot read the fleet CA's key: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an EC key")
    ca = x509.load_pem_x509_certificate(pki.ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, REPLICA_ORG),
                    x509.NameAttribute(NameOID.COMMON_NAME, replica_id),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names = _names(sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _still_good(cert_path: Path, pki: GatewayPki, replica_id: str, sans: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    ca = x509.load_pem_x509_certificate(pki.ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    subject = {a.oid: a.value for a in cert.subject}
    if subject.get(NameOID.COMMON_NAME) != replica_id:
        return False
    if subject.get(NameOID.ORGANIZATION_NAME) != REPLICA_ORG:
        return False
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
            str(v) for v in ext.get_values_for_type(x509.IPAddress)
        }
    except x509.ExtensionNotFound:
        have = set()
    now = datetime.datetime.now(datetime.UTC)
    return {n for n in sans if n} <= have and cert.not_valid_after_utc > now + _RENEW_BEFORE


def load_or_create_replica_credentials(
    pki: GatewayPki, data_dir: Path, replica_id: str, sans: Sequence[str] = ()
) -> ReplicaCredentials:
    """This replica's certificate and key in ``data_dir`` (``replica.crt``,
    ``replica.key``), issued by the fleet CA if missing or no longer right."""
    creds = ReplicaCredentials(replica_id, data_dir / "replica.crt", data_dir / "replica.key")
    if not (creds.key_path.exists() and _still_good(creds.cert_path, pki, replica_id, sans)):
        cert_pem, key_pem = issue_replica_cert(pki, replica_id, sans)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(creds.key_path, key_pem, 0o600)
            write_atomic(creds.cert_path, cert_pem, 0o644)
        except OSError as exc:
            raise PkiError(f"cannot write the replica certificate in {data_dir}: {exc}") from exc
    return creds


def _context(pki: GatewayPki, creds: ReplicaCredentials, *, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # replicas are ours
    ctx.load_cert_chain(str(creds.cert_path), str(creds.key_path))
    ctx.load_verify_locations(cadata=pki.ca_cert_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_server_ssl(pki: GatewayPki, creds: ReplicaCredentials) -> ssl.SSLContext:
    """The peer port's TLS: a client certificate signed by the fleet CA is
    required (``replica_from_peercert`` then checks it names a replica)."""
    ctx = _context(pki, creds, server=True)
    ctx.num_tickets = 0  # no resumption: every connection shows its certificate
    return ctx


def peer_client_ssl(pki: GatewayPki, creds: ReplicaCredentials) -> ssl.SSLContext:
    """TLS to another replica's peer port, showing this replica's certificate.
    The server is authenticated by its replica certificate (checked with
    ``replica_from_peercert``), not by a host name: peer addresses come from
    the replicas' own registrations and need not be in their certificates."""
    ctx = _context(pki, creds, server=False)
    ctx.check_hostname = False
    return ctx


def replica_from_peercert(cert: dict[str, Any] | None) -> str:
    """The replica a verified certificate (``getpeercert()``) names, or PkiError."""
    if not cert:
        raise PkiError("no certificate")
    attrs: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            attrs[name] = value
    if attrs.get("organizationName") != REPLICA_ORG:
        shown = ", ".join(f"{k}={v}" for k, v in attrs.items())
        raise PkiError(f"not a replica certificate ({shown})")
    return check_replica_id(attrs.get("commonName", ""))
