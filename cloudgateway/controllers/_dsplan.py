"""What a DaemonSet needs done now, from its nodes and pods (pure: no I/O).

Kubernetes' DaemonSet controller (``manage``, ``rollingUpdate``,
``updateDaemonSetStatus``), with the edge-aware rules:

- An offline node (its Ready condition not "True") never blocks the rollout:
  its pods are neither counted against ``maxUnavailable`` nor replaced while
  it is offline (the board keeps running its pod); a pod it lacks is created
  (the board gets it by delta when it returns). When it comes back its old
  pod is replaced within the budget, once.
- Counts in the status cover online nodes only (so ``kubectl rollout status``
  finishes when every online node runs the new revision and is available);
  offline nodes that still lack the new revision are listed apart
  (``pending_offline``).
- An updated pod that fails (waiting ``ErrImagePull``, ``ImagePullBackOff``,
  ``CrashLoopBackOff``... or not Ready by the progress deadline) counts as a
  failure, not against ``maxUnavailable``: the rollout goes on until more
  than ``max-failed`` of the online desired pods failed, then the controller
  pauses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import edgeproto

from ._nodematch import daemon_fit, node_ready
from ._revisions import HASH_LABEL

__all__ = [
    "FAILED_REASONS",
    "DsPlan",
    "failure_of",
    "max_failed",
    "plan_daemonset",
    "pod_available",
    "pod_ready",
    "scaled",
]

FAILED_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
DEFAULT_PROGRESS_DEADLINE = 600.0
DEFAULT_MAX_FAILED = "25%"


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def _name(obj: Mapping[str, Any]) -> str:
    return str(_map(obj.get("metadata")).get("name") or "")


def _ready_condition(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for c in _list(_map(pod.get("status")).get("conditions")):
        if c.get("type") == "Ready":
            return c
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    c = _ready_condition(pod)
    return c is not None and c.get("status") == "True"


def _ready_since(pod: Mapping[str, Any]) -> float | None:
    c = _ready_condition(pod)
    if c is None or c.get("status") != "True":
        return None
    return edgeproto.parse_rfc3339(c.get("lastTransitionTime"))


def pod_available(pod: Mapping[str, Any], min_ready: float, now: float) -> bool:
    """Ready for ``min_ready`` seconds (Kubernetes' IsPodAvailable)."""
    if not pod_ready(pod):
        return False
    if min_ready <= 0:
        return True
    since = _ready_since(pod)
    return since is not None and since + min_ready <= now


def scaled(value: Any, total: int, *, round_up: bool, default: int) -> int:
    """An int-or-percent (``3``, ``"25%"``) against ``total`` (Kubernetes'
    GetScaledValueFromIntOrPercent); ``default`` when absent or malformed."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, value)
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            v = pct * total / 100
            return max(0, math.ceil(v) if round_up else math.floor(v))
        return max(0, int(text))
    except ValueError:
        return default


def max_failed(value: Any, desired: int) -> float:
    """How many failed updated pods a rollout tolerates: a count, or a
    percentage of the online desired pods (exact: "25%" of 2 is 0.5, so one
    failure is more than that)."""
    text = str(value if value is not None else DEFAULT_MAX_FAILED).strip()
    try:
        if text.endswith("%"):
            return max(0.0, float(text[:-1])) * desired / 100
        return float(max(0, int(text)))
    except ValueError:
        return max_failed(DEFAULT_MAX_FAILED, desired)


def failure_of(
    pod: Mapping[str, Any], now: float, deadline: float, since: float | None = None
) -> str | None:
    """Why an updated pod counts as failed, or None: a container waiting for
    a reason that will not pass by itself, a Failed phase, or not Ready
    ``deadline`` seconds after ``since`` (its creation, or its node's return)."""
    status = _map(pod.get("status"))
    if status.get("phase") == "Failed":
        return f"pod {_name(pod)} failed: {status.get('reason') or 'Failed'}"
    for section in ("initContainerStatuses", "containerStatuses"):
        for cs in _list(status.get(section)):
            waiting = _map(_map(cs.get("state")).get("waiting"))
            reason = waiting.get("reason")
            if reason in FAILED_REASONS:
                msg = str(waiting.get("message") or "")[:200]
                return f"{reason}: container {cs.get('name')} of pod {_name(pod)}" + (
                    f" ({msg})" if msg else ""
                )
    if pod_ready(pod):
        return None
    created = edgeproto.parse_rfc3339(_map(pod.get("metadata")).get("creationTimestamp"))
    start = max(x for x in (created, since, 0.0) if x is not None)
    if start and now - start >= deadline:
        return f"pod {_name(pod)} not Ready {int(deadline)} s after it was started"
    return None


def _created(pod: Mapping[str, Any]) -> tuple[float, str]:
    t = edgeproto.parse_rfc3339(_map(pod.get("metadata")).get("creationTimestamp"))
    return (t if t is not None else 0.0, _name(pod))


def _is_new(pod: Mapping[str, Any], hash_: str) -> bool:
    return _map(_map(pod.get("metadata")).get("labels")).get(HASH_LABEL) == hash_


@dataclass
class DsPlan:
    create_on: list[str] = field(default_factory=list)  # node names
    delete: list[str] = field(default_factory=list)  # pod names
    status: dict[str, Any] = field(default_factory=dict)  # the counts
    pending_offline: list[str] = field(default_factory=list)  # node names
    failed: list[tuple[str, str]] = field(default_factory=list)  # (node, why)
    failure_budget: float = 0.0
    requeue: float | None = None  # seconds until something changes by time alone

    def wake(self, after: float) -> None:
        if after > 0 and (self.requeue is None or after < self.requeue):
            self.requeue = after


def plan_daemonset(
    ds: Mapping[str, Any],
    hash_: str,
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: float,
    *,
    paused: bool = False,
) -> DsPlan:
    """``pods``: the DaemonSet's own live pods (not being deleted)."""
    spec = _map(ds.get("spec"))
    pod_spec = _map(_map(spec.get("template")).get("spec"))
    annotations = _map(_map(ds.get("metadata")).get("annotations"))
    min_ready = float(spec.get("minReadySeconds") or 0)
    strategy = _map(spec.get("updateStrategy"))
    rolling = (strategy.get("type") or "RollingUpdate") == "RollingUpdate"
    ru = _map(strategy.get("rollingUpdate"))
    try:
        deadline = float(
            annotations.get("edgeflock.io/progress-deadline-seconds") or DEFAULT_PROGRESS_DEADLINE
        )
    except ValueError:
        deadline = DEFAULT_PROGRESS_DEADLINE

    plan = DsPlan()
    by_node: dict[str, list[Mapping[str, Any]]] = {}
    for p in pods:
        by_node.setdefault(str(_map(p.get("spec")).get("nodeName") or ""), []).append(p)
    node_names = {_name(n) for n in nodes}
    for name, ps in by_node.items():
        if name not in node_names:  # its node is gone (or it has none)
            plan.delete.extend(_name(p) for p in ps)

    max_surge_raw = ru.get("maxSurge")
    use_surge = rolling and scaled(max_surge_raw, 1, round_up=True, default=0) > 0

    # ---- manage: which nodes need a pod, which pods must go --------------------------
    online: dict[str, bool] = {}
    back_since: dict[str, float | None] = {}
    running: dict[str, list[Mapping[str, Any]]] = {}  # node -> pods that stay
    should: dict[str, bool] = {}
    misscheduled = 0
    for node in nodes:
        name = _name(node)
        fit = daemon_fit(node, pod_spec)
        up = node_ready(node)
        online[name] = up
        if up:
            for c in _list(_map(node.get("status")).get("conditions")):
                if c.get("type") == "Ready":
                    back_since[name] = edgeproto.parse_rfc3339(c.get("lastTransitionTime"))
        should[name] = fit.should_run
        ps = sorted(by_node.get(name, []), key=_created)
        if not fit.should_run and ps:
            misscheduled += 1
        if fit.should_run and not ps:
            plan.create_on.append(name)
            continue
        if not fit.should_continue:
            plan.delete.extend(_name(p) for p in ps)
            continue
        keep: list[Mapping[str, Any]] = []
        for p in ps:
            if up and _map(p.get("status")).get("phase") == "Failed":
                plan.delete.append(_name(p))  # replaced (a crash-looping pod is not Failed)
            else:
                keep.append(p)
        if not use_surge:
            plan.delete.extend(_name(p) for p in keep[1:])
            keep = keep[:1]
        else:
            newest = [p for p in keep if _is_new(p, hash_)]
            oldest = [p for p in keep if not _is_new(p, hash_)]
            plan.delete.extend(_name(p) for p in newest[1:] + oldest[1:])
            keep = newest[:1] + oldest[:1]
            if len(keep) == 2 and up:
                new_pod, old_pod = keep
                if not pod_ready(old_pod) or pod_available(new_pod, min_ready, now):
                    plan.delete.append(_name(old_pod))
                    keep = [new_pod]
        if keep:
            running[name] = keep
        if not keep and fit.should_run:
            plan.create_on.append(name)

    # ---- status (online nodes only; offline ones listed apart) ---------------------
    desired = current = ready = available = updated = 0
    failures: list[tuple[str, str]] = []
    for node in nodes:
        name = _name(node)
        if not should[name]:
            continue
        ps = running.get(name, [])
        new = next((p for p in ps if _is_new(p, hash_)), None)
        if not online[name]:
            if new is None or not pod_ready(new):
                plan.pending_offline.append(name)
            continue
        desired += 1
        if not ps:
            continue
        current += 1
        first = ps[0]
        if pod_ready(first):
            ready += 1
            if pod_available(first, min_ready, now):
                available += 1
            elif min_ready > 0:
                since = _ready_since(first)
                if since is not None:
                    plan.wake(since + min_ready - now + 0.5)
        if new is not None:
            updated += 1
            why = failure_of(new, now, deadline, back_since.get(name))
            if why is not None:
                failures.append((name, why))
            elif not pod_ready(new):
                created, _ = _created(new)
                start = max(created, back_since.get(name) or 0.0)
                plan.wake(start + deadline - now + 0.5)
    plan.failed = failures
    plan.failure_budget = max_failed(annotations.get("edgeflock.io/max-failed"), desired)
    plan.status = {
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": max(0, desired - available),
        "updatedNumberScheduled": updated,
        "numberMisscheduled": misscheduled,
    }

    # ---- rolling update over online nodes -----------------------------------------
    if not rolling or paused:
        return plan
    max_surge = scaled(max_surge_raw, desired, round_up=True, default=0)
    max_unavailable = scaled(ru.get("maxUnavailable"), desired, round_up=True, default=1)
    if max_surge == 0 and max_unavailable == 0:
        max_unavailable = 1
    failed_nodes = {n for n, _ in failures}
    if not use_surge:
        unavailable = 0
        allowed: list[str] = []
        candidates: list[str] = []
        for name, ps in running.items():
            if not online[name] or not should[name]:
                continue
            p = ps[0]
            if _is_new(p, hash_):
                if name not in failed_nodes and not pod_available(p, min_ready, now):
                    unavailable += 1
            elif not pod_available(p, min_ready, now):
                allowed.append(_name(p))
            else:
                candidates.append(_name(p))
        # nodes that should run a pod and have none are unavailable too
        unavailable += sum(1 for n in plan.create_on if online.get(n))
        room = max(0, max_unavailable - unavailable)
        plan.delete.extend(allowed + sorted(candidates)[:room])
    else:
        surging = 0
        allowed_new: list[str] = []
        candidate_new: list[str] = []
        for name, ps in running.items():
            if not online[name] or not should[name]:
                continue
            new = next((p for p in ps if _is_new(p, hash_)), None)
            old = next((p for p in ps if not _is_new(p, hash_)), None)
            if old is None:
                continue
            if new is None:
                if not pod_available(old, min_ready, now):
                    allowed_new.append(name)
                else:
                    candidate_new.append(name)
            elif name not in failed_nodes and not pod_available(new, min_ready, now):
                surging += 1
        room = max(0, max_surge - surging)
        plan.create_on.extend(allowed_new + sorted(candidate_new)[:room])
    return plan
