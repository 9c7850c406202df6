"""KubeEdge NodeGroup membership, computed from plain objects. Pure: no I/O.

A ``NodeGroup`` (``apps.kubeedge.io/v1alpha1``, cluster-scoped) selects nodes
by name (``spec.nodes``) and by labels (``spec.matchLabels``: every pair must
match; a missing ``matchLabels`` selects none, an empty one ``{}`` every node,
as Kubernetes' ``labels.SelectorFromSet`` makes it in KubeEdge). As KubeEdge's
nodegroup controller does, membership is written on the Node as the label
``apps.kubeedge.io/belonging-to: <group>`` (with ``spec.topologyEnabled`` also
``topology.kubernetes.io/zone: <group>``), and a node belongs to one group at a
time: a node another existing group already holds is reported as
``selectionStatus: Failed`` ("node X has already belonged to NodeGroup Y").
A node that stops being selected loses the labels, and the pods bound to it
for that group (``spec.nodeSelector`` naming the group) are evicted so their
controllers place them on the group's nodes again. ``status.nodeStatuses`` lists
every selected node and every named node that does not exist, sorted by name.

Unlike KubeEdge, a label naming a group that no longer exists does not hold a
node (KubeEdge relies on the deleted group's finalizer having removed it), and
the zone label is only removed when it names the group (KubeEdge drops any).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LABEL_BELONGING_TO",
    "LABEL_TOPOLOGY_ZONE",
    "GroupPlan",
    "LabelChange",
    "apply_label_change",
    "misplaced",
    "plan_group",
    "ready_status",
    "selects",
]

LABEL_BELONGING_TO = "apps.kubeedge.io/belonging-to"
LABEL_TOPOLOGY_ZONE = "topology.kubernetes.io/zone"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    name = _meta(obj).get("name")
    return name if isinstance(name, str) else ""


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _spec(group: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = group.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def selects(group: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether ``group`` selects ``node``, by name or by labels."""
    spec = _spec(group)
    names = spec.get("nodes")
    if isinstance(names, list) and _name(node) in names:
        return True
    match = spec.get("matchLabels")
    if not isinstance(match, Mapping):
        return False
    labels = _labels(node)
    return all(labels.get(k) == v for k, v in match.items())


def ready_status(node: Mapping[str, Any] | None) -> str:
    """``Ready``, ``NotReady`` or ``Unknown``, from the node's Ready condition."""
    status = node.get("status") if node else None
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for c in conditions if isinstance(conditions, list) else []:
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return {"True": "Ready", "False": "NotReady"}.get(str(c.get("status")), "Unknown")
    return "Unknown"


@dataclass(frozen=True, slots=True)
class LabelChange:
    """Labels to set and to remove on one node; a label in ``remove`` goes only
    while it still has the value given there."""

    node: str
    set: Mapping[str, str] = field(default_factory=dict)
    remove: Mapping[str, str] = field(default_factory=dict)  # label -> value it must have


def apply_label_change(node: Mapping[str, Any], change: LabelChange) -> dict[str, Any] | None:
    """``node`` with ``change`` applied to its labels, or None if it already is so."""
    labels = dict(_labels(node))
    before = dict(labels)
    for k, v in change.remove.items():
        if labels.get(k) == v:
            del labels[k]
    labels.update(change.set)
    if labels == before:
        return None
    meta = dict(_meta(node))
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    return {**node, "metadata": meta}


@dataclass(slots=True)
class GroupPlan:
    """What reconciling one group writes: label changes on nodes, the nodes that
    left the group (their pods for the group are evicted), and the group's
    ``status.nodeStatuses`` (None when the group does not exist)."""

    changes: list[LabelChange] = field(default_factory=list)
    leaving: list[str] = field(default_factory=list)
    node_statuses: list[dict[str, Any]] | None = None


def plan_group(
    name: str,
    group: Mapping[str, Any] | None,
    nodes: Iterable[Mapping[str, Any]],
    existing_groups: Iterable[str],
) -> GroupPlan:
    """The plan for group ``name`` (``group`` None: it was deleted) given every
    node and the names of the groups that exist."""
    plan = GroupPlan()
    all_nodes = [n for n in nodes if _name(n)]
    existing = set(existing_groups)
    if group is None:
        for n in all_nodes:
            if _labels(n).get(LABEL_BELONGING_TO) == name:
                plan.changes.append(_leave(n, name))
                plan.leaving.append(_name(n))
        return plan

    topology = _spec(group).get("topologyEnabled") is True
    statuses: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n in all_nodes:
        node = _name(n)
        labels = _labels(n)
        held = labels.get(LABEL_BELONGING_TO)
        if not selects(group, n):
            if held == name:
                plan.changes.append(_leave(n, name))
                plan.leaving.append(node)
            continue
        seen.add(node)
        status: dict[str, Any] = {"nodeName": node, "readyStatus": ready_status(n)}
        if held is not None and held != name and held in existing:
            status["selectionStatus"] = "Failed"
            status["selectionStatusReason"] = (
                f"node {node} has already belonged to NodeGroup {held}"
            )
        else:
            status["selectionStatus"] = "Succeeded"
            want = {LABEL_BELONGING_TO: name}
            remove: dict[str, str] = {}
            if topology:
                want[LABEL_TOPOLOGY_ZONE] = name
            elif labels.get(LABEL_TOPOLOGY_ZONE) == name:
                remove[LABEL_TOPOLOGY_ZONE] = name
            if any(labels.get(k) != v for k, v in want.items()) or remove:
                plan.changes.append(LabelChange(node, want, remove))
        statuses.append(status)
    names = _spec(group).get("nodes")
    for missing in names if isinstance(names, list) else []:
        if isinstance(missing, str) and missing not in seen:
            seen.add(missing)
            statuses.append(
                {
                    "nodeName": missing,
                    "readyStatus": "Unknown",
                    "selectionStatus": "Failed",
                    "selectionStatusReason": "node does not exist",
                }
            )
    statuses.sort(key=lambda s: str(s["nodeName"]))
    plan.node_statuses = statuses
    return plan


def _leave(node: Mapping[str, Any], group: str) -> LabelChange:
    return LabelChange(_name(node), {}, {LABEL_BELONGING_TO: group, LABEL_TOPOLOGY_ZONE: group})


def misplaced(
    group: str, pod: Mapping[str, Any], node_labels: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Whether ``pod`` was placed on its node for ``group`` (its
    ``spec.nodeSelector`` names the group) while the node does not belong to it
    (``node_labels``: each node's labels): KubeEdge evicts such pods when a node
    leaves a group, so their controllers place them on the group's nodes again."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return False
    node = spec.get("nodeName")
    if not isinstance(node, str) or not node:
        return False
    selector = spec.get("nodeSelector")
    if not isinstance(selector, Mapping) or selector.get(LABEL_BELONGING_TO) != group:
        return False
    labels = node_labels.get(node)
    return not isinstance(labels, Mapping) or labels.get(LABEL_BELONGING_TO) != group
