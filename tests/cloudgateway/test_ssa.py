"""Server-side apply's pure core: field sets named as structured-merge-diff
names them, ownership, conflicts, forcing, removal of what a manager stops
applying; Hypothesis checks two laws of apply."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudgateway._ssa import (
    LAST_APPLIED,
    ApplyConflict,
    SsaError,
    apply,
    field_set,
    fields_v1,
    path_text,
    record_update,
    without_managed_fields,
)

NOW = "2026-12-02T04:00:00Z"


def pod(image: str = "busybox:1.36", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {"name": "app", "image": image, "ports": [{"containerPort": 80}], **extra}
            ]
        },
    }


def owners(obj: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(e["manager"], e["operation"]): e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def test_field_set_names_fields_keyed_elements_and_set_values() -> None:
    obj = pod(command=["sleep", "1"])
    obj["metadata"]["finalizers"] = ["a/b"]
    assert fields_v1(field_set(obj, "Pod")) == {
        "f:metadata": {
            "f:labels": {".": {}, "f:app": {}},
            "f:finalizers": {".": {}, 'v:"a/b"': {}},
        },
        "f:spec": {
            "f:containers": {
                ".": {},
                'k:{"name":"app"}': {
                    ".": {},
                    "f:name": {},
                    "f:image": {},
                    "f:command": {},  # a plain list: atomic
                    "f:ports": {
                        ".": {},
                        'k:{"containerPort":80}': {".": {}, "f:containerPort": {}},
                    },
                },
            }
        },
    }
    # "." first, then the members in a stable order, as Kubernetes writes them
    tree = fields_v1(field_set(obj, "Pod"))
    element = tree["f:spec"]["f:containers"]['k:{"name":"app"}']
    assert list(element) == [".", "f:command", "f:image", "f:name", "f:ports"]
    path = ("f:spec", "f:containers", 'k:{"name":"app"}', "f:image")
    assert path_text(path) == '.spec.containers[name="app"].image'


def test_apply_creates_and_owns_what_it_applies() -> None:
    obj = apply(None, pod(), "Pod", "kubectl", force=False, now=NOW)
    assert without_managed_fields(obj) == pod()
    (entry,) = obj["metadata"]["managedFields"]
    assert entry == {
        "manager": "kubectl",
        "operation": "Apply",
        "apiVersion": "v1",
        "time": NOW,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(field_set(pod(), "Pod")),
    }


def test_a_changed_field_another_manager_owns_conflicts_unless_forced() -> None:
    live = record_update(None, pod(), "Pod", "kubectl-create", now=NOW)
    with pytest.raises(ApplyConflict) as err:
        apply(live, pod("busybox:1.37"), "Pod", "kubectl", force=False, now=NOW)
    assert str(err.value) == (
        'Apply failed with 1 conflict: conflict with "kubectl-create" using v1: '
        '.spec.containers[name="app"].image'
    )
    # The same values are no conflict: both own them.
    same = apply(live, pod(), "Pod", "kubectl", force=False, now=NOW)
    assert owners(same)[("kubectl-create", "Update")] == owners(same)[("kubectl", "Apply")]
    forced = apply(live, pod("busybox:1.37"), "Pod", "kubectl", force=True, now=NOW)
    assert forced["spec"]["containers"][0]["image"] == "busybox:1.37"
    created = owners(forced)[("kubectl-create", "Update")]
    assert "f:image" not in created["f:spec"]["f:containers"]['k:{"name":"app"}']
    assert (
        "f:image"
        in owners(forced)[("kubectl", "Apply")]["f:spec"]["f:containers"]['k:{"name":"app"}']
    )


def test_omitted_fields_go_unless_another_manager_owns_them() -> None:
    live = apply(None, pod(), "Pod", "a", force=False, now=NOW)
    live = apply(
        live,
        {**pod(), "metadata": {"name": "web", "labels": {"x": "1"}}},
        "Pod",
        "b",
        force=False,
        now=NOW,
    )
    assert live["metadata"]["labels"] == {"app": "web", "x": "1"}
    bare = pod()
    del bare["metadata"]["labels"]
    after = apply(live, bare, "Pod", "a", force=False, now=NOW)
    assert after["metadata"]["labels"] == {"x": "1"}  # b's label stays
    after = apply(after, bare, "Pod", "b", force=False, now=NOW)
    assert "labels" not in after["metadata"] or after["metadata"]["labels"] == {}
    # a container both applied stays until both drop it
    assert after["spec"]["containers"][0]["name"] == "app"


def test_ordinary_writes_take_the_fields_they_change() -> None:
    live = apply(None, pod(), "Pod", "kubectl", force=False, now=NOW)
    edited = copy.deepcopy(live)
    edited["spec"]["containers"][0]["image"] = "busybox:1.37"
    out = record_update(live, edited, "Pod", "kubectl-edit", now=NOW)
    image = ("f:spec", "f:containers", 'k:{"name":"app"}', "f:image")
    assert owners(out)[("kubectl-edit", "Update")] == fields_v1([image])
    assert (
        "f:image"
        not in owners(out)[("kubectl", "Apply")]["f:spec"]["f:containers"]['k:{"name":"app"}']
    )
    # a write that changes nothing adds no manager
    assert record_update(out, copy.deepcopy(out), "Pod", "x", now=NOW) == out


def test_a_keyed_element_without_its_key_is_an_error() -> None:
    bad = pod()
    bad["spec"]["containers"][0]["ports"] = [{"name": "http"}]
    with pytest.raises(SsaError, match="containerPort"):
        apply(None, bad, "Pod", "kubectl", force=False, now=NOW)


# ---- laws ------------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "c", "d"])
_containers = st.dictionaries(
    _names,
    st.fixed_dictionaries(
        {"image": st.sampled_from(["x:1", "x:2"])},
        optional={
            "command": st.lists(st.sampled_from(["sh", "-c", "true"]), max_size=3),
            "env": st.dictionaries(_names, st.sampled_from(["1", "2"]), max_size=3),
            "ports": st.sets(st.integers(1, 4), max_size=3),
        },
    ),
    min_size=1,
    max_size=3,
)
_configs = st.fixed_dictionaries(
    {
        "labels": st.dictionaries(_names, st.sampled_from(["x", "y"]), max_size=3),
        "containers": _containers,
        "finalizers": st.sets(_names, max_size=2),
    }
)


def _build(cfg: dict[str, Any]) -> dict[str, Any]:
    containers = []
    for name, c in cfg["containers"].items():
        out: dict[str, Any] = {"name": name, "image": c["image"]}
        if "command" in c:
            out["command"] = c["command"]
        if "env" in c:
            out["env"] = [{"name": k, "value": v} for k, v in c["env"].items()]
        if "ports" in c:
            out["ports"] = [{"containerPort": p} for p in sorted(c["ports"])]
        containers.append(out)
    meta: dict[str, Any] = {"name": "p"}
    if cfg["labels"]:
        meta["labels"] = cfg["labels"]
    if cfg["finalizers"]:
        meta["finalizers"] = sorted(cfg["finalizers"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers}}


@st.composite
def _config_and_subset(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = draw(_configs)
    sub = copy.deepcopy(cfg)
    sub["labels"] = {k: v for k, v in sub["labels"].items() if draw(st.booleans())}
    sub["finalizers"] = {f for f in sub["finalizers"] if draw(st.booleans())}
    keep = [n for n in sub["containers"] if draw(st.booleans())] or [min(sub["containers"])]
    sub["containers"] = {n: sub["containers"][n] for n in keep}
    for c in sub["containers"].values():
        for field in ("command", "env", "ports"):
            if field in c and draw(st.booleans()):
                del c[field]
    return _build(cfg), _build(sub)


@settings(max_examples=150, deadline=None)
@given(_configs, _configs)
def test_applying_the_same_config_twice_changes_nothing(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    live = apply(None, _build(first), "Pod", "other", force=False, now=NOW)
    once = apply(live, _build(second), "Pod", "me", force=True, now=NOW)
    assert apply(once, _build(second), "Pod", "me", force=False, now=NOW) == once


@settings(max_examples=150, deadline=None)
@given(_config_and_subset())
def test_applying_a_subset_removes_exactly_the_dropped_fields(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    full, subset = pair
    live = apply(None, full, "Pod", "me", force=False, now=NOW)
    after = apply(live, subset, "Pod", "me", force=False, now=NOW)
    dropped = field_set(full, "Pod") - field_set(subset, "Pod")
    assert field_set(after, "Pod") == field_set(live, "Pod") - dropped
    assert without_managed_fields(after) == subset


def test_kubectl_takes_over_what_its_client_side_apply_set() -> None:
    """Kubernetes lets manager "kubectl" take fields the last-applied
    annotation holds with the live values (the move from client-side apply)."""
    last = json.dumps(pod())
    live = pod()
    live["metadata"]["annotations"] = {LAST_APPLIED: last}
    live = record_update(None, live, "Pod", "kubectl-client-side-apply", now=NOW)
    wanted = pod("busybox:1.37")
    out = apply(live, wanted, "Pod", "kubectl", force=False, now=NOW)
    assert out["spec"]["containers"][0]["image"] == "busybox:1.37"
    with pytest.raises(ApplyConflict):  # only kubectl, as in Kubernetes
        apply(live, wanted, "Pod", "other", force=False, now=NOW)
    # a field the live object no longer has as last applied still conflicts
    live["spec"]["containers"][0]["image"] = "busybox:1.30"
    with pytest.raises(ApplyConflict):
        apply(live, wanted, "Pod", "kubectl", force=False, now=NOW)


def test_a_write_may_set_managed_fields() -> None:
    live = apply(None, pod(), "Pod", "kubectl-client-side-apply", force=False, now=NOW)
    moved = copy.deepcopy(live)
    moved["metadata"]["managedFields"][0]["manager"] = "kubectl"
    out = record_update(live, moved, "Pod", "kubectl-patch", now=NOW)
    assert owners(out).keys() == {("kubectl", "Apply")}
    # sent unchanged (a PUT of what was read): kept as the server has it
    edited = copy.deepcopy(live)
    edited["metadata"]["labels"]["x"] = "1"
    out = record_update(live, edited, "Pod", "kubectl-edit", now=NOW)
    assert owners(out).keys() == {
        ("kubectl-client-side-apply", "Apply"),
        ("kubectl-edit", "Update"),
    }


def test_malformed_managed_fields_a_client_sent_are_left_out() -> None:
    live = pod()
    live["metadata"]["managedFields"] = [
        {"manager": "x", "operation": "Update", "fieldsV1": {"k:notjson": {}, "v:[": {}, "z": {}}},
        {"manager": "y", "operation": "Update", "fieldsV1": {"f:spec": {"k:[1]": {"f:a": {}}}}},
        "junk",
    ]
    out = apply(live, pod("busybox:1.37"), "Pod", "kubectl", force=False, now=NOW)
    assert owners(out).keys() == {("kubectl", "Apply")}
