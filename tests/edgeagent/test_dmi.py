"""KubeEdge's DMI served by the agent, end to end: the in-process gateway, a real
agent with ``dmi`` on a real unix socket, and a mapper side built here from the
published protos (``_dmi_api_pb2``): it calls DeviceManagerService on the
agent's socket and serves DeviceMapperService on its own to receive pushes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import yaml
from google.protobuf import wrappers_pb2

from edgeagent import _dmi_api_pb2
from edgeagent._config import AgentConfig, ConfigError, load_config
from edgeagent._dmi import FORGET_AFTER, DmiServer, device_message, model_message
from edgeagent._meta import Meta
from edgeagent._twin import DeviceTwin
from edgeproto import Apply, Entry, encode_object, topics
from tests.conftest import Agent, Gateway, edgectl, join_node, start_agent, wait_for
from tests.mqtt_fixtures import open_broker, open_client

pb: Any = _dmi_api_pb2
API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"
NODE = "pi-dmi"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "modbus-sensor.yaml"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="dmi-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def model(name: str, protocol: str = "modbus") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "protocol": protocol,
            "properties": [
                {"name": "temperature", "type": "INT", "accessMode": "ReadOnly", "unit": "C"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "maximum": "90"},
            ],
        },
    }


def device(name: str, node: str = NODE, protocol: str = "modbus") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "thermo"},
            "nodeName": node,
            "protocol": {
                "protocolName": protocol,
                "configData": {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": 5020}},
            },
            "properties": [
                {
                    "name": "temperature",
                    "collectCycle": 1000,
                    "reportCycle": 2000,
                    "reportToCloud": True,
                    "visitors": {
                        "protocolName": protocol,
                        "configData": {"register": "HoldingRegister", "offset": 0, "scale": 0.5},
                    },
                },
                {"name": "setpoint", "desired": {"value": "20"}},
            ],
        },
    }


class Mapper:
    """The mapper side: a DeviceMapperService server recording what it is told,
    and blocking DeviceManagerService calls to the agent."""

    def __init__(self, agent_socket: Path, own_socket: Path) -> None:
        self.agent_socket = agent_socket
        self.own_socket = own_socket
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._recorder(name),
                request_deserializer=getattr(pb, name + "Request").FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
            for name in (
                "RegisterDevice",
                "RemoveDevice",
                "UpdateDevice",
                "CreateDeviceModel",
                "RemoveDeviceModel",
                "UpdateDeviceModel",
            )
        }
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1beta1.DeviceMapperService", handlers),)
        )
        self.server.add_insecure_port(f"unix://{own_socket}")
        self.server.start()
        self.channel = grpc.insecure_channel(f"unix://{agent_socket}")

    def _recorder(self, name: str) -> Any:
        def record(request: Any, context: Any) -> Any:
            with self._lock:
                self.calls.append((name, request))
            return getattr(pb, name + "Response")()

        return record

    def seen(self, name: str) -> list[Any]:
        with self._lock:
            return [r for n, r in self.calls if n == name]

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None).wait()

    async def call(self, method: str, request: Any) -> Any:
        stub = self.channel.unary_unary(
            "/v1beta1.DeviceManagerService/" + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=getattr(pb, method + "Response").FromString,
        )
        return await trio.to_thread.run_sync(lambda: stub(request, timeout=15))

    async def refused(self, method: str, request: Any) -> tuple[Any, str]:
        with pytest.raises(grpc.RpcError) as info:
            await self.call(method, request)
        return info.value.code(), info.value.details()

    async def report_once_loaded(self, name: str, values: dict[str, str]) -> None:
        """Report until the agent's twin has loaded the device (it follows the
        store a moment after the DMI server: UNAVAILABLE until then)."""

        async def accepted() -> bool:
            try:
                await self.report(name, values)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                return False
            return True

        await wait_for(accepted)

    async def register(self, protocol: str = "modbus", with_data: bool = True) -> Any:
        info = pb.MapperInfo(
            name=f"{protocol}-mapper",
            version="v1.0",
            api_version="v1beta1",
            protocol=protocol,
            address=str(self.own_socket).encode(),
            state="OK",
        )
        return await self.call(
            "MapperRegister", pb.MapperRegisterRequest(withData=with_data, mapper=info)
        )

    async def report(self, name: str, values: dict[str, str], namespace: str = "default") -> Any:
        twins = [
            pb.Twin(
                propertyName=k,
                reported=pb.TwinProperty(value=v, metadata={"type": "integer", "timestamp": "1"}),
                observedDesired=pb.TwinProperty(value=""),
            )
            for k, v in values.items()
        ]
        req = pb.ReportDeviceStatusRequest(
            deviceName=name, deviceNamespace=namespace, reportedDevice=pb.DeviceStatus(twins=twins)
        )
        return await self.call("ReportDeviceStatus", req)


async def start_dmi_agent(
    nursery: trio.Nursery,
    gateway: Gateway,
    tmp_path: Path,
    sockdir: Path,
    names: list[str],
    others: int = 0,  # devices on this node created before
    **overrides: Any,
) -> Agent:
    await join_node(gateway, NODE, tmp_path / "agent")
    code, body = await gateway.api("POST", f"{API}/devicemodels", model("thermo"))
    assert code == 201, body
    for n in names:
        code, body = await gateway.api("POST", f"{API}/devices", device(n))
        assert code == 201, body
    dmi = f"unix://{sockdir}/dmi.sock"
    agent = await start_agent(nursery, tmp_path / "agent", dmi=dmi, **overrides)
    await wait_for(lambda: agent.status()["objects"].get("Device", 0) == len(names) + others)
    await wait_for(lambda: (sockdir / "dmi.sock").exists())
    return agent


def unpack(value: Any) -> Any:
    for kind in ("Int32Value", "Int64Value", "FloatValue", "BoolValue", "StringValue"):
        w = getattr(wrappers_pb2, kind)()
        if value.Unpack(w):
            return w.value
    raise AssertionError(value.type_url)


def reported(dev: dict[str, Any]) -> dict[str, str]:
    twins = (dev.get("status") or {}).get("twins") or []
    return {t["propertyName"]: t["reported"]["value"] for t in twins if "reported" in t}


async def test_register_push_report_and_remove(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    # Another protocol's device on this node and a modbus device of another node
    # are not the mapper's.
    code, _ = await gateway.api("POST", f"{API}/devices", device("ble-1", protocol="bluetooth"))
    assert code == 201
    code, _ = await gateway.api("POST", f"{API}/devices", device("far-1", node="pi-other"))
    assert code == 201
    await start_dmi_agent(nursery, gateway, tmp_path, sockdir, ["thermo-1"], others=1)
    mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
    try:
        # Register: the node's modbus devices and their model come back.
        resp = await mapper.register()
        assert [d.name for d in resp.deviceList] == ["thermo-1"]
        assert [m.name for m in resp.modelList] == ["thermo"]
        dev = resp.deviceList[0]
        assert dev.namespace == "default" and dev.spec.deviceModelReference == "thermo"
        assert dev.spec.protocol.protocolName == "modbus"
        data = dev.spec.protocol.configData.data
        assert unpack(data["slaveID"]) == 1
        assert json.loads(unpack(data["tcp"])) == {"ip": "127.0.0.1", "port": 5020}
        temp, setpoint = dev.spec.properties
        assert (temp.collectCycle, temp.reportCycle, temp.reportToCloud) == (1000, 2000, True)
        assert unpack(temp.visitors.configData.data["scale"]) == 0.5
        assert setpoint.desired.value == "20"
        props = {p.name: p for p in resp.modelList[0].spec.properties}
        assert props["setpoint"].maximum == "90" and props["temperature"].unit == "C"

        # A device applied through the gateway's API reaches the mapper.
        code, _ = await gateway.api("POST", f"{API}/devices", device("thermo-2"))
        assert code == 201
        got = await wait_for(lambda: mapper.seen("RegisterDevice"), timeout=10)
        assert [r.device.name for r in got] == ["thermo-2"]

        # A reported value reaches the Device's status at the gateway.
        await mapper.report_once_loaded("thermo-1", {"temperature": "23"})

        async def shows() -> Any:
            code, body = await gateway.api("GET", f"{API}/devices/thermo-1")
            return code == 200 and reported(body).get("temperature") == "23" and body

        body = await wait_for(shows, timeout=10)
        twin = next(t for t in body["status"]["twins"] if t["propertyName"] == "temperature")
        assert twin["reported"]["metadata"]["timestamp"] != "1"  # the edge's clock
        # (--token=T: a token may begin with "-", which argparse would take for an option)
        code, out, err = await edgectl(
            "--server", gateway.api_url, f"--token={gateway.token}", "get", "devices"
        )
        assert code == 0, err
        row = next(line for line in out.splitlines() if line.startswith("thermo-1 "))
        assert "temperature=23" in row, out

        # A state report too.
        req = pb.ReportDeviceStatesRequest(
            deviceName="thermo-1", deviceNamespace="default", state="online"
        )
        await mapper.call("ReportDeviceStates", req)

        async def online() -> bool:
            _, body = await gateway.api("GET", f"{API}/devices/thermo-1")
            return (body.get("status") or {}).get("state") == "online"

        await wait_for(online, timeout=10)

        # A changed device is an UpdateDevice; a deleted one a RemoveDevice.
        changed = device("thermo-2")
        changed["spec"]["properties"][1]["desired"] = {"value": "25"}
        _, cur = await gateway.api("GET", f"{API}/devices/thermo-2")
        changed["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        code, body = await gateway.api("PUT", f"{API}/devices/thermo-2", changed)
        assert code == 200, body
        upd = await wait_for(lambda: mapper.seen("UpdateDevice"), timeout=10)
        assert upd[-1].device.spec.properties[1].desired.value == "25"
        code, _ = await gateway.api("DELETE", f"{API}/devices/thermo-2")
        assert code == 200
        gone = await wait_for(lambda: mapper.seen("RemoveDevice"), timeout=10)
        assert [(r.deviceNamespace, r.deviceName) for r in gone] == [("default", "thermo-2")]
        assert not mapper.seen("CreateDeviceModel")  # told at registration
    finally:
        await trio.to_thread.run_sync(mapper.close)


async def test_bad_requests_get_grpc_codes_and_lose_nothing(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    code, _ = await gateway.api("POST", f"{API}/devices", device("far-1", node="pi-other"))
    assert code == 201
    await start_dmi_agent(nursery, gateway, tmp_path, sockdir, ["thermo-1"])
    mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
    C = grpc.StatusCode
    try:
        await mapper.report_once_loaded("thermo-1", {"temperature": "21"})
        code, msg = await mapper.refused("MapperRegister", pb.MapperRegisterRequest(withData=True))
        assert code == C.INVALID_ARGUMENT and "protocol" in msg
        code, msg = await mapper.refused(
            "ReportDeviceStatus", pb.ReportDeviceStatusRequest(deviceNamespace="default")
        )
        assert code == C.INVALID_ARGUMENT and "deviceName" in msg
        code, msg = await mapper.refused("ReportDeviceStatus", pb.ReportDeviceStatusRequest())
        assert code == C.INVALID_ARGUMENT
        no_reported = pb.ReportDeviceStatusRequest(
            deviceName="thermo-1",
            deviceNamespace="default",
            reportedDevice=pb.DeviceStatus(twins=[pb.Twin(propertyName="temperature")]),
        )
        code, msg = await mapper.refused("ReportDeviceStatus", no_reported)
        assert code == C.INVALID_ARGUMENT and "reported" in msg
        with pytest.raises(grpc.RpcError) as info:  # not a property name KubeEdge allows
            await mapper.report("thermo-1", {"": "1"})
        assert info.value.code() == C.INVALID_ARGUMENT
        for name in ("nope", "far-1"):  # unknown; another node's device
            with pytest.raises(grpc.RpcError) as info:
                await mapper.report(name, {"temperature": "1"})
            assert info.value.code() == C.NOT_FOUND, info.value.details()
            assert NODE in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            await mapper.report("thermo-1", {"temperature": "1"}, namespace="other")
        assert info.value.code() == C.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:  # not an INT
            await mapper.report("thermo-1", {"temperature": "warm"})
        assert info.value.code() == C.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:  # huge: refused before decoding
            await mapper.report("thermo-1", {"temperature": "9" * (2 << 20)})
        assert info.value.code() == C.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            await mapper.call(
                "ReportDeviceStates",
                pb.ReportDeviceStatesRequest(deviceName="thermo-1", deviceNamespace="default"),
            )
        assert info.value.code() == C.INVALID_ARGUMENT

        # Nothing of the refused reports got in; the accepted value is kept and
        # the server still answers.
        await mapper.report("thermo-1", {"setpoint": "22"})

        async def both() -> bool:
            _, body = await gateway.api("GET", f"{API}/devices/thermo-1")
            return reported(body) == {"temperature": "21", "setpoint": "22"}

        await wait_for(both, timeout=10)
    finally:
        await trio.to_thread.run_sync(mapper.close)


async def test_socket_is_private_replaces_a_stale_one_and_goes_on_exit(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    path = sockdir / "dmi.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a killed agent's socket: bound, nobody listening
    stale.close()
    old_inode = path.stat().st_ino
    agent = await start_dmi_agent(nursery, gateway, tmp_path, sockdir, [])
    await wait_for(lambda: path.stat().st_ino != old_inode)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    mapper = Mapper(path, sockdir / "modbus.sock")
    try:
        resp = await mapper.register()
        assert list(resp.deviceList) == []
    finally:
        await trio.to_thread.run_sync(mapper.close)
    await agent.stop()
    assert not path.exists()
    assert sorted(os.listdir(sockdir)) == []  # no private bind directory left


async def test_an_unreachable_mapper_is_retried_then_gets_its_push(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    await start_dmi_agent(nursery, gateway, tmp_path, sockdir, [])
    mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
    await mapper.register()
    await trio.to_thread.run_sync(lambda: mapper.server.stop(None).wait())  # the mapper dies
    code, _ = await gateway.api("POST", f"{API}/devices", device("thermo-9"))
    assert code == 201
    # ...and comes back on the same socket: the device reaches it.
    back = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
    try:
        got = await wait_for(lambda: back.seen("RegisterDevice"), timeout=15)
        assert got[0].device.name == "thermo-9"
    finally:
        mapper.channel.close()
        await trio.to_thread.run_sync(back.close)


async def test_one_twin_serves_mqtt_and_dmi(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    async with open_broker(tmp_path) as broker:
        await start_dmi_agent(nursery, gateway, tmp_path, sockdir, ["thermo-1"], mqtt=broker.url)
        # KubeEdge 1.17+'s form: edgecore's DMI server addresses the device as namespace/name.
        doc = topics.device_topic("default/thermo-1", topics.TWIN_UPDATE_DOCUMENT)
        app = await open_client(nursery, broker.url, (doc,))
        mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
        try:
            # A value reported over DMI is published on the bus as the twin's
            # document (reported again until the app's subscription is in place).
            sent = iter(range(1000))

            async def published() -> Any:
                await mapper.report_once_loaded("thermo-1", {"temperature": str(next(sent))})
                return [
                    d["twin"]["temperature"]
                    for d in app.on(doc)
                    if "actual" in d["twin"].get("temperature", {}).get("current", {})
                ]

            twins = await wait_for(published, timeout=10)
            assert twins[-1]["current"]["actual"]["value"].isdigit()
            # ...and an MQTT update of the same twin is what DMI's next report merges with.
            app.publish(
                topics.device_topic("thermo-1", topics.TWIN_UPDATE),
                {"event_id": "m", "timestamp": 1, "twin": {"setpoint": {"actual": {"value": "7"}}}},
            )

            async def both() -> bool:
                _, body = await gateway.api("GET", f"{API}/devices/thermo-1")
                got = reported(body)
                return got.get("setpoint") == "7" and "temperature" in got

            await wait_for(both, timeout=10)
        finally:
            await trio.to_thread.run_sync(mapper.close)


async def test_a_registered_mapper_is_followed_across_an_agent_restart(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, sockdir: Path
) -> None:
    # A mapper registers once, when it starts (mapper-framework): after the
    # agent restarts it still gets what changed while the agent was down.
    agent = await start_dmi_agent(nursery, gateway, tmp_path, sockdir, ["thermo-1", "thermo-2"])
    mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
    try:
        resp = await mapper.register()
        assert [d.name for d in resp.deviceList] == ["thermo-1", "thermo-2"]
        await agent.stop()
        code, _ = await gateway.api("DELETE", f"{API}/devices/thermo-1")
        assert code == 200
        changed = device("thermo-2")
        changed["spec"]["properties"][1]["desired"] = {"value": "30"}
        _, cur = await gateway.api("GET", f"{API}/devices/thermo-2")
        changed["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        code, _ = await gateway.api("PUT", f"{API}/devices/thermo-2", changed)
        assert code == 200
        code, _ = await gateway.api("POST", f"{API}/devices", device("thermo-3"))
        assert code == 201
        await start_agent(nursery, tmp_path / "agent", dmi=f"unix://{sockdir}/dmi.sock")
        removed = await wait_for(lambda: mapper.seen("RemoveDevice"), timeout=15)
        assert [r.deviceName for r in removed] == ["thermo-1"]
        added = await wait_for(lambda: mapper.seen("RegisterDevice"), timeout=15)
        assert [r.device.name for r in added] == ["thermo-3"]
        updated = await wait_for(lambda: mapper.seen("UpdateDevice"), timeout=15)
        assert [r.device.name for r in updated] == ["thermo-2"]
        assert updated[0].device.spec.properties[1].desired.value == "30"
    finally:
        await trio.to_thread.run_sync(mapper.close)


async def test_a_mapper_gone_for_good_is_retried_then_forgotten(
    tmp_path: Path, sockdir: Path, autojump_clock: trio.abc.Clock
) -> None:
    # The agent's twin and DMI server on a real store, without gateway or hub
    # (the device is put in the store as the sync would), so that the clock can
    # jump through the five minutes of backoff.
    config = AgentConfig(
        data_dir=tmp_path, node=NODE, hub_url="wss://unused", dmi=f"unix://{sockdir}/dmi.sock"
    )
    meta = Meta(config.meta_path)
    twin = DeviceTwin(config, meta)
    dmi = DmiServer(config, meta, twin)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(twin.run)
            await nursery.start(dmi.run)
            mapper = Mapper(sockdir / "dmi.sock", sockdir / "modbus.sock")
            await mapper.register()
            await trio.to_thread.run_sync(mapper.close)  # gone, and never back
            obj = device("thermo-1")
            gone = trio.current_time()  # the first push fails after this
            entry = Entry("devices/default/thermo-1", 11, encode_object(obj))
            await meta.apply(Apply([entry], [], 11))
            # A generous virtual timeout: the clock also jumps while a thread
            # (a store write, a call to the dead socket) runs.
            await wait_for(lambda: dmi.statistics()["mappers"] == 0, timeout=86400, interval=1.0)
            assert trio.current_time() - gone >= FORGET_AFTER  # not forgotten early
            stats = dmi.statistics()
            assert stats["mappers_forgotten"] == 1
            assert stats["push_retries"] >= 1  # retried with backoff before that
            assert stats.get("push_RegisterDevice", 0) == 0
            nursery.cancel_scope.cancel()
    finally:
        meta.close()
    assert not (sockdir / "dmi.sock").exists()


def test_dmi_must_be_a_unix_socket_url(tmp_path: Path) -> None:
    (tmp_path / "enrollment.json").write_text(json.dumps({"node": NODE, "hub": "wss://x"}))
    (tmp_path / "agent.toml").write_text('dmi = "tcp://127.0.0.1:9000"\n')
    with pytest.raises(ConfigError, match="dmi must be unix:///PATH"):
        load_config(tmp_path)
    (tmp_path / "agent.toml").write_text('dmi = "unix:///run/edgeflock/dmi.sock"\n')
    assert load_config(tmp_path).dmi == "unix:///run/edgeflock/dmi.sock"


def test_the_example_manifest_converts() -> None:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    dev = device_message(next(d for d in docs if d["kind"] == "Device"))
    mod = model_message(next(d for d in docs if d["kind"] == "DeviceModel"))
    assert dev.name == "demo-sensor" and dev.spec.protocol.protocolName == "modbus"
    visitors = {p.name: p.visitors.configData.data for p in dev.spec.properties}
    assert unpack(visitors["temperature"]["isRegisterSwap"]) is True
    assert unpack(visitors["humidity"]["register"]) == "HoldingRegister"
    assert [p.name for p in mod.spec.properties] == ["temperature", "humidity", "setpoint"]
    # Every property has desired and visitors (mapper-framework reads them unchecked).
    assert all(p.HasField("desired") and p.HasField("visitors") for p in dev.spec.properties)


def test_an_agent_without_dmi_imports_no_grpc() -> None:
    probe = (
        "import sys, edgeagent._cli, edgeagent._app, edgeagent._twin\n"
        "print('grpc' in sys.modules, 'edgeagent._dmi' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
