"""Figures from inside an emulated board (qemu-system-aarch64, Debian arm64): the
user's path (board-image → bundle → prepare → write → boot) and then memory as the
board's kernel counts it (VmRSS from the guest's /proc, read through the guest agent).

    python bench/board.py [--arch aarch64] [--pods 10]

Prints: first boot → Node Ready (emulated seconds: TCG emulation is slow, so times
are the emulator's, not a Pi's); agent RSS connected and idle; the board stack idle
(agent + mosquitto + modbus-mapper with one device); the floor of the agent's
dependencies (bench/floor.py's import ladder, run on the board); agent RSS with N pods on each
CRI transport (the default first, then the other, set in agent.toml and the agent
restarted); offline reboot → pods Running. Memory does not depend on the CPU's speed.
Run as root; takes ~20 min (most of it emulated boots), plus the image build once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from floor import LADDER, UNIT_ENV, parse, table  # bench/floor.py: the same ladder on the host

from tests.board_fixtures import (
    BIN,
    BOARD_AGENT_DATA,
    BOARD_CRI,
    BOARD_VENV,
    SCRIPTS,
    Board,
    HostGateway,
    board_inputs,
    run,
    wait_until,
)

NODE = "bench-pi"
SETTLE = 45.0  # seconds left idle before memory is read


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def rss(board: Board, pattern: str) -> int:
    pids = board.pids(pattern)
    if len(pids) != 1:
        raise SystemExit(f"expected one process matching {pattern!r} on the board, got {pids}")
    return board.rss_kib(pids[0])


def pods_running(gateway: HostGateway, n: int) -> bool:
    code, body = gateway.api("GET", "/api/v1/namespaces/default/pods")
    if code != 200:
        return False
    phases = [p.get("status", {}).get("phase") for p in body["items"]]
    return phases.count("Running") >= n


def tasks_running(board: Board) -> int:
    code, out, _ = board.exec(
        "ctr", "--address", BOARD_CRI, "-n", "k8s.io", "tasks", "ls", check=False
    )
    return sum(" RUNNING" in ln for ln in out.splitlines()) if code == 0 else 0


def restart_agent_with(board: Board, transport: str) -> None:
    board.exec(
        "sh", "-c",
        f"sed -i '/^cri_transport/d' {BOARD_AGENT_DATA}/agent.toml 2>/dev/null; "
        f"echo 'cri_transport = \"{transport}\"' >> {BOARD_AGENT_DATA}/agent.toml; "
        "systemctl restart edgeflock-agent.service",
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="aarch64", choices=("aarch64",))
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeflock-board-bench-"))
    figures: dict[str, Any] = {"arch": args.arch}
    floor: list[tuple[str, int, int]] = []
    t0 = time.monotonic()
    inputs = board_inputs(work, args.arch)
    figures["inputs_s"] = round(time.monotonic() - t0, 1)
    gateway = HostGateway(work / "gateway")
    board = Board(work / "sd.img", work / "qemu", args.arch)
    sim = None
    try:
        gateway.start()
        token = gateway.join_token(NODE)
        run(
            [BIN / "edgeflash", "prepare", "--image", inputs.base, "--output", work / "p.img",
             "--gateway", gateway.board_join_url, "--token", token, "--node", NODE,
             "--bundle", inputs.bundle, "--mapper", "modbus"],
            timeout=300,
        )  # fmt: skip
        run([BIN / "edgeflash", "write", "--image", work / "p.img", "--device", board.image,
             "--yes"], timeout=300)  # fmt: skip
        sim = subprocess.Popen(
            [str(BIN / "python"), str(SCRIPTS / "modbus-sim"), "--tcp", "127.0.0.1:0"],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert sim.stdout is not None
        sim_port = int(sim.stdout.readline().split("port=")[1])

        t = time.monotonic()
        board.start()
        wait_until(lambda: gateway.node_ready(NODE), timeout=1800, what="Node Ready")
        figures["first_boot_to_ready_s"] = round(time.monotonic() - t, 1)
        time.sleep(SETTLE)
        figures["agent_idle_kib"] = rss(board, "edgeagent run")
        env = [f"{k}={v}" for k, v in UNIT_ENV.items()]
        _, out, _ = board.exec("/usr/bin/env", *env, f"{BOARD_VENV}/bin/python", "-c", LADDER,
                               timeout=600)  # fmt: skip
        floor = parse(out)

        from tests.board.test_arm64_board import _thermometer  # the same Device as the test

        for obj in _thermometer(sim_port, NODE):
            plural = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
            code, body = gateway.api(
                "POST", f"/apis/devices.kubeedge.io/v1beta1/namespaces/default/{plural}", obj
            )
            assert code == 201, body

        def reported() -> bool:
            code, body = gateway.api(
                "GET", "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices/thermo-1"
            )
            twins = (body.get("status") or {}).get("twins", []) if code == 200 else []
            return any((t.get("reported") or {}).get("value") for t in twins)

        wait_until(reported, timeout=600, what="the device's value in the cloud")
        time.sleep(SETTLE)
        stack = {
            "agent": rss(board, "edgeagent run"),
            "mosquitto": rss(board, "/usr/sbin/mosquitto"),
            "modbus-mapper": rss(board, "bin/modbus-mapper"),
        }
        figures["stack_idle_kib"] = stack

        for i in range(args.pods):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}", "namespace": "default"},
                "spec": {
                    "nodeName": NODE,
                    "containers": [
                        {"name": "c", "image": "localhost/edgeflock/busybox:1",
                         "command": ["sh", "-c", "while true; do sleep 10; done"]}
                    ],
                },
            }  # fmt: skip
            code, body = gateway.api("POST", "/api/v1/namespaces/default/pods", pod)
            assert code == 201, body
        wait_until(lambda: pods_running(gateway, args.pods), timeout=1800, what="pods Running")
        time.sleep(SETTLE)
        _, default, _ = board.exec(
            f"{BOARD_VENV}/bin/python", "-c",
            "import dataclasses; from edgeagent._config import AgentConfig; "
            "print(next(f.default for f in dataclasses.fields(AgentConfig) "
            "if f.name == 'cri_transport'))",
        )  # fmt: skip
        first = default.strip()
        figures[f"agent_{args.pods}_pods_kib_{first}"] = rss(board, "edgeagent run")
        other = "grpcio" if first != "grpcio" else "h2"
        restart_agent_with(board, other)
        wait_until(lambda: tasks_running(board) >= 2 * args.pods, timeout=600, what="adopted")
        wait_until(lambda: gateway.node_ready(NODE), timeout=600, what="Node Ready")
        time.sleep(SETTLE)
        figures[f"agent_{args.pods}_pods_kib_{other}"] = rss(board, "edgeagent run")
        restart_agent_with(board, first)

        gateway.stop()
        board.kill()
        t = time.monotonic()
        board.start()
        wait_until(
            lambda: tasks_running(board) >= 2 * args.pods, timeout=1800, what="pods back offline"
        )
        figures["offline_reboot_to_running_s"] = round(time.monotonic() - t, 1)
    finally:
        board.kill()
        gateway.stop()
        if sim is not None:
            sim.terminate()
            sim.wait(10)
            if sim.stdout is not None:
                sim.stdout.close()
    print(json.dumps(figures, indent=2))
    print("the agent's floor on the board (bench/floor.py's ladder, imports only):")
    print(table(floor))
    for key, value in figures.items():
        if "_kib" in key and isinstance(value, int):
            print(f"{key}: {mib(value)}")
        elif isinstance(value, dict):
            total = sum(value.values())
            parts = ", ".join(f"{k} {mib(v)}" for k, v in value.items())
            print(f"{key}: {mib(total)} ({parts})")


if __name__ == "__main__":
    main()
