"""A replica killed while a board is in the middle of a snapshot: the board
(the real sync state machine, edgeproto.AgentSync) applies nothing of the cut
snapshot, acknowledges nothing, and gets its whole view from another replica."""

from __future__ import annotations

from pathlib import Path

import trio

import edgeproto
from edgeagent._hub import open_hub_connection
from edgeagent._join import join
from edgeagent._tls import client_ssl_context
from edgeproto import AgentSync, Kind
from tests.conftest import EtcdCluster
from tests.replica_fixtures import Replica

NS = "/api/v1/namespaces/default"
N = 300  # ConfigMaps of ~4 KiB for the node: a snapshot of several messages


async def test_a_replica_killed_mid_snapshot(tmp_path: Path, etcd: EtcdCluster) -> None:
    a = Replica(tmp_path / "gw-a", etcd.url)
    b = Replica(tmp_path / "gw-b", etcd.url)
    await trio.to_thread.run_sync(a.start)
    await trio.to_thread.run_sync(b.start)
    try:
        token = await trio.to_thread.run_sync(
            lambda: a.cli(
                "token", "create", "--store", etcd.url, "--data-dir", str(a.data_dir),
                "--node", "pi-cut",
            ).strip()
        )  # fmt: skip
        board = tmp_path / "board"
        await trio.to_thread.run_sync(join, a.join_url, token, board)
        for i in range(N):
            cm = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"c-{i:03d}", "labels": {"edgeflock.io/node": "pi-cut"}},
                "data": {"blob": f"{i:03d}" * 1365},
            }
            code, _ = await trio.to_thread.run_sync(a.api, "POST", f"{NS}/configmaps", cm)
            assert code == 201
        sync = AgentSync("pi-cut", 0)
        ctx = client_ssl_context(board)
        size = edgeproto.DEFAULT_MAX_MESSAGE * 2
        async with open_hub_connection(a.hub_url, ctx, connect_timeout=10, max_message=size) as ws:
            await ws.send_message(edgeproto.encode_message(sync.hello(now=trio.current_time())))
            first = edgeproto.decode_message(await ws.get_message())
            assert first.kind is Kind.SNAPSHOT and first.body.get("more")  # cut in the middle
            assert sync.receive(first, nbytes=0, now=trio.current_time()) is None  # nothing yet
            await trio.to_thread.run_sync(a.kill)
        assert sync.last_rev == 0  # nothing acknowledged
        view: dict[str, bytes] = {}
        async with open_hub_connection(b.hub_url, ctx, connect_timeout=10, max_message=size) as ws:
            await ws.send_message(edgeproto.encode_message(sync.hello(now=trio.current_time())))
            with trio.fail_after(30):
                while True:
                    msg = edgeproto.decode_message(await ws.get_message())
                    if msg.kind not in (Kind.SNAPSHOT, Kind.CHANGE):
                        continue
                    apply = sync.receive(msg, nbytes=0, now=trio.current_time())
                    if apply is None:
                        continue
                    if apply.replace:
                        view = {}
                    view.update({e.key: e.data for e in apply.upserts})
                    if apply.rev is not None:
                        await ws.send_message(edgeproto.encode_message(sync.persisted(apply.rev)))
                        break
        assert sum(k.startswith("configmaps/") for k in view) == N
        assert "nodes//pi-cut" in view
        assert sync.last_rev > 0
    finally:
        await trio.to_thread.run_sync(a.stop)
        await trio.to_thread.run_sync(b.stop)
