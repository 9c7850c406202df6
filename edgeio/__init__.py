"""edgeio: I/O helpers shared by the agent, the gateway and the mappers — the
paho-on-trio MQTT client, MQTT URL parsing, durable file writes, log output
(text or JSON lines), histograms and the opt-in ``/metrics`` listener.

It sits beside edgeproto (which does no I/O) and imports none of the packages
that use it; paho is imported only when an MQTT client runs, prometheus_client
only by ``edgeio._prom``, which only code with metrics on imports."""

from __future__ import annotations

from ._errors import EdgeIOError, MqttUrlError
from ._files import fsync_dir, write_atomic
from ._histogram import BYTES_BUCKETS, COUNT_BUCKETS, SECONDS_BUCKETS, Histogram
from ._logs import LOG_FORMATS, JsonFormatter, add_log_arguments, configure_logging, set_log_fields
from ._mqtt import STABLE, Message, MqttClient, Receiver, parse_mqtt_url

__all__ = [
    "BYTES_BUCKETS",
    "COUNT_BUCKETS",
    "LOG_FORMATS",
    "SECONDS_BUCKETS",
    "STABLE",
    "EdgeIOError",
    "Histogram",
    "JsonFormatter",
    "Message",
    "MqttClient",
    "MqttUrlError",
    "Receiver",
    "add_log_arguments",
    "configure_logging",
    "fsync_dir",
    "parse_mqtt_url",
    "set_log_fields",
    "write_atomic",
]
