"""The store on a real etcd as replicas use it: two Store objects ("replicas")
on one etcd, concurrent writers, compaction under a follower, fencing, and
etcd members dying (the contract every backend keeps is in test_store.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._store import (
    Conflict,
    Event,
    Fenced,
    NotFound,
    Store,
    StoreError,
    SubscriptionLost,
    Unavailable,
)
from cloudgateway.etcd import open_etcd_backend
from cloudgateway.etcd._backend import EtcdBackend
from cloudgateway.etcd._client import EtcdClient, pb
from tests.conftest import EtcdCluster, wait_for


def pod(name: str, node: str | None = None, **spec: Any) -> dict[str, Any]:
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def backend_on(cluster: EtcdCluster, timeout: float = 5.0) -> EtcdBackend:
    return open_etcd_backend(cluster.url, tls=None, node_of=edgeproto.owner_node, timeout=timeout)


@contextlib.asynccontextmanager
async def replica(cluster: EtcdCluster, nursery: trio.Nursery) -> AsyncIterator[Store]:
    b = backend_on(cluster)
    store = Store(b, subscriber_buffer=1000)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await store.run(task_status=task_status)

    await nursery.start(run)
    try:
        yield store
    finally:
        scope.cancel()
        b.close()


@contextlib.contextmanager
def raw_client(cluster: EtcdCluster) -> Iterator[EtcdClient]:
    c = EtcdClient(cluster.endpoints)
    try:
        yield c
    finally:
        c.close()


async def test_a_write_through_one_replica_reaches_the_others_subscribers(
    etcd: EtcdCluster, nursery: trio.Nursery
) -> None:
    async with replica(etcd, nursery) as a, replica(etcd, nursery) as b:
        assert a.follows and b.follows
        with a.subscribe() as sub_a, b.subscribe() as sub_b:
            ev = await a.create("pods/default/x", pod("x", "pi-01"))
            upd = await b.update_status("pods/default/x", {"phase": "Running"})
            with trio.fail_after(10):
                assert [await sub_b.receive(), await sub_b.receive()] == [ev, upd]
                assert [await sub_a.receive(), await sub_a.receive()] == [ev, upd]
        assert a.current_rev() >= upd.rev and b.current_rev() >= upd.rev
        # a revision taken by a key outside the store reaches the followers as progress
        with raw_client(etcd) as c:
            foreign = c.call("Put", pb.PutRequest(key=b"/elsewhere", value=b"1")).header.revision
        await wait_for(lambda: a.current_rev() >= foreign and b.current_rev() >= foreign)


async def test_two_replicas_writing_one_object_with_expect_rev(
    etcd: EtcdCluster, nursery: trio.Nursery
) -> None:
    async with replica(etcd, nursery) as a, replica(etcd, nursery) as b:
        for round_ in range(10):
            key = f"pods/default/p{round_}"
            made = await a.create(key, pod(f"p{round_}"))
            outcomes: dict[str, Any] = {}

            async def write(
                name: str, store: Store, key: str, rev: int, outcomes: dict[str, Any]
            ) -> None:
                try:
                    outcomes[name] = await store.update(
                        key, pod(key.rsplit("/", 1)[1], "pi-" + name), expect_rev=rev
                    )
                except Conflict as exc:
                    outcomes[name] = exc

            async with trio.open_nursery() as n:
                n.start_soon(write, "a", a, key, made.rev, outcomes)
                n.start_soon(write, "b", b, key, made.rev, outcomes)
            won = [o for o in outcomes.values() if isinstance(o, Event)]
            lost = [o for o in outcomes.values() if isinstance(o, Conflict)]
            assert len(won) == 1 and len(lost) == 1, outcomes
            rec = await b.get(key)
            assert rec == won[0].record  # the winner's write, nothing else
            history = await a.changes_since("pods/", made.rev - 1)
            assert [e.type for e in history if e.key == key] == ["ADDED", "MODIFIED"]


async def test_a_follower_behind_compaction_cuts_subscribers_off_and_relists(
    etcd: EtcdCluster, nursery: trio.Nursery
) -> None:
    writer = backend_on(etcd)
    late = backend_on(etcd)
    try:
        store = Store(late, subscriber_buffer=100)  # at the revision now, not yet following
        with store.subscribe() as sub:
            for i in range(5):
                writer.create(f"pods/default/p{i}", pod(f"p{i}"))
            writer.compact(writer.current_rev())
            await nursery.start(store.run)  # its watch starts below the horizon
            with trio.fail_after(10), pytest.raises(SubscriptionLost):
                await sub.receive()
        assert store.statistics()["subscribers_lost"] == 1 and store.follow_restarts == 1
        # re-list, subscribe again: later writes arrive
        with store.subscribe() as again:
            records, rev = await store.list("pods/")
            assert len(records) == 5 and rev >= store.current_rev() - 1
            ev = await store.create("pods/default/after", pod("after"))
            with trio.fail_after(10):
                got = await again.receive()
            while got.rev <= rev:
                got = await again.receive()
            assert got == ev
    finally:
        writer.close()
        late.close()


def test_fenced_writes_need_the_fence(etcd: EtcdCluster) -> None:
    b = backend_on(etcd)
    try:
        put = b.client.call("Put", pb.PutRequest(key=b"/leader", value=b"me"))
        fenced = b.with_fence((b"/leader", put.header.revision))
        ev = fenced.create("pods/default/a", pod("a"))
        fenced.update_status("pods/default/a", {"phase": "Running"})
        b.client.call("DeleteRange", pb.DeleteRangeRequest(key=b"/leader"))
        for write in (
            lambda: fenced.create("pods/default/b", pod("b")),
            lambda: fenced.update_status("pods/default/a", {"phase": "Failed"}),
            lambda: fenced.delete("pods/default/a"),
            lambda: fenced.compact(ev.rev),
        ):
            with pytest.raises(Fenced):
                write()
        assert b.get("pods/default/a").value["status"] == {"phase": "Running"}
        with pytest.raises(NotFound):
            b.get("pods/default/b")
        b.client.call("Put", pb.PutRequest(key=b"/leader", value=b"other"))  # a new leader
        with pytest.raises(Fenced):
            fenced.delete("pods/default/a")
        b.delete("pods/default/a")  # the unfenced backend writes as before
        fenced.close()
    finally:
        b.close()


async def test_a_killed_member_loses_no_acknowledged_write(
    etcd3: EtcdCluster, nursery: trio.Nursery
) -> None:
    """Leader, then a follower, killed under a stream of writes: every write
    that returned is there afterwards; the others raised Unavailable."""
    acked: dict[str, int] = {}
    unknown: list[str] = []
    async with replica(etcd3, nursery) as store:
        with store.subscribe(buffer=100_000) as sub:

            async def writes(n: int, prefix: str) -> None:
                for i in range(n):
                    key = f"configmaps/default/{prefix}{i}"
                    try:
                        ev = await store.create(key, {"metadata": {"name": f"{prefix}{i}"}})
                    except Unavailable:
                        unknown.append(key)
                    else:
                        acked[key] = ev.rev

            await writes(20, "before")
            leader = etcd3.leader()
            etcd3.kill(leader)
            await writes(40, "leaderless")
            etcd3.restart(leader)
            follower = (etcd3.leader() + 1) % 3
            etcd3.kill(follower)
            await writes(40, "followerless")
            etcd3.restart(follower)
            await writes(10, "after")
            for key, rev in acked.items():
                rec = await store.get(key)
                assert rec.mod_rev == rev, key
            assert len(acked) >= 60  # a quorum was there all along: most went through
            assert all(k not in acked for k in unknown)
            # the replica's one watch survived the members' deaths: every
            # acknowledged write was published, in revision order
            seen: list[int] = []
            with trio.fail_after(10):
                while len(seen) < len(acked):
                    ev = await sub.receive()
                    if ev.key in acked:
                        seen.append(ev.rev)
            assert seen == sorted(acked.values())


async def test_all_of_etcd_gone_then_back(etcd: EtcdCluster, nursery: trio.Nursery) -> None:
    b = backend_on(etcd, timeout=1.0)
    store = Store(b)
    try:
        await nursery.start(store.run)
        made = await store.create("pods/default/a", pod("a"))
        etcd.kill(0)
        with trio.fail_after(20):
            for op in (
                lambda: store.get("pods/default/a"),
                lambda: store.list("pods/"),
                lambda: store.changes_since("pods/", 0),
                lambda: store.create("pods/default/b", pod("b")),
                lambda: store.update_status("pods/default/a", {"phase": "Running"}),
            ):
                with pytest.raises(Unavailable):
                    await op()
        with pytest.raises(StoreError):
            await store.get("pods/default/b")
        etcd.restart(0)

        async def written() -> Event | None:
            try:
                return await store.update_status("pods/default/a", {"phase": "Running"})
            except Unavailable:
                return None  # etcd still coming back

        ev = await wait_for(written, timeout=30, interval=0.1)
        assert ev.rev > made.rev and store.current_rev() >= ev.rev
        assert (await store.get("pods/default/a")).value["status"] == {"phase": "Running"}
    finally:
        nursery.cancel_scope.cancel()
        b.close()
