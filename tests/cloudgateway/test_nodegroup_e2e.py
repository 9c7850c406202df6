"""KubeEdge NodeGroups against a real gateway (API over TLS, kubectl 1.32 and
edgectl as clients) with the node group controller running: members get the
``apps.kubeedge.io/belonging-to`` label and are reported, nodes join and leave
as their labels change (kubectl label), a node stays in the first group that
took it, pods placed for a group are evicted from a node that left it, and
deleting the group releases its nodes."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway.controllers import Runtime, run_controllers
from cloudgateway.controllers._deployment import DeploymentController
from cloudgateway.controllers._edgeapp import EdgeApplicationController
from cloudgateway.controllers._gc import GarbageCollector
from cloudgateway.controllers._nodegroup import NodeGroupController
from cloudgateway.controllers._nodegroup_plan import LABEL_BELONGING_TO
from cloudgateway.controllers._replicaset import ReplicaSetController
from cloudgateway.controllers._scheduler import Scheduler
from tests.cloudgateway import test_kubectl
from tests.conftest import Gateway, edgectl, start_gateway, wait_for


def extra_controllers(gw: Gateway) -> list[Any]:
    """The scheduler and the workload controllers (they turn the produced
    Deployments into pods on the group's nodes)."""
    return [Scheduler(gw.store), ReplicaSetController(gw.store), DeploymentController(gw.store)]


@dataclass
class Fleet:
    gw: Gateway
    runtime: Runtime
    kinds: list[str]

    async def kubectl(self, *argv: str, stdin: str = "") -> str:
        return await test_kubectl.ok(self.gw, *argv, stdin=stdin)

    async def kubectl_json(self, *argv: str) -> Any:
        return json.loads(await self.kubectl(*argv, "-o", "json"))

    async def edgectl(self, *argv: str, stdin: str = "") -> str:
        code, out, err = await edgectl(
            "--server",
            f"https://127.0.0.1:{self.gw.ports['api']}",
            "--token",
            self.gw.token,
            "--certificate-authority",
            str(self.gw.data_dir / "ca.crt"),
            *argv,
            stdin=stdin,
        )
        assert code == 0, (argv, out, err)
        return out

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to the https API (the gateway's CA, the admin token)."""
        ctx = ssl.create_default_context(cafile=str(self.gw.data_dir / "ca.crt"))
        url = f"https://127.0.0.1:{self.gw.ports['api']}{path}"

        def go() -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(url, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.gw.token}")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                    return resp.status, json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, json.loads(exc.read() or b"null")

        return await trio.to_thread.run_sync(go)

    async def get(self, path: str) -> Any:
        code, obj = await self.api("GET", path)
        return obj if code == 200 else None

    async def node_group_label(self, node: str) -> str | None:
        obj = await self.get(f"/api/v1/nodes/{node}")
        if obj is None:
            return None
        label = (obj["metadata"].get("labels") or {}).get(LABEL_BELONGING_TO)
        return label if isinstance(label, str) else None

    async def add_node(self, name: str, **labels: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        code, obj = await self.api("POST", "/api/v1/nodes", body)
        assert code == 201, obj


@pytest.fixture
async def fleet(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Fleet]:
    gw = await start_gateway(
        nursery, tmp_path / "gw", api_tls=True, controllers=False
    )  # kubectl: https
    controllers: list[Any] = [
        NodeGroupController(gw.store),
        EdgeApplicationController(gw.store),
        GarbageCollector(gw.store),
        *extra_controllers(gw),
    ]
    runtime = await nursery.start(run_controllers, gw.store, controllers)
    yield Fleet(gw, runtime, [type(c).__name__ for c in controllers])
    gw.scope.cancel()


NODE_GROUPS = """
apiVersion: apps.kubeedge.io/v1alpha1
kind: NodeGroup
metadata:
  name: plant-2
spec:
  nodes:
    - pi-03
    - pi-99
  matchLabels:
    site: plant-2
---
apiVersion: apps.kubeedge.io/v1alpha1
kind: NodeGroup
metadata:
  name: modbus
spec:
  matchLabels:
    sensor: modbus
"""


async def test_node_group_membership_follows_names_and_labels(fleet: Fleet) -> None:
    await fleet.add_node("pi-01", site="plant-2", sensor="modbus")
    await fleet.add_node("pi-02", site="plant-2")
    await fleet.add_node("pi-03", site="plant-9")
    await fleet.add_node("pi-04", site="plant-9")
    out = await fleet.kubectl("apply", "-f", "-", stdin=NODE_GROUPS)
    assert "nodegroup.apps.kubeedge.io/plant-2 created" in out

    async def labels() -> dict[str, str | None]:
        return {n: await fleet.node_group_label(n) for n in ("pi-01", "pi-02", "pi-03", "pi-04")}

    want = {"pi-01": "plant-2", "pi-02": "plant-2", "pi-03": "plant-2", "pi-04": None}

    async def settled() -> bool:
        return await labels() == want

    await wait_for(settled, what=lambda: "labels")

    async def statuses(group: str) -> Any:
        obj = await fleet.get(f"/apis/apps.kubeedge.io/v1alpha1/nodegroups/{group}")
        return (obj.get("status") or {}).get("nodeStatuses") if obj else None

    async def plant_status() -> Any:
        got = await statuses("plant-2")
        return got if got and len(got) == 4 else None

    got = await wait_for(plant_status)
    assert got == [
        {"nodeName": "pi-01", "readyStatus": "Ready", "selectionStatus": "Succeeded"},
        {"nodeName": "pi-02", "readyStatus": "Ready", "selectionStatus": "Succeeded"},
        {"nodeName": "pi-03", "readyStatus": "Ready", "selectionStatus": "Succeeded"},
        {
            "nodeName": "pi-99",
            "readyStatus": "Unknown",
            "selectionStatus": "Failed",
            "selectionStatusReason": "node does not exist",
        },
    ]

    # pi-01 also matches "modbus", but a node belongs to one group: the first
    async def modbus_status() -> Any:
        return await statuses("modbus")

    (entry,) = await wait_for(modbus_status)
    assert entry["nodeName"] == "pi-01" and entry["selectionStatus"] == "Failed"
    assert entry["selectionStatusReason"] == "node pi-01 has already belonged to NodeGroup plant-2"

    # a node joins by a label change, another leaves
    await fleet.kubectl("label", "node", "pi-04", "site=plant-2", "--overwrite")
    await fleet.kubectl("label", "node", "pi-02", "site-")
    want = {"pi-01": "plant-2", "pi-02": None, "pi-03": "plant-2", "pi-04": "plant-2"}
    await wait_for(settled, what=lambda: "labels after relabelling")
    # the user's own labels are untouched
    node = await fleet.kubectl_json("get", "node", "pi-04")
    assert node["metadata"]["labels"]["site"] == "plant-2"

    # kubectl and edgectl list the groups
    listed = await fleet.kubectl("get", "nodegroups", "-o", "name")
    assert sorted(listed.split()) == [
        "nodegroup.apps.kubeedge.io/modbus",
        "nodegroup.apps.kubeedge.io/plant-2",
    ]
    assert "plant-2" in await fleet.edgectl("get", "nodegroups")

    # deleting plant-2 releases its nodes; pi-01 then goes to modbus
    await fleet.kubectl("delete", "nodegroup", "plant-2")
    want = {"pi-01": "modbus", "pi-02": None, "pi-03": None, "pi-04": None}
    await wait_for(settled, what=lambda: "labels after deleting plant-2")

    async def modbus_took_pi01() -> Any:
        got = await statuses("modbus")
        return got == [
            {"nodeName": "pi-01", "readyStatus": "Ready", "selectionStatus": "Succeeded"}
        ]

    await wait_for(modbus_took_pi01)


async def test_pods_placed_for_a_group_leave_a_node_that_left_it(fleet: Fleet) -> None:
    await fleet.add_node("pi-01", site="a")
    await fleet.add_node("pi-02", site="a")
    await fleet.edgectl(
        "apply",
        "-f",
        "-",
        stdin=(
            "apiVersion: apps.kubeedge.io/v1alpha1\n"
            "kind: NodeGroup\nmetadata: {name: a}\nspec: {matchLabels: {site: a}}\n"
        ),
    )

    async def members() -> bool:
        return (
            await fleet.node_group_label("pi-01") == "a"
            and await fleet.node_group_label("pi-02") == "a"
        )

    await wait_for(members)

    def pod(name: str, node: str, selector: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "nodeSelector": selector,
                "containers": [{"name": "app", "image": "busybox:1.36"}],
            },
        }

    ns = "/api/v1/namespaces/default/pods"
    for body in (
        pod("for-a-on-1", "pi-01", {LABEL_BELONGING_TO: "a"}),
        pod("for-a-on-2", "pi-02", {LABEL_BELONGING_TO: "a"}),
        pod("own-on-1", "pi-01", {"site": "a"}),
    ):
        code, obj = await fleet.api("POST", ns, body)
        assert code == 201, obj

    await fleet.kubectl("label", "node", "pi-01", "site=b", "--overwrite")

    async def evicted() -> bool:
        return await fleet.get(f"{ns}/for-a-on-1") is None

    await wait_for(evicted)
    assert await fleet.node_group_label("pi-01") is None
    # pods not placed for the group, and those on members, stay
    assert await fleet.get(f"{ns}/own-on-1") is not None
    assert await fleet.get(f"{ns}/for-a-on-2") is not None


async def test_membership_is_rebuilt_from_the_store_after_a_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Labels of a group deleted while no controller ran are removed when one
    starts (it lists the store; it never saw the delete)."""
    gw = await start_gateway(nursery, tmp_path / "gw", controllers=False)
    for name, labels in (("pi-01", {"site": "a"}), ("pi-02", {"site": "b"})):
        code, obj = await gw.api(
            "POST", "/api/v1/nodes", {"metadata": {"name": name, "labels": labels}}
        )
        assert code == 201, obj
    group_path = "/apis/apps.kubeedge.io/v1alpha1/nodegroups"
    for name, site in (("a", "a"), ("b", "b")):
        code, obj = await gw.api(
            "POST",
            group_path,
            {
                "apiVersion": "apps.kubeedge.io/v1alpha1",
                "kind": "NodeGroup",
                "metadata": {"name": name},
                "spec": {"matchLabels": {"site": site}},
            },
        )
        assert code == 201, obj

    async def label(node: str) -> Any:
        _, obj = await gw.api("GET", f"/api/v1/nodes/{node}")
        return (obj["metadata"].get("labels") or {}).get(LABEL_BELONGING_TO)

    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await run_controllers(
                gw.store, [NodeGroupController(gw.store)], task_status=task_status
            )

    await nursery.start(run)

    async def both() -> bool:
        return await label("pi-01") == "a" and await label("pi-02") == "b"

    await wait_for(both)
    scope.cancel()
    code, _ = await gw.api("DELETE", f"{group_path}/a")
    assert code == 200
    assert await label("pi-01") == "a"  # nobody ran: still there
    scope = trio.CancelScope()
    await nursery.start(run)

    async def released() -> bool:
        return await label("pi-01") is None and await label("pi-02") == "b"

    await wait_for(released)
    scope.cancel()
    gw.scope.cancel()
