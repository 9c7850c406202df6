"""A histogram as Prometheus counts it: cumulative buckets by upper bound
(``le``, inclusive), a sum and a count. Plain data, no I/O and no metrics
library: the parts that observe (the hub's resyncs, the API, edged's CRI calls,
the mappers' reads) keep these whether or not anything exports them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: 1 ms to 30 s (request and call latencies).
SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Bytes: 256 B to 64 MiB, by 4 (resync sizes).
BYTES_BUCKETS = tuple(float(256 * 4**i) for i in range(10))
# How many of something: 1 to 1024, by 2 (store write batches).
COUNT_BUCKETS = tuple(float(2**i) for i in range(11))


class Histogram:
    """Observations counted into fixed buckets; ``observe`` is O(log buckets)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct, ascending and not empty")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
