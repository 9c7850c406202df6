"""``$hw/events/upload/<what>``: events from mappers and apps for the cloud.

What a mapper or an app publishes there becomes a node ``event`` report (and at
the gateway a Kubernetes Event about this node). The payload is JSON, or else
UTF-8 text kept as a string. What the gateway could not use (too big, not
UTF-8, nested too deep, strings that are not valid Unicode: the limits of
``edgeproto.events``, shared with the gateway) is refused here and counted, so
no local process can put a report in the outbox that is never acknowledged.
Accepted events wait here until the twin's next batch writes them, each as its
own outbox row (events never coalesce), in the same transaction as the twin's
rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import cbor2

import edgeproto
from edgeproto import events, topics

log = logging.getLogger(__name__)

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_TOPIC", "Uploads"]

MAX_UPLOAD_BYTES = events.MAX_EVENT_PAYLOAD
MAX_UPLOAD_TOPIC = events.MAX_EVENT_TOPIC

Upload = tuple[str, Any, int]  # (what, payload, ms)
OutboxItem = tuple[str, str, bytes, bool]  # (key, op, body, coalesce)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Uploads:
    """Receives ``$hw/events/upload/#`` and hands accepted events to a writer
    (:meth:`take`, then :meth:`outbox` inside its transaction, or :meth:`restore`
    when the transaction failed)."""

    def __init__(self, node: str, counters: Counter[str], wake: Callable[[], None]) -> None:
        self._node_key = edgeproto.make_key("nodes", "", node)
        self._counters = counters
        self._wake = wake
        self._queued: list[Upload] = []
        self._seq = 0  # makes each upload's outbox key unique

    def __bool__(self) -> bool:
        return bool(self._queued)

    def routes(self) -> dict[str, Callable[[str, bytes], None]]:
        return {topics.UPLOAD_PREFIX + "#": self.on_upload}

    def take(self) -> list[Upload]:
        taken, self._queued = self._queued, []
        return taken

    def restore(self, taken: list[Upload]) -> None:
        self._queued[:0] = taken

    def outbox(self, taken: list[Upload]) -> list[OutboxItem]:
        items: list[OutboxItem] = []
        for what, payload, ms in taken:  # each one its own row: events never coalesce
            self._seq += 1
            body = cbor2.dumps(events.event_body(what, payload, ms))
            items.append((f"{self._node_key}#up{ms}.{self._seq}", "event", body, False))
        return items

    def on_upload(self, topic: str, payload: bytes) -> None:
        """``$hw/events/upload/<what>``: an event from a mapper or an app, sent to
        the cloud (where it becomes a Kubernetes Event on this node). The payload
        is JSON, or else UTF-8 text kept as a string."""
        what, ms = topic[len(topics.UPLOAD_PREFIX) :], _now_ms()
        try:
            body = events.parse_upload(what, payload)
            events.event_body(what, body, ms)  # all that the gateway checks
        except events.EventError as exc:
            self._counters["uploads_rejected"] += 1
            # Once at WARNING, then DEBUG: a flood must not flood the log too.
            first = self._counters["uploads_rejected"] == 1
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "upload on %s rejected: %s",
                topic,
                exc,
            )
            return
        self._queued.append((what, body, ms))
        self._counters["uploads"] += 1
        self._wake()
