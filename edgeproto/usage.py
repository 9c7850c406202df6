"""Resource usage for ``top``: what an agent measures of its node and of its
running containers, sent up as its Node's ``stats`` report; the gateway keeps
the latest one per node and serves it as ``metrics.k8s.io`` NodeMetrics and
PodMetrics.

One definition of the body for both sides (sans-io, plain values only)::

    {"time": 1718000000123,          # ms since the epoch, when it was sampled
     "window": 30000,                # ms the rates were measured over
     "node": {"cpu": 8123456789000,  # cumulative CPU, core-nanoseconds
              "rate": 250000000,     # CPU rate over the window, nanocores
              "mem": 123456789},     # memory working set, bytes
     "pods": [{"ns": "default", "name": "web",
               "containers": [{"name": "main", "cpu": ..., "rate": ..., "mem": ...}]}]}

``parse_stats`` is strict: a missing, unknown or mistyped field, a number out
of range, a duplicate pod or container, or more pods or containers than the
limits raise ``UsageError`` (a ``ProtocolError``, answered 400 by the gateway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import ProtocolError

__all__ = [
    "MAX_CONTAINERS",
    "MAX_NAME",
    "MAX_PODS",
    "MAX_TIME_MS",
    "MAX_WINDOW_MS",
    "ContainerUsage",
    "NodeUsage",
    "PodUsage",
    "Usage",
    "UsageError",
    "parse_stats",
    "stats_body",
]

MAX_PODS = 1000  # pods in one report (kubelet's default limit is 110 a node)
MAX_CONTAINERS = 100  # containers of one pod
MAX_NAME = 253  # characters of a namespace, pod or container name
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_WINDOW_MS = 86_400_000  # one day
_MAX_U64 = (1 << 64) - 1

_USAGE_FIELDS = frozenset({"cpu", "rate", "mem"})
_TOP_FIELDS = frozenset({"time", "window", "node", "pods"})


class UsageError(ProtocolError):
    """A stats report the gateway cannot use; the message says why."""

    code = "bad-field"


@dataclass(frozen=True, slots=True)
class Usage:
    cpu: int  # cumulative CPU time, core-nanoseconds
    rate: int  # CPU in use over the window, nanocores (1e9 = one core)
    memory: int  # working set, bytes


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    name: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class PodUsage:
    namespace: str
    name: str
    containers: tuple[ContainerUsage, ...]


@dataclass(frozen=True, slots=True)
class NodeUsage:
    time_ms: int
    window_ms: int
    node: Usage
    pods: tuple[PodUsage, ...] = ()


def _usage_map(u: Usage) -> dict[str, int]:
    return {"cpu": u.cpu, "rate": u.rate, "mem": u.memory}


def stats_body(sample: NodeUsage) -> dict[str, Any]:
    """The ``stats`` report body of ``sample``."""
    return {
        "time": sample.time_ms,
        "window": sample.window_ms,
        "node": _usage_map(sample.node),
        "pods": [
            {
                "ns": p.namespace,
                "name": p.name,
                "containers": [{"name": c.name, **_usage_map(c.usage)} for c in p.containers],
            }
            for p in sample.pods
        ],
    }


def _bad(message: str) -> UsageError:
    return UsageError(message)


def _map(value: Any, where: str, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a map")
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise _bad(f"{where}: unknown fields {unknown[:5]}")
    missing = sorted(fields - value.keys())
    if missing:
        raise _bad(f"{where}: missing {missing}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{where} must be an integer in {low}..{high}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise _bad(f"{where} must be a string of 1..{MAX_NAME} characters")
    if not value.isprintable() or "/" in value:
        raise _bad(f"{where} {value[:MAX_NAME]!r} is not a name")
    return value


def _usage(value: Any, where: str) -> Usage:
    m = _map(value, where, _USAGE_FIELDS)
    return Usage(
        cpu=_int(m["cpu"], f"{where}.cpu", 0, _MAX_U64),
        rate=_int(m["rate"], f"{where}.rate", 0, _MAX_U64),
        memory=_int(m["mem"], f"{where}.mem", 0, _MAX_U64),
    )


def _pod(value: Any, where: str) -> PodUsage:
    m = _map(value, where, frozenset({"ns", "name", "containers"}))
    raw = m["containers"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CONTAINERS:
        raise _bad(f"{where}.containers must be a list of 1..{MAX_CONTAINERS} containers")
    containers: list[ContainerUsage] = []
    for i, c in enumerate(raw):
        cw = f"{where}.containers[{i}]"
        cm = _map(c, cw, _USAGE_FIELDS | {"name"})
        name = _name(cm["name"], f"{cw}.name")
        if any(x.name == name for x in containers):
            raise _bad(f"{cw}: container {name!r} twice")
        containers.append(ContainerUsage(name, _usage({k: cm[k] for k in _USAGE_FIELDS}, cw)))
    return PodUsage(
        _name(m["ns"], f"{where}.ns"), _name(m["name"], f"{where}.name"), tuple(containers)
    )


def parse_stats(body: Any) -> NodeUsage:
    """A ``stats`` report body, checked; ``UsageError`` says what is wrong."""
    m = _map(body, "stats", _TOP_FIELDS)
    raw = m["pods"]
    if not isinstance(raw, list) or len(raw) > MAX_PODS:
        raise _bad(f"stats.pods must be a list of at most {MAX_PODS} pods")
    pods: list[PodUsage] = []
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(raw):
        pod = _pod(p, f"stats.pods[{i}]")
        if (pod.namespace, pod.name) in seen:
            raise _bad(f"stats.pods[{i}]: pod {pod.namespace}/{pod.name} twice")
        seen.add((pod.namespace, pod.name))
        pods.append(pod)
    return NodeUsage(
        time_ms=_int(m["time"], "stats.time", 0, MAX_TIME_MS),
        window_ms=_int(m["window"], "stats.window", 1, MAX_WINDOW_MS),
        node=_usage(m["node"], "stats.node"),
        pods=tuple(pods),
    )
