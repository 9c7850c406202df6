"""Coordination between gateway replicas: who they are, which one leads, and
which replica holds each node's session.

``Coordinator`` is what the rest of the gateway calls; ``LocalCoordinator`` is
the single-process one (the embedded store: one replica, always the leader, the
local hub's sessions are the fleet's). The etcd one is
``cloudgateway.etcd.EtcdCoordinator`` (this module imports no etcd client)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

__all__ = ["LOCAL_FENCE", "Coordinator", "Fence", "LocalCoordinator", "ReplicaInfo"]


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One live replica, as it registered itself."""

    id: str
    hub_url: str = ""
    peer_url: str = ""
    api_url: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "hub_url": self.hub_url,
            "peer_url": self.peer_url,
            "api_url": self.api_url,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ReplicaInfo:
        """``ValueError`` when ``obj`` is not a replica record."""
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
            raise ValueError(f"not a replica record: {obj!r}")
        fields = {}
        for name in ("hub_url", "peer_url", "api_url"):
            value = obj.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"replica {obj['id']!r}: {name} is not a string")
            fields[name] = value
        return cls(obj["id"], **fields)


@dataclass(frozen=True, slots=True)
class Fence:
    """The leadership a leader-only write is fenced on: the leader key and its
    create revision (the store compares them in the write's transaction, so a
    deposed leader's late write fails). ``LOCAL_FENCE`` (empty key) fences
    nothing: one process is the only leader there is."""

    key: bytes
    create_revision: int


LOCAL_FENCE = Fence(b"", 0)


class Coordinator(Protocol):
    """What replicas agree on. ``run`` keeps it alive (start it with
    ``nursery.start``: it reports started once the replica is registered and
    its view of the fleet is loaded)."""

    @property
    def replica_id(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def fence(self) -> Fence | None:
        """The current leadership's fence; ``None`` while not leading."""
        ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def leading(self, work: Callable[[Fence], Awaitable[None]]) -> None:
        """Forever: wait to lead, run ``work(fence)`` while leading, cancel it the
        moment leadership is lost, wait to lead again. (If ``work`` returns, it
        runs again in the next term; if it raises, the exception propagates.)"""
        ...

    def hub_urls(self) -> list[str]:
        """The hub URL of every live replica, this replica's first."""
        ...

    def replicas(self) -> list[ReplicaInfo]:
        """Every live replica, this one first."""
        ...

    def fleet_connected(self) -> set[str]:
        """Nodes with a session on any live replica."""
        ...

    def session_owner(self, node: str) -> ReplicaInfo | None:
        """The replica holding ``node``'s session, if any."""
        ...

    def statistics(self) -> dict[str, int]: ...


class LocalCoordinator:
    """One process: always the leader, the fleet's sessions are the local hub's
    (``local_sessions``, e.g. ``hub.connected_nodes``). ``hub_urls`` is empty
    unless a ``hub_url`` is given: the join service then derives the one hub
    URL from the request, as the gateway always has."""

    def __init__(
        self,
        *,
        replica_id: str = "local",
        hub_url: str = "",
        peer_url: str = "",
        api_url: str = "",
        local_sessions: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self._info = ReplicaInfo(replica_id, hub_url, peer_url, api_url)
        self._local_sessions = local_sessions

    @property
    def replica_id(self) -> str:
        return self._info.id

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def fence(self) -> Fence | None:
        return LOCAL_FENCE

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def leading(self, work: Callable[[Fence], Awaitable[None]]) -> None:
        await work(LOCAL_FENCE)
        await trio.sleep_forever()  # the one term never ends

    def hub_urls(self) -> list[str]:
        return [self._info.hub_url] if self._info.hub_url else []

    def replicas(self) -> list[ReplicaInfo]:
        return [self._info]

    def fleet_connected(self) -> set[str]:
        return set(self._local_sessions())

    def session_owner(self, node: str) -> ReplicaInfo | None:
        return self._info if node in set(self._local_sessions()) else None

    def statistics(self) -> dict[str, int]:
        return {"leader": 1, "replicas": 1}
