"""KubeEdge DeviceTwin message bodies (mapper side). Sans-io: dicts and bytes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from edgeproto import topics

__all__ = [
    "delta_values",
    "device_topics",
    "membership_get",
    "now_ms",
    "state_update",
    "twin_update",
]


def now_ms() -> int:
    return int(time.time() * 1000)


def _envelope(**body: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "timestamp": now_ms(), **body}


def twin_update(values: Mapping[str, tuple[str, str]], *, timestamp: int | None = None) -> bytes:
    """``{prop: (value_string, type)}`` → a ``twin/update`` body with actual values."""
    ts = now_ms() if timestamp is None else timestamp
    twin = {
        name: {
            "actual": {"value": value, "metadata": {"timestamp": ts}},
            "metadata": {"type": type_ or "string"},
        }
        for name, (value, type_) in values.items()
    }
    return json.dumps(_envelope(twin=twin), separators=(",", ":")).encode()


def state_update(state: str) -> bytes:
    return json.dumps(_envelope(state=state), separators=(",", ":")).encode()


def membership_get() -> bytes:
    return json.dumps({"event_id": str(uuid.uuid4())}).encode()


def delta_values(payload: bytes) -> dict[str, str]:
    """The ``delta`` of a ``twin/update/delta`` body; ValueError if it is not one."""
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("delta body is not an object")
    delta = body.get("delta")
    if not isinstance(delta, dict):
        raise ValueError("delta body without a delta object")
    return {str(k): str(v) for k, v in delta.items()}


def device_topics(namespace: str, name: str) -> dict[str, str]:
    """The topics a mapper uses for a device, in KubeEdge 1.17+'s form
    (``$hw/events/device/{namespace}/{name}/...``), which the agent and edgecore
    1.17+ serve. (The agent also serves the ≤ 1.15 form, ``{name}`` alone, for
    KubeEdge's older mappers and apps; edgeflock's mappers have no need of it.)"""
    device = topics.device_id(namespace, name)
    return {
        "update": topics.device_topic(device, topics.TWIN_UPDATE),
        "state": topics.device_topic(device, topics.STATE_UPDATE),
        "delta": topics.device_topic(device, topics.TWIN_UPDATE_DELTA),
    }
