"""DeviceTwin in the agent against a real mosquitto, with Device objects put in
the meta store as the sync would (no gateway)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import cbor2
import pytest
import trio

from edgeagent._config import AgentConfig
from edgeagent._meta import Meta
from edgeagent._twin import HISTORY_ANNOTATION, DeviceTwin, edge_bus_modules
from edgeproto import Apply, Entry, encode_object, topics
from tests.conftest import fill_up, wait_for
from tests.mqtt_fixtures import Broker, MqttClient, open_broker, open_client, until


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


NODE = "pi-t"
WATCH = (
    topics.DEVICE_PREFIX + "+/twin/update/+",
    topics.DEVICE_PREFIX + "+/twin/get/result",
    topics.DEVICE_PREFIX + "+/state/update/result",
    # KubeEdge 1.17+'s form, $hw/events/device/{namespace}/{name}/...
    topics.DEVICE_PREFIX + "+/+/twin/update/+",
    topics.DEVICE_PREFIX + "+/+/twin/get/result",
    topics.DEVICE_PREFIX + "+/+/state/update/result",
    topics.NODE_PREFIX + "+/membership/+",
    topics.NODE_PREFIX + "+/membership/+/result",
)


def model_obj() -> dict[str, Any]:
    return {
        "metadata": {"name": "thermo", "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "INT"},
                {"name": "setpoint", "type": "INT"},
                {"name": "label", "type": "STRING"},
            ],
        },
    }


def device_obj(name: str, setpoint: str | None = "20", **ann: str) -> dict[str, Any]:
    sp: dict[str, Any] = {"name": "setpoint"}
    if setpoint is not None:
        sp["desired"] = {"value": setpoint}
    return {
        "metadata": {"name": name, "namespace": "default", "annotations": ann},
        "spec": {
            "deviceModelRef": {"name": "thermo"},
            "nodeName": NODE,
            "properties": [{"name": "temperature"}, sp, {"name": "label", "reportToCloud": False}],
        },
    }


def entry(key: str, obj: dict[str, Any], rev: int) -> Entry:
    return Entry(key, rev, encode_object(obj))


@dataclass
class Edge:
    meta: Meta
    twin: DeviceTwin
    client: MqttClient
    scope: trio.CancelScope
    stopped: trio.Event
    rev: int = 10

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    async def put(self, name: str, obj: dict[str, Any]) -> None:
        self.rev += 1
        await self.meta.apply(
            Apply([entry(f"devices/default/{name}", obj, self.rev)], [], self.rev)
        )

    async def delete(self, name: str) -> None:
        self.rev += 1
        await self.meta.apply(Apply([], [f"devices/default/{name}"], self.rev))

    def send(self, device: str, suffix: str, body: Any) -> None:
        self.client.publish(topics.device_topic(device, suffix), body)

    async def reports(self) -> dict[str, Any]:
        return {i.key: (i.op, cbor2.loads(i.body)) for i in await self.meta.outbox_after(0, 1000)}


async def start_edge(nursery: trio.Nursery, data: Path, broker: Broker) -> Edge:
    await trio.Path(data).mkdir(exist_ok=True)
    config = AgentConfig(data_dir=data, node=NODE, hub_url="wss://unused", mqtt=broker.url)
    meta = Meta(config.meta_path)
    scope = trio.CancelScope()
    stopped = trio.Event()
    modules = edge_bus_modules(config, meta)
    twin = modules[0][1].__self__
    assert isinstance(twin, DeviceTwin)

    async def runner(task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                async with trio.open_nursery() as n:
                    for _, run in modules:
                        await n.start(run)
                    task_status.started()
        finally:
            meta.close()
            stopped.set()

    await nursery.start(runner)
    client = await open_client(nursery, broker.url, WATCH)
    return Edge(meta, twin, client, scope, stopped)


@pytest.fixture
async def edge(nursery: trio.Nursery, tmp_path: Path, broker: Broker) -> AsyncIterator[Edge]:
    e = await start_edge(nursery, tmp_path / "agent", broker)
    await add_d1(e)
    yield e
    e.scope.cancel()


async def add_d1(e: Edge) -> None:
    """The thermo model and device d1, as the sync would put them."""
    await e.meta.apply(
        Apply(
            [
                entry("devicemodels/default/thermo", model_obj(), 1),
                entry("devices/default/d1", device_obj("d1"), 1),
            ],
            [],
            1,
        )
    )
    await wait_device(e, "d1")


async def wait_device(e: Edge, name: str) -> None:
    await until(lambda: f"default/{name}" in e.twin._devices)
    await e.twin.wait_flushed()


def update(twin: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": 1, "twin": twin}


def actual(v: str, **extra: Any) -> dict[str, Any]:
    return {
        "actual": {"value": v, "metadata": {"timestamp": 5}},
        "metadata": {"type": "int"},
        **extra,
    }


RESULT = topics.device_topic("d1", topics.TWIN_UPDATE_RESULT)


async def test_bad_input_gets_error_codes_and_is_counted(edge: Edge) -> None:
    edge.client.publish(topics.device_topic("d1", topics.TWIN_UPDATE), b"{nope")
    edge.send("d1", topics.TWIN_UPDATE, update({"k" * 200: actual("1")}, "longkey"))
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("9" * 600)}, "longval"))
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("warm")}, "badtype"))
    edge.send("ghost", topics.TWIN_UPDATE, update({"temperature": actual("1")}, "ghost"))
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("1")}, "v1"))
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("2")}, "v2"))
    stale = actual("3", actual_version={"cloud": 0, "edge": 1})
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": stale}, "stale"))
    edge.client.publish(topics.device_topic("ghost", topics.TWIN_GET), b'{"event_id": "g"}')
    edge.client.publish(topics.device_topic("d1", topics.STATE_UPDATE), b'{"state": 5}')

    c = edge.client
    await c.wait_for(RESULT, lambda b: b.get("event_id") == "stale")
    # What cannot be read as an update is answered where edgecore answers it: on
    # an empty device id, with edgecore's reasons.
    unread = {b.get("event_id"): b for b in c.on(topics.UNADDRESSED_UPDATE_RESULT)}
    assert unread[""] == {  # malformed JSON: no event id to echo
        "event_id": "",
        "timestamp": unread[""]["timestamp"],
        "code": 400,
        "reason": "Unmarshal update request body failed, please check the request",
    }
    assert unread["longkey"]["code"] == 400
    assert unread["longkey"]["reason"].startswith("The key of twin must only include")
    assert unread["longval"]["code"] == 400
    assert unread["longval"]["reason"].startswith("The value of twin must only include")
    by_id = {b.get("event_id"): b for b in c.on(RESULT)}
    assert not {"", "longkey", "longval"} & set(by_id)
    assert by_id["badtype"] == {
        "event_id": "badtype",
        "timestamp": by_id["badtype"]["timestamp"],
        "code": 400,
        "reason": "the value is not int or integer",
    }
    assert by_id["stale"]["code"] == 409
    assert (
        "code" not in by_id["v1"] and by_id["v2"]["twin"]["temperature"]["actual"]["value"] == "2"
    )
    ghost = await c.wait_for(topics.device_topic("ghost", topics.TWIN_UPDATE_RESULT))
    assert ghost["code"] == 404 and ghost["event_id"] == "ghost"
    assert ghost["reason"] == "update rejected due to the device is not existed"
    got = await c.wait_for(topics.device_topic("ghost", topics.TWIN_GET_RESULT))
    assert got["code"] == 404 and got["reason"] == "Device ghost not found while getting twin"
    st = await c.wait_for(topics.device_topic("d1", topics.STATE_UPDATE_RESULT))
    assert st["code"] == 400
    stats = edge.twin.statistics()
    assert stats["twin_update_400"] == 4 and stats["twin_update_404"] == 1
    assert stats["twin_update_409"] == 1 and stats["twin_get_404"] == 1
    assert stats["state_update_400"] == 1 and stats["twin_updates"] == 2
    # The rejected messages changed nothing.
    assert edge.twin.twin("d1")["temperature"].actual.value == "2"  # type: ignore[union-attr]


async def test_reports_are_coalesced_and_complete(edge: Edge) -> None:
    before = time.time_ns() // 1_000_000
    for i in range(200):
        edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual(str(i))}, f"t{i}"))
    edge.send("d1", topics.TWIN_UPDATE, update({"label": {"actual": {"value": "x"}}}, "lbl"))
    edge.send("d1", topics.STATE_UPDATE, {"event_id": "s", "timestamp": 1, "state": "online"})
    st = await edge.client.wait_for(topics.device_topic("d1", topics.STATE_UPDATE_RESULT))
    # edgecore's DeviceMsg: the device's name, state and lastOnlineTime
    assert st["device"]["name"] == "d1" and st["device"]["state"] == "online"
    assert st["device"]["lastOnlineTime"].endswith("Z")
    await edge.client.wait_for(RESULT, lambda b: b.get("event_id") == "lbl")
    await edge.twin.wait_flushed()
    reports = await edge.reports()
    assert set(reports) == {"devices/default/d1"}  # one coalesced row
    op, body = reports["devices/default/d1"]
    assert op == "status"
    status = body["status"]
    assert status["state"] == "online" and status["lastOnlineTime"].endswith("Z")
    (t,) = status["twins"]  # label has reportToCloud: false
    assert t["propertyName"] == "temperature"
    # Stamped with the edge's clock: the device's own timestamp (5) is not trusted.
    stamp = t["reported"]["metadata"]["timestamp"]
    assert t["reported"] == {"value": "199", "metadata": {"timestamp": stamp, "type": "int"}}
    assert before <= int(stamp) <= time.time_ns() // 1_000_000
    assert t["observedDesired"]["value"] == ""  # no desired value for temperature
    assert edge.twin.statistics()["flushes"] < 20


async def test_get_membership_and_updates(edge: Edge) -> None:
    c = edge.client
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("7")}, "a"))
    await c.wait_for(RESULT)
    edge.send("d1", topics.TWIN_GET, {"event_id": "g1", "timestamp": 1})
    got = await c.wait_for(topics.device_topic("d1", topics.TWIN_GET_RESULT))
    assert got["event_id"] == "g1"
    assert got["twin"]["temperature"]["actual"]["value"] == "7"
    assert got["twin"]["setpoint"]["expected"]["value"] == "20"
    assert "expected_version" not in got["twin"]["setpoint"]

    c.publish(topics.membership_topic(NODE, topics.MEMBERSHIP_GET), {"event_id": "m1"})
    res = await c.wait_for(topics.membership_topic(NODE, topics.MEMBERSHIP_GET_RESULT))
    (dev,) = res["devices"]
    # KubeEdge 1.16+'s id, namespace/name (what edgecore 1.17+ sends in membership)
    assert dev["id"] == "default/d1" and dev["name"] == "d1" and dev["namespace"] == "default"
    assert dev["model"]["protocol"] == "modbus"
    assert dev["spec"]["deviceModelRef"] == {"name": "thermo"}
    assert dev["twin"]["temperature"]["actual"]["value"] == "7"
    c.publish(topics.membership_topic(NODE, topics.MEMBERSHIP_DETAIL), {"event_id": "m2"})
    det = await c.wait_for(topics.membership_topic(NODE, topics.MEMBERSHIP_DETAIL_RESULT))
    assert det["event_id"] == "m2" and len(det["devices"]) == 1
    # Another node's membership topic is not ours to answer.
    c.publish(topics.membership_topic("other", topics.MEMBERSHIP_GET), {"event_id": "m3"})

    updated = topics.membership_topic(NODE, topics.MEMBERSHIP_UPDATED)
    await edge.put("d2", device_obj("d2"))
    up = await c.wait_for(updated, lambda b: "d2" in [d["name"] for d in b["added_devices"]])
    assert len(up["added_devices"]) == 1 and up["removed_devices"] == []
    assert up["added_devices"][0]["twin"]["setpoint"]["expected"]["value"] == "20"
    await edge.delete("d1")
    up = await c.wait_for(updated, lambda b: b["removed_devices"])
    assert up["removed_devices"] == [{"id": "default/d1", "name": "d1", "namespace": "default"}]
    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("8")}, "gone"))
    gone = await c.wait_for(RESULT, lambda b: b.get("event_id") == "gone")
    assert gone["code"] == 404
    assert not c.on(topics.membership_topic("other", topics.MEMBERSHIP_GET_RESULT))


async def test_cloud_desired_becomes_delta_and_edge_desired_goes_up(edge: Edge) -> None:
    c = edge.client
    delta_topic = topics.device_topic("d1", topics.TWIN_UPDATE_DELTA)
    await edge.put("d1", device_obj("d1", setpoint="22"))
    d = await c.wait_for(delta_topic, lambda b: b["delta"].get("setpoint") == "22")
    assert d["twin"]["setpoint"]["expected"]["value"] == "22"
    doc = await c.wait_for(
        topics.device_topic("d1", topics.TWIN_UPDATE_DOCUMENT),
        lambda b: (b["twin"]["setpoint"]["current"] or {}).get("expected", {}).get("value") == "22",
    )
    assert doc["twin"]["setpoint"]["last"]["expected"]["value"] == "20"
    # Set at the edge: goes up as a desired report.
    set_ = {"setpoint": {"expected": {"value": "24"}, "metadata": {"type": "int"}}}
    edge.send("d1", topics.TWIN_UPDATE, update(set_, "edge"))
    await c.wait_for(delta_topic, lambda b: b["delta"].get("setpoint") == "24")
    await edge.twin.wait_flushed()
    reports = await edge.reports()
    assert reports["devices/default/d1#desired"] == ("desired", {"desired": {"setpoint": "24"}})


async def test_state_survives_restart_and_deltas_resent_on_reconnect(
    nursery: trio.Nursery, tmp_path: Path, broker: Broker
) -> None:
    e = await start_edge(nursery, tmp_path / "agent", broker)
    await e.meta.apply(
        Apply(
            [
                entry("devicemodels/default/thermo", model_obj(), 1),
                entry("devices/default/d1", device_obj("d1", setpoint="30"), 1),
            ],
            [],
            1,
        )
    )
    await wait_device(e, "d1")
    e.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("41")}, "x"))
    await e.client.wait_for(RESULT)  # answered: committed
    await e.stop()

    delta_topic = topics.device_topic("d1", topics.TWIN_UPDATE_DELTA)
    seen = len(e.client.on(delta_topic))
    e2 = await start_edge(nursery, tmp_path / "agent", broker)
    assert e2.twin.twin("d1")["temperature"].actual.value == "41"  # type: ignore[union-attr]
    # e2's own connect-time delta is out (the first edge's watcher hears it).
    await until(lambda: len(e.client.on(delta_topic)) > seen)
    # Broker restart: the outstanding delta (setpoint 30, no actual) is re-sent. The
    # watcher has a persistent session, so it cannot miss it while reconnecting.
    sub = await subscribed_watcher(broker, delta_topic, "delta-watcher")
    try:
        await broker.stop()
        await broker.start()
        out, _ = await trio.to_thread.run_sync(sub.communicate, None, 25)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    (line,) = [x for x in out.decode().splitlines() if x.startswith("{")]
    assert json.loads(line)["delta"] == {"setpoint": "30"}
    await e2.stop()


async def subscribed_watcher(broker: Broker, topic: str, session: str) -> subprocess.Popen[bytes]:
    """``mosquitto_sub`` for one message on ``topic`` with a persistent session,
    returned once the broker has acknowledged its subscription (its debug output,
    line-buffered, says SUBACK); the message is the output line starting ``{``."""
    args = ["stdbuf", "-oL", "mosquitto_sub", "-d", "-p", str(broker.port), "-q", "1"]
    args += ["-C", "1", "-W", "30", "-c", "-i", session, "-t", topic]
    sub = await trio.to_thread.run_sync(lambda: subprocess.Popen(args, stdout=subprocess.PIPE))
    assert sub.stdout is not None
    head = b""
    with trio.fail_after(10):
        while b"SUBACK" not in head:
            line = await trio.to_thread.run_sync(sub.stdout.readline)
            assert line, "mosquitto_sub ended before subscribing"
            head += line
    return sub


async def test_history_ring(edge: Edge) -> None:
    await edge.put("d1", device_obj("d1", **{HISTORY_ANNOTATION: "temperature=3"}))
    await until(lambda: edge.twin._devices["default/d1"].history == {"temperature": 3})
    for i in range(10):  # one at a time: each answered once its own batch committed
        edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual(str(i))}, f"h{i}"))
        await edge.client.wait_for(RESULT, lambda b, i=i: b.get("event_id") == f"h{i}")
    await edge.twin.wait_flushed()
    reports = await edge.reports()
    hist = {k: v for k, v in reports.items() if "#h" in k}
    assert len(hist) == 3
    values = sorted(int(v[1]["history"][0]["value"]) for v in hist.values())
    assert values == [7, 8, 9]
    assert all(v[0] == "twin-history" for v in hist.values())


async def test_a_full_disk_keeps_updates_in_memory_until_there_is_room(
    nursery: trio.Nursery, small_fs: Path, broker: Broker
) -> None:
    """The agent's SQLite on a real full filesystem (tmpfs): flushes fail and are
    counted, the twin keeps answering, but never "accepted" for an update it
    could not write (KubeEdge's 500 result instead); the latest values reach the
    store and the outbox once space is freed."""
    e = await start_edge(nursery, small_fs / "agent", broker)
    await add_d1(e)
    filler = fill_up(small_fs)
    for i in range(50):
        e.send("d1", topics.TWIN_UPDATE, update({"temperature": actual(str(i))}, f"f{i}"))
    await e.client.wait_for(RESULT, lambda b: b.get("event_id") == "f49")  # still answering
    await until(lambda: e.twin.statistics().get("flush_failures", 0) >= 1, timeout=5)
    answers = {b["event_id"]: b for b in e.client.on(RESULT) if b.get("event_id", "")[:1] == "f"}
    assert len(answers) == 50
    refused = [b for b in answers.values() if b.get("code") == 500]
    assert refused and all("writing sql error" in b["reason"] for b in refused)
    # Accepted ones were committed before their answer: the store holds one of them.
    stored = e.meta._sync.conn.execute(
        "SELECT data FROM twin WHERE device = 'default/d1' AND name = 'temperature'"
    ).fetchall()
    ok = {b["twin"]["temperature"]["actual"]["value"] for b in answers.values() if "code" not in b}
    assert not ok or json.loads(stored[0][0])[2] in ok
    filler.unlink()

    async def written() -> bool:
        reports = await e.reports()
        if "devices/default/d1" not in reports:
            return False
        (t,) = reports["devices/default/d1"][1]["status"]["twins"]
        return bool(t["reported"]["value"] == "49")

    await wait_for(written, timeout=40, interval=0.2)
    rows = e.meta._sync.conn.execute(
        "SELECT count(*) FROM twin WHERE device = 'default/d1'"
    ).fetchall()
    assert rows[0][0] >= 1
    e.scope.cancel()


# ---- KubeEdge 1.17+ topics and edgecore's twin details -------------------------------

NEW = "default/d1"  # KubeEdge 1.16+'s device id, in 1.17+'s topics


def kubeedge_update(twin: dict[str, Any], event_id: str) -> dict[str, Any]:
    """A twin/update as edgecore's ``dttype.DeviceTwinUpdate`` reads it: an actual
    value with a timestamp of the device's own (``ValueMetadata``), and a type."""
    return {
        "event_id": event_id,
        "timestamp": 1_700_000_000_000,
        "twin": {
            k: {
                "actual": {"value": v, "metadata": {"timestamp": 1_700_000_000_000}},
                "metadata": {"type": "int"},
            }
            for k, v in twin.items()
        },
    }


async def test_a_kubeedge_117_app_is_answered_on_namespace_name_topics(edge: Edge) -> None:
    c = edge.client
    result = topics.device_topic(NEW, topics.TWIN_UPDATE_RESULT)
    assert result == "$hw/events/device/default/d1/twin/update/result"
    edge.send(NEW, topics.TWIN_UPDATE, kubeedge_update({"setpoint": "18"}, "n1"))
    got = await c.wait_for(result, lambda b: b.get("event_id") == "n1")
    assert got["twin"]["setpoint"]["actual"]["value"] == "18"

    def n1(b: Any) -> bool:
        return bool(b.get("event_id") == "n1")

    delta = await c.wait_for(topics.device_topic(NEW, topics.TWIN_UPDATE_DELTA), n1)
    assert delta["delta"] == {"setpoint": "20"}
    doc = await c.wait_for(topics.device_topic(NEW, topics.TWIN_UPDATE_DOCUMENT), n1)
    assert doc["twin"]["setpoint"]["current"]["actual"]["value"] == "18"
    # Answered on the form asked in, not on the legacy one.
    await edge.twin.wait_flushed()
    for suffix in (
        topics.TWIN_UPDATE_RESULT,
        topics.TWIN_UPDATE_DELTA,
        topics.TWIN_UPDATE_DOCUMENT,
    ):
        assert not [b for b in c.on(topics.device_topic("d1", suffix)) if n1(b)]

    edge.send(NEW, topics.TWIN_GET, {"event_id": "g", "timestamp": 1})
    g = await c.wait_for(topics.device_topic(NEW, topics.TWIN_GET_RESULT))
    assert g["event_id"] == "g" and g["twin"]["setpoint"]["expected"]["value"] == "20"
    edge.send(NEW, topics.STATE_UPDATE, {"event_id": "s", "timestamp": 1, "state": "online"})
    st = await c.wait_for(topics.device_topic(NEW, topics.STATE_UPDATE_RESULT))
    assert st["device"]["name"] == "d1" and st["device"]["lastOnlineTime"].endswith("Z")

    # mapper-framework's ``CreateMessageTwinUpdate`` shape (pkg/common/event.go):
    # no event id, an empty value metadata, published to ``TopicTwinUpdate`` with
    # the device's id, namespace/name.
    framework = {
        "event_id": "",
        "timestamp": 1_700_000_000_000,
        "twin": {
            "temperature": {"actual": {"value": "23", "metadata": {}}, "metadata": {"type": "int"}}
        },
    }
    c.publish(f"$hw/events/device/{NEW}/twin/update", framework)
    fw = await c.wait_for(result, lambda b: "temperature" in b.get("twin", {}))
    assert fw["event_id"] == "" and fw["twin"]["temperature"]["actual"]["value"] == "23"

    # The same device through the legacy form: one twin.
    edge.send("d1", topics.TWIN_GET, {"event_id": "old", "timestamp": 1})
    old = await c.wait_for(topics.device_topic("d1", topics.TWIN_GET_RESULT))
    assert old["twin"]["setpoint"]["actual"]["value"] == "18"
    # An unknown namespace/name is refused on its own topic with edgecore's words.
    edge.send("other/d1", topics.TWIN_UPDATE, kubeedge_update({"setpoint": "1"}, "x"))
    gone = await c.wait_for(topics.device_topic("other/d1", topics.TWIN_UPDATE_RESULT))
    assert gone == {
        "event_id": "x",
        "timestamp": gone["timestamp"],
        "code": 404,
        "reason": "update rejected due to the device is not existed",
    }


async def test_a_name_two_namespaces_use_is_refused_in_the_legacy_form(edge: Edge) -> None:
    c = edge.client
    # While the name is unique, a cloud push goes out in both forms.
    await edge.put("d1", device_obj("d1", setpoint="21"))
    for addr in (NEW, "d1"):
        await c.wait_for(
            topics.device_topic(addr, topics.TWIN_UPDATE_DELTA),
            lambda b: b["delta"].get("setpoint") == "21",
        )
    other = device_obj("d1", setpoint="5")
    other["metadata"]["namespace"] = "plant-b"
    edge.rev += 1
    await edge.meta.apply(Apply([entry("devices/plant-b/d1", other, edge.rev)], [], edge.rev))
    await until(lambda: "plant-b/d1" in edge.twin._devices)
    await edge.twin.wait_flushed()

    edge.send("d1", topics.TWIN_UPDATE, update({"temperature": actual("1")}, "amb"))
    amb = await c.wait_for(RESULT, lambda b: b.get("event_id") == "amb")
    assert amb["code"] == 400 and "plant-b" in amb["reason"] and "{namespace}" in amb["reason"]
    edge.send("plant-b/d1", topics.TWIN_UPDATE, update({"temperature": actual("2")}, "b"))
    edge.send(NEW, topics.TWIN_UPDATE, update({"temperature": actual("3")}, "a"))
    await c.wait_for(topics.device_topic("plant-b/d1", topics.TWIN_UPDATE_RESULT))
    await c.wait_for(topics.device_topic(NEW, topics.TWIN_UPDATE_RESULT))
    assert edge.twin.twin("plant-b/d1")["temperature"].actual.value == "2"  # type: ignore[union-attr]
    assert edge.twin.twin(NEW)["temperature"].actual.value == "3"  # type: ignore[union-attr]
    # The cloud's push now goes out on the namespace/name form only.
    seen = len(c.on(topics.device_topic("d1", topics.TWIN_UPDATE_DELTA)))
    await edge.put("d1", device_obj("d1", setpoint="23"))
    await c.wait_for(
        topics.device_topic(NEW, topics.TWIN_UPDATE_DELTA),
        lambda b: b["delta"].get("setpoint") == "23",
    )
    await edge.twin.wait_flushed()
    assert len(c.on(topics.device_topic("d1", topics.TWIN_UPDATE_DELTA))) == seen
    c.publish(topics.membership_topic(NODE, topics.MEMBERSHIP_GET), {"event_id": "m"})
    res = await c.wait_for(topics.membership_topic(NODE, topics.MEMBERSHIP_GET_RESULT))
    assert [d["id"] for d in res["devices"]] == ["default/d1", "plant-b/d1"]


async def test_a_stale_value_reported_again_is_listed_and_its_delta_resent(edge: Edge) -> None:
    """edgecore lists every property an update gives a value for and sends the
    delta again (``dtmanager/twin.go``): a device that keeps reporting a value
    other than the desired one keeps being told the desired one."""
    c = edge.client
    delta_topic = topics.device_topic(NEW, topics.TWIN_UPDATE_DELTA)
    result = topics.device_topic(NEW, topics.TWIN_UPDATE_RESULT)
    for ev in ("r1", "r2"):
        edge.send(NEW, topics.TWIN_UPDATE, kubeedge_update({"setpoint": "18"}, ev))
        got = await c.wait_for(result, lambda b, ev=ev: b.get("event_id") == ev)
        assert got["twin"]["setpoint"]["actual"]["value"] == "18"
        d = await c.wait_for(delta_topic, lambda b, ev=ev: b.get("event_id") == ev)
        assert d["delta"] == {"setpoint": "20"}
    # Reaching the desired value: listed, and no delta any more.
    edge.send(NEW, topics.TWIN_UPDATE, kubeedge_update({"setpoint": "20"}, "r3"))
    r3 = await c.wait_for(result, lambda b: b.get("event_id") == "r3")
    assert r3["twin"]["setpoint"]["actual"]["value"] == "20"
    edge.send(NEW, topics.TWIN_UPDATE, kubeedge_update({"setpoint": "20"}, "r4"))
    r4 = await c.wait_for(result, lambda b: b.get("event_id") == "r4")
    # Deliberately unlike edgecore: an unchanged value is not re-stamped (nor
    # written again to the SD card); it keeps the time it was set.
    assert r4["twin"]["setpoint"]["actual"] == r3["twin"]["setpoint"]["actual"]
    await edge.twin.wait_flushed()
    assert not [b for b in c.on(delta_topic) if b.get("event_id") in ("r3", "r4")]


async def test_unreadable_get_and_membership_are_refused_with_edgecores_words(
    edge: Edge,
) -> None:
    c = edge.client
    c.publish(topics.device_topic(NEW, topics.TWIN_GET), b"{nope")
    got = await c.wait_for(topics.device_topic(NEW, topics.TWIN_GET_RESULT))
    assert got["code"] == 400 and got["event_id"] == ""
    assert got["reason"].startswith("Unmarshal twin info {nope failed , err: ")
    c.publish(topics.membership_topic(NODE, topics.MEMBERSHIP_GET), b'{"event_id": 7}')
    res = await c.wait_for(topics.membership_topic(NODE, topics.MEMBERSHIP_GET_RESULT))
    assert res["code"] == 400
    assert res["reason"].startswith('Unmarshal get membership info {"event_id": 7} failed , err: ')


async def test_a_store_written_with_bare_names_is_taken_over(
    nursery: trio.Nursery, tmp_path: Path, broker: Broker
) -> None:
    """Rows keyed by a device's bare name (before devices were namespace/name)
    move to its id at start-up instead of being dropped as unknown."""
    e = await start_edge(nursery, tmp_path / "agent", broker)
    await add_d1(e)
    e.send(NEW, topics.TWIN_UPDATE, kubeedge_update({"temperature": "41"}, "x"))
    e.send(NEW, topics.STATE_UPDATE, {"event_id": "s", "state": "online"})
    await e.client.wait_for(topics.device_topic(NEW, topics.STATE_UPDATE_RESULT))
    await e.stop()
    conn = apsw.Connection(str(AgentConfig(tmp_path / "agent", NODE, "wss://u").meta_path))
    conn.execute("UPDATE twin SET device = 'd1' WHERE device = 'default/d1'")
    conn.execute("UPDATE twin_device SET device = 'd1' WHERE device = 'default/d1'")
    conn.close()

    e2 = await start_edge(nursery, tmp_path / "agent", broker)
    assert e2.twin.twin(NEW)["temperature"].actual.value == "41"  # type: ignore[union-attr]
    await e2.twin.wait_flushed()
    devices = {
        str(r[0])
        for t in ("twin", "twin_device")
        for r in e2.meta._sync.conn.execute(f"SELECT device FROM {t}")
    }
    assert devices == {"default/d1"}
    await e2.stop()
