"""A Deployment's rollout arithmetic, as Kubernetes' deployment controller
does it, as pure functions over plain JSON objects and small views: the
template hash, revisions, maxSurge/maxUnavailable, how far to scale the new
ReplicaSet up and the old ones down, proportional scaling, the failure
threshold, and the status with its Available/Progressing conditions.

Edge-aware counting (``RSView.effective_available``): a pod on an offline node
(its Node's Ready condition is not True) that has not reported a failure
counts as available for the rollout's arithmetic and for the Deployment's
``availableReplicas``: the board keeps running what it was given (edge
autonomy), so the rollout neither waits on it nor replaces it because its node
is offline. ``offlineReplicas`` in the status says how many such pods there
are, apart.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import edgeproto

__all__ = [
    "DEFAULT_MAX_FAILED",
    "DESIRED",
    "FAILURES_ACCEPTED",
    "HASH_LABEL",
    "MAX_FAILED",
    "MAX_REPLICAS",
    "PAUSED_ON_FAILURES",
    "REVISION",
    "REVISION_HISTORY",
    "RSView",
    "deployment_status",
    "failure_threshold",
    "new_rs_replicas",
    "old_scale_down",
    "proportional_scale",
    "revision_of",
    "same_template",
    "scaled_value",
    "surge_and_unavailable",
    "template_hash",
]

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
# The failure threshold (shared with the DaemonSet controller): on the workload,
# an integer or a percentage of the desired replicas.
MAX_FAILED = "edgeflock.io/max-failed"
# On a ReplicaSet: the rollout to it was paused by the failure threshold
# (value: how many of its pods had failed) / the user resumed past it.
PAUSED_ON_FAILURES = "edgeflock.io/paused-on-failures"
FAILURES_ACCEPTED = "edgeflock.io/failures-accepted"
# Deployment annotations not copied to its ReplicaSets (Kubernetes' list, and ours).
SKIP_COPY = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
        PAUSED_ON_FAILURES,
        FAILURES_ACCEPTED,
    }
)

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


# ---- templates, hashes, revisions ---------------------------------------------------


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """A stable name-safe hash of the pod template (not Kubernetes' fnv hash
    of its Go value: the SHA-256 of its canonical JSON, and the collision
    count when there is one), in Kubernetes' alphabet, 10 characters."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if collision_count:
        text += f"#{collision_count}"
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    out = []
    for _ in range(10):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template with the ``pod-template-hash`` label removed."""
    t = json.loads(json.dumps(template))
    labels = _map(t.get("metadata")).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
        if not labels:
            t["metadata"].pop("labels")
    return dict(t)


def _normal(template: Mapping[str, Any]) -> Any:
    t = without_hash(template)
    meta = t.get("metadata")
    if isinstance(meta, dict):
        for k in [k for k, v in meta.items() if v in (None, {}, [])]:
            meta.pop(k)
        if not meta:
            t.pop("metadata")
    return t


def same_template(rs_template: Any, d_template: Any) -> bool:
    """Kubernetes' EqualIgnoreHash: equal once the hash label is removed."""
    return bool(_normal(_map(rs_template)) == _normal(_map(d_template)))


def revision_of(obj: Mapping[str, Any]) -> int:
    value = _map(_map(obj.get("metadata")).get("annotations")).get(REVISION)
    try:
        return int(str(value))
    except ValueError:
        return 0


# ---- maxSurge / maxUnavailable ------------------------------------------------------


def scaled_value(value: Any, total: int, round_up: bool, default: str) -> int:
    """An IntOrString (``3`` or ``"25%"``) against ``total``; percentages round
    up or down as Kubernetes' GetScaledValueFromIntOrPercent. A malformed value
    counts as ``default``."""
    if value is None:
        value = default
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, value)
    text = str(value)
    if text.endswith("%"):
        try:
            pct = int(text[:-1])
        except ValueError:
            return scaled_value(default, total, round_up, default)
        exact = pct * total / 100
        return max(0, math.ceil(exact) if round_up else math.floor(exact))
    try:
        return max(0, int(text))
    except ValueError:
        return scaled_value(default, total, round_up, default)


