"""Local MQTT with the agent's credentials and ACLs (mqtt_auth), against a real
mosquitto started by ``scripts/mosquitto --auth`` and a real mapper MQTT client.

mosquitto drops an unauthorised publish without telling the subscribers, so
"the agent never saw it" is asserted by sending an authorised message from the
same client afterwards: the broker forwards one client's messages in order, so
once the later one has arrived the earlier one would have too."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from edgeagent._config import AgentConfig, ConfigError, load_config
from edgeagent._meta import Meta
from edgeagent._mqttauth import (
    AGENT_USER,
    MqttAuth,
    acl_text,
    credentials_path,
    hash_password,
    mapper_devices,
)
from edgeagent._twin import DeviceTwin, edge_bus_modules
from edgeproto import Apply, Entry, encode_object, topics
from mappers._credentials import load_credentials
from mappers._mqtt import MqttClient
from tests.mqtt_fixtures import Broker, open_broker, until

NODE = "pi-a"


def model() -> Entry:
    obj = {"metadata": {"name": "m", "namespace": "default"}, "spec": {"properties": []}}
    return Entry("devicemodels/default/m", 1, encode_object(obj))


def device(name: str, protocol: str, rev: int) -> Entry:
    obj = {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "m"},
            "nodeName": NODE,
            "protocol": {"protocolName": protocol, "configData": {}},
            "properties": [{"name": "temperature"}],
        },
    }
    return Entry(f"devices/default/{name}", rev, encode_object(obj))


def update(value: str) -> bytes:
    body = {"event_id": "e", "timestamp": 1, "twin": {"temperature": {"actual": {"value": value}}}}
    return json.dumps(body).encode()


@dataclass
class Edge:
    config: AgentConfig
    meta: Meta
    twin: DeviceTwin
    auth: MqttAuth
    broker: Broker

    def actual(self, device: str) -> str | None:
        prop = self.twin.twin(device).get("temperature")
        return prop.actual.value if prop is not None and prop.actual is not None else None


@pytest.fixture
async def edge(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Edge]:
    auth_dir = tmp_path / "auth"
    async with open_broker(tmp_path, auth=auth_dir) as broker:
        data = tmp_path / "agent"
        data.mkdir()
        config = AgentConfig(
            data_dir=data,
            node=NODE,
            hub_url="wss://unused",
            mqtt=broker.url,
            mqtt_auth=True,
            mqtt_auth_dir=str(auth_dir),
            mqtt_pid_file=str(broker.dir / "mosquitto.pid"),
        )
        meta = Meta(config.meta_path)
        await meta.apply(
            Apply([model(), device("d1", "modbus", 1), device("s1", "serial", 1)], [], 1)
        )
        modules = edge_bus_modules(config, meta)
        assert [name for name, _ in modules] == ["twin", "mqttauth", "eventbus"]
        twin, auth, bus = (run.__self__ for _, run in modules)  # type: ignore[attr-defined]
        scope = trio.CancelScope()

        async def runner(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    async with trio.open_nursery() as n:
                        for _, run in modules:
                            await n.start(run)
                        task_status.started()
            finally:
                meta.close()

        await nursery.start(runner)
        await until(lambda: bus.connected)
        yield Edge(config, meta, twin, auth, broker)
        scope.cancel()


async def open_mapper(nursery: trio.Nursery, edge: Edge, protocol: str) -> MqttClient:
    """A mapper's real MQTT client, logged in with the file the agent wrote."""
    cred = load_credentials(credentials_path(edge.config.auth_dir, protocol))
    client = MqttClient(edge.broker.url, username=cred.username, password=cred.password)
    await nursery.start(client.run)
    with trio.fail_after(5):
        await client.wait_connected()
    return client


async def test_anonymous_client_is_refused(edge: Edge) -> None:
    topic = topics.UPLOAD_PREFIX + "x"
    args = ["mosquitto_pub", "-p", str(edge.broker.port), "-q", "1", "-t", topic, "-m", "{}"]
    done = await trio.run_process(args, check=False, capture_stderr=True)
    assert done.returncode != 0
    assert b"not authorised" in done.stderr


async def test_mapper_publishes_only_its_own_devices_twin(
    nursery: trio.Nursery, edge: Edge
) -> None:
    mapper = await open_mapper(nursery, edge, "modbus")
    # Not its device (the serial mapper's), a cloud Event, a forged delta: all dropped.
    mapper.publish(topics.device_topic("s1", topics.TWIN_UPDATE), update("forged"))
    mapper.publish(topics.UPLOAD_PREFIX + "x", b'{"reason": "forged"}')
    mapper.publish(topics.device_topic("s1", topics.TWIN_UPDATE_DELTA), update("1"))
    mapper.publish(topics.device_topic("d1", topics.TWIN_UPDATE), update("21.5"))
    await until(lambda: edge.actual("d1") == "21.5")
    assert edge.actual("s1") is None
    stats = edge.twin.statistics()
    assert stats.get("uploads", 0) == 0 and stats.get("uploads_rejected", 0) == 0
    assert stats["twin_updates"] == 1


