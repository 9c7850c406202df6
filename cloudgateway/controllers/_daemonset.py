"""The DaemonSet controller: one pod per matching node, ControllerRevisions,
rolling or OnDelete updates that never wait on an offline board, a rollout
that pauses itself when too many updated pods fail.

Level-triggered: every reconcile reads the DaemonSet, its revisions, the nodes
and its pods from the store and writes what is missing (``_dsplan.py`` decides,
this module reads and writes). Nothing is kept in memory between reconciles,
so a gateway restarted mid-rollout carries on from the store.

Pause marks, on the DaemonSet's annotations (the user's to remove):

- ``edgeflock.io/paused: <reason>``: no old pod is replaced while it is set
  (new nodes still get pods). Set by the controller when more updated pods
  failed than ``edgeflock.io/max-failed`` allows (default 25 % of the online
  desired pods), or by a user (``edgectl rollout pause``).
- ``edgeflock.io/paused-revision: <hash>``: the template hash an automatic
  pause was for. A template change (``rollout undo``, a fixed image) clears
  both marks and the rollout goes on with the new template; removing only
  ``edgeflock.io/paused`` (``rollout resume``) lets the rollout of that same
  revision go on past the threshold (it is not paused again for it).

Status: the counts cover online nodes (see ``_dsplan.py``); the condition
``NodesOffline`` (status True while some offline node lacks the new revision,
message ``pending on N offline node(s): a, b``) and ``RolloutPaused`` (True
with the reason while paused) say the rest. An Event (``RolloutPaused``,
``RolloutResumed``, ``SuccessfulCreate``, ``SuccessfulDelete``) tells each step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import edgeproto

from .._store import UNCHANGED, AlreadyExists, Conflict, NotFound, Record, Store
from ._dsplan import DsPlan, plan_daemonset
from ._nodematch import daemon_tolerations
from ._revisions import (
    HASH_LABEL,
    SAFE_ALPHABET,
    TEMPLATE_GENERATION_LABEL,
    controller_ref,
    revision_number,
    revision_object,
    revision_template,
    template_hash,
)
from ._runtime import controller_owner_key

log = logging.getLogger(__name__)

__all__ = [
    "OFFLINE_CONDITION",
    "PAUSED",
    "PAUSED_CONDITION",
    "PAUSED_REVISION",
    "DaemonSetController",
    "record_event",
]

PAUSED = "edgeflock.io/paused"
PAUSED_REVISION = "edgeflock.io/paused-revision"
MAX_FAILED = "edgeflock.io/max-failed"
OFFLINE_CONDITION = "NodesOffline"
PAUSED_CONDITION = "RolloutPaused"
COMPONENT = "daemonset-controller"
_LISTED_NAMES = 20  # offline nodes named in the condition's message


def _meta(v: Mapping[str, Any] | None) -> Mapping[str, Any]:
    m = v.get("metadata") if v else None
    return m if isinstance(m, Mapping) else {}


def _owned_by(value: Mapping[str, Any], uid: str) -> bool:
    for r in _meta(value).get("ownerReferences") or []:
        if isinstance(r, Mapping) and r.get("controller") is True and r.get("uid") == uid:
            return True
    return False


def _node_facts(v: Mapping[str, Any] | None) -> Any:
    """What of a Node decides placement and rollout: labels, taints,
    unschedulable, Ready."""
    if v is None:
        return None
    spec = v.get("spec") if isinstance(v.get("spec"), Mapping) else {}
    ready = None
    status = v.get("status")
    if isinstance(status, Mapping):
        for c in status.get("conditions") or []:
            if isinstance(c, Mapping) and c.get("type") == "Ready":
                ready = (c.get("status"), c.get("lastTransitionTime"))
    return (
        _meta(v).get("labels"),
        spec.get("taints") if isinstance(spec, Mapping) else None,
        spec.get("unschedulable") if isinstance(spec, Mapping) else None,
        ready,
    )


async def record_event(
    store: Store,
    obj: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    component: str = COMPONENT,
) -> None:
    """A core/v1 Event about ``obj`` (best effort: a failure is logged)."""
    meta = _meta(obj)
    ns = str(meta.get("namespace") or "default")
    now = time.time()
    name = f"{meta.get('name')}.{time.time_ns():x}"
    ev = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": ns,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": edgeproto.rfc3339(now),
        "lastTimestamp": edgeproto.rfc3339(now),
        "count": 1,
    }
    try:
        await store.create(edgeproto.make_key("events", ns, name), ev)
    except Exception as exc:  # an event is never worth failing the reconcile
        log.warning("could not record event %s for %s: %s", reason, meta.get("name"), exc)


class DaemonSetController:
    """Run by ``run_controllers``; ``clock`` gives wall-clock seconds (pod
    readiness times are wall-clock RFC 3339)."""

    name = "daemonset"
    prefixes = ("daemonsets/", "pods/", "nodes/", "controllerrevisions/")

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self.created = 0
        self.deleted = 0

    # ---- event mapping ------------------------------------------------------------

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("daemonsets/"):
            return [key]
        if key.startswith("nodes/"):
            if prev is not None and value is not None and _node_facts(value) == _node_facts(prev):
                return []
            return ["daemonsets/"]  # every DaemonSet (a prefix key: listed by the runtime)
        return controller_owner_key(key, value, prev, "DaemonSet", "daemonsets")

    # ---- reconcile -------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        try:
            rec = await self._store.get(key)
        except NotFound:
            return None  # its pods and revisions go with the garbage collector
        ds = rec.value
        meta = _meta(ds)
        if meta.get("deletionTimestamp"):
            return None
        uid = str(meta.get("uid"))
        _, ns, _ = edgeproto.split_key(key)
        spec = ds.get("spec") or {}
        template = spec.get("template") or {}
        status: Mapping[str, Any] = ds.get("status") or {}
        collisions = status.get("collisionCount") or 0
        hash_ = template_hash(template, collisions)

        annotations = dict(meta.get("annotations") or {})
        paused_rev = annotations.get(PAUSED_REVISION)
        if paused_rev is not None and paused_rev != hash_:
            # the template changed since the automatic pause: it no longer applies
            await self._set_pause(rec, None)
            await record_event(
                self._store,
                ds,
                "RolloutResumed",
                f"template changed to revision {hash_}: rollout resumed",
            )
            return None  # the write queues us again

        if not await self._sync_revisions(rec, hash_, collisions):
            return None  # a hash collision: collisionCount moved, queued again

        nodes, _ = await self._store.list("nodes/")
        pod_recs, _ = await self._store.list(f"pods/{ns}/")
        pods = [
            p.value
            for p in pod_recs
            if _owned_by(p.value, uid) and not _meta(p.value).get("deletionTimestamp")
        ]
        now = self._clock()
        paused = PAUSED in annotations
        node_values = [n.value for n in nodes]
        plan = plan_daemonset(ds, hash_, node_values, pods, now, paused=paused)
        resumed = paused_rev == hash_ and not paused
        rolling = ((spec.get("updateStrategy") or {}).get("type") or "RollingUpdate") == (
            "RollingUpdate"
        )
        if rolling and not paused and not resumed and len(plan.failed) > plan.failure_budget:
            reason = self._pause_reason(plan, annotations.get(MAX_FAILED))
            await self._set_pause(rec, (reason, hash_))
            await record_event(self._store, ds, "RolloutPaused", reason, type_="Warning")
            log.warning("daemonset %s: %s", key, reason)
            return None  # the write queues us again, paused
        await self._act(rec, plan, hash_, ns)
        await self._write_status(rec, plan, paused, annotations.get(PAUSED))
        return plan.requeue

    @staticmethod
    def _pause_reason(plan: DsPlan, limit: Any) -> str:
        first = "; ".join(f"{node}: {why}" for node, why in plan.failed[:3])
        more = f" (+{len(plan.failed) - 3} more)" if len(plan.failed) > 3 else ""
        return (
            f"{len(plan.failed)} updated pod(s) failed, more than max-failed "
            f"{limit if limit is not None else '25%'} allows: {first}{more}"
        )

    async def _set_pause(self, rec: Record, mark: tuple[str, str] | None) -> None:
        def edit(cur: Record) -> Any:
            new = copy.deepcopy(cur.value)
            ann = new.setdefault("metadata", {}).setdefault("annotations", {})
            if mark is None:
                ann.pop(PAUSED, None)
                ann.pop(PAUSED_REVISION, None)
            else:
                ann[PAUSED], ann[PAUSED_REVISION] = mark
            if not ann:
                del new["metadata"]["annotations"]
            return UNCHANGED if new == cur.value else new

        await self._store.modify(rec.key, edit, expect_rev=rec.mod_rev)

    # ---- revisions ---------------------------------------------------------------------

    async def _sync_revisions(self, rec: Record, hash_: str, collisions: int) -> bool:
        """The current template's ControllerRevision exists with the highest
        revision number; old ones beyond revisionHistoryLimit that no pod
        uses are deleted. False when a name collision moved collisionCount."""
        ds = rec.value
        meta = _meta(ds)
        uid = str(meta.get("uid"))
        _, ns, name = edgeproto.split_key(rec.key)
        template = (ds.get("spec") or {}).get("template") or {}
        crs_all, _ = await self._store.list(f"controllerrevisions/{ns}/")
        crs = [c for c in crs_all if _owned_by(c.value, uid)]
        top = max((revision_number(c.value) for c in crs), default=0)
        matching = [c for c in crs if revision_template(c.value) == template]
        matching.sort(key=lambda c: revision_number(c.value))
        for dup in matching[:-1]:  # one revision per template
            with contextlib.suppress(NotFound):
                await self._store.delete(dup.key, expect_rev=dup.mod_rev)
        if matching:
            cur = matching[-1]
            if revision_number(cur.value) < top:
                # a template back from the past (rollout undo): newest again

                def bump(r: Record) -> Any:
                    return {**r.value, "revision": top + 1}

                await self._store.modify(cur.key, bump, expect_rev=cur.mod_rev)
                top += 1
        else:
            obj = revision_object(ds, hash_, top + 1)
            obj["metadata"]["annotations"] = {
                k: v
                for k, v in (obj["metadata"].get("annotations") or {}).items()
                if not k.startswith("edgeflock.io/")
                and k != "kubectl.kubernetes.io/last-applied-configuration"
            } or None
            if obj["metadata"]["annotations"] is None:
                del obj["metadata"]["annotations"]
            cr_key = edgeproto.make_key("controllerrevisions", ns, f"{name}-{hash_}")
            try:
                await self._store.create(cr_key, obj)
                top += 1
            except AlreadyExists:
                other = await self._store.get(cr_key)
                refs = [
                    r
                    for r in _meta(other.value).get("ownerReferences") or []
                    if isinstance(r, Mapping) and r.get("controller") is True
                ]
                if revision_template(other.value) == template and not refs:
                    # left by a DaemonSet deleted with --cascade=orphan: adopt it

                    def adopt(r: Record) -> Any:
                        new = copy.deepcopy(r.value)
                        new["metadata"]["ownerReferences"] = [controller_ref(ds)]
                        new["revision"] = top + 1
                        return new

                    await self._store.modify(cr_key, adopt, expect_rev=other.mod_rev)
                    top += 1
                else:
                    await self._store.modify(
                        rec.key,
                        lambda r: {
                            **(r.value.get("status") or {}),
                            "collisionCount": collisions + 1,
                        },
                        status=True,
                    )
                    return False
        await self._prune_revisions(rec, crs, hash_)
        return True

    async def _prune_revisions(self, rec: Record, crs: list[Record], hash_: str) -> None:
        ds = rec.value
        limit = (ds.get("spec") or {}).get("revisionHistoryLimit")
        limit = 10 if not isinstance(limit, int) or limit < 0 else limit
        _, ns, _ = edgeproto.split_key(rec.key)
        uid = str(_meta(ds).get("uid"))
        pods, _ = await self._store.list(f"pods/{ns}/")
        in_use = {
            (_meta(p.value).get("labels") or {}).get(HASH_LABEL)
            for p in pods
            if _owned_by(p.value, uid)
        }
        old = [
            c
            for c in crs
            if (_meta(c.value).get("labels") or {}).get(HASH_LABEL) not in in_use | {hash_}
            and revision_template(c.value) != (ds.get("spec") or {}).get("template")
        ]
        old.sort(key=lambda c: revision_number(c.value))
        for c in old[: max(0, len(old) - limit)]:
            with contextlib.suppress(NotFound, Conflict):
                await self._store.delete(c.key, expect_rev=c.mod_rev)

    # ---- pods ----------------------------------------------------------------------------

    async def _act(self, rec: Record, plan: DsPlan, hash_: str, ns: str) -> None:
        ds = rec.value
        for pod_name in dict.fromkeys(plan.delete):
            try:
                await self._store.delete(edgeproto.make_key("pods", ns, pod_name))
            except NotFound:
                continue
            self.deleted += 1
            await record_event(self._store, ds, "SuccessfulDelete", f"Deleted pod: {pod_name}")
        for node in dict.fromkeys(plan.create_on):
            pod_name = await self._create_pod(ds, node, hash_, ns)
            self.created += 1
            await record_event(self._store, ds, "SuccessfulCreate", f"Created pod: {pod_name}")

    async def _create_pod(self, ds: Mapping[str, Any], node: str, hash_: str, ns: str) -> str:
        meta = _meta(ds)
        template = (ds.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels[HASH_LABEL] = hash_
        labels[TEMPLATE_GENERATION_LABEL] = str(meta.get("generation") or 1)
        pod_spec = copy.deepcopy(template.get("spec") or {})
        pod_spec["nodeName"] = node
        pod_spec["tolerations"] = daemon_tolerations(pod_spec.get("tolerations"))
        base = f"{meta.get('name')}-"
        for _ in range(5):
            name = base + "".join(secrets.choice(SAFE_ALPHABET) for _ in range(5))
            pmeta: dict[str, Any] = {
                "name": name,
                "generateName": base,
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [controller_ref(ds)],
            }
            if tmeta.get("annotations"):
                pmeta["annotations"] = dict(tmeta["annotations"])
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": pmeta,
                "spec": pod_spec,
                "status": {"phase": "Pending"},
            }
            try:
                await self._store.create(edgeproto.make_key("pods", ns, name), pod)
            except AlreadyExists:
                continue
            return name
        raise AlreadyExists(f"no free pod name for {base}*", key=base)

    # ---- status --------------------------------------------------------------------------

    async def _write_status(
        self, rec: Record, plan: DsPlan, paused: bool, pause_reason: Any
    ) -> None:
        generation = _meta(rec.value).get("generation")
        now = edgeproto.rfc3339(self._clock())

        def edit(cur: Record) -> Any:
            old: dict[str, Any] = dict(cur.value.get("status") or {})
            new = dict(old)
            new.update(plan.status)
            if _meta(cur.value).get("generation") == generation:
                new["observedGeneration"] = generation
            conds = {
                c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, Mapping)
            }
            wanted: dict[str, dict[str, Any]] = {}
            if plan.pending_offline:
                names = plan.pending_offline
                listed = ", ".join(names[:_LISTED_NAMES])
                more = (
                    f" (+{len(names) - _LISTED_NAMES} more)" if len(names) > _LISTED_NAMES else ""
                )
                wanted[OFFLINE_CONDITION] = {
                    "type": OFFLINE_CONDITION,
                    "status": "True",
                    "reason": "NodesNotReady",
                    "message": f"pending on {len(names)} offline node(s): {listed}{more}",
                }
            if paused:
                wanted[PAUSED_CONDITION] = {
                    "type": PAUSED_CONDITION,
                    "status": "True",
                    "reason": "FailureThreshold"
                    if PAUSED_REVISION in (_meta(cur.value).get("annotations") or {})
                    else "Paused",
                    "message": str(pause_reason or "paused"),
                }
            out = []
            for t, c in wanted.items():
                prev = conds.get(t)
                same = prev is not None and prev.get("status") == c["status"]
                c["lastTransitionTime"] = (
                    prev.get("lastTransitionTime", now) if same and prev else now
                )
                out.append(c)
            keep = [
                c
                for t, c in conds.items()
                if t not in (OFFLINE_CONDITION, PAUSED_CONDITION) and t is not None
            ]
            if out or keep:
                new["conditions"] = keep + out
            else:
                new.pop("conditions", None)
            return UNCHANGED if new == old else new

        with contextlib.suppress(NotFound):
            await self._store.modify(rec.key, edit, status=True)
