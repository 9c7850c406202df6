"""Admission under a flood of unauthenticated connections (issue 11, defect 12):
idle or slow sockets on loopback against a real gateway must not keep a board
with a valid certificate, or an admin, out."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

import edgeproto
from cloudgateway._hub import HubConfig
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message
from tests.cloudgateway.test_hub import hub_url
from tests.conftest import Gateway, join_node, start_gateway, wait_for

GUARD = 10.0  # seconds: against hangs; well under every timeout the flood could wait out
SLOW = b"\x16\x03\x01\x02\x00"  # a TLS handshake record's header; its 512-byte body never sent


def client_hello() -> bytes:
    """The first flight of a real TLS client: its whole ClientHello."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@contextlib.asynccontextmanager
async def flood(
    port: int, count: int, first_bytes: bytes = b""
) -> AsyncIterator[list[socket.socket]]:
    """``count`` connections to ``port`` that send ``first_bytes`` and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
            if first_bytes:
                await trio.lowlevel.wait_writable(s)
                s.send(first_bytes)
        yield socks
    finally:
        for s in socks:
            s.close()


async def closed_by_peer(s: socket.socket) -> bytes:
    """What the peer sent before it closed (or reset) the connection."""
    received = b""
    while True:
        await trio.lowlevel.wait_readable(s)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


async def sync_once(node_dir: Path, node: str) -> Message:
    """Connect with the node's certificate, say hello, return the snapshot."""
    async with open_hub_connection(
        hub_url(node_dir),
        client_ssl_context(node_dir),
        connect_timeout=GUARD,
        max_message=edgeproto.DEFAULT_MAX_MESSAGE,
    ) as ws:
        hello = Message(Kind.HELLO, body={"node": node, "last_rev": 0})
        await ws.send_message(edgeproto.encode_message(hello))
        return edgeproto.decode_message(await ws.get_message())


async def test_idle_flood_does_not_keep_a_board_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Timeouts far beyond the test's guard: only admission itself can let the board in.
    config = HubConfig(
        max_handshakes=4, max_handshake_queue=8, client_hello_timeout=60, handshake_timeout=60
    )
    gw = await start_gateway(nursery, tmp_path / "gw", hub=config)
    await join_node(gw, "pi-01", tmp_path / "pi-01")
    hub = gw.running.hub
    async with flood(gw.ports["hub"], 60):
        await wait_for(lambda: hub.statistics()["half_open"] == 12)
        with trio.fail_after(GUARD):
            snap = await sync_once(tmp_path / "pi-01", "pi-01")
        assert snap.kind is Kind.SNAPSHOT
        # The oldest idle sockets made room; the board (newest) was not shed.
        assert hub.statistics()["connections_shed"] >= 48


