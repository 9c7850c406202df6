"""The ReplicaSet controller with the scheduler on a real SQLite store, run by
the controller runtime: pods from the template with ownerReferences and
generated names, bound by the scheduler, status as boards report readiness,
scale up and down (surplus ranked: unscheduled, offline node, not Ready,
newest), minReadySeconds, and a pod on an offline node neither replaced nor
counted away."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._store import SqliteBackend, Store
from cloudgateway.controllers import run_controllers
from cloudgateway.controllers._pods import deletion_rank, selector_matches
from cloudgateway.controllers._replicaset import ReplicaSetController
from cloudgateway.controllers._scheduler import Scheduler
from tests.cloudgateway.apps_fixtures import replicaset
from tests.cloudgateway.test_scheduler import node
from tests.conftest import wait_for


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        yield Store(backend)
    finally:
        backend.close()


async def pods_of(store: Store, rs: str) -> list[dict[str, Any]]:
    recs, _ = await store.list("pods/default/")
    return [
        r.value
        for r in recs
        if any(o["name"] == rs for o in r.value["metadata"].get("ownerReferences", []))
    ]


async def report_ready(store: Store, pod: dict[str, Any], ready: bool = True) -> None:
    """What a board's status report writes (through the hub, in production)."""
    status = {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False",
             "lastTransitionTime": edgeproto.rfc3339(time.time())}
        ],
    }  # fmt: skip
    key = edgeproto.key_of(pod)
    await store.modify(key, lambda rec: status, status=True)


async def set_ready(store: Store, name: str, ready: str) -> None:
    await store.modify(
        f"nodes//{name}",
        lambda rec: {**rec.value["status"], "conditions": [{"type": "Ready", "status": ready}]},
        status=True,
    )


async def status_of(store: Store, key: str) -> dict[str, Any]:
    return dict((await store.get(key)).value.get("status") or {})


