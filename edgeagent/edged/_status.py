"""Pod status in the Kubernetes PodStatus JSON shape, sans-io: computed from what
containerd reports plus edged's own reasons (back-off, image and config errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._model import ContainerInfo, PodRuntime, SandboxInfo

__all__ = [
    "ContainerView",
    "Transitions",
    "container_status",
    "container_views",
    "pod_phase",
    "pod_status",
    "qos_class",
    "runtime_down_status",
]


@dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    image: str
    info: ContainerInfo | None  # the newest container
    prev: ContainerInfo | None  # the one before it (lastState)
    waiting: tuple[str, str] | None  # a reason edged knows better than containerd's state
    ready: bool
    started: bool


def _terminated(c: ContainerInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": c.exit_code,
        "reason": c.reason or ("Completed" if c.exit_code == 0 else "Error"),
        "containerID": f"containerd://{c.id}",
    }
    if c.started_at:
        out["startedAt"] = edgeproto.rfc3339(c.started_at / 1e9)  # containerd: ns
    if c.finished_at:
        out["finishedAt"] = edgeproto.rfc3339(c.finished_at / 1e9)
    if c.message:
        out["message"] = c.message
    return out


def container_status(v: ContainerView) -> dict[str, Any]:
    c = v.info
    state: dict[str, Any]
    last: dict[str, Any] = {}
    if c is not None and c.state == "running":
        state = {"running": {"startedAt": edgeproto.rfc3339(c.started_at / 1e9)}}
        if v.prev is not None and v.prev.state == "exited":
            last = {"terminated": _terminated(v.prev)}
    elif c is not None and c.state == "exited":
        if v.waiting is not None:
            state = {"waiting": {"reason": v.waiting[0], "message": v.waiting[1]}}
            last = {"terminated": _terminated(c)}
        else:
            state = {"terminated": _terminated(c)}
            if v.prev is not None and v.prev.state == "exited":
                last = {"terminated": _terminated(v.prev)}
    else:
        reason, message = v.waiting or ("ContainerCreating", "")
        state = {"waiting": {"reason": reason}}
        if message:
            state["waiting"]["message"] = message
        if c is not None and v.prev is not None and v.prev.state == "exited":
            last = {"terminated": _terminated(v.prev)}
        elif c is None and v.prev is not None and v.prev.state == "exited":
            last = {"terminated": _terminated(v.prev)}
    out: dict[str, Any] = {
        "name": v.name,
        "image": v.image,
        "imageID": c.image_ref if c else "",
        "ready": v.ready,
        "started": v.started,
        "restartCount": c.attempt if c else (v.prev.attempt + 1 if v.prev else 0),
        "state": state,
        "lastState": last,
    }
    if c is not None:
        out["containerID"] = f"containerd://{c.id}"
    return out


def pod_phase(statuses: Sequence[Mapping[str, Any]], restart_policy: str) -> str:
    """kubelet's getPhase over app container statuses (init handled by the caller)."""
    running = waiting = stopped = succeeded = 0
    for cs in statuses:
        st = cs["state"]
        if "running" in st:
            running += 1
        elif "terminated" in st:
            stopped += 1
            if st["terminated"]["exitCode"] == 0:
                succeeded += 1
        elif cs.get("lastState", {}).get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "OnFailure":
            return "Running"
        return "Failed"
    return "Pending"