async def test_serial_mapper_cannot_touch_modbus_devices(nursery: trio.Nursery, edge: Edge) -> None:
    mapper = await open_mapper(nursery, edge, "serial")
    mapper.publish(topics.device_topic("d1", topics.TWIN_UPDATE), update("forged"))
    mapper.publish(topics.device_topic("s1", topics.TWIN_UPDATE), update("7"))
    await until(lambda: edge.actual("s1") == "7")
    assert edge.actual("d1") is None


async def test_acl_follows_a_newly_synced_device(nursery: trio.Nursery, edge: Edge) -> None:
    mapper = await open_mapper(nursery, edge, "modbus")
    reloads = edge.auth.statistics().get("reloads", 0)
    await edge.meta.apply(Apply([device("d2", "modbus", 2)], [], 2))
    await until(lambda: edge.auth.statistics().get("reloads", 0) > reloads)
    assert "$hw/events/device/d2/twin/update" in (edge.config.auth_dir / "acl").read_text()
    # SIGHUP is handled by mosquitto's loop a moment later: report until it lands.
    with trio.fail_after(5):
        while edge.actual("d2") != "3":
            mapper.publish(topics.device_topic("d2", topics.TWIN_UPDATE), update("3"))
            with trio.move_on_after(0.05):
                await until(lambda: edge.actual("d2") == "3")


async def test_mapper_credentials_survive_an_agent_restart(edge: Edge) -> None:
    path = credentials_path(edge.config.auth_dir, "modbus")
    before = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    again = MqttAuth(edge.config, edge.meta)
    await again.update()
    assert path.read_text() == before
    passwd = (edge.config.auth_dir / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == {
        AGENT_USER,
        "mapper-modbus",
        "mapper-serial",
    }


def test_password_hash_is_mosquitto_passwd_s(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), "u", "s3cret"], check=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    import base64

    salt = base64.b64decode(theirs.split("$")[3])
    assert hash_password("s3cret", salt=salt) == theirs


def test_acl_names_only_valid_devices_of_each_protocol() -> None:
    def obj(name: str, protocol: Any) -> tuple[str, dict[str, Any]]:
        spec = {"protocol": {"protocolName": protocol}} if protocol is not None else {}
        return f"devices/default/{name}", {"metadata": {"name": name}, "spec": spec}

    found = mapper_devices(
        [
            obj("a", "modbus"),
            obj("b", "serial"),
            obj("c", None),
            obj("bad#name", "modbus"),
            obj("d", "mod bus\nuser x"),
        ]
    )
    assert found == {"modbus": ["default/a"], "serial": ["default/b"]}
    acl = acl_text("n1", found)
    # Both forms the twin serves: KubeEdge 1.17+'s namespace/name and the bare name.
    assert "topic write $hw/events/device/default/a/twin/update" in acl
    assert "topic read $hw/events/device/default/a/#" in acl
    assert "topic write $hw/events/device/a/twin/update" in acl
    assert "topic read $hw/events/device//twin/update/result" in acl
    assert "bad#name" not in acl and "mod bus" not in acl
    # Nobody but the agent writes cloud Events or the cloud's desired values.
    writes = [ln for ln in acl.splitlines() if ln.startswith(("topic write", "topic readwrite"))]
    assert not [w for w in writes if "upload" in w or "delta" in w or "document" in w]
    assert writes[0] == "topic readwrite $hw/#"  # the agent's


def test_acl_grants_no_legacy_form_for_a_name_two_namespaces_use() -> None:
    def obj(ns: str, name: str, protocol: str) -> tuple[str, dict[str, Any]]:
        meta = {"name": name, "namespace": ns}
        return f"devices/{ns}/{name}", {
            "metadata": meta,
            "spec": {"protocol": {"protocolName": protocol}},
        }

    found = mapper_devices(
        [
            obj("plant-a", "pump", "modbus"),
            obj("plant-b", "pump", "serial"),
            obj("x", "y", "modbus"),
        ]
    )
    assert found == {"modbus": ["plant-a/pump", "x/y"], "serial": ["plant-b/pump"]}
    acl = acl_text("n1", found)
    modbus, serial = acl.split("user mapper-serial")
    assert "topic write $hw/events/device/plant-a/pump/twin/update" in modbus
    assert "plant-b" not in modbus and "plant-b/pump/twin/update" in serial
    # "pump" alone names neither device (the twin refuses it): nobody gets it.
    assert "$hw/events/device/pump/" not in acl
    assert "topic write $hw/events/device/y/twin/update" in modbus


