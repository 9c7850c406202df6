"""The DaemonSet controller's pure decisions: int-or-percent rounding as
Kubernetes (DaemonSets round maxUnavailable and maxSurge up), the rolling
budget, offline nodes counted apart, failures, and the template hash."""

from __future__ import annotations

from typing import Any

import edgeproto
from cloudgateway.controllers._dsplan import failure_of, max_failed, plan_daemonset, scaled
from cloudgateway.controllers._revisions import (
    SAFE_ALPHABET,
    revision_object,
    revision_template,
    template_hash,
)

NOW = 1_000_000.0
T = edgeproto.rfc3339(NOW - 100)


def node(name: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "Unknown", "lastTransitionTime": T}
            ]
        },
    }


def pod(name: str, node_name: str, hash_: str, ready: bool = True, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"controller-revision-hash": hash_},
            "creationTimestamp": T,
        },
        "spec": {"nodeName": node_name},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": T}
            ],
            **status,
        },
    }


def ds(**strategy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}
    if strategy:
        spec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": strategy}
    return {"metadata": {"name": "d"}, "spec": spec}


def test_scaled_values_round_as_kubernetes() -> None:
    assert scaled("25%", 10, round_up=True, default=1) == 3
    assert scaled("25%", 10, round_up=False, default=1) == 2
    assert scaled(2, 10, round_up=True, default=1) == 2
    assert scaled(None, 10, round_up=True, default=1) == 1
    assert scaled("junk", 10, round_up=True, default=1) == 1
    assert max_failed("25%", 2) == 0.5  # exact: one failure of two is more
    assert max_failed("3", 100) == 3
    assert max_failed(None, 8) == 2


def test_max_unavailable_percent_rounds_up() -> None:
    nodes = [node(f"n{i}") for i in range(10)]
    pods = [pod(f"p{i}", f"n{i}", "old") for i in range(10)]
    plan = plan_daemonset(ds(maxUnavailable="25%"), "new", nodes, pods, NOW)
    assert len(plan.delete) == 3
    plan = plan_daemonset(ds(), "new", nodes, pods, NOW)  # default 1
    assert len(plan.delete) == 1
    plan = plan_daemonset(ds(maxUnavailable=0, maxSurge=0), "new", nodes, pods, NOW)
    assert len(plan.delete) == 1  # both zero: Kubernetes uses 1


def test_offline_nodes_neither_block_nor_get_replaced() -> None:
    nodes = [node("up1"), node("up2"), node("down", ready=False)]
    pods = [pod("a", "up1", "new"), pod("b", "up2", "old"), pod("c", "down", "old", ready=False)]
    plan = plan_daemonset(ds(), "new", nodes, pods, NOW)
    assert plan.delete == ["b"]  # the offline node's unready pod is not counted or touched
    assert plan.pending_offline == ["down"]
    assert plan.status["desiredNumberScheduled"] == 2
    assert plan.status["updatedNumberScheduled"] == 1
    # an offline node that lacks a pod gets one (delivered when it returns)
    plan = plan_daemonset(ds(), "new", [node("down", ready=False)], [], NOW)
    assert plan.create_on == ["down"] and plan.status["desiredNumberScheduled"] == 0


def test_failed_updated_pods_are_failures_not_unavailable() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    waiting = {
        "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ErrImagePull"}}}]
    }
    pods = [
        pod("f", "n0", "new", ready=False, **waiting),
        pod("o1", "n1", "old"),
        pod("o2", "n2", "old"),
        pod("o3", "n3", "old"),
    ]
    plan = plan_daemonset(ds(), "new", nodes, pods, NOW)
    assert [n for n, _ in plan.failed] == ["n0"] and "ErrImagePull" in plan.failed[0][1]
    assert len(plan.delete) == 1  # the rollout goes on
    assert len(plan.failed) <= plan.failure_budget  # 1 of 4 is not more than 25 %
    assert plan_daemonset(ds(), "new", nodes, pods, NOW, paused=True).delete == []


def test_not_ready_past_the_deadline_is_a_failure() -> None:
    p = pod("p", "n", "new", ready=False)
    assert failure_of(p, NOW, deadline=600) is None
    assert failure_of(p, NOW + 600, deadline=600) is not None
    # measured from the node's return when that is later
    assert failure_of(p, NOW + 550, deadline=600) is not None
    assert failure_of(p, NOW + 550, deadline=600, since=NOW) is None


def test_surge_creates_first() -> None:
    nodes = [node("n0"), node("n1")]
    pods = [pod("o0", "n0", "old"), pod("o1", "n1", "old")]
    plan = plan_daemonset(ds(maxSurge=1, maxUnavailable=0), "new", nodes, pods, NOW)
    assert plan.create_on == ["n0"] and plan.delete == []
    pods.append(pod("new0", "n0", "new"))
    plan = plan_daemonset(ds(maxSurge=1, maxUnavailable=0), "new", nodes, pods, NOW)
    assert plan.delete == ["o0"] and plan.create_on == ["n1"]


def test_min_ready_seconds_wakes_the_controller() -> None:
    d = ds()
    d["spec"]["minReadySeconds"] = 300
    plan = plan_daemonset(d, "h", [node("n")], [pod("p", "n", "h")], NOW)
    assert plan.status["numberAvailable"] == 0 and plan.status["numberReady"] == 1
    assert plan.requeue is not None and 199 < plan.requeue < 202


def test_template_hash_and_revision_shape() -> None:
    t = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}
    h = template_hash(t)
    assert h == template_hash({"spec": {"containers": [{"name": "c"}]}, **t})  # key order
    assert 1 <= len(h) <= 10 and set(h) <= set(SAFE_ALPHABET)
    assert template_hash(t, 1) != h
    d = {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}, "spec": {"template": t}}
    cr = revision_object(d, h, 4)
    assert cr["metadata"]["name"] == f"x-{h}"
    assert cr["metadata"]["labels"] == {"app": "x", "controller-revision-hash": h}
    assert cr["data"]["spec"]["template"]["$patch"] == "replace"
    assert revision_template(cr) == t and cr["revision"] == 4
