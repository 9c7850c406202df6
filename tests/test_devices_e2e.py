"""Devices end to end: a real mosquitto, the in-process gateway, a real agent.

Mapper side is what a KubeEdge mapper does: ``mosquitto_pub``/``mosquitto_sub``
(or a test MQTT client) on the ``$hw/events/...`` topics."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edgeproto import topics
from tests.conftest import Agent, Gateway, join_node, start_agent, start_gateway, wait_for
from tests.mqtt_fixtures import Broker, MqttClient, open_broker, open_client


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"


def model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "INT", "accessMode": "ReadOnly"},
                {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
            ],
        },
    }


def device(name: str, node: str, setpoint: str = "20") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "thermo"},
            "nodeName": node,
            "properties": [
                {"name": "temperature"},
                {"name": "humidity"},
                {"name": "setpoint", "desired": {"value": setpoint}},
            ],
        },
    }


def report(values: dict[str, str], event_id: str = "e1") -> dict[str, Any]:
    ms = int(time.time() * 1000)
    return {
        "event_id": event_id,
        "timestamp": ms,
        "twin": {
            k: {"actual": {"value": v, "metadata": {"timestamp": ms}}, "metadata": {"type": "int"}}
            for k, v in values.items()
        },
    }


async def setup_node(
    nursery: trio.Nursery, gw: Gateway, tmp_path: Path, broker: Broker, names: list[str]
) -> Agent:
    await join_node(gw, "pi-d1", tmp_path / "agent")
    agent = await start_agent(nursery, tmp_path / "agent", mqtt=broker.url)
    code, body = await gw.api("POST", f"{API}/devicemodels", model("thermo"))
    assert code == 201, body
    for n in names:
        code, body = await gw.api("POST", f"{API}/devices", device(n, "pi-d1"))
        assert code == 201, body
    await wait_for(lambda: agent.status()["objects"].get("Device") == len(names), timeout=5)
    return agent


def reported(dev: dict[str, Any]) -> dict[str, str]:
    twins = (dev.get("status") or {}).get("twins") or []
    return {t["propertyName"]: t["reported"]["value"] for t in twins if "reported" in t}


async def test_reported_up_and_desired_down(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    await setup_node(nursery, gateway, tmp_path, broker, ["thermo-1"])
    mapper = await open_client(nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/+",))
    await mapper_accepted(mapper, "thermo-1")  # the agent's bus is subscribed

    # A reported value published with mosquitto_pub shows in the gateway within 1 s.
    t0 = trio.current_time()
    await trio.to_thread.run_sync(
        broker.pub,
        topics.device_topic("thermo-1", topics.TWIN_UPDATE),
        json.dumps(report({"temperature": "23"})),
    )

    async def shows() -> Any:
        code, body = await gateway.api("GET", f"{API}/devices/thermo-1")
        return code == 200 and reported(body).get("temperature") == "23" and body

    body = await wait_for(shows, timeout=1.0, interval=0.01)
    assert trio.current_time() - t0 < 1.0
    entry = next(t for t in body["status"]["twins"] if t["propertyName"] == "temperature")
    assert entry["reported"]["metadata"]["type"] == "int"
    assert int(entry["reported"]["metadata"]["timestamp"]) > 0

    # A new desired value applied at the gateway reaches the mapper as a delta.
    code, dev = await gateway.api("GET", f"{API}/devices/thermo-1")
    for p in dev["spec"]["properties"]:
        if p["name"] == "setpoint":
            p["desired"] = {"value": "25"}
    code, body = await gateway.api("PUT", f"{API}/devices/thermo-1", dev)
    assert code == 200, body
    delta = await mapper.wait_for(
        topics.device_topic("thermo-1", topics.TWIN_UPDATE_DELTA),
        lambda b: b["delta"].get("setpoint") == "25",
        timeout=10,
    )
    assert delta["delta"] == {"setpoint": "25"}
    assert delta["twin"]["setpoint"]["expected"]["value"] == "25"
    assert delta["event_id"] and delta["timestamp"] > 0

    # The mapper applies it: actual catches up, no delta outstanding; the status
    # says which desired value the reported one answers.
    mapper.publish(topics.device_topic("thermo-1", topics.TWIN_UPDATE), report({"setpoint": "25"}))

    async def converged() -> Any:
        _, body = await gateway.api("GET", f"{API}/devices/thermo-1")
        tw = {t["propertyName"]: t for t in body["status"]["twins"]}
        return "setpoint" in tw and tw["setpoint"]

    tw = await wait_for(converged, timeout=2)
    assert tw["reported"]["value"] == "25"
    assert tw["observedDesired"]["value"] == "25"

    # A desired value set at the edge goes up into the Device's spec.
    edge_set = {
        "event_id": "edge-set",
        "timestamp": 1,
        "twin": {"setpoint": {"expected": {"value": "30"}, "metadata": {"type": "int"}}},
    }
    mapper.publish(topics.device_topic("thermo-1", topics.TWIN_UPDATE), edge_set)

    async def spec_desired() -> bool:
        _, body = await gateway.api("GET", f"{API}/devices/thermo-1")
        props = {p["name"]: p for p in body["spec"]["properties"]}
        return (props["setpoint"].get("desired") or {}).get("value") == "30"

    await wait_for(spec_desired, timeout=3)


async def test_a_kubeedge_117_device_app_reaches_the_cloud_on_its_topics(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    """A device app written for KubeEdge 1.17+ addresses its device as
    ``namespace/name`` and is answered there; the edge, not the device, stamps
    the time that reaches the cloud (the app's clock says 2001)."""
    await setup_node(nursery, gateway, tmp_path, broker, ["thermo-n"])
    dev = topics.device_id("default", "thermo-n")
    app = await open_client(
        nursery,
        broker.url,
        (topics.DEVICE_PREFIX + "+/+/twin/update/+", topics.DEVICE_PREFIX + "+/+/state/+/+"),
    )
    await mapper_accepted(app, dev)
    stale_clock = 1_000_000_000_000  # 2001-09-09
    body = report({"temperature": "23"}, "app-1")
    body["twin"]["temperature"]["actual"]["metadata"]["timestamp"] = stale_clock
    before = int(time.time() * 1000)
    app.publish(topics.device_topic(dev, topics.TWIN_UPDATE), body)
    res = await app.wait_for(
        "$hw/events/device/default/thermo-n/twin/update/result",
        lambda b: b.get("event_id") == "app-1",
    )
    assert res["twin"]["temperature"]["actual"]["value"] == "23"
    app.publish(
        topics.device_topic(dev, topics.STATE_UPDATE), {"event_id": "s1", "state": "online"}
    )
    st = await app.wait_for(topics.device_topic(dev, topics.STATE_UPDATE_RESULT))
    assert st["device"]["lastOnlineTime"].endswith("Z")

    async def shows() -> Any:
        _, got = await gateway.api("GET", f"{API}/devices/thermo-n")
        status = got.get("status") or {}
        return reported(got).get("temperature") == "23" and status.get("state") and status

    status = await wait_for(shows, timeout=3)
    (entry,) = [t for t in status["twins"] if t["propertyName"] == "temperature"]
    assert int(entry["reported"]["metadata"]["timestamp"]) >= before
    assert status["state"] == "online" and status["lastOnlineTime"].endswith("Z")
    # The cloud's desired value reaches the app on its own form.
    code, obj = await gateway.api("GET", f"{API}/devices/thermo-n")
    for p in obj["spec"]["properties"]:
        if p["name"] == "setpoint":
            p["desired"] = {"value": "26"}
    code, got = await gateway.api("PUT", f"{API}/devices/thermo-n", obj)
    assert code == 200, got
    await app.wait_for(
        topics.device_topic(dev, topics.TWIN_UPDATE_DELTA),
        lambda b: b["delta"].get("setpoint") == "26",
        timeout=10,
    )


async def test_gateway_down_then_latest_values_arrive(
    nursery: trio.Nursery, tmp_path: Path, broker: Broker
) -> None:
    gw = await start_gateway(nursery, tmp_path / "gw")
    ports = dict(gw.ports)
    names = ["dev-a", "dev-b"]
    agent = await setup_node(nursery, gw, tmp_path, broker, names)
    mapper = await open_client(
        nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/result",)
    )
    await gw.stop()
    await wait_for(lambda: agent.status()["connected"] is False)

    # 1,000 reports while the gateway is down: 2 devices x 2 properties x 250 values,
    # in bursts of 200, each burst answered before the next.
    props = ["temperature", "setpoint"]
    n = 0
    for i in range(250):
        for name in names:
            for p in props:
                mapper.publish(
                    topics.device_topic(name, topics.TWIN_UPDATE), report({p: str(i)}, f"{name}{i}")
                )
                n += 1
        if i % 50 == 49:
            await mapper.wait_for(
                topics.device_topic("dev-b", topics.TWIN_UPDATE_RESULT),
                lambda b, i=i: b.get("event_id") == f"dev-b{i}",
            )
    assert n == 1000
    await wait_for(
        lambda: len(mapper.on(topics.device_topic("dev-b", topics.TWIN_UPDATE_RESULT))) >= 500,
        timeout=10,
    )
    ok = [b for _, b in mapper.got if "code" not in b]
    assert len(ok) == 1000, [b for _, b in mapper.got if "code" in b][:3]
    # Every result was sent after its batch committed: all is in the outbox.
    # Coalesced: one status row per device (plus node status), not 1,000 rows.
    assert agent.status()["outbox"] <= len(names) + 2

    gw = await start_gateway(nursery, tmp_path / "gw", ports)

    async def all_latest() -> bool:
        for name in names:
            code, body = await gw.api("GET", f"{API}/devices/{name}")
            if code != 200 or reported(body) != {p: "249" for p in props}:
                return False
        return True

    await wait_for(all_latest, timeout=15)
    await wait_for(lambda: agent.status()["outbox"] == 0, timeout=5)
    await gw.stop()


async def test_broker_restart_mid_stream(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    agent = await setup_node(nursery, gateway, tmp_path, broker, ["thermo-r"])
    topic = topics.device_topic("thermo-r", topics.TWIN_UPDATE)
    mapper = await open_client(nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/+",))

    sent = 0

    async def stream(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            mapper.publish(topic, report({"temperature": str(sent)}, f"s{sent}"))
            await trio.lowlevel.checkpoint()

    await stream(100)
    await broker.stop()
    await stream(100)  # queued by the mapper's client while the broker is gone
    await broker.start()
    # Messages published before the agent has resubscribed are lost (clean
    # session, as with KubeEdge); keep streaming until it answers again.
    results = topics.device_topic("thermo-r", topics.TWIN_UPDATE_RESULT)

    def answered_after(mark: int) -> bool:
        answered = [b.get("event_id", "") for b in mapper.on(results)]
        return any(e.startswith("s") and int(e[1:]) > mark for e in answered)

    with trio.fail_after(15):
        while True:
            mark = sent
            await stream(10)
            with trio.move_on_after(0.1):  # answered, or stream on
                await mapper.wait_for(results, lambda b, m=mark: answered_after(m))
            if answered_after(mark):
                break
    await stream(100)

    async def latest() -> bool:
        _, body = await gateway.api("GET", f"{API}/devices/thermo-r")
        return reported(body).get("temperature") == str(sent)

    await wait_for(latest, timeout=15)
    assert agent.status()["running"] is True
    # After the restart the agent answers again (it resubscribed).
    before = len(mapper.on(topics.device_topic("thermo-r", topics.TWIN_UPDATE_RESULT)))
    mapper.publish(topic, report({"temperature": "100000"}, "final"))
    await mapper.wait_for(
        topics.device_topic("thermo-r", topics.TWIN_UPDATE_RESULT),
        lambda b: b.get("event_id") == "final",
    )
    assert len(mapper.on(topics.device_topic("thermo-r", topics.TWIN_UPDATE_RESULT))) > before


async def test_uploaded_events_become_node_events(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    """``$hw/events/upload/<what>`` on the board → a Kubernetes Event about the
    node; what is not JSON or text, or too big, is refused and loses nothing else."""
    agent = await setup_node(nursery, gateway, tmp_path, broker, ["thermo-ev"])
    path = "/api/v1/namespaces/default/events"

    async def events() -> list[dict[str, Any]]:
        code, body = await gateway.api("GET", path)
        assert code == 200, body
        return list(body["items"])

    # The bus subscribes after the agent starts (one SUBSCRIBE for all its topics).
    mapper = await open_client(nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/+",))
    await mapper_accepted(mapper, "thermo-ev")
    await trio.to_thread.run_sync(
        broker.pub, topics.UPLOAD_PREFIX + "alarm/overheat", json.dumps({"temp": 91})
    )
    await wait_for(events, timeout=10)
    await trio.to_thread.run_sync(broker.pub, topics.UPLOAD_PREFIX + "door", b"\xff\xfe\x00")
    await trio.to_thread.run_sync(broker.pub, topics.UPLOAD_PREFIX + "big", b"x" * 9000)
    await trio.to_thread.run_sync(broker.pub, topics.UPLOAD_PREFIX + "door", "opened")

    async def door_opened() -> list[dict[str, Any]] | None:
        got = await events()
        return got if any(e["message"] == "opened" for e in got) else None

    got = await wait_for(door_opened, timeout=5)
    ev = next(
        e for e in got if e["metadata"]["annotations"]["edgeflock.io/topic"] == "alarm/overheat"
    )
    assert ev["message"] == '{"temp":91}'
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "pi-d1"}
    assert ev["reason"] == "EdgeEvent" and ev["type"] == "Normal" and ev["count"] == 1
    assert ev["source"] == {"component": "edgeflock-eventbus", "host": "pi-d1"}
    # the refused ones never left the board; each accepted one is one Event
    topics_seen = [e["metadata"]["annotations"]["edgeflock.io/topic"] for e in got]
    assert "big" not in topics_seen
    assert topics_seen.count("door") == 1
    code, out, err = await gateway.edgectl("get", "events")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["LAST", "SEEN", "TYPE", "REASON"]
    assert any("node/pi-d1" in r and "opened" in r for r in rows)
    # Events are about the node, never sent to it: a Device created after them
    # reaches the board (the sync is in revision order), and no Event did.
    code, body = await gateway.api("POST", f"{API}/devices", device("thermo-ev2", "pi-d1"))
    assert code == 201, body
    await wait_for(lambda: agent.status()["objects"].get("Device") == 2, timeout=5)
    assert "Event" not in (await trio.to_thread.run_sync(lambda: agent_objects(tmp_path)))


def agent_objects(tmp_path: Path) -> dict[str, int]:
    from edgeagent._cli import agent_status

    return dict(agent_status(tmp_path / "agent")["objects"])


async def test_hostile_uploads_cannot_stall_the_boards_reports(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    """Any local process may publish on ``$hw/events/upload/#``. 80 uploads the
    gateway could not decode or keep (nested 400 deep: more than the outbox's
    in-flight window of 64) are refused at the edge; twin values still reach
    the gateway."""
    agent = await setup_node(nursery, gateway, tmp_path, broker, ["thermo-h"])
    mapper = await open_client(nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/+",))
    await mapper_accepted(mapper, "thermo-h")
    for i in range(80):
        deep = b"[" * 400 + b"]" * 400 if i % 2 else b'{"a":' * 399 + b"1" + b"}" * 399
        mapper.publish(topics.UPLOAD_PREFIX + f"evil/{i}", deep)
    mapper.publish(topics.UPLOAD_PREFIX + "evil/surrogate", b'{"s": "\\ud800"}')
    mapper.publish(topics.UPLOAD_PREFIX + "fine", b'{"ok": true}')
    # Answered once its batch committed: the uploads before it are in the outbox
    # (if accepted there), ahead of the report of the next value.
    result_topic = topics.device_topic("thermo-h", topics.TWIN_UPDATE_RESULT)
    mapper.publish(topics.device_topic("thermo-h", topics.TWIN_UPDATE), report({}, "after"))
    await mapper.wait_for(result_topic, lambda b: b.get("event_id") == "after")
    mapper.publish(
        topics.device_topic("thermo-h", topics.TWIN_UPDATE), report({"temperature": "7"})
    )

    async def shows() -> bool:
        code, body = await gateway.api("GET", f"{API}/devices/thermo-h")
        return code == 200 and reported(body).get("temperature") == "7"

    await wait_for(shows, timeout=10)
    code, body = await gateway.api("GET", "/api/v1/namespaces/default/events")
    assert code == 200, body
    assert [e["message"] for e in body["items"]] == ['{"ok":true}']
    await wait_for(lambda: agent.status()["outbox"] == 0, timeout=10)


async def mapper_accepted(mapper: MqttClient, name: str) -> None:
    """Publish a probe until the twin answers it (the agent's bus subscribes
    after the agent starts; a message before that is not delivered)."""
    result_topic = topics.device_topic(name, topics.TWIN_UPDATE_RESULT)

    async def accepted() -> bool:
        mapper.publish(topics.device_topic(name, topics.TWIN_UPDATE), report({}, "probe"))
        with trio.move_on_after(0.2):
            await mapper.wait_for(result_topic, lambda b: "code" not in b)
            return True
        return False

    await wait_for(accepted, timeout=10)
