"""The fleet's release public key as a board keeps it: ``DATA_DIR/release.pub``
(SubjectPublicKeyInfo PEM, Ed25519), written at join and never taken from the
gateway afterwards. The agent checks release manifests' signatures with it.

``check_release_key`` loads ``cryptography`` (join time only); the fingerprint
(``sha256:`` and the hex SHA-256 of the key's DER, as ``edgectl upgrade
keygen`` may print it) needs only the stdlib, for ``edgeagent status``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from ._errors import AgentError

__all__ = ["RELEASE_KEY_FILE", "BadReleaseKey", "check_release_key", "fingerprint", "stored"]

RELEASE_KEY_FILE = "release.pub"
_BEGIN, _END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"


class BadReleaseKey(AgentError):
    """Not an Ed25519 public key in PEM (SubjectPublicKeyInfo); says why."""


def check_release_key(pem: bytes | str) -> bytes:
    """The key as it is stored (canonical PEM) if ``pem`` is an Ed25519
    public key in PEM; else ``BadReleaseKey``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BadReleaseKey(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadReleaseKey(
            f"the release key must be an Ed25519 public key, not {type(key).__name__}"
        )
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(pem: bytes) -> str:
    """``sha256:<hex>`` of the key's DER; ``BadReleaseKey`` if it is not PEM."""
    text = pem.decode("ascii", "replace")
    start, end = text.find(_BEGIN), text.find(_END)
    if start < 0 or end < start:
        raise BadReleaseKey("no PUBLIC KEY block")
    body = "".join(text[start + len(_BEGIN) : end].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadReleaseKey(f"bad base64 in the PUBLIC KEY block: {exc}") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


def stored(data_dir: Path) -> str | None:
    """The fingerprint of the board's release key; None without one (or
    ``"unreadable: …"`` when the file is not a key)."""
    try:
        pem = (data_dir / RELEASE_KEY_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        return fingerprint(pem)
    except BadReleaseKey as exc:
        return f"unreadable: {exc}"
