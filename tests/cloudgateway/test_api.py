"""The Kubernetes-shaped API: ApiServer over a real SqliteBackend on a real
loopback socket, driven with real HTTP; plus the pure parts (validation, merge
patch, selectors) directly, with Hypothesis for the validator."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeproto
from cloudgateway._api import (
    ApiError,
    ApiServer,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
)
from cloudgateway._errors import GatewayError
from cloudgateway._http import HttpConfig
from cloudgateway._store import SqliteBackend, Store
from cloudgateway._validate import MAX_OBJECT_BYTES, Invalid, validate
from tests.cloudgateway.apps_fixtures import SAMPLES
from tests.cloudgateway.test_http import GUARD, Client, fetch
from tests.conftest import wait_for

TOKEN = "s3cret-admin-token"
NS = "/api/v1/namespaces/default"
PODS = edgeproto.resource_by_name("pods")
NODES = edgeproto.resource_by_name("nodes")
CONFIGMAPS = edgeproto.resource_by_name("configmaps")
SECRETS = edgeproto.resource_by_name("secrets")


def pod(
    name: str, node: str = "pi-01", labels: dict[str, str] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **({"labels": labels} if labels else {}), **meta},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox:1.36"}]},
    }


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "data": data or {"k": "v"},
    }


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}


def nested(depth: int) -> Any:
    out: Any = []
    for _ in range(depth - 1):
        out = [out]
    return out


def names(body: dict[str, Any]) -> list[str]:
    return [i["metadata"]["name"] for i in body["items"]]


@dataclass
class Api:
    port: int
    server: ApiServer
    store: Store
    backend: SqliteBackend

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        ctype: str | None = None,
        raw: bytes | None = None,
        accept: str | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        headers = [("accept", accept)] if accept else []
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        if data or ctype:
            headers.append(("content-type", ctype or "application/json"))
        status, hs, payload = await fetch(self.port, method, path, data, headers)
        if hs.get("content-type") == "application/json":
            return status, json.loads(payload)
        return status, payload

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.call("POST", path, obj)
        assert status == 201, body
        return dict(body)

    async def namespace(self, name: str) -> None:
        """Create namespace ``name`` (objects go only into namespaces that exist)."""
        await self.create("/api/v1/namespaces", {"metadata": {"name": name}})

    async def watch(self, path: str) -> Watch:
        client = await Client.connect(self.port)
        await client.send_request("GET", path, headers=[("authorization", f"Bearer {TOKEN}")])
        head = await client.read_head()
        assert head.status_code == 200
        return Watch(client)

    async def wait_stat(self, name: str, value: int) -> None:
        # polled: the server updates counters as it goes, with no event to wait on
        await wait_for(
            lambda: self.server.statistics().get(name) == value,
            timeout=GUARD,
            interval=0.01,
            what=f"API server statistics {name} == {value}",
        )


class Watch:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.buf = b""

    async def next(self) -> dict[str, Any] | None:
        """The next event, or None once the server ends the stream."""
        with trio.fail_after(GUARD):
            while b"\n" not in self.buf:
                chunk = await self.client.read_chunk()
                if chunk is None:
                    assert self.buf == b""
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    async def take(self, n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            ev = await self.next()
            assert ev is not None, f"stream ended after {out}"
            out.append((ev["type"], ev["object"]["metadata"]["name"]))
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


def failing_node_of(key: str, obj: dict[str, Any]) -> str | None:
    if (obj.get("metadata") or {}).get("name") == "explode":
        raise RuntimeError("cannot place this one")
    return edgeproto.owner_node(key, obj)


async def start_api(nursery: trio.Nursery, path: Path, **store_kw: Any) -> AsyncIterator[Api]:
    backend = SqliteBackend(str(path), node_of=failing_node_of)
    store = Store(backend, **store_kw)
    server = ApiServer(store, admin_token=TOKEN, node_names=lambda: ["pi-01", "pi-02"])
    port = await nursery.start(server.run, HttpConfig(host="127.0.0.1", port=0))
    try:
        yield Api(port, server, store, backend)
    finally:
        backend.close()


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


def assert_status(body: Any, code: int, reason: str) -> None:
    assert isinstance(body, dict), body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1", body
    assert body["status"] == "Failure" and body["metadata"] == {}, body
    assert body["code"] == code and body["reason"] == reason, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["details"], dict), body


# ---- auth, health, discovery ----------------------------------------------------------


async def test_health_and_version_need_no_token_everything_else_does(api: Api) -> None:
    status, body = await api.call("GET", "/healthz", token=None)
    assert status == 200 and body == b"ok"
    status, body = await api.call("GET", "/version", token=None)
    assert status == 200 and body["gitVersion"] == "v1.30.0-edgeflock"
    assert (body["major"], body["minor"]) == ("1", "30")
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        status, body = await api.call("GET", "/api/v1/nodes", token=token)
        assert status == 401
        assert_status(body, 401, "Unauthorized")
    for path in ("/api", "/apis", "/api/v1", f"{NS}/pods", "/metrics"):
        status, _ = await api.call("GET", path, token=None)
        assert status == 401
    # Not a bearer token.
    status, _, _ = await fetch(
        api.port, "GET", "/api/v1/nodes", headers=[("authorization", f"Basic {TOKEN}")]
    )
    assert status == 401


def test_an_empty_admin_token_is_refused(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        for token in ("", "  \n"):
            with pytest.raises(GatewayError):
                ApiServer(Store(backend), admin_token=token)
    finally:
        backend.close()


async def test_discovery(api: Api) -> None:
    status, body = await api.call("GET", "/api")
    assert status == 200 and body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    status, body = await api.call("GET", "/apis")
    assert status == 200 and body["kind"] == "APIGroupList"
    groups = {g["name"]: g for g in body["groups"]}
    assert list(groups) == [
        "apps",
        "apps.kubeedge.io",
        "authorization.k8s.io",
        "devices.kubeedge.io",
        "operations.kubeedge.io",
    ]
    devices = groups["devices.kubeedge.io"]
    assert devices["preferredVersion"]["groupVersion"] == "devices.kubeedge.io/v1beta1"
    status, body = await api.call("GET", "/apis/devices.kubeedge.io/v1beta1")
    assert status == 200 and body["kind"] == "APIResourceList"
    assert {r["name"] for r in body["resources"]} == {
        "devices",
        "devices/status",
        "devicemodels",
        "devicemodels/status",
    }
    status, body = await api.call("GET", "/api/v1/")
    assert status == 200 and body["kind"] == "APIResourceList" and body["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in body["resources"]}
    core = [r for r in edgeproto.RESOURCES if not r.group]
    assert set(by_name) == {
        *(r.name for r in core),
        *(f"{r.name}/status" for r in core),
        "services",  # read-only and empty, for kubectl cluster-info
    }
    assert by_name["pods"] == {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
        "shortNames": ["po"],
        "categories": ["all"],  # kubectl get all
    }
    assert by_name["nodes"]["namespaced"] is False and by_name["nodes"]["shortNames"] == ["no"]
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert "shortNames" not in by_name["secrets"]
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    for path in (
        "/api/v2",
        "/apis/devices.kubeedge.io/v1",
        "/apis/x/v1",
        "/nope",
        "/api/v1/widgets",
    ):
        status, body = await api.call("GET", path)
        assert status == 404, path
        assert_status(body, 404, "NotFound")
    status, body = await api.call("POST", "/api", {})
    assert status == 405
    assert_status(body, 405, "MethodNotAllowed")


# ---- CRUD -------------------------------------------------------------------------------


async def test_create_get_replace_delete(api: Api) -> None:
    created = await api.create(f"{NS}/pods", pod("web"))
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) == api.store.current_rev()
    status, got = await api.call("GET", f"{NS}/pods/web")
    assert status == 200 and got == created
    status, body = await api.call("POST", f"{NS}/pods", pod("web"))
    assert status == 409
    assert_status(body, 409, "AlreadyExists")
    assert body["details"] == {"name": "web", "kind": "pods"}
    assert body["message"] == 'pods "web" already exists'
    # PUT with the current resourceVersion.
    got["spec"]["containers"][0]["image"] = "busybox:1.37"
    status, replaced = await api.call("PUT", f"{NS}/pods/web", got)
    assert status == 200 and replaced["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced["metadata"]["uid"] == meta["uid"]
    # PUT with a stale one: Kubernetes' conflict, word for word.
    got["spec"]["containers"][0]["image"] = "busybox:1.38"
    status, body = await api.call("PUT", f"{NS}/pods/web", got)
    assert status == 409
    assert_status(body, 409, "Conflict")
    assert body["message"] == (
        'Operation cannot be fulfilled on pods "web": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    # PUT without a resourceVersion: last writer wins.
    del got["metadata"]["resourceVersion"]
    status, body = await api.call("PUT", f"{NS}/pods/web", got)
    assert status == 200 and body["spec"]["containers"][0]["image"] == "busybox:1.38"
    # Missing objects.
    status, body = await api.call("GET", f"{NS}/pods/nope")
    assert status == 404
    assert_status(body, 404, "NotFound")
    assert body["message"] == 'pods "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "pods"}
    status, body = await api.call("PUT", f"{NS}/pods/nope", pod("nope"))
    assert status == 404
    assert_status(body, 404, "NotFound")
    # DELETE answers with the deleted object; a second DELETE is a 404.
    status, body = await api.call("DELETE", f"{NS}/pods/web")
    assert status == 200 and body["kind"] == "Pod" and body["metadata"]["name"] == "web"
    status, body = await api.call("DELETE", f"{NS}/pods/web")
    assert status == 404
    assert_status(body, 404, "NotFound")
    status, _ = await api.call("GET", f"{NS}/pods/web")
    assert status == 404


async def test_put_keeps_status_and_the_status_subresource_writes_only_status(api: Api) -> None:
    await api.create("/api/v1/nodes", node("pi-01"))
    status, body = await api.call(
        "PUT",
        "/api/v1/nodes/pi-01/status",
        {
            "metadata": {"name": "pi-01"},
            "spec": {"unschedulable": True},  # ignored: only .status is written
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    assert status == 200, body
    assert body["status"]["conditions"][0]["status"] == "True"
    assert body["spec"] == {}
    generation = body["metadata"]["generation"]
    # A PUT of the object keeps the current status whatever the body says.
    obj = node("pi-01")
    obj["spec"] = {"unschedulable": True}
    obj["status"] = {"phase": "bogus"}
    status, body = await api.call("PUT", "/api/v1/nodes/pi-01", obj)
    assert status == 200
    assert body["spec"] == {"unschedulable": True}
    assert body["status"]["conditions"][0]["type"] == "Ready" and "phase" not in body["status"]
    assert body["metadata"]["generation"] == generation + 1
    # Status PUT with a stale resourceVersion: conflict; on a missing object: 404.
    status, body = await api.call(
        "PUT", "/api/v1/nodes/pi-01/status", {"metadata": {"resourceVersion": "1"}, "status": {}}
    )
    assert status == 409
    assert_status(body, 409, "Conflict")
    status, body = await api.call("PUT", "/api/v1/nodes/ghost/status", {"status": {}})
    assert status == 404
    # A status that is not an object, a body that is not one, or another name.
    status, body = await api.call("PUT", "/api/v1/nodes/pi-01/status", {"status": [1]})
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "status"
    status, body = await api.call("PUT", "/api/v1/nodes/pi-01/status", [1])
    assert status == 400
    status, body = await api.call(
        "PUT", "/api/v1/nodes/pi-01/status", {"metadata": {"name": "other"}, "status": {}}
    )
    assert status == 400
    assert_status(body, 400, "BadRequest")
    # GET of the subresource is the whole object; DELETE of it is not allowed.
    status, body = await api.call("GET", "/api/v1/nodes/pi-01/status")
    assert status == 200 and body["kind"] == "Node"
    status, body = await api.call("DELETE", "/api/v1/nodes/pi-01/status")
    assert status == 405
    assert_status(body, 405, "MethodNotAllowed")


async def test_routes_and_methods(api: Api) -> None:
    await api.create("/api/v1/nodes", node("pi-01"))
    await api.create(f"{NS}/pods", pod("web"))
    cases = [
        ("GET", "/api/v1/namespaces/default/nodes/pi-01", 404),  # nodes are cluster-scoped
        ("GET", "/api/v1/pods/web", 404),  # a pod needs its namespace
        ("GET", f"{NS}/pods/web/logs", 404),  # no such subresource
        ("GET", f"{NS}/pods/web/status/x", 404),
        ("GET", "/api/v1/namespaces//pods", 404),
        ("GET", "/api/v1/namespaces/default/widgets", 404),
        ("POST", f"{NS}/pods/web", 405),
        ("DELETE", "/api/v1/pods", 405),  # deletecollection needs a namespace
        ("DELETE", "/api/v1/namespaces", 405),  # namespaces go one by one
        ("PUT", f"{NS}/pods", 405),
        ("POST", "/api/v1/pods", 405),  # create needs a namespace
        ("GET", "/api/v1/nodes/pi-01", 200),
        ("GET", "/api/v1/pods", 200),
    ]
    for method, path, code in cases:
        status, body = await api.call(method, path, {} if method in ("POST", "PUT") else None)
        assert status == code, (method, path, body)
        if code >= 400:
            assert body["kind"] == "Status" and body["code"] == code


async def test_namespace_kind_and_name_must_match_the_url(api: Api) -> None:
    other = pod("x", namespace="other")
    status, body = await api.call("POST", f"{NS}/pods", other)
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.namespace"
    await api.namespace("other")
    created = await api.create("/api/v1/namespaces/other/pods", pod("x"))
    assert created["metadata"]["namespace"] == "other"
    wrong_kind = cm("y")
    status, body = await api.call("POST", f"{NS}/pods", wrong_kind)
    assert status == 422
    assert {c["field"] for c in body["details"]["causes"]} >= {"kind"}
    wrong_version = pod("z")
    wrong_version["apiVersion"] = "apps/v1"
    status, body = await api.call("POST", f"{NS}/pods", wrong_version)
    assert status == 422 and body["details"]["causes"][0]["field"] == "apiVersion"
    status, body = await api.call("PUT", "/api/v1/namespaces/other/pods/x", pod("renamed"))
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.name"
    # Kind and apiVersion may be left out: the URL says what they are.
    bare = {"metadata": {"name": "bare"}, "data": {"a": "b"}}
    created = await api.create(f"{NS}/configmaps", bare)
    assert created["kind"] == "ConfigMap" and created["apiVersion"] == "v1"
    # generateName picks a fresh name.
    gen = await api.create(f"{NS}/configmaps", {"metadata": {"generateName": "job-"}})
    assert gen["metadata"]["name"].startswith("job-") and len(gen["metadata"]["name"]) == 9


async def test_bad_bodies(api: Api) -> None:
    cases = [
        b"{not json",
        b"",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"\xff\xfe\x00garbage",
        b'{"a": "\\ud800"}',  # a lone surrogate cannot be stored
        b"[" * 100 + b"]" * 100,
        b"1" * 5000,
    ]
    for raw in cases:
        status, body = await api.call("POST", f"{NS}/configmaps", raw=raw)
        assert status == 400, raw[:20]
        assert_status(body, 400, "BadRequest")
    status, body = await api.call("POST", f"{NS}/configmaps", raw=b"[1, 2]")
    assert status == 422
    assert_status(body, 422, "Invalid")
    # Over the body limit (4 MiB): 413, read by the client before the close.
    status, body = await api.call("POST", f"{NS}/configmaps", raw=b"x" * (5 << 20))
    assert status == 413 and body["reason"] == "RequestEntityTooLarge"
    # Under the body limit but over the object limit: 422.
    status, body = await api.call("POST", f"{NS}/configmaps", cm("big", k="x" * (2 << 20)))
    assert status == 422 and "limit" in body["message"]
    # An unknown dryRun value is refused rather than silently ignored.
    status, body = await api.call("POST", f"{NS}/configmaps?dryRun=Some", cm("dry"))
    assert status == 400
    assert_status(body, 400, "BadRequest")
    status, _ = await api.call("GET", f"{NS}/configmaps/dry")
    assert status == 404
    # The server still serves.
    status, _ = await api.call("GET", f"{NS}/configmaps")
    assert status == 200


async def test_validation_failures_are_422_with_causes(api: Api) -> None:
    bad = pod("Bad_Name", labels={"app": "has space"})
    bad["spec"]["containers"] = [
        {"name": "app", "image": ""},
        {"name": "app", "image": "x", "ports": [{"containerPort": 70000}]},
    ]
    status, body = await api.call("POST", f"{NS}/pods", bad)
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["details"]["kind"] == "Pod" and body["details"]["name"] == "Bad_Name"
    causes = {(c["field"], c["reason"]) for c in body["details"]["causes"]}
    assert causes == {
        ("metadata.name", "FieldValueInvalid"),
        ("metadata.labels.app", "FieldValueInvalid"),
        ("spec.containers[0].image", "FieldValueRequired"),
        ("spec.containers[1].name", "FieldValueDuplicate"),
        ("spec.containers[1].ports[0].containerPort", "FieldValueInvalid"),
    }
    assert all(c["message"] for c in body["details"]["causes"])
    no_containers = pod("empty")
    no_containers["spec"]["containers"] = []
    status, body = await api.call("POST", f"{NS}/pods", no_containers)
    assert status == 422
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "field": "spec.containers",
            "message": "at least one container is required",
        }
    ]


async def test_merge_patch(api: Api) -> None:
    await api.create(f"{NS}/configmaps", cm("c", labels={"a": "1", "b": "2"}, x="1", y="2"))
    for ctype in (
        "application/merge-patch+json",
        "application/strategic-merge-patch+json; charset=utf-8",
    ):
        status, body = await api.call(
            "PATCH",
            f"{NS}/configmaps/c",
            {"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"x": None, "z": "9"}},
            ctype=ctype,
        )
        assert status == 200, body
    assert body["metadata"]["labels"] == {"a": "1", "c": "3"}
    assert body["data"] == {"y": "2", "z": "9"}
    rv = body["metadata"]["resourceVersion"]
    status, body = await api.call("PATCH", f"{NS}/configmaps/c", {"data": {"y": "3"}})
    assert status == 415
    assert_status(body, 415, "UnsupportedMediaType")
    status, body = await api.call(
        "PATCH", f"{NS}/configmaps/c", [{"op": "remove"}], ctype="application/merge-patch+json"
    )
    assert status == 400
    status, body = await api.call(
        "PATCH", f"{NS}/configmaps/c", raw=b"{oops", ctype="application/merge-patch+json"
    )
    assert status == 400
    status, body = await api.call(
        "PATCH",
        f"{NS}/configmaps/c",
        {"metadata": {"resourceVersion": "1"}, "data": {"y": "4"}},
        ctype="application/merge-patch+json",
    )
    assert status == 409
    assert_status(body, 409, "Conflict")
    status, body = await api.call(
        "PATCH",
        f"{NS}/configmaps/c",
        {"metadata": {"resourceVersion": rv}, "data": {"bad key!": "4"}},
        ctype="application/merge-patch+json",
    )
    assert status == 422
    status, body = await api.call(
        "PATCH", f"{NS}/configmaps/ghost", {"data": {}}, ctype="application/merge-patch+json"
    )
    assert status == 404
    # Status through the main resource is ignored; through /status it is merged.
    await api.create(f"{NS}/pods", pod("web"))
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web",
        {"status": {"phase": "Running"}, "metadata": {"labels": {"x": "y"}}},
        ctype="application/merge-patch+json",
    )
    assert status == 200 and "status" not in body and body["metadata"]["labels"] == {"x": "y"}
    for patch in ({"status": {"phase": "Running"}}, {"status": {"podIP": "10.0.0.7"}}):
        status, body = await api.call(
            "PATCH", f"{NS}/pods/web/status", patch, ctype="application/merge-patch+json"
        )
        assert status == 200
    assert body["status"] == {"phase": "Running", "podIP": "10.0.0.7"}
    assert body["spec"]["containers"][0]["image"] == "busybox:1.36"
    status, body = await api.call(
        "PATCH", f"{NS}/pods/web/status", {"status": 5}, ctype="application/merge-patch+json"
    )
    assert status == 422


async def test_delete_preconditions(api: Api) -> None:
    await api.create(f"{NS}/configmaps", cm("first"))  # so that "c" is not at revision 1
    created = await api.create(f"{NS}/configmaps", cm("c"))
    for opts in (
        {"preconditions": {"resourceVersion": "1"}},
        {"preconditions": {"uid": "not-the-uid"}},
    ):
        status, body = await api.call("DELETE", f"{NS}/configmaps/c", opts)
        assert status == 409, opts
        assert_status(body, 409, "Conflict")
    status, body = await api.call("DELETE", f"{NS}/configmaps/c", raw=b"{bad")
    assert status == 400
    opts = {
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
        "preconditions": {
            "uid": created["metadata"]["uid"],
            "resourceVersion": created["metadata"]["resourceVersion"],
        },
    }
    status, body = await api.call("DELETE", f"{NS}/configmaps/c", opts)
    assert status == 200 and body["metadata"]["name"] == "c"


async def test_secrets_string_data_and_base64(api: Api) -> None:
    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "s"},
        "data": {"user": base64.b64encode(b"admin").decode(), "pw": "b2xk"},
        "stringData": {"pw": "hunter2", "token": "t\u00f6k"},
    }
    created = await api.create(f"{NS}/secrets", secret)
    assert "stringData" not in created and created["type"] == "Opaque"
    decoded = {k: base64.b64decode(v).decode() for k, v in created["data"].items()}
    assert decoded == {"user": "admin", "pw": "hunter2", "token": "t\u00f6k"}
    status, got = await api.call("GET", f"{NS}/secrets/s")
    assert "stringData" not in got
    # stringData through a merge patch too.
    status, body = await api.call(
        "PATCH",
        f"{NS}/secrets/s",
        {"stringData": {"new": "x"}},
        ctype="application/merge-patch+json",
    )
    assert status == 200 and "stringData" not in body
    assert base64.b64decode(body["data"]["new"]) == b"x" and len(body["data"]) == 4
    bad = {"kind": "Secret", "metadata": {"name": "bad"}, "data": {"k": "not base64!"}}
    status, body = await api.call("POST", f"{NS}/secrets", bad)
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "data[k]"


async def test_store_failure_is_a_500_and_the_server_goes_on(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # The store's node_of raises for this name: a real failure below the API.
    status, body = await api.call("POST", f"{NS}/configmaps", cm("explode"))
    assert status == 500
    assert_status(body, 500, "InternalError")
    status, _ = await api.call("GET", f"{NS}/configmaps/explode")
    assert status == 404
    await api.create(f"{NS}/configmaps", cm("fine"))
    stats = api.server.statistics()
    assert stats["errors_500"] == 1 and stats["errors_404"] == 1
    assert stats["nodes_connected"] == 2 and stats["requests"] >= 3


async def test_metrics(api: Api) -> None:
    await api.call("GET", f"{NS}/pods/nope")
    status, body = await api.call("GET", "/metrics")
    assert status == 200
    text = body.decode()
    assert "# TYPE edgeflock_api_requests_total counter" in text
    assert (
        'edgeflock_api_requests_total{code="404",group="",resource="pods",subresource="",verb="get"} 1.0'
    ) in text


# ---- lists and selectors ---------------------------------------------------------------


async def test_lists_with_label_and_field_selectors(api: Api) -> None:
    await api.create(f"{NS}/pods", pod("a", "pi-01", {"app": "web", "tier": "front"}))
    await api.create(f"{NS}/pods", pod("b", "pi-02", {"app": "web"}))
    await api.create(f"{NS}/pods", pod("c", "pi-01", {"app": "db"}))
    await api.namespace("other")
    await api.create("/api/v1/namespaces/other/pods", pod("d", "pi-01", {"app": "web"}))
    status, body = await api.call("GET", f"{NS}/pods")
    assert status == 200 and body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(api.store.current_rev())
    assert names(body) == ["a", "b", "c"]
    cases = {
        "labelSelector=app%3Dweb": ["a", "b"],
        "labelSelector=app%3D%3Dweb": ["a", "b"],
        "labelSelector=app!%3Dweb": ["c"],
        "labelSelector=tier": ["a"],
        "labelSelector=!tier": ["b", "c"],
        "labelSelector=app%3Dweb,tier": ["a"],
        "labelSelector=app%20in%20(db,%20web),!tier": ["b", "c"],
        "labelSelector=app%20notin%20(web)": ["c"],
        "fieldSelector=spec.nodeName%3Dpi-01": ["a", "c"],
        "fieldSelector=spec.nodeName!%3Dpi-01": ["b"],
        "fieldSelector=metadata.name%3Db": ["b"],
        "fieldSelector=metadata.namespace%3Ddefault": ["a", "b", "c"],
        "fieldSelector=spec.nodeName%3Dpi-01&labelSelector=app%3Dweb": ["a"],
        "labelSelector=": ["a", "b", "c"],
    }
    for query, want in cases.items():
        status, body = await api.call("GET", f"{NS}/pods?{query}")
        assert status == 200 and names(body) == want, query
    status, body = await api.call("GET", "/api/v1/pods?labelSelector=app%3Dweb")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]] == [
        ("default", "a"),
        ("default", "b"),
        ("other", "d"),
    ]
    status, body = await api.call("GET", "/api/v1/pods?fieldSelector=metadata.namespace%3Dother")
    assert names(body) == ["d"]
    for bad in (
        "fieldSelector=spec.image%3Dx",
        "fieldSelector=spec.nodeName",
        "labelSelector=a%3D%3D%3Db",
        "labelSelector=bad%20key%3Dx",
        "labelSelector=app%20in%20(a",
        "labelSelector=app%3Dnot%20valid",
    ):
        status, body = await api.call("GET", f"{NS}/pods?{bad}")
        assert status == 400, bad
        assert_status(body, 400, "BadRequest")
    status, body = await api.call("GET", "/api/v1/nodes")
    assert status == 200 and body["kind"] == "NodeList" and body["items"] == []


# ---- watch ------------------------------------------------------------------------------


async def test_watch_from_now_lists_then_follows(api: Api) -> None:
    await api.create(f"{NS}/configmaps", cm("a"))
    await api.namespace("other")
    await api.create("/api/v1/namespaces/other/configmaps", cm("elsewhere"))
    w = await api.watch(f"{NS}/configmaps?watch=true")
    assert await w.take(1) == [("ADDED", "a")]
    await api.wait_stat("watches_open", 1)
    await api.create(f"{NS}/configmaps", cm("b"))
    await api.create("/api/v1/namespaces/other/configmaps", cm("other-ns"))  # not shown
    _status, cur = await api.call("GET", f"{NS}/configmaps/a")
    cur["data"] = {"k": "changed"}
    await api.call("PUT", f"{NS}/configmaps/a", cur)
    await api.call("DELETE", f"{NS}/configmaps/b")
    ev = await w.next()
    assert ev is not None and ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "b"
    assert await w.take(2) == [("MODIFIED", "a"), ("DELETED", "b")]
    # The client hangs up: the server notices and closes the watch.
    await w.aclose()
    await api.wait_stat("watches_open", 0)


async def test_watch_replays_history_without_gaps_or_duplicates(api: Api) -> None:
    first = await api.create(f"{NS}/configmaps", cm("a"))
    rv = first["metadata"]["resourceVersion"]
    await api.create(f"{NS}/configmaps", cm("b"))
    _status, cur = await api.call("GET", f"{NS}/configmaps/a")
    cur["data"] = {"k": "2"}
    await api.call("PUT", f"{NS}/configmaps/a", cur)
    await api.call("DELETE", f"{NS}/configmaps/b")
    await api.create(f"{NS}/pods", pod("not-a-configmap"))
    w = await api.watch(f"{NS}/configmaps?watch=1&resourceVersion={rv}")
    assert await w.take(3) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    await api.create(f"{NS}/configmaps", cm("c"))
    assert await w.take(1) == [("ADDED", "c")]
    await w.aclose()
    # All namespaces, from the revision that created the first configmap.
    w = await api.watch(f"/api/v1/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=0.5")
    assert await w.take(4) == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
        ("ADDED", "c"),
    ]
    assert await w.next() is None  # timeoutSeconds ends the stream
    await w.aclose()


async def test_watch_with_selectors_sees_objects_enter_and_leave(api: Api) -> None:
    await api.create(f"{NS}/pods", pod("p", "pi-01", {"app": "web"}))
    await api.create(f"{NS}/pods", pod("q", "pi-02", {"app": "web"}))
    w = await api.watch(
        f"{NS}/pods?watch=1&labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dpi-01"
    )
    assert await w.take(1) == [("ADDED", "p")]
    patch = "application/merge-patch+json"
    await api.call("PATCH", f"{NS}/pods/p", {"metadata": {"labels": {"app": "db"}}}, ctype=patch)
    await api.call("PATCH", f"{NS}/pods/q", {"metadata": {"labels": {"x": "1"}}}, ctype=patch)
    await api.call("PATCH", f"{NS}/pods/p", {"metadata": {"labels": {"app": "web"}}}, ctype=patch)
    await api.call("PATCH", f"{NS}/pods/p", {"metadata": {"labels": {"y": "2"}}}, ctype=patch)
    await api.call("DELETE", f"{NS}/pods/q")
    await api.call("DELETE", f"{NS}/pods/p")
    assert await w.take(4) == [
        ("DELETED", "p"),  # left the selection
        ("ADDED", "p"),  # came back
        ("MODIFIED", "p"),
        ("DELETED", "p"),
    ]
    await w.aclose()


async def test_watch_errors(api: Api) -> None:
    for i in range(3):
        await api.create(f"{NS}/configmaps", cm(f"c{i}"))
    await api.store.compact(api.store.current_rev())
    w = await api.watch(f"{NS}/configmaps?watch=1&resourceVersion=1")
    ev = await w.next()
    assert ev is not None and ev["type"] == "ERROR"
    assert_status(ev["object"], 410, "Expired")
    assert "too old resource version" in ev["object"]["message"]
    assert await w.next() is None
    await w.aclose()
    w = await api.watch(f"{NS}/configmaps?watch=1&resourceVersion=999999")
    ev = await w.next()
    assert ev is not None and ev["type"] == "ERROR" and ev["object"]["code"] == 504
    assert await w.next() is None
    await w.aclose()
    for bad in (
        "resourceVersion=abc",
        "resourceVersion=-1",
        "timeoutSeconds=x",
        "timeoutSeconds=-1",
        "labelSelector=%3D%3D",
    ):
        status, body = await api.call("GET", f"{NS}/configmaps?watch=1&{bad}")
        assert status == 400, bad
        assert_status(body, 400, "BadRequest")
    await api.wait_stat("watches_open", 0)


async def test_a_watch_that_falls_behind_is_ended(nursery: trio.Nursery, tmp_path: Path) -> None:
    async for api in start_api(nursery, tmp_path / "s.db", subscriber_buffer=1):
        big = "x" * 900_000
        for i in range(10):
            await api.create(f"{NS}/configmaps", cm(f"big{i}", k=big))
        # A client with a tiny receive window that does not read: the server
        # blocks sending the initial list while new events pile up.
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", api.port))
        client = Client(trio.SocketStream(sock))
        await client.send_request(
            "GET", f"{NS}/configmaps?watch=1", headers=[("authorization", f"Bearer {TOKEN}")]
        )
        await api.wait_stat("watches_open", 1)
        for i in range(3):
            await api.create(f"{NS}/configmaps", cm(f"late{i}"))
        head = await client.read_head()
        assert head.status_code == 200
        w = Watch(client)
        seen = await w.take(10)
        assert all(t == "ADDED" for t, _ in seen)
        assert await w.next() is None  # cut off instead of missing events
        await w.aclose()
        await api.wait_stat("watches_open", 0)
        assert api.server.statistics()["watches_lost"] == 1


# ---- pure parts -------------------------------------------------------------------------


def test_merge_patch_follows_rfc_7386() -> None:
    # Examples from RFC 7386 appendix A.
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, want in cases:
        assert merge_patch(target, patch) == want, (target, patch)
    original = {"a": {"b": 1}}
    merge_patch(original, {"a": {"b": 2}})
    assert original == {"a": {"b": 1}}  # inputs are not changed


def test_selector_parsers() -> None:
    obj = {"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}, "spec": {}}
    assert parse_label_selector("a=1, b in (2,3)")(obj)
    assert not parse_label_selector("a=1,c")(obj)
    assert parse_label_selector("c notin (x),!d")(obj)
    assert parse_label_selector("example.com/key!=v")(obj)
    assert parse_field_selector("spec.nodeName=")(obj)  # unscheduled: empty node name
    assert parse_field_selector("metadata.name==n")(obj)
    assert not parse_field_selector("metadata.name!=n")(obj)
    assert parse_label_selector("a")({"metadata": {"labels": "junk"}}) is False
    for bad in ("a in b", "(", "a=b=c", "=x", "a,,=b", "x/=1", "a in (b c)"):
        with pytest.raises(ApiError) as info:
            parse_label_selector(bad)
        assert info.value.code == 400, bad


def test_validate_normalizes() -> None:
    out = validate(
        PODS, {"metadata": {"name": "p"}, "spec": pod("p")["spec"]}, namespace="ns", name=None
    )
    assert out["apiVersion"] == "v1" and out["kind"] == "Pod"
    assert out["metadata"] == {"name": "p", "namespace": "ns"}
    out = validate(PODS, pod("p"), namespace=None, name="p")
    assert out["metadata"]["namespace"] == "default"
    out = validate(
        NODES, {"metadata": {"name": "pi-01", "namespace": "x"}}, namespace=None, name=None
    )
    assert "namespace" not in out["metadata"]
    src = {"metadata": {"name": "s"}, "stringData": {"a": "b"}}
    out = validate(SECRETS, src, namespace="default", name=None)
    assert out["data"] == {"a": "Yg=="} and "stringData" not in out and out["type"] == "Opaque"
    assert src == {"metadata": {"name": "s"}, "stringData": {"a": "b"}}  # input untouched


@pytest.mark.parametrize(
    ("resource", "obj", "field"),
    [
        (NODES, {"metadata": {"name": "Pi_01"}}, "metadata.name"),
        (NODES, {"metadata": {"name": "a" * 254}}, "metadata.name"),
        (NODES, {"metadata": {"name": "-a"}}, "metadata.name"),
        (NODES, {"metadata": {}}, "metadata.name"),
        (NODES, {"metadata": {"name": 5}}, "metadata.name"),
        (NODES, {"metadata": {"name": "n", "labels": {"/x": "y"}}}, "metadata.labels"),
        (NODES, {"metadata": {"name": "n", "labels": {"a" * 64: "y"}}}, "metadata.labels"),
        (NODES, {"metadata": {"name": "n", "labels": {"k": "v" * 64}}}, "metadata.labels.k"),
        (NODES, {"metadata": {"name": "n", "labels": {"k": 1}}}, "metadata.labels.k"),
        (NODES, {"metadata": {"name": "n", "labels": []}}, "metadata.labels"),
        (NODES, {"metadata": {"name": "n", "annotations": {"k": None}}}, "metadata.annotations.k"),
        (NODES, {"metadata": {"name": "n"}, "spec": []}, "spec"),
        (NODES, {"metadata": {"name": "n"}, "status": "up"}, "status"),
        (NODES, {"metadata": {"name": "n"}, "kind": "Pod"}, "kind"),
        (
            PODS,
            {"metadata": {"name": "p", "namespace": "Bad"}, "spec": pod("p")["spec"]},
            "metadata.namespace",
        ),
        (PODS, {"metadata": {"name": "p"}}, "spec"),
        (PODS, {"metadata": {"name": "p"}, "spec": {"containers": {}}}, "spec.containers"),
        (PODS, {"metadata": {"name": "p"}, "spec": {"containers": [5]}}, "spec.containers[0]"),
        (
            PODS,
            {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}},
            "spec.containers[0].name",
        ),
        (
            PODS,
            {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": 3}]}},
            "spec.containers[0].image",
        ),
        (
            PODS,
            {
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a", "image": "x", "env": [{"value": "v"}]}]},
            },
            "spec.containers[0].env[0].name",
        ),
        (
            PODS,
            {
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a", "image": "x", "command": "sh"}]},
            },
            "spec.containers[0].command",
        ),
        (
            PODS,
            {
                "metadata": {"name": "p"},
                "spec": {
                    "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": True}]}]
                },
            },
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            PODS,
            {"metadata": {"name": "p"}, "spec": {**pod("p")["spec"], "restartPolicy": "Sometimes"}},
            "spec.restartPolicy",
        ),
        (
            PODS,
            {"metadata": {"name": "p"}, "spec": {**pod("p")["spec"], "nodeName": "Bad Node"}},
            "spec.nodeName",
        ),
        (
            PODS,
            {
                "metadata": {"name": "p"},
                "spec": {**pod("p")["spec"], "volumes": [{"name": "v"}, {"name": "v"}]},
            },
            "spec.volumes[1].name",
        ),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "data": {"bad key": "v"}}, "data"),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "data": {"k": 1}}, "data[k]"),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "data": "text"}, "data"),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "binaryData": {"k": "@@"}}, "binaryData[k]"),
        (
            CONFIGMAPS,
            {"metadata": {"name": "c"}, "data": {"k": "a"}, "binaryData": {"k": "YQ=="}},
            "binaryData[k]",
        ),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "data": {"k": "x" * MAX_OBJECT_BYTES}}, ""),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "data": {"k": "\ud800"}}, ""),
        (CONFIGMAPS, {"metadata": {"name": "c"}, "x": nested(70)}, ""),
        (SECRETS, {"metadata": {"name": "s"}, "stringData": {"k": 1}}, "stringData[k]"),
        (SECRETS, {"metadata": {"name": "s"}, "stringData": {"k": "\udc00"}}, "stringData[k]"),
        (SECRETS, {"metadata": {"name": "s"}, "type": 7}, "type"),
    ],
)
def test_validate_rejects(resource: edgeproto.Resource, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        validate(resource, obj, namespace=None, name=None)
    assert field in {c.field for c in info.value.causes}
    assert str(info.value).startswith(f'{resource.kind} "')


def test_validate_checks_the_url_name_and_namespace() -> None:
    with pytest.raises(Invalid) as info:
        validate(PODS, pod("a", namespace="x"), namespace="y", name="b")
    assert {c.field for c in info.value.causes} == {"metadata.name", "metadata.namespace"}
    with pytest.raises(Invalid):
        validate(PODS, [pod("a")], namespace="y", name="a")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    ["apiVersion", "kind", "metadata", "spec", "status", "data", "binaryData", "stringData", "type"]
)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[edgeproto.Resource, Any]:
    """A valid object of some kind with a few parts replaced by random JSON."""
    resource = draw(st.sampled_from(edgeproto.RESOURCES))
    base: dict[str, Any] = {
        "Pod": pod("p", labels={"a": "b"}),
        "Node": node("n"),
        "ConfigMap": cm("c"),
        "Secret": {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "YQ=="}},
        "Device": {
            "kind": "Device",
            "metadata": {"name": "d"},
            "spec": {
                "deviceModelRef": {"name": "m"},
                "nodeName": "pi",
                "properties": [{"name": "t", "desired": {"value": "1"}, "collectCycle": 5}],
            },
        },
        "DeviceModel": {
            "kind": "DeviceModel",
            "metadata": {"name": "m"},
            "spec": {"properties": [{"name": "t", "type": "INT", "accessMode": "ReadWrite"}]},
        },
        "Event": {
            "kind": "Event",
            "metadata": {"name": "pi.1"},
            "involvedObject": {"kind": "Node", "name": "pi"},
            "reason": "EdgeEvent",
            "message": "m",
        },
        "Namespace": {"kind": "Namespace", "metadata": {"name": "team"}},
        **{kind: make() for kind, make in SAMPLES.items()},
    }[resource.kind]
    obj = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        target = obj
        path = draw(
            st.lists(
                st.sampled_from(
                    [
                        "metadata",
                        "spec",
                        "containers",
                        0,
                        "labels",
                        "name",
                        "image",
                        "ports",
                        "env",
                        "data",
                    ]
                ),
                max_size=3,
            )
        )
        for p in path:
            child = (
                target.get(p)
                if isinstance(target, dict) and isinstance(p, str)
                else (
                    target[p]
                    if isinstance(target, list) and isinstance(p, int) and len(target) > p
                    else None
                )
            )
            if isinstance(child, dict | list):
                target = child
        key = draw(field_names | st.text(max_size=8))
        if isinstance(target, dict):
            target[key] = draw(json_values)
        elif isinstance(target, list) and target:
            target[0] = draw(json_values)
    return resource, obj


@settings(max_examples=300, deadline=None)
@given(
    resource=st.sampled_from(edgeproto.RESOURCES),
    obj=json_values,
    namespace=st.none() | st.text(max_size=10),
    name=st.none() | st.text(max_size=10),
)
def test_validate_random_json_raises_only_invalid(
    resource: edgeproto.Resource, obj: Any, namespace: str | None, name: str | None
) -> None:
    try:
        out = validate(resource, obj, namespace=namespace, name=name)
    except Invalid as exc:
        assert exc.causes
    else:
        assert out["kind"] == resource.kind


@settings(max_examples=300, deadline=None)
@given(case=near_valid())
def test_validate_mutated_objects_raise_only_invalid(case: tuple[edgeproto.Resource, Any]) -> None:
    resource, obj = case
    before = json.dumps(obj, sort_keys=True)
    try:
        out = validate(resource, obj, namespace=None, name=None)
    except Invalid as exc:
        assert exc.causes and all(isinstance(c.field, str) for c in exc.causes)
    else:
        assert out["metadata"]["name"]
        json.dumps(out, allow_nan=False)  # always storable
    assert json.dumps(obj, sort_keys=True) == before  # never mutated


KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


async def test_kubectl_gets_tables(api: Api) -> None:
    await api.create(f"{NS}/pods", pod("web", node="pi-01"))
    status, table = await api.call("GET", f"{NS}/pods", accept=KUBECTL_ACCEPT)
    assert status == 200 and table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    cols = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert cols == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("Ip", 1),
        ("Node", 1),
    ]
    [row] = table["rows"]
    assert row["cells"][:4] == ["web", "0/1", "Pending", "0"]
    assert row["cells"][-1] == "pi-01"
    assert row["object"]["metadata"]["name"] == "web"
    assert row["object"]["kind"] == "PartialObjectMetadata"
    status, one = await api.call("GET", f"{NS}/pods/web", accept=KUBECTL_ACCEPT)
    assert status == 200 and one["kind"] == "Table" and len(one["rows"]) == 1
    # Plain JSON clients still get objects.
    status, obj = await api.call("GET", f"{NS}/pods/web")
    assert status == 200 and obj["kind"] == "Pod"


async def test_events_posted_through_the_api_are_checked(api: Api) -> None:
    bad = {"kind": "Event", "metadata": {"name": "e1"}, "involvedObject": {"kind": "Node"}}
    bad["message"] = 5
    status, body = await api.call("POST", f"{NS}/events", bad)
    assert status == 422, body
    causes = {(c["field"], c["reason"]) for c in body["details"]["causes"]}
    assert causes == {
        ("involvedObject.name", "FieldValueRequired"),
        ("message", "FieldValueInvalid"),
    }
    good = {**bad, "message": "hi", "involvedObject": {"kind": "Node", "name": "pi-01"}}
    status, body = await api.call("POST", f"{NS}/events", good)
    assert status == 201 and body["message"] == "hi", body
