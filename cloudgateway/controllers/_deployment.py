"""The Deployment controller: one ReplicaSet per pod template, named
``<deployment>-<pod-template-hash>``, rolled from the old ones to the new one
(``RollingUpdate`` within maxSurge/maxUnavailable, or ``Recreate``), scaled,
paused, rolled back by kubectl (which copies an old ReplicaSet's template into
the Deployment), pruned to ``revisionHistoryLimit``, and reported in the
Deployment's status as ``kubectl rollout status`` reads it.

One reconcile reads the Deployment, the ReplicaSets it controls, their pods and
those pods' nodes, then makes at most one step (create the new ReplicaSet,
scale it up, or scale old ones down), writes the status and waits for the
next change: the ReplicaSet controller and the scheduler make the pods, boards
report them Ready, and the next reconcile takes the next step. Nothing is
kept in memory: a restarted gateway continues from the store.

Edge-aware: a pod on an offline node counts as available unless it reported
a failure (``_rollout``: the board keeps running it), so an offline board
never stalls a rollout; ``status.offlineReplicas`` counts such pods. When
more updated pods than ``edgeflock.io/max-failed`` allows (a count or a
percentage of ``spec.replicas``; 25 % by default, as for DaemonSets) report a
failure
(``ErrImagePull``, ``CrashLoopBackOff``, ... or phase Failed), the controller
pauses the Deployment (``spec.paused: true``, condition Progressing=False
reason ``FailureThresholdExceeded``) and marks the ReplicaSet
(``edgeflock.io/paused-on-failures``). ``kubectl rollout resume`` continues
past it (the ReplicaSet is marked ``edgeflock.io/failures-accepted``: not
checked again); a new template (``rollout undo`` through edgectl, ``set image``,
``apply``) lifts the pause by itself and rolls to that template.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import edgeproto

from .._store import UNCHANGED, AlreadyExists, Conflict, NotFound, Record, Store
from ._nodematch import node_ready
from ._pods import available, failure_reason, is_active, owned_by, pod_ready
from ._rollout import (
    DEFAULT_MAX_FAILED,
    DESIRED,
    FAILURES_ACCEPTED,
    HASH_LABEL,
    MAX_FAILED,
    MAX_REPLICAS,
    PAUSED_ON_FAILURES,
    REVISION,
    REVISION_HISTORY,
    SKIP_COPY,
    RSView,
    deployment_status,
    failure_threshold,
    new_rs_replicas,
    old_scale_down,
    proportional_scale,
    revision_of,
    same_template,
    surge_and_unavailable,
    template_hash,
)
from ._runtime import controller_owner_key

log = logging.getLogger(__name__)

__all__ = ["DeploymentController"]


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _copy(v: Any) -> Any:
    return json.loads(json.dumps(v))


class DeploymentController:
    """The Deployment controller (``run_controllers``)."""

    name = "deployment"
    prefixes = ("deployments/", "replicasets/", "pods/", "nodes/")

    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        self._store = store
        self._clock = clock

    # ---- events → keys --------------------------------------------------------------

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("deployments/"):
            return (key,)
        if key.startswith("replicasets/"):
            return controller_owner_key(key, value, prev, "Deployment", "deployments")
        if key.startswith("pods/"):
            # A pod's ReplicaSet is named <deployment>-<its pod-template-hash label>.
            _, ns, _ = edgeproto.split_key(key)
            out: list[str] = []
            for obj in (value, prev):
                for rs_key in controller_owner_key(key, obj, None, "ReplicaSet", "replicasets"):
                    h = _map(_map(_map(obj).get("metadata")).get("labels")).get(HASH_LABEL)
                    rs = rs_key.rsplit("/", 1)[1]
                    if isinstance(h, str) and h and rs.endswith("-" + h):
                        k = edgeproto.make_key("deployments", ns, rs[: -len(h) - 1])
                        if k not in out:
                            out.append(k)
            return out
        if value is None or prev is None or node_ready(value) != node_ready(prev):
            return ("deployments/",)
        return ()

    # ---- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        try:
            rec = await self._store.get(key)
        except NotFound:
            return None  # its ReplicaSets go with it (garbage collection by owner)
        d = rec.value
        meta = _map(d.get("metadata"))
        if meta.get("deletionTimestamp"):
            return None
        _, ns, _ = edgeproto.split_key(key)
        views = await self._views(d, ns)
        views.sort(key=lambda v: (v.create_rev, v.key))  # oldest first
        spec = _map(d.get("spec"))
        template = _map(spec.get("template"))
        new = next((v for v in views if same_template(_map(v.value.get("spec")).get("template"),
                                                       template)), None)  # fmt: skip
        olds = [v for v in views if v is not new]
        paused = spec.get("paused") is True

        # The failure threshold's pause: lifted by a new template, accepted by a resume.
        held = [v for v in olds if v.annotation(PAUSED_ON_FAILURES) is not None]
        if paused and held:
            await self._set_paused(rec, False)
            for v in held:
                await self._annotate_rs(v, {PAUSED_ON_FAILURES: None})
            return None
        if not paused and new is not None and new.annotation(PAUSED_ON_FAILURES) is not None:
            n = new.annotation(PAUSED_ON_FAILURES)
            await self._annotate_rs(new, {PAUSED_ON_FAILURES: None, FAILURES_ACCEPTED: n})
            return None

        created = False
        paused_reason: tuple[str, str] | None = None
        if paused:
            if new is not None and new.annotation(PAUSED_ON_FAILURES) is not None:
                paused_reason = ("FailureThresholdExceeded", _threshold_message(d, new))
            else:
                paused_reason = ("DeploymentPaused", "Deployment is paused")
            await self._sync_scale(d, new, olds)
            await self._cleanup(d, new, olds)
        else:
            if new is None:
                new = await self._create_new(rec, olds)
                if new is None:
                    return 0.5  # a name collision: counted, tried again with another hash
                created = True
            else:
                await self._sync_new_annotations(d, new, olds)
            threshold = failure_threshold(d, _int(spec.get("replicas"), 1))
            if new.failed > threshold and new.annotation(FAILURES_ACCEPTED) is None:
                await self._annotate_rs(new, {PAUSED_ON_FAILURES: str(new.failed)})
                await self._set_paused(rec, True)
                log.warning("deployment %s paused: %s", key, _threshold_message(d, new))
                return None
            if not created:
                if self._scaling_event(d, new, olds):
                    await self._sync_scale(d, new, olds)
                elif _map(spec.get("strategy")).get("type") == "Recreate":
                    await self._recreate(d, new, olds)
                else:
                    await self._rolling(d, new, olds)
                if _complete(d, new, olds):
                    await self._cleanup(d, new, olds)
        every = [*olds, *([new] if new is not None else [])]
        return await self._write_status(rec, new, every, paused_reason, created)

    # ---- reading --------------------------------------------------------------------

    async def _views(self, d: Mapping[str, Any], ns: str) -> list[RSView]:
        uid = str(_map(d.get("metadata")).get("uid") or "")
        rs_recs, _ = await self._store.list(edgeproto.make_key("replicasets", ns, ""))
        mine = [r for r in rs_recs if owned_by(r.value, uid)
                and not _map(r.value.get("metadata")).get("deletionTimestamp")]  # fmt: skip
        if not mine:
            return []
        pod_recs, _ = await self._store.list(edgeproto.make_key("pods", ns, ""))
        by_uid: dict[str, list[Mapping[str, Any]]] = {}
        for p in pod_recs:
            if not is_active(p.value):
                continue
            for ref in _map(p.value.get("metadata")).get("ownerReferences") or []:
                if isinstance(ref, Mapping) and ref.get("controller") is True:
                    by_uid.setdefault(str(ref.get("uid")), []).append(p.value)
        nodes = {
            str(n)
            for pods in by_uid.values()
            for p in pods
            if isinstance(n := _map(p.get("spec")).get("nodeName"), str) and n
        }
        node_recs = await self._store.get_many(
            edgeproto.make_key("nodes", "", n) for n in sorted(nodes)
        )
        online = {r.key.rsplit("/", 1)[1] for r in node_recs if node_ready(r.value)}
        min_ready = _int(_map(d.get("spec")).get("minReadySeconds"), 0)
        now = self._clock()
        views = []
        for r in mine:
            v = RSView(r.key, r.value, r.mod_rev, r.create_rev,
                       _int(_map(r.value.get("spec")).get("replicas"), 1))  # fmt: skip
            for pod in by_uid.get(str(_map(r.value.get("metadata")).get("uid")), []):
                v.pods += 1
                v.ready += pod_ready(pod)
                ok, _ = available(pod, min_ready, now)
                v.available += ok
                why = failure_reason(pod)
                if why is not None:
                    v.failed += 1
                    v.failure_reasons[why] = v.failure_reasons.get(why, 0) + 1
                node = _map(pod.get("spec")).get("nodeName")
                if node and node not in online:
                    v.offline += 1
                    if not ok and why is None:
                        v.offline_unconfirmed += 1
            views.append(v)
        return views

    # ---- writing ReplicaSets --------------------------------------------------------

    async def _create_new(self, rec: Record, olds: list[RSView]) -> RSView | None:
        d = rec.value
        meta = _map(d.get("metadata"))
        spec = _map(d.get("spec"))
        ns = str(meta.get("namespace") or "default")
        collisions = _int(_map(d.get("status")).get("collisionCount"), 0)
        h = template_hash(spec.get("template") or {}, collisions)
        name = f"{meta.get('name')}-{h}"
        template = _copy(spec.get("template") or {})
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = _copy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        replicas = _int(spec.get("replicas"), 1)
        surge, _ = surge_and_unavailable(d)
        if _map(spec.get("strategy")).get("type") == "Recreate":
            size = 0
        else:
            size = new_rs_replicas(replicas, surge, sum(v.replicas for v in olds), 0)
        revision = max((revision_of(v.value) for v in olds), default=0) + 1
        annotations = {k: v for k, v in _map(meta.get("annotations")).items() if k not in SKIP_COPY}
        annotations.update({REVISION: str(revision), DESIRED: str(replicas),
                            MAX_REPLICAS: str(replicas + surge)})  # fmt: skip
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta.get("name"),
                     "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "spec": {
                "replicas": size,
                "minReadySeconds": _int(spec.get("minReadySeconds"), 0),
                "selector": selector,
                "template": template,
            },
        }  # fmt: skip
        key = edgeproto.make_key("replicasets", ns, name)
        try:
            ev = await self._store.create(key, rs)
        except AlreadyExists:
            # Not ours, or another template with the same hash: count and rehash.
            def bump(cur: Record) -> Any:
                status = dict(_map(cur.value.get("status")))
                status["collisionCount"] = collisions + 1
                return status

            await self._store.modify(rec.key, bump, status=True, expect_rev=rec.mod_rev)
            return None
        log.info("deployment %s: new replica set %s (revision %d)", rec.key, name, revision)
        return RSView(key, ev.record.value, ev.rev, ev.rev, size)

    async def _scale(self, d: Mapping[str, Any], v: RSView, size: int) -> None:
        replicas = _int(_map(d.get("spec")).get("replicas"), 1)
        surge, _ = surge_and_unavailable(d)
        notes = {DESIRED: str(replicas), MAX_REPLICAS: str(replicas + surge)}

        def edit(cur: Record) -> Any:
            obj = _copy(cur.value)
            meta = obj.setdefault("metadata", {})
            ann = meta.setdefault("annotations", {})
            if obj.get("spec", {}).get("replicas") == size and all(
                ann.get(k) == x for k, x in notes.items()
            ):
                return UNCHANGED
            ann.update(notes)
            obj.setdefault("spec", {})["replicas"] = size
            return obj

        await self._store.modify(v.key, edit, expect_rev=v.mod_rev)
        log.info("scaled replica set %s from %d to %d", v.key, v.replicas, size)
        v.replicas = size

    async def _annotate_rs(self, v: RSView, changes: Mapping[str, str | None]) -> None:
        def edit(cur: Record) -> Any:
            obj = _copy(cur.value)
            ann = obj.setdefault("metadata", {}).setdefault("annotations", {})
            before = dict(ann)
            for k, x in changes.items():
                if x is None:
                    ann.pop(k, None)
                else:
                    ann[k] = x
            return UNCHANGED if ann == before else obj

        await self._store.modify(v.key, edit, expect_rev=v.mod_rev)

    async def _sync_new_annotations(
        self, d: Mapping[str, Any], new: RSView, olds: list[RSView]
    ) -> None:
        """The new ReplicaSet's revision is the highest (an undo makes an old
        one new again: revision max+1, the old number kept in
        revision-history), the Deployment's annotations copied to it, and its
        minReadySeconds the Deployment's."""
        meta = _map(d.get("metadata"))
        spec = _map(d.get("spec"))
        revision = max((revision_of(v.value) for v in olds), default=0) + 1
        copied = {k: v for k, v in _map(meta.get("annotations")).items() if k not in SKIP_COPY}
        min_ready = _int(spec.get("minReadySeconds"), 0)

        def edit(cur: Record) -> Any:
            obj = _copy(cur.value)
            ann = obj.setdefault("metadata", {}).setdefault("annotations", {})
            before = _copy(obj)
            current = revision_of(obj)
            if current < revision:
                if current:
                    hist = [x for x in str(ann.get(REVISION_HISTORY) or "").split(",") if x]
                    ann[REVISION_HISTORY] = ",".join([*hist, str(current)])
                ann[REVISION] = str(revision)
            ann.update(copied)
            obj.setdefault("spec", {})["minReadySeconds"] = min_ready
            return UNCHANGED if obj == before else obj

        ev = await self._store.modify(new.key, edit, expect_rev=new.mod_rev)
        if ev is not None:
            new.value, new.mod_rev = ev.record.value, ev.rev

    async def _set_paused(self, rec: Record, paused: bool) -> None:
        def edit(cur: Record) -> Any:
            obj = _copy(cur.value)
            spec = obj.setdefault("spec", {})
            if bool(spec.get("paused")) == paused:
                return UNCHANGED
            if paused:
                spec["paused"] = True
            else:
                spec.pop("paused", None)
            return obj

        await self._store.modify(rec.key, edit, expect_rev=rec.mod_rev)

    # ---- the strategies -------------------------------------------------------------

    def _scaling_event(self, d: Mapping[str, Any], new: RSView, olds: list[RSView]) -> bool:
        replicas = str(_int(_map(d.get("spec")).get("replicas"), 1))
        for v in [*olds, new]:
            desired = v.annotation(DESIRED)
            if v.replicas > 0 and desired is not None and desired != replicas:
                return True
        return False

    async def _sync_scale(
        self, d: Mapping[str, Any], new: RSView | None, olds: list[RSView]
    ) -> None:
        """Kubernetes' scale(): one active ReplicaSet (or none: the newest)
        takes the new size; a saturated new one lets the old go; otherwise
        proportional scaling."""
        spec = _map(d.get("spec"))
        replicas = _int(spec.get("replicas"), 1)
        every = [*olds, *([new] if new else [])]
        active = [v for v in every if v.replicas > 0]
        target: RSView | None = None
        if len(active) == 1:
            target = active[0]
        elif not active:
            target = new if new is not None else (olds[-1] if olds else None)
        if target is not None or not active:
            if target is not None and (
                target.replicas != replicas or target.annotation(DESIRED) != str(replicas)
            ):
                await self._scale(d, target, replicas)
            return
        if (
            new is not None and new.replicas == replicas
            and new.effective_available >= replicas
            and new.annotation(DESIRED) == str(replicas)
        ):  # fmt: skip
            for v in olds:
                if v.replicas:
                    await self._scale(d, v, 0)
            return
        surge, _ = surge_and_unavailable(d)
        if _map(spec.get("strategy")).get("type") == "Recreate":
            surge = 0
        newest_first = list(reversed(every))
        sizes = proportional_scale(replicas, surge, active, newest_first)
        for v in active:
            await self._scale(d, v, sizes.get(v.key, v.replicas))

    async def _rolling(self, d: Mapping[str, Any], new: RSView, olds: list[RSView]) -> None:
        replicas = _int(_map(d.get("spec")).get("replicas"), 1)
        surge, unavailable = surge_and_unavailable(d)
        total = new.replicas + sum(v.replicas for v in olds)
        grow = new_rs_replicas(replicas, surge, total, new.replicas)
        if grow != new.replicas:
            await self._scale(d, new, grow)
            return
        for k, size in old_scale_down(replicas, unavailable, new, olds).items():
            v = next(x for x in olds if x.key == k)
            await self._scale(d, v, size)

    async def _recreate(self, d: Mapping[str, Any], new: RSView, olds: list[RSView]) -> None:
        """Every old pod gone (the old ReplicaSets at 0, their pods deleted)
        before the new ReplicaSet grows."""
        for v in olds:
            if v.replicas:
                await self._scale(d, v, 0)
        if any(v.pods for v in olds):
            return
        replicas = _int(_map(d.get("spec")).get("replicas"), 1)
        if new.replicas != replicas:
            await self._scale(d, new, replicas)

    async def _cleanup(self, d: Mapping[str, Any], new: RSView | None, olds: list[RSView]) -> None:
        """Old ReplicaSets at 0 with no pods beyond ``revisionHistoryLimit``
        (default 10) are deleted, lowest revision first."""
        limit = _int(_map(d.get("spec")).get("revisionHistoryLimit"), 10)
        idle = [v for v in olds if v.replicas == 0 and v.pods == 0]
        idle.sort(key=lambda v: (revision_of(v.value), v.create_rev))
        for v in idle[: max(0, len(idle) - limit)]:
            try:
                await self._store.delete(v.key, expect_rev=v.mod_rev)
            except (NotFound, Conflict):
                continue
            log.info("deleted old replica set %s (revision history limit %d)", v.key, limit)
            olds.remove(v)

    # ---- status ---------------------------------------------------------------------

    async def _write_status(
        self,
        rec: Record,
        new: RSView | None,
        views: list[RSView],
        paused_reason: tuple[str, str] | None,
        created: bool,
    ) -> float | None:
        revision = str(revision_of(new.value)) if new is not None else None
        now = self._clock()
        recheck: list[float | None] = [None]

        def edit(cur: Record) -> Any:
            obj = _copy(cur.value)
            meta = obj.setdefault("metadata", {})
            gen = _int(meta.get("generation"), 1)
            ann = meta.get("annotations") or {}
            if revision is not None and revision != "0" and ann.get(REVISION) != revision:
                meta["annotations"] = {**ann, REVISION: revision}
                gen += 1  # the store counts an annotation change as a spec change
            status, recheck[0] = deployment_status(
                obj, new, views, observed_generation=gen, now=now,
                paused_reason=paused_reason, created_new=created,
            )  # fmt: skip
            if status == cur.value.get("status") and obj["metadata"] == cur.value["metadata"]:
                return UNCHANGED
            obj["status"] = status
            return obj

        await self._store.modify(rec.key, edit, expect_rev=rec.mod_rev)
        return recheck[0]


def _complete(d: Mapping[str, Any], new: RSView, olds: list[RSView]) -> bool:
    replicas = _int(_map(d.get("spec")).get("replicas"), 1)
    return (
        new.replicas == replicas
        and new.effective_available >= replicas
        and all(v.replicas == 0 for v in olds)
    )


def _threshold_message(d: Mapping[str, Any], new: RSView) -> str:
    limit = _map(_map(d.get("metadata")).get("annotations")).get(MAX_FAILED)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(new.failure_reasons.items()))
    failed = new.annotation(PAUSED_ON_FAILURES) or str(new.failed)
    return (
        f'ReplicaSet "{new.name}": {failed} updated pod(s) failed, more than max-failed '
        f"{limit if limit is not None else DEFAULT_MAX_FAILED} allows"
        f"{f': {reasons}' if reasons else ''}"
    )
