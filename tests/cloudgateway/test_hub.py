"""The hub against raw WebSocket clients holding real node certificates."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway._hub import _SpentHandshake
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message
from tests.conftest import Gateway, join_node, wait_for
from tests.test_sync_e2e import cm, create, pod, secret


def hub_url(data_dir: Path) -> str:
    return str(json.loads((data_dir / "enrollment.json").read_text())["hub"])


def connect(data_dir: Path, ctx: ssl.SSLContext | None = None) -> Any:
    return open_hub_connection(
        hub_url(data_dir),
        ctx or client_ssl_context(data_dir),
        connect_timeout=5,
        max_message=edgeproto.DEFAULT_MAX_MESSAGE * 2,
    )


async def send(ws: tws.WebSocketConnection, msg: Message) -> None:
    await ws.send_message(edgeproto.encode_message(msg))


async def recv(ws: tws.WebSocketConnection, *, skip: tuple[Kind, ...] = ()) -> Message:
    with trio.fail_after(5):
        while True:
            msg = edgeproto.decode_message(await ws.get_message())
            if msg.kind not in skip:
                return msg


@pytest.fixture
async def two_nodes(gateway: Gateway, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    await join_node(gateway, "node-a", a)
    await join_node(gateway, "node-b", b)
    await create(gateway, "configmaps", cm("b-config"))
    await create(gateway, "secrets", secret("b-secret"))
    await create(gateway, "pods", pod("b-pod", "node-b", "b-config", "b-secret"))
    return a, b


async def test_node_cannot_pose_as_another(two_nodes: tuple[Path, Path]) -> None:
    a, _ = two_nodes
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-b", "last_rev": 0}))
        err = await recv(ws)
        assert err.kind is Kind.ERROR and err.body["code"] == "forbidden"
        with pytest.raises(tws.ConnectionClosed):
            await recv(ws)


async def test_node_reads_and_writes_only_its_own(
    gateway: Gateway, two_nodes: tuple[Path, Path]
) -> None:
    a, _ = two_nodes
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        snap = await recv(ws)
        assert snap.kind is Kind.SNAPSHOT
        keys = {o["k"] for o in snap.body["objects"]}
        assert keys == {"nodes//node-a"}  # nothing of node-b's
        await send(ws, Message(Kind.REQUEST, id=5, op="get", res="secrets/default/b-secret"))
        resp = await recv(ws, skip=(Kind.CHANGE,))
        assert resp.kind is Kind.RESPONSE and resp.parent == 5
        assert resp.body["error"]["code"] == 403
        await send(ws, Message(Kind.REQUEST, id=6, op="get", res="nodes//node-a"))
        resp = await recv(ws, skip=(Kind.CHANGE,))
        assert edgeproto.decode_object(resp.body["object"])["metadata"]["name"] == "node-a"
        # Writing node-b's pod status is refused, with the sequence number acked so
        # the agent's outbox does not stall.
        await send(
            ws,
            Message(
                Kind.REPORT,
                id=9,
                res="pods/default/b-pod",
                op="status",
                body={"status": {"phase": "Running"}},
            ),
        )
        ack = await recv(ws, skip=(Kind.CHANGE,))
        assert ack.kind is Kind.ACK and ack.parent == 9 and ack.body["error"]["code"] == 403
        await send(
            ws, Message(Kind.REPORT, id=10, res="nodes//node-b", op="status", body={"status": {}})
        )
        ack = await recv(ws, skip=(Kind.CHANGE,))
        assert ack.body["error"]["code"] == 403
    code, body = await gateway.api("GET", "/api/v1/namespaces/default/pods/b-pod")
    assert (code == 200 and "status" not in body) or body["status"].get("phase") != "Running"


async def test_bad_frames_get_errors_and_the_session_survives(
    gateway: Gateway, two_nodes: tuple[Path, Path]
) -> None:
    a, _ = two_nodes
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
        # The gateway let go of the upgrade's h11 state (memory per idle node);
        # everything below runs over that connection.
        server_ws = gateway.running.hub._sessions["node-a"].ws
        assert isinstance(server_ws._wsproto.handshake, _SpentHandshake)
        bad: list[tuple[Any, str]] = [
            (b"\xff\x00garbage", "malformed"),
            (cbor2.dumps({"v": 1, "id": 1, "kind": "launch-missiles"}), "unknown-kind"),
            (cbor2.dumps({"v": 7, "id": 1, "kind": "ping"}), "version"),
            ("a text frame", "malformed"),
            (
                edgeproto.encode_message(
                    Message(Kind.REPORT, id=3, res="not a key", op="status", body={"status": {}})
                ),
                "",
            ),
        ]
        for frame, code in bad:
            await ws.send_message(frame)
            reply = await recv(ws, skip=(Kind.CHANGE,))
            if code:
                assert reply.kind is Kind.ERROR and reply.body["code"] == code, reply
            else:
                assert reply.kind is Kind.ACK and reply.body["error"]["code"] == 400
        await send(ws, Message(Kind.PING, id=77))
        pong = await recv(ws, skip=(Kind.CHANGE,))
        assert pong.kind is Kind.PONG and pong.parent == 77


async def test_oversized_frame_closes_with_1009(
    gateway: Gateway, two_nodes: tuple[Path, Path]
) -> None:
    a, _ = two_nodes
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        await recv(ws)
        await ws.send_message(b"\x00" * (edgeproto.DEFAULT_MAX_MESSAGE + 10))
        with pytest.raises(tws.ConnectionClosed) as info:
            await recv(ws)
        assert info.value.reason.code == 1009
    # The gateway still serves others.
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200


async def test_tls_without_client_certificate_is_refused(two_nodes: tuple[Path, Path]) -> None:
    a, _ = two_nodes
    ctx = ssl.create_default_context(cafile=str(a / "ca.crt"))
    # With TLS 1.3 the client finishes its side before the server checks the
    # certificate; the server then drops the connection, and the WebSocket
    # handshake never completes (trio-websocket waits for it: our timeout ends it).
    refused = (
        tws.HandshakeError,
        OSError,
        trio.BrokenResourceError,
        tws.ConnectionClosed,
        trio.TooSlowError,
    )
    with pytest.raises(refused):
        async with connect(a, ctx) as ws:
            await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
            await recv(ws)


async def test_node_becomes_not_ready_only_after_grace(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    from tests.conftest import start_gateway

    gw = await start_gateway(nursery, tmp_path / "gw", grace=1.5)
    await join_node(gw, "flaky", tmp_path / "a")

    async def ready() -> str:
        _, body = await gw.api("GET", "/api/v1/nodes/flaky")
        for c in (body.get("status") or {}).get("conditions", []):
            if c["type"] == "Ready":
                return str(c["status"])
        return ""

    async with connect(tmp_path / "a") as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "flaky", "last_rev": 0}))
        await recv(ws)
        await wait_for(lambda: ready(), timeout=5)
        assert await ready() == "True"
    # Disconnected: still Ready within the grace period (a health check after
    # the hub has seen the disconnect leaves it; the clock-driven cases are in
    # test_health.py)...
    await wait_for(lambda: "flaky" not in gw.running.hub.connected_nodes())
    await gw.running.health.check(gw.running.hub.connected_nodes())
    assert await ready() == "True"
    # ...and NotReady (Unknown) after it.
    await wait_for(lambda: _is(ready, "Unknown"), timeout=5)
    await gw.stop()


async def _is(fn: Any, value: str) -> bool:
    return bool(await fn() == value)


async def test_admission_bounds_concurrent_resyncs(
    two_nodes: tuple[Path, Path], gateway: Gateway
) -> None:
    """With one resync slot and a queue of one, a third node is told when to come back."""
    from cloudgateway._hub import Hub, HubConfig

    hub = Hub(
        gateway.store,
        ssl.create_default_context(),
        gateway.running.health,
        HubConfig(max_resyncs=1, max_waiting=1),
    )
    release = [trio.Event(), trio.Event()]
    results: list[bool] = []

    async def node(i: int) -> None:
        ok = await hub._admit()
        results.append(ok)
        if ok:
            await release[i].wait()
            hub._resyncs.release()

    async with trio.open_nursery() as n:
        n.start_soon(node, 0)  # takes the slot
        await wait_for(lambda: hub.statistics()["resyncs_running"] == 1)
        n.start_soon(node, 1)  # queues
        await wait_for(lambda: hub.statistics()["resyncs_waiting"] == 1)
        third: list[bool] = []
        n.start_soon(lambda: _admit_into(hub, third))
        await wait_for(lambda: third == [False])  # queue full: come back later
        assert 1.0 <= hub._retry_after() <= 60.0
        release[0].set()
        await wait_for(lambda: results == [True, True])
        release[1].set()
    assert hub.statistics()["resyncs_running"] == 0


async def _admit_into(hub: Any, out: list[bool]) -> None:
    out.append(await hub._admit())


async def test_one_bad_report_costs_only_that_report(
    gateway: Gateway, two_nodes: tuple[Path, Path]
) -> None:
    """Defect 11: each of these reports from an enrolled node raised an error the
    hub did not catch, and the whole gateway went down with it. Now each is
    answered 400 by its id and counted, and everything else keeps working."""
    a, b = two_nodes
    code, body = await gateway.api(
        "POST",
        "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices",
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "d-a", "namespace": "default"},
            "spec": {"deviceModelRef": {"name": "m"}, "nodeName": "node-a"},
        },
    )
    assert code == 201, body
    entry = {"propertyName": "t", "value": "1", "timestamp": "\u00b2"}
    bad = [
        ("nodes//node-a", "event", {"topic": "t", "payload": "p", "timestamp": 10**30}),
        ("nodes//node-a", "event", {"topic": "t", "payload": "p", "timestamp": 2**63 - 1}),
        ("nodes//node-a", "status", {"status": {"conditions": 5}}),
        ("nodes//node-a", "status", {"status": {"conditions": {"type": "Ready"}}}),
        ("devices/default/d-a", "twin-history", {"history": [entry]}),
        ("devices/default/d-a", "status", {"status": {"twins": [{"propertyName": 5}]}}),
    ]
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
        for seq, (res, op, body) in enumerate(bad, start=100):
            await send(ws, Message(Kind.REPORT, id=seq, res=res, op=op, body=body))
            ack = await recv(ws, skip=(Kind.CHANGE,))
            assert ack.kind is Kind.ACK and ack.parent == seq, (op, body, ack)
            assert ack.body["error"]["code"] == 400, (op, body, ack)
        await send(ws, Message(Kind.PING, id=7))
        assert (await recv(ws, skip=(Kind.CHANGE,))).kind is Kind.PONG
    assert gateway.running.hub.statistics()["reports_malformed"] == len(bad)
    # The gateway still serves: the API answers, another node connects and syncs.
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200
    async with connect(b) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-b", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT


async def test_a_failing_connection_costs_only_that_connection(
    gateway: Gateway, two_nodes: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever escapes a connection's handling closes that connection, logged
    and counted; other nodes and the API carry on. No input is known to do it
    any more (that is the point), so a fault is planted: the hub's request
    handler raises as a bug would."""
    hub = gateway.running.hub

    async def broken(*_args: Any) -> dict[str, Any]:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(hub._reports, "request", broken)
    a, b = two_nodes
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
        await send(ws, Message(Kind.REQUEST, id=5, op="get", res="nodes//node-a"))
        with pytest.raises(tws.ConnectionClosed):
            await recv(ws, skip=(Kind.CHANGE,))
    await wait_for(lambda: hub.statistics().get("connections_failed") == 1)
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200
    async with connect(b) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-b", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT


async def test_an_undecodable_report_is_answered_by_its_id(
    gateway: Gateway, two_nodes: tuple[Path, Path]
) -> None:
    """Defect 13, the gateway's side: a report the gateway cannot decode (nested
    past the decoder's limit) was answered with an error naming no report, so the
    agent's outbox held it (and, 64 of them, its whole window) for good. Now it
    is acked by its id, final, with the reason."""
    a, _ = two_nodes
    deep: Any = "x"
    for _ in range(400):
        deep = [deep]
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
        for seq in range(200, 270):  # more than an agent's window of 64
            body = {"topic": "t", "payload": deep, "timestamp": 1}
            await send(ws, Message(Kind.REPORT, id=seq, res="nodes//node-a", op="event", body=body))
            ack = await recv(ws, skip=(Kind.CHANGE,))
            assert ack.kind is Kind.ACK and ack.parent == seq, ack
            assert (
                ack.body["error"]["code"] == 400 and "undecodable" in ack.body["error"]["message"]
            )
    assert gateway.running.hub.statistics()["reports_malformed"] == 70
