"""Valid objects of the fleet workload kinds, for tests (plain dicts)."""

from __future__ import annotations

from typing import Any


def template(labels: dict[str, str], image: str = "busybox:1.36") -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def daemonset(name: str = "agent", labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": dict(labels)}, "template": template(labels)},
    }


def deployment(
    name: str = "web", replicas: int = 3, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": template(labels),
        },
    }


def replicaset(
    name: str = "web-5d4c", replicas: int = 2, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": template(labels),
        },
    }


def controllerrevision(name: str = "agent-6b9f", revision: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": name},
        "data": {"spec": {"template": {"$patch": "replace", **template({"app": "agent"})}}},
        "revision": revision,
    }


def nodegroup(name: str = "plant-2", **match: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps.kubeedge.io/v1alpha1",
        "kind": "NodeGroup",
        "metadata": {"name": name},
        "spec": {"nodes": ["pi-01"], "matchLabels": match or {"site": name}},
    }


def edgeapplication(name: str = "sensor", group: str = "plant-2") -> dict[str, Any]:
    return {
        "apiVersion": "apps.kubeedge.io/v1alpha1",
        "kind": "EdgeApplication",
        "metadata": {"name": name},
        "spec": {
            "workloadTemplate": {"manifests": [deployment(name, 1)]},
            "workloadScope": {
                "targetNodeGroups": [
                    {
                        "name": group,
                        "overriders": {
                            "replicas": 2,
                            "imageOverriders": [
                                {"component": "Tag", "operator": "replace", "value": "1.5"}
                            ],
                        },
                    }
                ]
            },
        },
    }


def nodeupgradejob(name: str = "up-1", version: str = "0.3.0") -> dict[str, Any]:
    return {
        "apiVersion": "operations.kubeedge.io/v1alpha1",
        "kind": "NodeUpgradeJob",
        "metadata": {"name": name},
        "spec": {"version": version, "nodeNames": ["pi-01"]},
    }


SAMPLES: dict[str, Any] = {
    "DaemonSet": daemonset,
    "Deployment": deployment,
    "ReplicaSet": replicaset,
    "ControllerRevision": controllerrevision,
    "NodeGroup": nodegroup,
    "EdgeApplication": edgeapplication,
    "NodeUpgradeJob": nodeupgradejob,
}
"""One valid object of each kind: ``SAMPLES[kind]()``."""
