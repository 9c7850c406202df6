"""Server-side apply over real HTTP against a real ApiServer on a real
SqliteBackend: PATCH with application/apply-patch+yaml creates and updates,
conflicts are 409 naming the owner, force takes over, dryRun writes nothing,
ordinary writes record their manager, and boards are not sent managedFields."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._reports import Reports
from cloudgateway._view import plan_node_sync
from tests.cloudgateway.test_api import NS, Api, assert_status, pod, start_api

APPLY = "application/apply-patch+yaml"
IMAGE = ("spec", "containers", 0, "image")


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


async def do_apply(api: Api, obj: Any, manager: str = "kubectl", query: str = "") -> Any:
    path = f"{NS}/pods/{obj['metadata']['name']}?fieldManager={manager}{query}"
    return await api.call("PATCH", path, obj, ctype=APPLY)


def managers(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["manager"], e["operation"]) for e in obj["metadata"]["managedFields"]]


async def test_apply_creates_then_updates(api: Api) -> None:
    status, body = await do_apply(api, pod("web"))
    assert status == 201, body
    assert managers(body) == [("kubectl", "Apply")]
    assert body["metadata"]["uid"] and body["metadata"]["creationTimestamp"]
    changed = pod("web")
    changed["spec"]["containers"][0]["image"] = "busybox:1.37"
    status, body = await do_apply(api, changed)
    assert status == 200 and body["spec"]["containers"][0]["image"] == "busybox:1.37"
    stored = (await api.store.get("pods/default/web")).value
    assert stored["metadata"]["managedFields"] == body["metadata"]["managedFields"]
    # YAML bodies too (kubectl sends JSON, which is YAML).
    yaml_body = (
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {tier: a}\n"
        b"spec:\n  nodeName: pi-01\n  containers:\n  - name: app\n    image: busybox:1.37\n"
    )
    status, body = await api.call(
        "PATCH", f"{NS}/pods/web?fieldManager=kubectl", raw=yaml_body, ctype=APPLY
    )
    assert status == 200 and body["metadata"]["labels"] == {"tier": "a"}


async def test_apply_after_create_conflicts_with_the_creator(api: Api) -> None:
    status, _ = await api.call("POST", f"{NS}/pods?fieldManager=kubectl-create", pod("web"))
    assert status == 201
    changed = pod("web")
    changed["spec"]["containers"][0]["image"] = "busybox:1.37"
    status, body = await do_apply(api, changed)
    assert_status(body, 409, "Conflict")
    field = '.spec.containers[name="app"].image'
    assert body["message"] == (
        f'Apply failed with 1 conflict: conflict with "kubectl-create" using v1: {field}'
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "kubectl-create" using v1: {field}',
            "field": field,
        }
    ]
    stored = (await api.store.get("pods/default/web")).value
    assert stored["spec"]["containers"][0]["image"] == "busybox:1.36"
    status, body = await do_apply(api, changed, query="&force=true")
    assert status == 200 and body["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert managers(body) == [("kubectl-create", "Update"), ("kubectl", "Apply")]


async def test_ordinary_writes_name_their_manager(api: Api) -> None:
    await do_apply(api, pod("web"))
    patch = {"spec": {"containers": [{"name": "app", "image": "busybox:1.38"}]}}
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web",
        patch,
        ctype="application/strategic-merge-patch+json",
    )
    assert status == 200
    # No fieldManager: the client's name from its User-Agent, else "unknown".
    (update,) = [e for e in body["metadata"]["managedFields"] if e["operation"] == "Update"]
    assert update["manager"] == "unknown"
    assert update["fieldsV1"] == {"f:spec": {"f:containers": {'k:{"name":"app"}': {"f:image": {}}}}}
    # ... and kubectl's own apply now conflicts with that writer.
    status, body = await do_apply(api, pod("web"))
    assert_status(body, 409, "Conflict")
    assert 'conflict with "unknown"' in body["message"]


async def test_dry_run_apply_writes_nothing(api: Api) -> None:
    rev = api.store.current_rev()
    status, body = await do_apply(api, pod("web"), query="&dryRun=All")
    assert status == 201 and managers(body) == [("kubectl", "Apply")]
    assert api.store.current_rev() == rev
    await do_apply(api, pod("web"))
    rev = api.store.current_rev()
    changed = pod("web")
    changed["spec"]["containers"][0]["image"] = "busybox:1.37"
    status, body = await do_apply(api, changed, query="&dryRun=All")
    assert status == 200 and body["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert api.store.current_rev() == rev
    stored = (await api.store.get("pods/default/web")).value
    assert stored["spec"]["containers"][0]["image"] == "busybox:1.36"


async def test_bad_applies_are_refused_and_change_nothing(api: Api) -> None:
    await do_apply(api, pod("web"))
    rev = api.store.current_rev()
    _, body = await api.call("PATCH", f"{NS}/pods/web", pod("web"), ctype=APPLY)
    assert_status(body, 422, "Invalid")
    assert "fieldManager is required" in body["message"]
    _, body = await api.call("PATCH", f"{NS}/pods/web?fieldManager=m", raw=b"a: [", ctype=APPLY)
    assert_status(body, 400, "BadRequest")
    _, body = await api.call("PATCH", f"{NS}/pods/web?fieldManager=m", [1], ctype=APPLY)
    assert_status(body, 400, "BadRequest")
    wrong_kind = {**pod("web"), "kind": "ConfigMap"}
    _, body = await do_apply(api, wrong_kind)
    assert_status(body, 400, "BadRequest")
    no_key = pod("web")
    no_key["spec"]["containers"][0]["ports"] = [{"name": "http"}]
    _, body = await do_apply(api, no_key)
    assert_status(body, 422, "Invalid")
    bad_image = pod("web")
    bad_image["spec"]["containers"][0]["image"] = ""
    _, body = await do_apply(api, bad_image, manager="kubectl", query="&force=true")
    assert_status(body, 422, "Invalid")
    _, body = await api.call(
        "PATCH", f"{NS}/pods/web/status?fieldManager=m", pod("web"), ctype=APPLY
    )
    assert_status(body, 415, "UnsupportedMediaType")
    _, body = await api.call(
        "PATCH", "/api/v1/namespaces/nowhere/pods/x?fieldManager=m", pod("x"), ctype=APPLY
    )
    assert_status(body, 404, "NotFound")
    assert api.store.current_rev() == rev


async def test_boards_are_not_sent_managed_fields(api: Api) -> None:
    await do_apply(api, pod("web"))
    assert (await api.store.get("pods/default/web")).value["metadata"]["managedFields"]
    sync = plan_node_sync(api.backend, "pi-01", 0)
    (entry,) = [e for e in sync.upserts if e.key == "pods/default/web"]
    sent = edgeproto.decode_object(entry.data)
    assert sent["spec"]["containers"][0]["image"] == "busybox:1.36"
    assert "managedFields" not in sent["metadata"]


async def test_a_board_reading_an_object_is_not_sent_managed_fields(api: Api) -> None:
    await do_apply(api, pod("web"))
    ask = edgeproto.Message(edgeproto.Kind.REQUEST, id=1, res="pods/default/web", op="get")
    answer = await Reports(api.store, Counter()).request("pi-01", {"pods/default/web": 1}, ask)
    sent = edgeproto.decode_object(answer["object"])
    assert sent["metadata"]["name"] == "web" and "managedFields" not in sent["metadata"]
