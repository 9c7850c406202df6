"""Gateway ⇄ agent sync end to end: real TLS, real WebSockets, real SQLite."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import apsw
import trio

from tests.conftest import Gateway, fill_up, join_node, start_agent, start_gateway, wait_for

NS = "/api/v1/namespaces/default"


def cm(name: str, node: str | None = None, value: str = "v") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if node:
        meta["labels"] = {"edgeflock.io/node": node}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": value}}


def secret(name: str, value: str = "pw") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"password": base64.b64encode(value.encode()).decode()},
    }


def pod(name: str, node: str, cm_name: str, secret_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "env": [
                        {
                            "name": "P",
                            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "password"}},
                        }
                    ],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
                }
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": cm_name}}],
        },
    }


async def create(gw: Gateway, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    code, body = await gw.api("POST", f"{NS}/{resource}", obj)
    assert code == 201, body
    return body


async def test_pod_and_references_reach_the_board(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    await join_node(gateway, "pi-01", tmp_path / "a")
    agent = await start_agent(nursery, tmp_path / "a")
    await create(gateway, "configmaps", cm("app-config"))
    await create(gateway, "secrets", secret("app-secret"))
    await create(gateway, "pods", pod("web", "pi-01", "app-config", "app-secret"))
    # Something unrelated stays in the cloud.
    await create(gateway, "configmaps", cm("other"))
    await create(gateway, "pods", pod("elsewhere", "pi-99", "other", "app-secret"))

    def counted() -> bool:
        objs = agent.status()["objects"]
        return objs.get("Pod") == 1 and objs.get("ConfigMap") == 1 and objs.get("Secret") == 1

    await wait_for(counted, timeout=2.0)
    st = agent.status()
    assert st["connected"] is True and st["last_rev"] > 0

    async def pod_status() -> Any:
        code, body = await gateway.api("GET", f"{NS}/pods/web")
        return (
            code == 200 and (body.get("status") or {}).get("phase") == "Pending" and body["status"]
        )

    status = await wait_for(pod_status)
    assert status["reason"] == "ContainerRuntimeNotEnabled"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"]

    async def node_ready() -> Any:
        code, body = await gateway.api("GET", "/api/v1/nodes/pi-01")
        conds = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions", [])}
        return (
            code == 200 and conds.get("Ready") == "True" and body["status"].get("nodeInfo") and body
        )

    node = await wait_for(node_ready)
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.30")
    assert int(node["status"]["capacity"]["cpu"]) >= 1

    # A reference removed: the ConfigMap leaves the board, the pod stays.
    code, body = await gateway.api("GET", f"{NS}/pods/web")
    body["spec"]["volumes"] = []
    body["spec"]["containers"][0]["volumeMounts"] = []
    code, _ = await gateway.api("PUT", f"{NS}/pods/web", body)
    assert code == 200
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") is None)
    # The pod deleted: it and its Secret leave the board.
    code, _ = await gateway.api("DELETE", f"{NS}/pods/web")
    assert code == 200
    await wait_for(lambda: agent.status()["objects"] == {"Node": 1})


async def test_offline_restart_then_converge(nursery: trio.Nursery, tmp_path: Path) -> None:
    gw = await start_gateway(nursery, tmp_path / "gw")
    ports = dict(gw.ports)
    await join_node(gw, "pi-02", tmp_path / "a")
    agent = await start_agent(nursery, tmp_path / "a")
    await create(gw, "configmaps", cm("c1"))
    await create(gw, "secrets", secret("s1"))
    await create(gw, "pods", pod("p1", "pi-02", "c1", "s1"))
    await wait_for(lambda: agent.status()["objects"].get("Pod") == 1)

    await gw.stop()
    await agent.stop()
    # Gateway gone, agent restarted: everything is still served from SQLite.
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(lambda: agent.status()["running"], what="the restarted agent is up")
    st = agent.status()
    assert st["objects"] == {"Node": 1, "Pod": 1, "ConfigMap": 1, "Secret": 1}
    assert st["connected"] is False and st["running"] is True
    # Reports made while offline wait in the outbox (node status at least).
    await wait_for(lambda: agent.status()["outbox"] >= 1)

    # While offline the cloud changes; the gateway returns on the same ports.
    gw = await start_gateway(nursery, tmp_path / "gw", ports)
    await create(gw, "configmaps", cm("c2"))
    # A patch, not GET+PUT: the reconnecting board may write the pod's status
    # in between, which a PUT of the old resourceVersion would meet as a 409.
    patch = {"spec": {"volumes": [{"name": "c2", "configMap": {"name": "c2"}}]}}
    code, body = await trio.to_thread.run_sync(
        gw.request, "PATCH", f"{NS}/pods/p1", patch, "application/strategic-merge-patch+json"
    )
    assert code == 200, body
    assert [v["name"] for v in body["spec"]["volumes"]][-1] == "c2"
    await wait_for(
        lambda: agent.status()["connected"] and agent.status()["objects"].get("ConfigMap") == 2,
        timeout=15,
    )
    assert agent.status()["last_resync"]["mode"] == "delta"
    # ...and are delivered once the gateway is back.
    await wait_for(lambda: agent.status()["outbox"] == 0)
    code, node = await gw.api("GET", "/api/v1/nodes/pi-02")
    assert code == 200 and node["status"]["nodeInfo"]["kubeletVersion"]
    await agent.stop()
    await gw.stop()


async def test_resync_after_small_change_is_small(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    node = "pi-03"
    await join_node(gateway, node, tmp_path / "a")
    for i in range(1000):
        obj = cm(f"cm-{i:04d}", node, value="x" * 100)
        code, body = await gateway.api("POST", f"{NS}/configmaps", obj)
        assert code == 201, body
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") == 1000, timeout=20)
    first = agent.status()["last_resync"]
    assert first["mode"] == "snapshot"
    await agent.stop()
    for i in range(0, 1000, 100):
        code, body = await gateway.api("GET", f"{NS}/configmaps/cm-{i:04d}")
        body["data"]["k"] = "changed"
        code, _ = await gateway.api("PUT", f"{NS}/configmaps/cm-{i:04d}", body)
        assert code == 200
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(
        lambda: (agent.status()["last_resync"] or {}).get("at", 0) > first["at"], timeout=10
    )
    second = agent.status()["last_resync"]
    assert second["mode"] == "delta"
    assert second["objects"] == 10
    assert second["bytes"] <= 0.05 * first["bytes"], (second, first)
    await agent.stop()


async def test_idle_nodes_follow_the_store_revision(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Writes outside a node's view still advance its last_rev now and then, so
    its next resync is a delta even after compaction; and idle sessions hold no
    sender task of their own."""
    from cloudgateway._hub import HubConfig

    gw = await start_gateway(
        nursery, tmp_path / "gw", hub=HubConfig(idle_timeout=10.0, progress_interval=0.5)
    )
    await join_node(gw, "pi-01", tmp_path / "a")
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(lambda: agent.status()["connected"], timeout=10)
    start = agent.status()["last_rev"]
    for i in range(3):
        await create(gw, "configmaps", cm(f"elsewhere-{i}", node="pi-99"))
    rev = gw.store.current_rev()
    assert rev > start
    await wait_for(lambda: agent.status()["last_rev"] >= rev, timeout=5)
    assert agent.status()["objects"].get("ConfigMap", 0) == 0
    # A second node connects: still the same fixed pool of sender tasks.
    await join_node(gw, "pi-02", tmp_path / "b")
    other = await start_agent(nursery, tmp_path / "b")
    await wait_for(lambda: other.status()["connected"], timeout=10)

    def tasks_named(suffix: str) -> int:
        count, todo = 0, [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            count += task.name.endswith(suffix)
            todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
        return count

    assert tasks_named("HubSync._sender") == gw.running.hub.config.senders
    gw.scope.cancel()


async def test_a_full_disk_on_the_board_delays_sync_and_loses_nothing(
    nursery: trio.Nursery, gateway: Gateway, small_fs: Path
) -> None:
    """The agent's SQLite on a real full filesystem (tmpfs): applying changes
    fails, nothing is acknowledged, and once there is room the board converges."""
    data = small_fs / "agent"
    await join_node(gateway, "pi-full", data)
    agent = await start_agent(nursery, data)
    await create(gateway, "configmaps", cm("before", "pi-full"))
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") == 1)
    filler = fill_up(small_fs)
    # 640 KB: more than the WAL's reusable space (it is checkpointed at ~500 KB)
    for i in range(40):
        await create(gateway, "configmaps", cm(f"during-{i}", "pi-full", "x" * 16000))
    # The board failed to apply them and came back to resync from its last
    # revision: stuck, not crashed.
    hub = gateway.running.hub
    await wait_for(
        lambda: hub.statistics().get("resyncs_delta", 0) >= 1,
        what="the board resynced by delta after failing to apply",
    )
    st = agent.status()
    assert st["running"] and st["objects"].get("ConfigMap", 0) < 41
    filler.unlink()
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") == 41, timeout=40)
    conn = apsw.Connection(str(data / "meta.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
