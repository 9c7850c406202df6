"""A stand-in for the gateway's hub serving releases, until the gateway's own
release serving is merged (branch ``otagw``): real TLS (certificates from the
gateway's PKI code), real WebSockets, the real wire protocol (``edgeproto``).
It syncs one Node to one agent, acks its reports, and answers
``release-manifest`` / ``release-chunk`` requests from a release file on disk,
read piece by piece. Knobs make the faults a broken or hostile gateway would
cause (a corrupted piece, a bad signature, 503s, a dropped session, pieces
held back so a test can kill the agent mid-download)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway._pki import load_or_create_pki, server_ssl_context
from edgeproto import Entry, Kind, Message
from edgeproto.upgrade import (
    ANNOTATION,
    CHUNK_SIZE,
    REQUEST_CHUNK,
    REQUEST_MANIFEST,
    Assignment,
    ReleaseManifest,
    chunk_count,
    encode_assignment,
    encode_manifest,
    sign_manifest,
)
from tests.conftest import write_node_credentials


def keypair() -> tuple[bytes, bytes]:
    """A release key: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@dataclass
class ServedRelease:
    path: Path
    manifest: ReleaseManifest
    manifest_bytes: bytes
    signature: bytes


def make_release(
    path: Path, size: int, private_key: bytes, *, version: str = "9.9.9", arch: str | None = None
) -> ServedRelease:
    """``size`` random bytes in ``path`` (written in pieces), its manifest
    signed with ``private_key``."""
    import platform

    whole = hashlib.sha256()
    chunks: list[str] = []
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(CHUNK_SIZE, left))
            f.write(piece)
            whole.update(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
            left -= len(piece)
    m = ReleaseManifest(
        version=version,
        arch=arch or platform.machine(),
        size=size,
        sha256=whole.hexdigest(),
        chunks=tuple(chunks),
        created="2025-01-01T00:00:00Z",
    )
    data = encode_manifest(m)
    return ServedRelease(path, m, data, sign_manifest(private_key, data))


def release_of(path: Path, version: str, private_key: bytes) -> ServedRelease:
    """An existing release archive with its manifest, signed."""
    import platform

    whole = hashlib.sha256()
    chunks: list[str] = []
    with open(path, "rb") as f:
        while piece := f.read(CHUNK_SIZE):
            whole.update(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
    m = ReleaseManifest(
        version=version,
        arch=platform.machine(),
        size=path.stat().st_size,
        sha256=whole.hexdigest(),
        chunks=tuple(chunks),
        created="2025-01-01T00:00:00Z",
    )
    data = encode_manifest(m)
    return ServedRelease(path, m, data, sign_manifest(private_key, data))


def assignment_of(r: ServedRelease, *, job: str = "up-1", uid: str = "uid-1", **kw: Any) -> str:
    fields: dict[str, Any] = {
        "job": job,
        "uid": uid,
        "version": r.manifest.version,
        "release": r.manifest.sha256,
        "size": r.manifest.size,
        "health_timeout": 60,
    }
    fields.update(kw)
    return encode_assignment(Assignment(**fields))


@dataclass
class StandInHub:
    gw_dir: Path
    node: str
    releases: dict[str, ServedRelease] = field(default_factory=dict)
    annotation: str | None = None
    rev: int = 10
    port: int = 0
    # what was asked and said
    reports: list[dict[str, Any]] = field(default_factory=list)
    chunk_requests: Counter[int] = field(default_factory=Counter)
    manifest_requests: int = 0
    sessions: int = 0
    # faults
    corrupt: dict[int, int] = field(default_factory=dict)  # piece -> times to send it corrupted
    bad_signatures: int = 0  # manifest answers with a wrong signature still to send
    unavailable: int = 0  # requests still to answer 503
    drop_after_chunks: int | None = None  # end the session after this many pieces served
    hold_after_chunks: int | None = None  # serve this many pieces, then wait for `resume`
    resume: trio.Event = field(default_factory=trio.Event)
    served: int = 0  # pieces served in all
    _live: list[tws.WebSocketConnection] = field(default_factory=list)

    def enroll(self, data_dir: Path) -> None:
        write_node_credentials(load_or_create_pki(self.gw_dir), self.node, data_dir)
        url = f"wss://127.0.0.1:{self.port}/"
        (data_dir / "enrollment.json").write_text(f'{{"node": "{self.node}", "hub": "{url}"}}')

    def upgrade_reports(self) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["op"] == "upgrade"]

    def states(self) -> list[str]:
        return [r["body"]["state"] for r in self.upgrade_reports()]

    def _node_entry(self) -> Entry:
        meta: dict[str, Any] = {"name": self.node, "uid": "node-uid"}
        if self.annotation is not None:
            meta["annotations"] = {ANNOTATION: self.annotation}
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": meta}
        return Entry(
            edgeproto.make_key("nodes", "", self.node), self.rev, edgeproto.encode_object(obj)
        )

    async def set_annotation(self, value: str | None) -> None:
        """Change the Node's assignment; connected agents get the change."""
        self.annotation = value
        self.rev += 1
        for ws in list(self._live):
            for m in edgeproto.change_messages(self.rev, [self._node_entry()], []):
                try:
                    await ws.send_message(edgeproto.encode_message(m))
                except (tws.ConnectionClosed, trio.BrokenResourceError):
                    pass

    async def drop(self) -> None:
        """End every session (as a gateway going away does)."""
        for ws in list(self._live):
            await ws.aclose()

    async def start(self, nursery: trio.Nursery) -> None:
        ctx = server_ssl_context(load_or_create_pki(self.gw_dir), require_client_cert=True)
        server = await nursery.start(
            lambda task_status: tws.serve_websocket(
                self._handler,
                "127.0.0.1",
                self.port,
                ssl_context=ctx,
                task_status=task_status,
                max_message_size=1 << 21,
            )
        )
        self.port = server.port

    async def _send(self, ws: tws.WebSocketConnection, msg: Message) -> None:
        await ws.send_message(edgeproto.encode_message(msg, max_size=1 << 21))

    async def _handler(self, request: tws.WebSocketRequest) -> None:
        ws = await request.accept()
        self.sessions += 1
        try:
            hello = edgeproto.decode_message(_binary(await ws.get_message()))
            assert hello.kind is Kind.HELLO
            for m in edgeproto.snapshot_messages(self.rev, [self._node_entry()]):
                await self._send(ws, m)
            self._live.append(ws)
            while True:
                msg = edgeproto.decode_message(_binary(await ws.get_message()))
                if msg.kind is Kind.PING:
                    await self._send(ws, Message(Kind.PONG, parent=msg.id, body={}))
                elif msg.kind is Kind.REPORT:
                    self.reports.append({"op": msg.op, "res": msg.res, "body": dict(msg.body)})
                    await self._send(ws, Message(Kind.ACK, parent=msg.id, body={}))
                elif msg.kind is Kind.REQUEST:
                    body = await self._answer(msg)
                    await self._send(ws, Message(Kind.RESPONSE, parent=msg.id, body=body))
                    if (
                        self.drop_after_chunks is not None
                        and msg.op == REQUEST_CHUNK
                        and self.served >= self.drop_after_chunks
                    ):
                        self.drop_after_chunks = None
                        await ws.aclose()
                        return
        except (tws.ConnectionClosed, trio.BrokenResourceError):
            pass
        finally:
            if ws in self._live:
                self._live.remove(ws)

    async def _answer(self, msg: Message) -> dict[str, Any]:
        if self.unavailable > 0:
            self.unavailable -= 1
            return {"error": {"code": 503, "message": "store unavailable (stand-in)"}}
        r = self.releases.get(msg.res or "")
        if r is None:
            return {"error": {"code": 404, "message": f"no release {msg.res}"}}
        if msg.op == REQUEST_MANIFEST:
            self.manifest_requests += 1
            sig = r.signature
            if self.bad_signatures > 0:
                self.bad_signatures -= 1
                sig = bytes(64)
            return {"manifest": r.manifest_bytes, "signature": sig}
        if msg.op == REQUEST_CHUNK:
            index = msg.body.get("index")
            if type(index) is not int or not 0 <= index < chunk_count(r.manifest.size):
                return {"error": {"code": 400, "message": "bad index"}}
            if self.hold_after_chunks is not None and self.served >= self.hold_after_chunks:
                await self.resume.wait()
            self.chunk_requests[index] += 1
            self.served += 1
            offset, length = r.manifest.chunk_range(index)
            data = await trio.to_thread.run_sync(_read_at, r.path, offset, length)
            if self.corrupt.get(index, 0) > 0:
                self.corrupt[index] -= 1
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            return {"data": data}
        return {"error": {"code": 400, "message": f"unsupported request op {msg.op!r}"}}


def report_of(body: bytes) -> dict[str, Any]:
    return dict(cbor2.loads(body))


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _binary(data: bytes | str) -> bytes:
    assert isinstance(data, bytes), "a text frame from the agent"
    return data
