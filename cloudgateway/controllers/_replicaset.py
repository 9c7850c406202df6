"""The ReplicaSet controller: keeps ``spec.replicas`` pods that match the
selector and that the ReplicaSet controls, and reports them in its status.

A reconcile reads the ReplicaSet, the pods of its namespace and the nodes
those pods are on, then:

- creates the missing pods from ``spec.template`` (named ``<rs>-<5 chars>``,
  as ``generateName`` names them, with a controller ownerReference), in slow
  start batches of 1, 2, 4, ... as Kubernetes does, stopping at the first
  failure; the scheduler binds them;
- deletes the surplus, ranked (``_pods.deletion_rank``): unscheduled first,
  then pods on an offline node, not Ready, Ready for the shorter time, more
  restarts, newer;
- writes ``status``: ``replicas``, ``fullyLabeledReplicas``,
  ``readyReplicas``, ``availableReplicas`` (Ready for ``minReadySeconds``),
  ``observedGeneration``, and edgeflock's ``offlineReplicas``: pods on a node
  whose Ready condition is not True. Those are counted by what they last
  reported (edge autonomy: the board keeps running them) and never replaced
  because their node is offline.

Pods controlled by the ReplicaSet whose labels stopped matching its selector
are not counted (they are not released either); orphans are not adopted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

import edgeproto

from .._store import AlreadyExists, NotFound, Record, Store
from ._nodematch import node_ready
from ._pods import (
    available,
    deletion_rank,
    is_active,
    labels_of,
    new_pod,
    owned_by,
    pod_ready,
    random_suffix,
    selector_matches,
)
from ._runtime import controller_owner_key

log = logging.getLogger(__name__)

__all__ = ["ReplicaSetController", "offline_nodes", "replicaset_status"]

BURST = 500  # pods created per reconcile at most


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


async def offline_nodes(store: Store, pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """Nodes of ``pods`` whose Ready condition is not True (missing nodes too)."""
    bound = (_map(p.get("spec")).get("nodeName") for p in pods)
    names = {n for n in bound if isinstance(n, str) and n}
    keys = [edgeproto.make_key("nodes", "", n) for n in sorted(names)]
    recs = await store.get_many(keys)
    online = {r.key.rsplit("/", 1)[1] for r in recs if node_ready(r.value)}
    return names - online


def replicaset_status(
    rs: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], offline: set[str], now: float
) -> tuple[dict[str, Any], float | None]:
    """The status for ``rs`` with these active pods, and in how many seconds a
    Ready pod becomes available (to look again then)."""
    spec = _map(rs.get("spec"))
    min_ready = _int(spec.get("minReadySeconds"), 0)
    tlabels = labels_of(_map(spec.get("template")))
    ready = avail = labelled = off = 0
    soonest: float | None = None
    for p in pods:
        labels = labels_of(p)
        if all(k in labels and labels[k] == v for k, v in tlabels.items()):
            labelled += 1
        if pod_ready(p):
            ready += 1
        ok, left = available(p, min_ready, now)
        if ok:
            avail += 1
        elif left is not None:
            soonest = left if soonest is None else min(soonest, left)
        if _map(p.get("spec")).get("nodeName") in offline:
            off += 1
    prev = _map(rs.get("status"))
    status: dict[str, Any] = {
        "replicas": len(pods),
        "fullyLabeledReplicas": labelled,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "observedGeneration": _int(_map(rs.get("metadata")).get("generation"), 1),
    }
    if off:
        status["offlineReplicas"] = off
    if prev.get("conditions"):
        status["conditions"] = prev["conditions"]
    return status, soonest


class ReplicaSetController:
    """The ReplicaSet controller (``run_controllers``)."""

    name = "replicaset"
    prefixes = ("replicasets/", "pods/", "nodes/")

    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        self._store = store
        self._clock = clock
        self.created = 0
        self.deleted = 0

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("replicasets/"):
            return (key,)
        if key.startswith("pods/"):
            return controller_owner_key(key, value, prev, "ReplicaSet", "replicasets")
        # A node going offline or coming back changes offlineReplicas.
        if value is None or prev is None or node_ready(value) != node_ready(prev):
            return ("replicasets/",)
        return ()

    async def reconcile(self, key: str) -> float | None:
        try:
            rec = await self._store.get(key)
        except NotFound:
            return None  # its pods go with it (garbage collection by owner)
        rs = rec.value
        meta = _map(rs.get("metadata"))
        if meta.get("deletionTimestamp"):
            return None
        uid = str(meta.get("uid") or "")
        _, ns, _ = edgeproto.split_key(key)
        spec = _map(rs.get("spec"))
        selector = spec.get("selector")
        records, _ = await self._store.list(edgeproto.make_key("pods", ns, ""))
        pods = [
            r
            for r in records
            if owned_by(r.value, uid) and is_active(r.value)
            and selector_matches(selector, labels_of(r.value))
        ]  # fmt: skip
        want = max(0, _int(spec.get("replicas"), 1))
        offline = await offline_nodes(self._store, (p.value for p in pods))
        diff = len(pods) - want
        if diff < 0:
            made = await self._create(rs, ns, min(-diff, BURST))
            pods_values = [p.value for p in pods] + made
        elif diff > 0:
            ranked = sorted(pods, key=lambda r: deletion_rank(r.value, offline))
            gone = await self._delete(ranked[:diff])
            pods_values = [p.value for p in pods if p.key not in gone]
        else:
            pods_values = [p.value for p in pods]
        status, soonest = replicaset_status(rs, pods_values, offline, self._clock())
        await self._write_status(rec, status)
        if diff < -BURST:
            return 0.0  # more to create: come back at once
        return soonest

    async def _create(self, rs: Mapping[str, Any], ns: str, count: int) -> list[dict[str, Any]]:
        """Create ``count`` pods in slow-start batches; the ones created."""
        name = str(_map(rs.get("metadata")).get("name"))
        made: list[dict[str, Any]] = []
        failed: list[Exception] = []
        batch = 1
        while len(made) < count and not failed:
            n = min(batch, count - len(made))

            async def one() -> None:
                for _ in range(5):
                    pod = new_pod(rs, "ReplicaSet", f"{name}-{random_suffix()}")
                    key = edgeproto.make_key("pods", ns, pod["metadata"]["name"])
                    try:
                        ev = await self._store.create(key, pod)
                    except AlreadyExists:
                        continue
                    except Exception as exc:
                        failed.append(exc)
                        return
                    made.append(ev.record.value)
                    self.created += 1
                    return

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
            batch *= 2
        if failed:
            raise failed[0]
        return made

    async def _delete(self, victims: list[Record]) -> set[str]:
        gone: set[str] = set()
        for r in victims:
            try:
                await self._store.delete(r.key)
            except NotFound:
                pass
            gone.add(r.key)
            self.deleted += 1
        return gone

    async def _write_status(self, rec: Record, status: dict[str, Any]) -> None:
        if rec.value.get("status") == status:
            return
        await self._store.update_status(rec.key, status, expect_rev=rec.mod_rev)
