"""The fleet workload kinds over the API (HTTP, a real store): CRUD for each,
422 answers with field paths, immutable selectors, the status and scale
subresources with Kubernetes' generation rules, discovery, OpenAPI, tables,
and that none of them is ever placed on a board."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from tests.cloudgateway.apps_fixtures import SAMPLES, daemonset, deployment, replicaset
from tests.cloudgateway.test_api import Api, assert_status, start_api

APPS = "/apis/apps/v1/namespaces/default"
KE = "/apis/apps.kubeedge.io/v1alpha1"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


def collection(kind: str) -> str:
    r = edgeproto.resource_by_kind(kind)
    if r.group == "apps":
        return f"{APPS}/{r.name}"
    if r.group != "apps.kubeedge.io":
        return f"/apis/{r.api_version}/{r.name}"
    return f"{KE}/namespaces/default/{r.name}" if r.namespaced else f"{KE}/{r.name}"


@pytest.mark.parametrize("kind", sorted(SAMPLES))
async def test_crud(api: Api, kind: str) -> None:
    obj = SAMPLES[kind]()
    name = obj["metadata"]["name"]
    url = f"{collection(kind)}/{name}"
    created = await api.create(collection(kind), obj)
    assert created["kind"] == kind and created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    status, got = await api.call("GET", url)
    assert status == 200 and got == created
    status, listed = await api.call("GET", collection(kind))
    assert status == 200 and listed["kind"] == f"{kind}List"
    assert [i["metadata"]["name"] for i in listed["items"]] == [name]
    status, body = await api.call("POST", collection(kind), obj)
    assert status == 409
    assert_status(body, 409, "AlreadyExists")
    # PUT with the current resourceVersion, then again with the stale one.
    changed = json.loads(json.dumps(got))
    changed["metadata"]["labels"] = {"team": "edge"}
    status, put = await api.call("PUT", url, changed)
    assert status == 200, put
    assert put["metadata"]["labels"] == {"team": "edge"}
    assert put["metadata"]["generation"] == 1  # labels are not the spec
    status, body = await api.call("PUT", url, changed)
    assert status == 409
    assert_status(body, 409, "Conflict")
    # Merge patch, then delete.
    status, patched = await api.call(
        "PATCH", url, {"metadata": {"annotations": {"a": "b"}}}, ctype=MERGE
    )
    assert status == 200 and patched["metadata"]["annotations"] == {"a": "b"}, patched
    status, _ = await api.call("DELETE", url)
    assert status == 200
    status, body = await api.call("GET", url)
    assert status == 404
    assert_status(body, 404, "NotFound")


async def test_strategic_merge_uses_the_pod_template_merge_keys(api: Api) -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["containers"].append(
        {"name": "side", "image": "busybox:1.36", "env": [{"name": "A", "value": "1"}]}
    )
    await api.create(f"{APPS}/deployments", d)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "side",
                            "image": "busybox:1.37",
                            "env": [{"name": "B", "value": "2"}],
                        }
                    ]
                }
            }
        }
    }
    status, body = await api.call("PATCH", f"{APPS}/deployments/web", patch, ctype=STRATEGIC)
    assert status == 200, body
    app, side = body["spec"]["template"]["spec"]["containers"]
    assert app == {"name": "app", "image": "busybox:1.36"}
    assert side["image"] == "busybox:1.37"
    assert side["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert body["metadata"]["generation"] == 2
    # maxSurge as a percentage, then as a number: int-or-string either way.
    for value in ("50%", 2):
        status, body = await api.call(
            "PATCH",
            f"{APPS}/deployments/web",
            {"spec": {"strategy": {"rollingUpdate": {"maxSurge": value}}}},
            ctype=STRATEGIC,
        )
        assert status == 200 and body["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == value


async def test_invalid_answers_name_the_field(api: Api) -> None:
    ds = daemonset()
    ds["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    status, body = await api.call("POST", f"{APPS}/daemonsets", ds)
    assert status == 422, body
    assert_status(body, 422, "Invalid")
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.template.metadata.labels",
            "message": 'Invalid value: {"app":"agent"}: `selector` does not match template `labels`',
        }
    ]
    assert body["message"].startswith(
        'DaemonSet "agent" is invalid: spec.template.metadata.labels:'
    )
    del ds["spec"]["selector"]
    status, body = await api.call("POST", f"{APPS}/daemonsets", ds)
    assert status == 422
    assert {
        "reason": "FieldValueRequired",
        "field": "spec.selector",
        "message": "Required value",
    } in (body["details"]["causes"])
    assert "spec.selector: Required value" in body["message"]
    status, _ = await api.call("GET", f"{APPS}/daemonsets/agent")
    assert status == 404  # nothing was written
    # A patch that breaks the object is refused and changes nothing.
    await api.create(f"{APPS}/daemonsets", daemonset())
    status, body = await api.call(
        "PATCH",
        f"{APPS}/daemonsets/agent",
        {"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "101%"}}}},
        ctype=MERGE,
    )
    assert status == 422, body
    assert body["details"]["causes"][0]["field"] == (
        "spec.updateStrategy.rollingUpdate.maxUnavailable"
    )
    _, stored = await api.call("GET", f"{APPS}/daemonsets/agent")
    assert stored["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


async def test_a_selector_is_immutable_by_every_write(api: Api) -> None:
    created = await api.create(f"{APPS}/deployments", deployment())
    url = f"{APPS}/deployments/web"
    new_labels = {"app": "web", "v": "2"}

    def moved(obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        obj["spec"]["selector"] = {"matchLabels": new_labels}
        obj["spec"]["template"]["metadata"]["labels"] = new_labels
        return obj

    attempts: list[tuple[str, Any, str | None]] = [
        ("PUT", moved(created), None),
        ("PATCH", {"spec": moved(created)["spec"]}, MERGE),
        ("PATCH", {"spec": moved(created)["spec"]}, STRATEGIC),
        (
            "PATCH",
            [{"op": "add", "path": "/spec/selector/matchLabels/v", "value": "2"}],
            JSON_PATCH,
        ),
    ]
    for method, body_, ctype in attempts:
        status, body = await api.call(method, url, body_, ctype=ctype)
        assert status == 422, (method, ctype, body)
        causes = {c["field"]: c for c in body["details"]["causes"]}
        assert causes["spec.selector"]["message"].endswith("field is immutable"), body
    applied = moved(deployment())
    status, body = await api.call(
        "PATCH",
        f"{url}?fieldManager=me&force=true",
        raw=json.dumps(applied).encode(),
        ctype=APPLY,
    )
    assert status == 422 and "field is immutable" in body["message"], body
    _, stored = await api.call("GET", url)
    assert stored["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_status_subresource_and_generation(api: Api) -> None:
    created = await api.create(f"{APPS}/daemonsets", daemonset())
    url = f"{APPS}/daemonsets/agent"
    status_ = {
        "desiredNumberScheduled": 2,
        "currentNumberScheduled": 2,
        "numberReady": 1,
        "numberMisscheduled": 0,
        "updatedNumberScheduled": 2,
        "numberAvailable": 1,
        "observedGeneration": 1,
    }
    # A status write keeps the spec (and its generation), whatever the body says of it.
    body_ = json.loads(json.dumps(created))
    body_["status"] = status_
    body_["spec"]["minReadySeconds"] = 99
    status, got = await api.call("PUT", f"{url}/status", body_)
    assert status == 200, got
    assert got["status"] == status_ and got["spec"]["minReadySeconds"] == 0
    assert got["metadata"]["generation"] == 1
    status, got = await api.call(
        "PATCH", f"{url}/status", {"status": {"numberReady": 2}}, ctype=MERGE
    )
    assert status == 200 and got["status"]["numberReady"] == 2
    assert got["metadata"]["generation"] == 1
    # A spec write keeps the status, and moves the generation.
    put = json.loads(json.dumps(got))
    put["spec"]["minReadySeconds"] = 5
    put["status"] = {"numberReady": 0}
    status, got = await api.call("PUT", url, put)
    assert status == 200, got
    assert got["status"]["numberReady"] == 2 and got["metadata"]["generation"] == 2
    # Labels, annotations and SSA bookkeeping are not the spec.
    status, got = await api.call("PATCH", url, {"metadata": {"labels": {"x": "y"}}}, ctype=MERGE)
    assert status == 200 and got["metadata"]["generation"] == 2
    # controllerrevisions have no status subresource
    await api.create(f"{APPS}/controllerrevisions", SAMPLES["ControllerRevision"]())
    status, _ = await api.call("GET", f"{APPS}/controllerrevisions/agent-6b9f/status")
    assert status == 404


async def test_scale_subresource(api: Api) -> None:
    await api.create(f"{APPS}/deployments", deployment(replicas=3))
    url = f"{APPS}/deployments/web/scale"
    status, scale = await api.call("GET", url)
    assert status == 200, scale
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 0, "selector": "app=web"}
    rv = scale["metadata"]["resourceVersion"]
    scale["spec"]["replicas"] = 5
    status, got = await api.call("PUT", url, scale)
    assert status == 200 and got["spec"]["replicas"] == 5, got
    status, got = await api.call("PUT", url, scale)  # the same resourceVersion again
    assert status == 409 and got["reason"] == "Conflict"
    status, got = await api.call("PATCH", url, {"spec": {"replicas": 1}}, ctype=MERGE)
    assert status == 200 and got["spec"]["replicas"] == 1
    status, got = await api.call(
        "PATCH", url, [{"op": "replace", "path": "/spec/replicas", "value": 0}], ctype=JSON_PATCH
    )
    assert status == 200 and got["spec"]["replicas"] == 0
    status, got = await api.call("PATCH", url, {"spec": {"replicas": -1}}, ctype=MERGE)
    assert status == 422, got
    assert got["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.replicas",
            "message": "Invalid value: -1: must be greater than or equal to 0",
        }
    ]
    status, dep = await api.call("GET", f"{APPS}/deployments/web")
    assert dep["spec"]["replicas"] == 0 and dep["metadata"]["resourceVersion"] != rv
    assert dep["metadata"]["generation"] == 4  # three scale writes, each a spec change
    fields = [m for m in dep["metadata"]["managedFields"] if "f:replicas" in json.dumps(m)]
    assert fields, dep["metadata"]["managedFields"]
    # dryRun scales nothing.
    status, got = await api.call(
        "PATCH", f"{url}?dryRun=All", {"spec": {"replicas": 9}}, ctype=MERGE
    )
    assert status == 200 and got["spec"]["replicas"] == 9
    _, dep = await api.call("GET", f"{APPS}/deployments/web")
    assert dep["spec"]["replicas"] == 0
    # ReplicaSets scale too; DaemonSets have no scale.
    await api.create(f"{APPS}/replicasets", replicaset())
    status, got = await api.call(
        "PATCH", f"{APPS}/replicasets/web-5d4c/scale", {"spec": {"replicas": 4}}, ctype=MERGE
    )
    assert status == 200 and got["spec"]["replicas"] == 4
    await api.create(f"{APPS}/daemonsets", daemonset())
    status, _ = await api.call("GET", f"{APPS}/daemonsets/agent/scale")
    assert status == 404
    status, _ = await api.call("GET", f"{APPS}/deployments/nope/scale")
    assert status == 404
    status, got = await api.call("PATCH", url, raw=b"spec: {replicas: 2}", ctype=APPLY)
    assert status == 415, got


async def test_discovery(api: Api) -> None:
    status, body = await api.call("GET", "/apis/apps")
    assert status == 200 and body["preferredVersion"]["groupVersion"] == "apps/v1"
    status, body = await api.call("GET", "/apis/apps/v1")
    assert status == 200 and body["groupVersion"] == "apps/v1"
    by_name = {r["name"]: r for r in body["resources"]}
    assert set(by_name) == {
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/status",
        "deployments/scale",
        "replicasets",
        "replicasets/status",
        "replicasets/scale",
        "controllerrevisions",
    }
    assert by_name["daemonsets"]["shortNames"] == ["ds"]
    assert by_name["deployments"]["shortNames"] == ["deploy"]
    assert by_name["replicasets"]["shortNames"] == ["rs"]
    assert "shortNames" not in by_name["controllerrevisions"]
    for name in ("daemonsets", "deployments", "replicasets"):
        assert by_name[name]["categories"] == ["all"]
        assert "watch" in by_name[name]["verbs"] and "patch" in by_name[name]["verbs"]
    assert "categories" not in by_name["controllerrevisions"]
    assert by_name["deployments/scale"] == {
        "name": "deployments/scale",
        "singularName": "",
        "namespaced": True,
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
        "verbs": ["get", "patch", "update"],
    }
    status, body = await api.call("GET", "/apis/apps.kubeedge.io/v1alpha1")
    by_name = {r["name"]: r for r in body["resources"]}
    assert set(by_name) == {
        "nodegroups",
        "nodegroups/status",
        "edgeapplications",
        "edgeapplications/status",
    }
    assert by_name["nodegroups"]["namespaced"] is False
    assert by_name["nodegroups"]["shortNames"] == ["ng"]
    assert by_name["edgeapplications"]["shortNames"] == ["edgeapp", "edgeapps", "eapp"]


async def test_openapi_describes_the_workloads(api: Api) -> None:
    _, doc = await api.call("GET", "/openapi/v3/apis/apps/v1")
    schemas = doc["components"]["schemas"]
    ds = schemas["io.k8s.api.apps.v1.DaemonSet"]
    assert ds["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "version": "v1", "kind": "DaemonSet"}
    ]
    spec = schemas["io.k8s.api.apps.v1.DaemonSetSpec"]
    assert spec["required"] == ["selector", "template"]
    template = schemas["io.k8s.api.core.v1.PodTemplateSpec"]
    assert template["properties"]["spec"] == {
        "allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}]
    }
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {
        "description": "A whole number or a percentage such as '25%'.",
        "type": "string",
        "format": "int-or-string",
    }
    conditions = schemas["io.k8s.api.apps.v1.DeploymentStatus"]["properties"]["conditions"]
    assert conditions["x-kubernetes-patch-merge-key"] == "type"
    assert schemas["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"] == [
        {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    ]
    paths = doc["paths"]
    base = "/apis/apps/v1/namespaces/{namespace}"
    assert "patch" in paths[f"{base}/deployments/{{name}}/scale"]
    assert f"{base}/daemonsets/{{name}}/scale" not in paths
    assert f"{base}/controllerrevisions/{{name}}/status" not in paths
    assert f"{base}/daemonsets/{{name}}/status" in paths
    _, doc = await api.call("GET", "/openapi/v3/apis/apps.kubeedge.io/v1alpha1")
    schemas = doc["components"]["schemas"]
    assert "io.kubeedge.apps.v1alpha1.NodeGroup" in schemas
    assert "/apis/apps.kubeedge.io/v1alpha1/nodegroups/{name}" in doc["paths"]
    overriders = schemas["io.kubeedge.apps.v1alpha1.Overriders"]["properties"]
    assert set(overriders) == {
        "replicas",
        "imageOverriders",
        "envOverriders",
        "commandOverriders",
        "argsOverriders",
        "resourcesOverriders",
    }
    _, v2 = await api.call("GET", "/openapi/v2")
    assert "io.k8s.api.apps.v1.Deployment" in v2["definitions"]
    assert "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}/scale" in v2["paths"]


async def test_tables(api: Api) -> None:
    ds = daemonset()
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"site": "a", "arch": "arm64"}
    await api.create(f"{APPS}/daemonsets", ds)
    status, got = await api.call(
        "PUT",
        f"{APPS}/daemonsets/agent/status",
        {
            "status": {
                "desiredNumberScheduled": 3,
                "currentNumberScheduled": 2,
                "numberReady": 1,
                "updatedNumberScheduled": 2,
                "numberAvailable": 1,
                "numberMisscheduled": 0,
            }
        },
    )
    assert status == 200, got
    await api.create(f"{APPS}/deployments", deployment(replicas=3))
    await api.create(f"{APPS}/replicasets", replicaset(replicas=2))
    rev = SAMPLES["ControllerRevision"]()
    rev["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": "agent",
            "uid": "u-1",
            "controller": True,
        }
    ]
    await api.create(f"{APPS}/controllerrevisions", rev)
    await api.create(f"{KE}/nodegroups", SAMPLES["NodeGroup"]())
    await api.create(f"{KE}/namespaces/default/edgeapplications", SAMPLES["EdgeApplication"]())

    async def table(path: str) -> tuple[list[str], list[str], list[Any]]:
        status, t = await api.call("GET", path, accept=TABLE)
        assert status == 200 and t["kind"] == "Table", t
        cols = t["columnDefinitions"]
        return (
            [c["name"].upper() for c in cols if c["priority"] == 0],
            [c["name"].upper() for c in cols if c["priority"] == 1],
            [r["cells"] for r in t["rows"]],
        )

    cols, wide, rows = await table(f"{APPS}/daemonsets")
    assert cols == [
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE SELECTOR",
        "AGE",
    ]
    assert wide == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[0][:7] == ["agent", "3", "2", "1", "2", "1", "arch=arm64,site=a"]
    assert rows[0][8:] == ["app", "busybox:1.36", "app=agent"]
    cols, wide, rows = await table(f"{APPS}/deployments")
    assert cols == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert wide == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[0][:4] == ["web", "0/3", "0", "0"]
    cols, _, rows = await table(f"{APPS}/replicasets")
    assert cols == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert rows[0][:4] == ["web-5d4c", "2", "0", "0"]
    cols, _, rows = await table(f"{APPS}/controllerrevisions")
    assert cols == ["NAME", "CONTROLLER", "REVISION", "AGE"]
    assert rows[0][:3] == ["agent-6b9f", "daemonset.apps/agent", "1"]
    cols, wide, rows = await table(f"{KE}/nodegroups")
    assert cols == ["NAME", "AGE"] and wide == ["NODES", "MATCH-LABELS"]
    assert rows[0][0] == "plant-2" and rows[0][2:] == ["0", "site=plant-2"]
    cols, wide, rows = await table(f"{KE}/namespaces/default/edgeapplications")
    assert cols == ["NAME", "AGE"] and wide == ["NODE-GROUPS", "MANIFESTS"]
    assert rows[0][0] == "sensor" and rows[0][2:] == ["plant-2", "1"]


async def test_no_workload_reaches_a_board(api: Api) -> None:
    """Whatever a workload says (a template's nodeName, the node label), it is
    placed on no node: no view holds it."""
    for kind, make in SAMPLES.items():
        obj = make()
        obj["metadata"]["labels"] = {edgeproto.NODE_LABEL: "pi-01"}
        if isinstance(obj.get("spec"), dict) and "template" in obj["spec"]:
            obj["spec"]["template"]["spec"]["nodeName"] = "pi-01"
        created = await api.create(collection(kind), obj)
        key = edgeproto.key_of(created)
        assert (await api.store.get(key)).node is None, kind
    from cloudgateway._view import compute_view

    view = await api.store.call(compute_view, api.store.backend, "pi-01")
    assert view.records == {}
