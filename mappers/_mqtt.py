"""paho-mqtt 2.x driven from trio in external-loop style.

``reconnect()`` (a blocking connect) runs in a worker thread; then three tasks
drive the socket: readable → ``loop_read``, write wanted → writable →
``loop_write``, and ``loop_misc`` every second for keepalive. QoS1 messages
published while disconnected stay queued in paho and go out after reconnect.
Incoming messages land in a bounded channel (full → counted drop).
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from mappers._errors import ConfigError

__all__ = ["Message", "MqttClient", "parse_mqtt_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``mqtt://``, or bare ``host:port``) → (host, port)."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"tcp://{url}")
    if parsed.scheme not in ("tcp", "mqtt") or not parsed.hostname:
        raise ConfigError(f"--mqtt {url!r}: expected tcp://HOST:PORT")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise ConfigError(f"--mqtt {url!r}: bad port") from None
    return parsed.hostname, port


class MqttClient:
    """One MQTT connection, kept up by ``run()`` until cancelled."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str = "",
        incoming_capacity: int = 1024,
        keepalive: int = 30,
        max_inflight: int = 200,
        max_queued: int = 10_000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self._keepalive = keepalive
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeflock-mapper-{uuid.uuid4().hex[:8]}",
            clean_session=True,
        )
        if username is not None:  # a broker with mqtt_auth (mappers/_credentials.py)
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(max_queued)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.connect_async(self.host, self.port, keepalive=keepalive)
        self._in_send, self.incoming = trio.open_memory_channel[Message](incoming_capacity)
        self._subscriptions: dict[str, int] = {}
        self._connect_listeners: list[trio.MemorySendChannel[int]] = []
        self._write_wanted = trio.Event()
        self._connected = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_thread = 0
        self._sock: Any = None
        self.generation = 0
        self._stats = {
            "published": 0,
            "received": 0,
            "dropped_incoming": 0,
            "dropped_outgoing": 0,
            "connects": 0,
        }

    # -- public ------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        return dict(self._stats, connected=int(self._client.is_connected()))

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; never blocks. QoS1 messages survive a reconnect; a full
        queue (broker away for long) drops the message and counts it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._stats["dropped_outgoing"] += 1
            return
        self._stats["published"] += 1

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        self._subscriptions[topic] = qos
        if self._client.is_connected():
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is not None and self._client.is_connected():
            self._client.unsubscribe(topic)

    def connect_events(self) -> trio.MemoryReceiveChannel[int]:
        """A channel that gets the connection generation after every (re)connect."""
        send, recv = trio.open_memory_channel[int](4)
        self._connect_listeners.append(send)
        if self._client.is_connected():
            send.send_nowait(self.generation)
        return recv

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        limiter = trio.CapacityLimiter(1)
        backoff = 0.1
        started = False
        try:
            while True:
                try:
                    await trio.to_thread.run_sync(self._client.reconnect, limiter=limiter)
                except OSError as exc:
                    log.warning("mqtt %s:%d: connect failed: %s", self.host, self.port, exc)
                else:
                    backoff = 0.1
                    self._sock = self._client.socket()
                    if not started:
                        task_status.started()
                        started = True
                    await self._drive()
                    log.info("mqtt %s:%d: connection lost", self.host, self.port)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            if self._client.is_connected():
                self._client.disconnect()
                for _ in range(10):
                    if not self._client.want_write() or self._sock is None:
                        break
                    self._client.loop_write()

    # -- the socket loop -----------------------------------------------------------

    async def _drive(self) -> None:
        sock = self._sock
        if sock is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, sock, nursery.cancel_scope)
            nursery.start_soon(self._writer, sock, nursery.cancel_scope)
            nursery.start_soon(self._misc, nursery.cancel_scope)
        self._connected = trio.Event()
        if self._sock is sock:
            self._client._sock_close()  # paho leaves the socket to us on errors
            self._sock = None

    async def _reader(self, sock: Any, scope: trio.CancelScope) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                break
            rc = self._client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        scope.cancel()

    async def _writer(self, sock: Any, scope: trio.CancelScope) -> None:
        while True:
            if not self._client.want_write():
                self._write_wanted = trio.Event()
                if not self._client.want_write():
                    await self._write_wanted.wait()
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError):
                break
            rc = self._client.loop_write()
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                break
        scope.cancel()

    async def _misc(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(1.0)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        scope.cancel()

    # -- paho callbacks (trio thread, or the connect thread for register_write) ----

    def _in_trio(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._trio_thread:
            fn()
        elif self._token is not None:
            try:
                self._token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_trio(lambda: self._write_wanted.set())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._trio_thread and sock is self._sock:
            trio.lowlevel.notify_closing(sock)
            self._sock = None

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt %s:%d: connection refused: %s", self.host, self.port, reason)
            return
        self.generation += 1
        self._stats["connects"] += 1
        log.info("mqtt %s:%d: connected (generation %d)", self.host, self.port, self.generation)
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        self._connected.set()
        for send in self._connect_listeners:
            try:
                send.send_nowait(self.generation)
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._stats["received"] += 1
        try:
            self._in_send.send_nowait(Message(msg.topic, bytes(msg.payload)))
        except trio.WouldBlock:
            self._stats["dropped_incoming"] += 1
