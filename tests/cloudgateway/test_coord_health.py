"""Node health across replicas: the leader judges "connected anywhere" from the
session keys of every live replica, measured on its own clock. A node whose
replica died and that reconnects elsewhere stays Ready; one that does not come
back is NotReady after the grace period; replicas' wall clocks do not matter."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import edgeproto
from cloudgateway._coord import Fence
from cloudgateway._health import NodeHealth, ready_condition
from cloudgateway._store import SqliteBackend, Store
from cloudgateway.etcd._client import EtcdClient
from tests.cloudgateway.test_coord import TTL, kill9, replicas, spawn
from tests.conftest import EtcdCluster, ManualClock, wait_for

GRACE = 0.4


def _ready_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


@asynccontextmanager
async def store_at(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    try:
        yield Store(backend)
    finally:
        backend.close()


async def ready(store: Store, node: str) -> str | None:
    rec = await store.get(edgeproto.make_key("nodes", "", node))
    cond = ready_condition(rec.value.get("status"))
    return None if cond is None else str(cond["status"])


class Watcher:
    """Records every Ready value the nodes show while it runs."""

    def __init__(self, store: Store, nodes: list[str]) -> None:
        self.store = store
        self.seen: dict[str, set[str | None]] = {n: set() for n in nodes}

    async def run(self) -> None:
        while True:
            for node, values in self.seen.items():
                values.add(await ready(self.store, node))
            await trio.sleep(0.02)  # sampling Ready all along the scenario


async def test_a_listed_node_is_alive_on_the_leaders_own_clock(tmp_path: Path) -> None:
    """No heartbeat reaches the leader for a node on another replica; being
    listed is its sign of life, stamped with the leader's clock."""
    async with store_at(tmp_path) as store:
        for n in ("remote", "gone"):
            await store.create(edgeproto.make_key("nodes", "", n), _ready_node(n))
        listed = {"remote", "gone"}
        clock = ManualClock()
        health = NodeHealth(store, grace=GRACE, clock=clock)

        async def is_unknown(node: str) -> bool:
            return await ready(store, node) == "Unknown"

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: health.run(
                    lambda: listed, listed_is_alive=True, task_status=task_status
                )
            )
            for _ in range(5):  # listed, never a heartbeat: stays Ready for many graces
                clock.advance(GRACE)
                await trio.sleep(0.1)  # loop passes (every 0.05 s) see the new time
            assert await ready(store, "remote") == "True"
            assert await ready(store, "gone") == "True"

            listed.discard("gone")  # its replica died, it did not come back
            await trio.sleep(0.1)  # a pass after the change, before time moves
            clock.advance(GRACE / 2)  # a gap shorter than the grace: nothing yet
            await trio.sleep(0.1)
            assert await ready(store, "gone") == "True"
            clock.advance(GRACE)
            await wait_for(lambda: is_unknown("gone"))
            assert await ready(store, "remote") == "True"
            nursery.cancel_scope.cancel()


async def test_each_term_gives_ready_nodes_a_full_grace_period(tmp_path: Path) -> None:
    """A replica that leads again does not judge by what it saw in its earlier
    term: a node last seen long ago gets the grace period from the new term."""
    async with store_at(tmp_path) as store:
        await store.create(edgeproto.make_key("nodes", "", "n"), _ready_node("n"))
        clock = ManualClock()
        health = NodeHealth(store, grace=GRACE, clock=clock)
        health.heartbeat("n")  # seen in an earlier term
        clock.advance(100 * GRACE)  # then other replicas led for a long time
        listed = {"n"}
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: health.run(
                    lambda: listed, listed_is_alive=True, task_status=task_status
                )
            )
            listed.clear()  # not yet reconnected at the start of this term
            await trio.sleep(0.2)  # several passes
            assert await ready(store, "n") == "True"
            clock.advance(GRACE)
            await wait_for(lambda: _eq(ready(store, "n"), "Unknown"))
            nursery.cancel_scope.cancel()


async def _eq(value: Any, want: str) -> bool:
    return bool(await value == want)


