"""Logs and exec of a real container through the replica that does not hold
the board: edgectl → replica B's API → B's peer client → A's peer port → A's
hub → the agent's edged → containerd, and the output back the same way."""

from __future__ import annotations

from pathlib import Path

import trio

from cloudgateway._fleet import load_pki
from cloudgateway._http import HttpConfig
from cloudgateway._peer import PeerServer, RoutedStreams
from cloudgateway._peercert import (
    load_or_create_replica_credentials,
    peer_client_ssl,
    peer_server_ssl,
)
from tests.cloudgateway import test_peer
from tests.cloudgateway.test_peer import Fleet, board_on, routed_api
from tests.conftest import wait_for
from tests.edged import conftest as edged_fixtures
from tests.edged.conftest import Containerd
from tests.edged.test_cloud_streams import pod
from tests.edged.test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NS = "/api/v1/namespaces/default"
containerd = edged_fixtures.containerd  # the session's real containerd (a pytest fixture)
fleet = test_peer.fleet  # the replicas' shared store (a pytest fixture)


async def test_a_real_container_through_another_replica(
    nursery: trio.Nursery, fleet: Fleet, tmp_path: Path, containerd: Containerd
) -> None:
    cg_existed = default_cgroup_exists()
    a = await fleet.start(nursery, tmp_path / "a")
    b = await fleet.start(nursery, tmp_path / "b")
    pki = await load_pki(fleet.store, a.data_dir, shared=True)
    creds_a = load_or_create_replica_credentials(pki, a.data_dir, "gw-a", ["127.0.0.1"])
    creds_b = load_or_create_replica_credentials(pki, b.data_dir, "gw-b", ["127.0.0.1"])
    peer_a = PeerServer(
        a.running.hub, peer_server_ssl(pki, creds_a), HttpConfig(host="127.0.0.1", port=0)
    )
    port = await nursery.start(peer_a.run)
    owners = {"pi-logs": f"127.0.0.1:{port}"}
    b = await routed_api(
        nursery, b, RoutedStreams(b.running.hub, owners.get, peer_client_ssl(pki, creds_b), "gw-b")
    )
    agent = await board_on(nursery, fleet, a, tmp_path / "agent", "pi-logs", cri=containerd.address)
    try:
        assert (await b.api("POST", f"{NS}/pods", pod(containerd.image)))[0] == 201

        async def running() -> bool:
            code, obj = await a.api("GET", f"{NS}/pods/talker")
            return code == 200 and (obj.get("status") or {}).get("phase") == "Running"

        await wait_for(running, timeout=30, interval=0.1)

        async def logged() -> bool:
            rc, out, _ = await b.edgectl("logs", "talker")
            return rc == 0 and out.startswith("first line\nsecond line\ntick\n")

        await wait_for(logged, timeout=10, interval=0.2)
        rc, out, err = await b.edgectl(
            "exec", "talker", "--", "sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 7'
        )
        assert (rc, out, err) == (7, "hello from edged\n", "oops\n")
        assert peer_a.statistics()["streams_relayed"] >= 2

        assert (await a.api("DELETE", f"{NS}/pods/talker"))[0] == 200
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
    finally:
        await agent.stop()
        if not cg_existed:
            remove_empty_default_cgroup()
