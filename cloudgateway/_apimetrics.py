"""``metrics.k8s.io/v1beta1`` (what ``kubectl top`` reads): NodeMetrics and
PodMetrics made from the usage nodes report (``_usage.UsageCache``) joined
with the Node and Pod objects in the store, so a deleted pod, or one bound to
another node since, shows no usage, and label and field selectors select on
the objects' own labels and fields (as metrics-server does).

Quantities as metrics-server writes them: CPU in nanocores (``"12345n"``),
memory in bytes (``"1234Ki"`` when a whole number of KiB), ``window`` a Go
duration (``"30s"``). Read only: get and list, no watch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import edgeproto
from edgeproto.usage import NodeUsage, PodUsage, Usage

from ._http import Request, Response, json_response
from ._store import NotFound, Store
from ._usage import UsageCache

__all__ = [
    "METRICS_GROUP",
    "METRICS_VERSION",
    "MetricsApi",
    "MetricsNotFound",
    "cpu_quantity",
    "memory_quantity",
    "window_text",
]

METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"
API_VERSION = f"{METRICS_GROUP}/{METRICS_VERSION}"
_KINDS = {"nodes": "NodeMetrics", "pods": "PodMetrics"}

Selector = Callable[[Mapping[str, Any]], bool]


class MetricsNotFound(Exception):
    """``kind``/``name`` has no metrics (answered 404 as metrics-server does)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f'{kind}.{METRICS_GROUP} "{name}" not found')
        self.kind = kind
        self.name = name


def cpu_quantity(nanocores: int) -> str:
    return f"{nanocores}n"


def memory_quantity(size: int) -> str:
    return f"{size // 1024}Ki" if size and size % 1024 == 0 else str(size)


def window_text(ms: int) -> str:
    """A Go ``time.Duration`` text (``"30s"``, ``"30.5s"``) that
    ``time.ParseDuration`` reads back."""
    seconds, rest = divmod(ms, 1000)
    return f"{seconds}s" if not rest else f"{seconds}.{rest:03d}".rstrip("0") + "s"


def _usage(u: Usage) -> dict[str, str]:
    return {"cpu": cpu_quantity(u.rate), "memory": memory_quantity(u.memory)}


def _meta(obj: Mapping[str, Any], now: str) -> dict[str, Any]:
    m = obj.get("metadata") or {}
    out: dict[str, Any] = {"name": m.get("name", ""), "creationTimestamp": now}
    if m.get("namespace"):
        out["namespace"] = m["namespace"]
    if m.get("labels"):
        out["labels"] = dict(m["labels"])
    return out


def _sample_time(sample: NodeUsage) -> str:
    return edgeproto.rfc3339(sample.time_ms / 1000)


def node_metrics(node: Mapping[str, Any], sample: NodeUsage, now: str) -> dict[str, Any]:
    return {
        "kind": "NodeMetrics",
        "apiVersion": API_VERSION,
        "metadata": _meta(node, now),
        "timestamp": _sample_time(sample),
        "window": window_text(sample.window_ms),
        "usage": _usage(sample.node),
    }


def pod_metrics(
    pod: Mapping[str, Any], usage: PodUsage, sample: NodeUsage, now: str
) -> dict[str, Any]:
    return {
        "kind": "PodMetrics",
        "apiVersion": API_VERSION,
        "metadata": _meta(pod, now),
        "timestamp": _sample_time(sample),
        "window": window_text(sample.window_ms),
        "containers": [{"name": c.name, "usage": _usage(c.usage)} for c in usage.containers],
    }


def resource_list() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": [
            {
                "name": name,
                "singularName": "",
                "namespaced": name == "pods",
                "kind": kind,
                "verbs": ["get", "list"],
            }
            for name, kind in _KINDS.items()
        ],
    }


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": f"{kind}List", "apiVersion": API_VERSION, "metadata": {}, "items": items}


class MetricsApi:
    """Serves ``/apis/metrics.k8s.io/v1beta1/...`` (``rest``: the path after
    the version). The caller authorizes, routes here and turns
    ``MetricsNotFound`` into a 404 ``Status``; ``None`` from ``serve``: not a
    path of this API."""

    def __init__(self, store: Store, usage: UsageCache) -> None:
        self._store = store
        self._usage = usage

    async def serve(self, req: Request, rest: list[str], match: Selector) -> Response | None:
        now = edgeproto.rfc3339(time.time())
        if not rest:
            return json_response(200, resource_list())
        if rest[0] == "nodes" and len(rest) <= 2:
            return json_response(200, await self._nodes(rest[1:], match, now))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if rest[0] == "pods" and len(rest) <= 2 and (namespace is not None or len(rest) == 1):
            return json_response(200, await self._pods(namespace, rest[1:], match, now))
        return None

    async def _nodes(self, name: list[str], match: Selector, now: str) -> dict[str, Any]:
        if name:
            sample = self._usage.get(name[0])
            if sample is None:
                raise MetricsNotFound("nodemetrics", name[0])
            try:
                node = (await self._store.get(edgeproto.make_key("nodes", "", name[0]))).value
            except NotFound:  # deleted since it reported
                raise MetricsNotFound("nodemetrics", name[0]) from None
            return node_metrics(node, sample, now)
        records, _ = await self._store.list("nodes/")
        items = []
        for r in records:
            sample = self._usage.get(r.value.get("metadata", {}).get("name", ""))
            if sample is not None and match(r.value):
                items.append(node_metrics(r.value, sample, now))
        return _list("NodeMetrics", items)

    async def _pods(
        self, namespace: str | None, name: list[str], match: Selector, now: str
    ) -> dict[str, Any]:
        prefix = "pods/" if namespace is None else f"pods/{namespace}/"
        if name:
            assert namespace is not None
            try:
                pod = (await self._store.get(f"{prefix}{name[0]}")).value
            except NotFound:
                raise MetricsNotFound("podmetrics", f"{namespace}/{name[0]}") from None
            found = self._pod_usage(pod)
            if found is None:
                raise MetricsNotFound("podmetrics", f"{namespace}/{name[0]}")
            return pod_metrics(pod, found[0], found[1], now)
        items = []
        if any(s.pods for _, s in self._usage.items()):
            records, _ = await self._store.list(prefix)
            for r in records:
                found = self._pod_usage(r.value)
                if found is not None and match(r.value):
                    items.append(pod_metrics(r.value, found[0], found[1], now))
        return _list("PodMetrics", items)

    def _pod_usage(self, pod: Mapping[str, Any]) -> tuple[PodUsage, NodeUsage] | None:
        """What the node ``pod`` is bound to reported of it."""
        node = (pod.get("spec") or {}).get("nodeName")
        sample = self._usage.get(node) if isinstance(node, str) else None
        if sample is None:
            return None
        m = pod.get("metadata") or {}
        for p in sample.pods:
            if p.namespace == m.get("namespace") and p.name == m.get("name"):
                return p, sample
        return None
