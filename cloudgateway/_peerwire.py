"""The peer protocol's frames: one stream per TLS connection between replicas.

Every frame is a type byte, a 4-byte big-endian payload length and the payload:

- ``Q`` (client to server, first and only): the open request, a JSON object
  ``{"v": 1, "node": N, "key": K, "op": "logs"|"exec", "params": {...}}``,
  at most ``MAX_REQUEST`` bytes.
- ``O`` (server): the node's stream is open; output follows.
- ``D`` (server): one chunk of output: a byte for the fd (1 stdout, 2 stderr)
  and at most ``MAX_CHUNK`` bytes of data (possibly none: the node's
  "accepted").
- ``E`` (server, last): the stream's final word, JSON: ``{"exit_code": N}``,
  ``{"error": {"code", "reason", "message"}}`` or ``{}``. Sent instead of
  ``O`` when the stream cannot be opened; the server then closes.

The client closing the connection ends the stream (and the node's side of it).
Flow control is TCP's: the server reads the node's next chunk only once the
previous one is written, so a slow reader slows the node, never fills memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import trio

from ._errors import GatewayError
from ._streams import PodStream

__all__ = [
    "DATA",
    "END",
    "MAX_CHUNK",
    "MAX_REQUEST",
    "OPENED",
    "REQUEST",
    "FrameReader",
    "OpenRequest",
    "WireError",
    "data_frames",
    "encode_end",
    "frame",
    "parse_end",
    "parse_request",
]

REQUEST, OPENED, DATA, END = b"Q", b"O", b"D", b"E"
MAX_REQUEST = 64 * 1024
MAX_CHUNK = 64 * 1024
_MAX_END = 16 * 1024
_HEADER = struct.Struct(">cI")
_LIMITS = {REQUEST: MAX_REQUEST, OPENED: 0, DATA: MAX_CHUNK + 1, END: _MAX_END}
_OPS = ("logs", "exec")
_MAX_NAME = 253
_MAX_KEY = 1024


class WireError(GatewayError):
    """A frame the peer protocol does not allow; ``code``/``reason`` as HTTP's."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def data_frames(fd: int, data: bytes) -> list[bytes]:
    """``D`` frames for one chunk of output (split at ``MAX_CHUNK``)."""
    if not data:
        return [frame(DATA, bytes([fd]))]
    return [
        frame(DATA, bytes([fd]) + data[i : i + MAX_CHUNK]) for i in range(0, len(data), MAX_CHUNK)
    ]


class FrameReader:
    """Frames from a byte stream; never buffers more than one frame."""

    def __init__(self, stream: trio.abc.ReceiveStream, allowed: tuple[bytes, ...]) -> None:
        self._stream = stream
        self._allowed = allowed
        self._buf = bytearray()

    async def _fill(self, n: int, *, started: bool) -> bool:
        """At least ``n`` bytes buffered; False at the end of the stream before
        any byte of a frame (``started`` False), WireError in the middle of one."""
        while len(self._buf) < n:
            data = await self._stream.receive_some(min(65536, n - len(self._buf)))
            if not data:
                if not started and not self._buf:
                    return False
                raise WireError(400, "BadRequest", "the connection ended inside a frame")
            self._buf += data
        return True

    async def read(self) -> tuple[bytes, bytes] | None:
        """The next ``(type, payload)``, or None when the stream ends between frames."""
        if not await self._fill(_HEADER.size, started=False):
            return None
        kind, length = _HEADER.unpack_from(self._buf)
        if kind not in self._allowed:
            raise WireError(400, "BadRequest", f"unexpected frame type {kind!r}")
        limit = _LIMITS[kind]
        if length > limit:
            raise WireError(
                413,
                "RequestEntityTooLarge",
                f"a {kind.decode()} frame of {length} bytes (at most {limit})",
            )
        await self._fill(_HEADER.size + length, started=True)
        payload = bytes(self._buf[_HEADER.size : _HEADER.size + length])
        del self._buf[: _HEADER.size + length]
        return kind, payload


@dataclass(frozen=True, slots=True)
class OpenRequest:
    node: str
    key: str
    op: str
    params: dict[str, Any]

    def encode(self) -> bytes:
        doc = {"v": 1, "node": self.node, "key": self.key, "op": self.op, "params": self.params}
        return frame(REQUEST, json.dumps(doc, separators=(",", ":")).encode())


def _bad(message: str) -> WireError:
    return WireError(400, "BadRequest", f"peer open request: {message}")


def parse_request(payload: bytes) -> OpenRequest:
    """A ``Q`` frame's payload, checked: WireError (400) says what is wrong."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("must be a JSON object")
    unknown = sorted(set(doc) - {"v", "node", "key", "op", "params"})
    if unknown:
        raise _bad(f"unknown fields {unknown}")
    if doc.get("v") != 1:
        raise _bad(f"version {doc.get('v')!r} is not spoken here (1 is)")
    node, key, op, params = doc.get("node"), doc.get("key"), doc.get("op"), doc.get("params")
    if not isinstance(node, str) or not 0 < len(node) <= _MAX_NAME:
        raise _bad(f"node must be a name of 1-{_MAX_NAME} characters")
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
        raise _bad(f"key must be a string of 1-{_MAX_KEY} characters")
    if op not in _OPS:
        raise _bad(f"op must be one of {list(_OPS)}, not {op!r}")
    if not isinstance(params, dict):
        raise _bad("params must be a JSON object")
    return OpenRequest(node, key, op, params)


def encode_end(stream: PodStream) -> bytes:
    """The ``E`` frame for a stream that ended: its exit code or its error."""
    err = stream.error()
    result: dict[str, Any] = {}
    if err is not None:
        result["error"] = {"code": err.code, "reason": err.reason, "message": str(err)[:4096]}
    else:
        code = stream.result.get("exit_code")
        if isinstance(code, int) and not isinstance(code, bool):
            result["exit_code"] = code
    return frame(END, json.dumps(result).encode())


def parse_end(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(502, "BadGateway", f"the replica's end frame is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(502, "BadGateway", "the replica's end frame is not a JSON object")
    return doc
