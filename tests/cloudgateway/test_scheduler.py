"""The scheduler: its pure decisions (quantities, requests, filters, score,
kube-scheduler's message) and the controller on a real SQLite store run by the
controller runtime: binding with a guarded write, spreading, room for requests,
PodScheduled=False + FailedScheduling, retry when nodes change, and pods on a
node that went NotReady left where they are."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._store import SqliteBackend, Store
from cloudgateway.controllers import run_controllers
from cloudgateway.controllers._scheduler import Scheduler
from cloudgateway.controllers._scheduling import (
    Requests,
    choose_node,
    failure_message,
    is_pending,
    node_infos,
    parse_quantity,
    pod_requests,
)
from tests.conftest import wait_for


def node(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    ready: str = "True",
    cpu: str | None = "4",
    memory: str | None = "4Gi",
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
) -> dict[str, Any]:
    alloc = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("pods", "110")) if v}
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {
            "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def pod(
    name: str,
    *,
    owner: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    selector: dict[str, str] | None = None,
    node_name: str | None = None,
    **spec_extra: Any,
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    container: dict[str, Any] = {"name": "app", "image": "busybox"}
    if requests:
        container["resources"] = {"requests": requests}
    spec: dict[str, Any] = {"containers": [container], **spec_extra}
    if selector:
        spec["nodeSelector"] = selector
    if node_name:
        spec["nodeName"] = node_name
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
             "uid": f"uid-{owner}", "controller": True}
        ]  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


# ---- pure -----------------------------------------------------------------------------


def test_quantities_parse_as_kubernetes_writes_them() -> None:
    assert parse_quantity("100m") == Decimal("0.1")
    assert parse_quantity("1.5") == Decimal("1.5")
    assert parse_quantity("128Mi") == 128 * 2**20
    assert parse_quantity("1G") == 10**9
    assert parse_quantity("2e3") == 2000
    assert parse_quantity(2) == 2
    for bad in ("", "abc", "-1", "1Xi", "Mi", None, True, "nan", "1" * 70):
        assert parse_quantity(bad) is None, bad


def test_pod_requests_sum_containers_and_take_the_largest_init() -> None:
    p = pod("a", cpu="250m", memory="64Mi")
    p["spec"]["containers"].append(
        {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Mi"}}}
    )
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]
    assert pod_requests(p) == Requests(cpu=2000, memory=65 * 2**20)


def test_spread_then_least_requested_then_name() -> None:
    nodes = [node("n1"), node("n2"), node("n3", cpu="8")]
    placed = [pod("x", owner="rs", node_name="n1"), pod("y", owner="rs", node_name="n3")]
    infos = node_infos(nodes, placed)
    best, _ = choose_node(infos, pod("z", owner="rs", cpu="1"))
    assert best is not None and best.name == "n2"  # no sibling there
    # Without siblings anywhere, the node with the most room left wins.
    best, _ = choose_node(infos, pod("w", owner="other", cpu="1"))
    assert best is not None and best.name == "n3"


def test_failure_message_is_kube_schedulers() -> None:
    nodes = [
        node("a", {"site": "b"}),
        node(
            "b", {"site": "a"}, taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]
        ),
        node("c", {"site": "a"}, taints=[{"key": "gpu", "effect": "NoExecute"}]),
        node("d", {"site": "a"}, ready="Unknown"),
        node("e", {"site": "a"}, cpu="1"),
        node("f", {"site": "a"}, unschedulable=True),
    ]
    infos = node_infos(nodes, [pod("big", cpu="900m", node_name="e")])
    best, reasons = choose_node(infos, pod("p", cpu="500m", selector={"site": "a"}))
    assert best is None
    assert failure_message(len(infos), reasons) == (
        "0/6 nodes are available: 1 Insufficient cpu, "
        "1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {dedicated: x}, "
        "1 node(s) had untolerated taint {gpu}, "
        "1 node(s) had untolerated taint {node.kubernetes.io/unreachable}, "
        "1 node(s) were unschedulable."
    )
    assert failure_message(0, {}) == "no nodes available to schedule pods"


def test_what_waits_for_the_scheduler() -> None:
    assert is_pending(pod("a"))
    assert not is_pending(pod("a", node_name="n1"))
    assert not is_pending(pod("a", schedulerName="other"))
    assert is_pending(pod("a", schedulerName="default-scheduler"))
    done = pod("a")
    done["status"] = {"phase": "Succeeded"}
    assert not is_pending(done)
    deleting = pod("a")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not is_pending(deleting)


# ---- the controller on a real store ---------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        yield Store(backend)
    finally:
        backend.close()


async def bound(store: Store, name: str) -> str | None:
    rec = await store.get(edgeproto.make_key("pods", "default", name))
    node_name = rec.value.get("spec", {}).get("nodeName")
    return str(node_name) if node_name else None


async def scheduled_condition(store: Store, name: str) -> dict[str, Any] | None:
    rec = await store.get(edgeproto.make_key("pods", "default", name))
    for c in (rec.value.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled":
            return dict(c)
    return None


async def events_about(store: Store, name: str, reason: str) -> list[dict[str, Any]]:
    recs, _ = await store.list("events/default/")
    return [
        r.value
        for r in recs
        if r.value["involvedObject"]["name"] == name and r.value["reason"] == reason
    ]


async def put(store: Store, obj: dict[str, Any]) -> None:
    await store.create(edgeproto.key_of(obj), obj)


async def test_binds_spreads_and_respects_room(nursery: trio.Nursery, store: Store) -> None:
    for n in (node("n1", {"site": "a"}, cpu="1"), node("n2", {"site": "a"}), node("n3")):
        await put(store, n)
    sched = Scheduler(store)
    await nursery.start(run_controllers, store, [sched])
    for i in range(3):
        await put(store, pod(f"r{i}", owner="rs", selector={"site": "a"}, cpu="400m"))

    async def placements() -> list[str | None]:
        return [await bound(store, f"r{i}") for i in range(3)]

    got = await wait_for(lambda: _all(placements()))
    assert sorted(got) == ["n1", "n2", "n2"] or sorted(got) == ["n1", "n1", "n2"]
    assert set(got) == {"n1", "n2"}  # both matching nodes used, n3 never
    cond = await scheduled_condition(store, "r0")
    assert cond is not None and cond["status"] == "True"
    assert await events_about(store, "r0", "Scheduled")


async def _all(coro: Any) -> Any:
    got = await coro
    return got if all(got) else None


async def test_unschedulable_says_why_and_retries_when_nodes_change(
    nursery: trio.Nursery, store: Store
) -> None:
    await put(store, node("n1", {"site": "b"}))
    await put(
        store,
        node("n2", {"site": "a"}, taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}]),
    )
    await put(store, node("n3", {"site": "a"}, ready="False"))
    await nursery.start(run_controllers, store, [Scheduler(store)])
    await put(store, pod("p", selector={"site": "a"}))
    message = (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {k: v}, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready}."
    )

    async def says_why() -> bool:
        c = await scheduled_condition(store, "p")
        return c is not None and c.get("reason") == "Unschedulable" and c["message"] == message

    await wait_for(says_why)
    events = await wait_for(lambda: events_about(store, "p", "FailedScheduling"))
    assert events[0]["message"] == message and events[0]["type"] == "Warning"
    # The node that was NotReady comes back: the pod goes there.
    await store.modify(
        "nodes//n3",
        lambda rec: {**rec.value["status"], "conditions": [{"type": "Ready", "status": "True"}]},
        status=True,
    )
    assert await wait_for(lambda: bound(store, "p")) == "n3"


async def test_a_bound_pod_on_a_node_that_went_not_ready_stays(
    nursery: trio.Nursery, store: Store
) -> None:
    await put(store, node("n1"))
    await put(store, node("n2"))
    await nursery.start(run_controllers, store, [Scheduler(store)])
    await put(store, pod("p", owner="rs"))
    first = await wait_for(lambda: bound(store, "p"))
    await store.modify(
        f"nodes//{first}",
        lambda rec: {**rec.value["status"], "conditions": [{"type": "Ready", "status": "Unknown"}]},
        status=True,
    )
    # A new pod goes to the other node (a sign the scheduler saw the change) ...
    await put(store, pod("q", owner="rs"))
    other = await wait_for(lambda: bound(store, "q"))
    assert other != first
    # ... and the first stays where it was.
    assert await bound(store, "p") == first


async def test_a_pod_changed_under_the_cycle_is_not_overwritten(store: Store) -> None:
    """The bind is guarded by the revision the cycle read: a pod bound by
    someone else in between keeps that binding."""
    await put(store, node("n1"))
    await put(store, pod("p"))
    sched = Scheduler(store)
    rec = await store.get("pods/default/p")
    await store.modify(
        "pods/default/p",
        lambda r: {**r.value, "spec": {**r.value["spec"], "nodeName": "elsewhere"}},
    )
    infos = node_infos([node("n1")], [])
    assert not await sched._bind(rec, infos["n1"])
    assert await bound(store, "p") == "elsewhere"
