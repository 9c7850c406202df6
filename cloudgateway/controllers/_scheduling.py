"""The scheduler's decisions, as pure functions over plain JSON objects: which
pods wait for a node, what they request, which nodes they fit (and why not, in
kube-scheduler's words), and which fitting node is best.

- A pod waits for the scheduler when it has no ``spec.nodeName``, its
  ``spec.schedulerName`` is unset or ``default-scheduler``, it is not being
  deleted and has not finished.
- Filters, per node, in kube-scheduler's plugin order, the first failure
  naming the reason: Ready (a node whose Ready condition is not "True" is
  reported as carrying the taint the node lifecycle controller would put on it:
  ``node.kubernetes.io/not-ready`` for False, ``.../unreachable`` otherwise),
  cordoned, node selector / required affinity, taints (``_nodematch``), then
  room: the pod's requests (cpu, memory, and one pod) on top of the requests of
  the pods already bound there (unfinished ones) within ``status.allocatable``.
  A node that reports no allocatable amount for a resource is not limited in it
  (Node objects exist from join, before the board reports its status).
- Score: fewest pods of the same controller (owner uid) first, so replicas
  spread; then least requested (the mean free fraction of cpu and memory after
  placing the pod); then the node name, so a decision is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ._nodematch import node_ready, scheduler_fit

__all__ = [
    "DEFAULT_SCHEDULER",
    "NodeInfo",
    "Requests",
    "choose_node",
    "controller_uid",
    "failure_message",
    "filter_node",
    "is_pending",
    "node_infos",
    "parse_quantity",
    "pod_requests",
    "terminal",
]

DEFAULT_SCHEDULER = "default-scheduler"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def parse_quantity(text: Any) -> Decimal | None:
    """A Kubernetes resource quantity (``100m``, ``1.5``, ``128Mi``, ``1G``,
    ``2e3``) as a number of base units; None if it is not one."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return Decimal(str(text)) if text >= 0 else None
    if not isinstance(text, str) or not text or len(text) > 64:
        return None
    s = text.strip()
    suffix = ""
    for suf in _BINARY:
        if s.endswith(suf):
            suffix = suf
            break
    else:
        if s[-1:] in _DECIMAL and not s[-1:].isdigit():
            suffix = s[-1]
    number = s[: len(s) - len(suffix)] if suffix else s
    if not number or number[0] not in "+-.0123456789":
        return None
    try:
        value = Decimal(number)
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    scale = Decimal(_BINARY[suffix]) if suffix in _BINARY else _DECIMAL[suffix]
    return value * scale


@dataclass(frozen=True, slots=True)
class Requests:
    """What a pod asks for: cpu in millicores, memory in bytes (rounded up)."""

    cpu: int = 0
    memory: int = 0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu + other.cpu, self.memory + other.memory)


def _milli(q: Decimal | None) -> int:
    return 0 if q is None else int((q * 1000).to_integral_value(rounding="ROUND_CEILING"))


def _whole(q: Decimal | None) -> int:
    return 0 if q is None else int(q.to_integral_value(rounding="ROUND_CEILING"))


def _container_requests(c: Mapping[str, Any]) -> Requests:
    res = _map(c.get("resources"))
    req, lim = _map(res.get("requests")), _map(res.get("limits"))
    # As the API server defaults it: a limit without a request is the request.
    cpu = req.get("cpu", lim.get("cpu"))
    mem = req.get("memory", lim.get("memory"))
    return Requests(_milli(parse_quantity(cpu)), _whole(parse_quantity(mem)))


def pod_requests(pod: Mapping[str, Any]) -> Requests:
    """The pod's effective requests, as kube-scheduler computes them: the sum
    over its containers, at least the largest init container's, plus the
    pod's ``overhead``."""
    spec = _map(pod.get("spec"))
    total = Requests()
    for c in _list(spec.get("containers")):
        total = total + _container_requests(c)
    for c in _list(spec.get("initContainers")):
        r = _container_requests(c)
        total = Requests(max(total.cpu, r.cpu), max(total.memory, r.memory))
    overhead = _map(spec.get("overhead"))
    return total + Requests(
        _milli(parse_quantity(overhead.get("cpu"))), _whole(parse_quantity(overhead.get("memory")))
    )


def terminal(pod: Mapping[str, Any]) -> bool:
    return _map(pod.get("status")).get("phase") in ("Succeeded", "Failed")


def is_pending(pod: Mapping[str, Any]) -> bool:
    """The pod waits for this scheduler to bind it."""
    spec = _map(pod.get("spec"))
    if spec.get("nodeName"):
        return False
    if spec.get("schedulerName") not in (None, "", DEFAULT_SCHEDULER):
        return False
    if _map(pod.get("metadata")).get("deletionTimestamp"):
        return False
    return not terminal(pod)


def controller_uid(pod: Mapping[str, Any]) -> str | None:
    """The uid of the pod's controlling owner (its siblings share it)."""
    for ref in _list(_map(pod.get("metadata")).get("ownerReferences")):
        if ref.get("controller") is True and isinstance(ref.get("uid"), str):
            return str(ref["uid"])
    return None


