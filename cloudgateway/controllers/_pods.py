"""What the ReplicaSet and Deployment controllers read off pods and write into
them: label selectors, readiness and availability (``minReadySeconds``),
failure as a board reports it, the order in which surplus pods go, and a new
pod from a template. Pure functions over plain JSON objects."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import edgeproto

__all__ = [
    "FAILURE_REASONS",
    "available",
    "deletion_rank",
    "failure_reason",
    "is_active",
    "labels_of",
    "new_pod",
    "owned_by",
    "pod_ready",
    "random_suffix",
    "selector_matches",
]

# Container waiting reasons that mean the pod will not come up as it is (what
# kubelet, and edged, report; ``kubectl get pods`` shows them as the status).
FAILURE_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(n))


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(obj.get("metadata")).get("labels"))


def selector_matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels ANDed with matchExpressions
    In/NotIn/Exists/DoesNotExist). An empty or missing selector matches
    nothing here: a workload's selector is required and non-empty."""
    sel = _map(selector)
    ml = _map(sel.get("matchLabels"))
    exprs = _list(sel.get("matchExpressions"))
    if not ml and not exprs:
        return False
    for k, v in ml.items():
        if k not in labels or str(labels[k]) != str(v):
            return False
    for e in exprs:
        key = str(e.get("key") or "")
        values = {str(v) for v in e.get("values") or []}
        op = e.get("operator")
        have = key in labels
        if op == "In" and not (have and str(labels[key]) in values):
            return False
        if op == "NotIn" and have and str(labels[key]) in values:
            return False
        if op == "Exists" and not have:
            return False
        if op == "DoesNotExist" and have:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """``obj`` has a controller ownerReference to ``uid``."""
    for ref in _list(_map(obj.get("metadata")).get("ownerReferences")):
        if ref.get("controller") is True and ref.get("uid") == uid:
            return True
    return False


def is_active(pod: Mapping[str, Any]) -> bool:
    """Counts as a replica: not finished, not being deleted."""
    if _map(pod.get("metadata")).get("deletionTimestamp"):
        return False
    return _map(pod.get("status")).get("phase") not in ("Succeeded", "Failed")


def _ready_condition(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for c in _list(_map(pod.get("status")).get("conditions")):
        if c.get("type") == "Ready":
            return c
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    c = _ready_condition(pod)
    return c is not None and c.get("status") == "True"


def available(pod: Mapping[str, Any], min_ready: int, now: float) -> tuple[bool, float | None]:
    """Whether the pod has been Ready for ``min_ready`` seconds, and if it is
    Ready but not yet available, in how many seconds it will be."""
    c = _ready_condition(pod)
    if c is None or c.get("status") != "True":
        return False, None
    if min_ready <= 0:
        return True, None
    since = edgeproto.parse_rfc3339(c.get("lastTransitionTime"))
    if since is None:
        return True, None
    left = since + min_ready - now
    return (left <= 0), (left if left > 0 else None)


def failure_reason(pod: Mapping[str, Any]) -> str | None:
    """Why the pod will not come up as it is, if it says so: phase Failed, or a
    container waiting for one of ``FAILURE_REASONS``."""
    status = _map(pod.get("status"))
    if status.get("phase") == "Failed":
        return str(status.get("reason") or "Failed")
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in _list(status.get(key)):
            waiting = _map(_map(cs.get("state")).get("waiting"))
            reason = waiting.get("reason")
            if isinstance(reason, str) and reason in FAILURE_REASONS:
                return reason
    return None


def _phase_rank(pod: Mapping[str, Any]) -> int:
    return {"Pending": 0, "Unknown": 1, "Running": 2}.get(
        str(_map(pod.get("status")).get("phase") or "Pending"), 0
    )


def _restarts(pod: Mapping[str, Any]) -> int:
    total = 0
    for cs in _list(_map(pod.get("status")).get("containerStatuses")):
        n = cs.get("restartCount")
        if isinstance(n, int):
            total += n
    return total


def deletion_rank(pod: Mapping[str, Any], offline_nodes: Iterable[str]) -> tuple[Any, ...]:
    """Sort key of surplus pods, the first to go first: unscheduled, then on a
    node that is offline (its board drops the pod when it comes back; the
    online replicas keep serving), then Pending < Unknown < Running, not Ready
    before Ready, Ready for the shorter time, more restarts, newer — the order
    of Kubernetes' ActivePods ranking, with the offline step added."""
    node = _map(pod.get("spec")).get("nodeName")
    offline = set(offline_nodes)
    c = _ready_condition(pod)
    ready_since = str(c.get("lastTransitionTime") or "") if c and pod_ready(pod) else ""
    created = str(_map(pod.get("metadata")).get("creationTimestamp") or "")
    return (
        1 if not node else 2,
        0 if node in offline else 1,
        _phase_rank(pod),
        1 if pod_ready(pod) else 0,
        _neg(ready_since),  # ready more recently first
        -_restarts(pod),
        _neg(created),  # newer first
    )


def _neg(text: str) -> tuple[int, ...]:
    """A key that sorts strings in reverse."""
    return (*(-ord(ch) for ch in text), 0)


def new_pod(owner: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    """A pod named ``name`` from the owner's ``spec.template``, controlled by it."""
    meta = _map(owner.get("metadata"))
    template = _map(_map(owner.get("spec")).get("template"))
    tmeta = _map(template.get("metadata"))
    pmeta: dict[str, Any] = {
        "name": name,
        "generateName": f"{meta.get('name')}-",
        "namespace": meta.get("namespace") or "default",
        "labels": dict(_map(tmeta.get("labels"))),
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": kind,
                "name": meta.get("name"),
                "uid": meta.get("uid"),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if tmeta.get("annotations"):
        pmeta["annotations"] = dict(_map(tmeta.get("annotations")))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pmeta,
        "spec": dict(_map(template.get("spec"))),
    }
