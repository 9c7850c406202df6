"""A mapper's opt-in Prometheus endpoint (``--metrics 127.0.0.1:PORT``): per
device reads, writes, errors, request latency and online state, plus the
mapper's MQTT client. Imported only with ``--metrics`` (prometheus_client).

The device tasks keep plain counters (``statistics()``, also published on the
mapper's status topic) and, for Modbus, a latency ``Histogram``; the names
below say which counter is which family, per protocol."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from edgeio._prom import Metric, counter, gauge, histogram, registry_of, render, statistics_families

if TYPE_CHECKING:
    from ._runner import MapperShell

# Device counters that are errors, by the ``error`` label they get.
_ERRORS = {
    "timeouts": "timeout",
    "crc_errors": "crc",
    "protocol_errors": "protocol",
    "exceptions": "device_exception",
    "bus_errors": "bus",
    "write_errors": "write",
    "writes_refused": "write_refused",
    "garbage": "garbage",
    "overflows": "overflow",
    "open_failures": "open",
}
_READS = ("reads", "lines")  # Modbus: read requests answered; serial: lines read


def _num(stats: dict[str, Any], key: str) -> float:
    value = stats.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


class MapperMetrics:
    """``render()`` is the body of the mapper's ``/metrics``."""

    def __init__(self, shell: MapperShell) -> None:
        self._shell = shell
        self._registry = registry_of(self._collect)

    async def render(self) -> bytes:
        return render(self._registry)

    def _collect(self) -> Iterable[Metric]:
        shell = self._shell
        devices = {
            name: (slot.task, slot.task.statistics()) for name, slot in shell.devices.items()
        }
        labels = ("protocol", "device")
        proto = shell.protocol_name

        def per_device(key: str) -> list[tuple[tuple[str, str], float]]:
            return sorted(((proto, d), _num(s, key)) for d, (_, s) in devices.items())

        yield gauge(
            "edgeflock_mapper_device_online",
            "1 while the device answers (0: offline or not yet known)",
            labels=labels,
            samples=sorted(
                ((proto, d), float(s.get("state") == "online")) for d, (_, s) in devices.items()
            ),
        )
        yield counter(
            "edgeflock_mapper_device_reads_total",
            "Successful reads (Modbus: read requests answered; serial: lines read)",
            labels=labels,
            samples=sorted(
                ((proto, d), sum(_num(s, k) for k in _READS)) for d, (_, s) in devices.items()
            ),
        )
        yield counter(
            "edgeflock_mapper_device_writes_total",
            "Property values written to the device",
            labels=labels,
            samples=per_device("writes"),
        )
        yield counter(
            "edgeflock_mapper_device_errors_total",
            "Device errors by kind",
            labels=(*labels, "error"),
            samples=sorted(
                ((proto, d, kind), _num(s, key))
                for d, (_, s) in devices.items()
                for key, kind in _ERRORS.items()
                if key in s
            ),
        )
        yield counter(
            "edgeflock_mapper_device_twin_updates_total",
            "Twin updates published for the device",
            labels=labels,
            samples=per_device("twin_updates"),
        )
        yield histogram(
            "edgeflock_mapper_device_request_duration_seconds",
            "Request to answer (or timeout), each attempt (Modbus)",
            labels=labels,
            items=[
                ((proto, d), latency)
                for d, (task, _) in sorted(devices.items())
                if (latency := getattr(task, "latency", None)) is not None
            ],
        )
        yield gauge("edgeflock_mapper_devices", "Devices this mapper runs", len(devices))
        own = {
            k: v
            for k, v in shell.statistics().items()
            if isinstance(v, int) and not isinstance(v, bool)
        }
        yield from statistics_families("edgeflock_mapper", own)
        mqtt = shell.mqtt.statistics()
        yield gauge(
            "edgeflock_mapper_mqtt_connected",
            "1 while connected to the broker",
            float(bool(mqtt.get("connected"))),
        )
        yield from statistics_families(
            "edgeflock_mapper_mqtt", {k: v for k, v in mqtt.items() if k != "connected"}
        )
