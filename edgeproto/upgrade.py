"""Agent upgrades over the air: the documents the gateway, edgectl and the agent
share (sans-io, plain values only).

- A **release** is an offline bundle (``edgeflash bundle``) packed into one tar
  archive. Its ``ReleaseManifest`` names the version, the target architecture,
  the archive's size and SHA-256, and the SHA-256 of every ``CHUNK_SIZE``
  piece, so a board checks each piece as it arrives and resumes a download
  from the last piece that checks. The manifest's canonical bytes
  (``encode_manifest``) are what the fleet's release key signs (Ed25519); the
  gateway stores and serves manifest, signature and pieces but holds no key
  that could sign.
- The gateway hands a release to a board through an ``Assignment``, the JSON
  value of its Node's ``ANNOTATION`` (so a board offline when the job starts
  gets it with its next resync).
- The board tells the gateway how far it got with an ``upgrade`` report about
  its own Node (``UpgradeReport``); the job's per-node status follows it.

Decoders are strict and raise only ``UpgradeError`` (a ``ProtocolError``).
``sign_manifest``/``verify_manifest`` load ``cryptography`` when called.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from ._errors import ProtocolError

__all__ = [
    "ANNOTATION",
    "ARCH_OF_NODE",
    "CHUNK_SIZE",
    "MAX_CHUNKS",
    "REPORT_OP",
    "REQUEST_CHUNK",
    "REQUEST_MANIFEST",
    "WINDOW",
    "Assignment",
    "NodeState",
    "ReleaseManifest",
    "UpgradeError",
    "UpgradeReport",
    "check_version",
    "chunk_count",
    "decode_assignment",
    "decode_manifest",
    "encode_assignment",
    "encode_manifest",
    "parse_report",
    "report_body",
    "sign_manifest",
    "verify_manifest",
]

ANNOTATION = "edgeflock.io/upgrade"  # on a Node: the Assignment, JSON
REPORT_OP = "upgrade"  # report{res: nodes//NODE, op: upgrade, body: UpgradeReport}
REQUEST_MANIFEST = "release-manifest"  # request{res: sha256} -> {manifest, signature}
REQUEST_CHUNK = "release-chunk"  # request{res: sha256, body {index}} -> {data}
CHUNK_SIZE = 64 * 1024  # bytes of a release piece (the last may be shorter)
WINDOW = 8  # piece requests a board keeps in flight
MAX_CHUNKS = 16384  # 1 GiB of release at most
MAX_VERSION = 64
MAX_REASON = 1024
MAX_NAME = 253

# A Node's ``kubernetes.io/arch`` label -> the bundle architecture it runs.
ARCH_OF_NODE = {"arm64": "aarch64", "arm": "armv7l", "amd64": "x86_64"}
_ARCHES = frozenset(ARCH_OF_NODE.values())
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UpgradeError(ProtocolError):
    """An upgrade document that cannot be used; the message says why."""

    code = "bad-field"


class NodeState(enum.StrEnum):
    """Where one board is in one job. ``pending``: not handed out yet (or the
    board has not started); ``downloading`` and ``installing`` on the board;
    ``switched``: the new version's agent was started and is on trial;
    ``healthy``: it reconnected and finished a resync within the health
    timeout (success); ``rolledBack``: the board went back to its previous
    version (the new one crashed or never became healthy); ``failed``: the
    board stayed on its version (bad hash or signature, no room, timeout…)."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    SWITCHED = "switched"
    HEALTHY = "healthy"
    ROLLED_BACK = "rolledBack"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (NodeState.HEALTHY, NodeState.ROLLED_BACK, NodeState.FAILED)


def chunk_count(size: int) -> int:
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


