"""edgeio: I/O helpers shared by the agent, the gateway and the mappers — the
paho-on-trio MQTT client, MQTT URL parsing and durable file writes.

It sits beside edgeproto (which does no I/O) and imports none of the packages
that use it; paho is imported only when an MQTT client runs."""

from __future__ import annotations

from ._errors import EdgeIOError, MqttUrlError
from ._files import fsync_dir, write_atomic
from ._mqtt import STABLE, Message, MqttClient, Receiver, parse_mqtt_url

__all__ = [
    "STABLE",
    "EdgeIOError",
    "Message",
    "MqttClient",
    "MqttUrlError",
    "Receiver",
    "fsync_dir",
    "parse_mqtt_url",
    "write_atomic",
]
