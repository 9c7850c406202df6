"""Pods on a real containerd: run, report, logs, exec, delete."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio

from edgeagent.edged import PodNotFound
from edgeagent.edged._errors import ContainerNotRunning
from tests.conftest import wait_for

from .conftest import CGROUP_ROOT, Node, pod_cgroup_dirs, running


async def test_pod_with_configmap_volume_and_secret_env(nursery: trio.Nursery, node: Node) -> None:
    edged = await node.start(nursery)
    cm = {
        "kind": "ConfigMap",
        "metadata": {"name": "conf", "namespace": "default"},
        "data": {"greeting": "hello from a configmap"},
    }
    secret = {
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "creds", "namespace": "default"},
        "data": {"token": base64.b64encode(b"s3cret").decode()},
    }
    script = 'cat /etc/conf/greeting; echo; echo "token=$TOKEN"; exec sleep 3600'
    pod = node.pod(
        "web",
        [
            node.container(
                script=script,
                env=[
                    {
                        "name": "TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                    },
                    {"name": "LITERAL", "value": "x-$(TOKEN)"},
                ],
                volumeMounts=[{"name": "conf", "mountPath": "/etc/conf"}],
                workingDir="/tmp",
            )
        ],
        volumes=[{"name": "conf", "configMap": {"name": "conf"}}],
    )
    await node.put(cm, secret, pod)
    st = await node.wait_status("web", running)
    assert st["podIP"]
    assert st["conditions"][-1] == {
        "type": "Ready",
        "status": "True",
        "lastTransitionTime": st["conditions"][-1]["lastTransitionTime"],
    }
    cs = st["containerStatuses"][0]
    assert cs["restartCount"] == 0 and cs["ready"] and cs["containerID"].startswith("containerd://")

    async def logs() -> bytes:
        return b"".join(
            [chunk async for chunk in edged.read_logs("default", "web", None, None, False)]
        )

    async def printed() -> bool:
        return b"token=s3cret" in await logs()

    await wait_for(printed)
    assert await logs() == b"hello from a configmap\ntoken=s3cret\n"
    tail = b"".join([c async for c in edged.read_logs("default", "web", "main", 1, False)])
    assert tail == b"token=s3cret\n"

    code, stdout, stderr = await edged.exec_sync(
        "default", "web", None, ["sh", "-c", "echo $LITERAL; pwd; echo oops >&2; exit 3"], 5
    )
    assert (code, stdout, stderr) == (3, b"x-s3cret\n/tmp\n", b"oops\n")

    # The ConfigMap changes: the file in the running container follows (atomic swap).
    cm["data"] = {"greeting": "updated"}
    await node.put(cm)

    async def updated() -> bool:
        _, out, _ = await edged.exec_sync("default", "web", None, ["cat", "/etc/conf/greeting"], 5)
        return out == b"updated"

    await wait_for(updated, timeout=10, interval=0.05)

    uid = pod["metadata"]["uid"]
    assert pod_cgroup_dirs(uid)
    assert await trio.to_thread.run_sync((node.data_dir / "pods" / uid).is_dir)
    await node.delete("pods/default/web")

    async def gone() -> bool:
        left = await edged_runtime_ids(node, uid)
        host = await trio.to_thread.run_sync(pod_dir_or_cgroups_left, node, uid)
        return not left and not host

    await wait_for(gone, timeout=15, interval=0.1)


def pod_dir_or_cgroups_left(node: Node, uid: str) -> bool:
    return bool(pod_cgroup_dirs(uid)) or (node.data_dir / "pods" / uid).exists()


async def edged_runtime_ids(node: Node, uid: str) -> list[str]:
    """Sandboxes and containers labelled with this pod uid, as containerd lists them."""
    out = await trio.to_thread.run_sync(
        node.containerd.ctr, "containers", "ls", f'labels."io.kubernetes.pod.uid"=={uid}', "-q"
    )
    return out.split()


async def test_follow_logs_until_exit_and_lookup_errors(nursery: trio.Nursery, node: Node) -> None:
    edged = await node.start(nursery)
    script = "for i in 1 2 3; do echo line$i; sleep 0.3; done; printf partial"
    await node.put(node.pod("talker", [node.container(script=script)], restartPolicy="Never"))
    await node.wait_status("talker", lambda s: s["phase"] in ("Running", "Succeeded"))
    chunks = []
    with trio.fail_after(15):
        async for chunk in edged.read_logs("default", "talker", "main", None, True):
            chunks.append(chunk)
    assert b"".join(chunks) == b"line1\nline2\nline3\npartial"
    with pytest.raises(PodNotFound):
        await edged.exec_sync("default", "no-such-pod", None, ["true"], 1)
    with pytest.raises(PodNotFound):
        await edged.exec_sync("default", "talker", "sidecar", ["true"], 1)
    with pytest.raises(ContainerNotRunning):
        await edged.exec_sync("default", "talker", None, ["true"], 1)


async def test_resources_security_context_and_spec_change(
    nursery: trio.Nursery, node: Node
) -> None:
    edged = await node.start(nursery)
    c = node.container(
        resources={"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
        securityContext={"runAsUser": 65534, "runAsGroup": 65534},
    )
    pod = node.pod("limited", [c])
    await node.put(pod)
    st = await node.wait_status("limited", running)
    cid = st["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    assert st["qosClass"] == "Burstable"
    _, out, _ = await edged.exec_sync("default", "limited", None, ["id", "-u"], 5)
    assert out == b"65534\n"
    uid = pod["metadata"]["uid"]

    def cgroup_values() -> tuple[str, str, str]:
        base = f"{CGROUP_ROOT.strip('/')}/pod{uid}/{cid}"
        read = lambda ctl, f: (Path("/sys/fs/cgroup") / ctl / base / f).read_text().strip()  # noqa: E731
        return (
            read("memory", "memory.limit_in_bytes"),
            read("cpu", "cpu.cfs_quota_us"),
            read("cpu", "cpu.shares"),
        )

    assert await trio.to_thread.run_sync(cgroup_values) == (str(64 << 20), "50000", "256")

    # A changed container spec replaces the running container.
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", "echo v2; exec sleep 3600"]
    await node.put(pod)
    st = await node.wait_status(
        "limited",
        lambda s: running(s) and s["containerStatuses"][0]["containerID"] != f"containerd://{cid}",
    )
    assert st["containerStatuses"][0]["restartCount"] == 1
