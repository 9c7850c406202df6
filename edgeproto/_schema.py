"""Resource kinds, store keys and per-node view references.

Pure data and functions over plain dicts (Kubernetes v1 JSON objects): no I/O.

A store key is ``"{resource}/{namespace}/{name}"``; cluster-scoped resources
have an empty namespace (``"nodes//pi-01"``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ProtocolError

__all__ = [
    "APPS_GROUP",
    "CLOUD_ONLY",
    "KUBEEDGE_APPS_GROUP",
    "OPERATIONS_GROUP",
    "RESOURCES",
    "Resource",
    "key_of",
    "make_key",
    "owner_node",
    "parse_rfc3339",
    "referenced_keys",
    "resource_by_kind",
    "resource_by_name",
    "rfc3339",
    "split_key",
]

DEVICES_GROUP = "devices.kubeedge.io"
APPS_GROUP = "apps"
KUBEEDGE_APPS_GROUP = "apps.kubeedge.io"
OPERATIONS_GROUP = "operations.kubeedge.io"

_RFC3339 = "%Y-%m-%dT%H:%M:%SZ"  # how Kubernetes writes times: UTC, whole seconds


def rfc3339(seconds: float) -> str:
    """A Unix time as Kubernetes objects carry it."""
    return time.strftime(_RFC3339, time.gmtime(seconds))


def parse_rfc3339(text: Any) -> float | None:
    """The Unix time an ``rfc3339`` text names, or None if it is not one."""
    import calendar  # only the gateway parses times: the agent does not pay for it

    try:
        return float(calendar.timegm(time.strptime(str(text), _RFC3339)))
    except (ValueError, OverflowError):
        return None


NODE_LABEL = "edgeflock.io/node"
"""A ConfigMap or Secret carrying this label is sent to the named node even when
no pod references it (agent-side configuration, mapper settings)."""


@dataclass(frozen=True, slots=True)
class Resource:
    name: str  # plural, as in URLs: "pods"
    kind: str  # "Pod"
    group: str  # "" for the core group
    version: str  # "v1"
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # discovery's categories: "all" for ``kubectl get all``
    subresources: tuple[str, ...] = ("status",)  # served under ``.../NAME/SUBRESOURCE``

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: tuple[Resource, ...] = (
    # Namespaces live only in the cloud: ``owner_node`` places none on a node.
    Resource("namespaces", "Namespace", "", "v1", False, ("namespace", "ns")),
    Resource("nodes", "Node", "", "v1", False, ("node", "no"), (), ("status", "revocation")),
    Resource("pods", "Pod", "", "v1", True, ("pod", "po"), ("all",), ("log", "exec", "status")),
    Resource("configmaps", "ConfigMap", "", "v1", True, ("configmap", "cm")),
    Resource("secrets", "Secret", "", "v1", True, ("secret",)),
    # Kubernetes Events; edge events ($hw/events/upload/#) arrive as these.
    Resource("events", "Event", "", "v1", True, ("event", "ev")),
    # KubeEdge's device API, so existing Device/DeviceModel manifests apply unchanged.
    Resource("devices", "Device", DEVICES_GROUP, "v1beta1", True, ("device", "dev")),
    Resource("devicemodels", "DeviceModel", DEVICES_GROUP, "v1beta1", True, ("devicemodel", "dm")),
    # Fleet workloads (apps/v1, and KubeEdge's node groups): cloud-only, like
    # namespaces. Controllers in the gateway turn them into pods; only those
    # pods (bound by spec.nodeName) reach boards.
    Resource("daemonsets", "DaemonSet", APPS_GROUP, "v1", True, ("daemonset", "ds"), ("all",)),
    Resource(
        "deployments",
        "Deployment",
        APPS_GROUP,
        "v1",
        True,
        ("deployment", "deploy"),
        ("all",),
        ("status", "scale"),
    ),
    Resource(
        "replicasets",
        "ReplicaSet",
        APPS_GROUP,
        "v1",
        True,
        ("replicaset", "rs"),
        ("all",),
        ("status", "scale"),
    ),
    # A revision is its data: no status.
    Resource(
        "controllerrevisions",
        "ControllerRevision",
        APPS_GROUP,
        "v1",
        True,
        ("controllerrevision",),
        (),
        (),
    ),
    Resource(
        "nodegroups", "NodeGroup", KUBEEDGE_APPS_GROUP, "v1alpha1", False, ("nodegroup", "ng")
    ),
    Resource(
        "edgeapplications",
        "EdgeApplication",
        KUBEEDGE_APPS_GROUP,
        "v1alpha1",
        True,
        ("edgeapplication", "edgeapp", "edgeapps", "eapp"),  # eapp: KubeEdge's own
    ),
    # KubeEdge's agent upgrade job, run by the gateway's controller (cloud-only:
    # a board sees only the assignment annotation on its own Node).
    Resource(
        "nodeupgradejobs",
        "NodeUpgradeJob",
        OPERATIONS_GROUP,
        "v1alpha1",
        False,
        ("nodeupgradejob",),
    ),
)

CLOUD_ONLY: frozenset[str] = frozenset(
    {
        "events",
        "namespaces",
        "daemonsets",
        "deployments",
        "replicasets",
        "controllerrevisions",
        "nodegroups",
        "edgeapplications",
        "nodeupgradejobs",
    }
)
"""Resources ``owner_node`` places on no node, whatever their fields say."""

_BY_NAME = {r.name: r for r in RESOURCES}
_BY_KIND = {r.kind: r for r in RESOURCES}


def resource_by_name(name: str) -> Resource:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ProtocolError(f"unknown resource {name!r}") from None


def resource_by_kind(kind: str) -> Resource:
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ProtocolError(f"unknown kind {kind!r}") from None


def make_key(resource: str, namespace: str, name: str) -> str:
    return f"{resource}/{namespace}/{name}"


def split_key(key: str) -> tuple[str, str, str]:
    parts = key.split("/")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ProtocolError(f"malformed key {key!r}")
    return parts[0], parts[1], parts[2]


def key_of(obj: Mapping[str, Any]) -> str:
    """The store key of a Kubernetes object (uses kind and metadata)."""
    res = resource_by_kind(str(obj.get("kind", "")))
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("object has no metadata.name")
    ns = meta.get("namespace") or ("default" if res.namespaced else "")
    return make_key(res.name, ns if res.namespaced else "", name)


def owner_node(key: str, obj: Mapping[str, Any]) -> str | None:
    """The node whose view this object belongs to directly, if any.

    Nodes own themselves, pods and devices belong to ``spec.nodeName``,
    ConfigMaps and Secrets to the node named by the ``edgeflock.io/node`` label.
    Everything else reaches a node only by reference (see ``referenced_keys``).
    """
    resource, _, name = split_key(key)
    if resource == "nodes":
        return name
    if resource in CLOUD_ONLY:
        # events are about nodes, namespaces organise the cloud, workloads become
        # pods in the cloud (a pod template's nodeName or label is no placement)
        return None
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        node = spec.get("nodeName")
        if isinstance(node, str) and node:
            return node
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        labels = meta.get("labels")
        if isinstance(labels, Mapping):
            node = labels.get(NODE_LABEL)
            if isinstance(node, str) and node:
                return node
    return None


def referenced_keys(key: str, obj: Mapping[str, Any]) -> Iterator[str]:
    """Keys of the objects an object needs on its node: for a pod, ConfigMaps and
    Secrets from volumes (also projected), env valueFrom, envFrom and
    imagePullSecrets; for a device, its DeviceModel."""
    resource, ns, _ = split_key(key)
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return
    if resource == "devices":
        ref = spec.get("deviceModelRef")
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str) and ref["name"]:
            yield make_key("devicemodels", ns, ref["name"])
        return
    if resource != "pods":
        return
    seen: set[str] = set()

    def emit(res: str, name: Any) -> Iterator[str]:
        if isinstance(name, str) and name:
            k = make_key(res, ns, name)
            if k not in seen:
                seen.add(k)
                yield k

    for vol in _dicts(spec.get("volumes")):
        cm = vol.get("configMap")
        if isinstance(cm, Mapping):
            yield from emit("configmaps", cm.get("name"))
        sec = vol.get("secret")
        if isinstance(sec, Mapping):
            yield from emit("secrets", sec.get("secretName"))
        proj = vol.get("projected")
        if isinstance(proj, Mapping):
            for src in _dicts(proj.get("sources")):
                for field, res in (("configMap", "configmaps"), ("secret", "secrets")):
                    ref = src.get(field)
                    if isinstance(ref, Mapping):
                        yield from emit(res, ref.get("name"))
    for section in ("initContainers", "containers"):
        for c in _dicts(spec.get(section)):
            for env in _dicts(c.get("env")):
                vf = env.get("valueFrom")
                if isinstance(vf, Mapping):
                    for field, res in (
                        ("configMapKeyRef", "configmaps"),
                        ("secretKeyRef", "secrets"),
                    ):
                        ref = vf.get(field)
                        if isinstance(ref, Mapping):
                            yield from emit(res, ref.get("name"))
            for ef in _dicts(c.get("envFrom")):
                for field, res in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                    ref = ef.get(field)
                    if isinstance(ref, Mapping):
                        yield from emit(res, ref.get("name"))
    for ips in _dicts(spec.get("imagePullSecrets")):
        yield from emit("secrets", ips.get("name"))


def _dicts(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                yield item