def test_selectors() -> None:
    assert selector_matches({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not selector_matches({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert not selector_matches({}, {"a": "1"})
    exprs = {"matchExpressions": [
        {"key": "a", "operator": "In", "values": ["1", "2"]},
        {"key": "b", "operator": "NotIn", "values": ["x"]},
        {"key": "c", "operator": "Exists"},
        {"key": "d", "operator": "DoesNotExist"},
    ]}  # fmt: skip
    assert selector_matches(exprs, {"a": "2", "c": ""})
    assert not selector_matches(exprs, {"a": "2", "c": "", "d": ""})
    assert not selector_matches(exprs, {"a": "2", "b": "x", "c": ""})


def test_surplus_ranking() -> None:
    def p(name: str, node_name: str | None, ready: bool, created: str) -> dict[str, Any]:
        conds = [{"type": "Ready", "status": "True" if ready else "False"}]
        spec = {"nodeName": node_name} if node_name else {}
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": spec,
            "status": {"phase": "Running" if node_name else "Pending", "conditions": conds},
        }

    pods = [
        p("old-ready", "n1", True, "2026-01-01T00:00:00Z"),
        p("new-ready", "n1", True, "2026-01-02T00:00:00Z"),
        p("not-ready", "n1", False, "2026-01-01T00:00:00Z"),
        p("offline", "n2", True, "2026-01-01T00:00:00Z"),
        p("unbound", None, False, "2026-01-01T00:00:00Z"),
    ]
    order = [x["metadata"]["name"] for x in sorted(pods, key=lambda x: deletion_rank(x, {"n2"}))]
    assert order == ["unbound", "offline", "not-ready", "new-ready", "old-ready"]


async def test_replicas_created_spread_reported_and_scaled(
    nursery: trio.Nursery, store: Store
) -> None:
    for n in ("n1", "n2", "n3"):
        await store.create(f"nodes//{n}", node(n))
    await nursery.start(run_controllers, store, [Scheduler(store), ReplicaSetController(store)])
    rs = replicaset("web-abc", replicas=3, labels={"app": "web"})
    await store.create("replicasets/default/web-abc", rs)
    pods = await wait_for(
        lambda: _when(pods_of(store, "web-abc"), lambda ps: len(ps) == 3 and all(
            x["spec"].get("nodeName") for x in ps))
    )  # fmt: skip
    assert {x["spec"]["nodeName"] for x in pods} == {"n1", "n2", "n3"}
    rs_uid = (await store.get("replicasets/default/web-abc")).value["metadata"]["uid"]
    for x in pods:
        assert re.fullmatch(r"web-abc-[bcdfghjklmnpqrstvwxz2456789]{5}", x["metadata"]["name"])
        assert x["metadata"]["generateName"] == "web-abc-"
        assert x["metadata"]["labels"] == {"app": "web"}
        (ref,) = x["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                       "uid": rs_uid, "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    for x in pods:
        await report_ready(store, x)
    st = await wait_for(
        lambda: _when(status_of(store, "replicasets/default/web-abc"),
                      lambda s: s.get("availableReplicas") == 3)
    )  # fmt: skip
    assert st["replicas"] == st["fullyLabeledReplicas"] == st["readyReplicas"] == 3
    assert st["observedGeneration"] == 1

    # Scale down to 1: the not-Ready one goes first, then the newest.
    await report_ready(store, pods[1], ready=False)
    await store.modify(
        "replicasets/default/web-abc",
        lambda r: {**r.value, "spec": {**r.value["spec"], "replicas": 2}},
    )
    left = await wait_for(lambda: _when(pods_of(store, "web-abc"), lambda ps: len(ps) == 2))
    assert pods[1]["metadata"]["name"] not in {x["metadata"]["name"] for x in left}
    st = await wait_for(
        lambda: _when(status_of(store, "replicasets/default/web-abc"),
                      lambda s: s.get("observedGeneration") == 2 and s["replicas"] == 2)
    )  # fmt: skip
    assert st["availableReplicas"] == 2

    # A node goes offline: its pod is not replaced, and it is counted apart.
    victim = left[0]["spec"]["nodeName"]
    await set_ready(store, victim, "Unknown")
    st = await wait_for(
        lambda: _when(status_of(store, "replicasets/default/web-abc"),
                      lambda s: s.get("offlineReplicas") == 1)
    )  # fmt: skip
    assert st["replicas"] == 2 and st["availableReplicas"] == 2
    assert len(await pods_of(store, "web-abc")) == 2
    # Scaling down to 1 removes the one on the offline node first.
    await store.modify(
        "replicasets/default/web-abc",
        lambda r: {**r.value, "spec": {**r.value["spec"], "replicas": 1}},
    )
    (last,) = await wait_for(lambda: _when(pods_of(store, "web-abc"), lambda ps: len(ps) == 1))
    assert last["spec"]["nodeName"] != victim


async def test_min_ready_seconds(nursery: trio.Nursery, store: Store) -> None:
    """Available only after Ready for minReadySeconds: the controller looks
    again when that time has passed (a delayed requeue, not a resync)."""
    await store.create("nodes//n1", node("n1"))
    await nursery.start(
        functools.partial(run_controllers, resync=3600),
        store,
        [Scheduler(store), ReplicaSetController(store)],
    )
    rs = replicaset("slow", replicas=1, labels={"app": "slow"})
    rs["spec"]["minReadySeconds"] = 2
    await store.create("replicasets/default/slow", rs)
    (p,) = await wait_for(lambda: _when(pods_of(store, "slow"), lambda ps: len(ps) == 1))
    t0 = time.time()
    await report_ready(store, p)
    st = await wait_for(
        lambda: _when(status_of(store, "replicasets/default/slow"),
                      lambda s: s.get("readyReplicas") == 1)
    )  # fmt: skip
    assert st["availableReplicas"] == 0
    await wait_for(
        lambda: _when(status_of(store, "replicasets/default/slow"),
                      lambda s: s.get("availableReplicas") == 1)
    )  # fmt: skip
    assert time.time() - t0 >= 1.0  # whole seconds in the condition: at least 1 s later


async def _when(coro: Any, pred: Any) -> Any:
    got = await coro
    return got if pred(got) else None