async def test_silent_slow_and_stalled_connections_are_closed_at_their_deadlines(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = HubConfig(client_hello_timeout=0.2, handshake_timeout=0.5)
    gw = await start_gateway(nursery, tmp_path / "gw", hub=config)
    hub = gw.running.hub
    with trio.fail_after(GUARD):
        async with flood(gw.ports["hub"], 1) as (silent,):
            assert await closed_by_peer(silent) == b""
        # The first bytes of a TLS record, then nothing: no ClientHello either.
        async with flood(gw.ports["hub"], 1, SLOW) as (slow,):
            assert await closed_by_peer(slow) == b""
        assert hub.statistics()["client_hello_timeouts"] == 2
        # A whole ClientHello, then silence: the handshake's deadline closes it.
        async with flood(gw.ports["hub"], 1, client_hello()) as (stalled,):
            assert await closed_by_peer(stalled)  # the hub's first flight
    stats = hub.statistics()
    assert stats["client_hello_timeouts"] == 2 and stats["handshake_timeouts"] == 1
    assert stats["half_open"] == 0


async def test_slow_flood_holds_no_handshake_slot(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Sockets that send part of a ClientHello and stop wait for the rest
    without a handshake slot: with every slot's worth of them (and more)
    connected, a board still gets through at once, nobody shed."""
    config = HubConfig(
        max_handshakes=2, max_handshake_queue=100, client_hello_timeout=60, handshake_timeout=60
    )
    gw = await start_gateway(nursery, tmp_path / "gw", hub=config)
    await join_node(gw, "pi-01", tmp_path / "pi-01")
    hub = gw.running.hub
    async with flood(gw.ports["hub"], 20, SLOW):
        await wait_for(lambda: hub.statistics()["half_open"] == 20)
        with trio.fail_after(GUARD):
            snap = await sync_once(tmp_path / "pi-01", "pi-01")
        assert snap.kind is Kind.SNAPSHOT
        assert hub.counters["connections_shed"] == 0


async def handshake_in_pieces(port: int, ctx: ssl.SSLContext, on_header: Any) -> None:
    """A TLS handshake whose ClientHello reaches the server in pieces: its
    record header first, then (once ``on_header()`` has returned) the rest."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        s.send(hello[:5])
        await on_header()
        half = (len(hello) + 5) // 2
        s.send(hello[5:half])
        s.send(hello[half:])
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    s.sendall(pending)
                await trio.lowlevel.wait_readable(s)
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed by the hub during the handshake") from None
                incoming.write(data)
        s.sendall(outgoing.read())  # the client's last flight (certificate, finished)
    assert tls.getpeercert() is not None


async def test_stalled_handshakes_give_their_slots_to_a_board(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Sockets that send a whole (replayed) ClientHello and then stall hold
    every handshake slot; a board waiting for one takes the slot held longest
    once it has been held ``handshake_grace``, not ``handshake_timeout``."""
    config = HubConfig(max_handshakes=2, handshake_grace=0.5, handshake_timeout=60)
    gw = await start_gateway(nursery, tmp_path / "gw", hub=config)
    await join_node(gw, "pi-01", tmp_path / "pi-01")
    hub = gw.running.hub
    async with flood(gw.ports["hub"], 4, client_hello()) as stalled:
        await wait_for(lambda: hub.statistics()["half_open"] == 4)
        with trio.fail_after(GUARD):
            snap = await sync_once(tmp_path / "pi-01", "pi-01")
            assert snap.kind is Kind.SNAPSHOT
            assert hub.counters["handshakes_preempted"] >= 1
            assert await closed_by_peer(stalled[0])  # the hub's first flight, then closed


async def test_newest_waiter_gets_the_next_handshake_slot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Slots go to the newest waiter: a board that connects behind a queue of
    stalled hellos takes the first slot that frees, not the sixth."""
    config = HubConfig(max_handshakes=1, handshake_grace=1.0, handshake_timeout=60)
    gw = await start_gateway(nursery, tmp_path / "gw", hub=config)
    await join_node(gw, "pi-01", tmp_path / "pi-01")
    hub = gw.running.hub
    async with flood(gw.ports["hub"], 6, client_hello()):
        await wait_for(lambda: hub.statistics()["handshakes_waiting"] == 5)
        with trio.fail_after(GUARD):
            snap = await sync_once(tmp_path / "pi-01", "pi-01")
        assert snap.kind is Kind.SNAPSHOT
        assert hub.counters["handshakes_preempted"] == 1


async def test_client_hello_in_pieces_is_admitted(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The hub waits for the whole first record, whatever pieces it comes in."""
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, "pi-01", tmp_path / "pi-01")
    hub = gw.running.hub

    async def accepted() -> None:
        await wait_for(lambda: hub.statistics()["half_open"] == 1)

    ctx = client_ssl_context(tmp_path / "pi-01")
    with trio.fail_after(GUARD):
        await handshake_in_pieces(gw.ports["hub"], ctx, accepted)
        await wait_for(lambda: hub.statistics()["half_open"] == 0)
    assert hub.counters["handshake_timeouts"] == hub.counters["tls_rejected"] == 0


async def test_tls_on_the_plaintext_api_is_closed_unanswered(gateway: Gateway) -> None:
    """A TLS client on the plaintext API port could not read an HTTP answer:
    it is closed at once, not answered 400 and lingered over."""
    with trio.fail_after(GUARD):
        async with flood(gateway.ports["api"], 1, client_hello()) as (s,):
            assert await closed_by_peer(s) == b""
    assert gateway.running.api.http_statistics()["tls_on_plain"] == 1


async def test_api_and_join_serve_under_an_idle_flood(gateway: Gateway, tmp_path: Path) -> None:
    """More idle sockets than the HTTP servers' cap (512): the oldest make room."""
    async with flood(gateway.ports["api"], 530), flood(gateway.ports["join"], 530):
        code, _ = await wait_for(lambda: gateway.api("GET", "/api/v1/nodes"), timeout=GUARD)
        assert code == 200
        # Joining is an HTTPS request to the join endpoint.
        await join_node(gateway, "pi-02", tmp_path / "pi-02")
    api_http = gateway.running.api.http_statistics()
    assert api_http["connections_shed"] >= 18
    assert gateway.running.join_http.statistics()["connections_shed"] >= 18
