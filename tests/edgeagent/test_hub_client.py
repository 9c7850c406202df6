"""The agent's hub client against a scripted gateway that misbehaves.

A scripted server is used here because the real gateway cannot be made to send
garbage: these are faults of a broken or hostile peer. TLS is real (certificates
from the gateway's own PKI code)."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway._pki import load_or_create_pki, server_ssl_context
from edgeagent._config import load_config
from edgeagent._hub import HubClient, full_jitter, open_hub_connection
from edgeagent._meta import Meta
from edgeagent._tls import client_ssl_context
from edgeproto import Entry, Kind, Message
from tests.conftest import Gateway, start_agent, wait_for, write_node_credentials


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


async def test_a_rejected_certificate_is_seen_at_once_not_after_connect_timeout(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A real gateway refusing the agent's certificate (signed by another CA):
    with TLS 1.3 the client's handshake completes before the server's verdict,
    an alert that arrives in milliseconds. Before, the client then waited for
    the WebSocket handshake for its whole connect_timeout (15 s)."""
    data = tmp_path / "agent"
    write_node_credentials(load_or_create_pki(tmp_path / "another-ca"), "pi-x", data)
    (data / "ca.crt").write_bytes((gateway.data_dir / "ca.crt").read_bytes())  # trusts the gateway
    url = f"wss://127.0.0.1:{gateway.ports['hub']}/"
    began = trio.current_time()
    with pytest.raises(trio.BrokenResourceError, match="during the handshake") as caught:
        async with open_hub_connection(
            url, client_ssl_context(data), connect_timeout=15.0, max_message=1 << 20
        ):
            pass
    took = trio.current_time() - began
    assert took < 5.0, f"the refusal took {took:.1f} s to be noticed"
    # what the TLS layer saw is in the log line (the alert, or the reset after it)
    assert any(w in str(caught.value) for w in ("alert", "reset", "closed"))


async def test_the_hub_client_backs_off_as_usual_after_a_refusal(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    """The refusal is an ordinary disconnect: the client retries after its
    jittered backoff, many times within one connect_timeout."""
    data = tmp_path / "agent"
    enroll(tmp_path / "another-ca", data, "pi-x", f"wss://127.0.0.1:{gateway.ports['hub']}/")
    (data / "ca.crt").write_bytes((gateway.data_dir / "ca.crt").read_bytes())
    config = load_config(data, connect_timeout=15.0, backoff_base=0.05, backoff_cap=0.2)
    meta = Meta(config.meta_path)
    hub = HubClient(config, meta, lambda: client_ssl_context(data))
    began = trio.current_time()
    nursery.start_soon(hub.run)
    await wait_for(lambda: hub.counters["disconnects"] >= 3, timeout=14.0)
    assert trio.current_time() - began < 14.0
    assert not hub.connected
    meta.close()
