from __future__ import annotations

import pytest

import edgeproto
from edgeproto import ProtocolError, key_of, owner_node, referenced_keys


def test_keys() -> None:
    assert key_of({"kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}) == "pods/x/a"
    assert key_of({"kind": "Pod", "metadata": {"name": "a"}}) == "pods/default/a"
    assert key_of({"kind": "Node", "metadata": {"name": "n1", "namespace": "x"}}) == "nodes//n1"
    with pytest.raises(ProtocolError):
        key_of({"kind": "Widget", "metadata": {"name": "a"}})
    with pytest.raises(ProtocolError):
        edgeproto.split_key("pods/a")


def test_owner_node() -> None:
    assert owner_node("nodes//n1", {}) == "n1"
    assert owner_node("pods/d/p", {"spec": {"nodeName": "n2"}}) == "n2"
    assert owner_node("pods/d/p", {"spec": {}}) is None
    cm = {"metadata": {"labels": {edgeproto.NODE_LABEL: "n3"}}}
    assert owner_node("configmaps/d/c", cm) == "n3"
    assert owner_node("configmaps/d/c", {"metadata": {"labels": "junk"}}) is None


WORKLOADS = (
    ("daemonsets", "DaemonSet", "apps/v1", True, ("daemonset", "ds")),
    ("deployments", "Deployment", "apps/v1", True, ("deployment", "deploy")),
    ("replicasets", "ReplicaSet", "apps/v1", True, ("replicaset", "rs")),
    ("controllerrevisions", "ControllerRevision", "apps/v1", True, ("controllerrevision",)),
    ("nodegroups", "NodeGroup", "apps.kubeedge.io/v1alpha1", False, ("nodegroup", "ng")),
    (
        "edgeapplications",
        "EdgeApplication",
        "apps.kubeedge.io/v1alpha1",
        True,
        ("edgeapplication", "edgeapp", "edgeapps", "eapp"),
    ),
)


@pytest.mark.parametrize(("name", "kind", "api_version", "namespaced", "shorts"), WORKLOADS)
def test_workload_kinds_are_registered_and_on_no_node(
    name: str, kind: str, api_version: str, namespaced: bool, shorts: tuple[str, ...]
) -> None:
    r = edgeproto.resource_by_name(name)
    assert (r.kind, r.api_version, r.namespaced, r.short_names) == (
        kind,
        api_version,
        namespaced,
        shorts,
    )
    assert edgeproto.resource_by_kind(kind) is r
    assert r.categories == (
        ("all",) if name in ("daemonsets", "deployments", "replicasets") else ()
    )
    ns = "default" if namespaced else ""
    key = edgeproto.make_key(name, ns, "w")
    assert key_of({"kind": kind, "metadata": {"name": "w"}}) == key
    # Whatever a workload carries (a template's nodeName, the node label), it
    # stays in the cloud: only the pods its controller makes reach boards.
    obj = {
        "metadata": {"labels": {edgeproto.NODE_LABEL: "pi-1"}},
        "spec": {"nodeName": "pi-1", "template": {"spec": {"nodeName": "pi-1"}}},
    }
    assert owner_node(key, obj) is None
    assert list(referenced_keys(key, obj)) == []


def test_referenced_keys_cover_all_reference_kinds() -> None:
    pod = {
        "spec": {
            "volumes": [
                {"name": "a", "configMap": {"name": "cm-vol"}},
                {"name": "b", "secret": {"secretName": "sec-vol"}},
                {
                    "name": "c",
                    "projected": {
                        "sources": [
                            {"configMap": {"name": "cm-proj"}},
                            {"secret": {"name": "sec-proj"}},
                        ]
                    },
                },
                {"name": "d", "emptyDir": {}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "sec-from"}}]}],
            "containers": [
                {
                    "name": "c",
                    "env": [
                        {
                            "name": "A",
                            "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}},
                        },
                        {
                            "name": "B",
                            "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "k"}},
                        },
                        {"name": "C", "value": "literal"},
                    ],
                    "envFrom": [{"configMapRef": {"name": "cm-from"}}],
                }
            ],
            "imagePullSecrets": [{"name": "pull"}],
        }
    }
    keys = set(referenced_keys("pods/ns/p", pod))
    assert keys == {
        "configmaps/ns/cm-vol",
        "secrets/ns/sec-vol",
        "configmaps/ns/cm-proj",
        "secrets/ns/sec-proj",
        "secrets/ns/sec-from",
        "configmaps/ns/cm-env",
        "secrets/ns/sec-env",
        "configmaps/ns/cm-from",
        "secrets/ns/pull",
    }
    assert list(referenced_keys("configmaps/ns/x", pod)) == []
    assert (
        list(referenced_keys("pods/ns/p", {"spec": {"volumes": "junk", "containers": [1, None]}}))
        == []
    )
