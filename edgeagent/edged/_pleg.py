"""What runs, as containerd says (containerd is the source of truth), and the
PLEG-style relister: containerd 1.6 has no GetContainerEvents, so sandboxes and
containers are listed at a fixed interval and the pods whose runtime state changed
are woken."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ._cri import Cri, pb
from ._errors import CriError
from ._model import (
    ANNOTATION_GRACE,
    LABEL_HASH,
    LABEL_KIND,
    LABEL_OWNER,
    LABEL_UID,
    ContainerInfo,
    PodRuntime,
    SandboxInfo,
    parse_int,
)

log = logging.getLogger(__name__)

__all__ = ["Relister", "Runtime"]

_CSTATE = {0: "created", 1: "running", 2: "exited", 3: "unknown"}


class Runtime:
    """Lists this node's sandboxes and containers; caches immutable status details."""

    def __init__(self, cri: Cri, owner: str) -> None:
        self.cri = cri
        self.owner = owner
        self._cstatus: dict[tuple[str, int], Any] = {}
        self._sstatus: dict[tuple[str, int], str] = {}

    async def list_pod(self, uid: str) -> PodRuntime:
        sel = {LABEL_OWNER: self.owner, LABEL_UID: uid}
        sbs = await self.cri.call(
            "ListPodSandbox",
            pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector=sel)),
        )
        cts = await self.cri.call(
            "ListContainers",
            pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector=sel)),
        )
        out = PodRuntime()
        for s in sbs.items:
            ip = await self._sandbox_ip(s.id, s.state)
            out.sandboxes.append(
                SandboxInfo(
                    s.id, uid, s.metadata.name, s.metadata.namespace, s.metadata.attempt,
                    s.state == 0, s.created_at, ip,
                )
            )  # fmt: skip
        for c in cts.containers:
            st = await self._container_status(c.id, c.state)
            if st is None:
                continue
            out.containers.append(
                ContainerInfo(
                    id=c.id,
                    sandbox_id=c.pod_sandbox_id,
                    name=c.metadata.name,
                    attempt=c.metadata.attempt,
                    state=_CSTATE.get(st.state, "unknown"),
                    created_at=st.created_at,
                    started_at=st.started_at,
                    finished_at=st.finished_at,
                    exit_code=st.exit_code,
                    reason=st.reason,
                    message=st.message,
                    image=st.image.image or c.image.image,
                    image_ref=st.image_ref,
                    log_path=st.log_path,
                    hash=c.labels.get(LABEL_HASH, ""),
                    kind=c.labels.get(LABEL_KIND, "app"),
                    grace=parse_int(c.annotations.get(ANNOTATION_GRACE), 30),
                )
            )
        return out

    async def _sandbox_ip(self, sid: str, state: int) -> str:
        key = (sid, state)
        if key not in self._sstatus:
            try:
                resp = await self.cri.call(
                    "PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=sid)
                )
            except CriError as exc:
                if exc.code == "NOT_FOUND":
                    return ""
                raise
            self._sstatus[key] = resp.status.network.ip
        return self._sstatus[key]

    async def _container_status(self, cid: str, state: int) -> Any:
        key = (cid, state)
        if key not in self._cstatus:
            try:
                resp = await self.cri.call(
                    "ContainerStatus", pb.ContainerStatusRequest(container_id=cid)
                )
            except CriError as exc:
                if exc.code == "NOT_FOUND":
                    return None
                raise
            self._cstatus[key] = resp.status
        return self._cstatus[key]

    async def signatures(self) -> dict[str, frozenset[tuple[str, int]]]:
        """uid -> the (id, state) of its sandboxes and containers: cheap, two list calls."""
        sel = {LABEL_OWNER: self.owner}
        sbs = await self.cri.call(
            "ListPodSandbox",
            pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector=sel)),
        )
        cts = await self.cri.call(
            "ListContainers",
            pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector=sel)),
        )
        out: dict[str, set[tuple[str, int]]] = {}
        ids: set[str] = set()
        for s in sbs.items:
            out.setdefault(s.labels.get(LABEL_UID, ""), set()).add((s.id, s.state))
            ids.add(s.id)
        for c in cts.containers:
            out.setdefault(c.labels.get(LABEL_UID, ""), set()).add((c.id, 10 + c.state))
            ids.add(c.id)
        for cache in (self._cstatus, self._sstatus):
            for key in [k for k in cache if k[0] not in ids]:
                del cache[key]
        return {uid: frozenset(v) for uid, v in out.items()}


class Relister:
    """Every ``interval`` seconds: list, compare with the last listing, call
    ``changed(uid)`` for each pod whose sandboxes or containers changed (including
    pods that appeared or vanished), and ``health(ok, error)`` when the runtime's
    reachability flips."""

    def __init__(
        self,
        runtime: Runtime,
        interval: float,
        changed: Callable[[str], None],
        health: Callable[[bool, str], None],
    ) -> None:
        self.runtime = runtime
        self.interval = interval
        self._changed = changed
        self._health = health
        self.last: dict[str, frozenset[tuple[str, int]]] = {}
        self.ok: bool | None = None
        self.relists = 0

    async def relist_once(self) -> None:
        try:
            now = await self.runtime.signatures()
        except CriError as exc:
            if self.ok is not False:
                log.warning("container runtime unreachable: %s", exc)
                self.ok = False
                self._health(False, str(exc))
            return
        if self.ok is not True:
            if self.ok is False:
                log.info("container runtime reachable again")
            self.ok = True
            self._health(True, "")
        self.relists += 1
        for uid in set(now) | set(self.last):
            if now.get(uid) != self.last.get(uid):
                self._changed(uid)
        self.last = now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.relist_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.relist_once()