# ---- the release manifest ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseManifest:
    version: str  # the edgeflock version the bundle installs
    arch: str  # aarch64 | armv7l | x86_64
    size: int  # bytes of the archive
    sha256: str  # of the whole archive (hex): the release's name
    chunks: tuple[str, ...]  # SHA-256 (hex) of each CHUNK_SIZE piece
    created: str  # RFC 3339, informative

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Offset and length of piece ``index``."""
        start = index * CHUNK_SIZE
        return start, min(CHUNK_SIZE, self.size - start)


_MANIFEST_FIELDS = frozenset(
    {"format", "name", "version", "arch", "size", "sha256", "chunkSize", "chunks", "created"}
)


def encode_manifest(m: ReleaseManifest) -> bytes:
    """The canonical bytes of a manifest: what is signed, stored and sent."""
    _check_manifest(m)
    doc = {
        "format": 1,
        "name": "edgeflock",
        "version": m.version,
        "arch": m.arch,
        "size": m.size,
        "sha256": m.sha256,
        "chunkSize": CHUNK_SIZE,
        "chunks": list(m.chunks),
        "created": m.created,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_manifest(data: bytes) -> ReleaseManifest:
    """Parse canonical manifest bytes; anything else raises ``UpgradeError``."""
    if not isinstance(data, bytes) or len(data) > 80 * MAX_CHUNKS:
        raise UpgradeError("release manifest is not bytes of a sane size")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UpgradeError(f"release manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise UpgradeError("release manifest is not a JSON object")
    if set(doc) != _MANIFEST_FIELDS:
        raise UpgradeError(
            "release manifest fields: missing "
            f"{sorted(_MANIFEST_FIELDS - set(doc))}, unknown {sorted(set(doc) - _MANIFEST_FIELDS)}"
        )
    if doc["format"] != 1 or doc["name"] != "edgeflock":
        raise UpgradeError("release manifest: unsupported format or name")
    if doc["chunkSize"] != CHUNK_SIZE:
        raise UpgradeError(f"release manifest: chunkSize must be {CHUNK_SIZE}")
    chunks = doc["chunks"]
    if not isinstance(chunks, list):
        raise UpgradeError("release manifest: chunks is not a list")
    for f in ("version", "arch", "sha256", "created"):
        if not isinstance(doc[f], str):
            raise UpgradeError(f"release manifest: {f} is not a string")
    m = ReleaseManifest(
        version=doc["version"],
        arch=doc["arch"],
        size=doc["size"],
        sha256=doc["sha256"],
        chunks=tuple(chunks),
        created=doc["created"],
    )
    _check_manifest(m)
    if encode_manifest(m) != data:
        raise UpgradeError("release manifest is not in canonical form")
    return m


def _check_manifest(m: ReleaseManifest) -> None:
    check_version(m.version)
    if m.arch not in _ARCHES:
        raise UpgradeError(f"release manifest: arch {m.arch!r} is not one of {sorted(_ARCHES)}")
    if type(m.size) is not int or not 0 < m.size <= MAX_CHUNKS * CHUNK_SIZE:
        raise UpgradeError("release manifest: size out of range")
    if not isinstance(m.sha256, str) or not _SHA256.fullmatch(m.sha256):
        raise UpgradeError("release manifest: sha256 is not 64 lowercase hex digits")
    if len(m.chunks) != chunk_count(m.size):
        raise UpgradeError(
            f"release manifest: {len(m.chunks)} chunk hashes for {chunk_count(m.size)} chunks"
        )
    for h in m.chunks:
        if not isinstance(h, str) or not _SHA256.fullmatch(h):
            raise UpgradeError("release manifest: a chunk hash is not 64 lowercase hex digits")
    if not isinstance(m.created, str) or len(m.created) > 64:
        raise UpgradeError("release manifest: created is not a short string")


def check_version(version: Any) -> str:
    if (
        not isinstance(version, str)
        or len(version) > MAX_VERSION
        or not _VERSION.fullmatch(version)
    ):
        raise UpgradeError(f"not a release version: {str(version)[:80]!r}")
    return version


def sign_manifest(private_key_pem: bytes, manifest: bytes) -> bytes:
    """Ed25519 signature of manifest bytes with a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UpgradeError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UpgradeError("the release key must be an Ed25519 private key")
    return key.sign(manifest)


