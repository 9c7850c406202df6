"""``$hw/events/upload/<what>``: events from mappers and apps for the cloud.

What a mapper or an app publishes there becomes a node ``event`` report (and at
the gateway a Kubernetes Event about this node). The payload is JSON, or else
UTF-8 text kept as a string. Accepted events wait here until the twin's next
batch writes them, each as its own outbox row (events never coalesce), in the
same transaction as the twin's rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import cbor2

import edgeproto
from edgeproto import topics

log = logging.getLogger(__name__)

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_TOPIC", "Uploads"]

MAX_UPLOAD_BYTES = 8192  # an event, not a file transfer
MAX_UPLOAD_TOPIC = 200

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
            body = cbor2.dumps({"topic": what, "payload": payload, "timestamp": ms})
            items.append((f"{self._node_key}#up{ms}.{self._seq}", "event", body, False))
        return items

    def on_upload(self, topic: str, payload: bytes) -> None:
        """``$hw/events/upload/<what>``: an event from a mapper or an app, sent to
        the cloud (where it becomes a Kubernetes Event on this node). The payload
        is JSON, or else UTF-8 text kept as a string."""
        what = topic[len(topics.UPLOAD_PREFIX) :]
        reason = ""
        if not what or len(what) > MAX_UPLOAD_TOPIC:
            reason = f"the topic's suffix must be 1-{MAX_UPLOAD_TOPIC} characters"
        elif len(payload) > MAX_UPLOAD_BYTES:
            reason = f"payload of {len(payload)} bytes is over {MAX_UPLOAD_BYTES}"
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                reason = "payload is neither JSON nor UTF-8 text"
        if reason:
            self._counters["uploads_rejected"] += 1
            log.warning("twin: upload on %s rejected: %s", topic, reason)
            return
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        self._queued.append((what, body, _now_ms()))
        self._counters["uploads"] += 1
        self._wake()
