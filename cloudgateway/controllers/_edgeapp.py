"""The EdgeApplication controller: KubeEdge's per-node-group workloads.

For each ``apps.kubeedge.io/v1alpha1`` EdgeApplication it creates, updates and
deletes what the application's manifests produce (``_edgeapp_plan``: one
Deployment per target node group, ``<name>-<group>``, overridden and pinned to
the group; other kinds once), each with a controlling ownerReference to the
application, so deleting the application deletes them through garbage
collection. A changed template or target list propagates on the next
reconcile; an object the application no longer produces is deleted (found in
the previous ``status.workloadStatus`` and among the namespace's Deployments
the application controls). ``status.workloadStatus`` follows the produced
objects (a Deployment is ``Available`` when all its replicas are ready).
Manifests that produce nothing (a kind edgeflock does not run, an invalid
manifest or overrider) are reported in the ``ManifestsApplied`` condition and
as Warning Events on the application, never skipped in silence.

Level-triggered: each reconcile reads the application and its objects from
the store. Changes of produced objects (their status, their deletion by
someone else) reconcile the owning application again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import edgeproto

from .._store import UNCHANGED, AlreadyExists, NotFound, Record, Store
from ._edgeapp_plan import (
    CONDITION_TYPE,
    KIND,
    AppPlan,
    NotOurs,
    Problem,
    applied_condition,
    next_object,
    plan_edgeapp,
    produced_resources,
    workload_status,
)
from ._runtime import controller_owner_key

log = logging.getLogger(__name__)

__all__ = ["COMPONENT", "EdgeApplicationController"]

COMPONENT = "edgeapplication-controller"


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in _map(obj.get("metadata")).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True and ref.get("kind") == KIND:
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


class EdgeApplicationController:
    """Runs under ``run_controllers``: ``EdgeApplicationController(store)``."""

    name = "edgeapplication"

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._resources = {r.kind: r for r in produced_resources()}
        self.prefixes = ("edgeapplications/", *(f"{r.name}/" for r in produced_resources()))
        self.created = 0
        self.updated = 0
        self.deleted = 0

    def statistics(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "deleted": self.deleted}

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("edgeapplications/"):
            return [key]
        return controller_owner_key(key, value, prev, KIND, "edgeapplications")

    async def reconcile(self, key: str) -> float | None:
        try:
            rec = await self._store.get(key)
        except NotFound:
            return None  # garbage collection removes what it owned
        app = rec.value
        meta = _map(app.get("metadata"))
        if meta.get("deletionTimestamp"):
            return None  # being deleted (foreground): garbage collection's turn
        uid = str(meta.get("uid") or "")
        plan = plan_edgeapp(app)
        problems = list(plan.problems)
        await self._delete_stale(rec, plan, uid)
        live: dict[str, Mapping[str, Any] | None] = {}
        for p in plan.produced:
            try:
                cur: Record | None = await self._store.get(p.key)
            except NotFound:
                cur = None
            try:
                new = next_object(p.obj, cur.value if cur else None)
            except NotOurs as exc:
                problems.append(
                    Problem(
                        "ObjectExists",
                        f"{p.key} already exists and is not this application's: {exc}",
                        p.ordinal,
                    )
                )
                live[p.key] = None
                continue
            if new is None:
                live[p.key] = cur.value if cur else None
                continue
            if cur is None:
                try:
                    ev = await self._store.create(p.key, new)
                except AlreadyExists:
                    raise  # created meanwhile: the runtime retries with a fresh read
                self.created += 1
                log.info("edge application %s: created %s", key, p.key)
            else:
                ev = await self._store.update(p.key, new, expect_rev=cur.mod_rev)
                self.updated += 1
                log.info("edge application %s: updated %s", key, p.key)
            live[p.key] = ev.record.value
        await self._write_status(rec, plan, problems, live)
        for problem in problems:
            await self._event(rec, problem)
        return None

    async def _delete_stale(self, rec: Record, plan: AppPlan, uid: str) -> None:
        """Delete what the application produced before and produces no more."""
        _, ns, _ = edgeproto.split_key(rec.key)
        wanted = {p.key for p in plan.produced}
        candidates: set[str] = set()
        status = _map(rec.value.get("status"))
        for entry in status.get("workloadStatus") or []:
            ident = _map(_map(entry).get("identifier"))
            res = self._resources.get(str(ident.get("kind", "")))
            name = ident.get("name")
            if res is not None and isinstance(name, str) and name:
                candidates.add(edgeproto.make_key(res.name, ns, name))
        deployments, _ = await self._store.list(edgeproto.make_key("deployments", ns, ""))
        for d in deployments:
            if _controller_uid(d.value) == uid:
                candidates.add(d.key)
        for k in sorted(candidates - wanted):
            try:
                cur = await self._store.get(k)
            except NotFound:
                continue
            if _controller_uid(cur.value) != uid:
                continue  # not ours (any more): leave it
            try:
                await self._store.delete(k, expect_rev=cur.mod_rev)
            except NotFound:
                continue
            self.deleted += 1
            log.info("edge application %s: deleted %s (no longer produced)", rec.key, k)

    async def _write_status(
        self,
        rec: Record,
        plan: AppPlan,
        problems: list[Problem],
        live: Mapping[str, Mapping[str, Any] | None],
    ) -> None:
        workloads = workload_status(plan, live)
        now = edgeproto.rfc3339(self._clock())

        def edit(cur: Record) -> Any:
            status = dict(_map(cur.value.get("status")))
            conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
            prev = next((c for c in conditions if c.get("type") == CONDITION_TYPE), None)
            cond = applied_condition(problems, prev, now)
            others = [c for c in conditions if c.get("type") != CONDITION_TYPE]
            new = {**status, "workloadStatus": workloads, "conditions": [*others, cond]}
            return UNCHANGED if new == status else new

        try:
            await self._store.modify(rec.key, edit, status=True)
        except NotFound:
            pass  # deleted meanwhile

    async def _event(self, rec: Record, problem: Problem) -> None:
        """A Warning Event about the application for ``problem``, once: named by
        (application uid, reason, message), an existing one is left as it is."""
        _, ns, name = edgeproto.split_key(rec.key)
        meta = _map(rec.value.get("metadata"))
        uid = str(meta.get("uid") or "")
        digest = hashlib.sha256(f"{uid}\0{problem.reason}\0{problem.message}".encode()).hexdigest()
        ev_name = f"{name}.{digest[:16]}"
        key = edgeproto.make_key("events", ns, ev_name)
        try:
            await self._store.get(key)
            return
        except NotFound:
            pass
        now = edgeproto.rfc3339(self._clock())
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": {
                "apiVersion": str(rec.value.get("apiVersion") or ""),
                "kind": KIND,
                "name": name,
                "namespace": ns,
                "uid": uid,
                "resourceVersion": str(rec.mod_rev),
            },
            "reason": problem.reason,
            "message": problem.message,
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._store.create(key, obj)
        except AlreadyExists:
            pass
