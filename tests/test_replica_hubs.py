"""Boards and gateway replicas: the hub list on join and on every connect, kept
in the board's store, and failover among the hubs.

Real gateways (in this process, or a ``cloudgateway serve`` process killed with
SIGKILL), real agents (in this process, or an ``edgeagent run`` process), real
TLS on loopback; ``edgeagent status -o json`` runs as its own process. Replicas
here share only their PKI (the CA, so each trusts the boards the other
enrolled), not their store: the registry of live replicas and the shared store
come later, so the list a replica hands out is injected (``hub_urls``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway._backends import open_backend
from cloudgateway._health import NodeHealth
from cloudgateway._http import HttpConfig, HttpServer
from cloudgateway._hub import Hub, HubConfig
from cloudgateway._join import JoinService, TokenStore, create_join_token
from cloudgateway._nodes import NodeJoin
from cloudgateway._pki import load_or_create_pki, server_ssl_context
from cloudgateway._store import Store
from edgeagent._join import join
from edgeproto import Entry, Kind, Message
from tests.conftest import (
    Gateway,
    agent_rows,
    start_agent,
    start_gateway,
    wait_for,
    write_node_credentials,
)

PKI_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_of(port: int) -> str:
    return f"wss://127.0.0.1:{port}/"


def share_pki(src: Path, dst: Path) -> None:
    """``dst`` gets ``src``'s CA and server certificate (one fleet CA)."""
    load_or_create_pki(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in PKI_FILES:
        shutil.copy2(src / name, dst / name)


@dataclass
class Replica:
    """A gateway's hub and join endpoint, given the replicas' hub list."""

    data_dir: Path
    hub: Hub
    join: JoinService
    ports: dict[str, int]
    scope: trio.CancelScope

    @property
    def hub_url(self) -> str:
        return url_of(self.ports["hub"])

    @property
    def join_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['join']}"


async def start_replica(
    nursery: trio.Nursery, data_dir: Path, hub_urls: Callable[[], Sequence[str]]
) -> Replica:
    """The gateway's hub, node health and join service over a store of its
    own in ``data_dir`` (PKI there too), wired as cloudgateway._app does,
    with ``hub_urls`` given to the hub and the join service."""
    pki = load_or_create_pki(data_dir)
    backend = open_backend(data_dir)
    store = Store(backend)
    tokens = TokenStore(store)
    health = NodeHealth(store)
    hub_ssl = server_ssl_context(pki, require_client_cert=True)
    config = HubConfig(host="127.0.0.1", port=0, idle_timeout=10.0)
    hub = Hub(store, hub_ssl, health, config, hub_urls=hub_urls)
    scope = trio.CancelScope()

    async def joined(node: str, _asked: NodeJoin) -> bool:
        return True

    async def run(task_status: trio.TaskStatus[Replica]) -> None:
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(health.run, hub.connected_nodes)
                    hub_port = await inner.start(hub.run)
                    service = JoinService(
                        pki,
                        tokens,
                        hub_url=lambda _request: url_of(hub_port),
                        on_joined=joined,
                        hub_urls=hub_urls,
                    )
                    http = HttpServer(
                        service.handle,
                        HttpConfig(host="127.0.0.1", port=0, max_body=64 * 1024),
                        ssl_context=server_ssl_context(pki, require_client_cert=False),
                    )
                    join_port = await inner.start(http.run)
                    ports = {"hub": hub_port, "join": join_port}
                    task_status.started(Replica(data_dir, hub, service, ports, scope))
        finally:
            backend.close()

    replica: Replica = await nursery.start(run)
    return replica


async def join_through(replica: Replica, node: str, data_dir: Path) -> Any:
    token = await create_join_token(replica.data_dir, node, 600.0)
    return await trio.to_thread.run_sync(join, replica.join_url, token, data_dir)


