"""A gateway replica's part in a fleet on etcd: its coordinator (registry,
leadership, session keys), its peer port and the routing of logs/exec to the
replica that holds a node's session, and the leader-only work.

``run_gateway`` uses this only when the store is etcd; a gateway on the
embedded store runs its health checks, compaction and event pruning itself,
as one process always has.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from ._backends import etcd_parts
from ._config import GatewayConfig
from ._coord import Fence
from ._errors import GatewayError
from ._hub import Hub
from ._peer import PeerServer, RoutedStreams, advertised_peer_address
from ._peercert import (
    load_or_create_replica_credentials,
    load_or_create_replica_id,
    peer_client_ssl,
    peer_server_ssl,
)
from ._pki import GatewayPki
from ._store import Store

if TYPE_CHECKING:
    from .etcd._client import EtcdClient
    from .etcd._coord import EtcdCoordinator

log = logging.getLogger(__name__)

__all__ = ["LeaderWork", "Replica", "fenced"]

LeaderWork = Callable[[Store], Awaitable[None]]
"""Work only the leader does, given a Store whose writes are fenced on its term."""

LEASE_TTL = 5  # seconds: a dead replica's sessions and leadership last this long


def fenced(store: Store, fence: Fence) -> Store:
    """A Store over ``store``'s etcd backend whose writes also need ``fence``
    (this replica's leadership) to hold: a deposed leader's write fails with
    ``Fenced`` instead of landing. It shares ``store``'s subscriptions (fed by
    its one watch), so leader work subscribing to it sees every change."""
    with_fence = getattr(store.backend, "with_fence", None)
    if with_fence is None:
        raise GatewayError("fencing needs the etcd store")
    return store.over(with_fence((fence.key, fence.create_revision)))


def _host(config: GatewayConfig) -> str:
    if config.advertise:
        return config.advertise
    if config.hub.host not in ("", "0.0.0.0", "::"):
        return config.hub.host
    raise GatewayError(
        "a replica on a shared store registers its hub for boards to fail over to: "
        "give --advertise HOST (or bind --hub to a specific address)"
    )


class Replica:
    """Built before the servers start (the API needs ``routed``), started once
    the hub and API ports are known."""

    def __init__(self, config: GatewayConfig, pki: GatewayPki, hub: Hub, store: Store) -> None:
        self.config = config
        self.store = store
        self.host = _host(config)
        self.replica_id = load_or_create_replica_id(config.data_dir, config.replica_id)
        creds = load_or_create_replica_credentials(
            pki, config.data_dir, self.replica_id, [*config.sans, self.host]
        )
        self.routed = RoutedStreams(
            hub, self.owner_of, peer_client_ssl(pki, creds), self.replica_id
        )
        self.peer = PeerServer(hub, peer_server_ssl(pki, creds), config.peer)
        self._hub = hub
        self.coord: EtcdCoordinator | None = None
        self._client: EtcdClient | None = None

    def hub_urls(self) -> Sequence[str]:
        """Every live replica's hub (this one's first): sent to boards."""
        return self.coord.hub_urls() if self.coord is not None else ()

    def owner_of(self, node: str) -> str | None:
        """The peer address of the replica holding ``node``'s session."""
        if self.coord is None:
            return None
        info = self.coord.session_owner(node)
        return info.peer_url or None if info is not None else None

    async def run(
        self,
        hub_port: int,
        api_url: str,
        leader_work: Sequence[LeaderWork],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the peer port, register and coordinate; run ``leader_work``
        while this replica leads. Reports the peer port once registered."""
        from .etcd._client import EtcdClient
        from .etcd._client import parse_endpoints as parse
        from .etcd._coord import EtcdCoordinator

        endpoints, tls = etcd_parts(self.config.store)
        # Its own client with short deadlines: a hung member must not outlast the lease.
        self._client = EtcdClient(parse(endpoints), tls=tls, timeout=max(1.0, LEASE_TTL / 3))
        try:
            async with trio.open_nursery() as nursery:
                peer_port: int = await nursery.start(self.peer.run)
                self.coord = EtcdCoordinator(
                    self._client,
                    replica_id=self.replica_id,
                    hub_url=f"wss://{self.host}:{hub_port}/",
                    peer_url=advertised_peer_address(self.config, peer_port),
                    api_url=api_url,
                    local_sessions=self._hub.connected_nodes,
                    ttl=LEASE_TTL,
                )
                await nursery.start(self.coord.run)
                for work in leader_work:
                    nursery.start_soon(self.coord.leading, self._fenced(work))
                log.info(
                    "replica %s registered (peer %s); %s",
                    self.replica_id,
                    advertised_peer_address(self.config, peer_port),
                    "leading" if self.coord.is_leader else "following",
                )
                task_status.started(peer_port)
        finally:
            self._client.close()

    def _fenced(self, work: LeaderWork) -> Callable[[Fence], Awaitable[None]]:
        async def run(fence: Fence) -> None:
            await work(fenced(self.store, fence))

        return run

    def statistics(self) -> dict[str, dict[str, int]]:
        coord = self.coord.statistics() if self.coord is not None else {"leader": 0}
        return {
            "coord": coord,
            "peer": self.peer.statistics(),
            "routing": self.routed.statistics(),
        }
