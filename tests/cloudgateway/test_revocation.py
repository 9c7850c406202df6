"""A deleted or revoked node stays out (issue 11, defect 16): end to end with
real TLS, the hub refuses its certificate and closes its live connection; a
re-join with a fresh token lets it back in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio_websocket as tws

import edgeproto
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message
from tests.cloudgateway.test_hub import hub_url
from tests.conftest import Gateway, join_node, start_agent, wait_for

GUARD = 10.0


def connect(node_dir: Path) -> tws.WebSocketConnection:
    return open_hub_connection(  # type: ignore[no-any-return]
        hub_url(node_dir),
        client_ssl_context(node_dir),
        connect_timeout=GUARD,
        max_message=edgeproto.DEFAULT_MAX_MESSAGE,
    )


async def hello(ws: tws.WebSocketConnection, node: str) -> Message:
    await ws.send_message(
        edgeproto.encode_message(Message(Kind.HELLO, body={"node": node, "last_rev": 0}))
    )
    with trio.fail_after(GUARD):
        return edgeproto.decode_message(await ws.get_message())


async def closed_reason(ws: tws.WebSocketConnection) -> tws.CloseReason:
    with trio.fail_after(GUARD), pytest.raises(tws.ConnectionClosed) as info:
        while True:
            await ws.get_message()
    return info.value.reason


async def test_deleting_a_node_locks_its_certificate_out(gateway: Gateway, tmp_path: Path) -> None:
    board = tmp_path / "pi-01"
    await join_node(gateway, "pi-01", board)
    hub = gateway.running.hub
    async with connect(board) as ws:
        assert (await hello(ws, "pi-01")).kind is Kind.SNAPSHOT
        code, _ = await gateway.api("DELETE", "/api/v1/nodes/pi-01")
        assert code == 200
        reason = await closed_reason(ws)
        assert reason.code == 1008 and reason.reason == "certificate revoked"
    # The same certificate again: refused after the handshake, with the reason.
    async with connect(board) as ws:
        reason = await closed_reason(ws)
        assert reason.code == 1008 and reason.reason == "certificate revoked"
    assert hub.statistics()["certificates_revoked_refused"] == 1
    code, _ = await gateway.api("GET", "/api/v1/nodes/pi-01")
    assert code == 404  # not re-created
    # A re-join with a fresh token gets a new certificate, which is accepted.
    shutil.rmtree(board)
    await join_node(gateway, "pi-01", board)
    async with connect(board) as ws:
        assert (await hello(ws, "pi-01")).kind is Kind.SNAPSHOT
    code, _ = await gateway.api("GET", "/api/v1/nodes/pi-01")
    assert code == 200


async def test_a_real_agent_of_a_deleted_node_does_not_bring_it_back(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    board = tmp_path / "pi-02"
    await join_node(gateway, "pi-02", board)
    agent = await start_agent(nursery, board)
    hub = gateway.running.hub
    await wait_for(lambda: "pi-02" in hub.connected_nodes(), timeout=GUARD)
    code, _ = await gateway.api("DELETE", "/api/v1/nodes/pi-02")
    assert code == 200
    # The agent reconnects (backing off) and is refused each time.
    await wait_for(lambda: hub.statistics().get("certificates_revoked_refused", 0) >= 2, GUARD)
    assert "pi-02" not in hub.connected_nodes()
    code, _ = await gateway.api("GET", "/api/v1/nodes/pi-02")
    assert code == 404
    await agent.stop()


async def test_edgectl_revoke_node(gateway: Gateway, tmp_path: Path) -> None:
    board = tmp_path / "pi-03"
    await join_node(gateway, "pi-03", board)
    async with connect(board) as ws:
        assert (await hello(ws, "pi-03")).kind is Kind.SNAPSHOT
        rc, out, err = await gateway.edgectl("revoke", "node", "pi-03")
        assert (rc, out, err) == (0, 'node "pi-03" revoked\n', "")
        assert (await closed_reason(ws)).reason == "certificate revoked"
    async with connect(board) as ws:
        assert (await closed_reason(ws)).reason == "certificate revoked"
    code, body = await gateway.api("GET", "/api/v1/nodes/pi-03/revocation")
    assert code == 200 and body["revokedAt"] > 0
    code, _ = await gateway.api("GET", "/api/v1/nodes/pi-03")
    assert code == 200  # revoking keeps the Node
    rc, _, err = await gateway.edgectl("revoke", "pods", "x")
    assert rc == 2 and "only nodes" in err
