"""Replica coordination on etcd leases (``cloudgateway._coord.Coordinator``).

Each replica holds one lease, refreshed every ttl/3 seconds from a worker
thread. Under it, the replica puts its registration (``{root}replicas/{id}``,
JSON), the session key of every node its hub holds (``{root}sessions/{node}``
→ replica id) and, while it leads, ``{root}leader``. A replica that dies stops
refreshing: etcd deletes all of its keys one TTL later, and the others see it.

Leadership is the leader key, created only where absent (a transaction on its
create revision) with the campaigner's lease. The key's create revision is the
term's fence. Leadership is dropped — the leader-only work cancelled — when the
watch shows the key deleted or replaced, when the lease turns out expired, or
when the lease has not been refreshed for its TTL (etcd unreachable): the last
refresh *sent* plus the TTL is never later than etcd's own expiry, so the old
leader stops before a new one can start.

One watch on ``{root}`` (after a range at a revision) keeps a cache of the
leader key, the replicas and the sessions; the API's questions
(``fleet_connected``, ``session_owner``, ``hub_urls``) are answered from it.
A watch that stops answering progress requests is opened again from a new
range. Sessions are reconciled with the local hub every ``reconcile_interval``
seconds: new ones put in batches, ended ones deleted only where the key still
names this replica (a node that moved to another replica keeps its key)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

from .._coord import Fence, ReplicaInfo
from ._client import EtcdClient, EtcdError, EtcdUnavailable, Watch, pb, prefix_end

log = logging.getLogger(__name__)

__all__ = ["EtcdCoordinator"]

T = TypeVar("T")

_BATCH = 100  # operations per transaction (etcd's default limit is 128)


class _Stale(Exception):
    """The watch answered no progress request for too long."""


class EtcdCoordinator:
    """``client`` is shared with the store; ``local_sessions`` lists the nodes
    whose sessions this replica's hub holds (``hub.connected_nodes``). ``ttl``
    (whole seconds, etcd's minimum is about 2) bounds how long a dead replica
    stays registered and how long a dead leader stays leader."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        root: str = "/edgeflock/",
        replica_id: str,
        hub_url: str = "",
        peer_url: str = "",
        api_url: str = "",
        local_sessions: Callable[[], Iterable[str]],
        ttl: int = 5,
        reconcile_interval: float = 0.5,
    ) -> None:
        if not replica_id or "/" in replica_id or not replica_id.isprintable():
            raise ValueError(f"replica id {replica_id!r}: not empty, printable, no '/'")
        if not root.endswith("/"):
            raise ValueError(f"etcd root {root!r} must end with '/'")
        if ttl < 1:
            raise ValueError(f"lease TTL {ttl!r} must be at least 1 s")
        self._client = client
        self._info = ReplicaInfo(replica_id, hub_url, peer_url, api_url)
        self._local_sessions = local_sessions
        self._ttl = int(ttl)
        self._interval = reconcile_interval
        self._root = root.encode()
        self._leader_key = self._root + b"leader"
        self._replicas_prefix = self._root + b"replicas/"
        self._sessions_prefix = self._root + b"sessions/"
        # the lease
        self._lease: int | None = None
        self._lease_deadline = -math.inf  # trio time by which etcd may expire it
        # leadership
        self._fence: Fence | None = None
        self._term_scopes: set[trio.CancelScope] = set()
        self._changed = trio.Event()
        # the cache of {root}
        self._watch_gen = 0
        self._cache_rev = 0
        self._cache_fresh_at = -math.inf
        self._leader: tuple[str, int, int] | None = None  # holder, lease, create revision
        self._replicas: dict[str, ReplicaInfo] = {}
        self._sessions: dict[str, tuple[str, int]] = {}  # node → (replica id, lease)
        self._pending: dict[str, int] = {}  # node → revision of our last write to its key
        self.counters: Counter[str] = Counter()

    # ---- what the gateway asks

    @property
    def replica_id(self) -> str:
        return self._info.id

    @property
    def is_leader(self) -> bool:
        return self._fence is not None

    @property
    def fence(self) -> Fence | None:
        return self._fence

    def leader_id(self) -> str | None:
        """The leading replica as this replica's cache last saw it."""
        return self._leader[0] if self._leader else None

    def replicas(self) -> list[ReplicaInfo]:
        others = [r for rid, r in sorted(self._replicas.items()) if rid != self._info.id]
        return [self._info, *others]

    def hub_urls(self) -> list[str]:
        out: list[str] = []
        for r in self.replicas():
            if r.hub_url and r.hub_url not in out:
                out.append(r.hub_url)
        return out

    def fleet_connected(self) -> set[str]:
        return set(self._sessions) | set(self._local_sessions())

    def session_owner(self, node: str) -> ReplicaInfo | None:
        if node in set(self._local_sessions()):
            return self._info
        held = self._sessions.get(node)
        if held is None:
            return None
        if held[0] == self._info.id:
            return None  # a key left by an earlier run of this replica: not held now
        return self._replicas.get(held[0])

    def sessions_by_replica(self) -> dict[str, int]:
        """Node sessions per live replica, from the registry (this replica's
        own counted from its hub)."""
        counts: dict[str, int] = {info.id: 0 for info in self.replicas()}
        local = set(self._local_sessions())
        for node, (rid, _) in self._sessions.items():
            if node not in local:
                counts[rid] = counts.get(rid, 0) + 1
        counts[self.replica_id] = len(local)
        return counts

    def statistics(self) -> dict[str, int]:
        return {
            "leader": int(self.is_leader),
            "replicas": len(self._replicas),
            "fleet_sessions": len(self._sessions),
            "cache_revision": self._cache_rev,
            **self.counters,
        }

    # ---- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Registers this replica, loads the cache (then reports started), and
        keeps lease, cache, sessions and candidacy going until cancelled; on the
        way out the lease is revoked, so the others see this replica leave at
        once instead of a TTL later."""
        try:
            await self._renew()  # a second live replica with this id: RuntimeError
            async with trio.open_nursery() as nursery:
                await nursery.start(self._follow)
                nursery.start_soon(self._keepalive_loop)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._reconcile_loop)
                nursery.start_soon(self._campaign_loop)
                task_status.started()
        finally:
            self._drop_leadership("stopping")
            lease, self._lease = self._lease, None
            if lease is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    with contextlib.suppress(EtcdError):
                        await self._call(self._client.lease_revoke, lease)

    async def leading(self, work: Callable[[Fence], Awaitable[None]]) -> None:
        while True:
            while True:
                changed = self._changed
                fence = self._fence
                if fence is not None:
                    break
                await changed.wait()
            with trio.CancelScope() as scope:
                self._term_scopes.add(scope)
                try:
                    if self._fence == fence:
                        await work(fence)
                finally:
                    self._term_scopes.discard(scope)
            while True:
                changed = self._changed
                if self._fence != fence:
                    break
                await changed.wait()

    # ---- plumbing

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self, at_most: float) -> None:
        changed = self._changed
        with trio.move_on_after(at_most):
            await changed.wait()

    def _lease_alive(self) -> bool:
        return self._lease is not None and trio.current_time() < self._lease_deadline

    # ---- the lease and the registration

    async def _renew(self) -> None:
        """A new lease and this replica registered under it; retried until done."""
        backoff = 0.1
        while True:
            try:
                sent = trio.current_time()
                lease = await self._call(self._client.lease_grant, self._ttl)
                self._lease, self._lease_deadline = lease, sent + self._ttl
                self._pending.clear()
                self.counters["lease_grants"] += 1
                await self._register(lease)
                self._notify()
                return
            except EtcdError as exc:
                log.warning("replica %s: cannot register in etcd yet: %s", self.replica_id, exc)
            await trio.sleep(backoff)
            backoff = min(2 * backoff, 2.0)

    async def _register(self, lease: int) -> None:
        key = self._replicas_prefix + self._info.id.encode()
        value = json.dumps(self._info.to_json(), sort_keys=True).encode()
        put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))
        absent = pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL)
        absent.create_revision = 0
        mine = pb.Compare(key=key, target=pb.Compare.LEASE, result=pb.Compare.EQUAL)
        mine.lease = lease
        read = pb.RequestOp(request_range=pb.RangeRequest(key=key))
        give_up = trio.current_time() + 3.0 * self._ttl + 2.0  # well past an old lease's TTL
        warned = False
        while True:
            resp = await self._call(self._client.txn, [absent], [put], [read])
            if resp.succeeded:
                return
            if (await self._call(self._client.txn, [mine], [put])).succeeded:
                return  # an earlier attempt of ours got through
            # Another live lease holds this id: an earlier run of this replica
            # (killed, its lease not yet expired) or a second replica with the same id.
            if trio.current_time() > give_up:
                raise RuntimeError(
                    f"replica id {self._info.id!r} is registered in etcd by another live "
                    "replica; give each replica its own id"
                )
            if not warned:
                log.warning(
                    "replica id %s is still registered under another lease (an earlier run "
                    "not yet expired?); waiting for it to expire",
                    self._info.id,
                )
                warned = True
            await trio.sleep(min(1.0, self._ttl / 2))

    async def _keepalive_loop(self) -> None:
        failing = False
        while True:
            lease = self._lease
            if lease is None:
                await self._renew()
                continue
            sent = trio.current_time()
            try:
                ttl = await self._call(self._client.lease_keepalive, lease)
            except EtcdError as exc:
                self.counters["keepalive_failures"] += 1
                if not failing:
                    log.warning("replica %s: lease refresh failed: %s", self.replica_id, exc)
                failing = True
                await trio.sleep(min(1.0, self._ttl / 3))
                continue
            if failing:
                log.info("replica %s: lease refreshed again", self.replica_id)
                failing = False
            if lease != self._lease:
                continue
            if ttl <= 0:
                log.warning("replica %s: lease expired; registering again", self.replica_id)
                self.counters["leases_lost"] += 1
                self._drop_leadership("lease expired")
                self._lease, self._lease_deadline = None, -math.inf
                await self._renew()
                continue
            self._lease_deadline = sent + ttl
            self._notify()
            await trio.sleep_until(sent + self._ttl / 3)

    async def _watchdog(self) -> None:
        """Drops leadership once the lease may have expired in etcd."""
        margin = max(0.2, self._ttl / 10)
        while True:
            deadline = self._lease_deadline - margin
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            if self._fence is not None:
                self._drop_leadership(f"lease not refreshed for {self._ttl} s")
            await self._wait_change(self._ttl / 3)

    # ---- leadership

    def _drop_leadership(self, reason: str) -> None:
        if self._fence is None:
            return
        log.warning("replica %s: no longer the leader: %s", self.replica_id, reason)
        self._fence = None
        self.counters["leadership_lost"] += 1
        for scope in list(self._term_scopes):
            scope.cancel()
        self._notify()

    async def _campaign_loop(self) -> None:
        last_try = -math.inf
        while True:
            now = trio.current_time()
            vacant = self._leader is None or self._leader[1] == self._lease
            if (
                self._fence is None
                and self._lease_alive()
                and (vacant or now - last_try > self._ttl)
            ):
                last_try = now
                try:
                    await self._campaign()
                except EtcdError as exc:
                    log.debug("replica %s: campaign failed: %s", self.replica_id, exc)
            await self._wait_change(self._ttl / 2)

    async def _campaign(self) -> None:
        lease = self._lease
        if lease is None:
            return
        key = self._leader_key
        absent = pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL)
        absent.create_revision = 0
        put = pb.RequestOp(
            request_put=pb.PutRequest(key=key, value=self._info.id.encode(), lease=lease)
        )
        read = pb.RequestOp(request_range=pb.RangeRequest(key=key))
        resp = await self._call(self._client.txn, [absent], [put], [read])
        if resp.succeeded:
            created = int(resp.header.revision)
        else:
            kvs = resp.responses[0].response_range.kvs
            if not kvs or kvs[0].lease != lease:
                return
            created = int(kvs[0].create_revision)  # ours already (an earlier attempt)
        if self._fence is not None or lease != self._lease or not self._lease_alive():
            return
        if self._cache_rev >= created and (self._leader is None or self._leader[2] != created):
            return  # the watch has already seen this key go
        self._fence = Fence(key, created)
        self.counters["terms"] += 1
        log.info("replica %s leads (fence revision %d)", self.replica_id, created)
        self._notify()

    def _observe_leader(self, kv: Any, revision: int) -> None:
        """The leader key as of ``revision`` (``kv`` None: absent)."""
        if kv is None:
            self._leader = None
        else:
            self._leader = (kv.value.decode(errors="replace"), kv.lease, kv.create_revision)
        fence = self._fence
        if fence is not None and revision >= fence.create_revision:
            if self._leader is None or self._leader[2] != fence.create_revision:
                self._drop_leadership("the leader key is gone")

    # ---- the cache

    async def _follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        backoff = 0.1
        while True:
            try:
                resp = await self._call(self._client.range, self._root, prefix_end(self._root))
            except EtcdError as exc:
                log.debug("replica %s: cannot list %r: %s", self.replica_id, self._root, exc)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)
                continue
            self._load(resp)
            if not started:
                task_status.started()
                started = True
            try:
                await self._watch_from(int(resp.header.revision) + 1)
            except (EtcdError, _Stale) as exc:
                self.counters["watch_restarts"] += 1
                log.info("replica %s: watch on %r ended: %s", self.replica_id, self._root, exc)
            await trio.sleep(backoff)
            backoff = min(2 * backoff, 2.0)

    def _load(self, resp: Any) -> None:
        self._watch_gen += 1
        revision = int(resp.header.revision)
        self._replicas.clear()
        self._sessions.clear()
        leader = None
        for kv in resp.kvs:
            if kv.key == self._leader_key:
                leader = kv
            else:
                self._apply_kv(False, kv)
        self._cache_rev = revision
        self._cache_fresh_at = trio.current_time()
        self._observe_leader(leader, revision)
        self._notify()

    async def _watch_from(self, revision: int) -> None:
        gen = self._watch_gen
        watch: Watch = await self._call(
            self._client.watch,
            self._root,
            prefix_end(self._root),
            start_revision=revision,
            progress_notify=True,
        )

        def pump() -> None:
            for resp in watch.responses():
                trio.from_thread.run_sync(self._apply, gen, resp)

        stale: list[str] = []

        async def ask_progress() -> None:
            """Every ttl/3 s ask for progress; a watch silent for 2 TTLs is stale."""
            while True:
                await trio.sleep(self._ttl / 3)
                if trio.current_time() - self._cache_fresh_at > 2 * self._ttl:
                    stale.append(f"no answer from {watch.endpoint} for {2 * self._ttl} s")
                    watch.cancel()  # ends pump()
                    return
                watch.request_progress()

        error: EtcdError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_progress)
                try:
                    await self._call(pump)
                except EtcdError as exc:
                    error = exc
                nursery.cancel_scope.cancel()
        finally:
            watch.cancel()
        if stale:
            raise _Stale(stale[0])
        raise error or EtcdUnavailable("Watch", "CANCELLED", "watch ended")

    def _apply(self, gen: int, resp: Any) -> None:
        if gen != self._watch_gen:
            return  # a watch already replaced
        self._cache_fresh_at = trio.current_time()
        for ev in resp.events:
            deleted = ev.type == pb.Event.DELETE
            if ev.kv.key == self._leader_key:
                self._observe_leader(None if deleted else ev.kv, int(ev.kv.mod_revision))
            else:
                self._apply_kv(deleted, ev.kv)
        self._cache_rev = max(self._cache_rev, int(resp.header.revision))
        if resp.events:
            self._notify()

    def _apply_kv(self, deleted: bool, kv: Any) -> None:
        key: bytes = kv.key
        if key.startswith(self._sessions_prefix):
            node = key[len(self._sessions_prefix) :].decode(errors="replace")
            if deleted:
                self._sessions.pop(node, None)
            else:
                self._sessions[node] = (kv.value.decode(errors="replace"), int(kv.lease))
        elif key.startswith(self._replicas_prefix):
            rid = key[len(self._replicas_prefix) :].decode(errors="replace")
            if deleted:
                self._replicas.pop(rid, None)
                return
            try:
                self._replicas[rid] = ReplicaInfo.from_json(json.loads(kv.value))
            except ValueError as exc:
                log.warning("ignoring the registration of replica %r: %s", rid, exc)

    # ---- sessions

    async def _reconcile_loop(self) -> None:
        failing = False
        while True:
            await trio.sleep(self._interval)
            try:
                await self.reconcile()
            except EtcdError as exc:
                self.counters["reconcile_failures"] += 1
                if not failing:
                    log.warning("replica %s: sessions not written: %s", self.replica_id, exc)
                failing = True
            else:
                failing = False

    async def reconcile(self) -> None:
        """Make the session keys naming this replica match the local hub's
        sessions (the cache tells what etcd holds)."""
        lease = self._lease
        if lease is None:
            return
        local = set(self._local_sessions())
        seen = self._cache_rev
        for node, rev in list(self._pending.items()):
            if rev <= seen:
                del self._pending[node]
        me = self._info.id
        puts = sorted(
            n for n in local if self._sessions.get(n) != (me, lease) and n not in self._pending
        )
        deletes = sorted(
            n
            for n, (owner, _) in self._sessions.items()
            if owner == me and n not in local and n not in self._pending
        )
        for i in range(0, len(puts), _BATCH):
            chunk = puts[i : i + _BATCH]
            ops = [
                pb.RequestOp(
                    request_put=pb.PutRequest(
                        key=self._session_key(n), value=me.encode(), lease=lease
                    )
                )
                for n in chunk
            ]
            resp = await self._call(self._client.txn, [], ops)
            self.counters["session_puts"] += len(chunk)
            for n in chunk:
                self._pending[n] = int(resp.header.revision)
        for i in range(0, len(deletes), _BATCH):
            await self._delete_sessions(deletes[i : i + _BATCH])

    async def _delete_sessions(self, nodes: list[str]) -> None:
        """Delete these nodes' keys where they still name this replica: all in one
        transaction when they all do, else one by one."""
        me = self._info.id.encode()

        def guard(n: str) -> Any:
            c = pb.Compare(key=self._session_key(n), target=pb.Compare.VALUE)
            c.result = pb.Compare.EQUAL
            c.value = me
            return c

        def delete(n: str) -> Any:
            return pb.RequestOp(
                request_delete_range=pb.DeleteRangeRequest(key=self._session_key(n))
            )

        resp = await self._call(
            self._client.txn, [guard(n) for n in nodes], [delete(n) for n in nodes]
        )
        if resp.succeeded or len(nodes) == 1:
            for n in nodes:
                self._pending[n] = int(resp.header.revision)
            self.counters["session_deletes"] += len(nodes) if resp.succeeded else 0
            return
        for n in nodes:
            await self._delete_sessions([n])

    def _session_key(self, node: str) -> bytes:
        return self._sessions_prefix + node.encode()
