"""Revoked nodes, kept in the store so that every gateway sharing it refuses them.

Deleting a Node (or ``edgectl revoke node X``) writes ``noderevocations//X``
with the time of the revocation; a certificate for X issued at or before that
time is refused at the hub, and a live session of X is closed. A re-join with
a fresh token gets a certificate issued later, which is accepted again. The
record is not an API resource; it is never sent to nodes (it belongs to none).
"""

from __future__ import annotations

import time
from typing import Any

import edgeproto

from ._store import AlreadyExists, NotFound, Record, Store

__all__ = ["REVOCATIONS", "revocation_key", "revoke_node", "revoked_at", "revoked_node"]

REVOCATIONS = "noderevocations"


def revocation_key(node: str) -> str:
    return edgeproto.make_key(REVOCATIONS, "", node)


def revoked_node(key: str) -> str | None:
    """The node a store key revokes, if it is a revocation record's."""
    resource, _, name = key.partition("//")
    return name if resource == REVOCATIONS and name else None


def _revoked_at(value: dict[str, Any]) -> float:
    at = value.get("revokedAt")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0


async def revoke_node(store: Store, node: str, *, now: float | None = None) -> float:
    """Lock out every certificate of ``node`` issued until now; returns the time."""
    at = time.time() if now is None else now
    key = revocation_key(node)
    value = {"kind": "NodeRevocation", "metadata": {"name": node}, "revokedAt": at}
    try:
        await store.create(key, value)
    except AlreadyExists:

        def later(rec: Record) -> dict[str, Any]:
            return {**rec.value, "revokedAt": max(at, _revoked_at(rec.value))}

        await store.modify(key, later)
    return at


async def revoked_at(store: Store, node: str) -> float | None:
    """When ``node`` was last revoked, or None if never."""
    try:
        rec = await store.get(revocation_key(node))
    except NotFound:
        return None
    return _revoked_at(rec.value)
