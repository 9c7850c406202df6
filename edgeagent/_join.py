"""``edgeagent join``: trust the gateway through the CA pin in the token, send a
CSR for a fresh key, store the node certificate. Only this path imports
``cryptography``; ``edgeagent run`` does not."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeproto
from edgeio import write_atomic
from edgeproto.labels import LabelError, check_node_labels, goarch, is_label_value

from ._errors import AgentError
from ._releasekey import RELEASE_KEY_FILE, BadReleaseKey, check_release_key, stored

log = logging.getLogger(__name__)

__all__ = ["Enrollment", "JoinFailed", "join", "spki_pin"]

_TOKEN = re.compile(r"^([a-z0-9]{6}\.[a-z0-9]{16})\.([0-9a-f]{64})$")


class JoinFailed(AgentError):
    """Enrollment did not happen; the message says why."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    node: str
    hub_url: str
    gateway_url: str
    hubs: tuple[str, ...] = ()  # every gateway replica's hub, when the gateway named them
    # False: the Node existed (a re-join); its labels stayed as the cloud has them.
    node_created: bool = True
    # The fingerprint of the release key stored (DATA_DIR/release.pub), None if none.
    release_key: str | None = None
    release_key_source: str = ""  # "--release-key", "gateway", "kept" (a re-join), or ""


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


class _Staged:
    """The enrollment written in two steps around the token's redemption.

    Before: the data dir is created, the new key written beside the old one
    (``node.key.new``) and room reserved for the rest (``join.pending``, 64 KiB):
    a read-only or full card fails here, with the token still unused. After:
    the reservation is freed, the certificate and CA written beside their old
    versions, the three renamed into place (renames need no room), and the
    enrollment written last."""

    RESERVE = 64 * 1024

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.pending = data_dir / "join.pending"

    def prepare(self, key_pem: bytes) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.dir / "node.key.new", key_pem, 0o600)
            write_atomic(self.pending, bytes(self.RESERVE), 0o600)
        except OSError as exc:
            self.discard()
            raise JoinFailed(
                f"cannot write to {self.dir} ({exc}); the token was not used: "
                "free some space or make the directory writable and run join again"
            ) from None

    def discard(self) -> None:
        for name in ("node.key.new", "node.key.new.tmp", "join.pending", "join.pending.tmp"):
            with contextlib.suppress(OSError):
                (self.dir / name).unlink()

    def commit(
        self, cert: bytes, ca: bytes, enrollment: bytes, release_key: bytes | None = None
    ) -> None:
        try:
            self.pending.unlink()
            write_atomic(self.dir / "node.crt.new", cert, 0o644)
            write_atomic(self.dir / "ca.crt.new", ca, 0o644)
            for name in ("node.key", "node.crt", "ca.crt"):
                (self.dir / (name + ".new")).replace(self.dir / name)
            if release_key is not None:
                write_atomic(self.dir / RELEASE_KEY_FILE, release_key, 0o644)
            write_atomic(self.dir / "enrollment.json", enrollment, 0o644)  # last: enrolled now
        except OSError as exc:
            raise JoinFailed(
                f"cannot write to {self.dir} after the gateway enrolled this board ({exc}); "
                "the token is spent: ask for a new one"
            ) from None


def _board() -> dict[str, str]:
    """This board's ``kubernetes.io/arch`` and ``kubernetes.io/os`` values."""
    board = {"arch": goarch(platform.machine()), "os": platform.system().lower()}
    return {k: v for k, v in board.items() if v and is_label_value(v)}


def _asked_labels(data_dir: Path, labels: Mapping[str, str] | None) -> dict[str, str]:
    """agent.toml's ``labels`` with ``labels`` (the command line's) over them, checked."""
    from ._config import ConfigError, join_labels

    try:
        merged = {**join_labels(data_dir), **(labels or {})}
        return check_node_labels(merged)
    except (ConfigError, LabelError) as exc:
        raise JoinFailed(f"{exc}; the token was not used") from None


def join(
    gateway_url: str,
    token: str,
    data_dir: Path,
    *,
    timeout: float = 15.0,
    labels: Mapping[str, str] | None = None,
    release_key: bytes | None = None,
) -> Enrollment:
    """Enroll with the gateway. The Node is created with ``labels`` (over
    those ``DATA_DIR/agent.toml`` names) beside the well-known ones; a Node
    that exists already keeps the labels the cloud gave it.

    The fleet's release key (``DATA_DIR/release.pub``, what upgrades must be
    signed with) is ``release_key`` (PEM, checked before the token is used),
    else the join answer's ``releaseKey``; without either, a key stored by an
    earlier join stays. It is written before ``enrollment.json``, and the
    agent never takes one from the gateway after the join."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    m = _TOKEN.match(token.strip())
    if not m:
        raise JoinFailed("malformed token: expected <6 chars>.<16 chars>.<64 hex CA pin>")
    secret, pin = m.group(1), "sha256:" + m.group(2)
    asked = _asked_labels(data_dir, labels)
    given_key: bytes | None = None
    if release_key is not None:
        try:
            given_key = check_release_key(release_key)
        except BadReleaseKey as exc:
            raise JoinFailed(f"--release-key: {exc}; the token was not used") from None
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflock-node")]))
        .sign(key, None)
    )
    # The token is single-use: everything that can fail here (a read-only or
    # full card) is tried before it is spent.
    staged = _Staged(data_dir)
    staged.prepare(key_pem)
    try:
        answer = _request(
            f"{base}/v1/join",
            verified,
            timeout,
            {
                "token": secret,
                "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                "labels": asked,
                **_board(),
            },
        )
        node, cert, hub = str(answer["node"]), str(answer["certificate"]), str(answer["hub"])
    except (KeyError, TypeError) as exc:
        staged.discard()
        raise JoinFailed(f"gateway answer lacks {exc}") from None
    except BaseException:
        staged.discard()
        raise
    hubs = _hubs(answer.get("hubs"))
    enrollment: dict[str, Any] = {"node": node, "hub": hub, "gateway": base}
    if hubs:
        enrollment["hubs"] = list(hubs)
    rkey, source = (given_key, "--release-key") if given_key else (_gateway_key(answer), "gateway")
    staged.commit(cert.encode(), ca_pem, json.dumps(enrollment, indent=2).encode(), rkey)
    fp = stored(data_dir)
    if rkey is None:
        source = "kept" if fp else ""
    return Enrollment(
        node,
        hub,
        base,
        hubs,
        node_created=answer.get("nodeCreated") is not False,
        release_key=fp,
        release_key_source=source,
    )


def _gateway_key(answer: dict[str, Any]) -> bytes | None:
    """The join answer's ``releaseKey``, checked. A bad one is left out (said
    in a warning): the token is spent by now; the board then has no release
    key and refuses upgrades until it joins again with ``--release-key``."""
    value = answer.get("releaseKey")
    if value is None:
        return None
    if not isinstance(value, str):
        log.warning("ignoring the gateway's releaseKey: not PEM text")
        return None
    try:
        return check_release_key(value)
    except BadReleaseKey as exc:
        log.warning("ignoring the gateway's releaseKey: %s", exc)
        return None


def _hubs(value: Any) -> tuple[str, ...]:
    """The replicas' hubs the gateway named, checked. A bad list is left out
    (said in a warning): the token is spent by now, the board works with the
    one hub it enrolled with and learns the list again on every connect."""
    if value is None:
        return ()
    try:
        return edgeproto.check_hubs(value)
    except edgeproto.ProtocolError as exc:
        log.warning("ignoring the gateway's list of replica hubs: %s", exc)
        return ()
