"""edgectl label/annotate/taint/cordon/uncordon against a real gateway, and
kubectl 1.32's own label/annotate/taint/cordon/uncordon against the same API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cloudgateway.test_kubectl import ok, run
from tests.conftest import Gateway, edgectl, join_node, start_gateway


async def node(gw: Gateway, name: str) -> dict[str, Any]:
    code, body = await gw.api("GET", f"/api/v1/nodes/{name}")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def ctl_ok(gw: Gateway, *argv: str) -> str:
    code, out, err = await gw.edgectl(*argv)
    assert code == 0, (argv, out, err)
    return out


async def test_edgectl_label_and_annotate(gateway: Gateway, tmp_path: Path) -> None:
    await join_node(gateway, "pi-01", tmp_path / "pi")
    assert await ctl_ok(gateway, "label", "node", "pi-01", "site=a", "rack=3") == (
        "node/pi-01 labeled\n"
    )
    labels = (await node(gateway, "pi-01"))["metadata"]["labels"]
    assert labels["site"] == "a" and labels["rack"] == "3"
    assert labels["node-role.kubernetes.io/edge"] == ""

    # Changing a value needs --overwrite, as kubectl says; nothing is written.
    rv = (await node(gateway, "pi-01"))["metadata"]["resourceVersion"]
    code, out, err = await gateway.edgectl("label", "node", "pi-01", "site=b", "x=1")
    assert code == 1 and err == "error: 'site' already has a value (a), and --overwrite is false\n"
    assert (await node(gateway, "pi-01"))["metadata"]["resourceVersion"] == rv
    # The same value again is no change.
    assert await ctl_ok(gateway, "label", "no", "pi-01", "site=a") == "node/pi-01 not labeled\n"
    out = await ctl_ok(gateway, "label", "nodes/pi-01", "site=b", "rack-", "gone-", "--overwrite")
    assert out == 'label "gone" not found.\nnode/pi-01 labeled\n'
    labels = (await node(gateway, "pi-01"))["metadata"]["labels"]
    assert labels["site"] == "b" and "rack" not in labels

    # Bad input: a usage error, naming it.
    for argv, words in (
        (["label", "node", "pi-01", "site=a b"], "invalid label value 'a b'"),
        (["label", "node", "pi-01", "bad_=1"], "invalid label key"),
        (["label", "node", "pi-01", "k=1", "k-"], "can not both modify and remove"),
        (["label", "node", "pi-01"], "at least one label update is required"),
        (["label", "node", "site=a"], "give the name of the node"),
        (["label", "gizmo", "x", "a=b"], 'doesn\'t have a resource type "gizmo"'),
    ):
        code, _, err = await gateway.edgectl(*argv)
        assert code in (1, 2) and words in err, (argv, err)
    code, _, err = await gateway.edgectl("label", "node", "pi-99", "a=b")
    assert code == 1 and "NotFound" in err

    # Any kind: a pod, in a namespace; annotations with any value.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"app": "x"}},
        "spec": {"nodeName": "pi-01", "containers": [{"name": "c", "image": "busybox"}]},
    }
    code, body = await gateway.api("POST", "/api/v1/namespaces/default/pods", pod)
    assert code == 201, body
    assert await ctl_ok(gateway, "label", "pod", "p", "tier=web") == "pod/p labeled\n"
    out = await ctl_ok(gateway, "annotate", "po", "p", "note=hello world: 1", "-n", "default")
    assert out == "pod/p annotated\n"
    code, got = await gateway.api("GET", "/api/v1/namespaces/default/pods/p")
    assert got["metadata"]["labels"] == {"app": "x", "tier": "web"}
    assert got["metadata"]["annotations"] == {"note": "hello world: 1"}
    code, _, err = await gateway.edgectl("annotate", "pod", "p", "note=other")
    assert code == 1 and "'note' already has a value (hello world: 1)" in err
    await ctl_ok(gateway, "annotate", "pod", "p", "note-", "a=1")
    code, got = await gateway.api("GET", "/api/v1/namespaces/default/pods/p")
    assert got["metadata"]["annotations"] == {"a": "1"}


async def test_edgectl_taint_cordon_uncordon(gateway: Gateway, tmp_path: Path) -> None:
    await join_node(gateway, "pi-02", tmp_path / "pi")
    out = await ctl_ok(
        gateway, "taint", "node", "pi-02", "dedicated=ml:NoSchedule", "flaky:NoExecute"
    )
    assert out == "node/pi-02 tainted\n"
    taints = (await node(gateway, "pi-02"))["spec"]["taints"]
    assert taints[0] == {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    assert taints[1]["key"] == "flaky" and taints[1]["effect"] == "NoExecute"
    assert taints[1]["timeAdded"].endswith("Z")

    code, _, err = await gateway.edgectl("taint", "node", "pi-02", "dedicated=gpu:NoSchedule")
    assert code == 1 and "already has dedicated taint(s) with same effect(s)" in err
    out = await ctl_ok(gateway, "taint", "node", "pi-02", "dedicated=gpu:NoSchedule", "--overwrite")
    assert out == "node/pi-02 tainted\n"
    taints = (await node(gateway, "pi-02"))["spec"]["taints"]
    assert taints[0] == {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    # Same key, another effect: a second taint.
    await ctl_ok(gateway, "taint", "node", "pi-02", "dedicated=gpu:PreferNoSchedule")
    out = await ctl_ok(gateway, "taint", "node", "pi-02", "dedicated:NoSchedule-", "x=1:NoSchedule")
    assert out == "node/pi-02 modified\n"
    keys = [(t["key"], t["effect"]) for t in (await node(gateway, "pi-02"))["spec"]["taints"]]
    assert keys == [("flaky", "NoExecute"), ("dedicated", "PreferNoSchedule"), ("x", "NoSchedule")]
    assert await ctl_ok(gateway, "taint", "node", "pi-02", "dedicated-", "flaky-", "x-") == (
        "node/pi-02 untainted\n"
    )
    assert "taints" not in (await node(gateway, "pi-02"))["spec"]
    code, _, err = await gateway.edgectl("taint", "node", "pi-02", "nothere-")
    assert code == 1 and 'taint "nothere" not found' in err
    for spec, words in (
        ("k=v", "expected key[=value]:Effect"),
        ("k=v:Sometimes", "the effect must be one of"),
        ("k=a b:NoSchedule", "not a valid taint value"),
        ("k=:NoSchedule", "an '=' needs a value"),
    ):
        code, _, err = await gateway.edgectl("taint", "node", "pi-02", spec)
        assert code == 2 and f"invalid taint spec: {spec}" in err and words in err, err
    code, _, err = await gateway.edgectl("taint", "pod", "p", "k=v:NoSchedule")
    assert code == 2 and "only nodes can be tainted" in err

    assert await ctl_ok(gateway, "cordon", "pi-02") == "node/pi-02 cordoned\n"
    assert (await node(gateway, "pi-02"))["spec"]["unschedulable"] is True
    assert await ctl_ok(gateway, "cordon", "node/pi-02") == "node/pi-02 already cordoned\n"
    assert await ctl_ok(gateway, "uncordon", "pi-02") == "node/pi-02 uncordoned\n"
    assert "unschedulable" not in (await node(gateway, "pi-02"))["spec"]
    assert await ctl_ok(gateway, "uncordon", "pi-02") == "node/pi-02 already uncordoned\n"
    code, _, err = await gateway.edgectl("cordon", "pi-99")
    assert code == 1 and "NotFound" in err


async def test_edgectl_label_retries_on_a_concurrent_write(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Label and annotate in parallel, many times: every change lands (a
    conflict on the resourceVersion is read again, never lost)."""
    await join_node(gateway, "pi-03", tmp_path / "pi")
    async with trio.open_nursery() as n:
        for i in range(6):
            n.start_soon(ctl_ok, gateway, "label", "node", "pi-03", f"l{i}=v")
            n.start_soon(ctl_ok, gateway, "annotate", "node", "pi-03", f"a{i}=v")
    meta = (await node(gateway, "pi-03"))["metadata"]
    assert {f"l{i}" for i in range(6)} <= set(meta["labels"])
    assert set(meta["annotations"]) == {f"a{i}" for i in range(6)}


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> Gateway:
    return await start_gateway(nursery, tmp_path / "gw", api_tls=True)


