"""Logs and exec from the cloud against real containers: edgectl → gateway API →
the node's hub connection → edged → containerd, and the output back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.conftest import join_node, start_agent, start_gateway, wait_for
from tests.metrics_fixtures import free_port, sample, scrape

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NS = "/api/v1/namespaces/default"


def pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {
            "nodeName": "pi-logs",
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": [
                        "sh",
                        "-c",
                        "echo first line; echo second line; "
                        "while true; do echo tick; sleep 0.2; done",
                    ],
                    "env": [{"name": "GREETING", "value": "hello from edged"}],
                }
            ],
        },
    }


async def test_edgectl_logs_and_exec_reach_a_real_container(
    nursery: trio.Nursery, tmp_path: Path, containerd: Containerd
) -> None:
    cg_existed = default_cgroup_exists()
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, "pi-logs", tmp_path / "agent")
    metrics_port = free_port()
    agent = await start_agent(
        nursery, tmp_path / "agent", cri=containerd.address, metrics=f"127.0.0.1:{metrics_port}"
    )
    try:
        assert (await gw.api("POST", f"{NS}/pods", pod(containerd.image)))[0] == 201

        async def running() -> bool:
            code, obj = await gw.api("GET", f"{NS}/pods/talker")
            return code == 200 and (obj.get("status") or {}).get("phase") == "Running"

        await wait_for(running, timeout=30, interval=0.1)
        # The agent's /metrics: pods by phase, restarts, CRI call latency.
        fams = await trio.to_thread.run_sync(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        assert fams["edgeflock_agent_pods"].type == "gauge"
        assert sample(fams, "edgeflock_agent_pods", phase="Running") == 1
        assert fams["edgeflock_agent_container_restarts"].type == "counter"
        restarts = [
            s
            for s in fams["edgeflock_agent_container_restarts"].samples
            if s.labels["pod"] == "talker"
        ]
        assert [(s.labels["container"], s.value) for s in restarts] == [("app", 0)]
        assert fams["edgeflock_agent_cri_call_duration_seconds"].type == "histogram"
        assert sample(fams, "edgeflock_agent_cri_call_duration_seconds_count") >= 3

        async def logged() -> bool:
            rc, out, _ = await gw.edgectl("logs", "talker")
            return rc == 0 and out.startswith("first line\nsecond line\ntick\n")

        await wait_for(logged, timeout=10, interval=0.2)
        rc, out, err = await gw.edgectl("logs", "talker", "--tail", "1")
        assert (rc, out, err) == (0, "tick\n", "")

        rc, out, err = await gw.edgectl(
            "exec", "talker", "--", "sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 7'
        )
        assert (rc, out, err) == (7, "hello from edged\n", "oops\n")
        rc, _, err = await gw.edgectl("exec", "talker", "-c", "nope", "--", "true")
        assert rc == 1 and "container nope is not valid for pod talker" in err
        rc, _, err = await gw.edgectl("exec", "talker", "--", "/no/such/binary")
        assert rc != 0, err

        assert (await gw.api("DELETE", f"{NS}/pods/talker"))[0] == 200
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
    finally:
        await agent.stop()
        gw.scope.cancel()
        if not cg_existed:
            remove_empty_default_cgroup()
