"""What the upgrade tests share: a bundle directory to release, a signing
key, and a board that speaks the real hub protocol over real TLS (joined
with a real token and CSR): it applies and acknowledges its view, reports its
Node's status (its agent version as kubeletVersion), asks for release pieces
and sends upgrade reports, as the agent's Upgrader will."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio_websocket as tws

import edgeproto
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import AgentSync, Kind, Message
from edgeproto.upgrade import (
    ANNOTATION,
    REPORT_OP,
    REQUEST_CHUNK,
    REQUEST_MANIFEST,
    WINDOW,
    Assignment,
    NodeState,
    UpgradeReport,
    decode_assignment,
    decode_manifest,
    report_body,
    verify_manifest,
)
from tests.cloudgateway.simboard import apply_to_view
from tests.conftest import Gateway, edgectl, join_node


def make_bundle(root: Path, version: str, *, arch: str = "x86_64", size: int = 300_000) -> Path:
    """A directory shaped as ``edgeflash bundle`` makes (manifest.json, SHA256SUMS,
    wheels/...), ``size`` bytes of content: several pieces."""
    root.mkdir(parents=True)
    (root / "wheels").mkdir()
    blob = hashlib.sha256(version.encode()).digest() * (size // 32 + 1)
    (root / "wheels" / f"edgeflock-{version}-py3-none-any.whl").write_bytes(blob[:size])
    manifest = {
        "arch": arch,
        "python": "3.11",
        "project": {"name": "edgeflock", "version": version},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "SHA256SUMS").write_text("")
    return root


async def keygen(directory: Path) -> tuple[Path, Path]:
    key = directory / "release.key"
    rc, _, err = await edgectl("upgrade", "keygen", "--out", str(key))
    assert rc == 0, err
    assert os.stat(key).st_mode & 0o777 == 0o600
    return key, directory / "release.pub"


async def push(gw: Gateway, bundle: Path, key: Path) -> str:
    """``edgectl upgrade push``; the release's sha256."""
    rc, out, err = await gw.edgectl("upgrade", "push", str(bundle), "--key", str(key))
    assert rc == 0, err
    return out.split()[1]