async def status(data_dir: Path) -> dict[str, Any]:
    """``edgeagent status -o json``, run as its own process."""
    args = [sys.executable, "-m", "edgeagent._cli", "status", "-o", "json"]
    done = await trio.run_process([*args, "--data-dir", str(data_dir)], capture_stdout=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def status_until(
    data_dir: Path, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    last: list[dict[str, Any]] = [{}]

    async def check() -> bool:
        last[0] = await status(data_dir)
        return pred(last[0])

    await wait_for(check, timeout=timeout, interval=0.1, what=lambda: f"status {last[0]}")
    return last[0]


def stored_state(data_dir: Path, name: str) -> Any:
    rows = agent_rows(data_dir, "SELECT value FROM state WHERE name=?", (name,))
    return json.loads(str(rows[0][0])) if rows else None


async def test_the_replicas_hubs_arrive_on_join_and_on_every_connect_and_are_kept(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    live: list[str] = []
    a = await start_replica(nursery, tmp_path / "a", lambda: live)
    x, y = url_of(free_port()), url_of(free_port())  # replicas that are not up
    live[:] = [x, a.hub_url]
    data = tmp_path / "agent"
    enrolled = await join_through(a, "pi-1", data)
    assert enrolled.hub_url == a.hub_url
    assert enrolled.hubs == (x, a.hub_url)
    assert json.loads((data / "enrollment.json").read_text())["hubs"] == [x, a.hub_url]
    before = await status(data)  # joined, never run: what the enrollment says
    assert before["gateway"] == a.hub_url and before["hubs"] == [a.hub_url, x]
    assert before["connected"] is False and before["running"] is False

    agent = await start_agent(nursery, data)
    st = await status_until(data, lambda s: s["connected"])
    # the enrolled hub first (it is the one that answered the join)
    assert st["gateway"] == a.hub_url
    assert st["hubs"] == [x, a.hub_url]  # the connect's list, as the gateway sent it
    assert st["last_resync"]["mode"] == "snapshot"
    assert st["running"] is True

    live[:] = [a.hub_url, y]  # a replica went, another came
    await agent.stop()
    st = await status(data)
    assert st["running"] is False and st["connected"] is False
    assert st["hubs"] == [x, a.hub_url]  # kept in the store
    assert stored_state(data, "hubs") == [x, a.hub_url]

    agent = await start_agent(nursery, data)
    st = await status_until(data, lambda s: s["connected"] and s["hubs"] == [a.hub_url, y])
    assert st["gateway"] == a.hub_url  # the hub in use, not the list's first
    assert st["last_resync"]["mode"] == "delta"
    await agent.stop()
    assert stored_state(data, "hubs") == [a.hub_url, y]

    # Restarted with the replica gone: it tries the other hub of the stored
    # list (learnt on the last connect, not at join) and says so.
    a.scope.cancel()
    agent = await start_agent(nursery, data)
    st = await status_until(data, lambda s: s["gateway"] == y)
    assert st["hubs"] == [a.hub_url, y] and st["connected"] is False and st["running"]
    await agent.stop()


async def test_a_board_skips_a_hub_that_refuses_connections(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    closed, up = url_of(free_port()), url_of(gateway.ports["hub"])
    data = tmp_path / "agent"
    write_node_credentials(load_or_create_pki(gateway.data_dir), "pi-2", data)
    enrollment = {"node": "pi-2", "hub": closed, "hubs": [closed, up]}
    (data / "enrollment.json").write_text(json.dumps(enrollment))
    agent = await start_agent(nursery, data)
    st = await status_until(data, lambda s: s["connected"])
    assert st["gateway"] == up
    assert st["hubs"] == [closed, up]  # a single gateway sends no list: kept as enrolled
    assert st["last_resync"]["mode"] == "snapshot"
    assert "pi-2" in gateway.running.hub.connected_nodes()
    await agent.stop()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=out
        )


async def listening(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_board_fails_over_when_its_gateway_process_is_killed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet-pki"
    share_pki(fleet, tmp_path / "gw-a")
    share_pki(fleet, tmp_path / "gw-b")
    b = await start_gateway(nursery, tmp_path / "gw-b")
    port_a = free_port()
    a_url, b_url = url_of(port_a), url_of(b.ports["hub"])
    gw_a = spawn(
        ["cloudgateway._cli", "serve", "--data-dir", str(tmp_path / "gw-a"),
         "--hub", f"127.0.0.1:{port_a}", "--join", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        tmp_path / "gw-a.log",
    )  # fmt: skip
    agent_proc: subprocess.Popen[bytes] | None = None
    data = tmp_path / "agent"
    try:
        write_node_credentials(load_or_create_pki(fleet), "pi-3", data)
        enrollment = {"node": "pi-3", "hub": a_url, "hubs": [a_url, b_url]}
        (data / "enrollment.json").write_text(json.dumps(enrollment))
        (data / "agent.toml").write_text("heartbeat = 1.0\nbackoff_base = 0.2\nbackoff_cap = 1.0\n")
        await wait_for(lambda: listening(port_a), timeout=30, interval=0.1)
        agent_proc = spawn(["edgeagent._cli", "run", "--data-dir", str(data)], data / "agent.log")
        first = await status_until(data, lambda s: s["connected"], timeout=30)
        assert first["gateway"] == a_url and first["hubs"] == [a_url, b_url]
        assert "pi-3" not in b.running.hub.connected_nodes()

        os.kill(gw_a.pid, signal.SIGKILL)
        gw_a.wait()
        st = await status_until(data, lambda s: s["gateway"] == b_url and s["connected"])
        assert st["running"] is True
        assert st["last_resync"]["mode"] in ("delta", "snapshot")
        assert st["last_resync"]["at"] > first["last_resync"]["at"]
        assert "pi-3" in b.running.hub.connected_nodes()
        assert st["hubs"] == [a_url, b_url]  # the dead one stays known: it may come back
    finally:
        if agent_proc is not None:
            stop(agent_proc)
        stop(gw_a)
    final = await status(data)
    assert final["running"] is False and final["connected"] is False
    assert final["gateway"] == b_url


async def test_a_bad_hub_list_on_the_wire_ends_the_session_and_changes_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A scripted gateway: the real one checks the list and leaves a bad one
    out (next test), so only a broken or hostile peer sends one."""
    pki = load_or_create_pki(tmp_path / "gw")
    ctx = server_ssl_context(pki, require_client_cert=True)
    errors_from_agent: list[dict[str, Any]] = []
    acks: list[int] = []
    connections = 0
    other = url_of(free_port())
    me: list[str] = []

    def snapshot(rev: int, name: str, hubs: Any) -> bytes:
        obj = edgeproto.encode_object({"kind": "ConfigMap", "metadata": {"name": name}})
        body = {"objects": [Entry(f"configmaps/default/{name}", rev, obj).to_wire()]}
        return cbor2.dumps(
            {"v": 1, "id": 0, "kind": "snapshot", "rev": rev, "body": {**body, "hubs": hubs}}
        )

    async def handler(request: tws.WebSocketRequest) -> None:
        nonlocal connections
        ws = await request.accept()
        connections += 1
        hello = edgeproto.decode_message(await ws.get_message())
        assert hello.kind is Kind.HELLO
        if connections == 1:
            await ws.send_message(snapshot(5, "evil", ["http://127.0.0.1:1/"]))
        else:
            await ws.send_message(snapshot(6, "good", [me[0], other]))
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
    me.append(url_of(server.port))
    data = tmp_path / "agent"
    write_node_credentials(pki, "pi-4", data)
    (data / "enrollment.json").write_text(json.dumps({"node": "pi-4", "hub": me[0]}))
    agent = await start_agent(nursery, data)
    await wait_for(lambda: acks == [6])
    assert connections == 2  # the bad list ended the first session; the board came back
    assert errors_from_agent[0]["code"] == "bad-field"
    assert "hub URL 'http://127.0.0.1:1/' is not wss://" in errors_from_agent[0]["message"]
    st = agent.status()
    assert st["objects"] == {"ConfigMap": 1} and st["last_rev"] == 6  # "evil" never stored
    assert st["hubs"] == [me[0], other]
    await agent.stop()


async def test_a_gateway_leaves_out_a_list_it_cannot_vouch_for(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    bad: list[Any] = [["http://not-a-hub:80/"]]

    def source() -> Sequence[str]:
        if isinstance(bad[0], Exception):
            raise bad[0]
        result: Sequence[str] = bad[0]
        return result

    a = await start_replica(nursery, tmp_path / "a", source)
    data = tmp_path / "agent"
    enrolled = await join_through(a, "pi-5", data)
    assert enrolled.hubs == ()
    assert "hubs" not in json.loads((data / "enrollment.json").read_text())
    agent = await start_agent(nursery, data)
    st = await status_until(data, lambda s: s["connected"])
    assert st["hubs"] == [a.hub_url] and st["gateway"] == a.hub_url
    assert a.hub.counters["hubs_not_sent"] >= 1
    await agent.stop()
    bad[0] = RuntimeError("registry down")  # a failing source costs nothing either
    sent = a.hub.counters["hubs_not_sent"]
    agent = await start_agent(nursery, data)
    await wait_for(lambda: a.hub.counters["hubs_not_sent"] > sent)
    await status_until(data, lambda s: s["connected"] and s["hubs"] == [a.hub_url])
    await agent.stop()
