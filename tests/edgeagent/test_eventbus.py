"""EventBus: paho-mqtt under trio against a real mosquitto."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edgeagent._eventbus import EventBus, EventBusError, _matches
from edgeproto import topics
from tests.mqtt_fixtures import Broker, free_port, open_broker, open_client, until


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


def test_bad_url_and_wildcards() -> None:
    for bad in ("ws://x:1", "tcp://:1", "tcp://h:99999"):
        with pytest.raises(EventBusError, match="mqtt"):
            EventBus(bad, "x", dict.fromkeys(topics.SUBSCRIPTIONS, lambda t, p: None))
    assert _matches("$hw/events/device/+/twin/update", "$hw/events/device/d/twin/update")
    assert not _matches("$hw/events/device/+/twin/update", "$hw/events/device/d/twin/update/x")
    assert _matches("$hw/events/upload/#", "$hw/events/upload/a/b")
    assert not _matches("a/+", "a")


def test_a_subscription_without_receiver_fails_at_construction() -> None:
    routes = dict.fromkeys(topics.SUBSCRIPTIONS[1:], lambda t, p: None)
    with pytest.raises(EventBusError, match="no receiver"):
        EventBus("tcp://127.0.0.1:1", "x", routes)


async def test_routes_publish_and_survive_a_broker_restart(
    nursery: trio.Nursery, broker: Broker
) -> None:
    got: list[tuple[str, bytes]] = []
    connects: list[int] = []

    def receive(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("receiver bug")
        got.append((topic, payload))

    subs = (*topics.SUBSCRIPTIONS, "out/#")
    bus = EventBus(broker.url, "bus-under-test", dict.fromkeys(subs, receive), subscriptions=subs)
    bus.add_on_connect(lambda: connects.append(1))
    await nursery.start(bus.run)
    peer = await open_client(nursery, broker.url, ("out/#",))
    await until(lambda: connects and bus.subscribed)  # SUBACK: the broker routes to us

    twin_update = topics.device_topic("d", topics.TWIN_UPDATE)
    peer.publish(twin_update, b"boom")  # a failing receiver is counted, nothing else
    peer.publish(twin_update, b"1")
    peer.publish(topics.membership_topic("n", topics.MEMBERSHIP_GET), b"2")
    peer.publish(topics.device_topic("d", topics.TWIN_UPDATE_RESULT), b"not ours")
    assert bus.publish("out/a", b"x")
    await peer.wait_for("out/a")
    await until(lambda: len(got) >= 3)
    assert sorted(got) == [
        (twin_update, b"1"),
        (topics.membership_topic("n", topics.MEMBERSHIP_GET), b"2"),
        ("out/a", b"x"),
    ]
    assert bus.statistics()["receiver_errors"] == 1

    await broker.stop()
    await until(lambda: not bus.connected)
    assert bus.publish("out/b", b"queued while the broker is down")
    await broker.start()
    await until(lambda: len(connects) >= 2, timeout=10)
    # Sent after the reconnect, behind the resubscription: the bus hears itself.
    await until(lambda: ("out/b", b"queued while the broker is down") in got, timeout=10)
    # Resubscribed: messages from others reach the receivers again.
    await until(lambda: peer.bus.connected, timeout=10)

    def again() -> bool:
        peer.publish(twin_update, b"3")
        return (twin_update, b"3") in got

    await until(again, timeout=10, interval=0.1)
    stats = bus.statistics()
    assert stats["connects"] >= 2 and stats["disconnects"] >= 1 and stats["connected"]


async def test_starts_without_broker_and_connects_when_it_appears(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    b = Broker(tmp_path / "late", free_port())
    bus = EventBus(b.url, "early", dict.fromkeys(topics.SUBSCRIPTIONS, lambda t, p: None))
    await nursery.start(bus.run)  # returns although nothing listens yet
    await until(lambda: bus.statistics().get("connect_failures", 0) >= 1)
    assert not bus.connected and not bus.subscribed
    await b.start()
    try:
        await until(lambda: bus.connected, timeout=10)
    finally:
        await b.stop()


def test_mosquitto_script_refuses_a_taken_port_and_stops_by_pid(tmp_path: Path) -> None:
    a = Broker(tmp_path / "a", free_port())
    a.start_sync()
    try:
        pid = a.pid
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"
        conf = (a.dir / "mosquitto.conf").read_text()
        assert f"listener {a.port} 127.0.0.1" in conf and f"{a.dir}/data/" in conf
        taken = Broker(tmp_path / "b", a.port)
        with pytest.raises(subprocess.CalledProcessError):
            taken.start_sync()
        assert not (taken.dir / "mosquitto.pid").exists()
    finally:
        a.stop_sync()
    assert not (a.dir / "mosquitto.pid").exists()
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    a.stop_sync()  # stopping what is not running is fine
