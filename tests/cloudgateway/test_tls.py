"""The hub's socket-level TLS stream, against trio's own SSLStream as the client
(what agents use), over real loopback TCP with real certificates."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from cloudgateway._pki import (
    GatewayPki,
    load_or_create_pki,
    node_from_peercert,
    server_ssl_context,
)
from cloudgateway._tls import SocketTLSStream, accept_tls
from tests.conftest import write_node_credentials


@pytest.fixture
def pki(tmp_path: Path) -> GatewayPki:
    return load_or_create_pki(tmp_path / "gw")


def client_context(pki: GatewayPki, tmp_path: Path, node: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki.ca_cert_pem.decode())
    if node is not None:
        write_node_credentials(pki, node, tmp_path / node)
        ctx.load_cert_chain(tmp_path / node / "node.crt", tmp_path / node / "node.key")
    return ctx


@pytest.fixture
async def server(pki: GatewayPki) -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[object]]]:
    """Accepts connections; each handshaken stream (or the handshake's error)
    is handed to the test through a channel."""
    ctx = server_ssl_context(pki, require_client_cert=True)
    send, receive = trio.open_memory_channel[object](10)

    async def handle(tcp: trio.SocketStream) -> None:
        stream = accept_tls(tcp, ctx)
        try:
            with trio.fail_after(5):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            await stream.aclose()
            await send.send(exc)
            return
        await send.send(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1], receive
        nursery.cancel_scope.cancel()


async def connect(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    await client.do_handshake()
    return client


async def next_stream(channel: trio.MemoryReceiveChannel[object]) -> SocketTLSStream:
    with trio.fail_after(5):
        got = await channel.receive()
    assert isinstance(got, SocketTLSStream), got
    return got


async def test_handshake_names_the_node_and_data_flows_both_ways_at_once(
    pki: GatewayPki, tmp_path: Path, server: tuple[int, trio.MemoryReceiveChannel[object]]
) -> None:
    port, accepted = server
    client = await connect(port, client_context(pki, tmp_path, "node-a"))
    stream = await next_stream(accepted)
    assert node_from_peercert(stream.getpeercert()) == "node-a"
    # 4 MiB each way, concurrently: more than the socket buffers hold, so both
    # sides meet want-read and want-write in the middle of records.
    up, down = os.urandom(4 << 20), os.urandom(4 << 20)

    async def drain(s: trio.abc.ReceiveStream, n: int, out: bytearray) -> None:
        while len(out) < n:
            chunk = await s.receive_some(7919)
            assert chunk, "unexpected EOF"
            out += chunk

    got_up, got_down = bytearray(), bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(client.send_all, up)
            n.start_soon(stream.send_all, down)
            n.start_soon(drain, stream, len(up), got_up)
            n.start_soon(drain, client, len(down), got_down)
    assert bytes(got_up) == up and bytes(got_down) == down
    await stream.aclose()
    # close_notify was sent: the client sees a clean end of stream
    with trio.fail_after(5):
        assert await client.receive_some() == b""
    await client.aclose()


async def test_peer_closing_gives_eof_and_aclose_wakes_a_blocked_receiver(
    pki: GatewayPki, tmp_path: Path, server: tuple[int, trio.MemoryReceiveChannel[object]]
) -> None:
    port, accepted = server
    ctx = client_context(pki, tmp_path, "node-a")
    client = await connect(port, ctx)
    stream = await next_stream(accepted)
    await client.aclose()
    with trio.fail_after(5):
        assert await stream.receive_some() == b""
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")

    client = await connect(port, ctx)
    stream = await next_stream(accepted)
    errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
    assert len(errors) == 1
    await client.aclose()


async def test_two_receivers_at_once_is_an_error_and_cancel_leaves_it_usable(
    pki: GatewayPki, tmp_path: Path, server: tuple[int, trio.MemoryReceiveChannel[object]]
) -> None:
    port, accepted = server
    client = await connect(port, client_context(pki, tmp_path, "node-a"))
    stream = await next_stream(accepted)
    async with trio.open_nursery() as n:
        n.start_soon(stream.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.receive_some()
        n.cancel_scope.cancel()
    await client.send_all(b"still here")
    with trio.fail_after(5):
        assert await stream.receive_some() == b"still here"
    await stream.aclose()
    await client.aclose()


async def test_no_client_certificate_and_plain_bytes_fail_the_handshake(
    pki: GatewayPki, tmp_path: Path, server: tuple[int, trio.MemoryReceiveChannel[object]]
) -> None:
    port, accepted = server
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(tcp, client_context(pki, tmp_path, None), server_hostname="localhost")
    with pytest.raises(trio.BrokenResourceError):
        await client.do_handshake()
        await client.receive_some()  # TLS 1.3: the server's refusal comes after
    with trio.fail_after(5):
        assert isinstance(await accepted.receive(), trio.BrokenResourceError)
    await trio.aclose_forcefully(client)

    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    await tcp.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        err = await accepted.receive()
    assert isinstance(err, trio.BrokenResourceError)
    assert "handshake" in str(err)
    await tcp.aclose()