def surge_and_unavailable(d: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment: surge rounds
    up, unavailable down; both 0 means unavailable 1 (Kubernetes'
    ResolveFenceposts). Recreate: (0, replicas)."""
    spec = _map(d.get("spec"))
    replicas = _int(spec.get("replicas"), 1)
    strategy = _map(spec.get("strategy"))
    if strategy.get("type") == "Recreate":
        return 0, replicas
    ru = _map(strategy.get("rollingUpdate"))
    surge = scaled_value(ru.get("maxSurge"), replicas, True, "25%")
    unavailable = scaled_value(ru.get("maxUnavailable"), replicas, False, "25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


DEFAULT_MAX_FAILED = "25%"


def failure_threshold(workload: Mapping[str, Any], desired: int) -> float:
    """How many failed updated pods the rollout tolerates (``edgeflock.io/
    max-failed``: a count, or a percentage of ``desired``, exact: "25%" of 2
    is 0.5, so one failure is more than that); 25 % when absent or malformed.
    The same rule as the DaemonSet controller's."""
    value = _map(_map(workload.get("metadata")).get("annotations")).get(MAX_FAILED)
    text = str(value if value is not None else DEFAULT_MAX_FAILED).strip()
    try:
        if text.endswith("%"):
            return max(0.0, float(text[:-1])) * desired / 100
        return float(max(0, int(text)))
    except ValueError:
        return failure_threshold({}, desired)


# ---- one ReplicaSet as the rollout sees it ------------------------------------------


@dataclass
class RSView:
    """A ReplicaSet and counts of its active pods."""

    key: str
    value: dict[str, Any]
    mod_rev: int
    create_rev: int
    replicas: int  # spec.replicas (what the rollout sets)
    pods: int = 0
    ready: int = 0
    available: int = 0  # Ready for minReadySeconds, by the pods' last reports
    offline: int = 0  # on a node that is not Ready
    offline_unconfirmed: int = 0  # of those, not available and not failed
    failed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[1]

    @property
    def effective_available(self) -> int:
        return self.available + self.offline_unconfirmed

    def annotation(self, key: str) -> str | None:
        v = _map(_map(self.value.get("metadata")).get("annotations")).get(key)
        return None if v is None else str(v)


# ---- the rolling update -------------------------------------------------------------


def new_rs_replicas(replicas: int, surge: int, total: int, new: int) -> int:
    """Kubernetes' NewRSNewReplicas for RollingUpdate: how far the new
    ReplicaSet may grow with ``total`` pods asked for across all of them."""
    if new >= replicas:
        return replicas
    max_total = replicas + surge
    if total >= max_total:
        return new
    return new + min(max_total - total, replicas - new)


def old_scale_down(
    replicas: int, unavailable: int, new: RSView | None, olds: Sequence[RSView]
) -> dict[str, int]:
    """New sizes for old ReplicaSets (oldest first in ``olds``): first the
    unhealthy replicas go, within the budget, then available ones down to
    ``replicas - unavailable`` available in all (Kubernetes'
    reconcileOldReplicaSets with cleanupUnhealthyReplicas)."""
    sizes = {rs.key: rs.replicas for rs in olds}
    old_total = sum(sizes.values())
    if old_total == 0:
        return {}
    new_spec = new.replicas if new else 0
    min_available = replicas - unavailable
    new_unavailable = max(0, new_spec - new.effective_available) if new else 0
    budget = old_total + new_spec - min_available - new_unavailable
    if budget <= 0:
        return {}
    done = 0
    for rs in olds:
        if done >= budget:
            break
        unhealthy = sizes[rs.key] - min(rs.effective_available, sizes[rs.key])
        if sizes[rs.key] == 0 or unhealthy <= 0:
            continue
        down = min(budget - done, unhealthy)
        sizes[rs.key] -= down
        done += down
    available = sum(rs.effective_available for rs in olds) + (new.effective_available if new else 0)
    # Unhealthy ones just removed were not available: availability is unchanged.
    if available > min_available:
        left = available - min_available
        for rs in olds:
            if left <= 0:
                break
            down = min(sizes[rs.key], left)
            sizes[rs.key] -= down
            left -= down
    return {k: v for k, v in sizes.items() if v != next(r.replicas for r in olds if r.key == k)}


def proportional_scale(
    replicas: int, surge: int, active: Sequence[RSView], newest_first: Sequence[RSView]
) -> dict[str, int]:
    """New sizes when the Deployment is scaled while several ReplicaSets are
    active: the difference to ``replicas + surge`` shared in proportion to
    their sizes, the rounding leftover to the largest (newest first on the
    way up, oldest first on the way down), as Kubernetes shares it."""
    total = sum(rs.replicas for rs in active)
    allowed = replicas + surge if replicas > 0 else 0
    to_add = allowed - total
    if to_add == 0 or total == 0:
        return {}
    order = sorted(
        active,
        key=lambda r: (
            -r.replicas,
            newest_first.index(r) if to_add > 0 else -newest_first.index(r),
        ),
    )
    sizes: dict[str, int] = {}
    added = 0
    for rs in order:
        share = int(to_add * rs.replicas / total)
        if to_add > 0:
            share = min(share, to_add - added)
        else:
            share = max(share, to_add - added, -rs.replicas)
        sizes[rs.key] = rs.replicas + share
        added += share
    leftover = to_add - added
    if leftover:
        first = order[0].key
        sizes[first] = max(0, sizes[first] + leftover)
    return {k: v for k, v in sizes.items() if v != next(r.replicas for r in active if r.key == k)}


# ---- status and conditions ---------------------------------------------------------


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


def set_condition(
    conds: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    *,
    progressed: bool = False,
) -> None:
    """Kubernetes' SetDeploymentCondition: unchanged when status and reason
    are (unless ``progressed``: then lastUpdateTime moves); lastTransitionTime
    kept while the status is."""
    cur = next((c for c in conds if c.get("type") == type_), None)
    if cur is not None and cur.get("status") == status and cur.get("reason") == reason:
        if not progressed and cur.get("message") == message:
            return
        if not progressed:
            cur["message"] = message
            return
    new = {
        "type": type_,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }
    if cur is not None and cur.get("status") == status:
        new["lastTransitionTime"] = cur.get("lastTransitionTime") or now
    conds[:] = [c for c in conds if c.get("type") != type_] + [new]


@dataclass
class Counts:
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    offline: int = 0


def counts(new: RSView | None, all_rs: Sequence[RSView]) -> Counts:
    c = Counts()
    for rs in all_rs:
        c.replicas += rs.pods
        c.ready += rs.ready
        c.available += rs.effective_available
        c.offline += rs.offline
    c.updated = new.pods if new else 0
    return c


def deployment_status(
    d: Mapping[str, Any],
    new: RSView | None,
    all_rs: Sequence[RSView],
    *,
    observed_generation: int,
    now: float,
    paused_reason: tuple[str, str] | None,
    created_new: bool,
) -> tuple[dict[str, Any], float | None]:
    """The Deployment's next status, and in how many seconds its progress
    deadline runs out (to look again then)."""
    spec = _map(d.get("spec"))
    replicas = _int(spec.get("replicas"), 1)
    _, unavailable = surge_and_unavailable(d)
    old = _map(d.get("status"))
    c = counts(new, all_rs)
    stamp = edgeproto.rfc3339(now)
    conds: list[dict[str, Any]] = [
        dict(x) for x in old.get("conditions") or [] if isinstance(x, Mapping)
    ]
    if c.available >= replicas - unavailable:
        set_condition(conds, "Available", "True", "MinimumReplicasAvailable",
                      "Deployment has minimum availability.", stamp)  # fmt: skip
    else:
        set_condition(conds, "Available", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.", stamp)  # fmt: skip
    status: dict[str, Any] = {
        "observedGeneration": observed_generation,
        "replicas": c.replicas,
        "updatedReplicas": c.updated,
        "readyReplicas": c.ready,
        "availableReplicas": c.available,
        "unavailableReplicas": max(0, replicas - c.available),
    }
    if c.offline:
        status["offlineReplicas"] = c.offline
    if old.get("collisionCount"):
        status["collisionCount"] = old["collisionCount"]
    deadline = spec.get("progressDeadlineSeconds", 600)
    has_deadline = isinstance(deadline, int) and not isinstance(deadline, bool)
    recheck: float | None = None
    name = new.name if new else ""
    cur = next((x for x in conds if x.get("type") == "Progressing"), None)
    if paused_reason is not None:
        reason, message = paused_reason
        state = "False" if reason == "FailureThresholdExceeded" else "Unknown"
        set_condition(conds, "Progressing", state, reason, message, stamp)
    elif cur is not None and cur.get("reason") in ("DeploymentPaused", "FailureThresholdExceeded"):
        set_condition(conds, "Progressing", "Unknown", "DeploymentResumed",
                      "Deployment is resumed", stamp)  # fmt: skip
    elif has_deadline and new is not None:
        complete = (
            c.updated == replicas and c.replicas == replicas and c.available == replicas
            and observed_generation >= _int(_map(d.get("metadata")).get("generation"), 1)
        )  # fmt: skip
        done_before = (
            cur is not None and cur.get("reason") == "NewReplicaSetAvailable"
            and c.replicas == c.updated
        )  # fmt: skip
        if created_new:
            set_condition(conds, "Progressing", "True", "NewReplicaSetCreated",
                          f'Created new replica set "{name}"', stamp)  # fmt: skip
        elif done_before:
            pass
        elif complete:
            set_condition(conds, "Progressing", "True", "NewReplicaSetAvailable",
                          f'ReplicaSet "{name}" has successfully progressed.', stamp)  # fmt: skip
        elif _progressing(old, c):
            msg = f'ReplicaSet "{name}" is progressing.'
            set_condition(conds, "Progressing", "True", "ReplicaSetUpdated", msg, stamp,
                          progressed=True)  # fmt: skip
        else:
            cur = next((x for x in conds if x.get("type") == "Progressing"), None)
            if cur is None:
                set_condition(conds, "Progressing", "True", "FoundNewReplicaSet",
                              f'Found new replica set "{name}"', stamp)  # fmt: skip
            elif cur.get("reason") != "ProgressDeadlineExceeded":
                since = edgeproto.parse_rfc3339(cur.get("lastUpdateTime"))
                left = (since or now) + deadline - now
                if left < 0:
                    msg = f'ReplicaSet "{name}" has timed out progressing.'
                    set_condition(conds, "Progressing", "False", "ProgressDeadlineExceeded",
                                  msg, stamp)  # fmt: skip
                else:
                    recheck = left + 1
        cur = next((x for x in conds if x.get("type") == "Progressing"), None)
        if recheck is None and cur is not None and cur.get("reason") not in (
            "NewReplicaSetAvailable", "ProgressDeadlineExceeded"
        ):  # fmt: skip
            since = edgeproto.parse_rfc3339(cur.get("lastUpdateTime"))
            recheck = max(0.0, (since or now) + deadline - now) + 1
    status["conditions"] = sorted(conds, key=lambda x: x.get("type") != "Available")
    return status, recheck


def _progressing(old: Mapping[str, Any], c: Counts) -> bool:
    """Kubernetes' DeploymentProgressing: more updated, fewer old, or more
    ready or available replicas than the stored status says."""
    o_updated = _int(old.get("updatedReplicas"), 0)
    o_old = _int(old.get("replicas"), 0) - o_updated
    return (
        c.updated > o_updated
        or (c.replicas - c.updated) < o_old
        or c.ready > _int(old.get("readyReplicas"), 0)
        or c.available > _int(old.get("availableReplicas"), 0)
    )