@dataclass
class NodeInfo:
    """A node and what is placed on it (updated as the scheduler binds)."""

    name: str
    node: Mapping[str, Any]
    alloc_cpu: int | None  # millicores; None: not reported (unlimited)
    alloc_memory: int | None
    alloc_pods: int | None
    requested: Requests = Requests()
    pods: int = 0
    by_owner: dict[str, int] = field(default_factory=dict)

    def place(self, pod: Mapping[str, Any]) -> None:
        self.requested = self.requested + pod_requests(pod)
        self.pods += 1
        owner = controller_uid(pod)
        if owner is not None:
            self.by_owner[owner] = self.by_owner.get(owner, 0) + 1


def node_infos(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> dict[str, NodeInfo]:
    """Each node with the unfinished pods bound to it."""
    out: dict[str, NodeInfo] = {}
    for n in nodes:
        name = _map(n.get("metadata")).get("name")
        if not isinstance(name, str) or not name:
            continue
        alloc = _map(_map(n.get("status")).get("allocatable"))
        cpu = parse_quantity(alloc.get("cpu")) if "cpu" in alloc else None
        mem = parse_quantity(alloc.get("memory")) if "memory" in alloc else None
        npods = parse_quantity(alloc.get("pods")) if "pods" in alloc else None
        out[name] = NodeInfo(
            name,
            n,
            None if cpu is None else int(cpu * 1000),
            None if mem is None else int(mem),
            None if npods is None else int(npods),
        )
    for p in pods:
        bound = _map(p.get("spec")).get("nodeName")
        if isinstance(bound, str) and bound in out and not terminal(p):
            out[bound].place(p)
    return out


def _not_ready_reason(node: Mapping[str, Any]) -> str:
    status = None
    for c in _list(_map(node.get("status")).get("conditions")):
        if c.get("type") == "Ready":
            status = c.get("status")
    key = "node.kubernetes.io/not-ready" if status == "False" else "node.kubernetes.io/unreachable"
    return f"node(s) had untolerated taint {{{key}}}"


def filter_node(info: NodeInfo, pod: Mapping[str, Any], req: Requests) -> list[str]:
    """Why ``pod`` (requesting ``req``) cannot go to the node: [] if it can;
    else the first failing filter's reason (for resources, each resource
    short, as kube-scheduler lists them)."""
    if not node_ready(info.node):
        return [_not_ready_reason(info.node)]
    fit = scheduler_fit(info.node, _map(pod.get("spec")))
    if not fit.should_run:
        return [fit.reason]
    short: list[str] = []
    if info.alloc_pods is not None and info.pods + 1 > info.alloc_pods:
        short.append("Too many pods")
    if req.cpu and info.alloc_cpu is not None and info.requested.cpu + req.cpu > info.alloc_cpu:
        short.append("Insufficient cpu")
    if (
        req.memory
        and info.alloc_memory is not None
        and info.requested.memory + req.memory > info.alloc_memory
    ):
        short.append("Insufficient memory")
    return short


def _free(alloc: int | None, used: int) -> float:
    if alloc is None:
        return 1.0
    if alloc <= 0:
        return 0.0
    return max(0.0, (alloc - used) / alloc)


def _score(info: NodeInfo, owner: str | None, req: Requests) -> tuple[int, float, str]:
    siblings = info.by_owner.get(owner, 0) if owner is not None else 0
    free = (
        _free(info.alloc_cpu, info.requested.cpu + req.cpu)
        + _free(info.alloc_memory, info.requested.memory + req.memory)
    ) / 2
    return (siblings, -free, info.name)


def choose_node(
    infos: Mapping[str, NodeInfo], pod: Mapping[str, Any]
) -> tuple[NodeInfo | None, dict[str, int]]:
    """The best node for ``pod`` and, when none fits, how many nodes failed
    each reason."""
    req = pod_requests(pod)
    owner = controller_uid(pod)
    fitting: list[NodeInfo] = []
    reasons: dict[str, int] = {}
    for info in infos.values():
        why = filter_node(info, pod, req)
        if why:
            for r in why:
                reasons[r] = reasons.get(r, 0) + 1
        else:
            fitting.append(info)
    if not fitting:
        return None, reasons
    return min(fitting, key=lambda i: _score(i, owner, req)), reasons


def failure_message(total: int, reasons: Mapping[str, int]) -> str:
    """kube-scheduler's FitError text: ``0/3 nodes are available: 1 node(s)
    didn't match Pod's node affinity/selector, 2 Insufficient cpu.`` (the
    "count reason" strings sorted, as it sorts them)."""
    if total == 0:
        return "no nodes available to schedule pods"
    parts = sorted(f"{n} {r}" for r, n in reasons.items())
    return f"0/{total} nodes are available: {', '.join(parts)}."


def message_digest(text: str) -> str:
    """A short stable digest (names an Event per distinct message)."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]
