"""Logs and exec through a replica that does not hold the board's connection:
two real gateways in this process on one shared store (so one fleet CA, one
admin token, one set of pods), the board connected to A, the requests made to
B, whose API opens the stream on A through A's peer port (mutual TLS with
replica certificates of the fleet CA).

Which replica holds a node (etcd's registry in production) is a plain table
here (``Owners``). The board's pod side is ``HostStreams`` (real files and
processes on this host, standing in for edged, as in tests/test_pod_streams.py);
test_peer_containerd.py runs the same path to a real container.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway._api import ApiServer
from cloudgateway._config import GatewayConfig
from cloudgateway._fleet import load_pki
from cloudgateway._http import HttpConfig
from cloudgateway._join import TokenStore
from cloudgateway._peer import PeerServer, RoutedStreams, advertised_peer_address
from cloudgateway._peercert import (
    ReplicaCredentials,
    load_or_create_replica_credentials,
    peer_client_ssl,
    peer_server_ssl,
    replica_from_peercert,
)
from cloudgateway._pki import GatewayPki, PkiError, load_or_create_pki, server_ssl_context
from cloudgateway._store import Store
from edgeagent._join import join
from tests.cloudgateway.test_fleet import open_store, start_replica
from tests.conftest import Agent, Gateway, start_agent, wait_for, write_node_credentials
from tests.test_pod_streams import HostStreams, kubectl_exec, pod

NS = "/api/v1/namespaces/default"


@dataclass
class Owners:
    """Which replica's peer port holds a node (etcd's registry in production);
    ``failure`` set: the lookup fails with it."""

    table: dict[str, str] = dataclasses.field(default_factory=dict)
    failure: Exception | None = None
    mode: str = "sync"  # or "async" (a coroutine, as an etcd lookup), or "hang"

    def __call__(self, node: str) -> Any:
        if self.failure is not None:
            raise self.failure
        if self.mode == "sync":
            return self.table.get(node)
        return self._lookup(node)

    async def _lookup(self, node: str) -> str | None:
        if self.mode == "hang":
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return self.table.get(node)


@dataclass
class Replicas:
    a: Gateway
    b: Gateway  # B, its API the routed one
    pki: GatewayPki
    peer_a: PeerServer
    peer_a_address: str
    routed: RoutedStreams
    owners: Owners
    host: HostStreams
    agent: Agent
    tmp: Path


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The store the replicas share; at the end they are stopped, then it closes."""
    backend, store = open_store(tmp_path / "fleet.db")
    got = Fleet(store)
    yield got
    for gw in got.gateways:
        await gw.stop()
    backend.close()


@dataclass
class Fleet:
    store: Store
    gateways: list[Gateway] = dataclasses.field(default_factory=list)

    async def start(self, nursery: trio.Nursery, data_dir: Path) -> Gateway:
        gw = await start_replica(nursery, data_dir, self.store)
        self.gateways.append(gw)
        return gw


async def routed_api(
    nursery: trio.Nursery,
    gw: Gateway,
    routed: RoutedStreams,
    ssl_context: ssl.SSLContext | None = None,
) -> Gateway:
    """``gw`` with its API served by an ``ApiServer`` over the same store whose
    streams are routed, as ``_app`` builds it on a replica."""
    api = ApiServer(
        gw.store,
        admin_token=gw.token,
        node_names=gw.running.hub.connected_nodes,
        streams=routed,
    )
    port = await nursery.start(
        functools.partial(api.run, HttpConfig(host="127.0.0.1", port=0), ssl_context=ssl_context)
    )
    running = dataclasses.replace(gw.running, api=api, ports={**gw.ports, "api": port})
    return dataclasses.replace(gw, running=running)


