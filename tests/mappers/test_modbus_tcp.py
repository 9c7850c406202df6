"""Modbus TCP end to end: a real pymodbus server, real mosquitto, the mapper in-process."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from mappers._mqtt import MqttClient
from mappers._runner import MapperShell
from mappers.modbus import make_factory
from tests.mappers._docs import device, membership_dev, model, write_yaml
from tests.mappers.conftest import Broker, Sim, Watcher


async def start_shell(nursery: trio.Nursery, broker: Broker, **kwargs: object) -> MapperShell:
    mqtt = MqttClient(broker.url)
    shell = MapperShell(mqtt, "modbus", make_factory(mqtt), **kwargs)  # type: ignore[arg-type]
    await nursery.start(mqtt.run)
    await nursery.start(shell.run)
    return shell


def twin_has(device_name: str, prop: str, value: str):  # type: ignore[no-untyped-def]
    def check(topic: str, body: object) -> bool:
        return (
            topic == f"$hw/events/device/default/{device_name}/twin/update"
            and isinstance(body, dict)
            and body["twin"].get(prop, {}).get("actual", {}).get("value") == value
        )

    return check


async def test_float32_and_scaled_int16_reach_twin_and_delta_is_written(
    tmp_path: Path, mosquitto: Broker, modbus_tcp: Sim, watcher: Watcher, nursery: trio.Nursery
) -> None:
    cfg = {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": modbus_tcp.port}}
    path = write_yaml(
        tmp_path / "devices.yaml",
        [model(), device("thermo", cfg, ["temperature", "humidity", "setpoint", "status"])],
    )
    shell = await start_shell(nursery, mosquitto, config_path=path)
    _, body = await watcher.wait_for(twin_has("thermo", "temperature", "21.5"))
    # the contract: strings, with the model's type and ms timestamps
    assert body["twin"]["temperature"]["metadata"] == {"type": "float"}
    assert isinstance(body["timestamp"], int) and body["timestamp"] > 1_600_000_000_000
    assert isinstance(body["event_id"], str)
    assert body["twin"]["humidity"]["actual"]["value"] == "45.6"
    assert body["twin"]["status"]["actual"]["value"] == "1"
    await watcher.wait_for(
        lambda t, b: t == "$hw/events/device/default/thermo/state/update" and b["state"] == "online"
    )
    stats = shell.statistics()["devices"]["thermo"]
    # temperature, humidity and status are contiguous (0..3): one request per cycle
    assert stats["properties"]["temperature"]["error"] is None

    # a desired value from the cloud: the agent publishes a delta
    delta = {
        "event_id": "e1",
        "timestamp": 1,
        "twin": {"setpoint": {"expected": {"value": "321"}}},
        "delta": {"setpoint": "321"},
    }
    watcher.mqtt.publish("$hw/events/device/default/thermo/twin/update/delta", json.dumps(delta))
    await watcher.wait_for(twin_has("thermo", "setpoint", "321"))
    # it really is in the server's register (read with pymodbus's own client)
    regs = await trio.to_thread.run_sync(read_holding, modbus_tcp.port, 10, 1)
    assert regs == [321]
    assert shell.statistics()["devices"]["thermo"]["writes"] == 1


def read_holding(port: int, address: int, count: int) -> list[int]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port)
    try:
        client.connect()
        rr = client.read_holding_registers(address, count=count, device_id=1)
        return list(rr.registers)
    finally:
        client.close()


async def test_read_only_refused_exceptions_counted_and_per_property_state(
    tmp_path: Path, mosquitto: Broker, modbus_tcp: Sim, watcher: Watcher, nursery: trio.Nursery
) -> None:
    cfg = {"slaveID": 1, "ip": "127.0.0.1", "port": modbus_tcp.port}  # flat ip/port keys
    path = write_yaml(
        tmp_path / "devices.yaml",
        [model(), device("m1", cfg, ["temperature", "setpoint", "missing", "relay", "target"])],
    )
    shell = await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(twin_has("m1", "temperature", "21.5"))
    task = shell.devices["m1"].task

    def delta(values: dict[str, str]) -> None:
        body = {"event_id": "e", "timestamp": 1, "twin": {}, "delta": values}
        watcher.mqtt.publish("$hw/events/device/default/m1/twin/update/delta", json.dumps(body))

    # read-only in the model: refused with a clear error, nothing written
    delta({"temperature": "99"})
    # the device refuses 2000 (ILLEGAL_DATA_VALUE); the model allows up to 5000
    delta({"setpoint": "2000"})
    await watcher.wait_for(lambda t, b: task.statistics()["write_errors"] == 1, timeout=5)
    assert "ILLEGAL_DATA_VALUE" in task.statistics()["properties"]["setpoint"]["write_error"]
    # above the model's maximum: refused before the wire
    delta({"setpoint": "9000"})
    # a float32 big-endian and a coil
    delta({"target": "22.75", "relay": "true"})
    await watcher.wait_for(twin_has("m1", "relay", "true"))
    writes = task.statistics()["writes"]
    await watcher.wait_for(twin_has("m1", "target", "22.75"))
    await watcher.wait_for(twin_has("m1", "relay", "true"))
    # the agent repeats a delta while expected != actual ("1" vs "true"): written once
    delta({"relay": "true"})
    await watcher.wait_for(lambda t, b: task.statistics()["deltas_already_applied"] == 1)
    assert task.statistics()["writes"] == writes
    stats = task.statistics()
    assert stats["writes_refused"] == 2
    assert "read-only" in stats["properties"]["temperature"]["write_error"]
    assert stats["write_errors"] == 1
    assert "maximum 5000" in stats["properties"]["setpoint"]["write_error"]
    # illegal address: that property errors, the others keep being reported
    assert "ILLEGAL_DATA_ADDRESS" in stats["properties"]["missing"]["error"]
    assert stats["exceptions"] >= 2
    assert stats["state"] == "online"  # an exception is an answer
    assert "missing" not in watcher.twin_values("m1")


async def test_agent_membership_follows_changes(
    mosquitto: Broker, modbus_tcp: Sim, watcher: Watcher, nursery: trio.Nursery
) -> None:
    cfg = {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": modbus_tcp.port}}
    m = model()
    d1 = device("dev-a", cfg, ["temperature"])
    d2 = device("dev-b", cfg, ["humidity"])
    other = device("not-mine", cfg, ["humidity"])
    other["spec"]["protocol"]["protocolName"] = "opcua"
    shell = await start_shell(nursery, mosquitto, node="edge-1")
    # the mapper asks; we play the agent
    _, ask = await watcher.wait_for(lambda t, b: t == "$hw/events/node/edge-1/membership/get")
    assert "event_id" in ask
    result = {
        "event_id": "r1",
        "timestamp": 1,
        "devices": [membership_dev(d1, m), membership_dev(other, m)],
    }
    watcher.mqtt.publish("$hw/events/node/edge-1/membership/get/result", json.dumps(result))
    await watcher.wait_for(twin_has("dev-a", "temperature", "21.5"))
    assert set(shell.devices) == {"dev-a"}
    update = {
        "event_id": "u1",
        "timestamp": 2,
        "added_devices": [membership_dev(d2, m)],
        "removed_devices": [{"id": "dev-a", "name": "dev-a"}],
    }
    watcher.mqtt.publish("$hw/events/node/edge-1/membership/updated", json.dumps(update))
    await watcher.wait_for(twin_has("dev-b", "humidity", "45.6"))
    with trio.fail_after(5):
        await shell.wait_devices(["dev-b"])
    # an added device whose id exists replaces it
    d2b = device("dev-b", cfg, ["status"])
    update = {
        "event_id": "u2",
        "timestamp": 3,
        "added_devices": [membership_dev(d2b, m)],
        "removed_devices": [],
    }
    watcher.mqtt.publish("$hw/events/node/edge-1/membership/updated", json.dumps(update))
    await watcher.wait_for(twin_has("dev-b", "status", "1"))
    assert [p.name for p in shell.devices["dev-b"].task.device.properties] == ["status"]


async def test_server_disappears_and_returns(
    tmp_path: Path,
    mosquitto: Broker,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    from tests.mappers.conftest import free_port, start_modbus_sim, stop

    port = free_port()
    sim = start_modbus_sim("--tcp", f"127.0.0.1:{port}", "--static")
    modbus_sims.append(sim)
    cfg = {
        "slaveID": 1,
        "tcp": {"ip": "127.0.0.1", "port": port},
        "timeout": 200,
        "offlineAfter": 2,
    }
    path = write_yaml(tmp_path / "d.yaml", [model(), device("flaky", cfg, ["temperature"])])
    shell = await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(twin_has("flaky", "temperature", "21.5"))
    stop(sim.proc)
    await watcher.wait_for(
        lambda t, b: t == "$hw/events/device/default/flaky/state/update" and b["state"] == "offline"
    )
    stats = shell.statistics()["devices"]["flaky"]
    assert stats["bus_errors"] + stats["timeouts"] >= 2
    assert "read failed" in stats["properties"]["temperature"]["error"]
    sim2 = start_modbus_sim("--tcp", f"127.0.0.1:{port}", "--static", "--slaves", "1")
    modbus_sims.append(sim2)
    await watcher.wait_for(lambda t, b: watcher.states("flaky") == ["online", "offline", "online"])
    await watcher.wait_for(
        lambda t, b: (
            shell.statistics()["devices"]["flaky"]["properties"]["temperature"]["error"] is None
        )
    )


async def test_rtu_over_tcp_and_desired_value_written_at_start(
    tmp_path: Path,
    mosquitto: Broker,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    from tests.mappers.conftest import start_modbus_sim

    sim = start_modbus_sim("--rtu-over-tcp", "127.0.0.1:0", "--static", "--slaves", "4")
    modbus_sims.append(sim)
    cfg = {"slaveID": 4, "ip": "127.0.0.1", "port": sim.port, "rtuOverTcp": True}
    dev = device("gw-dev", cfg, ["temperature", "setpoint"], desired={"setpoint": "77"})
    path = write_yaml(tmp_path / "d.yaml", [model(), dev])
    await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(twin_has("gw-dev", "temperature", "51.5"))  # slave 4
    await watcher.wait_for(twin_has("gw-dev", "setpoint", "77"))


async def test_broker_restart_reasks_membership_and_keeps_reporting(
    tmp_path: Path, mosquitto: Broker, modbus_tcp: Sim, nursery: trio.Nursery
) -> None:
    from tests.mappers.conftest import eventually, restart_broker

    shell = await start_shell(nursery, mosquitto, node="edge-9")
    await eventually(lambda: shell.statistics()["membership_asks"] == 1)
    await trio.to_thread.run_sync(restart_broker, mosquitto)
    await eventually(lambda: shell.statistics()["membership_asks"] == 2)
    assert shell.mqtt.statistics()["connects"] == 2
