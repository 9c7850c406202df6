"""Device/DeviceModel → Modbus config: KubeEdge keys, extensions, clear validation errors."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import pytest

from mappers._errors import ConfigError
from mappers._manifest import docs_from_objects, docs_from_yaml
from mappers.modbus._codec import DataType
from mappers.modbus._config import SerialEndpoint, TcpEndpoint, parse_device
from mappers.modbus._frame import Register
from mappers.modbus._plan import plan_reads, requests_saved
from mappers.serial._config import parse_sensor
from tests.mappers._docs import device, model, write_yaml

TCP = {"slaveID": 3, "tcp": {"ip": "10.0.0.5", "port": 1502}}


def parse(dev: dict[str, Any]) -> Any:
    return parse_device(docs_from_objects([model(), dev], "test.yaml")[0])


def test_kubeedge_keys_and_extensions() -> None:
    dev = parse(device("d", TCP, ["temperature", "humidity", "relay"]))
    assert dev.endpoint == TcpEndpoint("10.0.0.5", 1502)
    assert dev.slave_id == 3
    t = dev.prop("temperature")
    assert (t.register, t.address, t.count) == (Register.HOLDING, 0, 2)
    assert t.codec.data_type is DataType.FLOAT32 and t.codec.word_swap and t.read_only
    h = dev.prop("humidity")
    # a float property on one register, no dataType: KubeEdge's reading (unsigned, 2 decimals)
    assert h.codec.data_type is DataType.UINT16 and h.codec.scale == 0.1
    assert h.codec.decimals == 2
    assert dev.prop("relay").codec.data_type is DataType.BOOL and not dev.prop("relay").read_only
    assert t.collect_cycle_ms == 100


def test_serial_settings_nested_and_flat() -> None:
    nested = {
        "slaveID": 1,
        "com": {
            "serialPort": "/dev/ttyUSB0",
            "baudRate": 19200,
            "dataBits": 8,
            "parity": "even",
            "stopBits": 1,
        },
    }
    assert parse(device("d", nested, ["status"])).endpoint == SerialEndpoint(
        "/dev/ttyUSB0", 19200, 8, "E", 1
    )
    flat = {"slaveID": 1, "serialPort": "/dev/ttyS0", "parity": "none"}
    assert parse(device("d", flat, ["status"])).endpoint == SerialEndpoint("/dev/ttyS0")
    rtu_tcp = {"slaveID": 1, "ip": "127.0.0.1", "port": 502, "rtuOverTcp": True}
    assert parse(device("d", rtu_tcp, ["status"])).endpoint.rtu


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["spec"]["properties"][0].update(collectCycle=0.5), "milliseconds"),
        (lambda d: d["spec"]["properties"][0].update(collectCycle=5), "milliseconds and must"),
        (
            lambda d: d["spec"]["properties"][0]["visitors"]["configData"].update(
                register="Holding Regs"
            ),
            "register: 'Holding Regs'",
        ),
        (
            lambda d: d["spec"]["properties"][0]["visitors"]["configData"].update(limit=1),
            "float32 needs 2 registers",
        ),
        (
            lambda d: d["spec"]["properties"][0]["visitors"]["configData"].update(
                dataType="int128"
            ),
            "dataType",
        ),
        (
            lambda d: d["spec"]["properties"][0]["visitors"]["configData"].update(
                byteOrder="middle"
            ),
            "byteOrder",
        ),
        (lambda d: d["spec"]["protocol"]["configData"].update(slaveID=300), "slaveID: 300"),
        (lambda d: d["spec"]["protocol"]["configData"].pop("tcp"), "needs tcp"),
    ],
)
def test_validation_names_device_and_key(mutate: Any, message: str) -> None:
    dev = device("bad", dict(TCP, tcp=dict(TCP["tcp"])), ["temperature"])
    mutate(dev)
    with pytest.raises(ConfigError, match=message) as info:
        parse(dev)
    assert "bad" in str(info.value)


def visitor(key: str, value: Any) -> Any:
    return lambda d: d["spec"]["properties"][0]["visitors"]["configData"].update({key: value})


def protocol(key: str, value: Any) -> Any:
    return lambda d: d["spec"]["protocol"]["configData"].update({key: value})


ABSURD = [
    (visitor("offset", math.inf), "offset: inf is not an integer"),
    (visitor("offset", 10**5000), "offset: an integer of 16610 bits not in 0..65535"),
    (visitor("limit", math.nan), "limit: nan is not an integer"),
    (visitor("scale", 10**400), "scale: an integer of 1329 bits is not a finite number"),
    (visitor("scale", "inf"), "scale: 'inf' is not a finite number"),
    (visitor("valueOffset", -math.inf), "valueOffset: -inf is not a finite number"),
    (protocol("slaveID", math.inf), "slaveID: inf is not an integer"),
    (protocol("timeout", -(10**400)), "timeout: an integer of 1329 bits not in 1..600000"),
]


@pytest.mark.parametrize(("mutate", "message"), ABSURD)
def test_absurd_numbers_are_config_errors(mutate: Any, message: str) -> None:
    # before: OverflowError from int(inf)/float(10**400), ValueError from str(10**5000)
    dev = device("bad", dict(TCP, tcp=dict(TCP["tcp"])), ["temperature"])
    mutate(dev)
    with pytest.raises(ConfigError, match=message) as info:
        parse(dev)
    assert "device default/bad" in str(info.value)


def sensor(config: dict[str, Any], visitor: dict[str, Any]) -> Any:
    dev = device("sensor", {"com": {"serialPort": "/dev/ttyUSB0"}, **config}, ["temperature"])
    dev["spec"]["protocol"]["protocolName"] = "serial"
    dev["spec"]["properties"][0]["visitors"] = {
        "protocolName": "serial",
        "configData": {"index": 0, **visitor},
    }
    return parse_sensor(docs_from_objects([model(), dev], "test.yaml")[0])


@pytest.mark.parametrize(
    ("config", "visitor", "message"),
    [
        ({}, {"scale": 10**400}, "scale: a huge integer is not a finite number"),
        ({}, {"scale": math.nan}, "scale: nan is not a finite number"),
        ({}, {"valueOffset": "-inf"}, "valueOffset: '-inf' is not a finite number"),
        ({}, {"index": math.inf}, "index: inf is not a finite number"),
        ({"maxLineLength": -math.inf}, {}, "maxLineLength: -inf is not a finite number"),
        ({"lineEnding": "\\x"}, {}, "lineEnding: .*escape"),
        ({"lineEnding": "\\ud800"}, {}, "lineEnding: .*surrogate"),
    ],
)
def test_absurd_serial_settings_are_config_errors(
    config: dict[str, Any], visitor: dict[str, Any], message: str
) -> None:
    assert sensor({}, {}).parser.fields[0].index == 0  # the base document is valid
    with pytest.raises(ConfigError, match=message) as info:
        sensor(config, visitor)
    assert "device default/sensor" in str(info.value)


def test_yaml_file_errors(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "d.yaml", [device("d", TCP, ["status"], model_name="nope")])
    with pytest.raises(ConfigError, match="DeviceModel 'nope' not in the file"):
        docs_from_yaml(path)
    (tmp_path / "x.yaml").write_text("kind: [")
    with pytest.raises(ConfigError, match="not YAML"):
        docs_from_yaml(tmp_path / "x.yaml")


def test_batching_contiguous_registers() -> None:
    dev = parse(
        device(
            "d",
            TCP,
            ["temperature", "humidity", "status", "setpoint", "target", "relay", "missing"],
        )
    )
    batches = plan_reads(dev.properties)
    spans = [(b.register, b.address, b.count, len(b.properties)) for b in batches]
    assert spans == [
        (Register.COIL, 3, 1, 1),
        (Register.HOLDING, 0, 4, 3),  # temperature 0-1, humidity 2, status 3
        (Register.HOLDING, 10, 3, 2),  # setpoint 10, target 11-12
        (Register.HOLDING, 200, 1, 1),
    ]
    assert requests_saved(dev.properties) == 3


def test_mappers_import_neither_agent_nor_gateway() -> None:
    root = Path(__file__).resolve().parents[2] / "mappers"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("edgeagent", "cloudgateway"), path
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ("edgeagent", "cloudgateway"), path


async def test_a_crashing_device_task_is_restarted_not_fatal(autojump_clock: object) -> None:
    from collections.abc import Mapping

    import trio

    from mappers._manifest import DeviceDoc
    from mappers._mqtt import MqttClient
    from mappers._runner import MapperShell
    from tests.conftest import wait_for

    runs: list[int] = []

    class Boom:
        name = "boom"

        async def run(self, *, task_status: object = None) -> None:
            runs.append(1)
            await trio.sleep(1)  # runs a (virtual) second, then crashes
            raise RuntimeError("bug")

        def on_delta(self, delta: Mapping[str, str]) -> None:
            pass

        def statistics(self) -> dict[str, Any]:
            return {}

    def factory(doc: DeviceDoc) -> Boom:
        return Boom()

    shell = MapperShell(MqttClient("tcp://127.0.0.1:1"), "x", factory, node="n")
    async with trio.open_nursery() as nursery:
        shell._nursery = nursery
        await shell._add(DeviceDoc("boom", "default", "x", {}, ()))
        await wait_for(  # virtual time (autojump_clock): restarts after back-off
            lambda: len(runs) >= 3 and shell.statistics()["device_crashes"] >= 2, timeout=60
        )
        nursery.cancel_scope.cancel()
