"""The agent's DMI: resident memory of an idle connected agent with ``--dmi`` off and
on (one mapper registered), then ReportDeviceStatus floods from T client threads
(N reports each, one channel per thread): answers by gRPC code, rate, RSS after.

.venv/bin/python bench/dmi.py [--settle 15] [--flood 32x50 --flood 100x20]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from _harness import Gateway, agent_status, machine, rss_kib, start_agent, stop_process, wait

from edgeagent import _dmi_api_pb2

pb: Any = _dmi_api_pb2
API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"


def _call(channel: Any, method: str) -> Any:
    return channel.unary_unary(
        "/v1beta1.DeviceManagerService/" + method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=getattr(pb, method + "Response").FromString,
    )


def _node(gw: Gateway, root: Path, node: str) -> Path:
    """A node with one modbus Device, ``dev-NODE``, joined into ``root``."""
    gw.api(
        "POST",
        f"{API}/devices",
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": f"dev-{node}", "namespace": "default"},
            "spec": {
                "deviceModelRef": {"name": "m"},
                "nodeName": node,
                "protocol": {"protocolName": "modbus", "configData": {"slaveID": 1}},
                "properties": [{"name": "t"}],
            },
        },
    )
    gw.join(node, root)
    return root


def idle_rss(gw: Gateway, root: Path, dmi: bool, settle: float) -> int:
    node = f"dmi-{'on' if dmi else 'off'}"
    data = _node(gw, root / node, node)
    sock = root / node / "dmi.sock"
    agent = start_agent(data, *(("--dmi", f"unix://{sock}") if dmi else ()))
    try:
        wait(lambda: agent_status(data)["objects"].get("Device") == 1, 60, "sync")
        if dmi:
            wait(sock.exists, 30, "the DMI socket")
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                info = pb.MapperInfo(name="m", protocol="modbus", address=b"/nonexistent")
                _call(ch, "MapperRegister")(
                    pb.MapperRegisterRequest(withData=True, mapper=info), timeout=10
                )
        time.sleep(settle)
        samples = []
        for _ in range(3):
            samples.append(rss_kib(agent.pid))
            time.sleep(1)
        return max(samples)
    finally:
        stop_process(agent)


def flood(gw: Gateway, root: Path, threads: int, each: int) -> str:
    node = f"dmi-flood-{threads}x{each}"
    data = _node(gw, root / node, node)
    sock = root / node / "dmi.sock"
    agent = start_agent(data, "--dmi", f"unix://{sock}")
    try:
        wait(lambda: agent_status(data)["objects"].get("Device") == 1, 60, "sync")
        wait(sock.exists, 30, "the DMI socket")
        before = rss_kib(agent.pid)
        codes: Counter[str] = Counter()
        lock = threading.Lock()

        def reporter(k: int) -> None:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                report = _call(ch, "ReportDeviceStatus")
                for i in range(each):
                    twin = pb.Twin(propertyName="t", reported=pb.TwinProperty(value=f"{k}.{i}"))
                    req = pb.ReportDeviceStatusRequest(
                        deviceName=f"dev-{node}",
                        deviceNamespace="default",
                        reportedDevice=pb.DeviceStatus(twins=[twin]),
                    )
                    try:
                        report(req, timeout=5)
                        code = "OK"
                    except grpc.RpcError as exc:
                        code = exc.code().name
                    with lock:
                        codes[code] += 1

        t0 = time.monotonic()
        workers = [threading.Thread(target=reporter, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        took = time.monotonic() - t0
        n = sum(codes.values())
        return (
            f"{threads} threads x {each}: {dict(codes)} in {took:.1f} s "
            f"({n / took:.0f} answers/s); RSS {before} -> {rss_kib(agent.pid)} KiB"
        )
    finally:
        stop_process(agent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--flood", action="append", default=None, help="THREADSxEACH")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # unix socket paths stay short
        root = Path(tmp)
        gw = Gateway(root / "gw")
        gw.start()
        try:
            gw.api(
                "POST",
                f"{API}/devicemodels",
                {
                    "apiVersion": "devices.kubeedge.io/v1beta1",
                    "kind": "DeviceModel",
                    "metadata": {"name": "m", "namespace": "default"},
                    "spec": {"protocol": "modbus", "properties": [{"name": "t", "type": "STRING"}]},
                },
            )
            off = idle_rss(gw, root, False, args.settle)
            on = idle_rss(gw, root, True, args.settle)
            print(f"idle agent RSS: dmi off {off} KiB, on {on} KiB (+{on - off} KiB)")
            for spec in args.flood or ["32x50", "100x20"]:
                t, e = (int(x) for x in spec.split("x"))
                print(flood(gw, root, t, e))
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
