"""The agent's modules, wired in one visible list, each under a supervisor that
restarts it with backoff when it fails."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ._config import AgentConfig
from ._hub import HubClient
from ._meta import Meta
from ._status import NodeStatusReporter, PodStatusReporter
from ._streams import PodStreams
from ._tls import client_ssl_context

if TYPE_CHECKING:
    from ._slots import Slots

log = logging.getLogger(__name__)

__all__ = ["RestartPolicy", "run_agent", "supervise"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial: float = 1.0
    cap: float = 30.0
    healthy_after: float = 60.0  # a run this long resets the backoff


Service = Callable[..., Awaitable[None]]


class _StartedOnce:
    """The task status handed to every attempt of a module: the first
    ``started()`` (the module's own, or the supervisor's after a failed first
    start) is passed on to the caller; later ones do nothing."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status = task_status
        self.reported = False

    def started(self, value: None = None) -> None:
        if not self.reported:
            self.reported = True
            self._task_status.started(value)


async def supervise(
    name: str,
    run: Service,
    policy: RestartPolicy = RestartPolicy(),
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run(task_status=...)``; restart it with exponential backoff on failure.

    If an attempt fails before it reports started, the supervisor reports it
    started itself and keeps retrying: the modules after it in the list start
    anyway, instead of waiting for as long as this one keeps failing (edged
    with containerd down must not keep the hub from connecting). A retry's own
    ``started()`` is then a no-op."""
    status = _StartedOnce(task_status)
    delay = policy.initial
    while True:
        began = trio.current_time()
        try:
            await run(task_status=status)
            log.warning("module %s returned; restarting", name)
        except Exception:
            log.exception("module %s failed; restarting in %.1f s", name, delay)
        if not status.reported:
            log.warning("module %s did not start; starting the others without it", name)
            status.started()
        if trio.current_time() - began > policy.healthy_after:
            delay = policy.initial
        await trio.sleep(delay)
        delay = min(policy.cap, delay * 2)


def _slots(config: AgentConfig) -> Slots | None:
    """The release slots when ``edgeagent launch`` started this agent (it
    sets ``EDGEFLOCK_RELEASES``), else None; ``_slots`` is not even imported
    on the default path."""
    if not os.environ.get("EDGEFLOCK_RELEASES"):
        return None
    from ._slots import Slots

    return Slots.from_env(config.data_dir)


async def run_agent(config: AgentConfig, *, pod_streams: PodStreams | None = None) -> bool:
    """Run the agent until cancelled. ``pod_streams`` serves the cloud's logs and
    exec requests when edged does not (edged takes over when ``config.cri`` is set).
    True when it stopped because an upgrade switched to a new version: the
    caller relaunches (once the store is closed)."""
    relaunch = False
    stop = trio.CancelScope()

    def switched() -> None:
        nonlocal relaunch
        relaunch = True
        stop.cancel()

    meta = Meta(config.meta_path, outbox_max=config.outbox_max, writable_retry=config.storage_retry)
    try:
        # The hub in use ("hub") and those known ("hubs") are the hub client's.
        await meta.set_state(pid=os.getpid(), node=config.node)
        client_ssl_context(config.data_dir)  # unusable credentials stop the start, clearly
        hub = HubClient(config, meta, lambda: client_ssl_context(config.data_dir))
        hub.pod_streams = pod_streams
        modules: list[tuple[str, Service]] = [
            ("meta", meta.run),  # makes a read-only store (full card) writable again
            ("hub", hub.run),
            ("nodestatus", NodeStatusReporter(config, meta).run),
        ]
        edged = twin = None
        container_stats = None
        if config.cri:
            from .edged import Edged  # grpc/protobuf are imported only when edged runs

            edged = Edged(config, meta)
            hub.pod_streams = edged
            modules.append(("edged", edged.run))
            container_stats = edged.container_stats
        else:  # no runtime: pods bound here are reported Pending, with the reason
            modules.append(("podstatus", PodStatusReporter(config, meta).run))
        if config.stats_interval > 0:  # `top`: node and container usage
            from ._usage import UsageReporter

            modules.append(("usage", UsageReporter(config, meta, container_stats).run))
        if config.mqtt or config.dmi:  # one twin serves the MQTT bus and DMI mappers
            from ._twin import DeviceTwin, edge_bus_modules

            twin = DeviceTwin(config, meta)
            # paho is imported only with an edge bus
            modules += edge_bus_modules(config, meta, twin) if config.mqtt else [("twin", twin.run)]
            if config.dmi:
                from ._dmi import DmiServer  # grpc is imported only with dmi

                modules.append(("dmi", DmiServer(config, meta, twin).run))
        slots = _slots(config)
        if slots is not None:  # started by `edgeagent launch`: upgrades over the air
            from ._upgrade import Upgrader

            upgrader = Upgrader(
                config,
                meta,
                hub,
                slots,
                on_switched=switched,
                trial=os.environ.get("EDGEFLOCK_TRIAL") or None,
            )
            modules.append(("upgrade", upgrader.run))
        if config.metrics:
            from ._metrics import AgentMetrics  # prometheus_client only with metrics on

            metrics = AgentMetrics(config.metrics, hub, meta, edged=edged, twin=twin)
            modules.append(("metrics", metrics.run))
        with stop:
            async with trio.open_nursery() as nursery:
                for name, run in modules:
                    await nursery.start(supervise, name, run)
                log.info("edgeagent running as node %s with %d modules", config.node, len(modules))
    finally:
        with trio.CancelScope(shield=True):
            await meta.set_state(connected=False, pid=0)
        meta.close()
    if relaunch:
        log.warning("stopped to start the new version")
    return relaunch
