"""``edgeagent join``: trust the gateway through the CA pin in the token, send a
CSR for a fresh key, store the node certificate. Only this path imports
``cryptography``; ``edgeagent run`` does not."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeio import write_atomic as _write

from ._errors import AgentError

__all__ = ["Enrollment", "JoinFailed", "join", "spki_pin"]

_TOKEN = re.compile(r"^([a-z0-9]{6}\.[a-z0-9]{16})\.([0-9a-f]{64})$")


class JoinFailed(AgentError):
    """Enrollment did not happen; the message says why."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    node: str
    hub_url: str
    gateway_url: str


def spki_pin(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _request(url: str, ctx: ssl.SSLContext, timeout: float, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                info = json.loads(exc.read())
                detail = f"{info.get('message')} ({info.get('reason')})"
            except (ValueError, AttributeError):
                detail = f"HTTP {exc.code}"
        raise JoinFailed(f"gateway refused the join: {detail}") from None
    except urllib.error.URLError as exc:
        raise JoinFailed(f"cannot reach the gateway at {url}: {exc.reason}") from None
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise JoinFailed(f"cannot reach the gateway at {url}: {exc}") from None
    except ValueError as exc:
        raise JoinFailed(f"gateway answered with invalid JSON: {exc}") from None


def join(gateway_url: str, token: str, data_dir: Path, *, timeout: float = 15.0) -> Enrollment:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    m = _TOKEN.match(token.strip())
    if not m:
        raise JoinFailed("malformed token: expected <6 chars>.<16 chars>.<64 hex CA pin>")
    secret, pin = m.group(1), "sha256:" + m.group(2)
    base = gateway_url.rstrip("/")
    if not base.startswith("https://"):
        raise JoinFailed(f"gateway URL must be https://HOST:PORT, got {gateway_url!r}")
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    ca_answer = _request(f"{base}/v1/ca", insecure, timeout)
    ca_pem = str(ca_answer.get("ca", "")).encode() if isinstance(ca_answer, dict) else b""
    try:
        got = spki_pin(ca_pem)
    except ValueError as exc:
        raise JoinFailed(f"gateway sent an unreadable CA certificate: {exc}") from None
    if got != pin:
        raise JoinFailed(f"gateway CA does not match the token's pin (token {pin}, gateway {got})")
    verified = ssl.create_default_context(cadata=ca_pem.decode())
    # Ed25519: the gateway holds one parsed client certificate per connected
    # node, and an Ed25519 key is ~1.8 KiB smaller there than a P-256 one.
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflock-node")]))
        .sign(key, None)
    )
    answer = _request(
        f"{base}/v1/join",
        verified,
        timeout,
        {"token": secret, "csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
    )
    try:
        node, cert, hub = str(answer["node"]), str(answer["certificate"]), str(answer["hub"])
    except (KeyError, TypeError) as exc:
        raise JoinFailed(f"gateway answer lacks {exc}") from None
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(data_dir / "node.key", key_pem, 0o600)
        _write(data_dir / "node.crt", cert.encode(), 0o644)
        _write(data_dir / "ca.crt", ca_pem, 0o644)
        enrollment = {"node": node, "hub": hub, "gateway": base}
        _write(data_dir / "enrollment.json", json.dumps(enrollment, indent=2).encode(), 0o644)
    except OSError as exc:
        raise JoinFailed(f"cannot write to {data_dir}: {exc}") from None
    return Enrollment(node, hub, base)
