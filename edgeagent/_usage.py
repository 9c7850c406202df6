"""Resource usage for ``top``: every ``stats_interval`` seconds the agent
measures its node (``/proc/stat``, ``/proc/meminfo``) and, when edged runs, its
running containers (CRI ``ListContainerStats``), and puts one ``stats`` report
in the outbox under one key per node: a newer sample replaces a pending one,
so a board offline for a week still holds one report, not a week of them.

CPU is reported as the cumulative core-nanoseconds and as a rate (nanocores)
over the time since the previous sample, as metrics-server computes it from
two scrapes; a container appears from its second sample on. The body is
``edgeproto.usage``'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import cbor2
import trio

import edgeproto
from edgeproto.usage import (
    MAX_CONTAINERS,
    MAX_PODS,
    ContainerUsage,
    NodeUsage,
    PodUsage,
    Usage,
    stats_body,
)

from ._config import AgentConfig
from ._meta import Meta

if TYPE_CHECKING:
    from .edged._model import ContainerSample

log = logging.getLogger(__name__)

__all__ = ["STATS_OP", "UsageReporter", "node_cpu_ns", "node_working_set"]

STATS_OP = "stats"
_TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)

ContainerStats = Callable[[], Awaitable[Sequence["ContainerSample"]]]


def node_cpu_ns(stat: str) -> int:
    """Busy CPU time of all cores since boot, in core-nanoseconds, from
    ``/proc/stat``'s ``cpu`` line: user, nice, system, irq, softirq and steal
    (idle and iowait are not busy; guest time is already in user)."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:9]]
            f += [0] * (8 - len(f))
            user, nice, system, _idle, _iowait, irq, softirq, steal = f
            return (user + nice + system + irq + softirq + steal) * _TICK_NS
    raise ValueError("no cpu line in /proc/stat")


def node_working_set(meminfo: str) -> int:
    """The node's memory working set in bytes, as the kubelet counts it for
    its root cgroup (usage minus inactive file pages), from ``/proc/meminfo``:
    MemTotal - MemFree - Inactive(file)."""
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kib[name] = int(parts[0])
    if "MemTotal" not in kib or "MemFree" not in kib:
        raise ValueError("no MemTotal/MemFree in /proc/meminfo")
    used = kib["MemTotal"] - kib["MemFree"] - kib.get("Inactive(file)", 0)
    return max(0, used) * 1024


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _rate(delta: int, ns: int) -> int:
    """nanocores: core-nanoseconds used per nanosecond, times 1e9."""
    return delta * 1_000_000_000 // ns if ns > 0 and delta >= 0 else 0


class UsageReporter:
    """Samples usage every ``config.stats_interval`` seconds and enqueues the
    latest as the node's one pending ``stats`` report. ``containers``: edged's
    ``container_stats`` (None without a runtime: node usage only)."""

    def __init__(
        self, config: AgentConfig, meta: Meta, containers: ContainerStats | None = None
    ) -> None:
        self._cfg = config
        self._meta = meta
        self._containers = containers
        self._key = edgeproto.make_key("nodes", "", config.node) + "#stats"
        self._node: tuple[int, int] | None = None  # (cpu ns, monotonic ns) of the last sample
        self._seen: dict[str, tuple[int, int]] = {}  # container id -> (cpu ns, time ns)
        self.reports = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.sample()  # the baseline the first rates are measured from
        while True:
            await trio.sleep(self._cfg.stats_interval)  # a period, not a wait for a condition
            sample = await self.sample()
            if sample is not None:
                body = cbor2.dumps({"stats": stats_body(sample)})
                await self._meta.enqueue([(self._key, STATS_OP, body, True)])
                self.reports += 1

    async def sample(self) -> NodeUsage | None:
        """Measure now; the usage since the previous call (None on the first)."""
        stat, meminfo = await trio.to_thread.run_sync(
            lambda: (_read("/proc/stat"), _read("/proc/meminfo"))
        )
        now_ns = time.monotonic_ns()
        cpu = node_cpu_ns(stat)
        memory = node_working_set(meminfo)
        pods = await self._pods()
        last, self._node = self._node, (cpu, now_ns)
        if last is None:
            return None
        window = now_ns - last[1]
        return NodeUsage(
            time_ms=time.time_ns() // 1_000_000,
            window_ms=max(1, window // 1_000_000),
            node=Usage(cpu, _rate(cpu - last[0], window), memory),
            pods=pods,
        )

    async def _pods(self) -> tuple[PodUsage, ...]:
        if self._containers is None:
            return ()
        try:
            samples = await self._containers()
        except Exception as exc:  # containerd down, edged restarting: node usage only
            log.debug("no container stats this time: %s", exc)
            return ()
        by_pod: dict[tuple[str, str], dict[str, tuple[int, Usage]]] = {}
        seen: dict[str, tuple[int, int]] = {}
        for s in samples:
            seen[s.id] = (s.cpu_ns, s.time_ns)
            last = self._seen.get(s.id)
            if last is None or s.time_ns <= last[1] or not s.namespace:
                continue  # the first sample of a container: no rate yet
            usage = Usage(s.cpu_ns, _rate(s.cpu_ns - last[0], s.time_ns - last[1]), s.memory)
            containers = by_pod.setdefault((s.namespace, s.pod), {})
            # Two containers of one name (a restart's old one not yet gone): the newer.
            if s.container not in containers or containers[s.container][0] < s.time_ns:
                containers[s.container] = (s.time_ns, usage)
        self._seen = seen
        return tuple(  # within the limits the gateway holds reports to
            PodUsage(
                ns,
                name,
                tuple(ContainerUsage(c, u) for c, (_, u) in sorted(cs.items())[:MAX_CONTAINERS]),
            )
            for (ns, name), cs in sorted(by_pod.items())[:MAX_PODS]
        )