def verify_manifest(public_key_pem: bytes, manifest: bytes, signature: bytes) -> None:
    """Raise ``UpgradeError`` unless ``signature`` is the release key's
    signature of ``manifest``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        raise UpgradeError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UpgradeError("the release key must be an Ed25519 public key")
    if not isinstance(signature, bytes):
        raise UpgradeError("release signature is not bytes")
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise UpgradeError(
            "release signature does not verify with this board's release key"
        ) from None


# ---- the assignment (a Node annotation) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    job: str  # NodeUpgradeJob name
    uid: str  # its metadata.uid: a job re-created under the same name is another job
    version: str
    release: str  # sha256 of the release for this node's arch
    size: int  # bytes of that release (the board checks its free space first)
    health_timeout: int  # seconds the new agent has to connect and resync


_ASSIGNMENT_FIELDS = frozenset({"job", "uid", "version", "release", "size", "healthTimeoutSeconds"})


def encode_assignment(a: Assignment) -> str:
    doc = {
        "job": a.job,
        "uid": a.uid,
        "version": a.version,
        "release": a.release,
        "size": a.size,
        "healthTimeoutSeconds": a.health_timeout,
    }
    _check_assignment(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode_assignment(value: Any) -> Assignment:
    if not isinstance(value, str) or len(value) > 4096:
        raise UpgradeError(f"{ANNOTATION} is not a short string")
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise UpgradeError(f"{ANNOTATION} is not JSON: {exc}") from exc
    _check_assignment(doc)
    return Assignment(
        job=doc["job"],
        uid=doc["uid"],
        version=doc["version"],
        release=doc["release"],
        size=doc["size"],
        health_timeout=doc["healthTimeoutSeconds"],
    )


def _check_assignment(doc: Any) -> None:
    if not isinstance(doc, dict) or set(doc) != _ASSIGNMENT_FIELDS:
        raise UpgradeError(f"{ANNOTATION} must have exactly {sorted(_ASSIGNMENT_FIELDS)}")
    for f in ("job", "uid"):
        if not isinstance(doc[f], str) or not 0 < len(doc[f]) <= MAX_NAME:
            raise UpgradeError(f"{ANNOTATION}: {f} is not a name")
    check_version(doc["version"])
    if not isinstance(doc["release"], str) or not _SHA256.fullmatch(doc["release"]):
        raise UpgradeError(f"{ANNOTATION}: release is not a sha256")
    if type(doc["size"]) is not int or not 0 < doc["size"] <= MAX_CHUNKS * CHUNK_SIZE:
        raise UpgradeError(f"{ANNOTATION}: size out of range")
    t = doc["healthTimeoutSeconds"]
    if type(t) is not int or not 1 <= t <= 86400:
        raise UpgradeError(f"{ANNOTATION}: healthTimeoutSeconds must be 1..86400")


# ---- the board's report ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpgradeReport:
    job: str
    uid: str
    version: str  # the version the job asked for
    state: NodeState
    reason: str  # why it failed or rolled back; progress text otherwise ("" if none)
    time: str  # RFC 3339, when the board reached the state


_REPORT_FIELDS = frozenset({"job", "uid", "version", "state", "reason", "time"})


def report_body(r: UpgradeReport) -> dict[str, Any]:
    body = {
        "job": r.job,
        "uid": r.uid,
        "version": r.version,
        "state": r.state.value,
        "reason": r.reason[:MAX_REASON],
        "time": r.time,
    }
    parse_report(body)
    return body


def parse_report(body: Any) -> UpgradeReport:
    if not isinstance(body, dict) or set(body) != _REPORT_FIELDS:
        raise UpgradeError(f"upgrade report must have exactly {sorted(_REPORT_FIELDS)}")
    for f in ("job", "uid"):
        if not isinstance(body[f], str) or not 0 < len(body[f]) <= MAX_NAME:
            raise UpgradeError(f"upgrade report: {f} is not a name")
    check_version(body["version"])
    try:
        state = NodeState(body["state"])
    except ValueError:
        raise UpgradeError(f"upgrade report: unknown state {str(body['state'])[:40]!r}") from None
    if state is NodeState.PENDING:
        raise UpgradeError("upgrade report: a board does not report pending")
    reason, when = body["reason"], body["time"]
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise UpgradeError("upgrade report: reason is not a string of at most 1024 characters")
    if not isinstance(when, str) or len(when) > 64:
        raise UpgradeError("upgrade report: time is not a short string")
    return UpgradeReport(body["job"], body["uid"], body["version"], state, reason, when)