async def test_kubectl_label_annotate_taint_cordon(gw: Gateway, tmp_path: Path) -> None:
    await join_node(gw, "pi-k", tmp_path / "pi")
    assert await ok(gw, "label", "node", "pi-k", "site=a") == "node/pi-k labeled\n"
    code, _, err = await run(gw, "label", "node", "pi-k", "site=b")
    assert code == 1 and "--overwrite is false" in err
    assert await ok(gw, "label", "node", "pi-k", "site=b", "--overwrite") == "node/pi-k labeled\n"
    assert await ok(gw, "annotate", "node", "pi-k", "note=x") == "node/pi-k annotated\n"
    out = await ok(gw, "get", "nodes", "-l", "site=b", "-o", "name")
    assert out == "node/pi-k\n"
    assert await ok(gw, "taint", "node", "pi-k", "dedicated=ml:NoSchedule") == (
        "node/pi-k tainted\n"
    )
    assert await ok(gw, "cordon", "pi-k") == "node/pi-k cordoned\n"
    n = (await gw.store.get("nodes//pi-k")).value
    assert n["metadata"]["labels"]["site"] == "b"
    assert n["metadata"]["annotations"]["note"] == "x"
    assert n["spec"]["taints"] == [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    assert n["spec"]["unschedulable"] is True
    out = await ok(gw, "get", "node", "pi-k")
    assert out.splitlines()[1].split()[:3] == ["pi-k", "Unknown,SchedulingDisabled", "edge"]
    assert await ok(gw, "taint", "node", "pi-k", "dedicated-") == "node/pi-k untainted\n"
    assert await ok(gw, "uncordon", "pi-k") == "node/pi-k uncordoned\n"
    assert await ok(gw, "label", "node", "pi-k", "site-") == "node/pi-k unlabeled\n"
    n = (await gw.store.get("nodes//pi-k")).value
    assert "site" not in n["metadata"]["labels"]
    assert "taints" not in n["spec"] and not n["spec"].get("unschedulable")
    # What edgectl wrote, kubectl reads back, and the other way round.
    code, out, err = await edgectl(
        "--server", f"https://127.0.0.1:{gw.ports['api']}", "--token", gw.token,
        "--certificate-authority", str(gw.data_dir / "ca.crt"), "label", "node", "pi-k", "by=ctl",
    )  # fmt: skip
    assert code == 0, err
    assert await ok(gw, "get", "node", "pi-k", "-o", "jsonpath={.metadata.labels.by}") == "ctl"
