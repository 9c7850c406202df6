"""KubeEdge NodeGroup membership, the pure part: which nodes a group selects,
the labels written, one group per node, node statuses, misplaced pods."""

from __future__ import annotations

from typing import Any

from cloudgateway.controllers._nodegroup_plan import (
    LABEL_BELONGING_TO,
    LABEL_TOPOLOGY_ZONE,
    LabelChange,
    apply_label_change,
    misplaced,
    plan_group,
    ready_status,
    selects,
)


def node(name: str, ready: str | None = "True", **labels: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "labels": dict(labels)}}
    if ready is not None:
        obj["status"] = {"conditions": [{"type": "Ready", "status": ready}]}
    return obj


def group(name: str, nodes: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = dict(spec)
    if nodes is not None:
        s["nodes"] = nodes
    return {"metadata": {"name": name}, "spec": s}


def test_selection_by_name_and_by_labels() -> None:
    g = group("plant-2", ["pi-09"], matchLabels={"site": "plant-2", "sensor": "modbus"})
    assert selects(g, node("pi-09"))
    assert selects(g, node("pi-01", site="plant-2", sensor="modbus", extra="x"))
    assert not selects(g, node("pi-02", site="plant-2"))
    # KubeEdge: no matchLabels selects none, an empty map every node
    assert not selects(group("g", ["a"]), node("b", site="x"))
    assert selects(group("g", matchLabels={}), node("b"))


def test_ready_status_from_the_ready_condition() -> None:
    assert ready_status(node("a", "True")) == "Ready"
    assert ready_status(node("a", "False")) == "NotReady"
    assert ready_status(node("a", "Unknown")) == "Unknown"
    assert ready_status(node("a", None)) == "Unknown"


def test_members_are_labelled_and_reported() -> None:
    nodes = [
        node("pi-01", site="a"),
        node("pi-02", "Unknown", site="a"),
        node("pi-03", site="b"),
        node("pi-04", site="b", **{LABEL_BELONGING_TO: "a"}),  # already in
    ]
    g = group("a", ["pi-03", "pi-99"], matchLabels={"site": "a"})
    plan = plan_group("a", g, nodes, ["a"])
    assert plan.changes == [
        LabelChange("pi-01", {LABEL_BELONGING_TO: "a"}),
        LabelChange("pi-02", {LABEL_BELONGING_TO: "a"}),
        LabelChange("pi-03", {LABEL_BELONGING_TO: "a"}),
        LabelChange("pi-04", {}, {LABEL_BELONGING_TO: "a", LABEL_TOPOLOGY_ZONE: "a"}),
    ]
    assert plan.leaving == ["pi-04"]
    assert plan.node_statuses == [
        {"nodeName": "pi-01", "readyStatus": "Ready", "selectionStatus": "Succeeded"},
        {"nodeName": "pi-02", "readyStatus": "Unknown", "selectionStatus": "Succeeded"},
        {"nodeName": "pi-03", "readyStatus": "Ready", "selectionStatus": "Succeeded"},
        {
            "nodeName": "pi-99",
            "readyStatus": "Unknown",
            "selectionStatus": "Failed",
            "selectionStatusReason": "node does not exist",
        },
    ]


def test_a_node_belongs_to_one_existing_group() -> None:
    n = node("pi-01", site="a", **{LABEL_BELONGING_TO: "first"})
    g = group("second", matchLabels={"site": "a"})
    plan = plan_group("second", g, [n], ["first", "second"])
    assert plan.changes == []
    assert plan.node_statuses == [
        {
            "nodeName": "pi-01",
            "readyStatus": "Ready",
            "selectionStatus": "Failed",
            "selectionStatusReason": "node pi-01 has already belonged to NodeGroup first",
        }
    ]
    # a label naming a group that no longer exists holds nothing
    plan = plan_group("second", g, [n], ["second"])
    assert plan.changes == [LabelChange("pi-01", {LABEL_BELONGING_TO: "second"})]


def test_topology_label_follows_topology_enabled() -> None:
    member = node("pi-01", site="a", **{LABEL_BELONGING_TO: "a"})
    on = plan_group(
        "a", group("a", matchLabels={"site": "a"}, topologyEnabled=True), [member], ["a"]
    )
    assert on.changes == [LabelChange("pi-01", {LABEL_BELONGING_TO: "a", LABEL_TOPOLOGY_ZONE: "a"})]
    zoned = node("pi-01", site="a", **{LABEL_BELONGING_TO: "a", LABEL_TOPOLOGY_ZONE: "a"})
    off = plan_group("a", group("a", matchLabels={"site": "a"}), [zoned], ["a"])
    assert off.changes == [
        LabelChange("pi-01", {LABEL_BELONGING_TO: "a"}, {LABEL_TOPOLOGY_ZONE: "a"})
    ]
    # a zone someone else set is not ours to remove
    theirs = node("pi-01", site="a", **{LABEL_BELONGING_TO: "a", LABEL_TOPOLOGY_ZONE: "eu-1"})
    assert plan_group("a", group("a", matchLabels={"site": "a"}), [theirs], ["a"]).changes == []


def test_a_deleted_group_releases_its_nodes() -> None:
    nodes = [
        node("pi-01", **{LABEL_BELONGING_TO: "gone", LABEL_TOPOLOGY_ZONE: "gone"}),
        node("pi-02", **{LABEL_BELONGING_TO: "other"}),
    ]
    plan = plan_group("gone", None, nodes, ["other"])
    assert plan.leaving == ["pi-01"]
    assert plan.node_statuses is None
    (change,) = plan.changes
    released = apply_label_change(nodes[0], change)
    assert released is not None and released["metadata"].get("labels", {}) == {}
    assert apply_label_change(released, change) is None  # already so: nothing to write


def test_label_changes_keep_other_labels() -> None:
    n = node("pi-01", site="a", arch="arm64")
    out = apply_label_change(n, LabelChange("pi-01", {LABEL_BELONGING_TO: "a"}))
    assert out is not None
    assert out["metadata"]["labels"] == {"site": "a", "arch": "arm64", LABEL_BELONGING_TO: "a"}
    assert out["status"] == n["status"]


def test_misplaced_pods_are_those_placed_for_a_group_their_node_left() -> None:
    def pod(node_name: str | None, group_name: str | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": []}
        if node_name:
            spec["nodeName"] = node_name
        if group_name:
            spec["nodeSelector"] = {LABEL_BELONGING_TO: group_name}
        return {"spec": spec}

    labels = {"in": {LABEL_BELONGING_TO: "g"}, "out": {"site": "a"}}
    assert misplaced("g", pod("out", "g"), labels)
    assert misplaced("g", pod("gone", "g"), labels)
    assert not misplaced("g", pod("in", "g"), labels)
    assert not misplaced("g", pod("out", None), labels)
    assert not misplaced("g", pod(None, "g"), labels)  # not bound yet
    assert not misplaced("g", pod("out", "h"), labels)
