"""Real components for the mapper tests: mosquitto, pymodbus servers (scripts/modbus-sim),
socat pty pairs and the serial sensor simulator, all started here and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from mappers._mqtt import MqttClient
from tests.conftest import wait_for, wait_for_sync
from tests.mqtt_fixtures import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def stop(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; closes its pipes."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real broker from scripts/mosquitto (as in tests/mqtt_fixtures.py)."""
    broker = Broker(tmp_path / "mosquitto", free_port())
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.stop_sync()


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    port: int
    args: list[str]


def start_modbus_sim(*args: str) -> Sim:
    cmd = [sys.executable, str(SCRIPTS / "modbus-sim"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        stop(proc)
        raise RuntimeError(f"modbus-sim did not start: {line!r}")
    port = int(line.rsplit("port=", 1)[1])
    return Sim(proc, port, list(args))


@pytest.fixture
def modbus_sims() -> Iterator[list[Sim]]:
    """Started sims are stopped at the end (tests append to the list)."""
    sims: list[Sim] = []
    yield sims
    for sim in sims:
        stop(sim.proc)


@pytest.fixture
def modbus_tcp(modbus_sims: list[Sim]) -> Sim:
    sim = start_modbus_sim("--tcp", "127.0.0.1:0", "--static")
    modbus_sims.append(sim)
    return sim


@dataclass
class PtyPair:
    a: str
    b: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for p in (self.a, self.b):
            if os.path.lexists(p):
                os.unlink(p)
        self.proc = subprocess.Popen(
            [
                shutil.which("socat") or "/usr/bin/socat",
                f"pty,raw,echo=0,link={self.a}",
                f"pty,raw,echo=0,link={self.b}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_sync(
            lambda: os.path.exists(self.a) and os.path.exists(self.b),
            timeout=5,
            what=f"socat created the pty pair {self.a}, {self.b}",
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class PtyPairs:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="edgeflock-pty-")
        self.pairs: list[PtyPair] = []

    def make(self) -> PtyPair:
        n = len(self.pairs) + 1
        pair = PtyPair(f"{self.dir}/a{n}", f"{self.dir}/b{n}")
        pair.start()
        self.pairs.append(pair)
        return pair

    def close(self) -> None:
        for pair in self.pairs:
            pair.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pty_pairs() -> Iterator[PtyPairs]:
    pairs = PtyPairs()
    try:
        yield pairs
    finally:
        pairs.close()


@pytest.fixture
def pty_pair(pty_pairs: PtyPairs) -> PtyPair:
    return pty_pairs.make()


@dataclass
class Watcher:
    """An MQTT client that records every message (JSON-decoded) by topic."""

    mqtt: MqttClient
    messages: list[tuple[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        async for msg in self.mqtt.incoming:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                body = msg.payload
            self.messages.append((msg.topic, body))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        """First (topic, body) (checking old ones too) for which predicate returns truthy."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for topic, body in self.messages[seen:]:
                    if predicate(topic, body):
                        return topic, body
                seen = len(self.messages)
                await self.changed.wait()

    def twin_values(self, device: str) -> dict[str, str]:
        """Latest actual value of each property reported for ``device``."""
        out: dict[str, str] = {}
        for topic, body in self.messages:
            if topic == f"$hw/events/device/default/{device}/twin/update" and isinstance(
                body, dict
            ):
                for prop, entry in body.get("twin", {}).items():
                    out[prop] = entry["actual"]["value"]
        return out

    def states(self, device: str) -> list[str]:
        return [
            body["state"]
            for topic, body in self.messages
            if topic == f"$hw/events/device/default/{device}/state/update"
        ]


@pytest.fixture
async def watcher(mosquitto: Broker, nursery: trio.Nursery) -> AsyncIterator[Watcher]:
    mqtt = MqttClient(mosquitto.url, client_id="test-watcher")
    mqtt.subscribe("$hw/#")
    mqtt.subscribe("edgeflock/#")
    await nursery.start(mqtt.run)
    await mqtt.wait_connected()
    w = Watcher(mqtt)
    nursery.start_soon(w.run)
    # the subscriptions are in place once our own probe comes back
    mqtt.publish("edgeflock/probe", b"{}")
    await w.wait_for(lambda t, b: t == "edgeflock/probe")
    yield w


async def eventually(predicate: Any, timeout: float = 10.0, step: float = 0.02) -> None:
    """Poll ``predicate`` until it holds (for counters that have no event)."""
    await wait_for(predicate, timeout, interval=step)


def restart_broker(broker: Broker) -> None:
    """Stop the broker (``stop`` returns once the process has exited, so every
    client's connection is gone) and start it again on the same port."""
    broker.stop_sync()
    broker.start_sync()
