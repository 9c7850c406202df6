"""Bad input becomes a clear status, nothing crashes, other pods are untouched."""

from __future__ import annotations

import trio

from .conftest import Node, running, waiting_reason


def message(st: dict, container: str = "main") -> str:  # type: ignore[type-arg]
    for c in st.get("containerStatuses", []):
        if c["name"] == container:
            return str(c["state"].get("waiting", {}).get("message", ""))
    return ""


async def test_bad_pods_report_reasons_and_leave_others_alone(
    nursery: trio.Nursery, node: Node
) -> None:
    await node.start(nursery)
    good = node.pod("good", [node.container()])
    await node.put(good)
    good_st = await node.wait_status("good", running)
    good_id = good_st["containerStatuses"][0]["containerID"]

    img = node.containerd.image
    missing = node.pod(
        "missing-image",
        [{"name": "main", "image": "localhost:1/nope/missing:1", "command": ["true"]}],
    )
    never = node.pod(
        "never-pull",
        [{"name": "main", "image": "localhost/absent:2", "imagePullPolicy": "Never"}],
    )
    badcmd = node.pod(
        "bad-command", [{"name": "main", "image": img, "command": ["/no/such/binary"]}]
    )
    nocm = node.pod(
        "no-configmap",
        [node.container(volumeMounts=[{"name": "c", "mountPath": "/c"}])],
        volumes=[{"name": "c", "configMap": {"name": "absent-cm"}}],
    )
    nosecret = node.pod(
        "no-secret",
        [
            node.container(
                env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
            )
        ],
    )
    await node.put(missing, never, badcmd, nocm, nosecret)

    st = await node.wait_status("missing-image", lambda s: waiting_reason(s) == "ImagePullBackOff")
    assert st["phase"] == "Pending"
    await node.wait_status("missing-image", lambda s: waiting_reason(s) == "ErrImagePull")
    assert "localhost:1/nope/missing:1" in message(
        await node.wait_status("missing-image", lambda s: waiting_reason(s) == "ErrImagePull")
    )
    st = await node.wait_status("never-pull", lambda s: waiting_reason(s) == "ErrImageNeverPull")
    assert (
        message(st)
        == 'Container image "localhost/absent:2" is not present with pull policy of Never'
    )
    st = await node.wait_status(
        "bad-command", lambda s: waiting_reason(s) in ("RunContainerError", "CrashLoopBackOff")
    )
    st = await node.wait_status(
        "bad-command",
        lambda s: (
            s["containerStatuses"][0]["lastState"].get("terminated", {}).get("exitCode") == 128
        ),
    )
    assert "/no/such/binary" in str(
        st["containerStatuses"][0]["lastState"]["terminated"].get("message", "")
    ) + message(st)
    st = await node.wait_status("no-configmap", lambda s: s.get("reason") == "FailedMount")
    assert st["phase"] == "Pending"
    assert message(st) == 'volume "c": configmap "absent-cm" not found'
    assert waiting_reason(st) == "ContainerCreating"
    st = await node.wait_status(
        "no-secret", lambda s: waiting_reason(s) == "CreateContainerConfigError"
    )
    assert message(st) == 'secret "absent" not found'

    # The missing objects arrive: those pods start.
    await node.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "absent-cm", "namespace": "default"},
            "data": {"a": "1"},
        },
        {
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "absent", "namespace": "default"},
            "data": {"k": "eA=="},
        },
    )
    await node.wait_status("no-configmap", running)
    await node.wait_status("no-secret", running)

    # The good pod never moved.
    st = await node.status("good")
    assert st is not None and running(st)
    assert st["containerStatuses"][0]["containerID"] == good_id
    assert st["containerStatuses"][0]["restartCount"] == 0


async def test_containerd_down_and_back(nursery: trio.Nursery, node: Node) -> None:
    await node.start(nursery)
    await node.put(node.pod("steady", [node.container()]))
    st = await node.wait_status("steady", running)
    cid = st["containerStatuses"][0]["containerID"]
    await trio.to_thread.run_sync(node.containerd.kill)
    try:
        st = await node.wait_status("steady", lambda s: s.get("reason") == "ContainerRuntimeDown")
        ready = {c["type"]: c for c in st["conditions"]}["Ready"]
        assert ready["status"] == "False" and ready["reason"] == "ContainerRuntimeDown"
        # A pod that arrives while containerd is down waits, it does not crash anything.
        await node.put(node.pod("late", [node.container()]))
        st = await node.wait_status("late", lambda s: s.get("reason") == "ContainerRuntimeDown")
        assert st["phase"] == "Pending"
    finally:
        await trio.to_thread.run_sync(node.containerd.start)
    st = await node.wait_status("steady", lambda s: running(s) and "reason" not in s)
    assert st["containerStatuses"][0]["containerID"] == cid  # adopted: the shim kept it running
    assert st["containerStatuses"][0]["restartCount"] == 0
    await node.wait_status("late", running)
