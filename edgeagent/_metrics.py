"""The agent's opt-in Prometheus endpoint (``metrics = "127.0.0.1:9101"`` in
agent.toml, or ``edgeagent run --metrics``): connection state, last resync,
outbox depth and drops, SQLite bytes written, pods by phase, container
restarts, CRI call latency, MQTT messages in and out, twin updates.

Imported only when metrics are on: it loads prometheus_client (~3 MiB
resident, BENCHMARKS.md). The parts keep plain counters whether or not this
runs; a scrape reads them (and asks the meta store, in its worker thread, for
the outbox depth and the bytes SQLite wrote)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from edgeio._metricsserver import serve_metrics
from edgeio._prom import Metric, counter, gauge, histogram, registry_of, render, statistics_families

if TYPE_CHECKING:
    from ._hub import HubClient
    from ._meta import Meta
    from ._twin import DeviceTwin
    from .edged import Edged

log = logging.getLogger(__name__)

_HUB_COVERED = frozenset({"connected", "resyncs_snapshot", "resyncs_delta"})
_TWIN_COVERED = frozenset({"twin_updates"})


class AgentMetrics:
    """What ``/metrics`` shows; ``run`` serves it on ``address``."""

    def __init__(
        self,
        address: str,
        hub: HubClient,
        meta: Meta,
        *,
        edged: Edged | None = None,
        twin: DeviceTwin | None = None,
    ) -> None:
        self.address = address
        self._hub = hub
        self._meta = meta
        self._edged = edged
        self._twin = twin
        self._io: dict[str, int] = {}  # from the meta store, read before each collect
        self._registry = registry_of(self._collect)
        self.port = 0  # the bound port, once running (useful with port 0)

    async def render(self) -> bytes:
        self._io = await self._meta.io_statistics()
        return render(self._registry)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_metrics, self.address, self.render)
            task_status.started()

    def _collect(self) -> Iterable[Metric]:
        hub = self._hub.statistics()
        yield gauge(
            "edgeflock_agent_connected", "1 while connected to a gateway hub", hub["connected"]
        )
        resyncs = [
            ((k[len("resyncs_") :],), v)
            for k, v in hub.items()
            if k in _HUB_COVERED and k != "connected"
        ]
        yield counter(
            "edgeflock_agent_resyncs_total",
            "Resyncs stored, by mode",
            labels=("mode",),
            samples=sorted(resyncs),
        )
        last = self._hub.last_resync
        if last is not None:
            mode, at, seconds, size = last
            yield gauge(
                "edgeflock_agent_last_resync_timestamp_seconds",
                "When the last resync was stored, by its mode",
                labels=("mode",),
                samples=[((mode,), at)],
            )
            yield gauge(
                "edgeflock_agent_last_resync_duration_seconds",
                "How long the last resync took",
                seconds,
            )
            yield gauge(
                "edgeflock_agent_last_resync_size_bytes", "Bytes the last resync carried", size
            )
        io = self._io
        if io:
            yield gauge(
                "edgeflock_agent_outbox_depth",
                "Reports waiting in the outbox for the gateway's ack",
                io["outbox_depth"],
            )
            yield counter(
                "edgeflock_agent_outbox_dropped_total",
                "Reports dropped to keep the outbox bounded (since the store was made)",
                io["outbox_dropped"],
            )
            yield counter(
                "edgeflock_agent_sqlite_written_bytes_total",
                "Bytes of pages SQLite wrote (to its WAL) since the agent started",
                io["sqlite_written_bytes"],
            )
        yield from statistics_families(
            "edgeflock_agent_hub",
            {k: v for k, v in hub.items() if k not in _HUB_COVERED},
            gauges=("inflight",),
        )
        if self._edged is not None:
            yield from _edged_families(self._edged)
        if self._twin is not None:
            twin = self._twin.statistics()
            yield counter(
                "edgeflock_agent_twin_updates_total",
                "Device twin updates accepted from the local bus",
                twin.get("twin_updates", 0),
            )
            yield from statistics_families(
                "edgeflock_agent_twin", {k: v for k, v in twin.items() if k not in _TWIN_COVERED}
            )
            bus = self._twin.bus_statistics() if self._twin.bus_statistics is not None else None
            if bus is not None:
                yield from _bus_families(bus)


def _edged_families(edged: Edged) -> Iterable[Metric]:
    phases: Counter[str] = Counter()
    restarts: list[tuple[tuple[str, str, str], float]] = []
    for ns, name, status in edged.pod_statuses():
        phases[str(status.get("phase") or "Unknown")] += 1
        for c in status.get("containerStatuses") or []:
            if isinstance(c, dict):
                restarts.append(
                    ((ns, name, str(c.get("name", ""))), float(c.get("restartCount") or 0))
                )
    yield gauge(
        "edgeflock_agent_pods",
        "Pods edged runs, by phase",
        labels=("phase",),
        samples=sorted(((p,), n) for p, n in phases.items()),
    )
    yield counter(
        "edgeflock_agent_container_restarts_total",
        "Container restarts, by pod and container (the status' restartCount)",
        labels=("namespace", "pod", "container"),
        samples=sorted(restarts),
    )
    yield histogram(
        "edgeflock_agent_cri_call_duration_seconds",
        "CRI calls to containerd, by method",
        labels=("method",),
        items=sorted(((m,), h) for m, h in edged.cri_seconds.items()),
    )


def _bus_families(bus: dict[str, Any]) -> Iterable[Metric]:
    yield gauge(
        "edgeflock_agent_mqtt_connected",
        "1 while connected to the local MQTT broker",
        int(bool(bus.get("connected"))),
    )
    yield counter(
        "edgeflock_agent_mqtt_messages_received_total",
        "MQTT messages received from the local broker",
        bus.get("received", 0),
    )
    yield counter(
        "edgeflock_agent_mqtt_messages_published_total",
        "MQTT messages published to the local broker",
        bus.get("published", 0),
    )
    rest = {k: v for k, v in bus.items() if k not in ("connected", "received", "published")}
    yield from statistics_families("edgeflock_agent_mqtt", rest)
