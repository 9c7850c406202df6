"""``top`` for the edge, end to end on a real containerd: the agent measures its
node (/proc) and its containers (CRI ListContainerStats) and reports them
through the outbox; the gateway serves them as metrics.k8s.io, and kubectl
1.32's ``top`` and ``edgectl top`` print them. A pod that burns CPU shows more
CPU than an idle one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from edgeagent.edged._cri import pb
from edgeagent.edged._edged import open_cri_client
from edgeagent.edged._model import LABEL_NAME
from edgeproto.usage import NodeUsage
from tests.cloudgateway.test_kubectl import ok, run
from tests.conftest import edgectl, join_node, start_agent, start_gateway, wait_for

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NODE = "pi-top"


def pod(name: str, script: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                }
            ],
        },
    }


def rates(usage: NodeUsage | None) -> dict[str, int]:
    """Pod name -> nanocores, from a node's latest reported usage."""
    if usage is None:
        return {}
    return {p.name: sum(c.usage.rate for c in p.containers) for p in usage.pods}


def table(out: str) -> dict[str, list[str]]:
    """``kubectl top`` output: first column -> the other columns."""
    lines = out.splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


async def test_top_nodes_and_pods_with_kubectl_and_edgectl(
    nursery: trio.Nursery, tmp_path: Path, containerd: Containerd
) -> None:
    cg_existed = default_cgroup_exists()
    gw = await start_gateway(nursery, tmp_path / "gw", api_tls=True)
    await join_node(gw, NODE, tmp_path / "agent")
    agent = await start_agent(
        nursery, tmp_path / "agent", cri=containerd.address, stats_interval=0.5
    )
    try:
        for name, script in (("burner", "while :; do :; done"), ("idler", "exec sleep 3600")):
            manifest = tmp_path / f"{name}.json"
            manifest.write_text(json.dumps(pod(name, script, containerd.image)))
            await ok(gw, "apply", "-f", str(manifest))
        usage = gw.running.hub.usage

        def burning() -> dict[str, int] | None:
            r = rates(usage.get(NODE))
            busy = r.get("burner", 0) >= 100_000_000  # a tenth of a core at least
            return r if busy and "idler" in r else None

        got = await wait_for(burning, timeout=60, interval=0.1, what=lambda: repr(usage.items()))
        assert got["burner"] > 10 * got["idler"]
        node = usage.get(NODE)
        assert node is not None and node.node.memory > 0 and node.node.rate > 0
        # the agent's call went over grpcio (the default); edged's own h2 client asks the same
        h2 = open_cri_client(containerd.address, "h2", concurrency=1, timeout=10)
        try:
            resp = await h2.call("ListContainerStats", pb.ListContainerStatsRequest())
        finally:
            h2.close()
        burner = [s for s in resp.stats if s.attributes.labels.get(LABEL_NAME) == "burner"]
        assert burner and burner[0].cpu.usage_core_nano_seconds.value > 0

        # kubectl 1.32 itself, through discovery and metrics.k8s.io/v1beta1
        pods = table(await ok(gw, "top", "pods"))
        assert set(pods) == {"burner", "idler"}, pods
        burner_m, idler_m = (int(pods[p][0].removesuffix("m")) for p in ("burner", "idler"))
        assert burner_m >= 50 and burner_m > idler_m, pods
        assert all(v[1].endswith("Mi") for v in pods.values())
        nodes = table(await ok(gw, "top", "nodes"))
        cpu, cpu_share, memory, memory_share = nodes[NODE]
        assert int(cpu.removesuffix("m")) > 0 and cpu_share.endswith("%")
        assert int(memory.removesuffix("Mi")) > 0 and 0 < int(memory_share.removesuffix("%")) <= 100
        out = await ok(gw, "top", "pod", "burner", "--containers")
        assert table(out)["burner"][0] == "main"
        out = await ok(gw, "top", "pods", "-l", "app=idler")
        assert set(table(out)) == {"idler"}

        # edgectl top, over the same HTTPS API
        flags = [
            "--server", f"https://127.0.0.1:{gw.ports['api']}", "--token", gw.token,
            "--certificate-authority", str(gw.data_dir / "ca.crt"),
        ]  # fmt: skip
        rc, out, err = await edgectl(*flags, "top", "pods")
        assert rc == 0, err
        assert set(table(out)) == {"burner", "idler"}
        assert int(table(out)["burner"][0].removesuffix("m")) > 0
        rc, out, err = await edgectl(*flags, "top", "nodes")
        assert rc == 0, err
        assert out.split()[:5] == ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
        assert int(table(out)[NODE][2].removesuffix("Mi")) > 0

        # a pod that does not exist: 404 from the metrics API, as metrics-server answers
        code, _, err = await run(gw, "top", "pod", "nothere")
        assert code == 1 and 'podmetrics.metrics.k8s.io "default/nothere" not found' in err, err
        rc, _, err = await edgectl(*flags, "top", "pods", "nothere")
        assert rc == 1 and "(NotFound)" in err and "default/nothere" in err, err
        raw = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nothere"
        code, _, err = await run(gw, "get", "--raw", raw)
        assert code == 1 and "NotFound" in err, err
    finally:
        # the burner must not outlive the test: delete the pods, wait for their containers
        with trio.move_on_after(30):
            await run(gw, "delete", "pods", "burner", "idler", "--ignore-not-found")

            def gone() -> bool:
                label = f'labels."io.edgeflock.node"=={NODE}'
                return not containerd.ctr("containers", "ls", "-q", label).split()

            await wait_for(gone, timeout=30, interval=0.2)
        await agent.stop()
        gw.scope.cancel()
        if not cg_existed:
            remove_empty_default_cgroup()
