"""The agent's hub client against a scripted gateway that misbehaves.

A scripted server is used here because the real gateway cannot be made to send
garbage: these are faults of a broken or hostile peer. TLS is real (certificates
from the gateway's own PKI code)."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway._pki import load_or_create_pki, server_ssl_context
from edgeagent._hub import full_jitter
from edgeproto import Entry, Kind, Message
from tests.conftest import start_agent, wait_for, write_node_credentials


def enroll(gw_dir: Path, data_dir: Path, node: str, hub_url: str) -> None:
    write_node_credentials(load_or_create_pki(gw_dir), node, data_dir)
    (data_dir / "enrollment.json").write_text(json.dumps({"node": node, "hub": hub_url}))


async def test_agent_survives_a_gateway_sending_garbage(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pki = load_or_create_pki(tmp_path / "gw")
    ctx = server_ssl_context(pki, require_client_cert=True)
    errors_from_agent: list[dict[str, object]] = []
    acks: list[int] = []

    async def handler(request: tws.WebSocketRequest) -> None:
        ws = await request.accept()
        hello = edgeproto.decode_message(await ws.get_message())
        assert hello.kind is Kind.HELLO
        await ws.send_message(b"\xff\xfe not cbor")
        await ws.send_message(cbor2.dumps({"v": 1, "id": 1, "kind": "teleport"}))
        await ws.send_message(
            edgeproto.encode_message(Message(Kind.CHANGE, rev=3, body={"upserts": [{"k": "x"}]}))
        )
        good = Entry(
            "configmaps/default/ok",
            4,
            edgeproto.encode_object({"kind": "ConfigMap", "metadata": {"name": "ok"}}),
        )
        for m in edgeproto.snapshot_messages(4, [good]):
            await ws.send_message(edgeproto.encode_message(m))
        while True:
            try:
                msg = edgeproto.decode_message(await ws.get_message())
            except tws.ConnectionClosed:
                return
            if msg.kind is Kind.ERROR:
                errors_from_agent.append(dict(msg.body))
            elif msg.kind is Kind.ACK and msg.rev is not None:
                acks.append(msg.rev)
            elif msg.kind is Kind.PING:
                await ws.send_message(edgeproto.encode_message(Message(Kind.PONG, parent=msg.id)))

    server = await nursery.start(
        lambda task_status: tws.serve_websocket(
            handler, "127.0.0.1", 0, ssl_context=ctx, task_status=task_status
        )
    )
    port = server.port
    data = tmp_path / "agent"
    enroll(tmp_path / "gw", data, "pi-x", f"wss://127.0.0.1:{port}/")
    agent = await start_agent(nursery, data)
    await wait_for(lambda: acks == [4])
    assert agent.status()["objects"] == {"ConfigMap": 1}
    assert agent.status()["last_rev"] == 4
    codes = sorted(str(e["code"]) for e in errors_from_agent)
    assert codes == ["bad-field", "malformed", "unknown-kind"]
    await agent.stop()


def test_full_jitter_is_bounded_and_grows() -> None:
    assert full_jitter(0, 1.0, 60.0, rng=lambda: 0.999) < 1.0
    assert full_jitter(3, 1.0, 60.0, rng=lambda: 0.999) < 8.0
    assert full_jitter(3, 1.0, 60.0, rng=lambda: 0.999) > 7.0
    assert full_jitter(50, 1.0, 60.0, rng=lambda: 0.999) < 60.0
    assert full_jitter(50, 1.0, 60.0, rng=lambda: 0.0) == 0.0
