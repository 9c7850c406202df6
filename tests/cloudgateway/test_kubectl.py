"""kubectl 1.32 itself, black-box, against a real gateway over TLS: namespaces,
typed writes (protobuf bodies), paging, server dry runs, diff, events, access
reviews, version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.conftest import Gateway, start_gateway


def kubectl_132() -> str:
    """kubectl 1.32: the versioned binary beside a version-dispatching
    ``kubectl`` (which would pick the server's minor, 1.30), else ``kubectl``."""
    found = shutil.which("kubectl.1.32")
    if found:
        return found
    plain = shutil.which("kubectl") or "kubectl"
    beside = os.path.join(os.path.dirname(os.path.realpath(plain)), "kubectl.1.32")
    return beside if os.path.exists(beside) else plain


KUBECTL = kubectl_132()


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> Gateway:
    return await start_gateway(nursery, tmp_path / "gw", api_tls=True)


async def run(gw: Gateway, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    from cloudgateway._cli import kubeconfig

    config = gw.data_dir.parent / "kubeconfig"
    if not config.exists():
        server = f"https://127.0.0.1:{gw.ports['api']}"
        config.write_text(json.dumps(kubeconfig(gw.data_dir, server)))

    def go() -> tuple[int, str, str]:
        p = subprocess.run(
            [KUBECTL, "--kubeconfig", str(config), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout, p.stderr

    return await trio.to_thread.run_sync(go)


async def ok(gw: Gateway, *argv: str, stdin: str = "") -> str:
    code, out, err = await run(gw, *argv, stdin=stdin)
    assert code == 0, (argv, out, err)
    return out


async def test_kubectl_version_is_132() -> None:
    def go() -> str:
        return subprocess.run(
            [KUBECTL, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    info = json.loads(await trio.to_thread.run_sync(go))
    assert info["clientVersion"]["minor"] == "32"


async def test_kubectl_namespaces_and_typed_writes(gw: Gateway) -> None:
    out = await ok(gw, "get", "ns", "-o", "name")
    assert out.split() == [
        "namespace/default",
        "namespace/kube-node-lease",
        "namespace/kube-public",
        "namespace/kube-system",
    ]
    # kubectl 1.32 sends these as protobuf.
    assert await ok(gw, "create", "namespace", "team") == "namespace/team created\n"
    manifest = gw.data_dir.parent / "ns.json"
    manifest.write_text(
        json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t2"}})
    )
    assert await ok(gw, "apply", "-f", str(manifest)) == "namespace/t2 created\n"
    await ok(
        gw, "-n", "team", "create", "configmap", "x", "--from-literal=a=b", "--from-literal=e="
    )
    await ok(gw, "-n", "team", "create", "secret", "generic", "y", "--from-literal=a=b")
    cm = (await gw.store.get("configmaps/team/x")).value
    assert cm["data"] == {"a": "b", "e": ""}
    assert cm["metadata"]["creationTimestamp"] and "generateName" not in cm["metadata"]
    secret = (await gw.store.get("secrets/team/y")).value
    assert secret["data"] == {"a": "Yg=="} and secret["type"] == "Opaque"
    code, _, err = await run(gw, "-n", "nowhere", "create", "configmap", "z", "--from-literal=a=b")
    assert code == 1 and 'namespaces "nowhere" not found' in err
    out = await ok(gw, "explain", "namespace.status.phase")
    assert "FIELD: phase <string>" in out
    out = await ok(gw, "get", "ns", "team")
    assert out.split()[3:5] == ["team", "Active"]
    assert await ok(gw, "delete", "ns", "team") == 'namespace "team" deleted\n'
    records, _ = await gw.store.list("configmaps/team/")
    assert records == []
    code, _, err = await run(gw, "delete", "ns", "default")
    assert code == 1 and "may not be deleted" in err


async def test_kubectl_chunks_dry_runs_and_diffs(gw: Gateway, tmp_path: Path) -> None:
    for i in range(5):
        await ok(gw, "create", "configmap", f"c{i}", f"--from-literal=i={i}")
    code, out, err = await run(gw, "get", "cm", "--chunk-size=2", "-o", "name", "-v=6")
    assert code == 0 and out.split() == [f"configmap/c{i}" for i in range(5)]
    assert err.count("limit=2") == 3 and err.count("continue=") == 2
    manifest = tmp_path / "cm.json"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c0"}, "data": {"i": "9"}}
    manifest.write_text(json.dumps(doc))
    rev = gw.store.current_rev()
    out = await ok(gw, "apply", "--dry-run=server", "-f", str(manifest))
    assert "(server dry run)" in out
    code, out, err = await run(gw, "diff", "-f", str(manifest))
    assert code == 1, err  # 1: there are differences
    assert '-  i: "0"' in out and '+  i: "9"' in out
    out = await ok(gw, "delete", "cm", "--all", "--dry-run=server")
    assert out.count("(server dry run)") == 5
    out = await ok(gw, "delete", "cm", "c1", "--dry-run=server")
    assert gw.store.current_rev() == rev
    assert (await gw.store.get("configmaps/default/c0")).value["data"] == {"i": "0"}
    await ok(gw, "delete", "cm", "-l", "nothing-has-this")
    assert gw.store.current_rev() == rev


async def test_kubectl_events_auth_version_and_cluster_info(gw: Gateway) -> None:
    for name, kind, about in (("e1", "Node", "pi-01"), ("e2", "Node", "pi-02"), ("e3", "Pod", "x")):
        await gw.store.create(
            f"events/default/{name}",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": {"apiVersion": "v1", "kind": kind, "name": about},
                "reason": f"Reason-{name}",
                "message": "m",
                "type": "Normal",
            },
        )
    out = await ok(gw, "events", "--for", "node/pi-01")
    assert "Reason-e1" in out and "Reason-e2" not in out and "Reason-e3" not in out
    out = await ok(gw, "get", "events", "--field-selector", "involvedObject.name=x", "-o", "name")
    assert out.split() == ["event/e3"]
    assert await ok(gw, "auth", "can-i", "create", "pods") == "yes\n"
    assert await ok(gw, "auth", "can-i", "delete", "devices.devices.kubeedge.io") == "yes\n"
    out = await ok(gw, "auth", "can-i", "--list")
    assert "*.*" in out
    out = await ok(gw, "cluster-info")
    assert f"Kubernetes control plane is running at https://127.0.0.1:{gw.ports['api']}" in out
    out = await ok(gw, "version", "-o", "json")
    assert json.loads(out)["serverVersion"]["gitVersion"] == "v1.30.0-edgeflock"
