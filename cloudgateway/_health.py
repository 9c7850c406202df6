"""Node health: Ready as soon as a node connects, NotReady (Unknown) only after a
grace period without heartbeats while it is not connected. Conditions are written
on transitions only, so heartbeats cost no store writes and a flaky link does not
flap the node. Which nodes are connected is the hub's to know: health asks it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Container, Iterable
from typing import Any

import trio

import edgeproto

from ._store import UNCHANGED, AlreadyExists, NotFound, Record, Store, StoreError

log = logging.getLogger(__name__)

__all__ = ["NodeHealth", "merge_node_status"]


def ready_condition(status: Any) -> dict[str, Any] | None:
    if isinstance(status, dict):
        for c in status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready":
                return c
    return None


def with_ready(
    status_in: Any,
    ready: str,
    reason: str,
    message: str,
    now: float,
    heartbeat: float | None = None,
) -> dict[str, Any]:
    """``status`` with its Ready condition set (other conditions kept);
    ``heartbeat``: when the node was last heard from, if not ``now``."""
    status: dict[str, Any] = dict(status_in) if isinstance(status_in, dict) else {}
    conds = [
        c
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("type") != "Ready"
    ]
    old = ready_condition(status)
    transition = old.get("lastTransitionTime") if old and old.get("status") == ready else None
    conds.append(
        {
            "type": "Ready",
            "status": ready,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": edgeproto.rfc3339(now if heartbeat is None else heartbeat),
            "lastTransitionTime": transition or edgeproto.rfc3339(now),
        }
    )
    status["conditions"] = conds
    return status


def merge_node_status(current: Any, reported: dict[str, Any]) -> dict[str, Any]:
    """The agent's node status with the gateway-owned Ready condition of
    ``current`` kept (a pure edit: the caller reads and writes in one store
    transaction, so a Ready transition cannot be lost in between)."""
    status = dict(reported)
    conds = [
        c
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("type") != "Ready"
    ]
    old_ready = ready_condition(current)
    if old_ready is not None:
        conds.append(old_ready)
    status["conditions"] = conds
    return status


class NodeHealth:
    """``clock`` measures the grace period (trio's clock by default); ``wall``
    stamps the conditions. Tests pass clocks they move by hand."""

    def __init__(
        self,
        store: Store,
        *,
        grace: float = 40.0,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._store = store
        self.grace = grace
        self._wall = wall
        self._clock = clock
        self._last_seen: dict[str, float] = {}  # clock() of the last sign of life
        self.transitions = 0

    def statistics(self) -> dict[str, int]:
        return {"tracked": len(self._last_seen)}

    def heartbeat(self, node: str) -> None:
        self._last_seen[node] = self._clock()

    async def connected(self, node: str) -> None:
        """The hub accepted ``node``: Ready now. (When it disconnects, the grace
        period runs from its last heartbeat.)"""
        self.heartbeat(node)
        await self._set_ready(node, "True", "AgentConnected", "edge agent connected")

    async def _set_ready(
        self, node: str, ready: str, reason: str, message: str, heartbeat: float | None = None
    ) -> None:
        """Write the Ready condition if it differs (read and written in one
        store transaction, batched with other writers: a reconnect storm is a
        few commits, not one per node)."""
        key = edgeproto.make_key("nodes", "", node)

        def edit(rec: Record) -> Any:
            cond = ready_condition(rec.value.get("status"))
            if cond is not None and cond.get("status") == ready:
                return UNCHANGED
            return with_ready(
                rec.value.get("status"), ready, reason, message, self._wall(), heartbeat
            )

        try:
            try:
                written = await self._store.modify(key, edit, status=True)
            except NotFound:
                if ready != "True":
                    return
                obj = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node, "labels": {"node-role.kubernetes.io/edge": ""}},
                    "spec": {},
                }
                with contextlib.suppress(AlreadyExists):  # lost the race: fine
                    await self._store.create(key, obj)
                written = await self._store.modify(key, edit, status=True)
        except StoreError as exc:
            log.warning("node %s Ready=%s not written: %s", node, ready, exc)
            return
        if written is not None:
            self.transitions += 1
            log.info("node %s Ready=%s (%s)", node, ready, reason)

    async def run(
        self,
        connected_nodes: Callable[[], Iterable[str]],
        *,
        listed_is_alive: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every grace/8 seconds, mark Unknown the nodes silent for the grace period
        that ``connected_nodes()`` (the hub's sessions) does not list.

        With replicas, the leader runs this with ``connected_nodes`` listing the
        sessions on every live replica, whose heartbeats it never sees: then
        ``listed_is_alive`` makes each listing a sign of life, stamped with this
        replica's own clock (so another replica's clock cannot move the grace
        period), and a node whose replica died gets the grace period from the
        last time any replica listed it. A run may start again (each term of
        leadership): every node the store says is Ready gets a full grace period
        from the start of this run."""
        start = self._clock()
        try:
            nodes, _ = await self._store.list("nodes/")
        except StoreError as exc:
            log.warning("cannot list nodes at start: %s", exc)
            nodes = []
        for rec in nodes:
            cond = ready_condition(rec.value.get("status"))
            if cond is not None and cond.get("status") == "True":
                self._last_seen[rec.key.rsplit("/", 1)[1]] = start
        task_status.started()
        while True:
            await trio.sleep(max(0.05, self.grace / 8))
            connected = set(connected_nodes())
            if listed_is_alive:
                now = self._clock()
                for node in connected:
                    self._last_seen[node] = now
            await self.check(connected)

    async def check(self, connected: Container[str]) -> None:
        now = self._clock()
        for node, seen in list(self._last_seen.items()):
            if node in connected or now - seen < self.grace:
                continue
            del self._last_seen[node]
            await self._set_ready(
                node,
                "Unknown",
                "NodeStatusUnknown",
                f"no heartbeat for {self.grace:.0f} s",
                # as Kubernetes' node controller: the last sign of life, not now
                heartbeat=self._wall() - (now - seen),
            )
