"""KubeEdge EdgeApplications against a real gateway (API over TLS, kubectl 1.32
and edgectl as clients) with the controllers running: KubeEdge-shaped YAML
applies unchanged and produces one Deployment per target node group with the
group's overrides and selector; template and group changes propagate (a
``kubectl scale`` of a produced Deployment survives a change that does not
touch replicas); a produced Deployment deleted by hand comes back; manifests
of kinds the gateway does not run are reported in the status and as Events;
deleting the EdgeApplication deletes its workloads (``--cascade=orphan``
leaves them)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from cloudgateway.controllers._nodegroup_plan import LABEL_BELONGING_TO
from tests.cloudgateway.test_nodegroup_e2e import Fleet
from tests.cloudgateway.test_nodegroup_e2e import fleet as fleet  # the fixture
from tests.conftest import wait_for

APPS = "/apis/apps/v1/namespaces/default/deployments"
EDGEAPPS = "/apis/apps.kubeedge.io/v1alpha1/namespaces/default/edgeapplications"

# NodeGroups and an EdgeApplication as KubeEdge's documentation writes them.
KUBEEDGE_YAML = """
apiVersion: apps.kubeedge.io/v1alpha1
kind: NodeGroup
metadata:
  name: hangzhou
spec:
  matchLabels:
    location: hangzhou
---
apiVersion: apps.kubeedge.io/v1alpha1
kind: NodeGroup
metadata:
  name: beijing
spec:
  nodes:
    - pi-03
---
apiVersion: apps.kubeedge.io/v1alpha1
kind: EdgeApplication
metadata:
  name: nginx-app
  namespace: default
spec:
  workloadTemplate:
    manifests:
      - apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: nginx
          labels:
            app: nginx
        spec:
          replicas: 1
          selector:
            matchLabels:
              app: nginx
          template:
            metadata:
              labels:
                app: nginx
            spec:
              containers:
                - name: nginx
                  image: nginx:1.25
                  env:
                    - name: MODE
                      value: cloud
      - apiVersion: v1
        kind: ConfigMap
        metadata:
          name: nginx-conf
        data:
          site: plant
  workloadScope:
    targetNodeGroups:
      - name: hangzhou
        overriders:
          replicas: 2
          imageOverriders:
            - component: Tag
              operator: replace
              value: "1.26"
      - name: beijing
        overriders:
          replicas: 1
          imageOverriders:
            - component: Registry
              operator: replace
              value: registry.beijing.example:5000
          envOverriders:
            - containerName: nginx
              operator: replace
              value:
                - name: MODE
                  value: edge
          resourcesOverriders:
            - containerName: nginx
              value:
                limits:
                  cpu: 500m
                  memory: 128Mi
