"""KubeEdge EdgeApplication, the pure parts: overriders (image, replicas, env,
command/args, resources), the objects an application produces, merging a
changed template into a live object, and the status."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from cloudgateway.controllers._edgeapp_plan import (
    LAST_APPLIED,
    NotOurs,
    applied_condition,
    create_merge_patch,
    label_suffix,
    next_object,
    plan_edgeapp,
    workload_status,
)
from cloudgateway.controllers._nodegroup_plan import LABEL_BELONGING_TO
from cloudgateway.controllers._overriders import (
    OverrideError,
    apply_overriders,
    override_image,
    parse_image,
)

# An EdgeApplication as KubeEdge's documentation writes them: a Deployment
# (no namespace in the manifest), two node groups with their own overrides.
NGINX_APP = """
apiVersion: apps.kubeedge.io/v1alpha1
kind: EdgeApplication
metadata:
  name: nginx-app
  namespace: default
  uid: 7f0c7a55-1111-4d2e-9a43-0c5a3d1e2b01
spec:
  workloadTemplate:
    manifests:
      - apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: nginx
          labels:
            app: nginx
        spec:
          replicas: 1
          selector:
            matchLabels:
              app: nginx
          template:
            metadata:
              labels:
                app: nginx
            spec:
              containers:
                - name: nginx
                  image: nginx:1.25
                  args: ["-g", "daemon off;"]
                  env:
                    - name: MODE
                      value: cloud
                    - name: LOG_LEVEL
                      value: info
                  resources:
                    requests:
                      cpu: 100m
                      memory: 64Mi
      - apiVersion: v1
        kind: ConfigMap
        metadata:
          name: nginx-conf
        data:
          site: plant
  workloadScope:
    targetNodeGroups:
      - name: hangzhou
        overriders:
          replicas: 2
          imageOverriders:
            - component: Tag
              operator: replace
              value: "1.26"
      - name: beijing
        overriders:
          replicas: 3
          imageOverriders:
            - component: Registry
              operator: replace
              value: registry.beijing.example:5000
          envOverriders:
            - containerName: nginx
              operator: replace
              value:
                - name: MODE
                  value: edge
            - containerName: nginx
              operator: add
              value:
                - name: SITE
                  value: beijing
            - containerName: nginx
              operator: remove
              value:
                - name: LOG_LEVEL
          argsOverriders:
            - containerName: nginx
              operator: add
              value: ["-e", "/dev/stderr"]
          commandOverriders:
            - containerName: nginx
              operator: add
              value: ["nginx"]
          resourcesOverriders:
            - containerName: nginx
              value:
                limits:
                  cpu: 500m
                requests:
                  cpu: "0"
                  memory: 128Mi
