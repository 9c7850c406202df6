"""Replica coordination on a real etcd (scripts/etcd): one leader among many, a
new one within the lease TTL of the old one's death (a process killed with
SIGKILL), leader-only work cancelled when leadership is lost, the registry and
the session keys following the replicas' lives, etcd faults survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway._coord import LOCAL_FENCE, Fence, LocalCoordinator, ReplicaInfo
from cloudgateway.etcd._client import EtcdClient
from cloudgateway.etcd._coord import EtcdCoordinator
from tests.conftest import EtcdCluster, wait_for

TTL = 2  # etcd's floor with scripts/etcd's 1 s election timeout
ROOT = Path(__file__).resolve().parents[2]

# A replica in its own process, so that it can die for real (SIGKILL: no lease
# revocation, its keys stay until etcd expires its lease).
_REPLICA = """
import sys, trio
from cloudgateway.etcd._client import EtcdClient
from cloudgateway.etcd._coord import EtcdCoordinator
endpoints, rid, ttl, *nodes = sys.argv[1:]
client = EtcdClient(endpoints.split(","), timeout=2.0)
coord = EtcdCoordinator(client, replica_id=rid, hub_url=f"wss://{rid}:1/",
                        local_sessions=lambda: nodes, ttl=int(ttl))
async def main():
    async with trio.open_nursery() as n:
        await n.start(coord.run)
        print("started", flush=True)
