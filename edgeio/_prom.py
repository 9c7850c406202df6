"""Prometheus families from plain counters, with ``prometheus_client``.

Imported only where metrics are on (the gateway's ``/metrics``, an agent or a
mapper run with ``metrics``): prometheus_client costs ~3 MiB of resident memory
(it loads http.server, wsgiref and urllib), which the agent's default path must
not pay. The parts keep plain counters and ``edgeio.Histogram``s; collectors
built from these helpers read them at scrape time, so counting costs nothing
more when metrics are off."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ._histogram import Histogram

__all__ = [
    "CONTENT_TYPE",
    "Metric",
    "counter",
    "gauge",
    "histogram",
    "registry_of",
    "render",
    "statistics_families",
]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

Samples = Iterable[tuple[Sequence[str], float]]


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def registry_of(*collectors: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (never prometheus_client's global one: a test
    process runs several gateways) whose collectors are these functions."""
    registry = CollectorRegistry(auto_describe=False)
    for fn in collectors:
        registry.register(_FunctionCollector(fn))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format 0.0.4 (``CONTENT_TYPE``)."""
    return generate_latest(registry)


def counter(
    name: str,
    doc: str,
    value: float | None = None,
    *,
    labels: Sequence[str] = (),
    samples: Samples = (),
) -> CounterMetricFamily:
    """A counter family; ``name`` ends in ``_total``."""
    fam = CounterMetricFamily(name, doc, value=value, labels=labels or None)
    for label_values, v in samples:
        fam.add_metric(list(label_values), v)
    return fam


def gauge(
    name: str,
    doc: str,
    value: float | None = None,
    *,
    labels: Sequence[str] = (),
    samples: Samples = (),
) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, value=value, labels=labels or None)
    for label_values, v in samples:
        fam.add_metric(list(label_values), v)
    return fam


def histogram(
    name: str,
    doc: str,
    *,
    labels: Sequence[str] = (),
    items: Iterable[tuple[Sequence[str], Histogram]] = (),
) -> HistogramMetricFamily:
    """A histogram family from ``edgeio.Histogram``s, one per label set."""
    fam = HistogramMetricFamily(name, doc, labels=labels or None)
    for label_values, hist in items:
        buckets = [
            (floatToGoString(bound), float(n))  # type: ignore[no-untyped-call]
            for bound, n in hist.cumulative()
        ]
        fam.add_metric(list(label_values), buckets, sum_value=hist.sum)
    return fam


_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def statistics_families(
    prefix: str, stats: Mapping[str, float], *, gauges: Iterable[str] = (), doc: str = ""
) -> Iterable[Metric]:
    """A part's ``statistics()`` dict as families: the names in ``gauges`` as
    gauges ``{prefix}_{name}``, every other as a counter ``{prefix}_{name}_total``."""
    gauge_names = set(gauges)
    for name, value in sorted(stats.items()):
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        metric = f"{prefix}_{_NOT_NAME.sub('_', name)}"
        what = doc or prefix.replace("_", " ")
        if name in gauge_names:
            yield gauge(metric, f"{what}: {name.replace('_', ' ')}", value)
        else:
            base = metric[: -len("_total")] if metric.endswith("_total") else metric
            yield counter(f"{base}_total", f"{what}: {name.replace('_', ' ')}", value)
