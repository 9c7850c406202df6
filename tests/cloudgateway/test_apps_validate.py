"""Validation of the fleet workload kinds (pure): every refusal Kubernetes'
apps validation gives, with its field path and reason; the defaults it fills
in; what may not change on update; selectors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

import edgeproto
from cloudgateway._appsvalidate import int_or_percent, selector_matches, selector_text
from cloudgateway._validate import Invalid, validate, validate_update
from tests.cloudgateway.apps_fixtures import SAMPLES, daemonset, deployment

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj.setdefault(p, {})
        obj[last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[p]
        del obj[last]

    return edit


REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
FORBIDDEN = "FieldValueForbidden"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"

CASES: list[tuple[str, Edit, str, str, str]] = [
    # kind, edit, field, reason, words in the message
    ("DaemonSet", _drop("spec.selector"), "spec.selector", REQUIRED, "Required value"),
    ("Deployment", _drop("spec.selector"), "spec.selector", REQUIRED, "Required value"),
    ("ReplicaSet", _drop("spec.selector"), "spec.selector", REQUIRED, "Required value"),
    ("DaemonSet", _drop("spec.template"), "spec.template", REQUIRED, "Required value"),
    ("ReplicaSet", _drop("spec.template"), "spec.template", REQUIRED, "Required value"),
    (
        "DaemonSet",
        _set("spec.selector", {}),
        "spec.selector",
        INVALID,
        "empty selector is invalid for daemonset",
    ),
    (
        "Deployment",
        _set("spec.selector", {"matchLabels": {}}),
        "spec.selector",
        INVALID,
        "empty selector is invalid for deployment",
    ),
    (
        "DaemonSet",
        _set("spec.selector.matchLabels", {"app": "other"}),
        "spec.template.metadata.labels",
        INVALID,
        'Invalid value: {"app":"agent"}: `selector` does not match template `labels`',
    ),
    (
        "Deployment",
        _drop("spec.template.metadata.labels"),
        "spec.template.metadata.labels",
        INVALID,
        "`selector` does not match template `labels`",
    ),
    (
        "ReplicaSet",
        _set(
            "spec.selector",
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web-5d4c"]}]},
        ),
        "spec.template.metadata.labels",
        INVALID,
        "`selector` does not match template `labels`",
    ),
    (
        "DaemonSet",
        _set("spec.selector.matchExpressions", [{"key": "app", "operator": "In"}]),
        "spec.selector.matchExpressions[0].values",
        REQUIRED,
        "must be specified when `operator` is 'In' or 'NotIn'",
    ),
    (
        "DaemonSet",
        _set(
            "spec.selector.matchExpressions",
            [{"key": "app", "operator": "Exists", "values": ["x"]}],
        ),
        "spec.selector.matchExpressions[0].values",
        FORBIDDEN,
        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    ),
    (
        "DaemonSet",
        _set("spec.selector.matchExpressions", [{"key": "app", "operator": "Near"}]),
        "spec.selector.matchExpressions[0].operator",
        NOT_SUPPORTED,
        "In, NotIn, Exists, DoesNotExist",
    ),
    (
        "Deployment",
        _set("spec.selector.matchLabels", {"bad key!": "x"}),
        "spec.selector.matchLabels",
        INVALID,
        "keys are [prefix/]name",
    ),
    (
        "DaemonSet",
        _set("spec.template.spec.restartPolicy", "Never"),
        "spec.template.spec.restartPolicy",
        NOT_SUPPORTED,
        'Unsupported value: "Never": supported values: "Always"',
    ),
    (
        "DaemonSet",
        _set("spec.template.spec.containers", []),
        "spec.template.spec.containers",
        REQUIRED,
        "at least one container",
    ),
    (
        "Deployment",
        _set("spec.template.spec.containers", [{"name": "app"}]),
        "spec.template.spec.containers[0].image",
        REQUIRED,
        "image is required",
    ),
    (
        "DaemonSet",
        _set("spec.updateStrategy", {"type": "Sometimes"}),
        "spec.updateStrategy.type",
        NOT_SUPPORTED,
        "RollingUpdate, OnDelete",
    ),
    (
        "DaemonSet",
        _set("spec.updateStrategy", {"rollingUpdate": {"maxUnavailable": "ten"}}),
        "spec.updateStrategy.rollingUpdate.maxUnavailable",
        INVALID,
        "a whole number or a percentage",
    ),
    (
        "DaemonSet",
        _set("spec.updateStrategy", {"rollingUpdate": {"maxUnavailable": "150%"}}),
        "spec.updateStrategy.rollingUpdate.maxUnavailable",
        INVALID,
        'Invalid value: "150%": must not be greater than 100%',
    ),
    (
        "DaemonSet",
        _set("spec.updateStrategy", {"rollingUpdate": {"maxSurge": -1}}),
        "spec.updateStrategy.rollingUpdate.maxSurge",
        INVALID,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    (
        "DaemonSet",
        _set("spec.updateStrategy", {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}}),
        "spec.updateStrategy.rollingUpdate.maxUnavailable",
        INVALID,
        "Invalid value: 0: may not be 0 when `maxSurge` is 0",
    ),
    (
        "Deployment",
        _set("spec.strategy", {"rollingUpdate": {"maxUnavailable": "0%", "maxSurge": 0}}),
        "spec.strategy.rollingUpdate.maxUnavailable",
        INVALID,
        "may not be 0 when `maxSurge` is 0",
    ),
    (
        "Deployment",
        _set("spec.strategy", {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
        "spec.strategy.rollingUpdate",
        FORBIDDEN,
        "may not be specified when strategy `type` is 'Recreate'",
    ),
    (
        "Deployment",
        _set("spec.strategy", {"type": "BlueGreen"}),
        "spec.strategy.type",
        NOT_SUPPORTED,
        "Recreate, RollingUpdate",
    ),
    (
        "Deployment",
        _set("spec.replicas", -1),
        "spec.replicas",
        INVALID,
        "must be at least 0",
    ),
    ("Deployment", _set("spec.replicas", "3"), "spec.replicas", INVALID, "a whole number"),
    ("ReplicaSet", _set("spec.replicas", -2), "spec.replicas", INVALID, "must be at least 0"),
    (
        "Deployment",
        lambda o: o["spec"].update(minReadySeconds=30, progressDeadlineSeconds=30),
        "spec.progressDeadlineSeconds",
        INVALID,
        "Invalid value: 30: must be greater than minReadySeconds",
    ),
    (
        "DaemonSet",
        _set("spec.minReadySeconds", -5),
        "spec.minReadySeconds",
        INVALID,
        "must be at least 0",
    ),
    (
        "Deployment",
        _set("spec.revisionHistoryLimit", -1),
        "spec.revisionHistoryLimit",
        INVALID,
        "must be at least 0",
    ),
    ("ControllerRevision", _drop("data"), "data", REQUIRED, "data is mandatory"),
    ("ControllerRevision", _drop("revision"), "revision", REQUIRED, "revision is required"),
    (
        "ControllerRevision",
        _set("revision", -1),
        "revision",
        INVALID,
        "must be at least 0",
    ),
    (
        "NodeGroup",
        _set("spec.nodes", ["pi-01", "Pi_02"]),
        "spec.nodes[1]",
        INVALID,
        "DNS-1123 subdomain",
    ),
    (
        "NodeGroup",
        _set("spec.nodes", ["pi-01", "pi-01"]),
        "spec.nodes[1]",
        DUPLICATE,
        'Duplicate value: "pi-01"',
    ),
    (
        "NodeGroup",
        _set("spec.matchLabels", {"site": "plant 2"}),
        "spec.matchLabels.site",
        INVALID,
        "a label value",
    ),
    (
        "EdgeApplication",
        _set("spec.workloadTemplate.manifests", [{"kind": "Deployment"}]),
        "spec.workloadTemplate.manifests[0].apiVersion",
        REQUIRED,
        "Required value",
    ),
    (
        "EdgeApplication",
        _set("spec.workloadTemplate.manifests", ["not an object"]),
        "spec.workloadTemplate.manifests[0]",
        INVALID,
        "must be an object",
    ),
    (
        "EdgeApplication",
        _set("spec.workloadScope.targetNodeGroups", [{"overriders": {}}]),
        "spec.workloadScope.targetNodeGroups[0].name",
        REQUIRED,
        "Required value",
    ),
    (
        "EdgeApplication",
        _set("spec.workloadScope.targetNodeGroups", [{"name": "a"}, {"name": "a"}]),
        "spec.workloadScope.targetNodeGroups[1].name",
        DUPLICATE,
        'Duplicate value: "a"',
    ),
    (
        "EdgeApplication",
        _set(
            "spec.workloadScope.targetNodeGroups",
            [{"name": "a", "overriders": {"replicas": -1}}],
        ),
        "spec.workloadScope.targetNodeGroups[0].overriders.replicas",
        INVALID,
        "must be at least 0",
    ),
    (
        "EdgeApplication",
        _set(
            "spec.workloadScope.targetNodeGroups",
            [
                {
                    "name": "a",
                    "overriders": {"imageOverriders": [{"component": "Tag", "operator": "add"}]},
                }
            ],
        ),
        "spec.workloadScope.targetNodeGroups[0].overriders.imageOverriders[0].value",
        REQUIRED,
        "must not be empty when operator is 'add' or 'replace'",
    ),
    (
        "EdgeApplication",
        _set(
            "spec.workloadScope.targetNodeGroups",
            [
                {
                    "name": "a",
                    "overriders": {
                        "imageOverriders": [{"component": "Digest", "operator": "replace"}]
                    },
                }
            ],
        ),
        "spec.workloadScope.targetNodeGroups[0].overriders.imageOverriders[0].component",
        NOT_SUPPORTED,
        "Registry, Repository, Tag",
    ),
    (
        "EdgeApplication",
        _set(
            "spec.workloadScope.targetNodeGroups",
            [
                {
                    "name": "a",
                    "overriders": {
                        "commandOverriders": [{"containerName": "app", "operator": "replace"}]
                    },
                }
            ],
        ),
        "spec.workloadScope.targetNodeGroups[0].overriders.commandOverriders[0].operator",
        NOT_SUPPORTED,
        "add, remove",
    ),
    (
        "EdgeApplication",
        _set(
            "spec.workloadScope.targetNodeGroups",
            [{"name": "a", "overriders": {"envOverriders": [{"operator": "add"}]}}],
        ),
        "spec.workloadScope.targetNodeGroups[0].overriders.envOverriders[0].containerName",
        REQUIRED,
        "containerName is required",
    ),
    ("EdgeApplication", _drop("spec.workloadScope"), "spec.workloadScope", REQUIRED, "required"),
]


@pytest.mark.parametrize(
    ("kind", "edit", "field", "reason", "words"),
    CASES,
    ids=[f"{c[0]}:{c[2]}:{c[4][:30]}" for c in CASES],
)
def test_each_refusal_names_its_field(
    kind: str, edit: Edit, field: str, reason: str, words: str
) -> None:
    obj = SAMPLES[kind]()
    edit(obj)
    resource = edgeproto.resource_by_kind(kind)
    with pytest.raises(Invalid) as info:
        validate(resource, obj, namespace=None, name=None)
    causes = {c.field: c for c in info.value.causes}
    assert field in causes, info.value.causes
    assert causes[field].reason == reason, causes[field]
    assert words in causes[field].message, causes[field]
    assert str(info.value).startswith(f'{kind} "')
    assert f"{field}: " in str(info.value)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_the_samples_are_valid_and_nothing_is_dropped(kind: str) -> None:
    obj = SAMPLES[kind]()
    unknown: list[str] = []
    out = validate(
        edgeproto.resource_by_kind(kind), obj, namespace=None, name=None, unknown=unknown
    )
    assert unknown == []
    assert out["metadata"]["namespace" if edgeproto.resource_by_kind(kind).namespaced else "name"]


def test_defaults_are_kubernetes() -> None:
    ds = validate(
        edgeproto.resource_by_kind("DaemonSet"), daemonset(), namespace="default", name=None
    )
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert ds["spec"]["revisionHistoryLimit"] == 10 and ds["spec"]["minReadySeconds"] == 0
    on_delete = daemonset()
    on_delete["spec"]["updateStrategy"] = {"type": "OnDelete"}
    out = validate(edgeproto.resource_by_kind("DaemonSet"), on_delete, namespace=None, name=None)
    assert out["spec"]["updateStrategy"] == {"type": "OnDelete"}
    d = deployment()
    del d["spec"]["replicas"]
    out = validate(edgeproto.resource_by_kind("Deployment"), d, namespace=None, name=None)
    assert out["spec"]["replicas"] == 1
    assert out["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }
    assert out["spec"]["progressDeadlineSeconds"] == 600
    assert out["spec"]["revisionHistoryLimit"] == 10
    d["spec"]["strategy"] = {"type": "Recreate"}
    out = validate(edgeproto.resource_by_kind("Deployment"), d, namespace=None, name=None)
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    # Given values stay as given: numbers and percentages alike.
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": "10%"}}
    out = validate(edgeproto.resource_by_kind("Deployment"), d, namespace=None, name=None)
    assert out["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": "10%"}
    # The caller's object is not changed.
    assert "strategy" not in deployment()["spec"] and "type" not in d["spec"]["strategy"]


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("DaemonSet", ("spec", "selector"), {"matchLabels": {"app": "agent", "v": "2"}}),
        ("Deployment", ("spec", "selector"), {"matchLabels": {"app": "other"}}),
        ("ReplicaSet", ("spec", "selector"), {"matchLabels": {}}),
        ("ControllerRevision", ("data",), {"spec": {}}),
    ],
)
def test_what_may_not_change(kind: str, path: tuple[str, ...], value: Any) -> None:
    resource = edgeproto.resource_by_kind(kind)
    old = validate(resource, SAMPLES[kind](), namespace=None, name=None)
    new = copy.deepcopy(old)
    target = new
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(Invalid) as info:
        validate_update(resource, old, new)
    (cause,) = info.value.causes
    assert cause.field == ".".join(path) and cause.reason == INVALID
    assert cause.message.endswith(": field is immutable"), cause
    # The rest may change: replicas, template, labels; a revision's number.
    same = copy.deepcopy(old)
    same.setdefault("metadata", {})["labels"] = {"x": "y"}
    if kind == "ControllerRevision":
        same["revision"] = 7
    else:
        same["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:1.37"
    validate_update(resource, old, same)


def test_selectors() -> None:
    sel = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
        ],
    }
    assert selector_text(sel) == "app=web,!canary,env notin (dev),tier in (a,b),zone"  # by key
    good = {"app": "web", "tier": "a", "zone": "z1"}
    assert selector_matches(sel, good)
    for bad in (
        {**good, "canary": "1"},
        {**good, "tier": "c"},
        {**good, "env": "dev"},
        {"app": "web", "tier": "a"},
        {**good, "app": "db"},
    ):
        assert not selector_matches(sel, bad), bad
    assert selector_matches({}, {}) and selector_text({}) == ""
    assert int_or_percent("25%", 10, round_up=True) == 3
    assert int_or_percent("25%", 10, round_up=False) == 2
    assert int_or_percent(4, 10, round_up=True) == 4
    assert int_or_percent("4", 10, round_up=True) is None
    assert int_or_percent(True, 10, round_up=True) is None
