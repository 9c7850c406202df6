"""Releases on replicas sharing etcd (real ``cloudgateway serve`` processes):
pushed through one replica, every piece served by another to a board the
job assigned it to; the pieces live outside the store's watched keys. And a
gateway given ``--release-key`` hands it to joining boards."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

import trio

from edgeproto.upgrade import NodeState
from tests.conftest import EtcdCluster, Gateway, edgectl, start_gateway, wait_for
from tests.replica_fixtures import Replica
from tests.upgrade.boards import Board, keygen, make_bundle, settle

JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"


async def test_push_to_one_replica_served_by_another(tmp_path: Path, etcd: EtcdCluster) -> None:
    a = Replica(tmp_path / "gw-a", etcd.url)
    b = Replica(tmp_path / "gw-b", etcd.url)
    await trio.to_thread.run_sync(a.start)
    await trio.to_thread.run_sync(b.start)
    try:
        key, pub = await keygen(tmp_path)
        bundle = make_bundle(tmp_path / "bundle", "0.2.0", size=400_000)
        rc, out, err = await edgectl(
            "--server", a.api_url, "--token", a.token, "upgrade", "push", str(bundle),
            "--key", str(key),
        )  # fmt: skip
        assert rc == 0, err
        sha = out.split()[1]
        rc, out, err = await edgectl(
            "--server", b.api_url, "--token", b.token, "upgrade", "releases"
        )
        assert rc == 0 and sha in out and "complete" in out, (out, err)
        # Not in the store's keyspace: the etcd keys sit beside the store's root.
        keys = await trio.to_thread.run_sync(etcd_keys, etcd)
        assert any(k.startswith(f"/edgeflock-releases/p/{sha}/") for k in keys)
        assert not any(k.startswith("/edgeflock/") and sha in k for k in keys)
        token = await trio.to_thread.run_sync(
            lambda: a.cli(
                "token", "create", "--store", etcd.url, "--data-dir", str(a.data_dir),
                "--node", "pi-r",
            ).strip()
        )  # fmt: skip
        from edgeagent._join import join

        await trio.to_thread.run_sync(join, b.join_url, token, tmp_path / "pi-r")
        gw_b = _board_gateway(b)
        board = Board(gw_b, "pi-r", tmp_path / "pi-r", "0.1.0")
        async with board.connected():
            rc, _, err = await edgectl(
                "--server", a.api_url, "--token", a.token, "upgrade", "start",
                "--version", "0.2.0", "--nodes", "pi-r", "--name", "rep",
            )  # fmt: skip
            assert rc == 0, err
            await settle([board], lambda: board.assignment() is not None, timeout=30)
            assignment = board.assignment()
            assert assignment is not None and assignment.release == sha
            assert await board.report(assignment, NodeState.DOWNLOADING) == {}
            blob = await board.download(assignment, pub.read_bytes())
            assert len(blob) == assignment.size

        def job_state() -> str:
            code, body = a.api("GET", f"{JOBS}/rep")
            return str(body["status"]["nodeStatus"][0]["state"]) if code == 200 else ""

        await wait_for(lambda: trio.to_thread.run_sync(job_state), timeout=15)
        assert await trio.to_thread.run_sync(job_state) == "downloading"
    finally:
        await trio.to_thread.run_sync(a.stop)
        await trio.to_thread.run_sync(b.stop)


def _board_gateway(r: Replica) -> Gateway:
    """What Board needs of a gateway: its hub port."""

    class _Running:
        ports = r.ports

    return Gateway(r.data_dir, _Running(), trio.CancelScope())  # type: ignore[arg-type]


def etcd_keys(etcd: EtcdCluster) -> list[str]:
    """Every key in etcd (with the gateway's own client)."""
    from cloudgateway.etcd._client import EtcdClient

    client = EtcdClient(etcd.endpoints)
    try:
        resp = client.range(b"/", b"0", keys_only=True)
        return [kv.key.decode() for kv in resp.kvs]
    finally:
        client.close()


async def test_join_answer_carries_the_release_key(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, pub = await keygen(tmp_path)
    gw = await start_gateway(nursery, tmp_path / "gateway", release_key=pub)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    from cloudgateway._join import create_join_token

    token = await create_join_token(gw.data_dir, "pi-k", 600.0)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(ed25519.Ed25519PrivateKey.generate(), None)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )

    def post() -> dict:
        ctx = ssl.create_default_context(cafile=str(gw.data_dir / "ca.crt"))
        ctx.check_hostname = False
        req = urllib.request.Request(
            gw.join_url + "/v1/join",
            data=json.dumps({"token": token, "csr": csr}).encode(),
            method="POST",
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return dict(json.loads(resp.read()))

    answer = await trio.to_thread.run_sync(post)
    assert answer["node"] == "pi-k"
    assert answer["releaseKey"] == pub.read_text()
    gw.scope.cancel()
