"""Which nodes a pod may run on: node selector, required node affinity, taints
and tolerations, as Kubernetes decides them (pure functions over the plain
JSON objects; shared by the DaemonSet controller and the scheduler).

- ``nodeSelector``: every label equal.
- ``affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution``:
  the ``nodeSelectorTerms`` are ORed, a term's ``matchExpressions`` (labels)
  and ``matchFields`` (``metadata.name`` only) ANDed; a term with neither
  matches nothing, an empty list of terms matches nothing. Operators ``In``,
  ``NotIn`` (a missing label matches), ``Exists``, ``DoesNotExist``, ``Gt``
  and ``Lt`` (the label and the one value parsed as integers).
- Taints ``NoSchedule`` and ``NoExecute`` keep pods that do not tolerate them
  off; ``PreferNoSchedule`` never does. A toleration with an empty effect
  matches every effect; operator ``Exists`` with an empty key every taint;
  ``Equal`` (the default) needs key and value equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DAEMON_TOLERATIONS",
    "Fit",
    "daemon_fit",
    "daemon_tolerations",
    "fits_node_affinity",
    "node_labels",
    "node_ready",
    "node_taints",
    "scheduler_fit",
    "selector_matches",
    "toleration_matches",
    "untolerated_taint",
]

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

# What Kubernetes' DaemonSet controller adds to every daemon pod
# (util.AddOrUpdateDaemonPodTolerations): it keeps running on a NotReady or
# unreachable node, and is placed on cordoned or pressured ones.
DAEMON_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"},
    {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"},
)


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def node_labels(node: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(node.get("metadata")).get("labels"))


def node_taints(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _list(_map(node.get("spec")).get("taints"))


def node_ready(node: Mapping[str, Any]) -> bool:
    """The Node's Ready condition is "True" (the board is online)."""
    for c in _list(_map(node.get("status")).get("conditions")):
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


# ---- selector and affinity -----------------------------------------------------------


def _int(v: Any) -> int | None:
    try:
        return int(str(v), 10)
    except ValueError:
        return None


def _requirement(labels: Mapping[str, Any], expr: Mapping[str, Any]) -> bool:
    key = str(expr.get("key") or "")
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    present = key in labels
    val = str(labels[key]) if present else None
    if op == "In":
        return present and val in values
    if op == "NotIn":
        return not present or val not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        have, want = _int(val), _int(values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want
    return False  # an unknown operator matches nothing


def selector_matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    """A ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions``
    ANDed) against ``labels``; an empty selector matches nothing here (a
    workload's selector is never empty: the API refuses that)."""
    sel = _map(selector)
    match = _map(sel.get("matchLabels"))
    exprs = _list(sel.get("matchExpressions"))
    if not match and not exprs:
        return False
    if any(k not in labels or str(labels[k]) != str(v) for k, v in match.items()):
        return False
    return all(
        e.get("operator") in ("In", "NotIn", "Exists", "DoesNotExist") and _requirement(labels, e)
        for e in exprs
    )


def _term(node: Mapping[str, Any], term: Mapping[str, Any]) -> bool:
    exprs = _list(term.get("matchExpressions"))
    fields = _list(term.get("matchFields"))
    if not exprs and not fields:
        return False
    labels = node_labels(node)
    if not all(_requirement(labels, e) for e in exprs):
        return False
    name = _map(node.get("metadata")).get("name")
    by_field = {"metadata.name": name} if isinstance(name, str) else {}
    return all(f.get("key") == "metadata.name" and _requirement(by_field, f) for f in fields)


def fits_node_affinity(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> bool:
    """``nodeSelector`` and the required node affinity both hold."""
    labels = node_labels(node)
    for k, v in _map(pod_spec.get("nodeSelector")).items():
        if k not in labels or str(labels[k]) != str(v):
            return False
    required = _map(
        _map(_map(pod_spec.get("affinity")).get("nodeAffinity")).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    )
    if not required:
        return True
    return any(_term(node, t) for t in _list(required.get("nodeSelectorTerms")))


# ---- taints and tolerations ----------------------------------------------------------


def toleration_matches(tol: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    effect = tol.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    op = tol.get("operator") or "Equal"
    key = tol.get("key") or ""
    if op == "Exists":
        return not key or key == taint.get("key")
    if op == "Equal":
        return key == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(
    taints: Iterable[Mapping[str, Any]],
    tolerations: Sequence[Mapping[str, Any]],
    effects: Iterable[str] = ("NoSchedule", "NoExecute"),
) -> Mapping[str, Any] | None:
    """The first taint of one of ``effects`` no toleration matches, if any."""
    wanted = set(effects)
    for taint in taints:
        if taint.get("effect") not in wanted:
            continue
        if not any(toleration_matches(t, taint) for t in tolerations):
            return taint
    return None


def daemon_tolerations(tolerations: Any) -> list[dict[str, Any]]:
    """A daemon pod's tolerations: its own plus ``DAEMON_TOLERATIONS`` (each
    added unless one with the same key and effect is there)."""
    out = [dict(t) for t in _list(tolerations)]
    have = {(t.get("key"), t.get("effect")) for t in out}
    for t in DAEMON_TOLERATIONS:
        if (t["key"], t["effect"]) not in have:
            out.append(dict(t))
    return out


# ---- verdicts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fit:
    """``should_run``: a new pod goes there; ``should_continue``: a pod already
    there stays (an untolerated NoSchedule taint stops new pods only);
    ``reason``: why not, worded as kube-scheduler words it."""

    should_run: bool
    should_continue: bool
    reason: str = ""


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = taint.get("value") or ""
    return f"{{{taint.get('key')}: {value}}}" if value else f"{{{taint.get('key')}}}"


def daemon_fit(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> Fit:
    """Whether a DaemonSet with this pod template runs a pod on ``node``
    (Kubernetes' nodeShouldRunDaemonPod, with the daemon tolerations added;
    cordoned nodes get daemon pods, as in Kubernetes)."""
    if not fits_node_affinity(node, pod_spec):
        return Fit(False, False, "node(s) didn't match Pod's node affinity/selector")
    tols = daemon_tolerations(pod_spec.get("tolerations"))
    taints = node_taints(node)
    hard = untolerated_taint(taints, tols, ("NoExecute",))
    if hard is not None:
        return Fit(False, False, f"node(s) had untolerated taint {_taint_text(hard)}")
    soft = untolerated_taint(taints, tols, ("NoSchedule",))
    if soft is not None:
        return Fit(False, True, f"node(s) had untolerated taint {_taint_text(soft)}")
    return Fit(True, True)


def scheduler_fit(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> Fit:
    """Whether the scheduler may bind a pod with ``pod_spec`` to ``node``:
    cordoned nodes (``spec.unschedulable``) take none, unless the pod tolerates
    the unschedulable taint; then affinity and taints. Readiness and room for
    requests are the scheduler's own checks."""
    tols = _list(pod_spec.get("tolerations"))
    if _map(node.get("spec")).get("unschedulable") is True:
        cordon = {"key": UNSCHEDULABLE, "effect": "NoSchedule"}
        if not any(toleration_matches(t, cordon) for t in tols):
            return Fit(False, True, "node(s) were unschedulable")
    if not fits_node_affinity(node, pod_spec):
        return Fit(False, False, "node(s) didn't match Pod's node affinity/selector")
    taint = untolerated_taint(node_taints(node), tols)
    if taint is not None:
        return Fit(
            False,
            taint.get("effect") != "NoExecute",
            f"node(s) had untolerated taint {_taint_text(taint)}",
        )
    return Fit(True, True)
