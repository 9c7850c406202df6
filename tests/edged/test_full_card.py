"""Offline autonomy on a full card, end to end: a real gateway, a real agent
process with edged and a real containerd, the agent's data dir on a real tmpfs
filled to the last byte. The agent restarts (kill -9) on the full card: it
starts read-only, its pod keeps running, the cloud is told (DiskPressure,
EdgeStorageFull); once there is room the condition clears and the agent acts on
the cloud's changes again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import fill_up, join_node, start_gateway, wait_for
from tests.test_storage_e2e import disk_is

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NS = "/api/v1/namespaces/default"


def spawn_agent(data: Path, address: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(data),
            "--cri", address, "--heartbeat", "1"]  # fmt: skip
    with open(log, "ab") as out:  # not on the full card
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=out)


async def test_a_pod_keeps_running_when_the_agent_restarts_on_a_full_card(
    nursery: trio.Nursery, containerd: Containerd, small_fs: Path, tmp_path: Path
) -> None:
    cg_existed = await trio.to_thread.run_sync(default_cgroup_exists)
    gw = await start_gateway(nursery, tmp_path / "gateway")
    node, data, log = "full-card-node", small_fs / "agent", tmp_path / "agent.log"
    await join_node(gw, node, data)
    (data / "agent.toml").write_text("storage_retry = 0.2\n")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "default"},
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

    async def container_id() -> str:
        _, p = await gw.api("GET", f"{NS}/pods/app")
        st = p.get("status") or {}
        if st.get("phase") != "Running":
            return ""
        return str(st["containerStatuses"][0].get("containerID", ""))

    agent = spawn_agent(data, containerd.address, log)
    try:
        before = await wait_for(container_id, timeout=30, interval=0.2)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        filler = fill_up(small_fs)
        agent = spawn_agent(data, containerd.address, log)
        # Before, the agent exited at once: its store could not be opened.
        cond = await wait_for(lambda: disk_is(gw, node, "True"), timeout=20, interval=0.1)
        assert cond["reason"] == "EdgeStorageFull"
        assert agent.poll() is None, log.read_text()
        tasks = containerd.ctr("tasks", "ls")
        assert before.removeprefix("containerd://")[:12] in tasks and "RUNNING" in tasks
        assert await container_id() == before  # the same container, never restarted

        filler.unlink()
        await wait_for(lambda: disk_is(gw, node, "False"), timeout=20, interval=0.1)
        code, _ = await gw.api("DELETE", f"{NS}/pods/app")  # acted on: the store takes it
        assert code == 200
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
        assert agent.poll() is None, log.read_text()
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
