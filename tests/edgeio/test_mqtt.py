"""edgeio.MqttClient: the one paho-on-trio client, against a real mosquitto."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edgeagent._errors import AgentError
from edgeagent._eventbus import EventBus
from edgeio import Message, MqttClient, MqttUrlError, parse_mqtt_url
from edgeproto import topics
from mappers._errors import ConfigError
from mappers._mqtt import MqttClient as MapperClient
from tests.mqtt_fixtures import Broker, free_port, open_broker, until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


def test_parse_mqtt_url() -> None:
    assert parse_mqtt_url("tcp://127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_mqtt_url("mqtt://broker") == ("broker", 1883)
    assert parse_mqtt_url("localhost") == ("localhost", 1883)
    assert parse_mqtt_url("localhost:1885") == ("localhost", 1885)
    for bad in ("ws://x:1", "tcp://:1", "tcp://h:99999", "tcp://h:port"):
        with pytest.raises(MqttUrlError):
            parse_mqtt_url(bad)


def test_each_user_reports_a_bad_url_in_its_own_terms() -> None:
    with pytest.raises(AgentError, match="mqtt: expected tcp://HOST:PORT"):
        EventBus("ws://x:1", "x", dict.fromkeys(topics.SUBSCRIPTIONS, lambda t, p: None))
    with pytest.raises(ConfigError, match="--mqtt: bad port"):
        MapperClient("tcp://h:99999")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_paho_is_driven_from_one_place() -> None:
    """The agent's EventBus and the mappers' client are the same adapter: only
    edgeio imports paho, and nobody else parses MQTT URLs."""
    users = {}
    for package in ("edgeagent", "mappers", "cloudgateway", "edgeproto", "edgeio"):
        for path in (ROOT / package).rglob("*.py"):
            names = _imports(path)
            if any(n == "paho" or n.startswith("paho.") for n in names):
                users[str(path.relative_to(ROOT))] = names
            tree = ast.parse(path.read_text())
            defs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            if package != "edgeio":
                assert "parse_mqtt_url" not in defs, path
    assert sorted(users) == ["edgeio/_mqtt.py"]
    assert issubclass(MapperClient, MqttClient)
    bus = EventBus("tcp://127.0.0.1:1", "x", dict.fromkeys(topics.SUBSCRIPTIONS, lambda t, p: None))
    assert isinstance(bus._mqtt, MqttClient)


def test_edgeio_imports_neither_paho_nor_its_users() -> None:
    """edgeio sits beside edgeproto: the sans-io core does not import it, and it
    imports none of the packages that use it (nor paho until a client runs)."""
    for path in (ROOT / "edgeproto").rglob("*.py"):
        assert not any(n.split(".")[0] == "edgeio" for n in _imports(path)), path
    probe = "import json, sys, edgeio; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)}
    assert not loaded & {"paho", "edgeagent", "cloudgateway", "mappers"}, loaded


async def test_mapper_client_counts_what_it_cannot_send(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """QoS 0 published while the broker is away is dropped and counted (the
    mappers' old client counted it as published); QoS 1 waits for the broker."""
    b = Broker(tmp_path / "late", free_port())
    client = MapperClient(b.url, client_id="counting")
    client.subscribe("x/#")
    assert not client.publish("x/early", b"before run")  # nothing to queue it in yet
    await nursery.start(client.run)
    assert not client.publish("x/status", b"{}", qos=0, retain=True)
    assert client.publish("x/queued", b"1", qos=1)
    stats = client.statistics()
    assert (stats["published"], stats["publish_dropped"], stats["connected"]) == (1, 2, False)
    await b.start()
    try:
        # Sent after the reconnect, behind the subscription: the client hears itself.
        with trio.fail_after(10):
            assert await client.incoming.receive() == Message("x/queued", b"1")
    finally:
        await b.stop()


async def test_a_full_incoming_channel_drops_and_counts(
    nursery: trio.Nursery, broker: Broker
) -> None:
    client = MqttClient(broker.url, client_id="small", incoming_capacity=2)
    client.subscribe("fill/#", qos=1)
    await nursery.start(client.run)
    with trio.fail_after(10):
        await client.wait_subscribed()
    for i in range(6):
        assert client.publish(f"fill/{i}", b"x")
    await until(lambda: client.statistics()["received"] == 6)
    assert client.statistics()["dropped_incoming"] == 4
    got = [client.incoming.receive_nowait().topic for _ in range(2)]
    assert got == ["fill/0", "fill/1"]


async def test_subscriptions_and_hooks_survive_a_broker_restart(
    nursery: trio.Nursery, broker: Broker
) -> None:
    got: list[tuple[str, bytes]] = []
    client = MqttClient(broker.url, client_id="restart", receiver=lambda t, p: got.append((t, p)))
    client.subscribe("a/#")
    client.subscribe("b/+")
    client.subscribe("gone")
    client.unsubscribe("gone")
    events = client.connect_events()
    await nursery.start(client.run)
    with trio.fail_after(10):
        assert await events.receive() == 1
        await client.wait_subscribed()
    for topic, payload in (("b/1", "one"), ("gone", "not subscribed"), ("a/x/y", "two")):
        await trio.to_thread.run_sync(broker.pub, topic, payload)
    await until(lambda: len(got) == 2)
    assert got == [("b/1", b"one"), ("a/x/y", b"two")]

    await broker.stop()
    await until(lambda: not client.connected)
    await broker.start()
    with trio.fail_after(15):
        assert await events.receive() == 2
        await client.wait_subscribed()
    await trio.to_thread.run_sync(broker.pub, "b/2", "three")
    await until(lambda: ("b/2", b"three") in got)
    stats = client.statistics()
    assert stats["connects"] == 2 and stats["disconnects"] == 1 and stats["connected"]


PAHO_PROBE = """
import json, sys, trio
from edgeio import MqttClient

async def main() -> None:
    client = MqttClient(sys.argv[1], client_id="probe")
    client.subscribe("probe/t")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_subscribed()
        client.publish("probe/t", b"hi")
        msg = await client.incoming.receive()
        loaded = sorted(sys.modules)
        import paho.mqtt.client as paho
        import urllib.request
        print(json.dumps([msg.payload.decode(), loaded, paho.urllib.request is urllib.request,
                          urllib.request.__file__]))
        nursery.cancel_scope.cancel()

trio.run(main)
"""


@pytest.mark.parametrize("proxy_env", [False, True])
async def test_paho_runs_without_loading_urllib_request(broker: Broker, proxy_env: bool) -> None:
    # ~1.4 MiB of http.client, email and datetime that paho imports, and reads (with
    # PySocks installed, as in this venv) only to look for an MQTT proxy in the environment
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if proxy_env:
        env["no_proxy"] = "example.org"  # a proxy setting: urllib's own answer is needed
    out = await trio.run_process(
        [sys.executable, "-c", PAHO_PROBE, broker.url], capture_stdout=True, check=True, env=env
    )
    payload, loaded, same, path = json.loads(out.stdout)
    assert payload == "hi" and "paho.mqtt.client" in loaded
    assert ("urllib.request" in loaded) is proxy_env
    # imported later by anyone, the real module is the one paho then reads too
    assert same and path.endswith("urllib/request.py")
