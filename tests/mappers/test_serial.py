"""The serial mapper against scripts/serial-sim on a socat pty pair."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from mappers._mqtt import MqttClient
from mappers._runner import MapperShell
from mappers.serial import make_factory
from tests.mappers._docs import write_yaml
from tests.mappers.conftest import SCRIPTS, Broker, PtyPair, Watcher, stop
from tests.mappers.test_modbus_tcp import twin_has


def sensor_docs(port: str, *, regex: str | None = None) -> list[dict[str, Any]]:
    config: dict[str, Any] = {"com": {"serialPort": port, "baudRate": 115200}}
    if regex:
        config["regex"] = regex
        visitors = {
            "temperature": {"group": "t"},
            "humidity": {"group": "h"},
            "ok": {"group": "s", "dataType": "bool"},
        }
    else:
        visitors = {
            "temperature": {"index": 0},
            "humidity": {"index": 1, "scale": 0.1},
            "ok": {"index": 2, "dataType": "bool"},
        }
    model = {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "sensor-model"},
        "spec": {
            "properties": [
                {"name": "temperature", "type": "float", "accessMode": "ReadOnly"},
                {"name": "humidity", "type": "float", "accessMode": "ReadOnly"},
                {"name": "ok", "type": "boolean", "accessMode": "ReadOnly"},
            ]
        },
    }
    dev = {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "sensor"},
        "spec": {
            "deviceModelRef": {"name": "sensor-model"},
            "protocol": {"protocolName": "serial", "configData": config},
            "properties": [
                {
                    "name": n,
                    "collectCycle": 50,
                    "visitors": {"protocolName": "serial", "configData": v},
                }
                for n, v in visitors.items()
            ],
        },
    }
    return [model, dev]


class SerialSims:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, port: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "serial-sim"), "--port", port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert "ready" in proc.stdout.readline()
        self.procs.append(proc)
        return proc


@pytest.fixture
def serial_sims() -> Iterator[SerialSims]:
    sims = SerialSims()
    yield sims
    for proc in sims.procs:
        stop(proc)


async def start_serial(nursery: trio.Nursery, broker: Broker, path: Path) -> MapperShell:
    mqtt = MqttClient(broker.url)
    shell = MapperShell(mqtt, "serial", make_factory(mqtt), config_path=path)
    await nursery.start(mqtt.run)
    await nursery.start(shell.run)
    return shell


async def test_csv_lines_garbage_and_unplug(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    serial_sims: SerialSims,
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    sim = serial_sims.start(
        pty_pair.b, "--interval", "0.01", "--static", "--garbage-every", "4", "--crlf"
    )
    shell = await start_serial(
        nursery, mosquitto, write_yaml(tmp_path / "s.yaml", sensor_docs(pty_pair.a))
    )
    _, body = await watcher.wait_for(twin_has("sensor", "humidity", "45.6"))
    assert body["twin"]["temperature"]["actual"]["value"] == "21.5"
    assert body["twin"]["ok"] == {
        "actual": body["twin"]["ok"]["actual"],
        "metadata": {"type": "boolean"},
    }
    assert body["twin"]["ok"]["actual"]["value"] == "true"
    task = shell.devices["sensor"].task
    await watcher.wait_for(lambda t, b: task.statistics()["garbage"] >= 3)
    assert task.statistics()["lines"] >= 3 * task.statistics()["garbage"] - 6
    assert "not utf-8" in task.statistics()["last_garbage"]
    # a write to a sensor is refused, not crashed on
    watcher.mqtt.publish(
        "$hw/events/device/default/sensor/twin/update/delta",
        '{"event_id":"x","timestamp":1,"twin":{},"delta":{"temperature":"1"}}',
    )
    await watcher.wait_for(lambda t, b: task.statistics()["writes_refused"] == 1)
    # unplug: the tty disappears; plug back: same path
    stop(sim)
    pty_pair.stop()
    await watcher.wait_for(lambda t, b: watcher.states("sensor")[-1:] == ["offline"])
    pty_pair.start()
    serial_sims.start(pty_pair.b, "--interval", "0.01", "--static")
    await watcher.wait_for(lambda t, b: watcher.states("sensor") == ["online", "offline", "online"])
    assert task.statistics()["opens"] >= 2


async def test_regex_lines(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    serial_sims: SerialSims,
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    serial_sims.start(pty_pair.b, "--interval", "0.01", "--static", "--format", "kv")
    docs = sensor_docs(pty_pair.a, regex=r"T=(?P<t>-?[\d.]+) H=(?P<h>[\d.]+) S=(?P<s>\w+)")
    await start_serial(nursery, mosquitto, write_yaml(tmp_path / "s.yaml", docs))
    _, body = await watcher.wait_for(twin_has("sensor", "temperature", "21.5"))
    assert body["twin"]["humidity"]["actual"]["value"] == "45.6"
