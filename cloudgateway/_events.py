"""Edge events as Kubernetes Events, and their time to live.

What a mapper or an app publishes on ``$hw/events/upload/<what>`` on a board
reaches the gateway as a node's ``event`` report and is kept as a core/v1 Event
about that Node (``edgectl get events``, ``kubectl get events``), for
``event_ttl`` seconds like Kubernetes' own (one hour by default)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import trio

import edgeproto
from edgeproto import ProtocolError, events

from ._store import Conflict, NotFound, Record, Store

log = logging.getLogger(__name__)

__all__ = ["EVENT_NAMESPACE", "edge_event", "prune_events"]

EVENT_NAMESPACE = "default"
SOURCE = "edgeflock-eventbus"
MAX_MESSAGE = 1024  # characters of the payload kept in .message
TOPIC_ANNOTATION = "edgeflock.io/topic"


def edge_event(node: str, seq: int | None, body: Any) -> dict[str, Any]:
    """The Event for a node's ``event`` report (``ProtocolError`` if malformed).
    Its name comes from the report's timestamp and outbox sequence number, so a
    resent report names the same Event."""
    # What an edge event may be is defined once, in edgeproto, for the agent
    # (which refuses the rest before it enters the outbox) and for us.
    topic, payload, ms = events.check_event_body(body)
    if type(seq) is not int or seq < 0:
        raise ProtocolError("an event report needs its sequence number as id", code="bad-field")
    if isinstance(payload, str):
        message = payload
    else:
        try:
            message = json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"event payload is not JSON: {exc}", code="bad-field") from None
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    at = edgeproto.rfc3339(ms / 1000)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{node}.{ms:x}.{seq}",
            "namespace": EVENT_NAMESPACE,
            "annotations": {TOPIC_ANNOTATION: topic},
        },
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node},
        "reason": "EdgeEvent",
        "message": message,
        "type": "Normal",
        "source": {"component": SOURCE, "host": node},
        "reportingComponent": SOURCE,
        "reportingInstance": node,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


async def prune_events(store: Store, ttl: float, now: float | None = None) -> int:
    """Delete Events created more than ``ttl`` seconds before ``now``; how many."""
    now = time.time() if now is None else now
    records, _ = await store.list("events/")
    pruned = 0

    async def delete(rec: Record) -> None:
        nonlocal pruned
        with contextlib.suppress(NotFound, Conflict):  # gone, or just rewritten
            await store.delete(rec.key, expect_rev=rec.mod_rev)
            pruned += 1

    async with trio.open_nursery() as nursery:  # together: the store commits them in batches
        for rec in records:
            created = edgeproto.parse_rfc3339(
                (rec.value.get("metadata") or {}).get("creationTimestamp")
            )
            if created is not None and now - created > ttl:
                nursery.start_soon(delete, rec)
    if pruned:
        log.info("pruned %d events older than %.0f s", pruned, ttl)
    return pruned