class Board:
    """A fake board on the real protocol: ``async with board.session(gw):``."""

    def __init__(self, gw: Gateway, name: str, data_dir: Path, version: str) -> None:
        self.gw = gw
        self.name = name
        self.data_dir = data_dir
        self.version = version
        self.sync = AgentSync(name, 0)
        self.view: dict[str, dict[str, Any]] = {}
        self.ws: tws.WebSocketConnection | None = None
        self._ids = 1000
        self._pinged = 0.0

    async def join(self) -> None:
        await join_node(self.gw, self.name, self.data_dir)

    @property
    def node(self) -> dict[str, Any]:
        return self.view.get(f"nodes//{self.name}") or {}

    def assignment(self) -> Assignment | None:
        ann = (self.node.get("metadata") or {}).get("annotations") or {}
        return decode_assignment(ann[ANNOTATION]) if ANNOTATION in ann else None

    @contextlib.asynccontextmanager
    async def connected(self, gw: Gateway | None = None) -> AsyncIterator[Board]:
        """A session with the hub (a resync from the board's last revision,
        then its Node status with its version) for the block's length."""
        self.gw = gw or self.gw
        url = f"wss://127.0.0.1:{self.gw.ports['hub']}/"
        async with open_hub_connection(
            url,
            client_ssl_context(self.data_dir),
            connect_timeout=5,
            max_message=edgeproto.DEFAULT_MAX_MESSAGE * 2,
        ) as ws:
            self.ws = ws
            try:
                await self._send(self.sync.hello(now=trio.current_time()))
                await self.pump(until=lambda: self.sync.last_rev > 0 and bool(self.node))
                await self.report_status()
                yield self
            finally:
                self.ws = None

    async def _send(self, msg: Message) -> None:
        assert self.ws is not None
        await self.ws.send_message(edgeproto.encode_message(msg))

    async def _one(self) -> Message:
        assert self.ws is not None
        return await self._take(await self.ws.get_message())

    async def poll(self, seconds: float = 0.05) -> None:
        """Take what the hub sent within ``seconds`` (one message at most)."""
        assert self.ws is not None
        data: Any = None
        with trio.move_on_after(seconds):
            data = await self.ws.get_message()
        if data is not None:
            await self._take(data)
        elif trio.current_time() - self._pinged > 2:
            self._pinged = trio.current_time()
            await self._send(Message(Kind.PING, id=1))

    async def _take(self, data: Any) -> Message:
        msg = edgeproto.decode_message(data, max_size=edgeproto.DEFAULT_MAX_MESSAGE * 2)
        if msg.kind in (Kind.SNAPSHOT, Kind.CHANGE):
            apply = self.sync.receive(msg, nbytes=0, now=trio.current_time())
            if apply is not None:
                self.view = apply_to_view(self.view, apply)
                if apply.rev is not None:
                    await self._send(self.sync.persisted(apply.rev))
        return msg

    async def pump(self, until: Any, timeout: float = 15.0) -> None:
        """Take messages (applying the view) until ``until()`` holds; pings
        keep the session alive."""
        with trio.fail_after(timeout):
            while not until():
                with trio.move_on_after(0.5):
                    await self._one()
                    continue
                await self._send(Message(Kind.PING, id=1))

    async def call(self, msg: Message, reply: Kind) -> dict[str, Any]:
        self._ids += 1
        msg = dataclasses.replace(msg, id=self._ids)
        await self._send(msg)
        got: list[dict[str, Any]] = []

        async def wait() -> None:
            while not got:
                m = await self._one()
                if m.kind is reply and m.parent == msg.id:
                    got.append(dict(m.body))

        with trio.fail_after(15):
            await wait()
        return got[0]

    async def report_status(self) -> None:
        """Its Node's status, as the agent reports it: its version as kubeletVersion."""
        status = {
            "nodeInfo": {
                "kubeletVersion": f"v1.30.0-edgeflock.{self.version}",
                "architecture": "amd64",
                "operatingSystem": "linux",
            }
        }
        body = await self.call(
            Message(Kind.REPORT, res=f"nodes//{self.name}", op="status", body={"status": status}),
            Kind.ACK,
        )
        assert body == {}, body

    async def request(
        self, op: str, sha: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self.call(
            Message(Kind.REQUEST, res=sha, op=op, body=body or {}), Kind.RESPONSE
        )

    async def report(self, a: Assignment, state: NodeState, reason: str = "") -> dict[str, Any]:
        r = UpgradeReport(a.job, a.uid, a.version, state, reason, edgeproto.rfc3339(time.time()))
        msg = Message(Kind.REPORT, res=f"nodes//{self.name}", op=REPORT_OP, body=report_body(r))
        return await self.call(msg, Kind.ACK)

    async def download(self, a: Assignment, release_pub: bytes) -> bytes:
        """The release the assignment names, piece by piece (``WINDOW`` in
        flight), each checked against the signed manifest."""
        got = await self.request(REQUEST_MANIFEST, a.release)
        assert "error" not in got, got
        verify_manifest(release_pub, got["manifest"], got["signature"])
        m = decode_manifest(got["manifest"])
        assert m.sha256 == a.release and m.size == a.size
        out = io.BytesIO()
        pending: dict[int, int] = {}
        pieces: dict[int, bytes] = {}
        index = 0
        with trio.fail_after(30):
            while len(pieces) < len(m.chunks):
                while index < len(m.chunks) and len(pending) < WINDOW:
                    self._ids += 1
                    pending[self._ids] = index
                    await self._send(
                        Message(
                            Kind.REQUEST, id=self._ids, res=a.release, op=REQUEST_CHUNK,
                            body={"index": index},
                        )
                    )  # fmt: skip
                    index += 1
                msg = await self._one()
                if msg.kind is Kind.RESPONSE and msg.parent in pending:
                    i = pending.pop(msg.parent)
                    assert "data" in msg.body, msg.body
                    data = msg.body["data"]
                    assert hashlib.sha256(data).hexdigest() == m.chunks[i]
                    pieces[i] = data
        for i in range(len(m.chunks)):
            out.write(pieces[i])
        blob = out.getvalue()
        assert hashlib.sha256(blob).hexdigest() == m.sha256
        return blob

    async def upgrade(self, a: Assignment, release_pub: bytes) -> None:
        """What a board does with an assignment that works: download,
        install, switch, restart on the new version (a new session), healthy."""
        async with self.connected():
            assert (await self.report(a, NodeState.DOWNLOADING)) == {}
            await self.download(a, release_pub)
            assert (await self.report(a, NodeState.INSTALLING)) == {}
            assert (await self.report(a, NodeState.SWITCHED)) == {}
        self.version = a.version
        async with self.connected():
            assert (await self.report(a, NodeState.HEALTHY)) == {}


async def settle(boards: list[Board], cond: Any, timeout: float = 20.0) -> None:
    """Let connected ``boards`` take what the hub sends until ``cond()`` holds."""
    with trio.fail_after(timeout):
        while not await _holds(cond):
            for b in boards:
                if b.ws is not None:
                    await b.poll()


async def _holds(cond: Any) -> bool:
    got = cond()
    if hasattr(got, "__await__"):
        got = await got
    return bool(got)
