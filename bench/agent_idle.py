"""Agent RSS and CPU when idle and connected, and resync bytes: delta vs snapshot.
Also the floor of the stack on this machine, measured the same way: a process that
imports trio, trio-websocket, apsw, paho-mqtt and cbor2 and holds one TLS
WebSocket connection to the gateway with the node's certificate (no agent code).

.venv/bin/python bench/agent_idle.py [--configmaps 1000] [--changed 10] [--idle 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    Gateway,
    agent_status,
    cpu_seconds,
    machine,
    rss_kib,
    service_env,
    start_agent,
    stop_process,
    wait,
)

_FLOOR = """
import ssl, sys, trio, trio_websocket, apsw, paho.mqtt.client, cbor2
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(sys.argv[1] + "/ca.crt")
    ctx.load_cert_chain(sys.argv[1] + "/node.crt", sys.argv[1] + "/node.key")
    async with trio_websocket.open_websocket_url(sys.argv[2], ssl_context=ctx) as ws:
        print("connected", flush=True)
        await trio.sleep(3600)
trio.run(main)
"""


def stack_floor(agent_dir: Path, settle: float) -> int:
    """RSS (KiB) of the bare stack holding one connection to the agent's hub."""
    hub = json.loads((agent_dir / "enrollment.json").read_text())["hub"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FLOOR, str(agent_dir), hub],
        stdout=subprocess.PIPE,
        env=service_env(),  # the same interpreter settings as the agent's
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"connected":
            raise RuntimeError("the floor process did not connect")
        time.sleep(settle)
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configmaps", type=int, default=1000)
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gw = Gateway(root / "gw")
        gw.start()
        agent_dir = root / "agent"
        agent: subprocess.Popen[bytes] | None = None
        try:
            gw.join("bench-pi", agent_dir)
            for i in range(args.configmaps):
                gw.api(
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": f"cm-{i:05d}",
                            "labels": {"edgeflock.io/node": "bench-pi"},
                        },
                        "data": {
                            "config.yaml": f"sensor: {i}\nperiod_ms: 1000\nthreshold: 42.5\n" * 2
                        },
                    },
                )
            agent = start_agent(agent_dir)
            wait(
                lambda: (
                    agent_status(agent_dir)["objects"].get("ConfigMap", 0) == args.configmaps
                    and agent_status(agent_dir)["last_resync"] is not None
                ),
                60,
                "sync",
            )
            snap = agent_status(agent_dir)["last_resync"]
            time.sleep(3)
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
            rss = rss_kib(agent.pid)
            agent.terminate()
            agent.wait()
            floor = stack_floor(agent_dir, 8)
            delta = None
            if args.configmaps:  # with none there is nothing to change
                for i in range(args.changed):
                    name = f"cm-{i * (args.configmaps // args.changed):05d}"
                    obj = gw.api("GET", f"/api/v1/namespaces/default/configmaps/{name}")
                    obj["data"]["config.yaml"] += "changed: true\n"
                    gw.api("PUT", f"/api/v1/namespaces/default/configmaps/{name}", obj)
                agent = start_agent(agent_dir)
                wait(
                    lambda: (
                        (agent_status(agent_dir)["last_resync"] or {}).get("at", 0) > snap["at"]
                    ),
                    30,
                    "resync",
                )
                delta = agent_status(agent_dir)["last_resync"]
                agent.terminate()
                agent.wait()
        finally:
            if agent is not None:
                stop_process(agent)  # also when a wait timed out
            gw.stop()
    print(f"machine: {machine()}")
    print(f"agent RSS idle, connected, {args.configmaps} objects: {rss / 1024:.1f} MiB")
    print(
        f"floor of the stack (imports + one TLS WebSocket, no agent code): {floor / 1024:.1f} MiB"
    )
    print(f"agent CPU idle over {args.idle:.0f} s: {cpu * 100:.2f} % of one core")
    print(f"snapshot resync: {snap['objects']} objects, {snap['bytes']} bytes, {snap['seconds']} s")
    if delta is not None:
        print(
            f"delta resync after {args.changed} changes: {delta['objects']} objects, "
            f"{delta['bytes']} bytes, {delta['seconds']} s = "
            f"{100 * delta['bytes'] / snap['bytes']:.2f} % of the snapshot"
        )


if __name__ == "__main__":
    main()
