"""The Kubernetes-shaped API over real HTTP against a running gateway."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import trio

from cloudgateway import ctl
from tests.conftest import Gateway, wait_for
from tests.test_sync_e2e import NS, cm, pod


async def test_errors_are_kubernetes_status(gateway: Gateway) -> None:
    saved = gateway.token
    gateway.token = "wrong"
    code, body = await gateway.api("GET", "/api/v1/nodes")
    assert code == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"
    gateway.token = saved
    code, body = await gateway.api("GET", f"{NS}/pods/missing")
    assert code == 404 and body["reason"] == "NotFound" and body["details"]["name"] == "missing"
    code, body = await gateway.api("POST", f"{NS}/configmaps", cm("dup"))
    assert code == 201 and body["metadata"]["resourceVersion"]
    code, body = await gateway.api("POST", f"{NS}/configmaps", cm("dup"))
    assert code == 409 and body["reason"] == "AlreadyExists"
    stale = dict(body if "metadata" in body and body.get("kind") == "ConfigMap" else cm("dup"))
    code, cur = await gateway.api("GET", f"{NS}/configmaps/dup")
    cur["data"] = {"k": "one"}
    code, _ = await gateway.api("PUT", f"{NS}/configmaps/dup", cur)
    assert code == 200
    cur["data"] = {"k": "two"}  # still the old resourceVersion
    code, body = await gateway.api("PUT", f"{NS}/configmaps/dup", cur)
    assert code == 409 and body["reason"] == "Conflict" and "has been modified" in body["message"]
    del stale
    bad_pod = pod("Bad_Name", "n", "c", "s")
    bad_pod["spec"]["containers"][0]["image"] = ""
    code, body = await gateway.api("POST", f"{NS}/pods", bad_pod)
    assert code == 422 and body["reason"] == "Invalid"
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"metadata.name", "spec.containers[0].image"} <= fields
    code, body = await gateway.api(
        "POST", f"{NS}/secrets", {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "%%%"}}
    )
    assert code == 422
    code, body = await gateway.api(
        "POST", f"{NS}/pods", {"kind": "ConfigMap", "metadata": {"name": "x"}}
    )
    assert code == 422  # kind does not match the URL

    def raw(
        method: str, path: str, data: bytes, ctype: str = "application/json"
    ) -> tuple[int, Any]:
        req = urllib.request.Request(gateway.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {gateway.token}")
        req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    code, body = await trio.to_thread.run_sync(raw, "POST", f"{NS}/configmaps", b"{not json")
    assert code == 400 and body["reason"] == "BadRequest"
    # Over the body limit: 413 from the headers alone, and the connection is
    # closed while the client may still be sending (then it sees a reset).
    try:
        code, body = await trio.to_thread.run_sync(
            raw, "POST", f"{NS}/configmaps", b"x" * (5 << 20)
        )
    except urllib.error.URLError as exc:
        assert isinstance(exc.reason, ConnectionResetError | BrokenPipeError)
    else:
        assert code == 413
    code, body = await trio.to_thread.run_sync(
        raw,
        "PATCH",
        f"{NS}/configmaps/dup",
        b'{"data": {"k": "patched", "extra": "1"}}',
        "application/merge-patch+json",
    )
    assert code == 200 and body["data"] == {"k": "patched", "extra": "1"}
    code, body = await gateway.api("GET", "/api/v1")
    assert code == 200 and {r["name"] for r in body["resources"]} >= {
        "pods",
        "nodes",
        "configmaps",
        "secrets",
    }
    # The gateway still serves after all of that.
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200


async def test_secret_string_data_and_selectors(gateway: Gateway) -> None:
    s = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "sd"},
        "stringData": {"pw": "hunter2"},
    }
    code, body = await gateway.api("POST", f"{NS}/secrets", s)
    assert code == 201 and "stringData" not in body
    assert base64.b64decode(body["data"]["pw"]) == b"hunter2"
    for i, node in enumerate(["a", "b", "a"]):
        c = cm(f"l{i}")
        c["metadata"]["labels"] = {"app": "x" if i < 2 else "y"}
        await gateway.api("POST", f"{NS}/configmaps", c)
        await gateway.api("POST", f"{NS}/pods", pod(f"p{i}", node, f"l{i}", "sd"))
    code, body = await gateway.api("GET", f"{NS}/configmaps?labelSelector=app%3Dx")
    assert [i["metadata"]["name"] for i in body["items"]] == ["l0", "l1"]
    code, body = await gateway.api("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Da")
    assert sorted(i["metadata"]["name"] for i in body["items"]) == ["p0", "p2"]


async def test_watch_replays_then_follows_and_expires(
    nursery: trio.Nursery, gateway: Gateway
) -> None:
    _code, first = await gateway.api("POST", f"{NS}/configmaps", cm("w1"))
    rv = int(first["metadata"]["resourceVersion"])
    await gateway.api("POST", f"{NS}/configmaps", cm("w2"))
    lines: list[dict[str, Any]] = []

    def watch() -> None:
        req = urllib.request.Request(
            f"{gateway.api_url}{NS}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=3"
        )
        req.add_header("Authorization", f"Bearer {gateway.token}")
        with urllib.request.urlopen(req) as resp:
            for line in resp:
                lines.append(json.loads(line))

    async def run_watch() -> None:
        await trio.to_thread.run_sync(watch)

    nursery.start_soon(run_watch)
    await wait_for(lambda: len(lines) >= 1)
    await gateway.api("DELETE", f"{NS}/configmaps/w1")
    await wait_for(lambda: len(lines) >= 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines[:2]] == [
        ("ADDED", "w2"),
        ("DELETED", "w1"),
    ]
    # A revision compacted away answers 410 Expired in the stream.
    await gateway.store.call(gateway.store.backend.compact, gateway.store.current_rev())
    out: list[dict[str, Any]] = []

    def old_watch() -> None:
        req = urllib.request.Request(f"{gateway.api_url}{NS}/configmaps?watch=1&resourceVersion=1")
        req.add_header("Authorization", f"Bearer {gateway.token}")
        with urllib.request.urlopen(req) as resp:
            out.extend(json.loads(line) for line in resp)

    await trio.to_thread.run_sync(old_watch)
    assert out[0]["type"] == "ERROR" and out[0]["object"]["code"] == 410


async def test_edgectl_apply_get_delete(gateway: Gateway, tmp_path: Any) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: b}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  nodeName: pi\n"
        "  containers: [{name: app, image: busybox}]\n"
    )
    base = ["--server", gateway.api_url, "--token", gateway.token]

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = ctl.main([*argv, *base], stdout=out, stderr=err, stdin=io.StringIO(""))
        return rc, out.getvalue(), err.getvalue()

    rc, out, err = await trio.to_thread.run_sync(run, "apply", "-f", str(manifest))
    assert rc == 0 and out.splitlines() == ["configmap/c1 created", "pod/web created"], err
    rc, out, _ = await trio.to_thread.run_sync(run, "apply", "-f", str(manifest))
    assert out.splitlines() == ["configmap/c1 unchanged", "pod/web unchanged"]
    rc, out, _ = await trio.to_thread.run_sync(run, "get", "po", "-o", "wide")
    assert rc == 0 and out.split()[:7] == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
    ]
    rc, out, _ = await trio.to_thread.run_sync(run, "get", "cm", "c1", "-o", "json")
    assert json.loads(out)["data"] == {"a": "b"}
    rc, out, err = await trio.to_thread.run_sync(run, "get", "pod", "nope")
    assert rc == 1 and err.startswith("Error from server (NotFound)")
    rc, _, err = await trio.to_thread.run_sync(run, "get", "widgets")
    assert rc == 1 and "doesn't have a resource type" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n")
    rc, _, err = await trio.to_thread.run_sync(run, "apply", "-f", str(bad))
    assert rc == 1 and "Invalid" in err
    rc, out, _ = await trio.to_thread.run_sync(run, "delete", "pod", "web")
    assert rc == 0 and out.strip() == 'pod "web" deleted'
    out_, err_ = io.StringIO(), io.StringIO()
    rc = await trio.to_thread.run_sync(
        lambda: ctl.main(
            ["get", "pods", "--server", "http://127.0.0.1:9", "--token", "x"],
            stdout=out_,
            stderr=err_,
        )
    )
    assert rc == 1 and "cannot reach the gateway" in err_.getvalue()


async def test_api_over_tls_with_kubeconfig_and_edgectl(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    from cloudgateway._cli import kubeconfig
    from tests.conftest import start_gateway

    gw = await start_gateway(nursery, tmp_path / "gw", api_tls=True)
    server = f"https://127.0.0.1:{gw.ports['api']}"
    config = kubeconfig(gw.data_dir, server)
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == server
    assert (
        base64.b64decode(cluster["certificate-authority-data"])
        == (gw.data_dir / "ca.crt").read_bytes()
    )
    assert config["users"][0]["user"]["token"] == gw.token

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = ctl.main(["--server", server, "--token", gw.token, *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    manifest = tmp_path / "cm.json"
    manifest.write_text(json.dumps(cm("over-tls")))
    ca = str(gw.data_dir / "ca.crt")
    rc, out, err = await trio.to_thread.run_sync(
        lambda: run("apply", "--certificate-authority", ca, "-f", str(manifest))
    )
    assert (rc, out.strip(), err) == (0, "configmap/over-tls created", "")
    # Without the gateway's CA the server is not trusted: a clear error, no request.
    rc, _, err = await trio.to_thread.run_sync(
        lambda: run("get", "--certificate-authority", "/etc/ssl/certs/ca-certificates.crt", "cm")
    )
    assert rc == 1 and "cannot reach the gateway" in err and "CERTIFICATE_VERIFY_FAILED" in err
    # Plain HTTP is not served on the TLS port: the token never crosses in clear.
    with pytest.raises(OSError):
        await gw.api("GET", "/api/v1/namespaces/default/configmaps/over-tls")
    gw.scope.cancel()
