"""The scheduler: binds each pod that waits for a node (no ``spec.nodeName``,
``schedulerName`` unset or ``default-scheduler``) to the best Ready node it
fits (``_scheduling``: filters and score), as kube-scheduler does.

It runs as a controller with one key, ``CYCLE``: any change that can make a
waiting pod schedulable (a waiting pod created, a node added or changed, a
bound pod gone or finished) queues a scheduling cycle, and bursts of changes
collapse into one. A cycle lists the nodes and pods, then places every waiting
pod, oldest first, counting what it placed in this cycle. Binding is one
guarded write of the pod (``expect_rev``: the revision the cycle read; a pod
changed in between is left to the next cycle), setting ``spec.nodeName`` and
the ``PodScheduled=True`` condition, as Kubernetes' Binding does, with a
``Scheduled`` Event. A pod no node takes gets ``PodScheduled=False`` with
reason ``Unschedulable`` and kube-scheduler's message, and a
``FailedScheduling`` Event, both written only when the message changes (so a
cycle that changes nothing writes nothing and queues no further cycle).

Bound pods are never moved: a pod on a node that went NotReady keeps its node
(edge autonomy: the board keeps running it). Nothing here evicts; a pod leaves
its node only when it is deleted (by a user, or by its controller on a scale
down or rollout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import edgeproto

from .._store import UNCHANGED, AlreadyExists, Conflict, NotFound, Record, Store
from ._scheduling import (
    NodeInfo,
    choose_node,
    failure_message,
    is_pending,
    message_digest,
    node_infos,
    terminal,
)

log = logging.getLogger(__name__)

__all__ = ["CYCLE", "Scheduler"]

CYCLE = "scheduler:cycle"
COMPONENT = "default-scheduler"


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _sort_key(rec: Record) -> tuple[str, int, str]:
    meta = _map(rec.value.get("metadata"))
    return (str(meta.get("creationTimestamp") or ""), rec.create_rev, rec.key)


def _bound_live(value: Mapping[str, Any] | None) -> bool:
    if not value:
        return False
    return bool(_map(value.get("spec")).get("nodeName")) and not terminal(value)


class Scheduler:
    """The scheduler as a controller (``run_controllers``). ``clock``: wall
    time for condition and Event timestamps."""

    name = "scheduler"
    prefixes = ("pods/", "nodes/")

    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        self._store = store
        self._clock = clock
        # Keys of pods seen waiting: a hint of whether node changes matter. Built
        # from events and every re-list; a stale entry costs one idle cycle.
        self._waiting: set[str] = set()
        self.bound = 0
        self.unschedulable = 0
        self.cycles = 0

    def statistics(self) -> dict[str, int]:
        return {
            "cycles": self.cycles,
            "bound": self.bound,
            "unschedulable": self.unschedulable,
            "waiting": len(self._waiting),
        }

    # ---- events → the cycle ------------------------------------------------------

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("nodes/"):
            return (CYCLE,) if self._waiting else ()
        if value is not None and is_pending(value):
            self._waiting.add(key)
            return (CYCLE,)
        self._waiting.discard(key)
        if self._waiting and _bound_live(prev) and not _bound_live(value):
            return (CYCLE,)  # room freed on a node
        return ()

    # ---- one cycle -------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        if key != CYCLE:
            return None
        self.cycles += 1
        nodes, _ = await self._store.list("nodes/")
        pods, _ = await self._store.list("pods/")
        infos = node_infos((n.value for n in nodes), (p.value for p in pods))
        waiting = sorted((p for p in pods if is_pending(p.value)), key=_sort_key)
        self._waiting = {p.key for p in waiting}
        for rec in waiting:
            chosen, reasons = choose_node(infos, rec.value)
            if chosen is None:
                await self._unschedulable(rec, failure_message(len(infos), reasons))
                continue
            if await self._bind(rec, chosen):
                self._waiting.discard(rec.key)
        return None

    async def _bind(self, rec: Record, info: NodeInfo) -> bool:
        now = edgeproto.rfc3339(self._clock())

        def edit(cur: Record) -> Any:
            if not is_pending(cur.value):
                return UNCHANGED
            obj = dict(cur.value)
            obj["spec"] = {**_map(obj.get("spec")), "nodeName": info.name}
            status = dict(_map(obj.get("status")))
            conds = [
                c
                for c in status.get("conditions") or []
                if isinstance(c, Mapping) and c.get("type") != "PodScheduled"
            ]
            conds.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": now})
            status["conditions"] = conds
            status.setdefault("phase", "Pending")
            obj["status"] = status
            return obj

        try:
            ev = await self._store.modify(rec.key, edit, expect_rev=rec.mod_rev)
        except (Conflict, NotFound):
            return False  # changed since the cycle read it: the next cycle sees it
        if ev is None:
            return False
        info.place(rec.value)
        self.bound += 1
        _, ns, name = edgeproto.split_key(rec.key)
        await self._event(
            rec, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {info.name}"
        )
        return True

    async def _unschedulable(self, rec: Record, message: str) -> None:
        now = edgeproto.rfc3339(self._clock())

        def edit(cur: Record) -> Any:
            if not is_pending(cur.value):
                return UNCHANGED
            status = dict(_map(cur.value.get("status")))
            conds = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
            for c in conds:
                if (
                    c.get("type") == "PodScheduled"
                    and c.get("status") == "False"
                    and c.get("reason") == "Unschedulable"
                    and c.get("message") == message
                ):
                    return UNCHANGED
            conds = [c for c in conds if c.get("type") != "PodScheduled"]
            conds.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                }
            )
            status["conditions"] = conds
            status.setdefault("phase", "Pending")
            return status

        try:
            ev = await self._store.modify(rec.key, edit, status=True, expect_rev=rec.mod_rev)
        except (Conflict, NotFound):
            return
        if ev is None:
            return
        self.unschedulable += 1
        log.info("pod %s unschedulable: %s", rec.key, message)
        await self._event(rec, "Warning", "FailedScheduling", message)

    async def _event(self, rec: Record, type_: str, reason: str, message: str) -> None:
        """An Event about the pod, named by (pod uid, reason, message): the
        same one again counts up instead of adding another."""
        _, ns, name = edgeproto.split_key(rec.key)
        meta = _map(rec.value.get("metadata"))
        uid = str(meta.get("uid") or "")
        ev_name = f"{name}.{message_digest(uid + reason + message)}"
        key = edgeproto.make_key("events", ns, ev_name)
        now = edgeproto.rfc3339(self._clock())
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name,
                "namespace": ns,
                "uid": uid,
                "resourceVersion": str(rec.mod_rev),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._store.create(key, obj)
            return
        except AlreadyExists:
            pass

        def bump(cur: Record) -> Any:
            value = dict(cur.value)
            count = value.get("count")
            value["count"] = (count if isinstance(count, int) else 1) + 1
            value["lastTimestamp"] = now
            return value

        try:
            await self._store.modify(key, bump)
        except NotFound:
            pass
