"""Garbage collection by ownerReferences against a real gateway over HTTP:
Background, Foreground and Orphan deletes (DeleteOptions in the body, as
kubectl sends them), dependents of an owner recreated under the same name,
references to a gone owner beside a live one, and a collector that starts
after the owner went (it lists the store, it does not need the event)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway.controllers import run_controllers
from cloudgateway.controllers._gc import GarbageCollector
from tests.conftest import Gateway, start_gateway, wait_for

NS = "/api/v1/namespaces/default"


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> Gateway:
    return await start_gateway(nursery, tmp_path / "gw", controllers=False)


async def start_gc(nursery: trio.Nursery, gw: Gateway) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await run_controllers(gw.store, [GarbageCollector(gw.store)], task_status=task_status)

    await nursery.start(run)
    return scope


async def make_owner(gw: Gateway, name: str) -> dict[str, Any]:
    code, obj = await gw.api(
        "POST", f"{NS}/configmaps", {"metadata": {"name": name}, "data": {"k": "v"}}
    )
    assert code == 201, obj
    return obj  # type: ignore[no-any-return]


def ref(owner: dict[str, Any], block: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": block,
    }


async def make_dependent(gw: Gateway, name: str, *owners: dict[str, Any]) -> None:
    body = {
        "metadata": {"name": name, "ownerReferences": list(owners)},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    code, obj = await gw.api("POST", f"{NS}/pods", body)
    assert code == 201, obj


async def exists(gw: Gateway, path: str) -> bool:
    code, _ = await gw.api("GET", path)
    return code == 200


async def gone(gw: Gateway, path: str) -> bool:
    return not await exists(gw, path)


async def test_background_delete_collects_dependents(nursery: trio.Nursery, gw: Gateway) -> None:
    await start_gc(nursery, gw)
    owner = await make_owner(gw, "owner")
    other = await make_owner(gw, "other")
    await make_dependent(gw, "d1", ref(owner))
    await make_dependent(gw, "d2", ref(owner))
    await make_dependent(gw, "shared", ref(owner), {**ref(other), "controller": False})
    code, body = await gw.api(
        "DELETE", f"{NS}/configmaps/owner", {"propagationPolicy": "Background"}
    )
    assert code == 200, body
    assert await gone(gw, f"{NS}/configmaps/owner")  # at once
    await wait_for(lambda: gone(gw, f"{NS}/pods/d1"))
    await wait_for(lambda: gone(gw, f"{NS}/pods/d2"))

    # the one with a live owner stays, its reference to the gone one removed
    async def shared_refs() -> list[str]:
        _, obj = await gw.api("GET", f"{NS}/pods/shared")
        return [r["name"] for r in obj["metadata"].get("ownerReferences", [])]

    await wait_for(lambda: shared_refs(), what="shared pod keeps a reference")
    await wait_for(lambda: _eq(shared_refs(), ["other"]))


async def _eq(aw: Any, want: Any) -> bool:
    return bool(await aw == want)


async def test_foreground_delete_waits_for_dependents(nursery: trio.Nursery, gw: Gateway) -> None:
    owner = await make_owner(gw, "owner")
    await make_dependent(gw, "d1", ref(owner))
    await make_dependent(gw, "d2", ref(owner, block=False))
    code, body = await gw.api(
        "DELETE", f"{NS}/configmaps/owner", {"propagationPolicy": "Foreground"}
    )
    assert code == 200, body
    assert body["metadata"]["deletionTimestamp"]
    assert body["metadata"]["finalizers"] == ["foregroundDeletion"]
    # nothing collects yet: the owner waits, marked
    code, cur = await gw.api("GET", f"{NS}/configmaps/owner")
    assert code == 200 and cur["metadata"]["finalizers"] == ["foregroundDeletion"]
    # deleting it again is no error and changes nothing
    code, again = await gw.api(
        "DELETE", f"{NS}/configmaps/owner", {"propagationPolicy": "Foreground"}
    )
    assert (
        code == 200 and again["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"]
    )
    await start_gc(nursery, gw)
    await wait_for(lambda: gone(gw, f"{NS}/pods/d1"))
    await wait_for(lambda: gone(gw, f"{NS}/pods/d2"))
    await wait_for(lambda: gone(gw, f"{NS}/configmaps/owner"))


async def test_orphan_delete_keeps_dependents(nursery: trio.Nursery, gw: Gateway) -> None:
    owner = await make_owner(gw, "owner")
    other = await make_owner(gw, "other")
    await make_dependent(gw, "d1", ref(owner))
    await make_dependent(gw, "d2", ref(owner), {**ref(other), "controller": False})
    code, body = await gw.api("DELETE", f"{NS}/configmaps/owner", {"propagationPolicy": "Orphan"})
    assert code == 200, body
    assert body["metadata"]["finalizers"] == ["orphan"]
    await start_gc(nursery, gw)
    await wait_for(lambda: gone(gw, f"{NS}/configmaps/owner"))
    code, d1 = await gw.api("GET", f"{NS}/pods/d1")
    assert code == 200 and "ownerReferences" not in d1["metadata"]
    code, d2 = await gw.api("GET", f"{NS}/pods/d2")
    assert code == 200 and [r["name"] for r in d2["metadata"]["ownerReferences"]] == ["other"]
    # the deprecated orphanDependents means the same
    o2 = await make_owner(gw, "o2")
    await make_dependent(gw, "d3", ref(o2))
    code, _ = await gw.api("DELETE", f"{NS}/configmaps/o2", {"orphanDependents": True})
    assert code == 200
    await wait_for(lambda: gone(gw, f"{NS}/configmaps/o2"))
    assert await exists(gw, f"{NS}/pods/d3")


async def test_collector_started_late_finds_dangling_dependents(
    nursery: trio.Nursery, gw: Gateway
) -> None:
    owner = await make_owner(gw, "owner")
    await make_dependent(gw, "d1", ref(owner))
    code, _ = await gw.api("DELETE", f"{NS}/configmaps/owner")  # no body: Background
    assert code == 200
    # an owner recreated under the same name is another owner (another uid)
    await make_owner(gw, "owner")
    assert await exists(gw, f"{NS}/pods/d1")
    await start_gc(nursery, gw)
    await wait_for(lambda: gone(gw, f"{NS}/pods/d1"))
    assert await exists(gw, f"{NS}/configmaps/owner")


async def test_removing_the_last_finalizer_deletes_a_marked_object(
    nursery: trio.Nursery, gw: Gateway
) -> None:
    body = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    code, obj = await gw.api("POST", f"{NS}/configmaps", body)
    assert code == 201, obj
    await start_gc(nursery, gw)
    code, _ = await gw.api("DELETE", f"{NS}/configmaps/held", {"propagationPolicy": "Orphan"})
    assert code == 200

    async def finalizers() -> Any:
        _, cur = await gw.api("GET", f"{NS}/configmaps/held")
        return cur["metadata"].get("finalizers")

    # the collector drops its own finalizer only: the user's holds the object
    await wait_for(lambda: _eq(finalizers(), ["example.com/hold"]))
    assert await exists(gw, f"{NS}/configmaps/held")
    code, _ = await trio.to_thread.run_sync(
        gw.request,
        "PATCH",
        f"{NS}/configmaps/held",
        {"metadata": {"finalizers": None}},
        "application/merge-patch+json",
    )
    assert code == 200
    await wait_for(lambda: gone(gw, f"{NS}/configmaps/held"))


async def test_bad_propagation_policy_is_refused(gw: Gateway) -> None:
    await make_owner(gw, "owner")
    code, body = await gw.api("DELETE", f"{NS}/configmaps/owner", {"propagationPolicy": "Sideways"})
    assert code == 422, body
    assert body["details"]["causes"][0]["field"] == "propagationPolicy"
    assert await exists(gw, f"{NS}/configmaps/owner")  # nothing lost
