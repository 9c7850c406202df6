"""edgeio: I/O helpers shared by the agent, the gateway and the mappers — the
paho-on-trio MQTT client, MQTT URL parsing, durable file writes, log output
(text or JSON lines), histograms, heap trimming and the opt-in ``/metrics``
listener (``edgeio._metricsserver``).

It sits beside edgeproto (which does no I/O) and imports none of the packages
that use it. Every name loads on first use (the launcher, standard library only
otherwise, takes just the file helpers; the agent's command line the log
helpers), paho only when an MQTT client runs, prometheus_client only through
``edgeio._prom``, which only code with metrics on imports."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import EdgeIOError, MqttUrlError

if TYPE_CHECKING:
    from ._files import fsync_dir, write_atomic
    from ._heap import trim_heap
    from ._histogram import BYTES_BUCKETS, COUNT_BUCKETS, SECONDS_BUCKETS, Histogram
    from ._logs import (
        LOG_FORMATS,
        JsonFormatter,
        add_log_arguments,
        configure_logging,
        set_log_fields,
    )
    from ._mqtt import STABLE, Message, MqttClient, Receiver, parse_mqtt_url

_LAZY = {
    "BYTES_BUCKETS": "._histogram",
    "COUNT_BUCKETS": "._histogram",
    "SECONDS_BUCKETS": "._histogram",
    "Histogram": "._histogram",
    "LOG_FORMATS": "._logs",
    "JsonFormatter": "._logs",
    "add_log_arguments": "._logs",
    "configure_logging": "._logs",
    "set_log_fields": "._logs",
    "fsync_dir": "._files",
    "write_atomic": "._files",
    "STABLE": "._mqtt",
    "Message": "._mqtt",
    "MqttClient": "._mqtt",
    "Receiver": "._mqtt",
    "parse_mqtt_url": "._mqtt",
    "trim_heap": "._heap",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "trim_heap",
    "write_atomic",
]
