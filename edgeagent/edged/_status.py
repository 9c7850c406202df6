"""Pod status in the Kubernetes PodStatus JSON shape, sans-io: computed from what
containerd reports plus edged's own reasons (back-off, image and config errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._model import ContainerInfo

__all__ = ["ContainerView", "container_status", "pod_phase"]


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