"""


def nginx_app() -> dict[str, Any]:
    doc = yaml.safe_load(NGINX_APP)
    assert isinstance(doc, dict)
    return doc


def container(obj: dict[str, Any]) -> dict[str, Any]:
    c = obj["spec"]["template"]["spec"]["containers"][0]
    assert isinstance(c, dict)
    return c


# ---- images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "host", "repo", "tag", "digest"),
    [
        ("nginx", "", "nginx", "", ""),
        ("nginx:1.25", "", "nginx", "1.25", ""),
        ("library/nginx:1.25", "", "library/nginx", "1.25", ""),
        ("docker.io/library/nginx:1.25", "docker.io", "library/nginx", "1.25", ""),
        ("localhost/app", "localhost", "app", "", ""),
        ("localhost:5000/team/app:v2", "localhost:5000", "team/app", "v2", ""),
        (
            "registry.example:443/a/b@sha256:" + "ab" * 32,
            "registry.example:443",
            "a/b",
            "",
            "sha256:" + "ab" * 32,
        ),
        ("[::1]:5000/app:1", "[::1]:5000", "app", "1", ""),
    ],
)
def test_images_split_as_docker_references(
    image: str, host: str, repo: str, tag: str, digest: str
) -> None:
    ref = parse_image(image)
    assert (ref.hostname, ref.repository, ref.tag, ref.digest) == (host, repo, tag, digest)
    assert str(ref) == image


@pytest.mark.parametrize(
    "image", ["", "Nginx:1", "nginx:", "nginx:-bad", "a//b", ":1.0", "nginx@sha256:12"]
)
def test_bad_image_references_are_refused(image: str) -> None:
    with pytest.raises(ValueError):
        parse_image(image)


@pytest.mark.parametrize(
    ("image", "component", "operator", "value", "want"),
    [
        ("nginx:1.25", "Registry", "replace", "mirror.local:5000", "mirror.local:5000/nginx:1.25"),
        ("docker.io/nginx:1.25", "Registry", "remove", None, "nginx:1.25"),
        ("registry.k8s.io/pause:3.9", "Registry", "add", ".cn", "registry.k8s.io.cn/pause:3.9"),
        (
            "docker.io/library/nginx:1.25",
            "Repository",
            "replace",
            "team/web",
            "docker.io/team/web:1.25",
        ),
        ("nginx:1.25", "Repository", "add", "-edge", "nginx-edge:1.25"),
        ("nginx:1.25", "Tag", "replace", "1.26", "nginx:1.26"),
        ("nginx:1.25", "Tag", "add", "-alpine", "nginx:1.25-alpine"),
        ("nginx:1.25", "Tag", "remove", None, "nginx"),
        ("nginx", "Tag", "replace", "sha256:" + "c" * 64, "nginx@sha256:" + "c" * 64),
        ("nginx@sha256:" + "c" * 64, "Tag", "replace", "1.0", "nginx:1.0"),
    ],
)
def test_image_overrides_as_kubeedge(
    image: str, component: str, operator: str, value: str | None, want: str
) -> None:
    assert override_image(image, component, operator, value) == want


@pytest.mark.parametrize(
    ("component", "operator", "value", "words"),
    [
        ("Tag", "replace", "not a tag!", "neither a tag nor a digest"),
        ("Flavour", "replace", "x", "component"),
        ("Tag", "upsert", "x", "operator"),
        ("Repository", "remove", None, "not a valid image reference"),
        ("Tag", "replace", "", "must not be empty"),
    ],
)
def test_image_overrides_that_make_no_image_are_refused(
    component: str, operator: str, value: str | None, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        override_image("nginx:1.25", component, operator, value)


# ---- overriders --------------------------------------------------------------------


def test_every_overrider_applies_to_the_deployment() -> None:
    app = nginx_app()
    manifest = app["spec"]["workloadTemplate"]["manifests"][0]
    overriders = app["spec"]["workloadScope"]["targetNodeGroups"][1]["overriders"]
    before = copy.deepcopy(manifest)
    out, notes = apply_overriders(manifest, overriders)
    assert manifest == before  # the template is not touched
    assert notes == []
    assert out["spec"]["replicas"] == 3
    c = container(out)
    assert c["image"] == "registry.beijing.example:5000/nginx:1.25"
    assert c["env"] == [{"name": "MODE", "value": "edge"}, {"name": "SITE", "value": "beijing"}]
    assert c["args"] == ["-g", "daemon off;", "-e", "/dev/stderr"]
    assert c["command"] == ["nginx"]  # none before: added
    # non-zero quantities override, a zero one leaves the request as it was
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m"},
    }


def test_command_remove_drops_every_occurrence() -> None:
    manifest = nginx_app()["spec"]["workloadTemplate"]["manifests"][0]
    container(manifest)["command"] = ["run", "--verbose", "x", "--verbose"]
    out, _ = apply_overriders(
        manifest,
        {
            "commandOverriders": [
                {"containerName": "nginx", "operator": "remove", "value": ["--verbose"]}
            ]
        },
    )
    assert container(out)["command"] == ["run", "x"]


def test_an_overrider_for_a_missing_container_changes_nothing_and_says_so() -> None:
    manifest = nginx_app()["spec"]["workloadTemplate"]["manifests"][0]
    out, notes = apply_overriders(
        manifest,
        {
            "envOverriders": [
                {
                    "containerName": "sidecar",
                    "operator": "add",
                    "value": [{"name": "A", "value": "1"}],
                }
            ]
        },
        where="spec.workloadScope.targetNodeGroups[0].overriders",
    )
    assert out == manifest
    assert notes == [
        "spec.workloadScope.targetNodeGroups[0].overriders.envOverriders[0]: "
        "no container named 'sidecar'; nothing changed"
    ]


def test_image_predicate_changes_only_that_path() -> None:
    manifest = nginx_app()["spec"]["workloadTemplate"]["manifests"][0]
    spec = manifest["spec"]["template"]["spec"]
    spec["containers"].append({"name": "sidecar", "image": "busybox:1.36"})
    out, _ = apply_overriders(
        manifest,
        {
            "imageOverriders": [
                {
                    "predicate": {"path": "/spec/template/spec/containers/1/image"},
                    "component": "Tag",
                    "operator": "replace",
                    "value": "1.37",
                }
            ]
        },
    )
    images = [c["image"] for c in out["spec"]["template"]["spec"]["containers"]]
    assert images == ["nginx:1.25", "busybox:1.37"]


@pytest.mark.parametrize(
    ("overriders", "field"),
    [
        ({"replicas": -1}, "overriders.replicas"),
        ({"replicas": "3"}, "overriders.replicas"),
        (
            {"imageOverriders": [{"component": "Tag", "operator": "replace", "value": "no way"}]},
            "overriders.imageOverriders[0]",
        ),
        (
            {
                "imageOverriders": [
                    {
                        "predicate": {"path": "/spec/nope"},
                        "component": "Tag",
                        "operator": "replace",
                        "value": "1",
                    }
                ]
            },
            "overriders.imageOverriders[0].predicate.path",
        ),
        (
            {"argsOverriders": [{"containerName": "nginx", "operator": "replace", "value": ["x"]}]},
            "overriders.argsOverriders[0].operator",
        ),
        (
            {
                "envOverriders": [
                    {"containerName": "nginx", "operator": "add", "value": [{"value": "x"}]}
                ]
            },
            "overriders.envOverriders[0].value",
        ),
        (
            {"resourcesOverriders": [{"containerName": "nginx", "value": {}}]},
            "overriders.resourcesOverriders[0].value",
        ),
    ],
)
def test_bad_overriders_name_their_field(overriders: dict[str, Any], field: str) -> None:
    manifest = nginx_app()["spec"]["workloadTemplate"]["manifests"][0]
    with pytest.raises(OverrideError) as info:
        apply_overriders(manifest, overriders)
    assert info.value.field == field


# ---- what an application produces ----------------------------------------------------


def test_one_deployment_per_group_and_other_kinds_once() -> None:
    app = nginx_app()
    plan = plan_edgeapp(app)
    assert [p.problems for p in [plan]] == [[]]
    assert [(p.ordinal, p.key, p.group) for p in plan.produced] == [
        (0, "deployments/default/nginx-hangzhou", "hangzhou"),
        (0, "deployments/default/nginx-beijing", "beijing"),
        (1, "configmaps/default/nginx-conf", None),
    ]
    hz, bj, cm = (p.obj for p in plan.produced)
    for obj, group in ((hz, "hangzhou"), (bj, "beijing")):
        pod_spec = obj["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == {LABEL_BELONGING_TO: group}
        assert obj["metadata"]["labels"] == {"app": "nginx"}
        assert obj["spec"]["selector"] == {"matchLabels": {"app": "nginx"}}
    assert hz["spec"]["replicas"] == 2 and container(hz)["image"] == "nginx:1.26"
    assert bj["spec"]["replicas"] == 3
    assert cm["data"] == {"site": "plant"} and "nodeSelector" not in json.dumps(cm)
    for obj in (hz, bj, cm):
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "apps.kubeedge.io/v1alpha1",
                "kind": "EdgeApplication",
                "name": "nginx-app",
                "uid": app["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        recorded = json.loads(obj["metadata"]["annotations"][LAST_APPLIED])
        unrecorded = copy.deepcopy(obj)
        del unrecorded["metadata"]["annotations"]
        assert recorded == unrecorded
    # identifiers as KubeEdge's ResourceIdentifier
    assert plan.produced[0].identifier() == {
        "ordinal": 0,
        "group": "apps",
        "version": "v1",
        "kind": "Deployment",
        "namespace": "default",
        "name": "nginx-hangzhou",
    }


def test_a_group_selector_replaces_the_templates_node_selector() -> None:
    app = nginx_app()
    tpl = app["spec"]["workloadTemplate"]["manifests"][0]["spec"]["template"]["spec"]
    tpl["nodeSelector"] = {"disk": "ssd"}
    plan = plan_edgeapp(app)
    assert plan.produced[0].obj["spec"]["template"]["spec"]["nodeSelector"] == {
        LABEL_BELONGING_TO: "hangzhou"
    }


def test_target_node_labels_pin_by_node_affinity() -> None:
    app = nginx_app()
    app["spec"]["workloadScope"] = {
        "targetNodeLabels": [
            {
                "labelSelector": {
                    "matchLabels": {"site": "plant-2", "arch": "arm64"},
                    "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}],
                },
                "overriders": {"replicas": 4},
            },
            {"labelSelector": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}},
        ]
    }
    plan = plan_edgeapp(app)
    suffix = label_suffix({"arch": "arm64", "site": "plant-2"})
    assert suffix == label_suffix({"site": "plant-2", "arch": "arm64"})
    assert len(suffix) == len("ls-") + 8 and suffix.startswith("ls-")
    dep = plan.produced[0]
    assert dep.key == f"deployments/default/nginx-{suffix}" and dep.group is None
    assert dep.obj["spec"]["replicas"] == 4
    pod_spec = dep.obj["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod_spec
    assert pod_spec["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "arch", "operator": "In", "values": ["arm64"]},
                        {"key": "site", "operator": "In", "values": ["plant-2"]},
                        {"key": "gpu", "operator": "DoesNotExist"},
                    ]
                }
            ]
        }
    }
    assert [(p.reason, p.message) for p in plan.problems] == [
        (
            "InvalidScope",
            "spec.workloadScope.targetNodeLabels[1].labelSelector.matchLabels is required "
            "(the workload is named after it)",
        )
    ]


def test_no_target_groups_produce_no_deployments() -> None:
    app = nginx_app()
    del app["spec"]["workloadScope"]["targetNodeGroups"]
    plan = plan_edgeapp(app)
    assert [p.key for p in plan.produced] == ["configmaps/default/nginx-conf"]
    assert plan.problems == []
    assert workload_status(plan, {})[0] == {
        "identifier": {"ordinal": 0},
        "conditions": "Processing",
    }


def test_manifests_that_produce_nothing_are_problems_not_silence() -> None:
    app = nginx_app()
    manifests = app["spec"]["workloadTemplate"]["manifests"]
    manifests += [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nginx"},
            "spec": {"ports": [{"port": 80}]},
        },
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "other"}},
        {"apiVersion": "apps.kubeedge.io/v1alpha1", "kind": "NodeGroup", "metadata": {"name": "g"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}},
        "not an object",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nginx-conf"}},
    ]
    plan = plan_edgeapp(app)
    got = [(p.ordinal, p.reason) for p in plan.problems]
    assert got == [
        (2, "UnsupportedKind"),
        (3, "UnsupportedKind"),
        (4, "NamespaceMismatch"),
        (5, "UnsupportedKind"),
        (6, "InvalidManifest"),
        (7, "InvalidManifest"),
        (8, "InvalidManifest"),
        (9, "DuplicateObject"),
    ]
    msgs = {p.ordinal: p.message for p in plan.problems}
    assert "v1 Service 'nginx': edgeflock does not run this kind" in msgs[2]
    assert "apps/v1 Deployment" in msgs[2]  # says what it does run
    assert "cluster-scoped" in msgs[5]
    assert msgs[8].startswith(
        "spec.workloadTemplate.manifests[8]: ConfigMap 'Bad_Name' is invalid: metadata.name"
    )
    # the good manifests are still produced
    assert len(plan.produced) == 3
    status = workload_status(plan, {})
    assert [s["identifier"]["ordinal"] for s in status] == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    cond = applied_condition(plan.problems, None, "2026-01-01T00:00:00Z")
    assert cond["status"] == "False" and cond["reason"] == "UnsupportedKind"
    assert "StatefulSet" in cond["message"]


def test_an_invalid_produced_deployment_names_the_field() -> None:
    app = nginx_app()
    container(app["spec"]["workloadTemplate"]["manifests"][0])["imagePullPolicy"] = "Sometimes"
    plan = plan_edgeapp(app)
    assert [p.reason for p in plan.errors()] == ["InvalidManifest", "InvalidManifest"]
    assert "spec.template.spec.containers[0].imagePullPolicy" in plan.problems[0].message
    assert "for node group 'hangzhou'" in plan.problems[0].message
    assert [p.key for p in plan.produced] == ["configmaps/default/nginx-conf"]


def test_a_failed_override_skips_only_that_group() -> None:
    app = nginx_app()
    app["spec"]["workloadScope"]["targetNodeGroups"][0]["overriders"]["imageOverriders"][0][
        "value"
    ] = "no such tag!"
    plan = plan_edgeapp(app)
    assert [p.key for p in plan.produced] == [
        "deployments/default/nginx-beijing",
        "configmaps/default/nginx-conf",
    ]
    (problem,) = plan.problems
    assert problem.reason == "OverrideFailed"
    assert "targetNodeGroups[0].overriders.imageOverriders[0]" in problem.message


# ---- merging into live objects -------------------------------------------------------


def test_create_merge_patch_round_trips() -> None:
    from cloudgateway._patch import merge_patch

    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"}
    new = {"a": 1, "b": {"c": 3, "d": [1]}, "f": {"g": True}}
    patch = create_merge_patch(old, new)
    assert patch == {"b": {"c": 3, "d": [1]}, "e": None, "f": {"g": True}}
    assert merge_patch(old, patch) == new
    assert create_merge_patch(new, new) == {}


def live_of(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the store keeps it: server fields, and others' writes."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        uid="d-1", resourceVersion="7", creationTimestamp="2026-01-01T00:00:00Z"
    )
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    live["status"] = {"replicas": 2, "readyReplicas": 2}
    return live


def test_an_unchanged_template_writes_nothing_and_keeps_a_scale() -> None:
    plan = plan_edgeapp(nginx_app())
    desired = plan.produced[0].obj
    assert next_object(desired, None) == desired
    live = live_of(desired)
    live["spec"]["replicas"] = 5  # kubectl scale on the produced Deployment
    assert next_object(desired, live) is None


def test_a_changed_template_merges_into_the_live_object() -> None:
    app = nginx_app()
    old = plan_edgeapp(app).produced[0].obj
    live = live_of(old)
    live["spec"]["replicas"] = 5
    app["spec"]["workloadTemplate"]["manifests"][0]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] = "nginx:1.27"
    app["spec"]["workloadScope"]["targetNodeGroups"][0]["overriders"]["imageOverriders"] = []
    new = plan_edgeapp(app).produced[0].obj
    out = next_object(new, live)
    assert out is not None
    assert container(out)["image"] == "nginx:1.27"
    assert out["spec"]["replicas"] == 5  # the template did not change replicas
    assert out["metadata"]["uid"] == "d-1" and out["status"] == live["status"]
    assert out["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert (
        out["metadata"]["annotations"][LAST_APPLIED] == new["metadata"]["annotations"][LAST_APPLIED]
    )
    # a field the template dropped is dropped
    del app["spec"]["workloadTemplate"]["manifests"][0]["metadata"]["labels"]
    newer = plan_edgeapp(app).produced[0].obj
    out2 = next_object(newer, out)
    assert out2 is not None and "labels" not in out2["metadata"]


def test_an_object_of_another_owner_is_not_taken_over() -> None:
    desired = plan_edgeapp(nginx_app()).produced[0].obj
    theirs = live_of(desired)
    theirs["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    with pytest.raises(NotOurs):
        next_object(desired, theirs)
    # an object nobody controls is adopted, as Kubernetes' controllers adopt orphans
    orphan = live_of(desired)
    del orphan["metadata"]["ownerReferences"]
    del orphan["metadata"]["annotations"][LAST_APPLIED]
    adopted = next_object(desired, orphan)
    assert adopted is not None
    assert adopted["metadata"]["ownerReferences"] == desired["metadata"]["ownerReferences"]


# ---- status ------------------------------------------------------------------------


def test_workload_status_follows_readiness() -> None:
    plan = plan_edgeapp(nginx_app())
    hz, bj, cm = plan.produced
    live: dict[str, Any] = {
        hz.key: {**hz.obj, "status": {"readyReplicas": 2}},
        bj.key: {**bj.obj, "status": {"readyReplicas": 1}},
        cm.key: cm.obj,
    }
    got = {s["identifier"]["name"]: s["conditions"] for s in workload_status(plan, live)}
    assert got == {
        "nginx-hangzhou": "Available",
        "nginx-beijing": "Processing",
        "nginx-conf": "Available",
    }
    got = {s["identifier"]["name"]: s["conditions"] for s in workload_status(plan, {})}
    assert set(got.values()) == {"Processing"}


def test_condition_keeps_its_transition_time_while_unchanged() -> None:
    first = applied_condition([], None, "2026-01-01T00:00:00Z")
    assert first["status"] == "True"
    again = applied_condition([], first, "2026-01-01T00:05:00Z")
    assert again["lastTransitionTime"] == "2026-01-01T00:00:00Z"
