"""Edge events: what a mapper or an app publishes on ``$hw/events/upload/<what>``
and the agent sends up as a node's ``event`` report (body ``{"topic",
"payload", "timestamp"}``), which the gateway keeps as a Kubernetes Event.

One definition of what such an event may be, for both sides: the agent refuses
(and counts) at the edge what the gateway could not use, so no local process
can put a report in the outbox that the cloud never acknowledges; the gateway
holds reports to the same limits. Sans-io: bytes and plain values only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ._errors import ProtocolError

__all__ = [
    "MAX_EVENT_DEPTH",
    "MAX_EVENT_INT_BITS",
    "MAX_EVENT_MS",
    "MAX_EVENT_PAYLOAD",
    "MAX_EVENT_TOPIC",
    "EventError",
    "check_event_body",
    "check_payload",
    "event_body",
    "parse_upload",
]

MAX_EVENT_PAYLOAD = 8192  # bytes of one upload: an event, not a file transfer
MAX_EVENT_TOPIC = 200  # characters of <what>
MAX_EVENT_DEPTH = 64  # nesting of arrays and objects (as the API's objects)
MAX_EVENT_INT_BITS = 13_000  # about 3,900 digits: JSON and the store still print it
MAX_EVENT_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last RFC 3339 time

_NOT_JSON = "payload is not JSON the cloud keeps: "


class EventError(ProtocolError):
    """An edge event the cloud cannot use; the message says why."""

    code = "bad-field"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_upload(what: str, payload: bytes) -> Any:
    """The payload of ``$hw/events/upload/<what>`` as it goes up: a JSON value,
    or else the UTF-8 text as a string (also for JSON with NaN, Infinity or
    numbers too large to be finite). :class:`EventError` for what the cloud
    refuses: a topic suffix that is empty or too long, a payload too big, not
    UTF-8, or JSON nested deeper than :data:`MAX_EVENT_DEPTH`."""
    if not what or len(what) > MAX_EVENT_TOPIC:
        raise EventError(f"the topic's suffix must be 1-{MAX_EVENT_TOPIC} characters")
    if len(payload) > MAX_EVENT_PAYLOAD:
        raise EventError(f"payload of {len(payload)} bytes is over {MAX_EVENT_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("payload is neither JSON nor UTF-8 text") from None
    try:
        value: Any = json.loads(text, parse_float=_finite, parse_constant=_reject_constant)
    except RecursionError:
        raise EventError(f"payload is JSON nested deeper than {MAX_EVENT_DEPTH}") from None
    except ValueError:
        return text
    check_payload(value)
    return value


def check_payload(value: Any) -> None:
    """:class:`EventError` unless ``value`` is JSON the cloud stores: null,
    booleans, integers of at most :data:`MAX_EVENT_INT_BITS` bits, finite
    floats, strings (valid Unicode, no lone surrogates), arrays and objects
    with string keys, nested at most :data:`MAX_EVENT_DEPTH` deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            if v.bit_length() > MAX_EVENT_INT_BITS:
                raise EventError(_NOT_JSON + f"it has an integer over {MAX_EVENT_INT_BITS} bits")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise EventError(_NOT_JSON + "it has a number that is not finite")
        elif isinstance(v, str):
            _check_text(v)
        elif isinstance(v, list | dict):
            if depth >= MAX_EVENT_DEPTH:
                raise EventError(
                    f"payload is not JSON the cloud keeps: nested deeper than {MAX_EVENT_DEPTH}"
                )
            if isinstance(v, dict):
                for k in v:
                    if not isinstance(k, str):
                        raise EventError(_NOT_JSON + "it has an object key that is not a string")
                    _check_text(k)
                stack.extend((c, depth + 1) for c in v.values())
            else:
                stack.extend((c, depth + 1) for c in v)
        else:
            raise EventError(_NOT_JSON + f"it has a {type(v).__name__}, not a JSON value")


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(_NOT_JSON + "it has a string that is not valid Unicode") from None


def event_body(what: str, payload: Any, ms: int) -> dict[str, Any]:
    """The body of a node's ``event`` report (checked as the gateway checks it)."""
    body = {"topic": what, "payload": payload, "timestamp": ms}
    check_event_body(body)
    return body


def check_event_body(body: Mapping[str, Any]) -> tuple[str, Any, int]:
    """``(topic, payload, timestamp ms)`` of an ``event`` report's body;
    :class:`EventError` for anything the cloud cannot keep as an Event."""
    topic, payload, ms = body.get("topic"), body.get("payload"), body.get("timestamp")
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_EVENT_TOPIC:
        raise EventError(f"an event report needs its topic (1-{MAX_EVENT_TOPIC} characters)")
    _check_text(topic)
    if type(ms) is not int or not 0 <= ms <= MAX_EVENT_MS:
        raise EventError("an event report needs a timestamp (ms, up to year 9999)")
    check_payload(payload)
    return topic, payload, ms