"""


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBEEDGE_YAML) if d]


def dump(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def container(obj: dict[str, Any]) -> dict[str, Any]:
    c = obj["spec"]["template"]["spec"]["containers"][0]
    assert isinstance(c, dict)
    return c


async def deployment(fleet: Fleet, name: str) -> Any:
    return await fleet.get(f"{APPS}/{name}")


async def app_status(fleet: Fleet, name: str = "nginx-app") -> dict[str, Any]:
    obj = await fleet.get(f"{EDGEAPPS}/{name}")
    status = obj.get("status") if obj else None
    return status if isinstance(status, dict) else {}


async def test_edgeapplication_yaml_produces_a_deployment_per_group(fleet: Fleet) -> None:
    await fleet.add_node("pi-01", location="hangzhou")
    await fleet.add_node("pi-03")
    out = await fleet.kubectl("apply", "-f", "-", stdin=KUBEEDGE_YAML)
    assert "edgeapplication.apps.kubeedge.io/nginx-app created" in out

    async def produced() -> bool:
        return all(
            [
                await deployment(fleet, "nginx-hangzhou"),
                await deployment(fleet, "nginx-beijing"),
                await fleet.get("/api/v1/namespaces/default/configmaps/nginx-conf"),
            ]
        )

    await wait_for(produced)
    app = await fleet.kubectl_json("get", "edgeapplication", "nginx-app")
    owner = {
        "apiVersion": "apps.kubeedge.io/v1alpha1",
        "kind": "EdgeApplication",
        "name": "nginx-app",
        "uid": app["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    hz = await fleet.kubectl_json("get", "deploy", "nginx-hangzhou")
    bj = await fleet.kubectl_json("get", "deployment", "nginx-beijing")
    assert hz["spec"]["replicas"] == 2
    assert container(hz)["image"] == "nginx:1.26"
    assert container(hz)["env"] == [{"name": "MODE", "value": "cloud"}]
    assert bj["spec"]["replicas"] == 1
    assert container(bj)["image"] == "registry.beijing.example:5000/nginx:1.25"
    assert container(bj)["env"] == [{"name": "MODE", "value": "edge"}]
    assert container(bj)["resources"] == {"limits": {"cpu": "500m", "memory": "128Mi"}}
    for obj, group in ((hz, "hangzhou"), (bj, "beijing")):
        assert obj["spec"]["template"]["spec"]["nodeSelector"] == {LABEL_BELONGING_TO: group}
        assert obj["spec"]["selector"] == {"matchLabels": {"app": "nginx"}}
        assert obj["metadata"]["ownerReferences"] == [owner]
    cm = await fleet.kubectl_json("get", "configmap", "nginx-conf")
    assert cm["data"] == {"site": "plant"} and cm["metadata"]["ownerReferences"] == [owner]

    # the groups took their nodes, which the Deployments' selectors name
    async def members() -> bool:
        return (
            await fleet.node_group_label("pi-01") == "hangzhou"
            and await fleet.node_group_label("pi-03") == "beijing"
        )

    await wait_for(members)

    # status: one entry per produced object, as KubeEdge's ManifestStatus
    async def listed() -> Any:
        status = await app_status(fleet)
        return status if len(status.get("workloadStatus") or []) == 3 else None

    status = await wait_for(listed)
    idents = [s["identifier"] for s in status["workloadStatus"]]
    assert idents == [
        {
            "ordinal": 0,
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
            "namespace": "default",
            "name": "nginx-beijing",
        },
        {
            "ordinal": 0,
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
            "namespace": "default",
            "name": "nginx-hangzhou",
        },
        {
            "ordinal": 1,
            "group": "",
            "version": "v1",
            "kind": "ConfigMap",
            "namespace": "default",
            "name": "nginx-conf",
        },
    ]
    assert status["workloadStatus"][2]["conditions"] == "Available"
    (cond,) = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("ManifestsApplied", "True", "Applied")
    # edgectl reads them too
    assert "nginx-app" in await fleet.edgectl("get", "edgeapplications")
    assert "nginx-hangzhou" in await fleet.edgectl("get", "deployments")


async def test_template_and_group_changes_propagate(fleet: Fleet) -> None:
    await fleet.kubectl("apply", "-f", "-", stdin=KUBEEDGE_YAML)

    async def first() -> bool:
        return bool(await deployment(fleet, "nginx-beijing")) and bool(
            await deployment(fleet, "nginx-hangzhou")
        )

    await wait_for(first)
    # someone scales a produced Deployment by hand
    await fleet.kubectl("scale", "deploy", "nginx-hangzhou", "--replicas=5")
    # the template moves to another registry; beijing is dropped, shanghai added
    objs = docs()
    app = objs[2]
    tpl = app["spec"]["workloadTemplate"]["manifests"][0]
    container(tpl)["image"] = "registry.local/nginx:1.25"
    scope = app["spec"]["workloadScope"]["targetNodeGroups"]
    scope[1] = {"name": "shanghai", "overriders": {"replicas": 3}}
    out = await fleet.kubectl("apply", "-f", "-", stdin=dump(objs))
    assert "edgeapplication.apps.kubeedge.io/nginx-app configured" in out

    async def changed() -> bool:
        hz = await deployment(fleet, "nginx-hangzhou")
        sh = await deployment(fleet, "nginx-shanghai")
        return (
            await deployment(fleet, "nginx-beijing") is None
            and sh is not None
            and hz is not None
            and container(hz)["image"] == "registry.local/nginx:1.26"
        )

    await wait_for(changed)
    hz = await deployment(fleet, "nginx-hangzhou")
    assert hz["spec"]["replicas"] == 5  # the template did not change replicas: the scale stays
    sh = await deployment(fleet, "nginx-shanghai")
    assert sh["spec"]["replicas"] == 3
    assert container(sh)["image"] == "registry.local/nginx:1.25"
    assert sh["spec"]["template"]["spec"]["nodeSelector"] == {LABEL_BELONGING_TO: "shanghai"}

    # a changed override of replicas wins over the scale
    scope[0]["overriders"]["replicas"] = 4
    await fleet.kubectl("apply", "-f", "-", stdin=dump(objs))

    async def rescaled() -> bool:
        hz = await deployment(fleet, "nginx-hangzhou")
        return bool(hz and hz["spec"]["replicas"] == 4)

    await wait_for(rescaled)

    # a produced Deployment deleted by hand comes back
    await fleet.kubectl("delete", "deploy", "nginx-shanghai")

    async def back() -> bool:
        return bool(await deployment(fleet, "nginx-shanghai"))

    await wait_for(back)


async def test_manifests_the_gateway_cannot_run_are_reported(fleet: Fleet) -> None:
    objs = docs()
    app = objs[2]
    manifests = app["spec"]["workloadTemplate"]["manifests"]
    manifests.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nginx"},
            "spec": {"selector": {"app": "nginx"}, "ports": [{"port": 80}]},
        }
    )
    bad = copy.deepcopy(manifests[0])
    bad["metadata"]["name"] = "broken"
    container(bad)["imagePullPolicy"] = "Sometimes"
    manifests.append(bad)
    await fleet.edgectl("apply", "-f", "-", stdin=dump(objs))

    async def reported() -> Any:
        status = await app_status(fleet)
        conds = status.get("conditions") or []
        return conds[0] if conds and conds[0]["status"] == "False" else None

    cond = await wait_for(reported)
    assert cond["reason"] == "UnsupportedKind"
    assert "manifests[2]: v1 Service 'nginx': edgeflock does not run this kind" in cond["message"]
    assert (
        "manifests[3] for node group 'hangzhou': Deployment 'broken-hangzhou' is invalid: "
        in (cond["message"])
    )
    assert "spec.template.spec.containers[0].imagePullPolicy" in cond["message"]
    # what can run, runs
    assert await deployment(fleet, "nginx-hangzhou") is not None
    assert await deployment(fleet, "broken-hangzhou") is None
    status = await app_status(fleet)
    unproduced = [s for s in status["workloadStatus"] if s["identifier"]["ordinal"] >= 2]
    assert unproduced == [
        {"identifier": {"ordinal": 2}, "conditions": "Processing"},
        {"identifier": {"ordinal": 3}, "conditions": "Processing"},
    ]

    # and as Warning Events on the application (kubectl describe shows them)
    async def events() -> Any:
        got = await fleet.kubectl_json(
            "get", "events", "--field-selector", "involvedObject.name=nginx-app"
        )
        items = got["items"]
        return items if len(items) >= 3 else None  # Service, and broken for each group

    items = await wait_for(events)
    assert {(e["type"], e["reason"]) for e in items} == {
        ("Warning", "UnsupportedKind"),
        ("Warning", "InvalidManifest"),
    }
    assert all(e["involvedObject"]["kind"] == "EdgeApplication" for e in items)

    # fixing the application clears the condition
    del manifests[2:]
    await fleet.kubectl("apply", "-f", "-", stdin=dump(objs))

    async def cleared() -> bool:
        conds = (await app_status(fleet)).get("conditions") or []
        return bool(conds and conds[0]["status"] == "True")

    await wait_for(cleared)


@pytest.mark.parametrize("cascade", ["background", "orphan"])
async def test_deleting_the_edgeapplication_deletes_its_workloads(
    fleet: Fleet, cascade: str
) -> None:
    await fleet.kubectl("apply", "-f", "-", stdin=KUBEEDGE_YAML)

    async def produced() -> bool:
        return bool(await deployment(fleet, "nginx-beijing")) and bool(
            await fleet.get("/api/v1/namespaces/default/configmaps/nginx-conf")
        )

    await wait_for(produced)
    await fleet.kubectl("delete", "edgeapp", "nginx-app", f"--cascade={cascade}")

    async def app_gone() -> bool:
        return await fleet.get(f"{EDGEAPPS}/nginx-app") is None

    await wait_for(app_gone)
    paths = [
        f"{APPS}/nginx-hangzhou",
        f"{APPS}/nginx-beijing",
        "/api/v1/namespaces/default/configmaps/nginx-conf",
    ]
    if cascade == "background":

        async def all_gone() -> bool:
            return all([await fleet.get(p) is None for p in paths])

        await wait_for(all_gone)
    else:
        for p in paths:
            obj = await fleet.get(p)
            assert obj is not None and not obj["metadata"].get("ownerReferences")


async def test_pods_run_on_their_groups_nodes(fleet: Fleet) -> None:
    """With the scheduler and the Deployment/ReplicaSet controllers: each
    group's pods are bound to that group's nodes, follow a node leaving the
    group, and go with the EdgeApplication."""
    await fleet.add_node("pi-01", location="hangzhou")
    await fleet.add_node("pi-02", location="hangzhou")
    await fleet.add_node("pi-03")
    await fleet.add_node("pi-04", location="elsewhere")
    await fleet.kubectl("apply", "-f", "-", stdin=KUBEEDGE_YAML)

    async def placement() -> dict[str, list[str]]:
        pods = await fleet.get("/api/v1/namespaces/default/pods")
        out: dict[str, list[str]] = {}
        for p in pods["items"]:
            owner = (p["metadata"].get("ownerReferences") or [{}])[0].get("name", "")
            group = "hangzhou" if owner.startswith("nginx-hangzhou-") else "beijing"
            out.setdefault(group, []).append(p["spec"].get("nodeName") or "-")
        return {g: sorted(nodes) for g, nodes in out.items()}

    async def placed() -> bool:
        return await placement() == {"hangzhou": ["pi-01", "pi-02"], "beijing": ["pi-03"]}

    await wait_for(placed, what=lambda: "pods spread over their groups' nodes")
    # pi-02 leaves hangzhou: its pod is evicted and replaced on hangzhou's other node
    await fleet.kubectl("label", "node", "pi-02", "location=elsewhere", "--overwrite")

    async def moved() -> bool:
        return await placement() == {"hangzhou": ["pi-01", "pi-01"], "beijing": ["pi-03"]}

    await wait_for(moved, what=lambda: "hangzhou's pods on pi-01 only")
    await fleet.kubectl("delete", "edgeapplication", "nginx-app")

    async def no_pods() -> bool:
        pods = await fleet.get("/api/v1/namespaces/default/pods")
        return not pods["items"]

    await wait_for(no_pods, what=lambda: "pods deleted with the application")