async def test_mapper_publishes_current_form_for_its_own_devices_only(
    nursery: trio.Nursery, edge: Edge
) -> None:
    mapper = await open_mapper(nursery, edge, "modbus")
    mapper.publish(topics.device_topic("default/s1", topics.TWIN_UPDATE), update("forged"))
    mapper.publish(topics.device_topic("default/d1", topics.TWIN_UPDATE), update("21.5"))
    await until(lambda: edge.actual("default/d1") == "21.5")
    assert edge.actual("default/s1") is None
    assert edge.twin.statistics()["twin_updates"] == 1
    # The answer to an unreadable update comes on edgecore's topic, which it may read.
    mapper.subscribe(topics.UNADDRESSED_UPDATE_RESULT)
    with trio.fail_after(5):
        while True:  # until the SUBACK is in: the next refusal reaches it
            mapper.publish(topics.device_topic("default/d1", topics.TWIN_UPDATE), b"{nope")
            with trio.move_on_after(0.2):
                got = await mapper.incoming.receive()
                break
    assert got.topic == "$hw/events/device//twin/update/result"
    assert json.loads(got.payload)["code"] == 400


async def test_mapper_reads_only_its_own_devices_and_its_nodes_membership(
    nursery: trio.Nursery, edge: Edge
) -> None:
    mapper = await open_mapper(nursery, edge, "modbus")
    mapper.subscribe(topics.DEVICE_PREFIX + "+" + topics.TWIN_UPDATE_DELTA)
    mapper.subscribe(topics.membership_topic(NODE, topics.MEMBERSHIP_GET_RESULT))
    user, password = edge.auth.agent_credentials()
    agent = MqttClient(edge.broker.url, username=user, password=password)
    await nursery.start(agent.run)
    with trio.fail_after(5):
        await agent.wait_connected()
        # The SUBACKs are in once the membership answer (the agent's) comes back.
        mapper.publish(topics.membership_topic(NODE, topics.MEMBERSHIP_GET), b'{"event_id": "m"}')
        first = await mapper.incoming.receive()
        assert first.topic == topics.membership_topic(NODE, topics.MEMBERSHIP_GET_RESULT)
        # Deltas of the serial mapper's device are not delivered to the modbus mapper.
        agent.publish(topics.device_topic("s1", topics.TWIN_UPDATE_DELTA), b'{"delta": {}}')
        agent.publish(topics.device_topic("d1", topics.TWIN_UPDATE_DELTA), b'{"delta": {}}')
        got = await mapper.incoming.receive()
    assert got.topic == topics.device_topic("d1", topics.TWIN_UPDATE_DELTA)


def test_agent_toml_turns_auth_on(tmp_path: Path) -> None:
    (tmp_path / "enrollment.json").write_text('{"node": "n", "hub": "wss://h"}')
    (tmp_path / "agent.toml").write_text('mqtt_auth = true\nmqtt_auth_dir = "/srv/mqtt"\n')
    cfg = load_config(tmp_path)
    assert cfg.mqtt_auth and cfg.auth_dir == Path("/srv/mqtt")
    assert cfg.broker_pid_file == Path("/srv/mqtt/mosquitto.pid")
    (tmp_path / "agent.toml").write_text('mqtt_auth = "yes"\n')
    with pytest.raises(ConfigError, match="mqtt_auth must be bool"):
        load_config(tmp_path)


async def test_unwritable_auth_dir_does_not_hold_up_the_agent(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    blocker = tmp_path / "auth"
    blocker.write_text("a file where the directory should be")
    config = AgentConfig(
        data_dir=tmp_path, node=NODE, hub_url="wss://unused", mqtt_auth_dir=str(blocker)
    )
    meta = Meta(config.meta_path)
    try:
        auth = MqttAuth(config, meta)
        await nursery.start(auth.run)  # started although nothing could be written
        assert auth.statistics() == {"write_failures": 1}
        blocker.unlink()
        # Virtual time jumps whenever every task waits, also while the retry's
        # write runs in its worker thread: a virtual deadline could pass before
        # the write ends. So poll in virtual seconds under a real-time bound.
        give_up = time.monotonic() + 30
        while auth.statistics().get("writes") != 1:
            assert time.monotonic() < give_up, auth.statistics()
            await trio.sleep(1)
        assert (blocker / "acl").read_text().startswith("# written by edgeflock's agent")
    finally:
        nursery.cancel_scope.cancel()
        meta.close()
