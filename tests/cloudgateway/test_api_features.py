"""Everyday Kubernetes API features, over real HTTP against a real ApiServer on
a real SqliteBackend: paged lists, deletecollection, dryRun, server-set
creation times, event field selectors, access reviews, /version, Namespaces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import edgeproto
from tests.cloudgateway.test_api import NS, Api, assert_status, cm, names, pod, start_api


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


# ---- limit / continue ---------------------------------------------------------------


async def test_paged_list_reads_every_page_at_the_first_pages_revision(api: Api) -> None:
    for i in range(7):
        await api.create(f"{NS}/configmaps", cm(f"c{i}"))
    status, page = await api.call("GET", f"{NS}/configmaps?limit=3")
    assert status == 200 and names(page) == ["c0", "c1", "c2"]
    rev = page["metadata"]["resourceVersion"]
    token = page["metadata"]["continue"]
    # Writes after the first page do not show in the pages that follow.
    await api.create(f"{NS}/configmaps", cm("c3a"))
    await api.call("DELETE", f"{NS}/configmaps/c4")
    status, page = await api.call("GET", f"{NS}/configmaps?limit=3&continue={token}")
    assert status == 200 and names(page) == ["c3", "c4", "c5"]
    assert page["metadata"]["resourceVersion"] == rev
    status, page = await api.call(
        "GET", f"{NS}/configmaps?limit=3&continue={page['metadata']['continue']}"
    )
    assert status == 200 and names(page) == ["c6"]
    assert "continue" not in page["metadata"]
    # A list exactly one page long has no continue either.
    status, page = await api.call("GET", f"{NS}/configmaps?limit=7")
    assert names(page) == ["c0", "c1", "c2", "c3", "c3a", "c5", "c6"]
    assert "continue" not in page["metadata"]
    # limit=0 is no limit.
    status, page = await api.call("GET", f"{NS}/configmaps?limit=0")
    assert len(page["items"]) == 7 and "continue" not in page["metadata"]


async def test_paging_with_selectors_and_across_namespaces(api: Api) -> None:
    await api.namespace("other")
    for i in range(6):
        labels = {"app": "web" if i % 2 else "db"}
        await api.create(f"{NS}/pods", pod(f"p{i}", labels=labels))
        await api.create("/api/v1/namespaces/other/pods", pod(f"q{i}", labels=labels))
    seen: list[str] = []
    path = "/api/v1/pods?labelSelector=app%3Dweb&limit=2"
    status, page = await api.call("GET", path)
    while True:
        assert status == 200 and len(page["items"]) <= 2
        seen += [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in page["items"]]
        token = page["metadata"].get("continue")
        if token is None:
            break
        status, page = await api.call("GET", f"{path}&continue={token}")
    assert seen == [
        "default/p1",
        "default/p3",
        "default/p5",
        "other/q1",
        "other/q3",
        "other/q5",
    ]
    # kubectl get --chunk-size asks for Tables: they page too.
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    status, table = await api.call("GET", f"{NS}/pods?limit=4", accept=accept)
    assert status == 200 and table["kind"] == "Table" and len(table["rows"]) == 4
    status, table = await api.call(
        "GET", f"{NS}/pods?limit=4&continue={table['metadata']['continue']}", accept=accept
    )
    assert [r["cells"][0] for r in table["rows"]] == ["p4", "p5"]
    assert "continue" not in table["metadata"]


async def test_bad_and_expired_continue_tokens(api: Api) -> None:
    for i in range(4):
        await api.create(f"{NS}/configmaps", cm(f"c{i}"))
    _, page = await api.call("GET", f"{NS}/configmaps?limit=2")
    token = page["metadata"]["continue"]
    for bad in ("garbage!", "eyJydiI6MX0=", token + "x"):
        status, body = await api.call("GET", f"{NS}/configmaps?limit=2&continue={bad}")
        assert status == 400, bad
        assert_status(body, 400, "BadRequest")
    # A token is for the list that gave it.
    status, body = await api.call("GET", f"{NS}/pods?limit=2&continue={token}")
    assert status == 400
    status, body = await api.call(
        "GET", f"{NS}/configmaps?limit=2&continue={token}&resourceVersion=1"
    )
    assert status == 400
    for bad_limit in ("x", "-1"):
        status, body = await api.call("GET", f"{NS}/configmaps?limit={bad_limit}")
        assert status == 400
    # Compaction past the token's revision: 410 Expired, as Kubernetes answers.
    await api.create(f"{NS}/configmaps", cm("later"))
    await api.store.compact(api.store.current_rev())
    status, body = await api.call("GET", f"{NS}/configmaps?limit=2&continue={token}")
    assert status == 410
    assert_status(body, 410, "Expired")


# ---- deletecollection -----------------------------------------------------------------


async def test_deletecollection_deletes_what_the_selectors_match(api: Api) -> None:
    await api.namespace("other")
    for i in range(4):
        await api.create(f"{NS}/pods", pod(f"p{i}", "pi-01" if i < 2 else "pi-02", {"n": str(i)}))
    await api.create("/api/v1/namespaces/other/pods", pod("far", "pi-01"))
    status, body = await api.call("DELETE", f"{NS}/pods?fieldSelector=spec.nodeName%3Dpi-01")
    assert status == 200 and body["kind"] == "PodList" and names(body) == ["p0", "p1"]
    _, left = await api.call("GET", "/api/v1/pods")
    assert names(left) == ["p2", "p3", "far"]
    # dryRun deletes nothing but says what it would delete.
    status, body = await api.call("DELETE", f"{NS}/pods?labelSelector=n%3D3&dryRun=All")
    assert status == 200 and names(body) == ["p3"]
    _, left = await api.call("GET", f"{NS}/pods")
    assert names(left) == ["p2", "p3"]
    status, body = await api.call("DELETE", f"{NS}/pods")
    assert names(body) == ["p2", "p3"]
    _, left = await api.call("GET", "/api/v1/pods")
    assert names(left) == ["far"]
    status, body = await api.call("DELETE", f"{NS}/pods?labelSelector=in%20valid")
    assert status == 400


# ---- dryRun ---------------------------------------------------------------------------


async def test_dry_run_checks_everything_and_writes_nothing(api: Api) -> None:
    rev = api.store.current_rev()
    status, body = await api.call("POST", f"{NS}/configmaps?dryRun=All", cm("x"))
    assert status == 201 and body["metadata"]["name"] == "x"
    assert body["metadata"]["uid"] and body["metadata"]["creationTimestamp"]
    assert api.store.current_rev() == rev
    status, _ = await api.call("GET", f"{NS}/configmaps/x")
    assert status == 404
    # Validation still runs.
    status, body = await api.call("POST", f"{NS}/configmaps?dryRun=All", cm("Bad_Name"))
    assert status == 422
    created = await api.create(f"{NS}/configmaps", cm("x", k="v1"))
    rev = api.store.current_rev()
    status, body = await api.call("POST", f"{NS}/configmaps?dryRun=All", cm("x"))
    assert status == 409 and body["reason"] == "AlreadyExists"
    # PUT: the would-be object, with a conflict for a stale resourceVersion.
    new = {**created, "data": {"k": "v2"}}
    status, body = await api.call("PUT", f"{NS}/configmaps/x?dryRun=All", new)
    assert status == 200 and body["data"] == {"k": "v2"}
    assert body["metadata"]["uid"] == created["metadata"]["uid"]
    assert body["metadata"]["generation"] == 2
    stale = {**new, "metadata": {**new["metadata"], "resourceVersion": "1"}}
    status, body = await api.call("PUT", f"{NS}/configmaps/x?dryRun=All", stale)
    assert status == 409 and body["reason"] == "Conflict"
    # PATCH, of the object and of its status.
    status, body = await api.call(
        "PATCH",
        f"{NS}/configmaps/x?dryRun=All",
        {"data": {"extra": "1"}},
        ctype="application/merge-patch+json",
    )
    assert status == 200 and body["data"] == {"k": "v1", "extra": "1"}
    pod_ = await api.create(f"{NS}/pods", pod("web"))
    rev = api.store.current_rev()
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web/status?dryRun=All",
        {"status": {"phase": "Running"}},
        ctype="application/merge-patch+json",
    )
    assert status == 200 and body["status"] == {"phase": "Running"}
    status, body = await api.call(
        "PUT", f"{NS}/pods/web/status?dryRun=All", {"status": {"phase": "Failed"}}
    )
    assert status == 200 and body["status"] == {"phase": "Failed"}
    # DELETE answers the object and leaves it.
    status, body = await api.call("DELETE", f"{NS}/configmaps/x?dryRun=All")
    assert status == 200 and body["metadata"]["name"] == "x"
    assert api.store.current_rev() == rev
    _, got = await api.call("GET", f"{NS}/configmaps/x")
    assert got["data"] == {"k": "v1"}
    _, got = await api.call("GET", f"{NS}/pods/web")
    assert got == pod_
    # kubectl delete --dry-run=server says it in the DeleteOptions body.
    status, body = await api.call(
        "DELETE", f"{NS}/configmaps/x", {"kind": "DeleteOptions", "dryRun": ["All"]}
    )
    assert status == 200 and body["metadata"]["name"] == "x"
    status, body = await api.call("DELETE", f"{NS}/configmaps", {"dryRun": ["All"]})
    assert status == 200 and names(body) == ["x"]
    status, body = await api.call("DELETE", f"{NS}/configmaps/x", {"dryRun": "All"})
    assert status == 400
    # Where nothing can be checked without doing it, dryRun is refused.
    await api.create("/api/v1/nodes", {"metadata": {"name": "pi-01"}})
    status, body = await api.call("POST", "/api/v1/nodes/pi-01/revocation?dryRun=All", {})
    assert status == 400
    status, body = await api.call("GET", "/api/v1/nodes/pi-01/revocation")
    assert status == 404  # not revoked
    rev = api.store.current_rev()
    # Only "All" is a dryRun value.
    for method, path, body_ in (
        ("POST", f"{NS}/configmaps?dryRun=Some", cm("y")),
        ("DELETE", f"{NS}/configmaps/x?dryRun=", None),
        ("PUT", f"{NS}/configmaps/x?dryRun=all", new),
        ("DELETE", f"{NS}/configmaps/x", {"dryRun": ["All", "Some"]}),
    ):
        status, body = await api.call(method, path, body_)
        assert status == 400, (method, path)
        assert_status(body, 400, "BadRequest")
    assert api.store.current_rev() == rev


# ---- creationTimestamp ----------------------------------------------------------------


async def test_the_server_sets_creation_time_and_uid(api: Api) -> None:
    sent = cm("x")
    sent["metadata"].update(creationTimestamp=None, uid="chosen-by-client")
    created = await api.create(f"{NS}/configmaps", sent)
    stamp = edgeproto.parse_rfc3339(created["metadata"]["creationTimestamp"])
    assert stamp is not None
    assert created["metadata"]["uid"] != "chosen-by-client"
    sent = cm("y")
    sent["metadata"]["creationTimestamp"] = "2001-01-01T00:00:00Z"
    created = await api.create(f"{NS}/configmaps", sent)
    later = edgeproto.parse_rfc3339(created["metadata"]["creationTimestamp"])
    assert later is not None and later >= stamp
    # Kept on replace, whatever the client sends.
    created["metadata"]["creationTimestamp"] = None
    status, body = await api.call("PUT", f"{NS}/configmaps/y", created)
    assert status == 200
    assert edgeproto.parse_rfc3339(body["metadata"]["creationTimestamp"]) == later


# ---- events -----------------------------------------------------------------------------


def event(name: str, kind: str, about: str, reason: str = "Seen") -> dict[str, object]:
    return {
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"kind": kind, "name": about, "namespace": "", "uid": f"uid-{about}"},
        "reason": reason,
        "message": "m",
        "source": {"component": "edgeagent"},
    }


async def test_event_field_selectors_on_the_involved_object(api: Api) -> None:
    await api.create(f"{NS}/events", event("e1", "Node", "pi-01"))
    await api.create(f"{NS}/events", event("e2", "Node", "pi-02", "Gone"))
    await api.create(f"{NS}/events", event("e3", "Pod", "pi-01"))
    cases = {
        "involvedObject.name=pi-01": ["e1", "e3"],
        "involvedObject.kind=Node,involvedObject.name=pi-01": ["e1"],
        "involvedObject.kind!=Node": ["e3"],
        "involvedObject.uid=uid-pi-02": ["e2"],
        "involvedObject.namespace=": ["e1", "e2", "e3"],
        "reason=Gone": ["e2"],
        "source=edgeagent": ["e1", "e2", "e3"],
    }
    for selector, want in cases.items():
        status, body = await api.call("GET", f"{NS}/events?fieldSelector={selector}")
        assert status == 200 and names(body) == want, selector
    status, body = await api.call("GET", f"{NS}/events?fieldSelector=involvedObject.color=red")
    assert status == 400


# ---- authorization reviews, version ----------------------------------------------------


async def test_self_subject_reviews_allow_the_admin(api: Api) -> None:
    status, body = await api.call("GET", "/apis/authorization.k8s.io")
    assert status == 200 and body["preferredVersion"]["groupVersion"] == "authorization.k8s.io/v1"
    status, body = await api.call("GET", "/apis/authorization.k8s.io/v1")
    assert status == 200 and {r["name"]: r["verbs"] for r in body["resources"]} == {
        "selfsubjectaccessreviews": ["create"],
        "selfsubjectrulesreviews": ["create"],
    }
    review = {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "spec": {"resourceAttributes": {"verb": "create", "resource": "pods"}},
    }
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    status, body = await api.call("POST", path, review)
    assert status == 201 and body["status"]["allowed"] is True
    assert body["spec"] == review["spec"]
    status, body = await api.call("POST", path, review, token="wrong")
    assert status == 401
    status, body = await api.call("GET", path)
    assert status == 405
    status, body = await api.call("POST", path, {"spec": "no"})
    assert status == 400
    status, body = await api.call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        {"spec": {"namespace": "default"}},
    )
    assert status == 201 and body["status"]["resourceRules"][0]["verbs"] == ["*"]
    status, body = await api.call("POST", "/apis/authorization.k8s.io/v1/widgets", {})
    assert status == 404


async def test_version_has_every_field_of_version_info(api: Api) -> None:
    status, body = await api.call("GET", "/version", token=None)
    assert status == 200
    for field in (
        "major",
        "minor",
        "gitVersion",
        "gitCommit",
        "gitTreeState",
        "buildDate",
        "goVersion",
        "compiler",
        "platform",
    ):
        assert isinstance(body[field], str) and body[field], field


async def test_services_are_an_empty_read_only_kind(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1")
    services = next(r for r in body["resources"] if r["name"] == "services")
    assert services["verbs"] == ["get", "list"] and services["shortNames"] == ["svc"]
    for path in ("/api/v1/services", "/api/v1/namespaces/kube-system/services"):
        status, body = await api.call("GET", f"{path}?labelSelector=a%3Db")
        assert status == 200 and body["kind"] == "ServiceList" and body["items"] == []
    status, body = await api.call("GET", "/api/v1/namespaces/default/services/web")
    assert status == 404
    assert_status(body, 404, "NotFound")
    status, body = await api.call("POST", "/api/v1/namespaces/default/services", {})
    assert status == 405
    status, body = await api.call("GET", "/api/v1/namespaces/default/services/web/x/y")
    assert status == 404
    # A namespace may still be called "services".
    status, body = await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "services"}})
    assert status == 201
    status, body = await api.call("GET", "/api/v1/namespaces/services")
    assert status == 200 and body["kind"] == "Namespace"


# ---- namespaces -------------------------------------------------------------------------


async def test_namespaces_exist_from_the_start_and_hold_objects(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/namespaces")
    assert status == 200 and body["kind"] == "NamespaceList"
    assert names(body) == ["default", "kube-node-lease", "kube-public", "kube-system"]
    assert all(i["status"]["phase"] == "Active" for i in body["items"])
    # An object in a namespace that does not exist is refused, as Kubernetes does.
    status, body = await api.call("POST", "/api/v1/namespaces/team/configmaps", cm("a"))
    assert status == 404
    assert_status(body, 404, "NotFound")
    assert body["message"] == 'namespaces "team" not found'
    status, body = await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    assert status == 201 and body["kind"] == "Namespace" and body["status"]["phase"] == "Active"
    assert body["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    status, body = await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    assert status == 409
    status, body = await api.call(
        "POST", "/api/v1/namespaces", {"metadata": {"name": "a.b"}}
    )  # a subdomain but not a label
    assert status == 422
    await api.create("/api/v1/namespaces/team/configmaps", cm("a"))
    await api.create("/api/v1/namespaces/team/pods", pod("p"))
    await api.create("/api/v1/namespaces/team/events", event("e", "Pod", "p"))
    await api.create(f"{NS}/configmaps", cm("a"))
    # Deleting a namespace deletes its objects (before the answer) and nothing else.
    status, body = await api.call("DELETE", "/api/v1/namespaces/team")
    assert status == 200 and body["metadata"]["name"] == "team"
    for r in edgeproto.RESOURCES:
        if r.namespaced:
            records, _ = await api.store.list(f"{r.name}/team/")
            assert records == [], r.name
    _, left = await api.call("GET", f"{NS}/configmaps")
    assert names(left) == ["a"]
    status, _ = await api.call("POST", "/api/v1/namespaces/team/configmaps", cm("a"))
    assert status == 404
    for ns in ("default", "kube-system", "kube-public"):
        status, body = await api.call("DELETE", f"/api/v1/namespaces/{ns}")
        assert status == 403, ns
        assert_status(body, 403, "Forbidden")
    # Table output for kubectl get ns.
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    _, table = await api.call("GET", "/api/v1/namespaces", accept=accept)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert table["rows"][0]["cells"][:2] == ["default", "Active"]


async def test_namespaces_are_never_synced_to_boards(api: Api) -> None:
    labelled = {"metadata": {"name": "edge", "labels": {edgeproto.NODE_LABEL: "pi-01"}}}
    await api.create("/api/v1/namespaces", labelled)
    rec = await api.store.get("namespaces//edge")
    assert rec.node is None
    assert await api.store.list_by_node("namespaces/", "pi-01") == []


async def test_initial_namespaces_are_created_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    async for a in start_api(nursery, tmp_path / "s.db"):
        rev = a.store.current_rev()
        await a.call("DELETE", "/api/v1/namespaces/kube-node-lease")
    async for a in start_api(nursery, tmp_path / "s.db"):
        # Restarted: the missing one is back, the others untouched.
        assert a.store.current_rev() == rev + 2
        _, body = await a.call("GET", "/api/v1/namespaces")
        assert len(body["items"]) == 4


# ---- protobuf bodies ---------------------------------------------------------------------


async def test_protobuf_bodies_of_kinds_not_read_are_415(api: Api) -> None:
    """kubectl's typed writes are protobuf (test_kubectl.py runs them); other
    kinds, and bodies that are not Kubernetes protobuf, get a clear 415."""
    from google.protobuf import descriptor_pb2

    # A runtime.Unknown (typeMeta = 1: apiVersion = 1, kind = 2; raw = 2) for a
    # Pod, spelled with protobuf's own descriptor messages as a wire encoder.
    type_meta = descriptor_pb2.FieldDescriptorProto(name="v1", extendee="Pod")
    assert type_meta.SerializeToString() == b"\n\x02v1\x12\x03Pod"
    unknown = b"\n" + bytes([len(type_meta.SerializeToString())]) + type_meta.SerializeToString()
    ctype = "application/vnd.kubernetes.protobuf"
    for raw, words in (
        (b"k8s\x00" + unknown, "not v1 Pod"),
        (b"k8s\x00\xff\xff", "does not decode"),
        (b"\x0a\x02v1", "starts with"),
    ):
        status, body = await api.call("POST", f"{NS}/pods", raw=raw, ctype=ctype)
        assert status == 415, raw
        assert_status(body, 415, "UnsupportedMediaType")
        assert words in body["message"]


async def test_edgectl_gets_and_deletes_namespaces(api: Api) -> None:
    from tests.cloudgateway.test_ctl import run_ctl

    await api.namespace("team")
    await api.create("/api/v1/namespaces/team/configmaps", cm("a"))
    rc, out, _ = await run_ctl(api, "get", "ns")
    assert rc == 0 and [line.split()[:2] for line in out.splitlines()] == [
        ["NAME", "STATUS"],
        ["default", "Active"],
        ["kube-node-lease", "Active"],
        ["kube-public", "Active"],
        ["kube-system", "Active"],
        ["team", "Active"],
    ]
    rc, out, err = await run_ctl(api, "delete", "ns", "team")
    assert rc == 0, err
    status, _ = await api.call("GET", "/api/v1/namespaces/team/configmaps/a")
    assert status == 404
