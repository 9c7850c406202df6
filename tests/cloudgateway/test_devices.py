"""Device and DeviceModel (devices.kubeedge.io/v1beta1) through the gateway:
validation, the node view, device status and edge-set desired values written by
the node the device is bound to, and edgectl's device table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import trio

from edgeagent._meta import Meta
from tests.conftest import Gateway, join_node, start_agent, wait_for

DEV = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"


def model(name: str = "thermo") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "unit": "C"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
            ],
        },
    }


def device(name: str, node: str, setpoint: str = "20") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name},
        "spec": {
            "deviceModelRef": {"name": "thermo"},
            "nodeName": node,
            "protocol": {
                "protocolName": "modbus",
                "configData": {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": 5020}},
            },
            "properties": [
                {
                    "name": "temperature",
                    "collectCycle": 1000,
                    "reportCycle": 1000,
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "HoldingRegister", "offset": 0, "limit": 2},
                    },
                },
                {
                    "name": "setpoint",
                    "desired": {"value": setpoint},
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1},
                    },
                },
            ],
        },
    }


async def test_device_validation_names_every_bad_field(gateway: Gateway) -> None:
    bad = device("d1", "pi-01")
    bad["spec"]["properties"][1]["desired"]["value"] = 21  # twin values are strings
    bad["spec"]["properties"][0]["collectCycle"] = -5
    bad["spec"]["properties"].append({"name": "temperature"})
    del bad["spec"]["deviceModelRef"]
    code, body = await gateway.api("POST", f"{DEV}/devices", bad)
    assert code == 422, body
    fields = {c["field"] for c in body["details"]["causes"]}
    assert fields == {
        "spec.deviceModelRef",
        "spec.properties[0].collectCycle",
        "spec.properties[1].desired.value",
        "spec.properties[2].name",
    }
    bad_model = model()
    bad_model["spec"]["properties"][0]["type"] = "complex"
    bad_model["spec"]["properties"][1]["accessMode"] = "WriteOnly"
    code, body = await gateway.api("POST", f"{DEV}/devicemodels", bad_model)
    assert code == 422, body
    assert {c["field"] for c in body["details"]["causes"]} == {
        "spec.properties[0].type",
        "spec.properties[1].accessMode",
    }
    # Nothing was stored.
    code, body = await gateway.api("GET", f"{DEV}/devices")
    assert code == 200 and body["items"] == []


async def test_device_and_model_reach_their_node_and_status_comes_back(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    await join_node(gateway, "pi-01", tmp_path / "a")
    await join_node(gateway, "pi-02", tmp_path / "b")
    agent = await start_agent(nursery, tmp_path / "a")
    other = await start_agent(nursery, tmp_path / "b")
    assert (await gateway.api("POST", f"{DEV}/devicemodels", model()))[0] == 201
    assert (await gateway.api("POST", f"{DEV}/devices", device("thermo-1", "pi-01")))[0] == 201
    assert (await gateway.api("POST", f"{DEV}/devices", device("thermo-2", "pi-02")))[0] == 201

    def synced() -> bool:
        objs = agent.status()["objects"]
        return objs.get("Device") == 1 and objs.get("DeviceModel") == 1

    await wait_for(synced, timeout=5.0)
    await wait_for(lambda: other.status()["objects"].get("Device") == 1, timeout=5.0)

    # While offline, pi-01 queues its device's twins and a desired value set at
    # the edge, and tries to write pi-02's device; back online, the last is
    # refused and the rest lands.
    await agent.stop()
    twins = [
        {
            "propertyName": "temperature",
            "reported": {"value": "21.5", "metadata": {"type": "float"}},
        }
    ]
    meta = Meta(agent.config.meta_path)
    try:
        await meta.enqueue(
            [
                (
                    "devices/default/thermo-1",
                    "status",
                    cbor2.dumps({"status": {"twins": twins, "state": "online"}}),
                    True,
                ),
                (
                    "devices/default/thermo-1#desired",
                    "desired",
                    cbor2.dumps({"desired": {"setpoint": "23"}}),
                    True,
                ),
                (
                    "devices/default/thermo-2",
                    "status",
                    cbor2.dumps({"status": {"state": "hijacked"}}),
                    True,
                ),
            ]
        )
    finally:
        meta.close()
    agent = await start_agent(nursery, tmp_path / "a")

    async def landed() -> dict[str, Any] | None:
        code, obj = await gateway.api("GET", f"{DEV}/devices/thermo-1")
        assert code == 200
        st = obj.get("status") or {}
        props = {p["name"]: p for p in obj["spec"]["properties"]}
        if st.get("state") == "online" and props["setpoint"]["desired"]["value"] == "23":
            return obj
        return None

    obj = await wait_for(landed, timeout=5.0)
    assert obj["status"]["twins"][0]["reported"]["value"] == "21.5"
    await wait_for(lambda: agent.status()["outbox"] == 0, timeout=5.0)
    code, theirs = await gateway.api("GET", f"{DEV}/devices/thermo-2")
    assert code == 200 and (theirs.get("status") or {}).get("state") != "hijacked"
    assert gateway.running.hub.statistics()["forbidden"] >= 1

    # The edge-set desired value travels back down to the board's copy.
    async def board_has_desired() -> bool:
        meta = Meta(agent.config.meta_path)
        try:
            obj = await meta.get("devices/default/thermo-1")
        finally:
            meta.close()
        props = {p["name"]: p for p in (obj or {}).get("spec", {}).get("properties", [])}
        return props.get("setpoint", {}).get("desired", {}).get("value") == "23"

    await wait_for(board_has_desired, timeout=5.0)

    # edgectl shows reported and desired per property.
    rc, out, err = await gateway.edgectl("get", "devices")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "MODEL", "NODE", "STATE"]
    row = next(line for line in lines if line.startswith("thermo-1"))
    assert "temperature=21.5" in row and "setpoint=<none>/23" in row and "online" in row


async def test_twin_history_reported_offline_is_kept_in_order(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    await join_node(gateway, "pi-01", tmp_path / "a")
    assert (await gateway.api("POST", f"{DEV}/devicemodels", model()))[0] == 201
    assert (await gateway.api("POST", f"{DEV}/devices", device("thermo-1", "pi-01")))[0] == 201
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(lambda: agent.status()["objects"].get("Device") == 1, timeout=5.0)
    await agent.stop()

    def entry(value: str, ts: int) -> dict[str, str]:
        return {"propertyName": "temperature", "value": value, "timestamp": str(ts)}

    meta = Meta(agent.config.meta_path)
    try:
        await meta.enqueue(
            [  # a ring of outbox rows, as the twin writes them: newest last, out of order
                (f"devices/default/thermo-1#htemperature.{i}", "twin-history", cbor2.dumps(b), True)
                for i, b in enumerate(
                    [
                        {"history": [entry("21.0", 1_000)]},
                        {"history": [entry("21.2", 3_000)]},
                        {"history": [entry("21.1", 2_000)]},
                    ]
                )
            ]
            + [
                (
                    "devices/default/thermo-1#hbad.0",
                    "twin-history",
                    cbor2.dumps({"history": [{"propertyName": "temperature", "value": 1}]}),
                    True,
                )
            ]
        )
    finally:
        meta.close()
    agent = await start_agent(nursery, tmp_path / "a")
    await wait_for(lambda: agent.status()["outbox"] == 0, timeout=5.0)
    code, obj = await gateway.api("GET", f"{DEV}/devices/thermo-1")
    assert code == 200
    assert obj["status"]["twinHistory"]["temperature"] == [
        {"value": "21.0", "timestamp": "1000"},
        {"value": "21.1", "timestamp": "2000"},
        {"value": "21.2", "timestamp": "3000"},
    ]
    assert gateway.running.hub.statistics()["reports_malformed"] == 1
