"""What is one for the whole fleet lives in the store: join tokens (single use
across gateways), the admin token and, with a shared store, the CA. Two
gateways share one store here the way replicas will: one ``Store`` over one
real SQLite file handed to both ``run_gateway`` instances (each with its own
data dir, ports and TLS), and for the races two ``Store`` objects over two
connections to the same file."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._app import RunningGateway, run_gateway
from cloudgateway._fleet import (
    ADMIN_TOKEN_KEY,
    FLEET_CA_KEY,
    fleet_ca,
    join_token_key,
    load_admin_token,
    load_pki,
)
from cloudgateway._join import JoinError, TokenStore
from cloudgateway._pki import PkiError, new_ca
from cloudgateway._store import NotFound, SqliteBackend, Store
from cloudgateway._view import compute_view
from edgeagent._hub import open_hub_connection
from edgeagent._join import join
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message
from tests.conftest import Gateway, ManualClock, gateway_config
from tests.replica_fixtures import free_port

FLEET_KEYS = (ADMIN_TOKEN_KEY, FLEET_CA_KEY, join_token_key("abc123"))


def open_store(path: Path) -> tuple[SqliteBackend, Store]:
    backend = SqliteBackend(str(path), node_of=edgeproto.owner_node)
    return backend, Store(backend)


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two stores over two connections to one SQLite file (as two processes)."""
    a, store_a = open_store(tmp_path / "fleet.db")
    b, store_b = open_store(tmp_path / "fleet.db")
    yield store_a, store_b
    a.close()
    b.close()


async def start_replica(nursery: trio.Nursery, data_dir: Path, store: Store) -> Gateway:
    scope, stopped = trio.CancelScope(), trio.Event()

    async def runner(task_status: trio.TaskStatus[RunningGateway]) -> None:
        try:
            with scope:
                await run_gateway(gateway_config(data_dir), store=store, task_status=task_status)
        finally:
            stopped.set()

    running = await nursery.start(runner)
    token = (data_dir / "admin.token").read_text().strip()
    return Gateway(data_dir, running, scope, token=token, stopped=stopped)


@pytest.fixture
async def replicas(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gateway]]:
    backend, store = open_store(tmp_path / "fleet.db")
    a = await start_replica(nursery, tmp_path / "gw-a", store)
    b = await start_replica(nursery, tmp_path / "gw-b", store)
    yield a, b
    await a.stop()
    await b.stop()
    backend.close()


def csr_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )


