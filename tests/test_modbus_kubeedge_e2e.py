"""kubeedge/examples' temperature manifests, applied unchanged but for the node
and the endpoint, through the whole chain: a real pymodbus server ← modbus-mapper
(own process) → mosquitto → the agent's DeviceTwin → the gateway's Device status.
The values are those KubeEdge's temperature mapper publishes (rules stated in
tests/mappers/test_kubeedge_semantics.py): the one-register float scaled by 0.1,
the coil on an INT property as "1", its desired "1" accepted and written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import join_node, start_agent, start_gateway, wait_for
from tests.mappers.conftest import Sim, start_modbus_sim, stop
from tests.mappers.test_kubeedge_semantics import load, write_server
from tests.mqtt_fixtures import Broker, open_broker
from tests.test_modbus_e2e import reported

API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"
ROOT = Path(__file__).resolve().parent.parent
NODE = "pi-kubeedge"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


@pytest.fixture
def sim() -> Any:
    s = start_modbus_sim("--tcp", "127.0.0.1:0", "--static")
    try:
        yield s
    finally:
        stop(s.proc)


def manifests(port: int) -> list[dict[str, Any]]:
    docs = load("examples-temperature-model.yaml") + load("examples-temperature-instance.yaml")
    for d in docs:
        if d["kind"] == "Device":
            d["spec"]["nodeName"] = NODE
            d["spec"]["protocol"]["configData"].update(ip="127.0.0.1", port=str(port))
            for p in d["spec"]["properties"]:
                p["collectCycle"] = p["reportCycle"] = 100
    return docs


async def test_examples_temperature_manifests_reach_the_cloud_with_kubeedge_values(
    nursery: trio.Nursery, tmp_path: Path, broker: Broker, sim: Sim
) -> None:
    # holding 0 = 235 (the temperature, raw); coil 0 off until the desired "1" lands
    await trio.to_thread.run_sync(write_server, sim.port, {0: 235}, {0: False})
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, NODE, tmp_path / "agent")
    await start_agent(nursery, tmp_path / "agent", mqtt=broker.url)
    log_path = tmp_path / "mapper.log"
    with log_path.open("wb") as log:
        mapper = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not waited on here
            [sys.executable, "-m", "mappers.modbus", "--mqtt",
             f"tcp://127.0.0.1:{broker.port}", "--node", NODE],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        for obj in manifests(sim.port):
            res = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
            code, body = await gw.api("POST", f"{API}/{res}", obj)
            assert code == 201, body

        async def values() -> dict[str, str] | None:
            code, obj = await gw.api("GET", f"{API}/devices/temperature-instance")
            got = reported(obj) if code == 200 else {}
            want = {"temperature": "23.5", "temperature-switch": "1"}
            return got if got == want else None

        # 235 * 0.1 rounded to 2 decimals; the coil switched on by the desired "1"
        await wait_for(values, timeout=30, interval=0.1)
        _, obj = await gw.api("GET", f"{API}/devices/temperature-instance")
        twins = {t["propertyName"]: t for t in obj["status"]["twins"]}
        assert twins["temperature-switch"]["observedDesired"]["value"] == "1"
    finally:
        stop(mapper, timeout=10)
        assert mapper.returncode == 0, log_path.read_text()[-2000:]
        gw.scope.cancel()
