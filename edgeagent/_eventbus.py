"""EventBus: the agent's client of the local MQTT broker (mosquitto).

The connection itself is :class:`edgeio.MqttClient` (paho-mqtt on trio, shared
with the mappers): reconnects with jittered back-off, renews the subscriptions
and queues QoS 1 messages while the broker is away. This module adds the agent's
routing: incoming messages go to the receivers given at construction, one per
subscription of :data:`edgeproto.topics.SUBSCRIPTIONS` (a subscription without a
receiver fails at start-up). Receivers run inline and must not block: that is
the backpressure (a slow receiver slows reading, and the broker queues), so
nothing is dropped between paho and the receivers. After a broker restart the
``on_connect`` hooks run (the twin re-sends outstanding deltas).

paho is imported only when :meth:`EventBus.run` starts, so an agent without
``mqtt`` configured never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from edgeio import MqttClient, MqttUrlError, Receiver
from edgeproto import topics

from ._errors import AgentError

__all__ = ["EventBus", "EventBusError", "Receiver"]


class EventBusError(AgentError):
    """The MQTT configuration is unusable or a route has no receiver."""


def _matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match (``+`` one level, ``#`` the rest)."""
    pat = pattern.split("/")
    top = topic.split("/")
    for i, p in enumerate(pat):
        if p == "#":
            return True
        if i >= len(top) or (p != "+" and p != top[i]):
            return False
    return len(pat) == len(top)


class EventBus:
    def __init__(
        self,
        url: str,
        client_id: str,
        routes: Mapping[str, Receiver],
        *,
        subscriptions: tuple[str, ...] = topics.SUBSCRIPTIONS,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        max_queued: int = 10_000,
    ) -> None:
        missing = [s for s in subscriptions if s not in routes]
        if missing:
            raise EventBusError(f"no receiver for subscriptions {missing}")
        self._routes = [(s, routes[s]) for s in subscriptions]
        self._route_cache: dict[str, Receiver] = {}
        self._unrouted = 0
        try:
            self._mqtt = MqttClient(
                url,
                client_id=client_id,
                username=username,
                password=password,
                receiver=self._deliver,
                keepalive=keepalive,
                max_inflight=1000,
                max_queued=max_queued,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
            )
        except MqttUrlError as exc:
            raise EventBusError(f"mqtt: {exc}") from None
        for s in subscriptions:
            self._mqtt.subscribe(s, qos=1)

    @property
    def connected(self) -> bool:
        return self._mqtt.connected

    @property
    def subscribed(self) -> bool:
        return self._mqtt.subscribed

    async def wait_subscribed(self) -> None:
        """Return once the broker has acknowledged the current connection's
        subscriptions."""
        await self._mqtt.wait_subscribed()

    def add_on_connect(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs after every (re)connect and resubscribe."""
        self._mqtt.add_on_connect(hook)

    def statistics(self) -> dict[str, Any]:
        return {**self._mqtt.statistics(), "unrouted": self._unrouted}

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Queue a message (sent now, or after reconnect for QoS 1). False when
        dropped: not running yet, or paho's bounded queue is full (counted)."""
        return self._mqtt.publish(topic, payload, qos)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._mqtt.run(task_status=task_status)

    def _receiver(self, topic: str) -> Receiver | None:
        receiver = self._route_cache.get(topic)
        if receiver is None:
            receiver = next((r for p, r in self._routes if _matches(p, topic)), None)
            if receiver is None:
                return None
            if len(self._route_cache) >= 4096:  # bounded: topics carry device names
                self._route_cache.clear()
            self._route_cache[topic] = receiver
        return receiver

    def _deliver(self, topic: str, payload: bytes) -> None:
        receiver = self._receiver(topic)
        if receiver is None:
            self._unrouted += 1
            return
        receiver(topic, payload)  # a failure is counted and logged by the client
