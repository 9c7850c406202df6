"""One MQTT connection: paho-mqtt 2.x driven from trio, for the agent's EventBus
and the mappers.

paho runs in its external-loop style: the blocking ``reconnect()`` runs in a
worker thread, then three tasks per connection do the I/O on the client's socket
(``wait_readable`` → ``loop_read``, ``wait_writable`` → ``loop_write`` while paho
wants to write, ``loop_misc`` every second for keepalive), so paho's callbacks run
in the trio thread. Socket reads and writes go through user-space buffers (see
:func:`_open_paho`): a burst of messages costs one ``recv`` and its answers one
``send``.

- Subscriptions are remembered and renewed after every reconnect, in one
  SUBSCRIBE packet; ``on_connect`` hooks run after it is sent, and
  :meth:`MqttClient.wait_subscribed` returns once the broker has acknowledged it
  (refused topics, e.g. by an ACL, are logged and counted).
- A lost connection is retried with exponential back-off and full jitter; a
  connection that lasted :data:`STABLE` seconds resets the back-off.
- QoS 1 messages published while disconnected wait in paho's bounded queue; a
  full queue, or QoS 0 while disconnected, drops the message (counted).
- Incoming messages go to a receiver called inline (it must not block: a slow
  receiver slows reading and the broker queues), or, without one, to the bounded
  channel :attr:`MqttClient.incoming` (full: dropped and counted).

paho is imported only when :meth:`MqttClient.run` starts.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import socket
import sys
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import trio

from ._errors import MqttUrlError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

__all__ = ["STABLE", "Message", "MqttClient", "Receiver", "parse_mqtt_url"]

STABLE = 10.0
"""Seconds a connection must last for the reconnect back-off to start again from
its base (a broker that accepts and drops at once is not hammered)."""

_BURST = 0.002  # seconds of message handling between checkpoints
_MQTT_ERR_NO_CONN = 4  # paho's MQTTErrorCode.MQTT_ERR_NO_CONN, without importing paho

Receiver = Callable[[str, bytes], None]
"""``receiver(topic, payload)``: called in the trio thread, must not block."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``tcp://127.0.0.1:1883`` (or ``mqtt://``, or a bare ``host:port``) →
    ``("127.0.0.1", 1883)``; the port defaults to 1883."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme not in ("tcp", "mqtt") or not parts.hostname:
        raise MqttUrlError(f"expected tcp://HOST:PORT, got {url!r}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise MqttUrlError(f"bad port in {url!r}") from None
    return parts.hostname, port


class MqttClient:
    """One MQTT connection to ``url``, kept up by :meth:`run` until cancelled."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        receiver: Receiver | None = None,
        incoming_capacity: int = 1024,
        keepalive: int = 30,
        max_inflight: int = 200,
        max_queued: int = 10_000,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self._client_id = client_id
        self._credentials = (username, password)
        self._keepalive = keepalive
        self._limits = (max_inflight, max_queued)
        self._backoff = (backoff_base, backoff_cap)
        self._receiver = receiver or self._enqueue
        self._in_send, self.incoming = trio.open_memory_channel[Message](incoming_capacity)
        self._subscriptions: dict[str, int] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._paho: _Paho | None = None
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._want_write = trio.Event()
        self._connected = trio.Event()
        self._subscribed = trio.Event()
        self._renewal: int | None = None  # message id of the SUBSCRIBE sent at connect
        self._connected_now = False
        self._lost = False
        self._failing = False
        self.connected = False
        self.generation = 0
        """How many times a connection was accepted (the first is 1)."""
        self._stats = dict.fromkeys(
            (
                "connects",
                "disconnects",
                "connect_failures",
                "published",
                "publish_dropped",
                "received",
                "dropped_incoming",
                "receiver_errors",
                "hook_errors",
                "subscriptions_refused",
            ),
            0,
        )

    # ---- public ------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {"connected": self.connected, **self._stats}

    async def wait_connected(self) -> None:
        """Return once connected (at once if connected now)."""
        await self._connected.wait()

    @property
    def subscribed(self) -> bool:
        """The broker has acknowledged this connection's subscriptions."""
        return self._subscribed.is_set()

    async def wait_subscribed(self) -> None:
        """Return once the broker has acknowledged the subscriptions renewed at
        the current connection (messages published after that reach us)."""
        await self._subscribed.wait()

    def add_on_connect(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs in the trio thread after every (re)connect and resubscribe."""
        self._on_connect.append(hook)

    def connect_events(self) -> trio.MemoryReceiveChannel[int]:
        """A channel that gets :attr:`generation` after every (re)connect (and at
        once if connected now); a listener that lags more than 4 misses some."""
        send, recv = trio.open_memory_channel[int](4)

        def notify() -> None:
            try:
                send.send_nowait(self.generation)
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass

        self.add_on_connect(notify)
        if self.connected:
            notify()
        return recv

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        self._subscriptions[topic] = qos
        if self.connected and self._paho is not None:
            self._paho.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is not None:
            if self.connected and self._paho is not None:
                self._paho.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message (sent now, or after the reconnect for QoS 1); never
        blocks. False when dropped (counted): not running yet, paho's bounded
        queue full, or QoS 0 while disconnected."""
        paho = self._paho
        if paho is None:
            self._stats["publish_dropped"] += 1
            return False
        info = paho.publish(topic, payload, qos=qos, retain=retain)
        # MQTT_ERR_SUCCESS, or MQTT_ERR_NO_CONN for QoS 1 (queued until reconnected)
        if info.rc != 0 and not (info.rc == _MQTT_ERR_NO_CONN and qos > 0):
            self._stats["publish_dropped"] += 1
            return False
        self._stats["published"] += 1
        return True

    # ---- the service -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect whenever the connection is lost. Reports started
        at once: publishing works (QoS 1 is queued) before the broker answers."""
        paho = _open_paho(self._client_id)
        if self._credentials[0] is not None:
            paho.username_pw_set(*self._credentials)
        paho.max_inflight_messages_set(self._limits[0])
        paho.max_queued_messages_set(self._limits[1])
        paho.on_connect = self._on_connect_cb
        paho.on_disconnect = self._on_disconnect_cb
        paho.on_message = self._on_message_cb
        paho.on_subscribe = self._on_subscribe_cb
        paho.on_socket_close = self._on_socket_close_cb
        paho.on_socket_register_write = self._on_register_write_cb
        paho.on_socket_unregister_write = self._on_unregister_write_cb
        paho.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._paho = paho
        task_status.started()
        base, cap = self._backoff
        delay = base
        try:
            while True:
                try:
                    await trio.to_thread.run_sync(paho.reconnect)
                except OSError as exc:
                    self._stats["connect_failures"] += 1
                    self._failed("cannot connect", exc)
                else:
                    began = trio.current_time()
                    await self._serve_connection(paho)
                    self._set_disconnected()
                    if trio.current_time() - began >= STABLE:
                        delay = base
                await trio.sleep(random.uniform(0, delay))
                delay = min(cap, delay * 2)
        finally:
            self._set_disconnected()
            self._paho = None
            sock = paho.socket()
            try:
                paho.disconnect()
                paho.loop_write()
                if isinstance(sock, socket.socket):
                    sock.send(paho.wbuf)
            except Exception:  # closing anyway
                pass
            if sock is not None:
                sock.close()

    def _failed(self, why: str, detail: object) -> None:
        """Log a failure to connect: once at WARNING, then at DEBUG until connected."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "mqtt %s:%d: %s: %s", self.host, self.port, why, detail)

    def _set_disconnected(self) -> None:
        self.connected = False
        if self._connected.is_set():
            self._connected = trio.Event()
        if self._subscribed.is_set():
            self._subscribed = trio.Event()
        self._renewal = None

    async def _serve_connection(self, paho: _Paho) -> None:
        sock = paho.socket()
        if not isinstance(sock, socket.socket):
            return
        paho.reset_buffers()
        self._lost = False
        self._want_write = trio.Event()
        if paho.want_write():
            self._want_write.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, paho, sock, nursery.cancel_scope)
            nursery.start_soon(self._writer, paho, sock, nursery.cancel_scope)
            nursery.start_soon(self._misc, paho, nursery.cancel_scope)
        log.info("mqtt %s:%d: connection ended", self.host, self.port)
        if paho.socket() is not None:
            # Ended by us (cancelled) or by an error we saw first: drop the socket.
            paho._sock_close()  # paho has no public call to drop the socket

    async def _reader(self, paho: _Paho, sock: socket.socket, scope: trio.CancelScope) -> None:
        try:
            while True:
                if paho.buffered_input():
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(sock)
                # What is already read, for up to ~2 ms, before other tasks run and
                # the writer flushes the answers in one send.
                until = time.perf_counter() + _BURST
                while True:
                    rc = paho.loop_read()
                    self._dispatch()
                    if self._connected_now:
                        self._connected_now = False
                        self._run_hooks()
                    if rc != 0 or self._lost or not paho.buffered_input():
                        break
                    if time.perf_counter() > until:
                        break
                if rc != 0 or self._lost:
                    break
        except (trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    async def _writer(self, paho: _Paho, sock: socket.socket, scope: trio.CancelScope) -> None:
        try:
            while True:
                await self._want_write.wait()
                if paho.want_write() and paho.loop_write() != 0:
                    break
                wbuf = paho.wbuf
                while wbuf:
                    await trio.lowlevel.wait_writable(sock)
                    try:
                        sent = sock.send(wbuf)
                    except BlockingIOError:
                        continue
                    del wbuf[:sent]
                if self._lost:
                    break
                if not paho.want_write():
                    self._want_write = trio.Event()
        except (trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    async def _misc(self, paho: _Paho, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(1.0)
            if paho.loop_misc() != 0 or self._lost:
                break
        scope.cancel()

    def _dispatch(self) -> None:
        """Hand over what ``loop_read`` collected (outside paho's callbacks, so a
        receiver may publish)."""
        while self._inbox:
            topic, payload = self._inbox.popleft()
            self._stats["received"] += 1
            try:
                self._receiver(topic, payload)
            except Exception:
                self._stats["receiver_errors"] += 1
                log.exception("mqtt %s:%d: receiver for %s failed", self.host, self.port, topic)

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._in_send.send_nowait(Message(topic, payload))
        except trio.WouldBlock:
            self._stats["dropped_incoming"] += 1

    def _run_hooks(self) -> None:
        for hook in self._on_connect:
            try:
                hook()
            except Exception:
                self._stats["hook_errors"] += 1
                log.exception("mqtt %s:%d: on_connect hook failed", self.host, self.port)

    # ---- paho callbacks (run inside loop_read/loop_write/loop_misc, trio thread) -------

    def _on_connect_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._stats["connect_failures"] += 1
            self._failed("the broker refused the connection", reason)
            self._lost = True
            return
        if self._subscriptions:
            _, self._renewal = client.subscribe(list(self._subscriptions.items()))
        else:
            self._subscribed.set()
        self.connected = True
        self._connected.set()
        self._connected_now = True
        self._failing = False
        self.generation += 1
        self._stats["connects"] += 1
        log.info(
            "mqtt %s:%d: connected (%d), %d subscriptions",
            self.host,
            self.port,
            self.generation,
            len(self._subscriptions),
        )

    def _on_disconnect_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._set_disconnected()
        self._lost = True
        self._stats["disconnects"] += 1
        log.info("mqtt %s:%d: disconnected: %s", self.host, self.port, reason)

    def _on_subscribe_cb(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:  # e.g. a broker ACL: the topics are not ours to read
            self._stats["subscriptions_refused"] += len(refused)
            log.warning("mqtt %s:%d: subscriptions refused: %s", self.host, self.port, refused)
        if mid == self._renewal:
            self._subscribed.set()

    def _on_message_cb(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, bytes(msg.payload)))

    def _on_socket_close_cb(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._lost = True
        if isinstance(sock, socket.socket):
            try:
                trio.lowlevel.notify_closing(sock)
            except RuntimeError:
                pass  # closed from a worker thread (reconnect): no trio task waits on it

    def _on_register_write_cb(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return  # from reconnect() in a worker thread: the new connection checks
        self._want_write.set()

    def _on_unregister_write_cb(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        pass


class _Paho(Protocol):
    """What :class:`MqttClient` uses of its paho client (see :func:`_open_paho`)."""

    wbuf: bytearray
    on_connect: Any
    on_disconnect: Any
    on_message: Any
    on_subscribe: Any
    on_socket_close: Any
    on_socket_register_write: Any
    on_socket_unregister_write: Any

    def reset_buffers(self) -> None: ...
    def buffered_input(self) -> bool: ...
    def socket(self) -> Any: ...
    def want_write(self) -> bool: ...
    def loop_read(self, max_packets: int = 1) -> int: ...
    def loop_write(self) -> int: ...
    def loop_misc(self) -> int: ...
    def reconnect(self) -> Any: ...
    def disconnect(self) -> Any: ...
    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> Any: ...
    def subscribe(self, topic: Any, qos: int = 0) -> Any: ...
    def unsubscribe(self, topic: str) -> Any: ...
    def username_pw_set(self, username: str | None, password: str | None = None) -> None: ...
    def connect_async(self, host: str, port: int, keepalive: int = 60) -> Any: ...
    def max_inflight_messages_set(self, inflight: int) -> None: ...
    def max_queued_messages_set(self, queue_size: int) -> Any: ...
    def _sock_close(self) -> None: ...


class _UrllibRequestOnDemand(types.ModuleType):
    """Stands in for ``urllib.request`` until one of its names is asked for, then
    imports the real module and answers from it. paho's question (with PySocks
    installed, at every connect: is an MQTT proxy set in the environment?) is
    answered without the import while no ``*_proxy`` variable is set, which is
    what ``urllib.request.getproxies`` reads on Linux."""

    def __getattr__(self, name: str) -> Any:
        if name in ("getproxies", "proxy_bypass") and not any(
            key.lower().endswith("_proxy") for key in os.environ
        ):
            return _no_proxies if name == "getproxies" else _no_bypass
        if sys.modules.get("urllib.request") is self:
            del sys.modules["urllib.request"]
        return getattr(importlib.import_module("urllib.request"), name)


def _no_proxies() -> dict[str, str]:
    return {}


def _no_bypass(host: str) -> bool:
    return False


def _import_paho() -> None:
    """Import ``paho.mqtt.client`` without importing ``urllib.request`` for it.

    paho imports ``urllib.request`` at its top for one use: reading an MQTT proxy
    from the environment when it connects, and only when PySocks is installed. That
    module pulls in http.client, email and datetime, ~1.4 MiB resident on a board
    (agent and mappers alike) for nothing. So, unless something imported it
    already, paho is given a stand-in that imports the real module on first use
    (``importlib.util.LazyLoader`` cannot do this on Python 3.11: the import
    statement itself reads the lazy module's ``__spec__`` and so loads it). The
    stand-in leaves ``sys.modules`` once paho is imported; a later ``import
    urllib.request`` anywhere loads and binds the real module.
    """
    if "paho.mqtt.client" in sys.modules or "urllib.request" in sys.modules:
        return
    import urllib

    stand_in = _UrllibRequestOnDemand("urllib.request")
    sys.modules["urllib.request"] = stand_in
    setattr(urllib, "request", stand_in)  # noqa: B010 - what ``import urllib.request`` reads
    try:
        import paho.mqtt.client  # noqa: F401
    finally:
        if sys.modules.get("urllib.request") is stand_in:
            del sys.modules["urllib.request"]


def _open_paho(client_id: str) -> _Paho:
    """A paho client whose socket I/O goes through user-space buffers.

    paho reads a packet with three or more ``recv`` calls and writes every packet
    with its own ``send``; on loopback each ``send`` costs a full trip through the
    TCP stack and a wake-up of mosquitto. Here ``recv`` is served from one large
    read and ``send`` only appends: the writer task flushes a burst of answers in
    one ``send`` (measured: ~3x the messages per second). Overrides paho 2.x's
    ``_sock_recv``/``_sock_send``, its two socket primitives.
    """
    _import_paho()
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    class BufferedClient(mqtt.Client):
        def __init__(self) -> None:
            super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
            self.wbuf = bytearray()
            self._rbuf = b""
            self._rpos = 0

        def reset_buffers(self) -> None:
            self.wbuf.clear()
            self._rbuf, self._rpos = b"", 0

        def buffered_input(self) -> bool:
            return self._rpos < len(self._rbuf)

        def _sock_recv(self, bufsize: int) -> bytes:
            if self._rpos >= len(self._rbuf):
                if self._sock is None:
                    raise ConnectionError("socket closed")
                data = self._sock.recv(65536)  # BlockingIOError: paho sees "again"
                if not data:
                    return b""
                self._rbuf, self._rpos = data, 0
            out = self._rbuf[self._rpos : self._rpos + bufsize]
            self._rpos += len(out)
            return out

        def _sock_send(self, buf: bytes | bytearray) -> int:
            if self._sock is None:
                raise ConnectionError("socket closed")
            self.wbuf += buf
            return len(buf)

    client: _Paho = BufferedClient()
    return client
