"""Node and pod status reporting through the outbox.

Reports are coalesced per key in the outbox (the latest status of a pod wins)
and only enqueued when they differ from the last one, so an idle board writes
nothing. Until edged runs pods, every pod bound to the node is reported
Pending with a reason that says so.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from typing import Any

import cbor2
import trio

import edgeproto

from ._config import AgentConfig
from ._meta import Meta, StorageProblem
from ._version import VERSION

log = logging.getLogger(__name__)

__all__ = ["NodeStatusReporter", "PodStatusReporter", "node_status"]

AGENT_VERSION = f"v1.30.0-edgeflock.{VERSION}"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _meminfo_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _addresses() -> list[dict[str, str]]:
    host = socket.gethostname()
    out = [{"type": "Hostname", "address": host}]
    try:
        # The address this host would use to reach the world; no packet is sent.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            out.insert(0, {"type": "InternalIP", "address": s.getsockname()[0]})
    except OSError:
        pass
    return out


def node_status(config: AgentConfig, storage: StorageProblem | None = None) -> dict[str, Any]:
    """The Node status this agent reports (no timestamps: it is compared for
    changes). ``storage``: why the agent's store is read-only; reported as
    ``DiskPressure`` with its reason (``EdgeStorageFull``/``EdgeStorageReadOnly``)."""
    disk = (
        ("DiskPressure", "False", "AgentHasNoDiskPressure", "")
        if storage is None
        else ("DiskPressure", "True", storage.reason, storage.message)
    )
    cpus = os.cpu_count() or 1
    mem = _meminfo_kib()
    capacity = {"cpu": str(cpus), "memory": f"{mem}Ki", "pods": "110"}
    try:
        st = os.statvfs(config.data_dir)
        capacity["ephemeral-storage"] = f"{st.f_blocks * st.f_frsize // 1024}Ki"
    except OSError:
        pass
    machine = platform.machine()
    return {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "addresses": _addresses(),
        "nodeInfo": {
            "architecture": _ARCH.get(machine, machine),
            "operatingSystem": platform.system().lower(),
            "osImage": _os_image(),
            "kernelVersion": platform.release(),
            "kubeletVersion": AGENT_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "",
            "machineID": _read("/etc/machine-id"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "systemUUID": "",
        },
        "conditions": [
            {"type": t, "status": st, "reason": r, **({"message": m} if m else {})}
            for t, st, r, m in (
                ("MemoryPressure", "False", "AgentHasSufficientMemory", ""),
                disk,
                ("PIDPressure", "False", "AgentHasSufficientPID", ""),
            )
        ],
    }


class NodeStatusReporter:
    def __init__(self, config: AgentConfig, meta: Meta) -> None:
        self._cfg = config
        self._meta = meta
        self._last: dict[str, Any] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        key = edgeproto.make_key("nodes", "", self._cfg.node)
        task_status.started()
        while True:
            storage = self._meta.storage_generation
            status = node_status(self._cfg, self._meta.storage_problem)
            comparable = {**status, "nodeInfo": {**status["nodeInfo"], "bootID": ""}}
            if comparable != self._last:
                await self._meta.enqueue([(key, "status", cbor2.dumps({"status": status}), True)])
                self._last = comparable
            with trio.move_on_after(self._cfg.status_interval):
                # a card that fills up or has room again is reported at once
                await self._meta.wait_storage_changed(storage)


def pending_status(pod: dict[str, Any], since: str) -> dict[str, Any]:
    spec = pod.get("spec") or {}
    waiting = {
        "waiting": {
            "reason": "ContainerRuntimeNotEnabled",
            "message": "this agent runs without a container runtime (edged is not enabled)",
        }
    }
    return {
        "phase": "Pending",
        "reason": "ContainerRuntimeNotEnabled",
        "message": "edgeflock agent received the pod; no container runtime is enabled on this node",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
            {"type": "Initialized", "status": "False", "reason": "ContainerRuntimeNotEnabled"},
            {"type": "Ready", "status": "False", "reason": "ContainerRuntimeNotEnabled"},
        ],
        "containerStatuses": [
            {
                "name": c.get("name", ""),
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": waiting,
            }
            for c in spec.get("containers") or []
            if isinstance(c, dict)
        ],
        "startTime": since,
    }


class PodStatusReporter:
    """Reports each pod bound to this node whenever the status it gets differs
    from the one last reported for it: a change of the pod's metadata alone
    (a label) writes nothing, so a watch sees the one change the user made.
    ``since`` is the time the pod (its uid) was first seen here."""

    def __init__(self, config: AgentConfig, meta: Meta) -> None:
        self._cfg = config
        self._meta = meta
        self._reported: dict[str, tuple[Any, str, dict[str, Any]]] = {}  # uid, since, status

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        gen = -1
        while True:
            gen = self._meta.generation
            await self.report_once()
            await self._meta.wait_changed(gen)

    async def report_once(self) -> None:
        now = edgeproto.rfc3339(time.time())
        items: list[tuple[str, str, bytes, bool]] = []
        current: dict[str, tuple[Any, str, dict[str, Any]]] = {}
        for key, pod in await self._meta.list_objects("pods"):
            if (pod.get("spec") or {}).get("nodeName") != self._cfg.node:
                continue
            uid = (pod.get("metadata") or {}).get("uid")
            last = self._reported.get(key)
            since = last[1] if last is not None and last[0] == uid else now
            status = pending_status(pod, since)
            current[key] = (uid, since, status)
            if last is None or last[0] != uid or last[2] != status:
                items.append((key, "status", cbor2.dumps({"status": status}), True))
        if items:
            await self._meta.enqueue(items)
            log.debug("reported %d pod statuses", len(items))
        self._reported = current
