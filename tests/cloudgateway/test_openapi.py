"""OpenAPI documents generated from the kinds' schemas, fieldValidation on
writes, and kubectl 1.32 validating, explaining and editing without
--validate=false."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._apischema import KIND_SCHEMAS, named_schemas
from tests.cloudgateway.test_api import NS, Api, assert_status, start_api
from tests.cloudgateway.test_patch import kubectl, two_container_pod


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


def refs(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from refs(v)


def group_version(r: edgeproto.Resource) -> str:
    return f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}"


async def test_v3_documents_describe_every_served_kind(api: Api) -> None:
    status, index = await api.call("GET", "/openapi/v3")
    assert status == 200, index
    gvs = {group_version(r) for r in edgeproto.RESOURCES}
    assert set(index["paths"]) == gvs
    for gv, entry in index["paths"].items():
        url = entry["serverRelativeURL"]
        assert url.startswith(f"/openapi/v3/{gv}?hash=")
        status, doc = await api.call("GET", url)
        assert status == 200 and doc["openapi"].startswith("3."), doc
        schemas = doc["components"]["schemas"]
        for ref in refs(doc):  # every reference resolves
            assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref
        for r in (r for r in edgeproto.RESOURCES if gv == group_version(r)):
            kinds = [
                s
                for s in schemas.values()
                if {"group": r.group, "version": r.version, "kind": r.kind}
                in s.get("x-kubernetes-group-version-kind", [])
            ]
            assert len(kinds) == 1, r.kind
            # kubectl leaves validation to the server when PATCH takes fieldValidation
            patches = [
                p["patch"]
                for p in doc["paths"].values()
                if "patch" in p and p["patch"]["x-kubernetes-group-version-kind"]["kind"] == r.kind
            ]
            assert patches
            for op in patches:
                assert any(
                    q["name"] == "fieldValidation" and q["in"] == "query" for q in op["parameters"]
                )
    status, _ = await api.call("GET", "/openapi/v3/apis/nope/v1")
    assert status == 404
    status, _ = await api.call("GET", "/openapi/v3", token="wrong")
    assert status == 401


async def test_documents_come_from_the_validators_schema(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi/v3/api/v1")
    schemas = doc["components"]["schemas"]
    for s in named_schemas([KIND_SCHEMAS["Pod"], KIND_SCHEMAS["Node"]]):
        assert s.name is not None
        got = schemas[s.name]
        assert got.get("required", []) == list(s.required), s.name
        assert set(got.get("properties", {})) == set(s.properties), s.name
        assert got.get("x-kubernetes-preserve-unknown-fields", False) == s.open, s.name
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    ports = schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "containerPort"
    tolerations = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["tolerations"]
    assert tolerations["x-kubernetes-list-type"] == "atomic"
    status, v2 = await api.call("GET", "/openapi/v2")
    assert status == 200 and v2["swagger"] == "2.0"
    for ref in refs(v2):
        assert ref.startswith("#/definitions/") and ref.split("/")[-1] in v2["definitions"], ref


async def test_field_validation(api: Api) -> None:
    pod = two_container_pod()
    del pod["metadata"]["finalizers"]
    pod["sepc"] = {"oops": 1}
    pod["metadata"]["labelz"] = {"a": "b"}
    path = f"{NS}/pods"
    status, body = await api.call("POST", f"{path}?fieldValidation=Strict", pod)
    assert status == 400, body
    assert_status(body, 400, "BadRequest")
    assert (
        'unknown field "sepc"' in body["message"]
        and 'unknown field "metadata.labelz"' in body["message"]
    )
    status, body = await api.call("POST", f"{path}?fieldValidation=Sloppy", pod)
    assert status == 400 and "fieldValidation" in body["message"], body
    status, body = await api.call("GET", f"{NS}/pods/web")
    assert status == 404  # nothing was written
    # Warn (the default): created, the unknown fields dropped and named
    from tests.cloudgateway.test_http import fetch

    data = json.dumps(pod).encode()
    code, headers, payload = await fetch(
        api.port,
        "POST",
        path,
        data,
        [("authorization", "Bearer s3cret-admin-token"), ("content-type", "application/json")],
    )
    assert code == 201, payload
    stored = json.loads(payload)
    assert "sepc" not in stored and "labelz" not in stored["metadata"]
    assert headers["warning"].startswith('299 - "unknown field'), headers
    # Ignore: the same, silently; on PUT and PATCH too
    pod["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    status, body = await api.call("PUT", f"{NS}/pods/web?fieldValidation=Ignore", pod)
    assert status == 200 and "sepc" not in body, body
    status, body = await api.call(
        "PATCH",
        f"{NS}/pods/web?fieldValidation=Strict",
        {"spec": {"containers": [{"name": "app", "image": "x"}]}, "bogus": 1},
        ctype="application/merge-patch+json",
    )
    assert status == 400 and 'unknown field "bogus"' in body["message"], body
    status, after = await api.call("GET", f"{NS}/pods/web")
    assert after["spec"]["containers"][0]["image"] == "busybox:1.36"


async def test_kubectl_validates_explains_and_edits_with_the_servers_schema(
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
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "apply", "-f", str(path))
    assert code == 0, err
    code, out, err = await kubectl(config, "create", "-f", str(path))
    assert code != 0 and "AlreadyExists" in err, err  # validated, then refused by the store

    manifest["spec"]["contianers"] = []
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "apply", "-f", str(path))
    assert code == 0, err  # PodSpec keeps fields it does not describe
    manifest["metdata"] = {"name": "web"}
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "apply", "-f", str(path))
    assert code != 0 and 'unknown field "metdata"' in err, (out, err)
    del manifest["metdata"]
    manifest["spec"]["containers"][0]["image"] = "busybox:1.37"
    path.write_text(json.dumps(manifest))
    code, out, err = await kubectl(config, "replace", "-f", str(path))
    assert code == 0, err

    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/busybox:1.37/busybox:1.38/' \"$1\"\n")
    editor.chmod(0o755)

    def edit() -> tuple[int, str]:
        import subprocess

        p = subprocess.run(
            ["kubectl", "--kubeconfig", str(config), "edit", "pod", "web"],
            env={**os.environ, "EDITOR": str(editor), "KUBE_EDITOR": str(editor)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stderr

    code, err = await trio.to_thread.run_sync(edit)
    assert code == 0, err
    stored = (await gw.store.get("pods/default/web")).value
    assert [c["image"] for c in stored["spec"]["containers"]] == ["busybox:1.38", "busybox:1.36"]

    code, out, err = await kubectl(config, "explain", "pods.spec.containers")
    assert code == 0, err
    assert "image\t<string> -required-" in out and "ports\t<[]ContainerPort>" in out, out
    code, out, err = await kubectl(config, "explain", "devices.spec.properties")
    assert code == 0, err
    assert "devices.kubeedge.io" in out and "desired" in out, out
