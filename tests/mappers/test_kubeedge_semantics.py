"""KubeEdge's own sample manifests (/work/shared/kubeedge-samples, see SOURCES.md
there) read against a real pymodbus server: the values published are the ones
KubeEdge's Modbus mappers publish for them.

KubeEdge's conversion rules, from its code (no edgeflock ``dataType`` in the visitor,
or KubeEdge's own ``int``/``float`` names):

- mappers-go ``TransferData``: the visitor's registers, swapped by ``isRegisterSwap``
  (word order) then ``isSwap`` (bytes in each word), read as an UNSIGNED big-endian
  integer; an ``int`` property is ``int64(float64(raw) * scale)``, i.e. truncated
  toward zero; coils come back as one byte per 8 bits, so one coil on an ``int``
  property is ``1`` or ``0``.
- kubeedge/examples temperature mapper (``DataNormalize``): a ``float`` read from
  one holding register is ``uint16 * scale`` rounded half up to 2 decimals.
- edgecore 1.22 (``overrideDeviceInstanceConfig``): a DeviceModel's
  ``protocolConfigData`` and its properties' ``visitors`` are the defaults of each
  device of that model; the device's own keys win, key by key.

The manifests are the upstream files with only the node's endpoint changed (and,
for the one written for a serial port, a TCP endpoint instead), as SOURCES.md allows.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from mappers._errors import ConfigError
from mappers._manifest import docs_from_objects
from mappers.modbus._codec import DataType
from mappers.modbus._config import parse_device
from tests.mappers.conftest import Broker, Sim, Watcher
from tests.mappers.test_modbus_tcp import start_shell

SAMPLES = Path("/work/shared/kubeedge-samples")
if not SAMPLES.is_dir():  # the copy beside the work tree, as CI lays it out
    SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "kubeedge-samples"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]


def pointed_at(docs: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """The manifests with each Device's endpoint set to the test server."""
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == "Device":
            proto = d["spec"].setdefault("protocol", {"protocolName": "modbus"})
            proto["configData"] = {
                k: v
                for k, v in (proto.get("configData") or {}).items()
                if k not in ("serialPort", "baudRate", "dataBits", "parity", "stopBits")
            } | {"ip": "127.0.0.1", "port": port, "slaveID": 1}
            for p in d["spec"].get("properties") or []:
                p.pop("desired", None)  # a write would disturb the read
                p["collectCycle"] = p["reportCycle"] = 100
    return out


PAIRS = [
    ("kubeedge-proposal-beta1-model.yaml", "kubeedge-proposal-beta1-device.yaml"),
    ("examples-temperature-model.yaml", "examples-temperature-instance.yaml"),
    ("mappers-go-pr113-modbus-model.yaml", "mappers-go-pr113-modbus-instance.yaml"),
]


@pytest.mark.parametrize(("model", "instance"), PAIRS)
def test_each_modbus_sample_parses(model: str, instance: str) -> None:
    docs = load(model) + load(instance)
    (doc,) = docs_from_objects(docs, instance)
    assert doc.protocol_name == "modbus"
    dev = parse_device(docs_from_objects(pointed_at(docs, 1502), instance)[0])
    assert dev.endpoint.key == "tcp://127.0.0.1:1502"
    for p in dev.properties:
        assert p.codec.data_type in (DataType.UINT16, DataType.BOOL), p


def test_the_other_samples_parse_as_documents() -> None:
    (onvif,) = docs_from_objects(
        load("mappers-go-onvif-model.yaml") + load("mappers-go-onvif-instance.yaml"), "onvif"
    )
    assert onvif.protocol_name == "onvif" and onvif.properties
    assert docs_from_objects(load("mappers-go-mqtt-model.yaml"), "mqtt") == []