trio.run(main)
"""


class Replica:
    """An in-process coordinator whose ``run`` can be stopped on its own."""

    def __init__(self, coord: EtcdCoordinator, sessions: set[str]) -> None:
        self.coord = coord
        self.sessions = sessions
        self.scope = trio.CancelScope()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.coord.run(task_status=task_status)

    def stop(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def replicas(
    cluster: EtcdCluster, *ids: str, ttl: int = TTL
) -> AsyncIterator[tuple[list[Replica], trio.Nursery]]:
    client = EtcdClient(cluster.endpoints, timeout=1.0)
    out: list[Replica] = []
    try:
        async with trio.open_nursery() as nursery:
            for rid in ids:
                sessions: set[str] = set()
                coord = EtcdCoordinator(
                    client,
                    replica_id=rid,
                    hub_url=f"wss://{rid}:7000/",
                    peer_url=f"https://{rid}:7001/",
                    local_sessions=lambda s=sessions: s,  # type: ignore[misc]
                    ttl=ttl,
                    reconcile_interval=0.1,
                )
                r = Replica(coord, sessions)
                await nursery.start(r._run)
                out.append(r)
            yield out, nursery
            nursery.cancel_scope.cancel()
    finally:
        client.close()


def leaders(rs: list[Replica]) -> list[str]:
    return [r.coord.replica_id for r in rs if r.coord.is_leader]


def spawn(cluster: EtcdCluster, rid: str, *nodes: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPLICA, ",".join(cluster.endpoints), rid, str(TTL), *nodes],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    return proc


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def etcd_get(cluster: EtcdCluster, key: bytes) -> bytes | None:
    c = EtcdClient(cluster.endpoints)
    try:
        kvs = c.range(key).kvs
        return bytes(kvs[0].value) if kvs else None
    finally:
        c.close()


# ---- the local coordinator


async def test_the_local_coordinator_is_one_leader_holding_the_hubs_sessions() -> None:
    sessions = {"pi-01"}
    coord = LocalCoordinator(replica_id="gw", local_sessions=lambda: sessions)
    fences: list[Fence] = []

    async def work(fence: Fence) -> None:
        fences.append(fence)

    async with trio.open_nursery() as nursery:
        await nursery.start(coord.run)
        nursery.start_soon(coord.leading, work)
        await wait_for(lambda: fences)
        assert fences == [LOCAL_FENCE] and coord.is_leader and coord.fence == LOCAL_FENCE
        assert coord.fleet_connected() == {"pi-01"}
        assert coord.session_owner("pi-01") == ReplicaInfo("gw")
        assert coord.session_owner("pi-02") is None
        assert coord.hub_urls() == []  # the join service derives it, as before
        assert LocalCoordinator(hub_url="wss://h:1/").hub_urls() == ["wss://h:1/"]
        nursery.cancel_scope.cancel()


# ---- election


async def test_three_replicas_elect_exactly_one_leader(etcd: EtcdCluster) -> None:
    async with replicas(etcd, "a", "b", "c") as (rs, _):
        await wait_for(lambda: len(leaders(rs)) == 1, what=lambda: f"leaders {leaders(rs)}")
        (leader,) = leaders(rs)
        await wait_for(lambda: all(r.coord.leader_id() == leader for r in rs))
        for r in rs:
            assert {x.id for x in r.coord.replicas()} == {"a", "b", "c"}
            assert r.coord.replicas()[0].id == r.coord.replica_id
            urls = r.coord.hub_urls()
            assert urls[0] == f"wss://{r.coord.replica_id}:7000/" and len(urls) == 3
        # Over several refreshes of the lease, leadership does not move or double.
        fence = next(r for r in rs if r.coord.is_leader).coord.fence
        for _ in range(3 * TTL * 5):
            assert leaders(rs) == [leader]
            await trio.sleep(0.2)  # observing stability over time, not waiting for a condition
        assert next(r for r in rs if r.coord.is_leader).coord.fence == fence
        assert etcd_get(etcd, b"/edgeflock/leader") == leader.encode()

        # A replica that stops leaves at once (its lease revoked): another leads.
        old = next(r for r in rs if r.coord.is_leader)
        old.stop()
        rest = [r for r in rs if r is not old]
        t0 = trio.current_time()
        await wait_for(lambda: len(leaders(rest)) == 1, timeout=TTL + 3)
        assert trio.current_time() - t0 < TTL + 1
        await wait_for(lambda: all(len(r.coord.replicas()) == 2 for r in rest))
        new_fence = next(r for r in rest if r.coord.is_leader).coord.fence
        assert fence is not None and new_fence is not None
        assert new_fence.create_revision > fence.create_revision  # a new term, a new fence


async def test_a_killed_leader_is_replaced_within_its_lease_ttl(etcd: EtcdCluster) -> None:
    proc = spawn(etcd, "dead", "pi-01")
    try:
        async with replicas(etcd, "a", "b") as (rs, _):
            await wait_for(lambda: all(r.coord.leader_id() == "dead" for r in rs))
            await wait_for(lambda: all(r.coord.session_owner("pi-01") for r in rs))
            assert rs[0].coord.session_owner("pi-01") == ReplicaInfo("dead", "wss://dead:1/")
            assert rs[0].coord.hub_urls() == ["wss://a:7000/", "wss://b:7000/", "wss://dead:1/"]
            assert leaders(rs) == []
            kill9(proc)
            t0 = trio.current_time()
            await wait_for(lambda: len(leaders(rs)) == 1, timeout=TTL + 5)
            took = trio.current_time() - t0
            assert took < TTL + 2, took
            # The dead replica's registration and sessions went with its lease.
            for r in rs:
                await wait_for(lambda r=r: "dead" not in {x.id for x in r.coord.replicas()})
                assert r.coord.fleet_connected() == set()
                assert r.coord.session_owner("pi-01") is None
                assert "wss://dead:1/" not in r.coord.hub_urls()
    finally:
        if proc.poll() is None:
            kill9(proc)


async def test_leader_work_is_cancelled_when_the_lease_is_lost(etcd: EtcdCluster) -> None:
    async with replicas(etcd, "a") as ([a], nursery):
        running: list[Fence] = []
        ended: list[Fence] = []

        async def work(fence: Fence) -> None:
            running.append(fence)
            try:
                await trio.sleep_forever()
            finally:
                ended.append(fence)

        nursery.start_soon(a.coord.leading, work)
        await wait_for(lambda: running)
        first = running[0]
        assert first == a.coord.fence and first.key == b"/edgeflock/leader"
        # etcd loses the lease (as when it expires): its keys go, the work stops.
        lease = a.coord._lease
        assert lease is not None
        other = EtcdClient(etcd.endpoints)
        try:
            other.lease_revoke(lease)
        finally:
            other.close()
        await wait_for(lambda: ended == [first], what=lambda: f"ended {ended}")
        # A new lease, registered again, leads again: the work runs again, newly fenced.
        await wait_for(lambda: len(running) == 2, timeout=3 * TTL + 5)
        assert running[1].create_revision > first.create_revision
        assert a.coord.fence == running[1]
        assert a.coord.statistics()["lease_grants"] == 2


# ---- sessions


async def test_sessions_follow_the_hubs_and_a_moved_node_keeps_its_key(
    etcd: EtcdCluster,
) -> None:
    async with replicas(etcd, "a", "b") as ([a, b], _):
        a.sessions.update({"n1", "n2"})
        b.sessions.add("n3")
        for r in (a, b):
            await wait_for(lambda r=r: r.coord.fleet_connected() == {"n1", "n2", "n3"})
        assert a.coord.session_owner("n3") == b.coord.replicas()[0]
        assert b.coord.session_owner("n1") == a.coord.replicas()[0]
        assert a.coord.session_owner("n1") == a.coord.replicas()[0]

        # n2 moves to b; a's hub notices its session ended only afterwards.
        b.sessions.add("n2")
        await wait_for(lambda: etcd_get(etcd, b"/edgeflock/sessions/n2") == b"b")
        a.sessions.discard("n2")
        a.sessions.discard("n1")  # n1 just leaves
        await wait_for(lambda: etcd_get(etcd, b"/edgeflock/sessions/n1") is None)
        await wait_for(lambda: a.coord.fleet_connected() == {"n2", "n3"})
        assert etcd_get(etcd, b"/edgeflock/sessions/n2") == b"b"  # a did not delete b's key
        assert a.coord.session_owner("n2") == b.coord.replicas()[0]

        # And back to a: b's late delete must not take a's key either.
        a.sessions.add("n2")
        await wait_for(lambda: etcd_get(etcd, b"/edgeflock/sessions/n2") == b"a")
        b.sessions.discard("n2")
        await wait_for(lambda: b.coord.session_owner("n2") == a.coord.replicas()[0])
        for _ in range(10):  # several reconcile rounds of both replicas
            await trio.sleep(0.1)  # observing that nothing happens: no condition to wait on
        assert etcd_get(etcd, b"/edgeflock/sessions/n2") == b"a"


async def test_many_sessions_are_written_in_batches(etcd: EtcdCluster) -> None:
    async with replicas(etcd, "a", "b") as ([a, b], _):
        nodes = {f"pi-{i:04d}" for i in range(450)}
        a.sessions.update(nodes)
        await wait_for(lambda: b.coord.fleet_connected() == nodes)
        # at most one write per session; a batch whose answer was lost (a deadline
        # under load) is not counted although it landed, and is not written again
        assert 450 - 100 <= a.coord.statistics()["session_puts"] <= 450
        a.sessions.clear()
        await wait_for(lambda: b.coord.fleet_connected() == set())
        assert 450 - 100 <= a.coord.statistics()["session_deletes"] <= 450


# ---- etcd faults


async def test_coordination_survives_an_etcd_member_dying(etcd3: EtcdCluster) -> None:
    async with replicas(etcd3, "a", "b", ttl=3) as (rs, _):
        await wait_for(lambda: len(leaders(rs)) == 1)
        dead = etcd3.leader()
        etcd3.kill(dead)  # the raft leader: a new one is elected
        rs[1].sessions.add("n1")
        await wait_for(lambda: rs[0].coord.session_owner("n1") == rs[1].coord.replicas()[0])
        await wait_for(lambda: len(leaders(rs)) == 1)
        assert {x.id for x in rs[0].coord.replicas()} == {"a", "b"}
        etcd3.restart(dead)
        follower = next(i for i in range(3) if i != etcd3.leader())
        etcd3.kill(follower)
        rs[0].sessions.add("n2")
        await wait_for(lambda: rs[1].coord.fleet_connected() == {"n1", "n2"})
        await wait_for(lambda: len(leaders(rs)) == 1)
        assert {x.id for x in rs[1].coord.replicas()} == {"a", "b"}


async def test_etcd_gone_longer_than_the_ttl_drops_leadership_until_it_returns(
    etcd: EtcdCluster,
) -> None:
    async with replicas(etcd, "a") as ([a], nursery):
        running: list[Fence] = []
        ended: list[Fence] = []

        async def work(fence: Fence) -> None:
            running.append(fence)
            try:
                await trio.sleep_forever()
            finally:
                ended.append(fence)

        nursery.start_soon(a.coord.leading, work)
        await wait_for(lambda: running)
        etcd.kill(0)
        t0 = trio.current_time()
        await wait_for(lambda: ended, timeout=TTL + 5)
        assert trio.current_time() - t0 <= TTL + 0.5  # before etcd could expire the lease
        assert not a.coord.is_leader
        etcd.restart(0)
        await wait_for(lambda: len(running) == 2, timeout=20)
        assert a.coord.is_leader and a.coord.fence == running[1]


# ---- replica ids


async def test_a_restarted_replica_waits_out_its_killed_runs_lease(etcd: EtcdCluster) -> None:
    proc = spawn(etcd, "a", "pi-01")
    kill9(proc)  # its registration stays until etcd expires its lease
    t0 = trio.current_time()
    async with replicas(etcd, "a") as ([a], _):
        assert trio.current_time() - t0 < TTL + 2
        assert [x.id for x in a.coord.replicas()] == ["a"]
        # the old run's session key goes: this run's hub does not hold pi-01
        await wait_for(lambda: a.coord.fleet_connected() == set(), timeout=TTL + 3)


async def test_two_live_replicas_with_one_id_is_a_clear_error(etcd: EtcdCluster) -> None:
    proc = spawn(etcd, "twin")
    try:
        client = EtcdClient(etcd.endpoints, timeout=1.0)
        coord = EtcdCoordinator(client, replica_id="twin", local_sessions=set, ttl=TTL)
        try:
            with pytest.raises(RuntimeError, match="registered in etcd by another live"):
                await coord.run()
        finally:
            client.close()
        assert etcd_get(etcd, b"/edgeflock/replicas/twin") is not None  # the live one's, kept
    finally:
        kill9(proc)


def test_bad_arguments_are_refused() -> None:
    client = EtcdClient(["127.0.0.1:1"])
    try:
        for kwargs in ({"replica_id": ""}, {"replica_id": "a/b"}, {"root": "/x"}, {"ttl": 0}):
            args: dict[str, Any] = {"replica_id": "a", "local_sessions": set, **kwargs}
            with pytest.raises(ValueError):
                EtcdCoordinator(client, **args)
    finally:
        client.close()
