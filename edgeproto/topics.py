"""MQTT topic names of the edge bus, as KubeEdge's DeviceTwin uses them.

Facts from kubeedge/kubeedge ``edge/pkg/devicetwin/dtcommon`` and the KubeEdge
"message topics" documentation, so existing device apps and mappers work
unchanged. A device's topic id is its name (the Device object's
``metadata.name``); device names are unique per node in edgeflock.
"""

from __future__ import annotations

__all__ = [
    "DEVICE_PREFIX",
    "NODE_PREFIX",
    "SUBSCRIPTIONS",
    "device_topic",
    "membership_topic",
    "parse_device_topic",
    "parse_node_topic",
]

DEVICE_PREFIX = "$hw/events/device/"
NODE_PREFIX = "$hw/events/node/"
UPLOAD_PREFIX = "$hw/events/upload/"

# Suffixes after "$hw/events/device/{id}"
TWIN_UPDATE = "/twin/update"
TWIN_UPDATE_RESULT = "/twin/update/result"
TWIN_UPDATE_DELTA = "/twin/update/delta"
TWIN_UPDATE_DOCUMENT = "/twin/update/document"
TWIN_CLOUD_UPDATED = "/twin/cloud_updated"
TWIN_GET = "/twin/get"
TWIN_GET_RESULT = "/twin/get/result"
STATE_UPDATE = "/state/update"
STATE_UPDATE_RESULT = "/state/update/result"
DEVICE_UPDATED = "/updated"

# Suffixes after "$hw/events/node/{node}"
MEMBERSHIP_GET = "/membership/get"
MEMBERSHIP_GET_RESULT = "/membership/get/result"
MEMBERSHIP_UPDATED = "/membership/updated"
MEMBERSHIP_DETAIL = "/membership/detail"
MEMBERSHIP_DETAIL_RESULT = "/membership/detail/result"

# What the agent's EventBus subscribes to on the local broker.
SUBSCRIPTIONS: tuple[str, ...] = (
    UPLOAD_PREFIX + "#",
    DEVICE_PREFIX + "+" + STATE_UPDATE,
    DEVICE_PREFIX + "+" + TWIN_UPDATE,
    DEVICE_PREFIX + "+" + TWIN_GET,
    DEVICE_PREFIX + "+" + TWIN_CLOUD_UPDATED,
    NODE_PREFIX + "+" + MEMBERSHIP_GET,
    NODE_PREFIX + "+" + MEMBERSHIP_DETAIL,
)


def device_topic(device: str, suffix: str) -> str:
    """``$hw/events/device/{device}{suffix}``."""
    return f"{DEVICE_PREFIX}{device}{suffix}"


def membership_topic(node: str, suffix: str) -> str:
    """``$hw/events/node/{node}{suffix}``."""
    return f"{NODE_PREFIX}{node}{suffix}"


def _split(topic: str, prefix: str) -> tuple[str, str] | None:
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    ident, sep, tail = rest.partition("/")
    if not ident or not sep:
        return None
    return ident, "/" + tail


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """``$hw/events/device/D/twin/update`` → ``("D", "/twin/update")``; else None."""
    return _split(topic, DEVICE_PREFIX)


def parse_node_topic(topic: str) -> tuple[str, str] | None:
    """``$hw/events/node/N/membership/get`` → ``("N", "/membership/get")``; else None."""
    return _split(topic, NODE_PREFIX)