def model_defaults(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The proposal sample rewritten the KubeEdge 1.22 way: visitors and protocol
    settings in the DeviceModel, the device naming only its property and its port."""
    out = copy.deepcopy(docs)
    model = next(d for d in out if d["kind"] == "DeviceModel")
    device = next(d for d in out if d["kind"] == "Device")
    device["metadata"]["name"] = "model-defaults"
    model["metadata"]["name"] = device["spec"]["deviceModelRef"]["name"] = "defaults-model"
    prop = device["spec"]["properties"][0]
    model["spec"]["properties"][0]["visitors"] = prop.pop("visitors")
    config = device["spec"]["protocol"]["configData"]
    model["spec"]["protocolConfigData"] = {k: v for k, v in config.items() if k != "port"}
    device["spec"]["protocol"]["configData"] = {"port": config["port"]}
    return out


def test_model_defaults_are_merged_and_the_device_wins_key_by_key() -> None:
    docs = model_defaults(pointed_at(load(PAIRS[0][0]) + load(PAIRS[0][1]), 1502))
    dev = parse_device(docs_from_objects(docs, "1.22")[0])
    assert dev.endpoint.key == "tcp://127.0.0.1:1502"
    temp = dev.properties[0]
    assert (temp.register.value, temp.address) == ("HoldingRegister", 2)
    assert temp.codec.byte_swap and temp.codec.word_swap
    # the device's own visitor key overrides the model's
    device = next(d for d in docs if d["kind"] == "Device")
    device["spec"]["properties"][0]["visitors"] = {"configData": {"offset": 7}}
    assert parse_device(docs_from_objects(docs, "1.22")[0]).properties[0].address == 7
    # a model default that is not a mapping is refused, not ignored
    model = next(d for d in docs if d["kind"] == "DeviceModel")
    model["spec"]["protocolConfigData"] = "ip=1.2.3.4"
    with pytest.raises(ConfigError, match="protocolConfigData"):
        docs_from_objects(docs, "1.22")


def write_server(port: int, holding: dict[int, int], coils: dict[int, bool]) -> None:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port)
    try:
        assert client.connect()
        for address, value in holding.items():
            assert not client.write_register(address, value, device_id=1).isError()
        for address, bit in coils.items():
            assert not client.write_coil(address, bit, device_id=1).isError()
    finally:
        client.close()


async def test_samples_publish_kubeedge_values_from_a_real_server(
    tmp_path: Path, mosquitto: Broker, modbus_tcp: Sim, watcher: Watcher, nursery: trio.Nursery
) -> None:
    # holding 0 = 65535, holding 2 = 0xFFFE; coil 0 on, coil 2 on
    await trio.to_thread.run_sync(
        write_server, modbus_tcp.port, {0: 0xFFFF, 2: 0xFFFE}, {0: True, 2: True}
    )
    port = modbus_tcp.port
    proposal = pointed_at(load(PAIRS[0][0]) + load(PAIRS[0][1]), port)
    scaled = copy.deepcopy(proposal)
    for d in scaled:
        d["metadata"]["name"] = d["metadata"]["name"].replace("beta1", "scaled")
        if d["kind"] == "Device":
            d["spec"]["deviceModelRef"]["name"] = "scaled-model"
            d["spec"]["properties"][0]["visitors"]["configData"]["scale"] = 0.1
    docs = (
        proposal
        + scaled
        + model_defaults(proposal)
        + pointed_at(load(PAIRS[1][0]) + load(PAIRS[1][1]), port)
        + pointed_at(load(PAIRS[2][0]) + load(PAIRS[2][1]), port)
    )
    path = tmp_path / "kubeedge.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    await start_shell(nursery, mosquitto, config_path=path)

    swapped = 0xFEFF  # 0xFFFE with isRegisterSwap (one word: no-op) then isSwap
    expected = {
        # INT, unsigned: 65279 (a signed reading would give -257)
        ("beta1-device", "temp"): str(swapped),
        # INT, scale 0.1: int64(65279 * 0.1) = 6527, truncated toward zero (not 6528)
        ("scaled-device", "temp"): str(math.trunc(swapped * 0.1)),
        # the 1.22 layout reads the same register the same way
        ("model-defaults", "temp"): str(swapped),
        # FLOAT, one register, scale 0.1: uint16 65535 * 0.1 rounded to 2 decimals
        ("temperature-instance", "temperature"): "6553.5",
        # INT on a coil: 1
        ("temperature-instance", "temperature-switch"): "1",
        ("modbus-instance-01", "temperature"): "1",
    }

    def all_seen() -> bool:
        return all(
            watcher.twin_values(dev).get(prop) == value for (dev, prop), value in expected.items()
        )

    with trio.fail_after(20):
        while not all_seen():
            await watcher.changed.wait()
    assert math.trunc(swapped * 0.1) == 6527

    # the coil switched off reads 0, not "false"
    await trio.to_thread.run_sync(write_server, port, {}, {0: False})
    with trio.fail_after(20):
        while watcher.twin_values("temperature-instance").get("temperature-switch") != "0":
            await watcher.changed.wait()