def post_join(gw: Gateway, token: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/join over real HTTPS, trusting the fleet CA."""
    ctx = ssl.create_default_context(cafile=str(gw.data_dir / "ca.crt"))
    body = json.dumps({"token": token, "csr": csr_pem().decode()}).encode()
    req = urllib.request.Request(gw.join_url + "/v1/join", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# ---- keys -------------------------------------------------------------------------------


async def test_fleet_keys_are_no_api_resource_and_on_no_node(
    two_stores: tuple[Store, Store],
) -> None:
    store, _ = two_stores
    resources = {f"{r.name}/" for r in edgeproto.RESOURCES}
    for key in FLEET_KEYS:
        value = {"kind": "X", "node": "pi-1", "token": "t"}
        assert edgeproto.owner_node(key, value) is None
        assert not any(key.startswith(prefix) for prefix in resources)
        await store.create(key, value)  # the store takes the key
    # pi-1's view holds its pod, none of the fleet's records.
    pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}
    await store.create("pods/default/p", {**pod, "spec": {"nodeName": "pi-1"}})
    view = await store.call(compute_view, store.backend, "pi-1")
    assert sorted(view.records) == ["pods/default/p"]


# ---- join tokens ------------------------------------------------------------------------


async def test_a_token_raced_through_two_connections_is_used_once(
    two_stores: tuple[Store, Store],
) -> None:
    store_a, store_b = two_stores
    tokens_a, tokens_b = TokenStore(store_a), TokenStore(store_b)
    issued = [await tokens_a.create(f"n{i}", ttl=60) for i in range(20)]
    outcomes: list[str] = []
    guarded = 0  # races decided by the guarded write (both read the token unused)

    async def use(tokens: TokenStore, token: str) -> None:
        nonlocal guarded
        try:
            outcomes.append(await tokens.consume(token))
        except JoinError as exc:
            outcomes.append(exc.reason)
            guarded += "concurrent join" in str(exc)

    for i, token in enumerate(issued):
        outcomes.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(use, tokens_a, token)
            nursery.start_soon(use, tokens_b, token)
        assert sorted(outcomes) == sorted([f"n{i}", "UsedToken"])
    assert guarded > 0  # the race really happened, not one join after the other
    assert {t["state"] for t in await tokens_b.list()} == {"used"}


async def test_tokens_expired_for_a_while_are_pruned(two_stores: tuple[Store, Store]) -> None:
    store, _ = two_stores
    clock = ManualClock()
    tokens = TokenStore(store, clock=clock, keep_expired=600)
    old = await tokens.create("n1", ttl=60)
    clock.advance(60 + 599)
    await tokens.create("n2", ttl=60)
    assert [t["node"] for t in await tokens.list()] == ["n1", "n2"]  # expired, still known
    with pytest.raises(JoinError, match="expired"):
        await tokens.consume(old)
    clock.advance(1)
    assert await tokens.prune() == 1
    assert [t["node"] for t in await tokens.list()] == ["n2"]
    with pytest.raises(JoinError, match="unknown token"):
        await tokens.consume(old)
    # Creating a token prunes too.
    clock.advance(3600)
    await tokens.create("n3", ttl=60)
    assert [t["node"] for t in await tokens.list()] == ["n3"]


async def test_a_token_raced_on_two_gateways_is_used_once(
    replicas: tuple[Gateway, Gateway],
) -> None:
    a, b = replicas
    token = await TokenStore(a.store).create("pi-race", ttl=600)
    answers: list[tuple[int, dict[str, Any]]] = []

    async def post(gw: Gateway) -> None:
        answers.append(await trio.to_thread.run_sync(post_join, gw, token))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, a)
        nursery.start_soon(post, b)
    answers.sort(key=lambda answer: answer[0])
    (ok, joined), (refused, why) = answers
    assert ok == 200 and joined["node"] == "pi-race"
    assert refused == 401 and why["reason"] == "UsedToken"
    assert "already used" in why["message"]


async def test_a_token_from_the_cli_is_taken_by_the_running_gateway(
    gateway: Gateway, tmp_path: Path
) -> None:
    """``cloudgateway token create`` in another process, on the store.db the
    gateway has open."""

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cloudgateway._cli", "token", *argv]
        cmd += ["--data-dir", str(gateway.data_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    made = await trio.to_thread.run_sync(cli, "create", "--node", "pi-cli", "--ttl", "10m")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "a")
    code, _node = await gateway.api("GET", "/api/v1/nodes/pi-cli")
    assert code == 200
    listed = await trio.to_thread.run_sync(cli, "list")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["id"], entry["node"], entry["state"]) == (token[:6], "pi-cli", "used")
    assert not (gateway.data_dir / "tokens.db").exists()


def test_the_cli_refuses_stores_it_cannot_open(tmp_path: Path) -> None:
    def create(store: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cloudgateway._cli", "token", "create", "--node", "n"]
        cmd += ["--data-dir", str(tmp_path / "gw"), "--store", store]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    closed = free_port()
    etcd = create(f"etcd://127.0.0.1:{closed}")  # nothing listens there
    assert etcd.returncode == 1
    last = etcd.stderr.strip().splitlines()[-1]
    assert last.startswith("error: etcd unavailable: ") and f"127.0.0.1:{closed}" in last, last
    bogus = create("mysql://x")
    assert bogus.returncode == 2 and "unknown store 'mysql://x'" in bogus.stderr
    assert not (tmp_path / "gw").exists()  # nothing made for a refused command


# ---- admin token --------------------------------------------------------------------------


async def test_the_admin_token_is_one_for_the_fleet(
    two_stores: tuple[Store, Store], tmp_path: Path
) -> None:
    store_a, store_b = two_stores
    got: dict[str, str] = {}

    async def load(store: Store, name: str) -> None:
        got[name] = await load_admin_token(store, tmp_path / name)

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with trio.open_nursery() as nursery:  # racing creators: one wins
        nursery.start_soon(load, store_a, "a")
        nursery.start_soon(load, store_b, "b")
    assert got["a"] == got["b"] and len(got["a"]) == 64
    for name in ("a", "b"):
        path = tmp_path / name / "admin.token"
        assert path.read_text() == got["a"] + "\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A data dir holding another token gets the fleet's.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "admin.token").write_text("stale\n")
    assert await load_admin_token(store_b, tmp_path / "c") == got["a"]
    assert (tmp_path / "c" / "admin.token").read_text() == got["a"] + "\n"


async def test_a_gateway_that_ran_before_keeps_its_admin_token(
    two_stores: tuple[Store, Store], tmp_path: Path
) -> None:
    store, _ = two_stores
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "admin.token").write_text("0123abcd\n")
    assert await load_admin_token(store, tmp_path / "gw") == "0123abcd"
    assert (await store.get(ADMIN_TOKEN_KEY)).value["token"] == "0123abcd"


# ---- the fleet CA -------------------------------------------------------------------------


async def test_the_fleet_ca_is_created_once(
    two_stores: tuple[Store, Store], tmp_path: Path
) -> None:
    store_a, store_b = two_stores
    got: dict[str, tuple[bytes, bytes]] = {}

    async def load(store: Store, name: str) -> None:
        got[name] = await fleet_ca(store, tmp_path / name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load, store_a, "a")
        nursery.start_soon(load, store_b, "b")
    assert got["a"] == got["b"]
    pki = await load_pki(store_b, tmp_path / "b", shared=True)
    assert pki.ca_cert_pem == got["a"][0] and pki.ca_key_path is None
    # The key stays in the store: the data dir has the certificates only.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "ca.crt",
        "server.crt",
        "server.key",
    ]


async def test_a_data_dir_with_its_own_ca(two_stores: tuple[Store, Store], tmp_path: Path) -> None:
    """The first gateway on a new shared store brings its CA (its boards stay
    trusted); a data dir with another CA's key is refused, not overwritten."""
    store, _ = two_stores
    own = await load_pki(store, tmp_path / "old", shared=False)
    with pytest.raises(NotFound):
        await store.get(FLEET_CA_KEY)  # one machine: the CA stays in the data dir
    assert own.ca_key_path == tmp_path / "old" / "ca.key"
    shared = await load_pki(store, tmp_path / "old", shared=True)
    assert shared.ca_pin == own.ca_pin
    other = tmp_path / "other"
    other.mkdir()
    cert, key = new_ca()
    (other / "ca.crt").write_bytes(cert)
    (other / "ca.key").write_bytes(key)
    with pytest.raises(PkiError, match="another CA than the fleet's"):
        await load_pki(store, other, shared=True)
    assert (other / "ca.crt").read_bytes() == cert  # nothing lost


async def test_replicas_share_the_admin_token_and_the_ca(
    replicas: tuple[Gateway, Gateway],
) -> None:
    a, b = replicas
    assert a.token == b.token
    assert (a.data_dir / "ca.crt").read_bytes() == (b.data_dir / "ca.crt").read_bytes()
    assert (a.data_dir / "server.key").read_bytes() != (b.data_dir / "server.key").read_bytes()
    assert not (a.data_dir / "ca.key").exists() and not (b.data_dir / "ca.key").exists()
    code, _ = await b.api("GET", "/api/v1/nodes")
    assert code == 200


async def test_a_node_joined_through_one_gateway_connects_to_the_other(
    replicas: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    a, b = replicas
    token = await TokenStore(a.store).create("pi-x", ttl=600)
    pin = a.running.join._pki.ca_pin.removeprefix("sha256:")
    node_dir = tmp_path / "node"
    await trio.to_thread.run_sync(join, a.join_url, f"{token}.{pin}", node_dir)
    # B's hub: B's own serving certificate, verified by the node against the
    # fleet CA; the node's certificate, signed through A, verified by B.
    async with open_hub_connection(
        f"wss://127.0.0.1:{b.ports['hub']}/",
        client_ssl_context(node_dir),
        connect_timeout=5,
        max_message=edgeproto.DEFAULT_MAX_MESSAGE,
    ) as ws:
        hello = Message(Kind.HELLO, body={"node": "pi-x", "last_rev": 0})
        await ws.send_message(edgeproto.encode_message(hello))
        with trio.fail_after(5):
            first = edgeproto.decode_message(await ws.get_message())
        assert first.kind is Kind.SNAPSHOT, first
        assert b.running.hub.connected_nodes() == ["pi-x"]
    assert a.running.hub.connected_nodes() == []


def test_serve_takes_the_store_from_its_flag(tmp_path: Path) -> None:
    from cloudgateway._cli import _parser, serve_config

    args = ["serve", "--data-dir", str(tmp_path / "gw")]
    assert serve_config(_parser().parse_args(args)).store == "sqlite"
    shared = serve_config(_parser().parse_args([*args, "--store", "etcd://10.0.0.5:2379"]))
    assert shared.store == "etcd://10.0.0.5:2379"
    closed = free_port()
    cmd = [
        sys.executable,
        "-m",
        "cloudgateway._cli",
        *args,
        "--store",
        f"etcd://127.0.0.1:{closed}",
    ]
    cmd += ["--hub", "127.0.0.1:0", "--join", "127.0.0.1:0", "--api", "127.0.0.1:0"]
    serve = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert serve.returncode == 1
    last = serve.stderr.strip().splitlines()[-1]
    assert last.startswith("error: etcd unavailable: ") and f"127.0.0.1:{closed}" in last, last
    half_tls = subprocess.run(
        [*cmd, "--etcd-cert", str(tmp_path / "c.pem")], capture_output=True, text=True, timeout=60
    )
    assert half_tls.returncode == 1
    assert half_tls.stderr.strip() == "error: --etcd-cert and --etcd-key go together"
