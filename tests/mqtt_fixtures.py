"""A real mosquitto for tests: started by ``scripts/mosquitto`` on a free loopback
port, stopped by its recorded PID. A test module makes it a fixture::

    @pytest.fixture
    async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
        async with open_broker(tmp_path) as b:
            yield b
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "mosquitto"

__all__ = ["Broker", "MqttClient", "free_port", "open_broker", "open_client", "until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    dir: Path
    port: int
    auth: Path | None = None  # scripts/mosquitto --auth: users and ACL from the agent

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int((self.dir / "mosquitto.pid").read_text())

    def start_sync(self) -> None:
        auth = ["--auth", str(self.auth)] if self.auth else []
        subprocess.run(
            [str(SCRIPT), "start", "--dir", str(self.dir), "--port", str(self.port), *auth],
            check=True,
            capture_output=True,
        )

    def stop_sync(self) -> None:
        subprocess.run([str(SCRIPT), "stop", "--dir", str(self.dir)], check=True)

    async def start(self) -> None:
        await trio.to_thread.run_sync(self.start_sync)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.stop_sync)

    def sub_one(self, topic: str, session: str | None = None) -> subprocess.Popen[bytes]:
        """``mosquitto_sub`` for one message on ``topic`` (printed on stdout; exits
        after 20 s without one). With ``session``, a persistent session under that
        client id: it survives a broker restart and reconnects by itself."""
        args = ["mosquitto_sub", "-p", str(self.port), "-q", "1", "-C", "1", "-W", "20"]
        if session:
            args += ["-c", "-i", session]
        return subprocess.Popen([*args, "-t", topic], stdout=subprocess.PIPE)

    def pub(self, topic: str, payload: bytes | str) -> None:
        """``mosquitto_pub`` once (QoS 1)."""
        data = payload.encode() if isinstance(payload, str) else payload
        subprocess.run(
            ["mosquitto_pub", "-p", str(self.port), "-q", "1", "-t", topic, "-s"],
            input=data,
            check=True,
        )


@asynccontextmanager
async def open_broker(tmp_path: Path, auth: Path | None = None) -> AsyncIterator[Broker]:
    b = Broker(tmp_path / "mosquitto", free_port(), auth)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``pred`` until truthy; fail after ``timeout`` (``wait_for``)."""
    await wait_for(pred, timeout, interval)


@dataclass
class MqttClient:
    """A test-side MQTT client (an EventBus with its own subscriptions) that
    records what it receives."""

    got: list[tuple[str, Any]] = field(default_factory=list)
    bus: Any = None
    _changed: trio.Event = field(default_factory=trio.Event)

    def receive(self, topic: str, payload: bytes) -> None:
        try:
            body: Any = json.loads(payload)
        except ValueError:
            body = payload
        self.got.append((topic, body))
        self._changed.set()
        self._changed = trio.Event()

    def publish(self, topic: str, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert self.bus.publish(topic, data)

    def on(self, topic: str) -> list[Any]:
        return [b for t, b in self.got if t == topic]

    async def wait_for(
        self, topic: str, pred: Callable[[Any], bool] = lambda b: True, timeout: float = 5.0
    ) -> Any:
        with trio.move_on_after(timeout):
            while True:
                for t, b in self.got:
                    if t == topic and pred(b):
                        return b
                await self._changed.wait()
        raise AssertionError(f"nothing on {topic} within {timeout} s; got {self.got[-5:]!r}")


async def open_client(
    nursery: trio.Nursery, url: str, subscriptions: tuple[str, ...]
) -> MqttClient:
    from edgeagent._eventbus import EventBus

    c = MqttClient()
    c.bus = EventBus(
        url,
        f"test-{free_port()}",
        dict.fromkeys(subscriptions, c.receive),
        subscriptions=subscriptions,
    )
    await nursery.start(c.bus.run)
    with trio.fail_after(10):
        await c.bus.wait_subscribed()  # SUBACK: the broker routes to it now
    return c
