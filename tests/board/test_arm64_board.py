"""A real arm64 board in the loop: a Raspberry Pi OS-like image from Debian's packages,
baked and flashed with edgeflash, booted under qemu-system-aarch64, as a Pi user's path:
first boot → Ready → a pod with logs and exec → a Modbus sensor on the host → offline
reboot → resync by delta. One board goes through the steps in order; each test is one
step and needs the ones before it. (First-boot faults: test_arm64_first_boot_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.board_fixtures import (
    BIN,
    BOARD_CRI,
    BOARD_HOST,
    BOARD_VENV,
    SCRIPTS,
    Board,
    BoardInputs,
    HostGateway,
    bake,
    wait_until,
)

NODE = "pi-01"
BUSYBOX = "localhost/edgeflock/busybox:1"


@dataclass
class Rig:
    work: Path
    gateway: HostGateway
    board: Board
    sim_port: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rig(arm64_inputs: BoardInputs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("board")
    gateway = HostGateway(work / "gateway")
    board = Board(work / "sd.img", work / "qemu")
    sim: subprocess.Popen[str] | None = None
    try:
        gateway.start()
        board.image = bake(arm64_inputs, work, gateway, NODE, gateway.join_token(NODE),
                           "--labels", "site=lab")  # fmt: skip
        sim = subprocess.Popen(
            [str(BIN / "python"), str(SCRIPTS / "modbus-sim"), "--tcp", "127.0.0.1:0", "--static"],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert sim.stdout is not None
        ready = sim.stdout.readline()
        yield Rig(work, gateway, board, int(ready.split("port=")[1]))
    finally:
        board.kill()
        gateway.stop()
        if sim is not None:
            sim.terminate()
            sim.wait(10)
            if sim.stdout is not None:
                sim.stdout.close()


def test_first_boot_installs_joins_and_the_node_is_ready_as_arm64(rig: Rig) -> None:
    board, gateway = rig.board, rig.gateway
    started = time.monotonic()
    board.start()
    node = wait_until(lambda: gateway.node_ready(NODE), timeout=900, what="Node Ready")
    rig.figures["first_boot_to_ready_s"] = round(time.monotonic() - started, 1)
    assert node["metadata"]["labels"]["kubernetes.io/arch"] == "arm64"
    assert node["metadata"]["labels"]["site"] == "lab"
    assert node["status"]["nodeInfo"]["architecture"] == "arm64"
    console = board.console()
    assert "edgeflock-firstboot: installing the agent into /opt/edgeflock/releases" in console
    assert "edgeflock-firstboot: installed edgeflock " in console
    assert "edgeflock-firstboot: done" in console
    # Pi OS's first-boot settings were applied: the hostname edgeflash prepare wrote.
    _, hostname, _ = board.exec("hostname")
    assert hostname.strip() == NODE


def _pod(name: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}],
        },
    }


def _phase(gateway: HostGateway, name: str) -> str | None:
    code, body = gateway.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    return body.get("status", {}).get("phase") if code == 200 else None


def test_pod_runs_on_the_board_with_logs_and_exec(rig: Rig) -> None:
    gateway = rig.gateway
    pod = _pod("hello", "echo hello from $(uname -m); while true; do sleep 5; done")
    code, body = gateway.api("POST", "/api/v1/namespaces/default/pods", pod)
    assert code == 201, body
    wait_until(lambda: _phase(gateway, "hello") == "Running", timeout=600, what="pod Running")

    def logs() -> str | None:
        code, out = gateway.try_edgectl("logs", "hello")
        return out if code == 0 and "hello from aarch64" in out else None

    wait_until(logs, timeout=300, what="the pod's log")
    assert gateway.edgectl("exec", "hello", "--", "uname", "-m").strip() == "aarch64"


def _thermometer(port: int, node: str = NODE) -> list[dict[str, Any]]:
    cfg = {"register": "HoldingRegister", "offset": 0, "limit": 2, "isRegisterSwap": True}
    return [
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "DeviceModel",
            "metadata": {"name": "thermometer", "namespace": "default"},
            "spec": {
                "protocol": "modbus",
                "properties": [{"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"}],
            },
        },
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "thermo-1", "namespace": "default"},
            "spec": {
                "deviceModelRef": {"name": "thermometer"},
                "nodeName": node,
                "protocol": {
                    "protocolName": "modbus",
                    "configData": {"slaveID": 1, "tcp": {"ip": BOARD_HOST, "port": port}},
                },
                "properties": [
                    {
                        "name": "temperature",
                        "collectCycle": 1000,
                        "reportCycle": 1000,
                        "reportToCloud": True,
                        "visitors": {
                            "protocolName": "modbus",
                            "configData": {**cfg, "dataType": "float32"},
                        },
                    }
                ],
            },
        },
    ]


def test_modbus_sensor_on_the_host_reaches_the_cloud_through_the_board(rig: Rig) -> None:
    gateway = rig.gateway
    for obj in _thermometer(rig.sim_port):
        plural = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
        path = f"/apis/devices.kubeedge.io/v1beta1/namespaces/default/{plural}"
        code, body = gateway.api("POST", path, obj)
        assert code == 201, body

    def reported() -> str | None:
        code, body = gateway.api(
            "GET", "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices/thermo-1"
        )
        for twin in (body.get("status") or {}).get("twins", []) if code == 200 else []:
            if twin.get("propertyName") == "temperature":
                value = (twin.get("reported") or {}).get("value")
                return str(value) if value else None
        return None

    value = wait_until(reported, timeout=600, what="the thermometer's value in the cloud")
    assert abs(float(value) - 21.5) < 0.01  # scripts/modbus-sim --static, slave 1
    table = gateway.edgectl("get", "devices")
    assert "thermo-1" in table and "21.5" in table


def test_figures_read_inside_the_board(rig: Rig) -> None:
    """Memory as the board's kernel counts it (VmRSS from its /proc), not QEMU's."""
    board = rig.board
    agent = board.pids(f"{BOARD_VENV}/bin/edgeagent run")
    mapper = board.pids(f"{BOARD_VENV}/bin/modbus-mapper")
    broker = board.pids("/usr/sbin/mosquitto")
    assert len(agent) == 1 and len(mapper) == 1 and len(broker) == 1, (agent, mapper, broker)
    # The unit ran the launcher, which became the agent (direct mode): no launcher left.
    assert board.pids("edgeagent launch") == []
    _, main_pid, _ = board.exec("systemctl", "show", "-P", "MainPID", "edgeflock-agent.service")
    assert int(main_pid) == agent[0]
    rss = {
        "agent": board.rss_kib(agent[0]),
        "modbus-mapper": board.rss_kib(mapper[0]),
        "mosquitto": board.rss_kib(broker[0]),
    }
    rig.figures["rss_kib_one_pod"] = rss
    _, arch, _ = board.exec("uname", "-m")
    assert arch.strip() == "aarch64"
    assert all(v > 1024 for v in rss.values()), rss
    (rig.work / "figures.json").write_text(json.dumps(rig.figures, indent=2) + "\n")


def test_offline_reboot_brings_pods_back_then_resyncs_by_delta(rig: Rig) -> None:
    board, gateway = rig.board, rig.gateway
    gateway.stop()
    board.kill()  # power cut, with the gateway unreachable
    from_power = time.monotonic()
    board.start()
    board.wait_up()

    def running_again() -> bool:
        code, out, _ = board.exec(
            "ctr", "--address", BOARD_CRI, "-n", "k8s.io", "tasks", "ls", check=False
        )
        return code == 0 and sum(" RUNNING" in ln for ln in out.splitlines()) >= 2

    wait_until(running_again, timeout=600, what="the pod running again, offline")
    rig.figures["offline_reboot_to_running_s"] = round(time.monotonic() - from_power, 1)
    status = board.agent_status()
    assert status is not None and status.get("connected") is False
    gateway.start()

    def resynced() -> dict[str, Any] | None:
        s = board.agent_status()
        return s if s and s.get("connected") and s.get("last_resync") else None

    status = wait_until(resynced, timeout=600, what="the board resynced")
    assert status["last_resync"]["mode"] == "delta", status
    wait_until(lambda: gateway.node_ready(NODE), timeout=300, what="Node Ready again")
    assert _phase(gateway, "hello") == "Running"
    (rig.work / "figures.json").write_text(json.dumps(rig.figures, indent=2) + "\n")
