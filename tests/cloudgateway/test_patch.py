"""Patches as Kubernetes applies them: strategic merge patch (the pure engine,
its laws under Hypothesis, and what kubectl sends), JSON patch, and both through
the API; then kubectl 1.32 itself against a gateway."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudgateway._patch import (
    PatchError,
    apply_json_patch,
    apply_strategic_merge_patch,
    create_strategic_merge_patch,
    merge_patch,
)
from tests.cloudgateway.test_api import NS, Api, assert_status, start_api

SMP = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def two_container_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "finalizers": ["a/x", "a/y"]},
        "spec": {
            "nodeName": "pi-01",
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "sleep 1d"],
                    "ports": [{"containerPort": 80}, {"containerPort": 443}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "side", "image": "busybox:1.36", "command": ["true"]},
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
        },
    }


# ---- what kubectl sends ---------------------------------------------------------


def test_kubectl_apply_of_a_changed_image_keeps_the_rest_of_the_container() -> None:
    # kubectl apply's three-way patch when only the image changed in the manifest
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"image": "busybox:1.37", "name": "app"}],
        },
    }
    out = apply_strategic_merge_patch(two_container_pod(), patch, "Pod")
    app, side = out["spec"]["containers"]
    assert app["image"] == "busybox:1.37"
    assert app["command"] == ["sh", "-c", "sleep 1d"]
    assert app["ports"] == [{"containerPort": 80}, {"containerPort": 443}]
    assert side == two_container_pod()["spec"]["containers"][1]
    assert not any(k.startswith("$") for k in json.dumps(out).split('"') if k)


def test_patching_one_container_by_name_keeps_its_sibling() -> None:
    patch = {"spec": {"containers": [{"name": "side", "image": "busybox:1.37"}]}}
    out = apply_strategic_merge_patch(two_container_pod(), patch, "Pod")
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", "side"]
    assert out["spec"]["containers"][1] == {
        "name": "side",
        "image": "busybox:1.37",
        "command": ["true"],
    }
    assert out["spec"]["containers"][0] == two_container_pod()["spec"]["containers"][0]
    # A merge patch, by contrast, replaces the list (RFC 7386): the sibling is gone.
    assert len(merge_patch(two_container_pod(), patch)["spec"]["containers"]) == 1


def test_nested_merged_lists_by_their_own_keys() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                    "ports": [{"containerPort": 443, "$patch": "delete"}],
                }
            ]
        }
    }
    app = apply_strategic_merge_patch(two_container_pod(), patch, "Pod")["spec"]["containers"][0]
    assert app["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "two"},
        {"name": "C", "value": "3"},
    ]
    assert app["ports"] == [{"containerPort": 80}]


def test_lists_without_a_strategy_are_replaced() -> None:
    patch = {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}
    out = apply_strategic_merge_patch(two_container_pod(), patch, "Pod")
    assert out["spec"]["tolerations"] == [{"key": "other", "operator": "Exists"}]
    # a container's command is an atomic list too
    patch = {"spec": {"containers": [{"name": "app", "command": ["echo"]}]}}
    out = apply_strategic_merge_patch(two_container_pod(), patch, "Pod")
    assert out["spec"]["containers"][0]["command"] == ["echo"]


def test_directives() -> None:
    base = two_container_pod()
    # $patch: replace as a list element: the list becomes the patch's
    out = apply_strategic_merge_patch(
        base,
        {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "i"}]}},
        "Pod",
    )
    assert out["spec"]["containers"] == [{"name": "only", "image": "i"}]
    # $patch: replace on a map; $patch: delete on a map
    out = apply_strategic_merge_patch(
        base,
        {"metadata": {"$patch": "replace", "name": "web"}, "spec": {"$patch": "delete"}},
        "Pod",
    )
    assert out["metadata"] == {"name": "web"} and "spec" not in out
    # $retainKeys: a volume switched from a ConfigMap to an emptyDir keeps only what it names
    out = apply_strategic_merge_patch(
        base,
        {
            "spec": {
                "volumes": [{"$retainKeys": ["emptyDir", "name"], "emptyDir": {}, "name": "cfg"}]
            }
        },
        "Pod",
    )
    assert out["spec"]["volumes"] == [{"name": "cfg", "emptyDir": {}}]
    # $deleteFromPrimitiveList and set-like merge of a primitive list
    out = apply_strategic_merge_patch(
        base,
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"], "finalizers": ["a/z"]}},
        "Pod",
    )
    assert out["metadata"]["finalizers"] == ["a/y", "a/z"]
    assert base == two_container_pod()  # inputs are never modified


def test_set_element_order_keeps_server_only_items_in_place() -> None:
    original = {"spec": {"containers": [{"name": n} for n in ("a", "s1", "b", "s2", "c")]}}
    # the client knows a, b, c (in a new order) and adds d; s1, s2 are the server's own
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": n} for n in ("c", "a", "d", "b")],
            "containers": [{"name": "d"}],
        }
    }
    out = apply_strategic_merge_patch(original, patch, "Pod")
    names = [c["name"] for c in out["spec"]["containers"]]
    assert sorted(names) == ["a", "b", "c", "d", "s1", "s2"]
    client = [n for n in names if not n.startswith("s")]
    assert client == ["c", "a", "d", "b"]
    assert names.index("s1") < names.index("s2")


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"spec": {"containers": [{"image": "x"}]}}, "merge key 'name'"),
        ({"spec": {"$patch": "explode"}}, "unknown $patch"),
        ({"spec": {"$bogus": 1}}, "unknown patch directive"),
        (
            {"spec": {"volumes": [{"$retainKeys": ["name"], "name": "cfg", "emptyDir": {}}]}},
            "$retainKeys",
        ),
        ({"metadata": {"$setElementOrder/finalizers": "a"}}, "must be a list"),
        ({"metadata": {"finalizers": [{"a": 1}]}}, "list of values"),
    ],
)
def test_bad_patches_are_errors(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError, match=message.replace("$", r"\$")):
        apply_strategic_merge_patch(two_container_pod(), patch, "Pod")


def test_json_patch() -> None:
    base = two_container_pod()
    out = apply_json_patch(
        base,
        [
            {"op": "test", "path": "/spec/containers/1/name", "value": "side"},
            {"op": "replace", "path": "/spec/containers/1/image", "value": "busybox:1.37"},
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
            {"op": "remove", "path": "/spec/tolerations"},
        ],
    )
    assert out["spec"]["containers"][1]["image"] == "busybox:1.37"
    assert out["metadata"]["labels"] == {"a": "b"} and "tolerations" not in out["spec"]
    assert base == two_container_pod()
    for bad in (
        [{"op": "test", "path": "/spec/nodeName", "value": "pi-02"}],
        [{"op": "remove", "path": "/spec/nope"}],
        [{"op": "frobnicate", "path": "/spec"}],
        [{"path": "/spec"}],
        [5],
        {"op": "remove"},
    ):
        with pytest.raises(PatchError):
            apply_json_patch(base, bad)


# ---- laws ---------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d", "e"])
scalars = (
    st.none().filter(lambda _: False) | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
)
plain = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def keyed(draw: st.DrawFn, key: str, element: st.SearchStrategy[dict[str, Any]]) -> list[Any]:
    keys = draw(st.lists(names, unique=True, max_size=4))
    return [{**draw(element), key: k} for k in keys]


env = keyed("name", st.fixed_dictionaries({}, optional={"value": st.text(max_size=2)}))
ports = st.lists(st.integers(1, 5), unique=True, max_size=3).map(
    lambda ps: [{"containerPort": p} for p in ps]
)
container = st.fixed_dictionaries(
    {},
    optional={
        "image": st.text(max_size=3),
        "command": st.lists(st.text(max_size=2), max_size=3),
        "env": env,
        "ports": ports,
        "extra": plain,
    },
)
pods = st.fixed_dictionaries(
    {"kind": st.just("Pod")},
    optional={
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "finalizers": st.lists(names, unique=True, max_size=4),
                "labels": st.dictionaries(names, st.text(max_size=2), max_size=3),
            },
        ),
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": keyed("name", container),
                "tolerations": st.lists(st.dictionaries(names, names, max_size=2), max_size=2),
                "nodeName": st.text(max_size=3),
                "other": plain,
            },
        ),
        "status": st.fixed_dictionaries(
            {}, optional={"conditions": keyed("type", st.fixed_dictionaries({"status": names}))}
        ),
    },
)


@settings(max_examples=600, deadline=None)
@given(original=pods, modified=pods)
def test_a_computed_patch_turns_the_first_object_into_the_second(
    original: dict[str, Any], modified: dict[str, Any]
) -> None:
    keep = copy.deepcopy(original)
    patch = create_strategic_merge_patch(original, modified, "Pod")
    assert apply_strategic_merge_patch(original, json.loads(json.dumps(patch)), "Pod") == modified
    assert original == keep


@settings(max_examples=300, deadline=None)
@given(obj=pods)
def test_the_patch_between_equal_objects_changes_nothing(obj: dict[str, Any]) -> None:
    patch = create_strategic_merge_patch(obj, copy.deepcopy(obj), "Pod")
    assert all(k.startswith("$setElementOrder/") for k in _leaf_keys(patch)), patch
    assert apply_strategic_merge_patch(obj, patch, "Pod") == obj
    assert apply_strategic_merge_patch(obj, {}, "Pod") == obj


@settings(max_examples=300, deadline=None)
@given(
    target=st.dictionaries(st.sampled_from(["x", "y", "z"]), plain, max_size=4),
    patch=st.dictionaries(st.sampled_from(["x", "y", "z"]), plain | st.none(), max_size=4),
)
def test_without_merged_lists_a_strategic_patch_is_a_merge_patch(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert apply_strategic_merge_patch(target, patch, "ConfigMap") == merge_patch(target, patch)


def _leaf_keys(patch: Any) -> list[str]:
    out: list[str] = []
    if isinstance(patch, dict):
        for k, v in patch.items():
            sub = _leaf_keys(v)
            out += sub if sub and isinstance(v, dict) else [k]
    return out


# ---- through the API ------------------------------------------------------------------


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


async def test_api_strategic_merge_and_json_patch(api: Api) -> None:
    obj = two_container_pod()
    del obj["metadata"]["finalizers"]
    await api.create(f"{NS}/pods", obj)
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web",
        {
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
                "containers": [{"name": "app", "image": "busybox:1.37"}],
            }
        },
        ctype=SMP,
    )
    assert status == 200, body
    app, side = body["spec"]["containers"]
    assert app["image"] == "busybox:1.37" and app["command"] == ["sh", "-c", "sleep 1d"]
    assert app["ports"] == [{"containerPort": 80}, {"containerPort": 443}]
    assert side["name"] == "side"
    assert "$setElementOrder/containers" not in body["spec"]
    status, stored = await api.call("GET", f"{NS}/pods/web")
    assert stored["spec"] == body["spec"]

    status, patched = await api.call(
        "PATCH",
        f"{NS}/pods/web",
        [{"op": "replace", "path": "/spec/containers/1/image", "value": "busybox:1.38"}],
        ctype=JSON_PATCH,
    )
    assert status == 200 and patched["spec"]["containers"][1]["image"] == "busybox:1.38", patched
    # errors: a failed test, a missing merge key, a JSON patch that is not a list, an
    # invalid result; none of them changes the object
    for patch, ctype, code in (
        ([{"op": "test", "path": "/spec/nodeName", "value": "pi-09"}], JSON_PATCH, 422),
        ({"spec": {"containers": [{"image": "x"}]}}, SMP, 422),
        ({"op": "remove"}, JSON_PATCH, 400),
        ([{"op": "replace", "path": "/spec/containers", "value": []}], JSON_PATCH, 422),
    ):
        status, body = await api.call("PATCH", f"{NS}/pods/web", patch, ctype=ctype)
        assert status == code, (patch, body)
        assert_status(body, code, "Invalid" if code == 422 else "BadRequest")
    status, after = await api.call("GET", f"{NS}/pods/web")
    assert after == patched
    # the status subresource takes strategic patches too (conditions merge by type)
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web/status",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        ctype=SMP,
    )
    assert status == 200, body
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web/status",
        {"status": {"conditions": [{"type": "Initialized", "status": "True"}]}},
        ctype=SMP,
    )
    assert [c["type"] for c in body["status"]["conditions"]] == ["Ready", "Initialized"]


# ---- kubectl itself ---------------------------------------------------------------


async def kubectl(kubeconfig: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        p = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout, p.stderr

    return await trio.to_thread.run_sync(run)


async def test_kubectl_apply_and_patch_change_only_what_changed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    from cloudgateway._cli import kubeconfig
    from tests.conftest import start_gateway

    gw = await start_gateway(nursery, tmp_path / "gw", api_tls=True)
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(kubeconfig(tmp_path / "gw", f"https://127.0.0.1:{gw.ports['api']}"))
    )
    manifest = two_container_pod()
    del manifest["metadata"]["finalizers"]
    manifest["metadata"]["namespace"] = "default"
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "apply", "--validate=false", "-f", str(path))
    assert code == 0, err
    manifest["spec"]["containers"][0]["image"] = "busybox:1.37"
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "apply", "--validate=false", "-f", str(path))
    assert code == 0 and "configured" in out, (out, err)
    stored = (await gw.store.get("pods/default/web")).value
    app, side = stored["spec"]["containers"]
    assert app["image"] == "busybox:1.37" and app["command"] == ["sh", "-c", "sleep 1d"]
    assert app["ports"] == [{"containerPort": 80}, {"containerPort": 443}]
    assert side["name"] == "side" and "$setElementOrder/containers" not in stored["spec"]

    code, out, err = await kubectl(
        config,
        "patch",
        "pod",
        "web",
        "-p",
        '{"spec":{"containers":[{"name":"side","image":"busybox:1.38"}]}}',
    )
    assert code == 0, err
    stored = (await gw.store.get("pods/default/web")).value
    assert [c["image"] for c in stored["spec"]["containers"]] == ["busybox:1.37", "busybox:1.38"]
    code, out, err = await kubectl(
        config,
        "patch",
        "pod",
        "web",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/metadata/labels","value":{"tier":"edge"}}]',
    )
    assert code == 0, err
    stored = (await gw.store.get("pods/default/web")).value
    assert stored["metadata"]["labels"] == {"tier": "edge"}
    assert len(stored["spec"]["containers"]) == 2
