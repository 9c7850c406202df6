"""Time for a real board to connect (TLS with its certificate, hello, snapshot)
and for an admin API request to be answered, while K unauthenticated
connections flood the hub and the API: idle ones (never send a byte), slow
ones (the first 5 bytes of a TLS record, then nothing) or stalled ones (a whole
ClientHello, the same bytes replayed on every socket, then nothing).

    .venv/bin/python bench/hub_flood.py [--floods 0,300,1000,3000]

The gateway runs in its own process with its default configuration; the flood
and the clients run in this one, on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from _harness import Gateway, machine

import edgeproto
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message

SLOW = b"\x16\x03\x01\x02\x00"  # a TLS handshake record header, its body never sent


def client_hello() -> bytes:
    """A real TLS client's first flight: its whole ClientHello."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@contextlib.asynccontextmanager
async def flood(port: int, count: int, first: bytes) -> AsyncIterator[None]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
            if first:
                await trio.lowlevel.wait_writable(s)
                with contextlib.suppress(OSError):
                    s.send(first)
        yield
    finally:
        for s in socks:
            s.close()


async def board_connect(gw: Gateway, node_dir: Path) -> tuple[float, int]:
    """Seconds until the board has its snapshot, and the attempts it took (a
    connection the hub cut is retried at once, as the agent would after its
    backoff)."""
    t0 = time.monotonic()
    attempts = 0
    with trio.fail_after(60):
        while True:
            attempts += 1
            try:
                async with open_hub_connection(
                    f"wss://127.0.0.1:{gw.ports['hub']}/",
                    client_ssl_context(node_dir),
                    connect_timeout=60,
                    max_message=edgeproto.DEFAULT_MAX_MESSAGE,
                ) as ws:
                    hello = Message(Kind.HELLO, body={"node": "bench-board", "last_rev": 0})
                    await ws.send_message(edgeproto.encode_message(hello))
                    msg = edgeproto.decode_message(await ws.get_message())
                    assert msg.kind is Kind.SNAPSHOT, msg
                return time.monotonic() - t0, attempts
            except (OSError, trio.BrokenResourceError) as exc:
                print(f"  (attempt {attempts} cut after {time.monotonic() - t0:.1f} s: {exc})")
                await trio.sleep(1.0)  # the agent's first backoff (backoff_base)


def admin_request(gw: Gateway) -> float:
    t0 = time.monotonic()
    deadline = t0 + 60
    while True:
        req = urllib.request.Request(f"http://127.0.0.1:{gw.ports['api']}/api/v1/nodes")
        req.add_header("Authorization", f"Bearer {gw.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
            return time.monotonic() - t0
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # refused: retry like a client would


async def measure(
    gw: Gateway, node_dir: Path, count: int, first: bytes
) -> tuple[float, int, float]:
    async with flood(gw.ports["hub"], count, first), flood(gw.ports["api"], count, first):
        await trio.sleep(0.5)  # let the gateway accept the flood first
        board, attempts = await board_connect(gw, node_dir)
        admin = await trio.to_thread.run_sync(admin_request, gw)
    return board, attempts, admin


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--floods", default="0,300,1000,3000")
    args = p.parse_args()
    counts = [int(c) for c in args.floods.split(",")]
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(Path(tmp) / "gw")
        gw.start()
        try:
            node_dir = Path(tmp) / "board"
            gw.join("bench-board", node_dir)
            print(
                f"{'flood':>6} {'kind':>5} {'board connect s':>16} {'tries':>5} {'admin GET s':>12}"
            )
            for count in counts:
                for kind, first in (("idle", b""), ("slow", SLOW), ("stall", client_hello())):
                    board, tries, admin = trio.run(measure, gw, node_dir, count, first)
                    print(f"{count:>6} {kind:>5} {board:>16.3f} {tries:>5} {admin:>12.3f}")
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
