"""kill -9 of a real agent process right after its twin answered updates: every
update a device was told was accepted is in the agent's store afterwards (the
twin answers only once its batch has committed)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edgeproto import topics
from tests.conftest import Gateway, agent_rows, join_node, wait_for
from tests.mqtt_fixtures import Broker, MqttClient, open_broker, open_client
from tests.test_devices_e2e import API, device, model

NODE, DEV = "twin-crash", "thermo-k"
PROPS = [f"p{i}" for i in range(8)]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


def spawn_agent(data_dir: Path, mqtt: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(data_dir)]
    args += ["--mqtt", mqtt, "--heartbeat", "1"]
    with open(data_dir / "agent.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)


def update(values: dict[str, int], event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "timestamp": 1,
        "twin": {
            k: {"actual": {"value": str(v)}, "metadata": {"type": "int"}} for k, v in values.items()
        },
    }


def stored(data_dir: Path) -> dict[str, int]:
    """The actual values in the agent's twin table (what a restart loads)."""
    rows = agent_rows(
        data_dir,
        "SELECT name, data FROM twin WHERE device = ?",
        (topics.device_id("default", DEV),),
    )
    return {str(n): int(json.loads(str(d))[2]) for n, d in rows if json.loads(str(d))[2]}


def accepted(mapper: MqttClient) -> dict[str, int]:
    """The highest value of each property the twin answered as accepted."""
    best: dict[str, int] = {}
    for body in mapper.on(topics.device_topic(DEV, topics.TWIN_UPDATE_RESULT)):
        if "code" in body:
            continue
        for name, p in body["twin"].items():
            if name in PROPS and p.get("actual"):
                best[name] = max(best.get(name, -1), int(p["actual"]["value"]))
    return best


async def test_kill_9_right_after_answers_loses_no_accepted_update(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path, broker: Broker
) -> None:
    data = tmp_path / "agent"
    await join_node(gateway, NODE, data)
    code, body = await gateway.api("POST", f"{API}/devicemodels", model("thermo"))
    assert code == 201, body
    code, body = await gateway.api("POST", f"{API}/devices", device(DEV, NODE))
    assert code == 201, body
    mapper = await open_client(nursery, broker.url, (topics.DEVICE_PREFIX + "+/twin/update/+",))
    result = topics.device_topic(DEV, topics.TWIN_UPDATE_RESULT)
    rng = random.Random(14)
    value = 0
    lost: list[str] = []
    for rnd in range(3):
        proc = spawn_agent(data, broker.url)
        try:
            # Up once it answers (it subscribes after start-up).
            async def up(rnd: int = rnd) -> bool:
                mapper.publish(topics.device_topic(DEV, topics.TWIN_UPDATE), update({}, f"up{rnd}"))
                with trio.move_on_after(0.2):
                    await mapper.wait_for(result, lambda b: b.get("event_id") == f"up{rnd}")
                    return True
                return False

            await wait_for(up, timeout=30)
            # Bursts of updates; after a random number of them, SIGKILL the moment
            # the last one is answered (inside the twin's 65 ms batch window).
            for _ in range(rng.randint(5, 30)):
                for _ in range(5):
                    value += 1
                    mapper.publish(
                        topics.device_topic(DEV, topics.TWIN_UPDATE),
                        update({PROPS[value % len(PROPS)]: value}, f"v{value}"),
                    )
                await mapper.wait_for(result, lambda b, v=value: b.get("event_id") == f"v{v}")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            await trio.to_thread.run_sync(proc.wait)
        told, have = accepted(mapper), stored(data)
        lost += [f"{p}={v} (stored {have.get(p)})" for p, v in told.items() if have.get(p, -1) < v]
    assert not lost, f"answered as accepted but not stored after kill -9: {lost}"
    assert value > 30
