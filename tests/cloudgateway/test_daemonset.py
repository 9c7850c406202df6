"""The DaemonSet controller end to end: a real gateway, its API over HTTP,
the controllers on its store, and simulated boards enrolled for real that
speak the hub protocol and report their pods' status (``simboard.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway.controllers import GarbageCollector, run_controllers
from cloudgateway.controllers._daemonset import DaemonSetController
from tests.cloudgateway.simboard import SimBoard
from tests.conftest import Gateway, start_gateway, wait_for

DS = "/apis/apps/v1/namespaces/default/daemonsets"
PODS = "/api/v1/namespaces/default/pods"
CRS = "/apis/apps/v1/namespaces/default/controllerrevisions"


def daemonset(
    name: str = "sensor",
    image: str = "sensor:1.4",
    selector: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if selector is not None:
        pod_spec["nodeSelector"] = selector
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            **spec,
        },
    }


@dataclass
class Fleet:
    gw: Gateway
    boards: dict[str, SimBoard]
    nursery: trio.Nursery
    scope: trio.CancelScope
    ds: DaemonSetController

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        code, obj = await self.gw.api(method, path, body)
        assert code < 300, (method, path, code, obj)
        return obj

    async def patch(self, path: str, body: Any) -> Any:
        code, obj = await trio.to_thread.run_sync(
            self.gw.request, "PATCH", path, body, "application/merge-patch+json"
        )
        assert code == 200, (path, code, obj)
        return obj

    async def label(self, node: str, **labels: str | None) -> None:
        await self.patch(f"/api/v1/nodes/{node}", {"metadata": {"labels": labels}})

    async def ds_status(self, name: str = "sensor") -> dict[str, Any]:
        obj = await self.api("GET", f"{DS}/{name}")
        return obj.get("status") or {}

    async def images(self) -> dict[str, list[str]]:
        """Images of the DaemonSet pods each board runs."""
        return {
            n: sorted(i for imgs in b.images().values() for i in imgs)
            for n, b in self.boards.items()
        }

    async def until(self, pred: Callable[[], Any], timeout: float = 15) -> None:
        await wait_for(pred, timeout=timeout)


async def start_controllers(
    nursery: trio.Nursery, gw: Gateway
) -> tuple[trio.CancelScope, DaemonSetController]:
    scope = trio.CancelScope()
    ds = DaemonSetController(gw.store)

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await run_controllers(
                gw.store, [GarbageCollector(gw.store), ds], resync=5.0, task_status=task_status
            )

    await nursery.start(run)
    return scope, ds


@pytest.fixture
async def fleet(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Fleet]:
    gw = await start_gateway(nursery, tmp_path / "gw", grace=1.0, controllers=False)
    boards: dict[str, SimBoard] = {}
    for name in ("b1", "b2", "b3"):
        b = SimBoard(gw, name, tmp_path / name)
        await b.join()
        b.start(nursery)
        boards[name] = b
    for b in boards.values():
        with trio.fail_after(10):
            await b.connected.wait()
    scope, ds = await start_controllers(nursery, gw)
    f = Fleet(gw, boards, nursery, scope, ds)
    await f.label("b1", site="a")
    await f.label("b2", site="a")
    yield f
    scope.cancel()
    async with trio.open_nursery() as n:  # each close may wait for the hub's answer
        for b in boards.values():
            n.start_soon(b.stop)


def _eq(want: Any) -> Callable[[Any], bool]:
    return lambda got: bool(got == want)


async def test_placement_follows_labels_and_delete_removes_pods(fleet: Fleet) -> None:
    f = fleet
    t0 = trio.current_time()
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    b1, b2, b3 = f.boards["b1"], f.boards["b2"], f.boards["b3"]
    await f.until(lambda: len(b1.pods()) == 1 and len(b2.pods()) == 1)
    assert trio.current_time() - t0 < 5  # the bound
    assert not b3.pods()
    pod = next(iter(b1.pods().values()))
    meta = pod["metadata"]
    assert meta["name"].startswith("sensor-") and len(meta["name"]) == len("sensor-") + 5
    assert set(meta["labels"]) == {"app", "controller-revision-hash", "pod-template-generation"}
    ref = meta["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["controller"], ref["blockOwnerDeletion"]) == (
        "DaemonSet",
        "sensor",
        True,
        True,
    )
    assert pod["spec"]["nodeName"] == "b1"
    assert any(t["key"] == "node.kubernetes.io/unreachable" for t in pod["spec"]["tolerations"])

    async def status_is(**want: int) -> bool:
        st = await f.ds_status()
        return all(st.get(k) == v for k, v in want.items())

    await f.until(
        lambda: status_is(
            desiredNumberScheduled=2,
            numberReady=2,
            numberAvailable=2,
            updatedNumberScheduled=2,
            currentNumberScheduled=2,
            numberMisscheduled=0,
        )
    )
    # one ControllerRevision, revision 1, named <ds>-<hash>
    crs = (await f.api("GET", CRS))["items"]
    assert [c["revision"] for c in crs] == [1]
    assert crs[0]["metadata"]["name"] == f"sensor-{meta['labels']['controller-revision-hash']}"
    assert crs[0]["data"]["spec"]["template"]["$patch"] == "replace"

    # labelling the third board adds a pod there, unlabelling removes it
    await f.label("b3", site="a")
    await f.until(lambda: len(b3.pods()) == 1)
    await f.until(lambda: status_is(desiredNumberScheduled=3, numberAvailable=3))
    await f.label("b3", site=None)
    await f.until(lambda: not b3.pods())
    await f.until(lambda: status_is(desiredNumberScheduled=2))
    # b1's pod was never touched by all this
    assert list(b1.pods()) == [meta["name"]] and sum(b1.starts.values()) == 1

    # deleting the DaemonSet removes its pods from the boards (background GC)
    await f.api("DELETE", f"{DS}/sensor", {"propagationPolicy": "Background"})
    await f.until(lambda: not b1.pods() and not b2.pods())
    await f.until(lambda: _crs_gone(f))


async def _crs_gone(f: Fleet) -> bool:
    return not (await f.api("GET", CRS))["items"]


async def test_taints_and_tolerations(fleet: Fleet) -> None:
    f = fleet
    await f.patch(
        "/api/v1/nodes/b2",
        {"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}},
    )
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.until(lambda: len(b1.pods()) == 1)
    tolerant = daemonset("tolerant", selector={"site": "a"})
    tolerant["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    await f.api("POST", DS, tolerant)
    await f.until(lambda: any(n.startswith("tolerant-") for n in b2.pods()))
    assert not any(n.startswith("sensor-") for n in b2.pods())
    # NoExecute evicts the pods that do not tolerate it; NoSchedule alone does not
    await f.patch(
        "/api/v1/nodes/b1",
        {"spec": {"taints": [{"key": "maint", "effect": "NoSchedule"}]}},
    )
    await f.until(lambda: _status_field(f, "sensor", "numberMisscheduled", 1))
    assert any(n.startswith("sensor-") for n in b1.pods())  # stays
    await f.patch(
        "/api/v1/nodes/b1",
        {"spec": {"taints": [{"key": "maint", "effect": "NoExecute"}]}},
    )
    await f.until(lambda: not b1.pods())  # both DaemonSets' pods go


async def _status_field(f: Fleet, name: str, field: str, want: Any) -> bool:
    return (await f.ds_status(name)).get(field) == want


async def set_image(f: Fleet, image: str, name: str = "sensor") -> None:
    await f.patch(
        f"{DS}/{name}",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}},
    )


async def test_rolling_update_with_a_board_offline(fleet: Fleet) -> None:
    f = fleet
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    await b2.stop()
    await f.until(lambda: _node_ready(f, "b2", "Unknown"))
    await set_image(f, "sensor:1.5")
    # the online board is updated; the offline one does not block the rollout
    await f.until(lambda: b1.images() and list(b1.images().values()) == [["sensor:1.5"]])

    async def rolled_out() -> bool:
        st = await f.ds_status()
        obj = await f.api("GET", f"{DS}/sensor")
        return (
            st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("updatedNumberScheduled") == st.get("desiredNumberScheduled") == 1
            and st.get("numberAvailable") == 1
        )

    await f.until(rolled_out)
    cond = {c["type"]: c for c in (await f.ds_status()).get("conditions", [])}
    assert cond["NodesOffline"]["status"] == "True"
    assert cond["NodesOffline"]["message"] == "pending on 1 offline node(s): b2"
    assert (await f.ds_status())["pendingOffline"] == ["b2"]
    # the offline board's old pod is still there, in the store
    pods = (await f.api("GET", f"{PODS}?labelSelector=app%3Dsensor"))["items"]
    assert sorted(p["spec"]["containers"][0]["image"] for p in pods) == ["sensor:1.4", "sensor:1.5"]
    old_uid = next(iter(b2.pods().values()))["metadata"]["uid"]
    # back: it converges by delta, its old pod replaced once
    b2.start(f.nursery)
    await f.until(lambda: list(b2.images().values()) == [["sensor:1.5"]])
    await f.until(lambda: _no_condition(f, "NodesOffline"))
    assert b2.resyncs[-1] == "delta"
    assert b2.starts[old_uid] == 1 and sum(b2.starts.values()) == 2  # old once, new once
    await f.until(lambda: _status_field(f, "sensor", "updatedNumberScheduled", 2))


async def _node_ready(f: Fleet, node: str, want: str) -> bool:
    obj = await f.api("GET", f"/api/v1/nodes/{node}")
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return bool(c["status"] == want)
    return False


async def _no_condition(f: Fleet, kind: str) -> bool:
    return all(c["type"] != kind for c in (await f.ds_status()).get("conditions", []))


async def test_bad_image_pauses_at_threshold_and_undo_continues(fleet: Fleet) -> None:
    f = fleet
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    good = {n: list(b.pods()) for n, b in (("b1", b1), ("b2", b2))}
    await set_image(f, "sensor:bad")

    async def paused() -> Any:
        obj = await f.api("GET", f"{DS}/sensor")
        return (obj["metadata"].get("annotations") or {}).get("edgeflock.io/paused")

    await f.until(paused)
    reason = await paused()
    assert "ErrImagePull" in reason and "max-failed" in reason
    # paused after one failure (1 of 2 is more than 25 %): the other board is untouched
    imgs = [b1.images(), b2.images()]
    assert sorted(i for d in imgs for v in d.values() for i in v) == ["sensor:1.4", "sensor:bad"]
    events = (await f.api("GET", "/api/v1/namespaces/default/events"))["items"]
    assert any(e["reason"] == "RolloutPaused" and e["type"] == "Warning" for e in events)
    cond = {c["type"]: c for c in (await f.ds_status()).get("conditions", [])}
    assert cond["RolloutPaused"]["reason"] == "FailureThreshold"
    # undo, as kubectl does it: the previous revision's patch applied to the template
    crs = sorted((await f.api("GET", CRS))["items"], key=lambda c: c["revision"])
    assert [c["revision"] for c in crs] == [1, 2]
    code, _ = await trio.to_thread.run_sync(
        f.gw.request,
        "PATCH",
        f"{DS}/sensor",
        crs[0]["data"],
        "application/strategic-merge-patch+json",
    )
    assert code == 200
    await f.until(lambda: _is_none(paused))
    await f.until(
        lambda: (
            b1.images()
            and b2.images()
            and all(v == ["sensor:1.4"] for b in (b1, b2) for v in b.images().values())
        )
    )
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    # the board that never got the bad image kept its pod
    untouched = [n for n, b in (("b1", b1), ("b2", b2)) if list(b.pods()) == good[n]]
    assert len(untouched) == 1
    # revision 1 is the newest again (as Kubernetes renumbers it)
    crs = sorted((await f.api("GET", CRS))["items"], key=lambda c: c["revision"])
    assert crs[-1]["metadata"]["name"] == crs_name_of(crs, "sensor:1.4")
    assert crs[-1]["revision"] == 3


def crs_name_of(crs: list[dict[str, Any]], image: str) -> str:
    for c in crs:
        if c["data"]["spec"]["template"]["spec"]["containers"][0]["image"] == image:
            return str(c["metadata"]["name"])
    raise AssertionError(image)


async def _is_none(fn: Callable[[], Any]) -> bool:
    return await fn() is None


async def test_gateway_restart_mid_rollout_continues(nursery: trio.Nursery, tmp_path: Path) -> None:
    gw = await start_gateway(nursery, tmp_path / "gw", grace=1.0, controllers=False)
    boards = []
    for name in ("r1", "r2", "r3"):
        b = SimBoard(gw, name, tmp_path / name)
        await b.join()
        b.start(nursery)
        boards.append(b)
    scope, _ = await start_controllers(nursery, gw)
    spec = daemonset(minReadySeconds=2)
    await gw.api("POST", DS, spec)
    await wait_for(lambda: all(len(b.pods()) == 1 for b in boards), timeout=15)
    await wait_for(lambda: _gw_status(gw, "numberAvailable", 3), timeout=15)
    code, _ = await trio.to_thread.run_sync(
        gw.request,
        "PATCH",
        f"{DS}/sensor",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "sensor:2"}]}}}},
        "application/merge-patch+json",
    )
    assert code == 200
    # minReadySeconds 2, maxUnavailable 1: one board at a time; stop in the middle
    await wait_for(
        lambda: sum(1 for b in boards for v in b.images().values() if v == ["sensor:2"]) >= 1,
        timeout=15,
    )
    scope.cancel()
    await gw.stop()
    gw2 = await start_gateway(
        nursery, tmp_path / "gw", ports=gw.ports, grace=1.0, controllers=False
    )
    for b in boards:
        b.gw = gw2
    scope2, _ = await start_controllers(nursery, gw2)
    await wait_for(
        lambda: all(list(b.images().values()) == [["sensor:2"]] for b in boards), timeout=30
    )
    await wait_for(lambda: _gw_status(gw2, "updatedNumberScheduled", 3), timeout=15)
    for b in boards:
        assert sum(b.starts.values()) == 2  # old once, new once: nothing recreated
        await b.stop()
    scope2.cancel()


async def _gw_status(gw: Gateway, field: str, want: Any) -> bool:
    code, obj = await gw.api("GET", f"{DS}/sensor")
    return code == 200 and (obj.get("status") or {}).get(field) == want


async def test_offline_through_two_rollouts_converges_once(fleet: Fleet) -> None:
    f = fleet
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    await b2.stop()
    await f.until(lambda: _node_ready(f, "b2", "Unknown"))
    await set_image(f, "sensor:1.5")
    await f.until(lambda: list(b1.images().values()) == [["sensor:1.5"]])
    await set_image(f, "sensor:1.6")
    await f.until(lambda: list(b1.images().values()) == [["sensor:1.6"]])
    await f.until(lambda: _status_field(f, "sensor", "updatedNumberScheduled", 1))
    b2.start(f.nursery)
    await f.until(lambda: list(b2.images().values()) == [["sensor:1.6"]])
    assert sum(b2.starts.values()) == 2  # 1.4, then straight to 1.6
    # revision 1 is still kept: the offline board's pod used it until it came back
    crs = (await f.api("GET", CRS))["items"]
    assert sorted(c["revision"] for c in crs) == [1, 2, 3]


async def test_on_delete_updates_only_deleted_pods(fleet: Fleet) -> None:
    f = fleet
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}, updateStrategy={"type": "OnDelete"}))
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    await set_image(f, "sensor:1.5")
    await f.until(lambda: _status_field(f, "sensor", "observedGeneration", 2))
    assert list(b1.images().values()) == [["sensor:1.4"]]
    (name,) = b1.pods()
    await f.api("DELETE", f"{PODS}/{name}")
    await f.until(lambda: list(b1.images().values()) == [["sensor:1.5"]])
    assert list(b2.images().values()) == [["sensor:1.4"]]
    await f.until(lambda: _status_field(f, "sensor", "updatedNumberScheduled", 1))


async def test_surge_starts_the_new_pod_before_the_old_goes(fleet: Fleet) -> None:
    f = fleet
    b1 = f.boards["b1"]
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "50%"}}
    await f.api("POST", DS, daemonset(selector={"site": "a"}, updateStrategy=strategy))
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    before = len(b1.pod_counts)
    await set_image(f, "sensor:1.5")
    await f.until(
        lambda: all(list(b.images().values()) == [["sensor:1.5"]] for b in (b1, f.boards["b2"]))
    )
    seen = b1.pod_counts[before:]  # what the board held after each batch of the update
    assert 0 not in seen  # never without a pod
    assert 2 in seen  # old and new side by side for a while


async def test_orphan_delete_leaves_pods_running(fleet: Fleet) -> None:
    f = fleet
    b1 = f.boards["b1"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    await f.until(lambda: len(b1.pods()) == 1)
    (name,) = b1.pods()
    await f.api("DELETE", f"{DS}/sensor", {"propagationPolicy": "Orphan"})
    await f.until(lambda: _gone(f, f"{DS}/sensor"))
    pod = await f.api("GET", f"{PODS}/{name}")
    assert "ownerReferences" not in pod["metadata"]
    assert list(b1.pods()) == [name]
    # the same DaemonSet applied again adopts its pods: nothing restarts
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    new = await f.api("GET", f"{DS}/sensor")

    async def adopted() -> bool:
        p = await f.api("GET", f"{PODS}/{name}")
        refs = p["metadata"].get("ownerReferences") or []
        return [r["uid"] for r in refs] == [new["metadata"]["uid"]]

    await f.until(adopted)
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 2))
    assert list(b1.pods()) == [name] and sum(b1.starts.values()) == 1


async def _gone(f: Fleet, path: str) -> bool:
    code, _ = await f.gw.api("GET", path)
    return code == 404


async def test_foreground_delete(fleet: Fleet) -> None:
    f = fleet
    b1, b2 = f.boards["b1"], f.boards["b2"]
    await f.api("POST", DS, daemonset(selector={"site": "a"}))
    await f.until(lambda: len(b1.pods()) == 1 and len(b2.pods()) == 1)
    await f.api("DELETE", f"{DS}/sensor", {"propagationPolicy": "Foreground"})
    await f.until(lambda: _gone(f, f"{DS}/sensor"))
    await f.until(lambda: not b1.pods() and not b2.pods())
    assert not (await f.api("GET", PODS))["items"]


async def test_a_node_label_change_in_the_middle_of_a_rollout(fleet: Fleet) -> None:
    """A board that stops matching while a rollout is under way loses its pod
    and does not hold the rollout; matching again, it gets the current revision."""
    f = fleet
    b3 = f.boards["b3"]
    await f.label("b3", site="a")
    ds = daemonset(
        selector={"site": "a"},
        minReadySeconds=2,  # one board every 2 s at least: the rollout is slow enough to cut into
        updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
    )
    await f.api("POST", DS, ds)
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 3), timeout=30)
    await set_image(f, "sensor:1.5")
    await f.label("b3", site=None)  # mid-rollout
    await f.until(lambda: not b3.pods(), timeout=30)
    await f.until(
        lambda: all(list(f.boards[n].images().values()) == [["sensor:1.5"]] for n in ("b1", "b2")),
        timeout=30,
    )
    await f.until(lambda: _status_field(f, "sensor", "updatedNumberScheduled", 2), timeout=30)
    assert (await f.ds_status())["desiredNumberScheduled"] == 2
    await f.label("b3", site="a")
    await f.until(lambda: list(b3.images().values()) == [["sensor:1.5"]], timeout=30)
    await f.until(lambda: _status_field(f, "sensor", "numberAvailable", 3), timeout=30)
