"""The latest resource usage each node reported (its ``stats`` reports), in
memory: as with Kubernetes' metrics-server, usage is ephemeral — a gateway
restart forgets it and the boards' next reports (every ``stats_interval``,
30 s by default) bring it back. One entry per node, replaced by each report;
an entry older than ``max(STALE_AFTER, STALE_WINDOWS * its window)`` (a
node gone offline) is no longer served and is dropped.

On etcd each replica knows the usage of the nodes connected to its own hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeproto.usage import NodeUsage

__all__ = ["STALE_AFTER", "STALE_WINDOWS", "UsageCache"]

STALE_AFTER = 120.0  # seconds
STALE_WINDOWS = 5


@dataclass(frozen=True, slots=True)
class _Entry:
    usage: NodeUsage
    received: float  # the cache's clock


class UsageCache:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[str, _Entry] = {}
        self._puts = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def put(self, node: str, usage: NodeUsage) -> None:
        self._nodes[node] = _Entry(usage, self._clock())
        self._puts += 1
        if self._puts % 1024 == 0:  # nodes that stopped reporting: dropped now and then
            self.prune()

    def _fresh(self, e: _Entry, now: float) -> bool:
        return now - e.received <= max(STALE_AFTER, STALE_WINDOWS * e.usage.window_ms / 1000)

    def get(self, node: str) -> NodeUsage | None:
        e = self._nodes.get(node)
        return e.usage if e is not None and self._fresh(e, self._clock()) else None

    def items(self) -> list[tuple[str, NodeUsage]]:
        """(node, usage) of every node with fresh usage, by node name."""
        self.prune()
        return sorted((n, e.usage) for n, e in self._nodes.items())

    def prune(self) -> None:
        now = self._clock()
        for n in [n for n, e in self._nodes.items() if not self._fresh(e, now)]:
            del self._nodes[n]