async def test_a_node_moving_from_a_killed_replica_stays_ready(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    grace = 3.0 * TTL
    async with store_at(tmp_path) as store, replicas(etcd, "leader", "other") as (rs, nursery):
        leader, other = rs
        await wait_for(lambda: leader.coord.is_leader or other.coord.is_leader)
        if not leader.coord.is_leader:
            leader, other = other, leader
        # Two nodes connected to a replica in another process (its hub wrote them Ready).
        for n in ("moving", "lost"):
            await store.create(edgeproto.make_key("nodes", "", n), _ready_node(n))
        proc = spawn(etcd, "doomed", "moving", "lost")
        try:
            health = NodeHealth(store, grace=grace)

            async def judge(fence: Fence) -> None:
                await health.run(leader.coord.fleet_connected, listed_is_alive=True)

            nursery.start_soon(leader.coord.leading, judge)
            await wait_for(lambda: leader.coord.fleet_connected() == {"moving", "lost"})
            watcher = Watcher(store, ["moving", "lost"])
            nursery.start_soon(watcher.run)

            kill9(proc)
            # Its lease expires; "moving" reconnects to the other replica (after
            # its own backoff), "lost" never comes back.
            await wait_for(lambda: leader.coord.fleet_connected() == set(), timeout=TTL + 5)
            await trio.sleep(1.0)  # the agent's reconnect backoff: scenario time
            other.sessions.add("moving")
            await wait_for(lambda: _eq(ready(store, "lost"), "Unknown"), timeout=grace + 5)
            assert leader.coord.session_owner("moving") == other.coord.replicas()[0]
            await wait_for(lambda: "Unknown" in watcher.seen["lost"])  # the watcher saw it too
            assert watcher.seen["moving"] == {"True"}, watcher.seen
        finally:
            if proc.poll() is None:
                kill9(proc)


async def test_wall_clock_skew_between_replicas_flips_nothing(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Replica b's wall clock is an hour ahead. Leadership moves from a to b and
    back while nodes stay connected: no node is ever anything but Ready."""
    grace = 2.0 * TTL
    skew = 3600.0
    async with store_at(tmp_path) as store, replicas(etcd, "a", "b") as (rs, nursery):
        a, b = rs
        healths = {
            "a": NodeHealth(store, grace=grace),
            "b": NodeHealth(store, grace=grace, wall=lambda: time.time() + skew),
        }
        for r in rs:
            health = healths[r.coord.replica_id]

            async def judge(fence: Fence, health: NodeHealth = health, r: Any = r) -> None:
                await health.run(r.coord.fleet_connected, listed_is_alive=True)

            nursery.start_soon(r.coord.leading, judge)
        # Each replica's hub accepts a node (Ready, stamped with its own wall clock).
        a.sessions.add("on-a")
        await healths["a"].connected("on-a")
        b.sessions.add("on-b")
        await healths["b"].connected("on-b")
        rec = await store.get(edgeproto.make_key("nodes", "", "on-b"))
        stamp = edgeproto.parse_rfc3339(ready_condition(rec.value["status"])["lastTransitionTime"])
        assert stamp > time.time() + skew / 2  # the skew is real
        for r in rs:
            await wait_for(lambda r=r: r.coord.fleet_connected() == {"on-a", "on-b"})
        watcher = Watcher(store, ["on-a", "on-b"])
        nursery.start_soon(watcher.run)

        for _ in range(2):  # hand leadership over twice: to the skewed replica and back
            old = a if a.coord.is_leader else b
            new = b if old is a else a
            lease = old.coord._lease
            assert lease is not None
            # The leader's lease is lost (as when etcd expires it); the other leads.
            c = EtcdClient(etcd.endpoints)
            try:
                c.lease_revoke(lease)
            finally:
                c.close()
            await wait_for(lambda new=new: new.coord.is_leader, timeout=TTL + 5)
            # and runs past a full grace period of its own
            await trio.sleep(grace + 1.0)  # observing that nothing happens
        assert watcher.seen == {"on-a": {"True"}, "on-b": {"True"}}, watcher.seen
        assert healths["a"].transitions + healths["b"].transitions == 2  # the two connects
