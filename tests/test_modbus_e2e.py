"""The whole device chain, every part real: a pymodbus server (scripts/modbus-sim)
← modbus-mapper (its own process, configured by the agent over MQTT) → mosquitto
→ the agent's DeviceTwin → the gateway's Device status; and a desired value set
through the API back down into the server's register."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pymodbus.client import ModbusTcpClient

from tests.conftest import join_node, start_agent, start_gateway, wait_for
from tests.mappers.conftest import Sim, start_modbus_sim, stop
from tests.mqtt_fixtures import Broker, open_broker

API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[False, True], ids=["anonymous", "mqtt_auth"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    """mosquitto open to anyone, or with the logins and ACL the agent writes."""
    async with open_broker(tmp_path, auth=tmp_path / "mqtt" if request.param else None) as b:
        yield b


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = start_modbus_sim("--tcp", "127.0.0.1:0", "--static")
    try:
        yield s
    finally:
        stop(s.proc)


def thermometer(port: int) -> list[dict[str, Any]]:
    """The README's example: a word-swapped float32 and a scaled int16, plus a
    writable setpoint (holding register 10 of scripts/modbus-sim)."""
    visitors = {
        "temperature": {"register": "HoldingRegister", "offset": 0, "limit": 2,
                        "dataType": "float32", "isRegisterSwap": True},
        "humidity": {"register": "HoldingRegister", "offset": 2, "limit": 1,
                     "dataType": "int16", "scale": 0.1},
        "setpoint": {"register": "HoldingRegister", "offset": 10, "limit": 1,
                     "dataType": "int16"},
    }  # fmt: skip
    return [
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "DeviceModel",
            "metadata": {"name": "thermometer"},
            "spec": {
                "protocol": "modbus",
                "properties": [
                    {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                    {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
                    {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
                ],
            },
        },
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "sensor-1"},
            "spec": {
                "deviceModelRef": {"name": "thermometer"},
                "nodeName": "pi-modbus",
                "protocol": {
                    "protocolName": "modbus",
                    "configData": {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": port}},
                },
                "properties": [
                    {
                        "name": name,
                        "collectCycle": 100,
                        "visitors": {"protocolName": "modbus", "configData": cfg},
                    }
                    for name, cfg in visitors.items()
                ],
            },
        },
    ]


def reported(obj: dict[str, Any]) -> dict[str, str]:
    twins = (obj.get("status") or {}).get("twins") or []
    return {t["propertyName"]: (t.get("reported") or {}).get("value") for t in twins}


async def test_modbus_values_reach_the_cloud_and_desired_values_reach_the_register(
    nursery: trio.Nursery, tmp_path: Path, broker: Broker, sim: Sim
) -> None:
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, "pi-modbus", tmp_path / "agent")
    auth: dict[str, Any] = {}
    login: list[str] = []
    if broker.auth:  # the mapper logs in with what the agent wrote; its device syncs later
        pid_file = str(broker.dir / "mosquitto.pid")
        auth = {"mqtt_auth": True, "mqtt_auth_dir": str(broker.auth), "mqtt_pid_file": pid_file}
        login = ["--mqtt-credentials", str(broker.auth / "mapper-modbus.cred")]
    await start_agent(nursery, tmp_path / "agent", mqtt=broker.url, **auth)
    if login:
        await wait_for(lambda: Path(login[1]).exists())
    log_path = tmp_path / "mapper.log"
    with log_path.open("wb") as log:
        mapper = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not waited on here
            [sys.executable, "-m", "mappers.modbus", "--mqtt",
             f"tcp://127.0.0.1:{broker.port}", "--node", "pi-modbus", *login],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        for obj in thermometer(sim.port):
            res = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
            code, body = await gw.api("POST", f"{API}/{res}", obj)
            assert code == 201, body

        async def values() -> dict[str, str] | None:
            code, obj = await gw.api("GET", f"{API}/devices/sensor-1")
            got = reported(obj) if code == 200 else {}
            return got if {"temperature", "humidity"} <= got.keys() else None

        got = await wait_for(values, timeout=20, interval=0.1)
        assert float(got["temperature"]) == pytest.approx(21.5)
        assert float(got["humidity"]) == pytest.approx(45.6)

        # A desired value from the cloud lands in holding register 10 and is read back.
        _, obj = await gw.api("GET", f"{API}/devices/sensor-1")
        for p in obj["spec"]["properties"]:
            if p["name"] == "setpoint":
                p["desired"] = {"value": "37"}
        code, body = await gw.api("PUT", f"{API}/devices/sensor-1", obj)
        assert code == 200, body

        async def written() -> bool:
            _, obj = await gw.api("GET", f"{API}/devices/sensor-1")
            twins = {t["propertyName"]: t for t in (obj.get("status") or {}).get("twins", [])}
            sp = twins.get("setpoint") or {}
            return (sp.get("reported") or {}).get("value") == "37" and (
                sp.get("observedDesired") or {}
            ).get("value") == "37"

        await wait_for(written, timeout=20, interval=0.1)

        def register_10() -> int:
            client = ModbusTcpClient("127.0.0.1", port=sim.port)
            try:
                assert client.connect()
                rr = client.read_holding_registers(10, count=1, device_id=1)
                return int(rr.registers[0])
            finally:
                client.close()

        assert await trio.to_thread.run_sync(register_10) == 37
    finally:
        stop(mapper, timeout=10)
        assert mapper.returncode == 0, log_path.read_text()[-2000:]
        gw.scope.cancel()
