"""The gateway's store on etcd v3 (``EtcdBackend``) and its client.

Importing this package loads nothing heavy: grpc and the protobuf messages are
imported only when an etcd store is opened, so a gateway on SQLite never loads
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._backend import NodeOf
    from ._backend import EtcdBackend
    from ._client import EtcdTls

__all__ = ["open_etcd_backend"]


def open_etcd_backend(
    url: str,
    *,
    tls: EtcdTls | None,
    node_of: NodeOf,
    root: str = "/edgeflock/",
    timeout: float = 5.0,
) -> EtcdBackend:
    """An ``EtcdBackend`` on the cluster ``etcd://HOST:PORT[,HOST:PORT...]``
    (``ValueError`` for a malformed url). It owns its client: ``close()``
    closes both. No call is made yet: an unreachable etcd shows as
    ``Unavailable`` on the first read or write."""
    from ._backend import EtcdBackend
    from ._client import EtcdClient, parse_endpoints

    client = EtcdClient(parse_endpoints(url), tls=tls, timeout=timeout)
    return EtcdBackend(client, node_of=node_of, root=root, owns_client=True)
