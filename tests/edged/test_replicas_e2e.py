"""Two gateway replicas on a three-member etcd, a real board with real containers:
a pod applied through one replica reaches a board connected to the other; a
watch on one sees writes through the other; the board's replica killed with
SIGKILL, the board resumes on the survivor by delta with its pods running, its
Node Ready, and logs/exec through the survivor reach it."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import trio

from edgeagent._join import join
from tests.conftest import EtcdCluster, edgectl, start_agent, wait_for
from tests.replica_fixtures import Replica

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NS = "/api/v1/namespaces/default"


def pod(image: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ticker"},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo started; while true; do sleep 0.5; done"],
                }
            ],
        },
    }


def ready(node: dict[str, Any]) -> str | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return None


class WatchLines:
    """A streaming ``?watch=1`` request on one replica, read in a thread."""

    def __init__(self, replica: Replica, path: str) -> None:
        req = urllib.request.Request(replica.api_url + path)
        req.add_header("Authorization", f"Bearer {replica.token}")
        self.resp = urllib.request.urlopen(req, timeout=30)
        self.events: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                if line.strip():
                    self.events.append(json.loads(line))
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.resp.close()


async def test_two_replicas_share_the_fleet_and_survive_a_kill(
    nursery: trio.Nursery, tmp_path: Path, containerd: Containerd, etcd3: EtcdCluster
) -> None:
    cg_existed = default_cgroup_exists()
    a = Replica(tmp_path / "gw-a", etcd3.url)
    b = Replica(tmp_path / "gw-b", etcd3.url)
    try:
        await trio.to_thread.run_sync(a.start)
        await trio.to_thread.run_sync(b.start)
        assert a.token == b.token  # one admin token for the fleet

        token = await trio.to_thread.run_sync(
            lambda: a.cli(
                "token", "create", "--store", etcd3.url, "--data-dir", str(b.data_dir),
                "--node", "pi-r1",
            ).strip()
        )  # fmt: skip
        agent_dir = tmp_path / "agent"
        await trio.to_thread.run_sync(join, a.join_url, token, agent_dir)
        agent = await start_agent(nursery, agent_dir, cri=containerd.address)

        def on(replica: Replica) -> dict[str, Any] | None:
            st = agent.status()
            return st if st.get("connected") and st.get("gateway") == replica.hub_url else None

        st = await wait_for(lambda: on(a), timeout=30, interval=0.1)
        assert set(st["hubs"]) >= {a.hub_url, b.hub_url}  # learned every live replica

        # A watch on B sees what is written through A.
        w = await trio.to_thread.run_sync(WatchLines, b, f"{NS}/configmaps?watch=1")
        try:
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "via-a"}}
            assert (await trio.to_thread.run_sync(a.api, "POST", f"{NS}/configmaps", cm))[0] == 201
            await wait_for(
                lambda: any(
                    e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "via-a"
                    for e in w.events
                ),
                timeout=10,
            )
        finally:
            w.close()

        # A pod applied through B runs on the board connected to A.
        code, _ = await trio.to_thread.run_sync(
            b.api, "POST", f"{NS}/pods", pod(containerd.image, "pi-r1")
        )
        assert code == 201

        async def running() -> dict[str, Any] | None:
            code, obj = await trio.to_thread.run_sync(b.api, "GET", f"{NS}/pods/ticker")
            st = obj.get("status") or {} if code == 200 else {}
            return obj if st.get("phase") == "Running" else None

        before = await wait_for(running, timeout=60, interval=0.2)
        cid = before["status"]["containerStatuses"][0]["containerID"]

        # kill -9 the board's replica: it resumes on B by delta; the pod keeps running.
        await trio.to_thread.run_sync(a.kill)
        st = await wait_for(lambda: on(b), timeout=60, interval=0.1)
        await wait_for(
            lambda: (agent.status().get("last_resync") or {}).get("mode") == "delta",
            timeout=30,
            what=lambda: f"a delta resync on B (status {agent.status()})",
        )
        code, obj = await trio.to_thread.run_sync(b.api, "GET", f"{NS}/pods/ticker")
        assert code == 200
        assert obj["status"]["containerStatuses"][0]["containerID"] == cid  # not restarted
        assert obj["status"]["containerStatuses"][0].get("restartCount", 0) == 0
        code, node = await trio.to_thread.run_sync(b.api, "GET", "/api/v1/nodes/pi-r1")
        assert code == 200 and ready(node) == "True"

        # logs and exec through B reach the board.
        base = ("--server", b.api_url, "--token", b.token)
        rc, out, err = await edgectl(*base, "logs", "ticker")
        assert (rc, out) == (0, "started\n"), err
        rc, out, err = await edgectl(*base, "exec", "ticker", "--", "sh", "-c", "echo hi; exit 3")
        assert (rc, out) == (3, "hi\n"), err

        assert (await trio.to_thread.run_sync(b.api, "DELETE", f"{NS}/pods/ticker"))[0] == 200
        # (60 s: on a loaded machine the board may be reconnecting to B when the delete
        # arrives; the delete reaches it with the resync)
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(),
            timeout=60,
            interval=0.2,
            what=lambda: f"the pod's containers removed (agent status {agent.status()})",
        )
        await agent.stop()
    finally:
        if not cg_existed:
            remove_empty_default_cgroup()
        await trio.to_thread.run_sync(a.stop)
        await trio.to_thread.run_sync(b.stop)
