"""The controller runtime on a real (SQLite) store: event → key mapping with
owner mapping, per-controller dedup queues, retries with backoff, periodic
resync, delayed requeue, prefix expansion, and a lost subscription that makes
it list everything again. Timing under trio's autojump clock."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._store import SqliteBackend, Store
from cloudgateway.controllers import (
    Runtime,
    WorkQueue,
    controller_owner_key,
    owner_keys,
    run_controllers,
)
from tests.conftest import wait_for


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        yield Store(backend)
    finally:
        backend.close()


def pod(name: str, owner: str | None = None, ns: str = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": owner,
                "uid": f"uid-{owner}",
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {}}


class Recorder:
    """Watches daemonsets and pods; a pod maps to its controlling DaemonSet."""

    name = "recorder"
    prefixes = ("daemonsets/", "pods/")

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self.fail: dict[str, int] = {}
        self.again: dict[str, float] = {}
        self.busy = 0
        self.max_busy = 0
        self.gate: trio.Event | None = None

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("daemonsets/"):
            return [key]
        return controller_owner_key(key, value, prev, "DaemonSet", "daemonsets")

    def count(self, key: str) -> int:
        return sum(1 for k, _ in self.seen if k == key)

    async def reconcile(self, key: str) -> float | None:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.seen.append((key, trio.current_time()))
            left = self.fail.get(key, 0)
            if left:
                self.fail[key] = left - 1
                raise RuntimeError(f"injected failure for {key}")
            return self.again.pop(key, None)
        finally:
            self.busy -= 1


def test_owner_keys_maps_only_the_controlling_owner_of_the_kind() -> None:
    obj = pod("p", "web")
    obj["metadata"]["ownerReferences"].append(
        {"apiVersion": "v1", "kind": "DaemonSet", "name": "other", "uid": "u2"}
    )
    assert owner_keys(obj, "DaemonSet", "daemonsets", "ns1") == ["daemonsets/ns1/web"]
    assert owner_keys(obj, "DaemonSet", "daemonsets", "ns1", controller_only=False) == [
        "daemonsets/ns1/web",
        "daemonsets/ns1/other",
    ]
    assert owner_keys(obj, "ReplicaSet", "replicasets", "ns1") == []
    assert owner_keys(None, "DaemonSet", "daemonsets", "ns1") == []
    # an owner change queues both owners
    assert controller_owner_key(
        "pods/default/p", pod("p", "b"), pod("p", "a"), "DaemonSet", "daemonsets"
    ) == [
        "daemonsets/default/b",
        "daemonsets/default/a",
    ]


async def test_work_queue_dedups_and_never_hands_one_key_to_two_workers() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    assert await q.get() == "a"
    q.add("a")  # while a worker holds it: not handed out again yet
    assert len(q) == 1
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")  # ... now it is queued again, once
    assert len(q) == 1
    assert await q.get() == "a"
    q.done("a")
    q.done("b")
    assert len(q) == 0


async def test_delayed_adds_arrive_when_due(autojump_clock: trio.abc.Clock) -> None:
    q = WorkQueue()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.run_delays)
        t0 = trio.current_time()
        q.add_after("late", 10.0)
        q.add_after("early", 2.0)
        assert await q.get() == "early"
        assert trio.current_time() - t0 == pytest.approx(2.0)
        assert await q.get() == "late"
        assert trio.current_time() - t0 == pytest.approx(10.0)
        nursery.cancel_scope.cancel()


async def test_events_map_to_keys_and_bursts_collapse(nursery: trio.Nursery, store: Store) -> None:
    await store.create("daemonsets/default/web", {"kind": "DaemonSet", "metadata": {"name": "web"}})
    rec = Recorder()
    rt: Runtime = await nursery.start(run_controllers, store, [rec])
    # listed at start
    await wait_for(lambda: rec.count("daemonsets/default/web") >= 1)
    # a burst of pod events while the reconcile is held is collapsed to one more
    rec.gate = trio.Event()
    await store.create("pods/default/p0", pod("p0", "web"))
    await wait_for(lambda: rec.busy == 1)
    before = rec.count("daemonsets/default/web")
    for i in range(1, 20):
        await store.create(f"pods/default/p{i}", pod(f"p{i}", "web"))
    await store.create("pods/default/orphan", pod("orphan"))  # no owner: nothing
    rec.gate.set()
    await wait_for(lambda: rec.count("daemonsets/default/web") == before + 2)
    assert rec.max_busy == 1  # one key never reconciled by two workers at once
    await store.delete("pods/default/p3")  # a delete maps through the last value
    await wait_for(lambda: rec.count("daemonsets/default/web") == before + 3)
    assert {k for k, _ in rec.seen} == {"daemonsets/default/web"}
    assert rt.statistics()["recorder_errors"] == 0


async def test_failures_retry_with_growing_backoff(nursery: trio.Nursery, store: Store) -> None:
    # real time: the store's worker thread would let a virtual clock jump
    rec = Recorder()
    rec.fail["daemonsets/default/x"] = 4
    rt = Runtime(store, [rec], resync=3600, backoff_base=0.05)
    await nursery.start(rt.run)
    await store.create("daemonsets/default/x", {"kind": "DaemonSet", "metadata": {"name": "x"}})
    await wait_for(lambda: rec.count("daemonsets/default/x") == 5)
    times = [t for k, t in rec.seen if k == "daemonsets/default/x"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps):  # 0.05, 0.1, 0.2, 0.4 s at least: doubling
        assert gap >= 0.05 * 2**n * 0.95, gaps
    assert rt.statistics()["recorder_errors"] == 4
    # success clears the count: the next failure starts from the base delay again
    rec.fail["daemonsets/default/x"] = 1
    rt.enqueue("recorder", "daemonsets/default/x")
    await wait_for(lambda: rec.count("daemonsets/default/x") == 7)
    t = [t for k, t in rec.seen if k == "daemonsets/default/x"]
    assert 0.05 * 0.95 <= t[-1] - t[-2] < 0.4


async def test_periodic_resync_and_requested_requeue(nursery: trio.Nursery, store: Store) -> None:
    await store.create("daemonsets/default/a", {"kind": "DaemonSet", "metadata": {"name": "a"}})
    rec = Recorder()
    rec.again["daemonsets/default/a"] = 0.2  # the first reconcile asks to be called again
    t0 = trio.current_time()
    await nursery.start(
        lambda task_status: run_controllers(store, [rec], resync=1.0, task_status=task_status)
    )
    await wait_for(lambda: rec.count("daemonsets/default/a") >= 2)
    assert 0.19 <= rec.seen[1][1] - t0 < 0.9  # requeued, before any resync
    await wait_for(lambda: rec.count("daemonsets/default/a") >= 3)
    assert rec.seen[2][1] - t0 >= 0.99  # the resync


class Expander:
    """A node change concerns every DaemonSet: it yields the prefix."""

    name = "expander"
    prefixes = ("nodes/",)

    def __init__(self) -> None:
        self.seen: list[str] = []

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        return ["daemonsets/"] if prev is not None else []

    async def reconcile(self, key: str) -> None:
        self.seen.append(key)


async def test_a_prefix_key_expands_to_every_object_under_it(
    nursery: trio.Nursery, store: Store
) -> None:
    for n in ("a", "b", "c"):
        await store.create(f"daemonsets/ns/{n}", {"kind": "DaemonSet", "metadata": {"name": n}})
    await store.create("nodes//n1", {"kind": "Node", "metadata": {"name": "n1"}})
    ex = Expander()
    await nursery.start(run_controllers, store, [ex])
    await store.update(
        "nodes//n1", {"kind": "Node", "metadata": {"name": "n1", "labels": {"x": "1"}}}
    )
    await wait_for(
        lambda: sorted(ex.seen) == ["daemonsets/ns/a", "daemonsets/ns/b", "daemonsets/ns/c"]
    )


async def test_a_lost_subscription_lists_everything_again(
    nursery: trio.Nursery, store: Store
) -> None:
    rec = Recorder()
    rt = Runtime(store, [rec], subscriber_buffer=1)
    await nursery.start(rt.run)
    assert rt.relists == 1
    # writes committed together publish back to back: a buffer of one overflows
    async with trio.open_nursery() as writers:
        for i in range(30):
            writers.start_soon(
                store.create,
                f"daemonsets/default/d{i}",
                {"kind": "DaemonSet", "metadata": {"name": f"d{i}"}},
            )
    await wait_for(lambda: rt.relists >= 2)
    await wait_for(lambda: all(rec.count(f"daemonsets/default/d{i}") >= 1 for i in range(30)))


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        with pytest.raises(ValueError, match="unique"):
            Runtime(Store(backend), [Recorder(), Recorder()])
    finally:
        backend.close()
