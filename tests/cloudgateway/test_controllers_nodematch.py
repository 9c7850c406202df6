"""Node matching as Kubernetes decides it: selector, required affinity
operators, taints against tolerations, the daemon pods' automatic tolerations."""

from __future__ import annotations

from typing import Any

import pytest

from cloudgateway.controllers._nodematch import (
    daemon_fit,
    daemon_tolerations,
    fits_node_affinity,
    node_ready,
    scheduler_fit,
    toleration_matches,
    untolerated_taint,
)


def node(
    name: str = "pi-01",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: str | None = "True",
    unschedulable: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    obj: dict[str, Any] = {
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }
    if ready is not None:
        obj["status"] = {"conditions": [{"type": "Ready", "status": ready}]}
    return obj


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    e: dict[str, Any] = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return e


def test_node_selector_needs_every_label() -> None:
    n = node(labels={"site": "a", "sensor": "modbus"})
    assert fits_node_affinity(n, {"nodeSelector": {"site": "a"}})
    assert fits_node_affinity(n, {"nodeSelector": {"site": "a", "sensor": "modbus"}})
    assert not fits_node_affinity(n, {"nodeSelector": {"site": "b"}})
    assert not fits_node_affinity(n, {"nodeSelector": {"site": "a", "zone": "x"}})
    assert fits_node_affinity(n, {})


@pytest.mark.parametrize(
    ("e", "expected"),
    [
        (expr("site", "In", "a", "b"), True),
        (expr("site", "In", "b"), False),
        (expr("missing", "In", "a"), False),
        (expr("site", "NotIn", "b"), True),
        (expr("site", "NotIn", "a"), False),
        (expr("missing", "NotIn", "a"), True),
        (expr("site", "Exists"), True),
        (expr("missing", "Exists"), False),
        (expr("missing", "DoesNotExist"), True),
        (expr("site", "DoesNotExist"), False),
        (expr("ram", "Gt", "2"), True),
        (expr("ram", "Gt", "4"), False),
        (expr("ram", "Lt", "8"), True),
        (expr("ram", "Lt", "4"), False),
        (expr("site", "Gt", "1"), False),  # not an integer: no match
        (expr("missing", "Lt", "1"), False),
        (expr("site", "Bogus", "a"), False),
    ],
)
def test_affinity_operators(e: dict[str, Any], expected: bool) -> None:
    n = node(labels={"site": "a", "ram": "4"})
    assert fits_node_affinity(n, affinity({"matchExpressions": [e]})) is expected


def test_affinity_terms_or_expressions_and() -> None:
    n = node(labels={"site": "a", "arch": "arm64"})
    both = {"matchExpressions": [expr("site", "In", "a"), expr("arch", "In", "arm64")]}
    one_bad = {"matchExpressions": [expr("site", "In", "a"), expr("arch", "In", "amd64")]}
    assert fits_node_affinity(n, affinity(both))
    assert not fits_node_affinity(n, affinity(one_bad))
    assert fits_node_affinity(n, affinity(one_bad, both))
    assert not fits_node_affinity(n, affinity({}))  # an empty term matches nothing
    assert not fits_node_affinity(n, affinity())  # no terms: nothing
    by_name = {"matchFields": [expr("metadata.name", "In", "pi-01")]}
    assert fits_node_affinity(n, affinity(by_name))
    assert not fits_node_affinity(
        n, affinity({"matchFields": [expr("metadata.name", "In", "pi-02")]})
    )
    # selector and affinity must both hold
    assert not fits_node_affinity(n, {"nodeSelector": {"site": "b"}, **affinity(both)})


def test_tolerations() -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert toleration_matches({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, taint)
    assert toleration_matches({"key": "dedicated", "operator": "Equal", "value": "gpu"}, taint)
    assert not toleration_matches({"key": "dedicated", "value": "cpu"}, taint)
    assert toleration_matches({"key": "dedicated", "operator": "Exists"}, taint)
    assert toleration_matches({"operator": "Exists"}, taint)  # empty key: every taint
    assert not toleration_matches({"operator": "Exists", "effect": "NoExecute"}, taint)
    assert not toleration_matches({"key": "other", "operator": "Exists"}, taint)
    soft = {"key": "x", "effect": "PreferNoSchedule"}
    assert untolerated_taint([soft], []) is None
    assert untolerated_taint([soft, taint], []) == taint
    assert untolerated_taint([taint], [{"operator": "Exists"}]) is None


def test_daemon_fit_follows_kubernetes() -> None:
    spec = {"nodeSelector": {"site": "a"}}
    assert daemon_fit(node(labels={"site": "a"}), spec).should_run
    off = daemon_fit(node(labels={"site": "b"}), spec)
    assert (off.should_run, off.should_continue) == (False, False)
    assert "node affinity/selector" in off.reason
    ns = {"key": "k", "value": "v", "effect": "NoSchedule"}
    fit = daemon_fit(node(labels={"site": "a"}, taints=[ns]), spec)
    assert (fit.should_run, fit.should_continue) == (False, True)  # stays, no new one
    assert fit.reason == "node(s) had untolerated taint {k: v}"
    ne = {"key": "k", "effect": "NoExecute"}
    fit = daemon_fit(node(labels={"site": "a"}, taints=[ne]), spec)
    assert (fit.should_run, fit.should_continue) == (False, False)
    tolerated = {**spec, "tolerations": [{"key": "k", "operator": "Exists"}]}
    assert daemon_fit(node(labels={"site": "a"}, taints=[ns, ne]), tolerated).should_run
    # daemon pods tolerate NotReady, unreachable and cordoned nodes on their own
    auto = [
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
    ]
    cordoned = node(labels={"site": "a"}, taints=auto, unschedulable=True, ready="Unknown")
    assert daemon_fit(cordoned, spec).should_run
    assert not scheduler_fit(cordoned, spec).should_run


def test_daemon_tolerations_add_once() -> None:
    own = [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 30,
        }
    ]
    tols = daemon_tolerations(own)
    assert tols[0] == own[0]
    assert sum(1 for t in tols if t["key"] == "node.kubernetes.io/not-ready") == 1
    assert len(tols) == 6


def test_scheduler_fit() -> None:
    assert scheduler_fit(node(), {}).should_run
    cordoned = scheduler_fit(node(unschedulable=True), {})
    assert cordoned.reason == "node(s) were unschedulable"
    assert scheduler_fit(
        node(unschedulable=True),
        {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]},
    ).should_run
    tainted = scheduler_fit(node(taints=[{"key": "k", "effect": "NoSchedule"}]), {})
    assert tainted.reason == "node(s) had untolerated taint {k}"


def test_node_ready() -> None:
    assert node_ready(node())
    assert not node_ready(node(ready="Unknown"))
    assert not node_ready(node(ready=None))
