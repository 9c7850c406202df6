"""Columns for tabular output of each kind, shared by edgectl's ``get`` and the
API's ``Table`` answers (what ``kubectl get`` asks for). Pure functions of an
object and the current time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._appsvalidate import selector_text

__all__ = [
    "DEFAULT_TABLE",
    "TABLES",
    "Column",
    "Table",
    "get_path",
    "human_duration",
    "object_name",
]


def get_path(o: Any, *path: str) -> Any:
    """``o[path[0]][path[1]]...``, or None where a step is missing or not a map."""
    for p in path:
        if not isinstance(o, dict):
            return None
        o = o.get(p)
    return o


def human_duration(seconds: float) -> str:
    """kubectl's AGE format: 45s, 3m20s, 2h5m, 3d4h, 400d, 2y30d."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    if d < 365 * 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def _age(o: dict[str, Any], now: float) -> str:
    return _since(get_path(o, "metadata", "creationTimestamp"), now)


def _since(ts: Any, now: float) -> str:
    """How long ago an RFC 3339 (UTC, seconds) time was."""
    t = edgeproto.parse_rfc3339(ts)
    return "<unknown>" if t is None else human_duration(now - t)


def object_name(o: dict[str, Any], _now: float) -> str:
    return str(get_path(o, "metadata", "name") or "")


