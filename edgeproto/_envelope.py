"""The wire envelope: one CBOR map per WebSocket binary message.

``{v, id, parent?, kind, rev?, res?, op?, body}``. Sans-io: bytes in, ``Message``
out and back. Every malformed input raises a ``ProtocolError`` subclass and
nothing else.
"""

from __future__ import annotations

import enum
import io
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
    """Decode and validate one message. A ``ProtocolError`` about a message whose
    envelope still gives its version, id and kind carries them
    (``message_id``, ``message_kind``) so that the sender can be told which
    message was refused."""
    if len(data) > max_size:
        raise FrameTooLarge(f"message is {len(data)} bytes, limit {max_size}")
    try:
        wire = cbor2.loads(data, tag_hook=_reject_tag)
    except ProtocolError as exc:  # a tag (our tag_hook)
        _name_message(exc, _leading_entries(data))
        raise
    except Exception as exc:  # cbor2 raises CBORDecodeError, ValueError, RecursionError...
        err = ProtocolError(f"not a CBOR message: {exc}")
        _name_message(err, _leading_entries(data))
        raise err from exc
    try:
        return _message(wire)
    except ProtocolError as exc:
        if isinstance(wire, Mapping):
            _name_message(exc, wire)
        raise


def _name_message(exc: ProtocolError, wire: Mapping[Any, Any]) -> None:
    if wire.get("v") != VERSION:
        return  # another protocol version: its fields may mean something else
    mid, kind = wire.get("id"), wire.get("kind")
    if type(mid) is int and 0 <= mid < 1 << 63 and isinstance(kind, str) and kind in _KINDS:
        exc.message_id, exc.message_kind = mid, kind


def _leading_entries(data: bytes) -> dict[Any, Any]:
    """The entries of a CBOR map that decode, up to the first that does not:
    ``encode_message`` writes ``v``, ``id`` and ``kind`` before the body, so a
    message whose body cannot be decoded still names itself. Only the map's
    header is read here; every entry is decoded by cbor2."""
    if not data or data[0] >> 5 != 5:
        return {}
    info = data[0] & 0x1F
    if info < 24:
        count, start = info, 1
    elif info in _LENGTH_BYTES:
        size = _LENGTH_BYTES[info]
        count, start = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
    elif info == 31:  # indefinite length: entries until a "break"
        count, start = 1 << 64, 1
    else:
        return {}
    decoder = cbor2.CBORDecoder(io.BytesIO(data[start:]), tag_hook=_reject_tag)
    out: dict[Any, Any] = {}
    try:
        for _ in range(min(count, 8)):  # v, id and kind come first; a few more at most
            key = decoder.decode()
            if not isinstance(key, str):
                break
            out[key] = decoder.decode()
    except Exception:  # the entry that made the whole message undecodable
        pass
    return out


_LENGTH_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def _message(wire: Any) -> Message:
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