async def board_on(
    nursery: trio.Nursery, fleet: Fleet, gw: Gateway, data_dir: Path, node: str, **agent: Any
) -> Agent:
    """A board joined to the fleet through ``gw`` and connected to its hub."""
    token = await TokenStore(fleet.store).create(node, ttl=600)
    pin = gw.running.join._pki.ca_pin.removeprefix("sha256:")
    await trio.to_thread.run_sync(join, gw.join_url, f"{token}.{pin}", data_dir)
    got = await start_agent(nursery, data_dir, **agent)
    await wait_for(lambda: got.status()["connected"], timeout=10)
    return got


async def two_replicas(
    nursery: trio.Nursery,
    fleet: Fleet,
    tmp_path: Path,
    *,
    peer_config: HttpConfig | None = None,
    connect_timeout: float = 5.0,
    lookup_timeout: float = 5.0,
) -> Replicas:
    a = await fleet.start(nursery, tmp_path / "a")
    b = await fleet.start(nursery, tmp_path / "b")
    pki_a = await load_pki(fleet.store, a.data_dir, shared=True)
    pki_b = await load_pki(fleet.store, b.data_dir, shared=True)
    assert pki_a.ca_pin == pki_b.ca_pin  # one fleet CA
    creds_a = load_or_create_replica_credentials(pki_a, a.data_dir, "gw-a", ["127.0.0.1"])
    creds_b = load_or_create_replica_credentials(pki_b, b.data_dir, "gw-b", ["127.0.0.1"])
    peer_a = PeerServer(
        a.running.hub,
        peer_server_ssl(pki_a, creds_a),
        peer_config or HttpConfig(host="127.0.0.1", port=0),
    )
    port = await nursery.start(peer_a.run)
    owners = Owners()
    routed = RoutedStreams(
        b.running.hub,
        owners,
        peer_client_ssl(pki_b, creds_b),
        "gw-b",
        connect_timeout=connect_timeout,
        lookup_timeout=lookup_timeout,
    )
    b = await routed_api(nursery, b, routed)

    host = HostStreams(tmp_path / "logs")
    (host.root / "web").mkdir(parents=True)
    agent = await board_on(nursery, fleet, a, tmp_path / "pi-01", "pi-01", pod_streams=host)
    owners.table["pi-01"] = f"127.0.0.1:{port}"
    reps = Replicas(a, b, pki_a, peer_a, f"127.0.0.1:{port}", routed, owners, host, agent, tmp_path)
    assert (await b.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201
    await wait_for(lambda: agent.status()["objects"].get("Pod") == 1, timeout=15)
    return reps


async def test_logs_and_exec_reach_a_board_held_by_another_replica(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(nursery, fleet, tmp_path)
    log_file = r.host.root / "web" / "app.log"
    log_file.write_bytes(b"".join(b"line %d\n" % i for i in range(5)))
    assert "pi-01" not in r.b.running.hub.connected_nodes()

    rc, out, err = await r.b.edgectl("logs", "web", "--tail", "2")
    assert (rc, out, err) == (0, "line 3\nline 4\n", "")
    rc, out, err = await r.b.edgectl(
        "exec", "web", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"
    )
    assert (rc, out, err) == (3, "hi\n", "oops\n")
    rc, out, err = await r.b.edgectl("exec", "web", "--", "true")
    assert (rc, out, err) == (0, "", "")

    # kubectl's WebSocket exec through B
    got, status = await kubectl_exec(r.b, "web", ["sh", "-c", "echo ws; echo bad >&2; exit 4"])
    assert got == {1: b"ws\n", 2: b"bad\n"}
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]

    # The node's own refusal crosses both replicas with its code and words.
    assert (await r.b.api("POST", f"{NS}/pods", pod("two", "pi-01", ("a", "b"))))[0] == 201
    await wait_for(lambda: r.agent.status()["objects"].get("Pod") == 2, timeout=15)
    rc, _, err = await r.b.edgectl("logs", "two", "-c", "a")
    assert rc == 1 and "(NotFound)" in err and "has not started" in err

    # A pod on a node no replica holds: the same answer as a single gateway's.
    code, _ = await r.b.api("POST", f"{NS}/pods", pod("far", "pi-02"))
    assert code == 201
    code, body = await r.b.api("GET", f"{NS}/pods/far/log")
    assert code == 503 and body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
    assert "pi-02 is not connected to any gateway replica" in body["message"]

    assert r.peer_a.statistics()["streams_relayed"] == 5
    assert r.routed.statistics()["forwarded"] == 5
    assert r.a.running.hub.statistics()["streams_opened"] == 5


async def test_big_and_followed_logs_through_the_relay(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(nursery, fleet, tmp_path)
    log_file = r.host.root / "web" / "app.log"
    big = b"".join(b"%08d %s\n" % (i, b"x" * 90) for i in range(20_000))  # ~2 MB
    log_file.write_bytes(big)
    rc, out, _ = await r.b.edgectl("logs", "web")
    assert rc == 0 and out.encode() == big

    def follow_some() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", r.b.ports["api"], timeout=10)
        conn.request(
            "GET",
            f"{NS}/pods/web/log?follow=true&tailLines=1",
            headers={"Authorization": f"Bearer {r.b.token}"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        got = b""
        while b"appended" not in got:
            with log_file.open("ab") as f:
                f.write(b"appended\n")
            got += resp.read1(65536)
        conn.close()
        return got

    got = await trio.to_thread.run_sync(follow_some)
    assert got.startswith(b"00019999 ") and b"appended\n" in got
    # Closing B's client closes the relay, which ends the node's reader.
    await wait_for(lambda: r.host.open_readers == 0, timeout=5)
    await wait_for(lambda: r.peer_a.statistics()["connections_open"] == 0, timeout=5)
    assert r.a.running.hub.statistics().get("stream_frames_bad", 0) == 0


async def test_a_slow_reader_is_flow_controlled_across_replicas(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(nursery, fleet, tmp_path)
    size = 48 * 1024 * 1024  # far beyond every buffer on the way
    (r.host.root / "web" / "app.log").write_bytes(b"y" * size)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.connect(("127.0.0.1", r.b.ports["api"]))
        sock.sendall(
            f"GET {NS}/pods/web/log HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {r.b.token}\r\n\r\n".encode()
        )
        first = await trio.to_thread.run_sync(sock.recv, 100)
        assert first.startswith(b"HTTP/1.1 200")

        # Nobody reads on: what A relays stops growing (for 25 looks in a
        # row), far short of the log: the node waits for acks meanwhile.
        def relayed() -> int:
            return r.peer_a.statistics().get("bytes_relayed", 0)

        seen: list[int] = []

        def stalled() -> bool:
            seen.append(relayed())
            return len(seen) > 25 and seen[-1] == seen[-26] > 0

        await wait_for(stalled, timeout=30, interval=0.04)
        assert seen[-1] < size // 2, seen[-1]
        assert r.peer_a.statistics()["connections_open"] == 1
    finally:
        sock.close()
    # The client gone: B's relay closes, and A's (which ends the node's stream).
    await wait_for(lambda: r.peer_a.statistics()["connections_open"] == 0, timeout=10)
    assert r.peer_a.statistics()["bytes_relayed"] < size


async def test_kubectl_logs_and_exec_through_another_replica(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    from cloudgateway._cli import kubeconfig
    from tests.cloudgateway.test_kubectl import KUBECTL

    r = await two_replicas(nursery, fleet, tmp_path)
    (r.host.root / "web" / "app.log").write_bytes(b"alpha\nbeta\n")
    tls_b = await routed_api(
        nursery,
        r.b,
        r.routed,
        server_ssl_context(
            await load_pki(fleet.store, r.b.data_dir, shared=True), require_client_cert=False
        ),
    )
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(kubeconfig(tls_b.data_dir, f"https://127.0.0.1:{tls_b.ports['api']}"))
    )

    def kubectl(*argv: str) -> tuple[int, str, str]:
        p = subprocess.run(
            [KUBECTL, "--kubeconfig", str(config), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout, p.stderr

    rc, out, err = await trio.to_thread.run_sync(kubectl, "logs", "web")
    assert (rc, out) == (0, "alpha\nbeta\n"), err
    rc, out, err = await trio.to_thread.run_sync(
        kubectl, "exec", "web", "--", "sh", "-c", "echo from-a; exit 5"
    )
    assert rc == 5 and out == "from-a\n", err


# ---- refusals at the peer port ------------------------------------------------------


def client_context(pki: GatewayPki, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.ca_cert_pem.decode())
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def talk(address: str, ctx: ssl.SSLContext, data: bytes) -> bytes:
    """Connect, send ``data``, and read until the server closes (b"" if it
    closes at once); a TLS failure raises trio.BrokenResourceError."""
    host, port = address.rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    tls = trio.SSLStream(tcp, ctx)
    got = b""
    try:
        with trio.fail_after(10):
            await tls.do_handshake()
            if data:
                await tls.send_all(data)
            while chunk := await tls.receive_some(65536):
                got += chunk
    finally:
        await trio.aclose_forcefully(tls)
    return got


async def unheard(address: str, ctx: ssl.SSLContext, data: bytes) -> bool:
    """The server ends the connection (with a TLS alert or not) without a byte
    of answer. (In TLS 1.3 the client's side of the handshake completes before
    the server has checked the client's certificate.)"""
    try:
        return await talk(address, ctx, data) == b""
    except trio.BrokenResourceError:
        return True


def end_frame(got: bytes) -> dict[str, Any]:
    kind, length = struct.unpack(">cI", got[:5])
    assert kind == b"E" and len(got) == 5 + length
    error = json.loads(got[5:])["error"]
    assert isinstance(error, dict)
    return error


def request(doc: Any) -> bytes:
    payload = json.dumps(doc).encode()
    return struct.pack(">cI", b"Q", len(payload)) + payload


async def test_the_peer_port_admits_replicas_only(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(nursery, fleet, tmp_path)
    good = {
        "v": 1,
        "node": "pi-01",
        "key": "pods/default/web",
        "op": "logs",
        "params": {"container": "app"},
    }

    # A board's certificate (same CA, O=edgeflock:nodes): closed unheard.
    write_node_credentials(r.pki, "pi-01", tmp_path / "board-creds")
    board_ctx = client_context(
        r.pki, tmp_path / "board-creds/node.crt", tmp_path / "board-creds/node.key"
    )
    got = await talk(r.peer_a_address, board_ctx, b"")
    assert got == b""
    assert r.peer_a.statistics()["refused_not_replica"] == 1

    # A replica certificate of another fleet's CA: the handshake fails.
    other = load_or_create_pki(tmp_path / "other")
    creds = load_or_create_replica_credentials(other, tmp_path / "other", "gw-x", [])
    other_ctx = client_context(r.pki, creds.cert_path, creds.key_path)
    assert await unheard(r.peer_a_address, other_ctx, request(good))
    await wait_for(lambda: r.peer_a.statistics().get("tls_failed") == 1)
    # No certificate at all: likewise.
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=r.pki.ca_cert_pem.decode())
    assert await unheard(r.peer_a_address, bare, request(good))
    await wait_for(lambda: r.peer_a.statistics().get("tls_failed") == 2)
    assert r.peer_a.statistics().get("streams_relayed", 0) == 0

    # A replica of this fleet is served.
    mine = load_or_create_replica_credentials(r.pki, tmp_path / "c", "gw-c", [])
    ctx = client_context(r.pki, mine.cert_path, mine.key_path)
    (r.host.root / "web" / "app.log").write_bytes(b"hello\n")
    got = await talk(r.peer_a_address, ctx, request(good))
    # opened; the node's "accepted" (no data); the log; the end (no error)
    assert got == b"".join(
        [
            b"O\x00\x00\x00\x00",
            b"D\x00\x00\x00\x01\x01",
            b"D\x00\x00\x00\x07\x01hello\n",
            b"E\x00\x00\x00\x02{}",
        ]
    )


async def test_bad_open_requests_get_a_clear_error_and_the_door(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(
        nursery, fleet, tmp_path, peer_config=HttpConfig(port=0, head_timeout=0.5)
    )
    mine = load_or_create_replica_credentials(r.pki, tmp_path / "c", "gw-c", [])
    ctx = client_context(r.pki, mine.cert_path, mine.key_path)
    good = {
        "v": 1,
        "node": "pi-01",
        "key": "pods/default/web",
        "op": "logs",
        "params": {"container": "app"},
    }

    async def refusal(data: bytes) -> dict[str, Any]:
        return end_frame(await talk(r.peer_a_address, ctx, data))

    err = await refusal(struct.pack(">cI", b"Q", 3) + b"{x]")
    assert err["code"] == 400 and "not JSON" in err["message"]
    err = await refusal(struct.pack(">cI", b"Q", 10_000_000))  # no body follows: none is read
    assert err["code"] == 413 and "10000000 bytes" in err["message"]
    err = await refusal(struct.pack(">cI", b"D", 1) + b"\x01")
    assert err["code"] == 400 and "unexpected frame type" in err["message"]
    for bad, words in [
        ({**good, "op": "shell"}, "op must be one of"),
        ({**good, "v": 2}, "version 2"),
        ({**good, "node": ""}, "node must be"),
        ({**good, "params": []}, "params must be"),
        ({**good, "extra": 1}, "unknown fields ['extra']"),
        ([1, 2], "must be a JSON object"),
    ]:
        err = await refusal(request(bad))
        assert err["code"] == 400 and words in err["message"], (bad, err)
    # The local hub's answer for a node it does not hold, as the API gives it.
    err = await refusal(request({**good, "node": "pi-09"}))
    assert err["code"] == 503 and "pi-09 is not connected to this gateway" in err["message"]
    # A request that never comes: closed after head_timeout.
    start = trio.current_time()
    assert await talk(r.peer_a_address, ctx, b"Q\x00") == b""
    assert trio.current_time() - start < 5
    stats = r.peer_a.statistics()
    assert stats["bad_requests"] == 9 and stats["request_timeouts"] == 1
    assert stats["streams_refused"] == 1 and stats.get("streams_relayed", 0) == 0


# ---- an owner that cannot be reached ---------------------------------------------


async def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.monotonic()
    got = await call()
    return time.monotonic() - start, got


async def test_an_unreachable_owner_is_a_quick_503(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path
) -> None:
    r = await two_replicas(nursery, fleet, tmp_path, connect_timeout=0.5, lookup_timeout=0.5)

    # Nothing listens there (a port just freed).
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    r.owners.table["pi-01"] = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()
    took, (code, body) = await timed(lambda: r.b.api("GET", f"{NS}/pods/web/log"))
    assert code == 503 and body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
    assert "holding node pi-01" in body["message"] and "unreachable" in body["message"]
    assert took < 3

    # Something listens but never answers TLS (a hung replica): the connect timeout.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        r.owners.table["pi-01"] = f"127.0.0.1:{hung.getsockname()[1]}"
        took, (code, body) = await timed(
            lambda: r.b.api("POST", f"{NS}/pods/web/exec", {"command": ["true"]})
        )
        assert code == 503 and "did not answer within 0.5 s" in body["message"], body
        assert took < 3
    finally:
        hung.close()

    # A TLS server of this CA that is not a replica (A's hub port).
    r.owners.table["pi-01"] = f"127.0.0.1:{r.a.ports['hub']}"
    code, body = await r.b.api("GET", f"{NS}/pods/web/log")
    assert code == 502 and "is not a gateway replica" in body["message"], body

    # A record pointing back at B itself: nobody holds the node.
    pki_b = await load_pki(fleet.store, r.b.data_dir, shared=True)
    creds_b = ReplicaCredentials("gw-b", r.b.data_dir / "replica.crt", r.b.data_dir / "replica.key")
    peer_b = PeerServer(r.b.running.hub, peer_server_ssl(pki_b, creds_b), HttpConfig(port=0))
    port_b = await nursery.start(peer_b.run)
    r.owners.table["pi-01"] = f"127.0.0.1:{port_b}"
    code, body = await r.b.api("GET", f"{NS}/pods/web/log")
    assert code == 503 and "pi-01 is not connected to any gateway replica" in body["message"]

    # The owner lookup itself failing (the store down, say).
    r.owners.failure = OSError("etcd: no leader")
    code, body = await r.b.api("GET", f"{NS}/pods/web/log")
    assert (
        code == 503
        and "could not find the replica holding node pi-01: etcd: no leader" in body["message"]
    )

    # Back to A: served again.
    r.owners.failure = None
    # A lookup that does not answer (etcd unreachable, say): its own timeout.
    r.owners.mode = "hang"
    took, (code, body) = await timed(lambda: r.b.api("GET", f"{NS}/pods/web/log"))
    assert code == 503 and "holding node pi-01: no answer within 0.5 s" in body["message"]
    assert took < 3
    r.owners.table["pi-01"] = r.peer_a_address
    (r.host.root / "web" / "app.log").write_bytes(b"back\n")
    # An async lookup, as the registry's, finds A again.
    r.owners.mode = "async"
    rc, out, _ = await r.b.edgectl("logs", "web")
    assert (rc, out) == (0, "back\n")


def test_replica_certificates(tmp_path: Path) -> None:
    pki = load_or_create_pki(tmp_path / "gw")
    creds = load_or_create_replica_credentials(
        pki, tmp_path / "gw", "gw-a", ["10.0.0.5", "gw.example"]
    )
    again = load_or_create_replica_credentials(pki, tmp_path / "gw", "gw-a", ["10.0.0.5"])
    assert creds == again and (tmp_path / "gw/replica.key").stat().st_mode & 0o777 == 0o600
    first = creds.cert_path.read_bytes()
    load_or_create_replica_credentials(pki, tmp_path / "gw", "gw-a", ["10.0.0.6"])
    assert creds.cert_path.read_bytes() != first  # a new name: reissued
    with pytest.raises(PkiError, match="replica id"):
        load_or_create_replica_credentials(pki, tmp_path / "gw", "GW A", [])
    subject = ((("organizationName", "edgeflock:nodes"),), (("commonName", "gw-a"),))
    with pytest.raises(PkiError, match="not a replica certificate"):
        replica_from_peercert({"subject": subject})
    with pytest.raises(PkiError, match="no certificate"):
        replica_from_peercert(None)


def test_the_advertised_peer_address(tmp_path: Path) -> None:
    def config(**kw: Any) -> GatewayConfig:
        return GatewayConfig(data_dir=tmp_path, **kw)

    assert advertised_peer_address(config(peer_advertise="gw-a.lan:7000"), 10003) == "gw-a.lan:7000"
    assert advertised_peer_address(config(peer_advertise="gw-a.lan"), 10003) == "gw-a.lan:10003"
    assert advertised_peer_address(config(advertise="10.0.0.5"), 4) == "10.0.0.5:4"
    assert advertised_peer_address(config(advertise="fd00::5"), 4) == "[fd00::5]:4"
    loopback = HttpConfig(host="127.0.0.1", port=0)
    assert advertised_peer_address(config(peer=loopback), 4) == "127.0.0.1:4"
    assert advertised_peer_address(config(), 4) == f"{socket.gethostname()}:4"
