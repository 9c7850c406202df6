"""Restart policies, crash-loop back-off, probes and init containers on a real containerd."""

from __future__ import annotations

import re
from typing import Any

import trio

from tests.conftest import wait_for

from .conftest import Node, running, waiting_reason


def main_status(st: dict[str, Any]) -> dict[str, Any]:
    return dict(st["containerStatuses"][0])


async def test_crash_loop_backoff_grows(nursery: trio.Nursery, node: Node) -> None:
    await node.start(nursery)
    await node.put(node.pod("crash", [node.container(script="echo boom; exit 1")]))
    delays: list[float] = []
    restarts: list[int] = []

    async def three_back_offs_seen() -> bool:  # samples each status it polls
        st = await node.status("crash")
        if st is not None:
            cs = main_status(st)
            restarts.append(cs["restartCount"])
            if waiting_reason(st) == "CrashLoopBackOff":
                m = re.match(
                    r"back-off ([0-9.]+)s restarting failed container=main",
                    cs["state"]["waiting"]["message"],
                )
                assert m, cs
                if not delays or float(m.group(1)) != delays[-1]:
                    delays.append(float(m.group(1)))
                assert cs["lastState"]["terminated"]["exitCode"] == 1
                assert cs["lastState"]["terminated"]["reason"] == "Error"
                assert st["phase"] == "Running"  # restartPolicy Always, it ran before
        return len(delays) >= 3

    await wait_for(three_back_offs_seen, timeout=30, interval=0.05)
    assert delays == [0.5, 1.0, 2.0]  # base 0.5 s doubling (kubelet: 10 s doubling to 300 s)
    assert restarts == sorted(restarts) and restarts[-1] >= 2


async def test_liveness_failure_restarts_container(nursery: trio.Nursery, node: Node) -> None:
    await node.start(nursery)
    script = "touch /tmp/healthy; sleep 1.5; rm /tmp/healthy; exec sleep 3600"
    probe = {
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 0.3,
        "failureThreshold": 2,
    }
    await node.put(node.pod("live", [node.container(script=script, livenessProbe=probe)]))
    first = await node.wait_status("live", running)
    first_id = main_status(first)["containerID"]
    st = await node.wait_status(
        "live", lambda s: main_status(s)["restartCount"] >= 1 and running(s), timeout=20
    )
    cs = main_status(st)
    assert cs["containerID"] != first_id
    assert cs["lastState"]["terminated"]["containerID"] == first_id
    assert (
        cs["lastState"]["terminated"]["exitCode"] == 137
    )  # killed (sleep ignores SIGTERM as PID 1)


async def test_restart_policies_and_init_containers(nursery: trio.Nursery, node: Node) -> None:
    edged = await node.start(nursery)
    vol = [{"name": "work", "emptyDir": {}}]
    mount = [{"name": "work", "mountPath": "/work"}]
    init = {
        "name": "setup",
        "image": node.containerd.image,
        "command": ["sh", "-c", "echo prepared > /work/ready"],
        "volumeMounts": mount,
    }
    ok = node.pod(
        "job-ok",
        [node.container(script="cat /work/ready", volumeMounts=mount)],
        initContainers=[init],
        volumes=vol,
        restartPolicy="OnFailure",
    )
    bad = node.pod("job-bad", [node.container(script="exit 2")], restartPolicy="Never")
    await node.put(ok, bad)
    st = await node.wait_status("job-ok", lambda s: s["phase"] == "Succeeded")
    assert st["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert main_status(st)["state"]["terminated"]["exitCode"] == 0
    assert main_status(st)["restartCount"] == 0
    logs = b"".join([c async for c in edged.read_logs("default", "job-ok", None, None, False)])
    assert logs == b"prepared\n"
    st = await node.wait_status("job-bad", lambda s: s["phase"] == "Failed")
    assert main_status(st)["state"]["terminated"]["exitCode"] == 2
    # Never: no restart. What is tested is that nothing happens, so time must
    # pass: twice the first restart back-off (0.5 s), on real containerd where
    # autojump_clock cannot reach.
    await trio.sleep(1.0)
    st2 = await node.status("job-bad")
    assert st2 is not None and main_status(st2)["restartCount"] == 0


async def test_readiness_http_and_tcp_probes(nursery: trio.Nursery, node: Node) -> None:
    await node.start(nursery)
    web = node.container(
        "web",
        script="mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 0.3},
    )
    closed = node.container(
        "closed",
        readinessProbe={"tcpSocket": {"port": 9}, "periodSeconds": 0.3},
    )
    await node.put(node.pod("probed", [web, closed]))
    st = await node.wait_status(
        "probed",
        lambda s: s["phase"] == "Running" and s["containerStatuses"][0]["ready"],
    )
    assert [c["ready"] for c in st["containerStatuses"]] == [True, False]
    ready = {c["type"]: c["status"] for c in st["conditions"]}
    assert ready["Ready"] == "False" and ready["ContainersReady"] == "False"
    assert st["podIP"] and st["podIP"] != st["hostIP"]
