"""MQTT topic names of the edge bus, as KubeEdge's DeviceTwin uses them.

Facts from kubeedge/kubeedge ``edge/pkg/devicetwin`` (``dtcommon``,
``process.go``) and ``edge/pkg/eventbus/mqtt``, so existing device apps and
mappers work unchanged.

A device is addressed in one of two forms; both are served:

- current (KubeEdge 1.17+): ``$hw/events/device/{namespace}/{name}/twin/update``;
  the device id is ``namespace/name`` (KubeEdge's id since 1.16), which is also
  the ``id`` of membership entries;
- legacy (KubeEdge ≤ 1.15): ``$hw/events/device/{name}/twin/update``; the id is
  the bare name, which the twin resolves to the only device of that name on the
  node (and refuses when two namespaces use it).

:func:`device_topic` takes either id, so ``device_topic("default/t", TWIN_GET)``
builds the current form and ``device_topic("t", TWIN_GET)`` the legacy one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

__all__ = [
    "DEVICE_PREFIX",
    "DEVICE_SUFFIXES",
    "NODE_PREFIX",
    "SUBSCRIPTIONS",
    "UNADDRESSED_UPDATE_RESULT",
    "DeviceTopic",
    "device_id",
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

# Every device suffix, longest first: a topic is split at the suffix it ends with.
DEVICE_SUFFIXES: tuple[str, ...] = tuple(
    sorted(
        (
            TWIN_UPDATE,
            TWIN_UPDATE_RESULT,
            TWIN_UPDATE_DELTA,
            TWIN_UPDATE_DOCUMENT,
            TWIN_CLOUD_UPDATED,
            TWIN_GET,
            TWIN_GET_RESULT,
            STATE_UPDATE,
            STATE_UPDATE_RESULT,
            DEVICE_UPDATED,
        ),
        key=len,
        reverse=True,
    )
)

# edgecore answers a twin/update it cannot parse here, with an empty device id
# (``dealUpdateResult(context, "", "", 400, ...)`` in ``dtmanager/twin.go``).
UNADDRESSED_UPDATE_RESULT = DEVICE_PREFIX + TWIN_UPDATE_RESULT

# Suffixes after "$hw/events/node/{node}"
MEMBERSHIP_GET = "/membership/get"
MEMBERSHIP_GET_RESULT = "/membership/get/result"
MEMBERSHIP_UPDATED = "/membership/updated"
MEMBERSHIP_DETAIL = "/membership/detail"
MEMBERSHIP_DETAIL_RESULT = "/membership/detail/result"

# Device requests the twin serves, in both forms.
_REQUESTS = (STATE_UPDATE, TWIN_UPDATE, TWIN_GET, TWIN_CLOUD_UPDATED)
CURRENT = DEVICE_PREFIX + "+/+"  # namespace/name
LEGACY = DEVICE_PREFIX + "+"  # name

# What the agent's EventBus subscribes to on the local broker. A topic matches
# at most one of these (the two forms differ in their number of levels).
SUBSCRIPTIONS: tuple[str, ...] = (
    UPLOAD_PREFIX + "#",
    *(CURRENT + s for s in _REQUESTS),
    *(LEGACY + s for s in _REQUESTS),
    NODE_PREFIX + "+" + MEMBERSHIP_GET,
    NODE_PREFIX + "+" + MEMBERSHIP_DETAIL,
)


class DeviceTopic(NamedTuple):
    """A device topic split: ``device`` is the id as the topic writes it
    (``namespace/name`` or, in the legacy form, ``name``)."""

    device: str
    suffix: str

    @property
    def namespace(self) -> str | None:
        """The namespace, or None in the legacy form."""
        ns, sep, _ = self.device.partition("/")
        return ns if sep else None

    @property
    def name(self) -> str:
        return self.device.rpartition("/")[2]


def device_id(namespace: str, name: str) -> str:
    """KubeEdge's device id since 1.16: ``namespace/name``."""
    return f"{namespace}/{name}"


def device_topic(device: str, suffix: str) -> str:
    """``$hw/events/device/{device}{suffix}``; ``device`` is ``namespace/name``
    (current form) or ``name`` (legacy form)."""
    return f"{DEVICE_PREFIX}{device}{suffix}"


def membership_topic(node: str, suffix: str) -> str:
    """``$hw/events/node/{node}{suffix}``."""
    return f"{NODE_PREFIX}{node}{suffix}"


@functools.lru_cache(maxsize=4096)  # a board's topics repeat with every message
def parse_device_topic(topic: str) -> DeviceTopic | None:
    """``$hw/events/device/NS/D/twin/update`` → ``("NS/D", "/twin/update")``,
    ``$hw/events/device/D/twin/update`` → ``("D", "/twin/update")``; None for a
    topic that is neither (unknown suffix, empty or extra levels)."""
    if not topic.startswith(DEVICE_PREFIX):
        return None
    rest = topic[len(DEVICE_PREFIX) :]
    for suffix in DEVICE_SUFFIXES:
        if rest.endswith(suffix):
            ident = rest[: -len(suffix)]
            parts = ident.split("/")
            if len(parts) > 2 or not all(parts):
                return None
            return DeviceTopic(ident, suffix)
    return None


def parse_node_topic(topic: str) -> tuple[str, str] | None:
    """``$hw/events/node/N/membership/get`` → ``("N", "/membership/get")``; else None."""
    if not topic.startswith(NODE_PREFIX):
        return None
    ident, sep, tail = topic[len(NODE_PREFIX) :].partition("/")
    if not ident or not sep:
        return None
    return ident, "/" + tail
