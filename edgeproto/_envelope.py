"""The wire envelope: one CBOR map per WebSocket binary message.

``{v, id, parent?, kind, rev?, res?, op?, body}``. Sans-io: bytes in, ``Message``
out and back. Every malformed input raises a ``ProtocolError`` subclass and
nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ._errors import FrameTooLarge, ProtocolError, UnknownKind

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "STREAM_CHUNK",
    "STREAM_WINDOW",
    "VERSION",
    "Kind",
    "Message",
    "decode_message",
    "encode_message",
]

VERSION = 1
DEFAULT_MAX_MESSAGE = 1 << 20  # 1 MiB


class Kind(enum.StrEnum):
    HELLO = "hello"
    SNAPSHOT = "snapshot"
    CHANGE = "change"
    ACK = "ack"
    REPORT = "report"
    PING = "ping"
    PONG = "pong"
    REQUEST = "request"
    RESPONSE = "response"
    ERROR = "error"
    # Streams the cloud opens on a node (pod logs, exec): ``stream-open`` (id =
    # stream id, res = pod key, op = "logs" | "exec") from the gateway; then
    # ``stream-data`` (parent = stream id, body {fd, data}) from the node, each
    # returned by a ``stream-ack`` (flow control: a bounded window of unacked
    # chunks); ``stream-end`` (parent = stream id) from either side ends it.
    STREAM_OPEN = "stream-open"
    STREAM_DATA = "stream-data"
    STREAM_ACK = "stream-ack"
    STREAM_END = "stream-end"


STREAM_WINDOW = 16  # stream-data chunks a node may send before it waits for acks
STREAM_CHUNK = 32 * 1024  # bytes of output at most in one stream-data chunk


_KINDS = {k.value: k for k in Kind}


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    id: int = 0
    body: Mapping[str, Any] = field(default_factory=dict)
    parent: int | None = None
    rev: int | None = None
    res: str | None = None
    op: str | None = None


def encode_message(msg: Message, *, max_size: int = DEFAULT_MAX_MESSAGE) -> bytes:
    """Encode one message; ``FrameTooLarge`` if the result exceeds ``max_size``."""
    wire: dict[str, Any] = {"v": VERSION, "id": msg.id, "kind": msg.kind.value, "body": msg.body}
    if msg.parent is not None:
        wire["parent"] = msg.parent
    if msg.rev is not None:
        wire["rev"] = msg.rev
    if msg.res is not None:
        wire["res"] = msg.res
    if msg.op is not None:
        wire["op"] = msg.op
    try:
        data = cbor2.dumps(wire)
    except Exception as exc:  # cbor2 raises several types for unencodable values
        raise ProtocolError(
            f"cannot encode {msg.kind.value} message: {exc}", code="unencodable"
        ) from exc
    if len(data) > max_size:
        raise FrameTooLarge(f"{msg.kind.value} message is {len(data)} bytes, limit {max_size}")
    return data


def _reject_tag(_decoder: Any, tag: Any) -> Any:
    raise ProtocolError(f"unsupported CBOR tag {tag.tag}")


def decode_message(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE) -> Message:
    """Decode and validate one message."""
    if len(data) > max_size:
        raise FrameTooLarge(f"message is {len(data)} bytes, limit {max_size}")
    try:
        wire = cbor2.loads(data, tag_hook=_reject_tag)
    except ProtocolError:
        raise
    except Exception as exc:  # cbor2 raises CBORDecodeError, ValueError, RecursionError...
        raise ProtocolError(f"not a CBOR message: {exc}") from exc
    if not isinstance(wire, Mapping):
        raise ProtocolError(f"message is a {type(wire).__name__}, not a map")
    v = wire.get("v")
    if v != VERSION:
        raise ProtocolError(f"unsupported protocol version {v!r}", code="version")
    kind_s = wire.get("kind")
    if not isinstance(kind_s, str):
        raise ProtocolError("message has no kind", code="bad-field")
    kind = _KINDS.get(kind_s)
    if kind is None:
        raise UnknownKind(f"unknown message kind {kind_s[:64]!r}")
    body = wire.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ProtocolError("message body is not a map", code="bad-field")
    return Message(
        kind=kind,
        id=_int(wire, "id", default=0),
        body=body,
        parent=_opt_int(wire, "parent"),
        rev=_opt_int(wire, "rev"),
        res=_opt_str(wire, "res"),
        op=_opt_str(wire, "op"),
    )


def _int(wire: Mapping[str, Any], name: str, *, default: int) -> int:
    value = wire.get(name, default)
    if type(value) is not int or value < 0 or value >= 1 << 63:
        raise ProtocolError(f"field {name!r} must be a non-negative int64", code="bad-field")
    return value


def _opt_int(wire: Mapping[str, Any], name: str) -> int | None:
    if wire.get(name) is None:
        return None
    return _int(wire, name, default=0)


def _opt_str(wire: Mapping[str, Any], name: str) -> str | None:
    value = wire.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"field {name!r} must be a string", code="bad-field")
    return value