def _node_status(o: dict[str, Any], _now: float) -> str:
    status = "Unknown"
    for c in get_path(o, "status", "conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            status = {"True": "Ready", "False": "NotReady"}.get(str(c.get("status")), "Unknown")
    if get_path(o, "spec", "unschedulable") is True:
        status += ",SchedulingDisabled"
    return status


def _node_roles(o: dict[str, Any], _now: float) -> str:
    labels = get_path(o, "metadata", "labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    if labels.get("kubernetes.io/role"):
        roles.append(str(labels["kubernetes.io/role"]))
    return ",".join(r for r in roles if r) or "<none>"


def _node_info(field: str) -> Callable[[dict[str, Any], float], str]:
    return lambda o, _now: str(get_path(o, "status", "nodeInfo", field) or "<unknown>")


def _node_ip(o: dict[str, Any], _now: float) -> str:
    for a in get_path(o, "status", "addresses") or []:
        if isinstance(a, dict) and a.get("type") == "InternalIP":
            return str(a.get("address"))
    return "<none>"


def _container_statuses(o: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in get_path(o, "status", "containerStatuses") or [] if isinstance(c, dict)]


def _pod_ready(o: dict[str, Any], _now: float) -> str:
    ready = sum(1 for c in _container_statuses(o) if c.get("ready") is True)
    return f"{ready}/{len(get_path(o, 'spec', 'containers') or [])}"


def _pod_status(o: dict[str, Any], _now: float) -> str:
    if get_path(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    reason = str(get_path(o, "status", "reason") or get_path(o, "status", "phase") or "Pending")
    for c in _container_statuses(o):
        for key in ("waiting", "terminated"):
            detail = get_path(c, "state", key)
            if isinstance(detail, dict) and detail.get("reason") and not c.get("ready"):
                reason = str(detail["reason"])
    return reason


def _pod_restarts(o: dict[str, Any], _now: float) -> str:
    total = 0
    for c in _container_statuses(o):
        n = c.get("restartCount")
        total += n if isinstance(n, int) else 0
    return str(total)


def _device_properties(o: dict[str, Any], _now: float) -> str:
    """``temp=21.5/22`` per property: reported value, then desired when one is set."""
    reported: dict[str, str] = {}
    for t in get_path(o, "status", "twins") or []:
        if isinstance(t, dict) and isinstance(t.get("propertyName"), str):
            value = get_path(t, "reported", "value")
            reported[t["propertyName"]] = "<none>" if value is None else str(value)
    parts = []
    for p in get_path(o, "spec", "properties") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        text = f"{p['name']}={reported.pop(p['name'], '<none>')}"
        desired = get_path(p, "desired", "value")
        if desired not in (None, ""):
            text += f"/{desired}"
        parts.append(text)
    parts.extend(f"{k}={v}" for k, v in sorted(reported.items()))
    return ",".join(parts) or "<none>"


Column = tuple[str, Callable[[dict[str, Any], float], str]]


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[Column, ...]
    wide: tuple[Column, ...] = ()


TABLES: dict[str, Table] = {
    "nodes": Table(
        (
            ("NAME", object_name),
            ("STATUS", _node_status),
            ("ROLES", _node_roles),
            ("AGE", _age),
            ("VERSION", _node_info("kubeletVersion")),
        ),
        (
            ("INTERNAL-IP", _node_ip),
            ("OS-IMAGE", _node_info("osImage")),
            ("KERNEL-VERSION", _node_info("kernelVersion")),
            ("ARCH", _node_info("architecture")),
        ),
    ),
    "pods": Table(
        (
            ("NAME", object_name),
            ("READY", _pod_ready),
            ("STATUS", _pod_status),
            ("RESTARTS", _pod_restarts),
            ("AGE", _age),
        ),
        (
            ("IP", lambda o, _now: str(get_path(o, "status", "podIP") or "<none>")),
            ("NODE", lambda o, _now: str(get_path(o, "spec", "nodeName") or "<none>")),
        ),
    ),
    "configmaps": Table(
        (
            ("NAME", object_name),
            (
                "DATA",
                lambda o, _now: str(len(o.get("data") or {}) + len(o.get("binaryData") or {})),
            ),
            ("AGE", _age),
        )
    ),
    "secrets": Table(
        (
            ("NAME", object_name),
            ("TYPE", lambda o, _now: str(o.get("type") or "Opaque")),
            ("DATA", lambda o, _now: str(len(o.get("data") or {}))),
            ("AGE", _age),
        )
    ),
}
TABLES["devices"] = Table(
    (
        ("NAME", object_name),
        ("MODEL", lambda o, _now: str(get_path(o, "spec", "deviceModelRef", "name") or "<none>")),
        ("NODE", lambda o, _now: str(get_path(o, "spec", "nodeName") or "<none>")),
        ("STATE", lambda o, _now: str(get_path(o, "status", "state") or "<unknown>")),
        ("PROPERTIES (REPORTED/DESIRED)", _device_properties),
        ("AGE", _age),
    ),
    (("LAST-ONLINE", lambda o, _now: str(get_path(o, "status", "lastOnlineTime") or "<never>")),),
)
TABLES["devicemodels"] = Table(
    (
        ("NAME", object_name),
        ("PROTOCOL", lambda o, _now: str(get_path(o, "spec", "protocol") or "<none>")),
        ("PROPERTIES", lambda o, _now: str(len(get_path(o, "spec", "properties") or []))),
        ("AGE", _age),
    )
)
TABLES["events"] = Table(
    (
        ("LAST SEEN", lambda o, now: _since(o.get("lastTimestamp"), now)),
        ("TYPE", lambda o, _now: str(o.get("type") or "")),
        ("REASON", lambda o, _now: str(o.get("reason") or "")),
        (
            "OBJECT",
            lambda o, _now: (
                f"{str(get_path(o, 'involvedObject', 'kind') or '').lower()}/"
                f"{get_path(o, 'involvedObject', 'name') or ''}"
            ),
        ),
        ("MESSAGE", lambda o, _now: str(o.get("message") or "")),
    ),
    (
        (
            "TOPIC",
            lambda o, _now: str(
                get_path(o, "metadata", "annotations", "edgeflock.io/topic") or "<none>"
            ),
        ),
        ("NAME", object_name),
    ),
)
TABLES["namespaces"] = Table(
    (
        ("NAME", object_name),
        ("STATUS", lambda o, _now: str(get_path(o, "status", "phase") or "Active")),
        ("AGE", _age),
    )
)


# ---- fleet workloads: the columns kubectl's printers show ---------------------------


def _count(*path: str) -> Callable[[dict[str, Any], float], str]:
    def cell(o: dict[str, Any], _now: float) -> str:
        n = get_path(o, *path)
        return str(n) if isinstance(n, int) and not isinstance(n, bool) else "0"

    return cell


def _replicas(o: dict[str, Any], _now: float) -> str:
    n = get_path(o, "spec", "replicas")
    return str(n) if isinstance(n, int) and not isinstance(n, bool) else "1"


def _ready_of_replicas(o: dict[str, Any], now: float) -> str:
    return f"{_count('status', 'readyReplicas')(o, now)}/{_replicas(o, now)}"


def _template_containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    cs = get_path(o, "spec", "template", "spec", "containers")
    return [c for c in cs if isinstance(c, dict)] if isinstance(cs, list) else []


def _containers(o: dict[str, Any], _now: float) -> str:
    return ",".join(str(c.get("name") or "") for c in _template_containers(o))


def _images(o: dict[str, Any], _now: float) -> str:
    return ",".join(str(c.get("image") or "") for c in _template_containers(o))


def _selector(o: dict[str, Any], _now: float) -> str:
    sel = get_path(o, "spec", "selector")
    return (selector_text(sel) if isinstance(sel, dict) else "") or "<none>"


def _node_selector(o: dict[str, Any], _now: float) -> str:
    sel = get_path(o, "spec", "template", "spec", "nodeSelector")
    if not isinstance(sel, dict) or not sel:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))


def _controller(o: dict[str, Any], _now: float) -> str:
    """``daemonset.apps/agent``: the controlling owner, as kubectl names it."""
    for ref in get_path(o, "metadata", "ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            group = str(ref.get("apiVersion") or "").rpartition("/")[0]
            kind = str(ref.get("kind") or "").lower()
            return f"{kind}.{group}/{ref.get('name')}" if group else f"{kind}/{ref.get('name')}"
    return "<none>"


def _workload_wide() -> tuple[Column, ...]:
    return (("CONTAINERS", _containers), ("IMAGES", _images), ("SELECTOR", _selector))


def _group_nodes(o: dict[str, Any], _now: float) -> str:
    statuses = get_path(o, "status", "nodeStatuses")
    if not isinstance(statuses, list):
        return "0"
    return str(
        sum(1 for s in statuses if isinstance(s, dict) and s.get("selectionStatus") == "Succeeded")
    )


def _match_labels(o: dict[str, Any], _now: float) -> str:
    labels = get_path(o, "spec", "matchLabels")
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _target_groups(o: dict[str, Any], _now: float) -> str:
    groups = get_path(o, "spec", "workloadScope", "targetNodeGroups")
    names = [str(g.get("name")) for g in groups or [] if isinstance(g, dict)]
    return ",".join(names) or "<none>"


def _manifests(o: dict[str, Any], _now: float) -> str:
    ms = get_path(o, "spec", "workloadTemplate", "manifests")
    return str(len(ms)) if isinstance(ms, list) else "0"


TABLES["daemonsets"] = Table(
    (
        ("NAME", object_name),
        ("DESIRED", _count("status", "desiredNumberScheduled")),
        ("CURRENT", _count("status", "currentNumberScheduled")),
        ("READY", _count("status", "numberReady")),
        ("UP-TO-DATE", _count("status", "updatedNumberScheduled")),
        ("AVAILABLE", _count("status", "numberAvailable")),
        ("NODE SELECTOR", _node_selector),
        ("AGE", _age),
    ),
    _workload_wide(),
)
TABLES["deployments"] = Table(
    (
        ("NAME", object_name),
        ("READY", _ready_of_replicas),
        ("UP-TO-DATE", _count("status", "updatedReplicas")),
        ("AVAILABLE", _count("status", "availableReplicas")),
        ("AGE", _age),
    ),
    _workload_wide(),
)
TABLES["replicasets"] = Table(
    (
        ("NAME", object_name),
        ("DESIRED", _replicas),
        ("CURRENT", _count("status", "replicas")),
        ("READY", _count("status", "readyReplicas")),
        ("AGE", _age),
    ),
    _workload_wide(),
)
TABLES["controllerrevisions"] = Table(
    (
        ("NAME", object_name),
        ("CONTROLLER", _controller),
        ("REVISION", lambda o, _now: str(o.get("revision", 0))),
        ("AGE", _age),
    )
)
# KubeEdge's CRDs declare no printer columns: kubectl shows NAME and AGE for them.
TABLES["nodegroups"] = Table(
    (("NAME", object_name), ("AGE", _age)),
    (("NODES", _group_nodes), ("MATCH-LABELS", _match_labels)),
)
TABLES["edgeapplications"] = Table(
    (("NAME", object_name), ("AGE", _age)),
    (("NODE-GROUPS", _target_groups), ("MANIFESTS", _manifests)),
)


def _job_nodes(o: dict[str, Any], state: str) -> int:
    entries = get_path(o, "status", "nodeStatus") or []
    return sum(1 for e in entries if isinstance(e, dict) and e.get("state") in state.split("|"))


def _job_progress(o: dict[str, Any], _now: float) -> str:
    entries = get_path(o, "status", "nodeStatus")
    if not isinstance(entries, list):
        return "0/0"
    return f"{_job_nodes(o, 'healthy')}/{len(entries)}"


TABLES["nodeupgradejobs"] = Table(
    (
        ("NAME", object_name),
        ("VERSION", lambda o, _now: str(get_path(o, "spec", "version") or "")),
        ("STATE", lambda o, _now: str(get_path(o, "status", "state") or "<pending>")),
        ("HEALTHY", _job_progress),
        ("AGE", _age),
    ),
    (
        ("FAILED", lambda o, _now: str(_job_nodes(o, "failed|rolledBack"))),
        ("CONCURRENCY", lambda o, _now: str(get_path(o, "spec", "concurrency") or 1)),
    ),
)
DEFAULT_TABLE = Table((("NAME", object_name), ("AGE", _age)))


def table_of(
    resource_name: str, objects: list[dict[str, Any]], now: float, resource_version: str
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` ``Table`` (what ``kubectl get`` asks for): the same
    columns as edgectl's, wide ones at priority 1, each row carrying the object's
    metadata so kubectl can add a NAMESPACE column itself."""
    table = TABLES.get(resource_name, DEFAULT_TABLE)
    cols = [(c, 0) for c in table.columns] + [(c, 1) for c in table.wide]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": title.title() if title != "NAME" else "Name",
                "type": "string",
                "format": "name" if title == "NAME" else "",
                "description": "",
                "priority": priority,
            }
            for (title, _), priority in cols
        ],
        "rows": [
            {
                "cells": [fn(o, now) for (_, fn), _ in cols],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata") or {},
                },
            }
            for o in objects
        ],
    }