class Transitions:
    """When each pod condition last changed its status (``lastTransitionTime``)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str]] = {}  # type -> (status, since)

    def stamp(self, ctype: str, status: str, now: str) -> str:
        """The transition time of ``ctype`` now at ``status``: kept while unchanged."""
        prev = self._seen.get(ctype)
        if prev is None or prev[0] != status:
            prev = (status, now)
            self._seen[ctype] = prev
        return prev[1]


def container_views(
    containers: Sequence[Mapping[str, Any]],
    kind: str,
    rt: PodRuntime,
    sandbox: SandboxInfo | None,
    waiting: Mapping[str, tuple[str, str]],
    probes: Mapping[tuple[str, str], bool | None],
) -> list[ContainerView]:
    """One view per container spec of ``kind`` (init or app) from what containerd runs.

    ``waiting`` holds edged's own reasons by container name; ``probes`` the result of
    every running probe by (container id, startup|liveness|readiness), None until known.
    """
    out = []
    for spec in containers:
        name = str(spec.get("name"))
        latest = rt.latest(name, kind, sandbox.id if sandbox else None)
        info = latest[0] if latest else None
        prev = latest[1] if len(latest) > 1 else None
        running = info is not None and info.state == "running"
        started = False
        ready = False
        if running and info is not None:
            startup = (info.id, "startup")
            started = startup not in probes or probes[startup] is True
            if kind == "app":
                if spec.get("readinessProbe"):
                    ready = started and bool(probes.get((info.id, "readiness")))
                else:
                    ready = started
        if kind == "init" and info is not None and info.state == "exited" and info.exit_code == 0:
            ready = True
        reason = None if running else waiting.get(name)
        out.append(
            ContainerView(name, str(spec.get("image") or ""), info, prev, reason, ready, started)
        )
    return out


def pod_status(
    spec: Mapping[str, Any],
    rt: PodRuntime,
    sandbox: SandboxInfo | None,
    *,
    waiting: Mapping[str, tuple[str, str]],
    probes: Mapping[tuple[str, str], bool | None],
    transitions: Transitions,
    now: str,
    started_at: str,
    host_ip: str,
    mount_error: str = "",
    sandbox_error: str = "",
    runtime_error: str = "",
) -> dict[str, Any]:
    """The pod's PodStatus: phase, conditions, IPs and container statuses.

    ``started_at`` is the start time used until there is a sandbox; ``runtime_error``
    is set while containerd is unreachable.
    """
    policy = str(spec.get("restartPolicy") or "Always")
    init_views = container_views(
        spec.get("initContainers") or [], "init", rt, sandbox, waiting, probes
    )
    app_views = container_views(spec.get("containers") or [], "app", rt, sandbox, waiting, probes)
    if mount_error or sandbox_error:
        pending = ("ContainerCreating", mount_error or sandbox_error)
        app_views = [
            ContainerView(v.name, v.image, v.info, v.prev, v.waiting or pending, v.ready, v.started)
            for v in app_views
        ]
    init_st = [container_status(v) for v in init_views]
    app_st = [container_status(v) for v in app_views]
    init_done = all(
        v.info is not None and v.info.state == "exited" and v.info.exit_code == 0
        for v in init_views
    )
    init_failed = policy == "Never" and any(
        v.info is not None and v.info.state == "exited" and v.info.exit_code != 0
        for v in init_views
    )
    if init_failed:
        phase = "Failed"
    elif not init_done:
        phase = "Pending"
    else:
        phase = pod_phase(app_st, policy)
    containers_ready = init_done and all(v.ready for v in app_views) and bool(app_views)
    conds = [
        ("PodScheduled", True, ""),
        ("PodReadyToStartContainers", sandbox is not None, "" if sandbox else "SandboxNotReady"),
        ("Initialized", init_done, "" if init_done else "ContainersNotInitialized"),
        ("ContainersReady", containers_ready, "" if containers_ready else "ContainersNotReady"),
        ("Ready", containers_ready, "" if containers_ready else "ContainersNotReady"),
    ]
    if runtime_error:
        conds[-1] = ("Ready", False, "ContainerRuntimeDown")
    conditions = []
    for ctype, ok, reason in conds:
        status = "True" if ok else "False"
        c: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastTransitionTime": transitions.stamp(ctype, status, now),
        }
        if reason:
            c["reason"] = reason
        conditions.append(c)
    pod_ip = host_ip if spec.get("hostNetwork") else (sandbox.ip if sandbox else "")
    out: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}] if pod_ip else [],
        # the sandbox's creation time is stable across agent restarts
        "startTime": (
            edgeproto.rfc3339(sandbox.created_at / 1e9)  # containerd: ns
            if sandbox and sandbox.created_at
            else started_at
        ),
        "containerStatuses": app_st,
        "qosClass": qos_class(spec),
    }
    if init_st:
        out["initContainerStatuses"] = init_st
    if mount_error:
        out["message"] = mount_error
        out["reason"] = "FailedMount"
    elif sandbox_error:
        out["message"] = sandbox_error
        out["reason"] = "FailedCreatePodSandBox"
    elif runtime_error:
        out["message"] = f"container runtime unreachable: {runtime_error}"
        out["reason"] = "ContainerRuntimeDown"
    return out


def runtime_down_status(
    last: Mapping[str, Any] | None, error: str, transitions: Transitions, now: str
) -> dict[str, Any]:
    """The last status reported (if any) marked not ready: containerd is unreachable,
    so nothing newer is known about the containers."""
    status: dict[str, Any] = (
        dict(last) if last is not None else {"phase": "Pending", "conditions": []}
    )
    status["reason"] = "ContainerRuntimeDown"
    status["message"] = f"container runtime unreachable: {error}"
    conds = [
        c for c in status.get("conditions", []) if c.get("type") not in ("Ready", "ContainersReady")
    ]
    for ctype in ("ContainersReady", "Ready"):
        conds.append(
            {"type": ctype, "status": "False", "reason": "ContainerRuntimeDown",
             "lastTransitionTime": transitions.stamp(ctype, "False", now)}
        )  # fmt: skip
    status["conditions"] = conds
    return status


def qos_class(spec: Mapping[str, Any]) -> str:
    """BestEffort (nothing set), Guaranteed (cpu and memory limits equal to any
    requests in every container) or Burstable."""
    any_set = False
    guaranteed = True
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        lim, req = res.get("limits") or {}, res.get("requests") or {}
        if lim or req:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and str(req[r]) != str(lim[r])):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
