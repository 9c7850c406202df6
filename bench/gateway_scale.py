"""How many idle nodes one gateway process holds, memory per node, and how long
N nodes connecting (and reconnecting after a gateway kill -9) at once take to
converge.

    .venv/bin/python bench/gateway_scale.py [--nodes 5000]

Nodes are simulated in this process (one trio task each, real TLS with its own
node certificate signed by the gateway CA, real WebSocket, the real protocol:
hello, resync, ack, ping every 10 s, reconnect with full-jitter backoff and the
gateway's retry hints).
"""

from __future__ import annotations

import argparse
import random
import resource
import signal
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio_websocket as tws
from _harness import Gateway, cpu_seconds, machine, rss_kib

import edgeproto
from edgeproto import Kind, Message


def make_certs(gw_dir: Path, out: Path, n: int, pki: Any = None) -> None:
    """``n`` node certificates signed by the gateway's CA (``pki``, else the
    data dir's), sharing one key, and the CA certificate, in ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    from cloudgateway._pki import load_or_create_pki, sign_node_csr

    if pki is None:
        pki = load_or_create_pki(gw_dir)
    key = ed25519.Ed25519PrivateKey.generate()  # as edgeagent join makes
    (out / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    for i in range(n):
        (out / f"n{i:05d}.crt").write_bytes(sign_node_csr(pki, csr, f"sim-{i:05d}"))
    (out / "ca.crt").write_bytes(pki.ca_cert_pem)


class Sim:
    """``n`` simulated nodes. Node i starts on ``urls[i % len(urls)]``; when a
    connection fails it moves to a random other URL (when there is one), after
    full-jitter backoff capped at ``backoff_cap``. ``at``: the URL each node is
    on; ``synced_at`` and ``resync_seconds``: its first sync since ``reset``."""

    def __init__(
        self, n: int, urls: str | list[str], certs: Path, *, backoff_cap: float = 60.0
    ) -> None:
        self.n = n
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.certs = certs
        self.backoff_cap = backoff_cap
        self.at: dict[int, str] = {}
        self.synced_at: dict[int, float] = {}
        self.resync_seconds: dict[int, float] = {}
        self.last_rev: dict[int, int] = {}
        self.retries = 0
        self.failures = 0
        self.resync_modes: dict[str, int] = {}

    def reset(self) -> None:
        self.synced_at.clear()
        self.resync_seconds.clear()
        self.resync_modes.clear()
        self.retries = self.failures = 0

    def ctx(self, i: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # as the agent's
        ctx.load_verify_locations(str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / f"n{i:05d}.crt"), str(self.certs / "node.key"))
        return ctx

    async def node(self, i: int) -> None:
        ctx = self.ctx(i)
        url = self.urls[i % len(self.urls)]
        attempt = 0
        while True:
            self.at[i] = url
            try:
                async with tws.open_websocket_url(
                    url, ssl_context=ctx, message_queue_size=1, connect_timeout=15
                ) as ws:
                    t0 = trio.current_time()
                    hello = {"node": f"sim-{i:05d}", "last_rev": self.last_rev.get(i, 0)}
                    await ws.send_message(edgeproto.encode_message(Message(Kind.HELLO, body=hello)))
                    while True:
                        with trio.move_on_after(10):
                            msg = edgeproto.decode_message(await ws.get_message())
                            if msg.kind is Kind.ERROR and msg.body.get("code") == "retry":
                                self.retries += 1
                                raise _Retry(float(msg.body.get("retry_after", 1)))
                            if msg.kind in (Kind.SNAPSHOT, Kind.CHANGE) and not msg.body.get(
                                "more"
                            ):
                                assert msg.rev is not None
                                self.last_rev[i] = msg.rev
                                await ws.send_message(
                                    edgeproto.encode_message(Message(Kind.ACK, rev=msg.rev))
                                )
                                if i not in self.synced_at:
                                    mode = "snapshot" if msg.kind is Kind.SNAPSHOT else "delta"
                                    self.resync_modes[mode] = self.resync_modes.get(mode, 0) + 1
                                    self.resync_seconds[i] = trio.current_time() - t0
                                    self.synced_at[i] = trio.current_time()
                                    attempt = 0
                            continue
                        await ws.send_message(edgeproto.encode_message(Message(Kind.PING, id=1)))
            except _Retry as r:
                await trio.sleep(r.after * random.uniform(1, 1.5))
            except (
                OSError,
                tws.HandshakeError,
                tws.ConnectionClosed,
                trio.BrokenResourceError,
                ssl.SSLError,
            ):
                self.failures += 1
                url = random.choice([u for u in self.urls if u != url] or self.urls)
                await trio.sleep(random.random() * min(self.backoff_cap, 1.0 * 2**attempt))
                attempt += 1

    async def wait(self, ids: set[int], timeout: float) -> float:
        """Seconds until every node of ``ids`` synced (or ``timeout``)."""
        t0 = trio.current_time()
        with trio.move_on_after(timeout):
            while not ids <= self.synced_at.keys():
                await trio.sleep(0.05)
        return trio.current_time() - t0

    async def wait_all(self, timeout: float) -> float:
        t0 = trio.current_time()
        with trio.move_on_after(timeout):
            while len(self.synced_at) < self.n:
                await trio.sleep(0.05)
        return trio.current_time() - t0


async def wait_ready(gw: Gateway, n: int, timeout: float) -> float:
    """Seconds until the API lists ``n`` Nodes with Ready=True."""

    def count() -> int:
        nodes = gw.api("GET", "/api/v1/nodes")["items"]
        return sum(
            any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            for conds in ((o.get("status") or {}).get("conditions") or [] for o in nodes)
        )

    t0 = trio.current_time()
    with trio.move_on_after(timeout):
        while await trio.to_thread.run_sync(count) < n:
            await trio.sleep(1)
    return trio.current_time() - t0


class _Retry(Exception):
    def __init__(self, after: float) -> None:
        self.after = after


async def run(args: argparse.Namespace, root: Path) -> None:
    gw = Gateway(root / "gw")
    certs = root / "certs"
    certs.mkdir()
    t = time.monotonic()
    await trio.to_thread.run_sync(make_certs, gw.data_dir, certs, args.nodes)
    print(f"signed {args.nodes} node certificates in {time.monotonic() - t:.1f} s")
    await trio.to_thread.run_sync(gw.start)
    assert gw.proc is not None
    await trio.sleep(2)
    base = rss_kib(gw.proc.pid)
    sim = Sim(args.nodes, f"wss://127.0.0.1:{gw.ports['hub']}/", certs)
    cpu0 = cpu_seconds(gw.proc.pid)

    async with trio.open_nursery() as nursery:
        for i in range(args.nodes):
            nursery.start_soon(sim.node, i)
        took = await sim.wait_all(600)
        print(
            f"connect storm: {len(sim.synced_at)}/{args.nodes} nodes synced in {took:.1f} s "
            f"(gateway said retry {sim.retries} times, {sim.failures} failed attempts; "
            f"gateway CPU {cpu_seconds(gw.proc.pid) - cpu0:.1f} s)"
        )
        ready = await wait_ready(gw, args.nodes, 600)
        print(f"all {args.nodes} Nodes Ready in the API {ready:.1f} s after the last node synced")
        await trio.sleep(args.idle)
        rss = rss_kib(gw.proc.pid)
        print(
            f"gateway RSS: {base / 1024:.1f} MiB empty, {rss / 1024:.1f} MiB with {len(sim.synced_at)} idle nodes "
            f"= {(rss - base) / max(1, len(sim.synced_at)):.1f} KiB per node"
        )
        # Reconnect storm: kill -9 the gateway and bring it back.
        gw.stop(signal.SIGKILL)
        sim.reset()
        t0 = trio.current_time()
        await trio.to_thread.run_sync(gw.start)
        cpu0 = cpu_seconds(gw.proc.pid)
        started = trio.current_time() - t0
        took = await sim.wait_all(600)
        print(
            f"reconnect storm after kill -9: gateway up in {started:.1f} s, {len(sim.synced_at)}/{args.nodes} "
            f"nodes resynced {took:.1f} s later, modes {sim.resync_modes} "
            f"(retry answers {sim.retries}, failed attempts {sim.failures}; "
            f"gateway CPU {cpu_seconds(gw.proc.pid) - cpu0:.1f} s)"
        )
        nursery.cancel_scope.cancel()
    gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--idle", type=float, default=15.0)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, args, Path(tmp))


if __name__ == "__main__":
    main()
