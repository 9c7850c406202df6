"""The offline reboot story, end to end: a real gateway and a real agent process
with edged; the gateway goes away, then the agent (kill -9) and containerd (kill -9)
die and restart. Pods come back Running from the agent's SQLite, running containers
are adopted (same container IDs, restartCount 0), and the statuses reach the
gateway once it is back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import trio

from tests.conftest import agent_rows, join_node, start_gateway, wait_for

from .conftest import Containerd

NS = "/api/v1/namespaces/default"
CGROUP_DEFAULT = "edgeflock"  # the agent runs edged with its default options


def spawn_agent(data: Path, address: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(data),
            "--cri", address, "--heartbeat", "1"]  # fmt: skip
    with open(data / "agent.log", "ab") as log:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)


def outbox_statuses(data: Path) -> dict[str, dict[str, Any]]:
    rows = agent_rows(data, "SELECT key, body FROM outbox WHERE key LIKE 'pods/%'")
    return {str(k): cbor2.loads(bytes(b))["status"] for k, b in rows}  # type: ignore[arg-type]


def ids(statuses: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: s["containerStatuses"][0].get("containerID", "") for k, s in statuses.items()}


def all_running(statuses: dict[str, Any], n: int) -> bool:
    return len(statuses) == n and all(
        s.get("phase") == "Running"
        and all("running" in c["state"] for c in s.get("containerStatuses", []))
        and "reason" not in s
        for s in statuses.values()
    )


async def test_offline_reboot_adopts_running_pods(
    nursery: trio.Nursery, containerd: Containerd, tmp_path: Path
) -> None:
    cg_existed = await trio.to_thread.run_sync(default_cgroup_exists)
    gw = await start_gateway(nursery, tmp_path / "gateway")
    ports = dict(gw.ports)
    node, data = "reboot-node", tmp_path / "agent"
    await join_node(gw, node, data)
    names = [f"app{i}" for i in range(5)]
    for n in names:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": n, "namespace": "default"},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "main", "image": containerd.image, "command": ["sleep", "3600"]}
                ],
            },
        }
        code, body = await gw.api("POST", f"{NS}/pods", pod)
        assert code == 201, body
    agent = spawn_agent(data, containerd.address)
    try:

        async def gateway_phases() -> dict[str, str]:
            out = {}
            for n in names:
                _, p = await gw.api("GET", f"{NS}/pods/{n}")
                out[n] = (p.get("status") or {}).get("phase", "")
            return out

        await wait_for(
            lambda: _eq(gateway_phases(), dict.fromkeys(names, "Running")), timeout=30, interval=0.2
        )
        before = ids(outbox_statuses(data)) or {}
        _, p0 = await gw.api("GET", f"{NS}/pods/app0")
        before_gw = p0["status"]["containerStatuses"][0]["containerID"]

        # The gateway goes away; then the board loses the agent and containerd.
        await gw.stop()
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        await trio.to_thread.run_sync(containerd.kill)
        await trio.to_thread.run_sync(containerd.start)
        t0 = time.monotonic()
        agent = spawn_agent(data, containerd.address)
        # Back Running with the gateway unreachable: statuses queue in the outbox.
        await wait_for(lambda: all_running(outbox_statuses(data), 5), timeout=20, interval=0.1)
        elapsed = time.monotonic() - t0
        after = ids(outbox_statuses(data))
        assert after["pods/default/app0"] == before_gw
        if before:
            assert after == before
        assert all(
            s["containerStatuses"][0]["restartCount"] == 0 for s in outbox_statuses(data).values()
        )
        assert elapsed < 10, elapsed

        # The gateway returns; the statuses reach it.
        gw = await start_gateway(nursery, tmp_path / "gateway", ports)
        await wait_for(
            lambda: _eq(gateway_phases(), dict.fromkeys(names, "Running")), timeout=30, interval=0.2
        )
        # Clean up through the API: the agent removes sandboxes, containers and cgroups.
        for n in names:
            code, _ = await gw.api("DELETE", f"{NS}/pods/{n}")
            assert code == 200
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        gw.scope.cancel()
        if not cg_existed:
            remove_empty_default_cgroup()


async def _eq(aw: Any, expected: Any) -> bool:
    return bool(await aw == expected)


def default_cgroup_exists() -> bool:
    return Path(f"/sys/fs/cgroup/memory/{CGROUP_DEFAULT}").exists()


def remove_empty_default_cgroup() -> None:
    for ctl in Path("/sys/fs/cgroup").iterdir():
        base = ctl / CGROUP_DEFAULT
        if base.is_dir() and not any(p.is_dir() for p in base.iterdir()):
            base.rmdir()
