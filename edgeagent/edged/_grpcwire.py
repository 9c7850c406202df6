"""A unary gRPC call as HTTP/2 carries it, without the HTTP/2: the request's
header fields and its one length-prefixed message, and the answer read back from
its header blocks (response headers, then trailers, or one trailers-only block)
and DATA into ``(grpc status, message, response bytes)``.

Sans-io (no trio, no sockets, no h2): ``_h2`` feeds it what the h2 library
decodes off containerd's socket. Status and message follow gRPC's
PROTOCOL-HTTP2.md: ``grpc-status`` as a decimal code, ``grpc-message``
percent-encoded; a reply without ``grpc-status`` is UNKNOWN, a compressed or
truncated message INTERNAL, a reset stream UNAVAILABLE (refused, or the server
asking for calm) or CANCELLED.
"""

from __future__ import annotations

import struct
import urllib.parse
from collections.abc import Iterable

__all__ = ["CODES", "MAX_MESSAGE", "Reply", "ReplyTooLarge", "frame", "request_headers"]

# gRPC status codes by number (their names are what CriError carries).
CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
UNKNOWN, INTERNAL, UNAVAILABLE, CANCELLED = 2, 13, 14, 1
MAX_MESSAGE = 16 << 20  # what edged accepts in one answer, like grpcio's max_receive_message_length
_REFUSED_STREAM, _ENHANCE_YOUR_CALM = 7, 11


def code_name(status: int) -> str:
    return CODES[status] if 0 <= status < len(CODES) else "UNKNOWN"


def request_headers(path: str, seconds: float) -> list[tuple[bytes, bytes]]:
    """The header fields of a unary call to ``path`` with a deadline of ``seconds``."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"%dm" % max(1, int(seconds * 1000))),
    ]


def frame(body: bytes) -> bytes:
    """One uncompressed gRPC message: a zero flag byte, a 4-byte length, the bytes."""
    return b"\x00" + struct.pack(">I", len(body)) + body


class ReplyTooLarge(Exception):
    """The answer grew past ``MAX_MESSAGE``."""


class Reply:
    """One call's answer as it arrives; ``result()`` once the stream has ended."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.body = bytearray()
        self.status: int | None = None
        self.message = ""
        self.http_status = ""
        self.reset: int | None = None  # the HTTP/2 error code of a RST_STREAM

    def headers(self, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """A header block: the response headers, the trailers, or both in one."""
        for name, value in fields:
            if name == b":status":
                self.http_status = value.decode("ascii", "replace")
            elif name == b"grpc-status":
                self.status = int(value) if value.isdigit() else UNKNOWN
            elif name == b"grpc-message":
                self.message = urllib.parse.unquote(value.decode("utf-8", "replace"))

    def data(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.max_message + 5:
            raise ReplyTooLarge(f"response larger than {self.max_message} bytes")

    def stream_reset(self, error_code: int) -> None:
        self.reset = error_code

    def result(self) -> tuple[int, str, bytes]:
        """(grpc status, message, the response message's bytes)."""
        if self.reset is not None and self.status is None:  # a reset after trailers changes nothing
            status = (
                UNAVAILABLE if self.reset in (_REFUSED_STREAM, _ENHANCE_YOUR_CALM) else CANCELLED
            )
            return status, f"stream reset (HTTP/2 error {self.reset})", b""
        if self.status is None:
            return UNKNOWN, f"no grpc-status (HTTP status {self.http_status or '?'})", b""
        if self.status != 0:
            return self.status, self.message, b""
        data = self.body
        if len(data) < 5 or data[0] != 0:
            return INTERNAL, "malformed or compressed response message", b""
        length = int.from_bytes(data[1:5], "big")
        if len(data) < 5 + length:
            return INTERNAL, f"response message cut short ({len(data) - 5} of {length} bytes)", b""
        return 0, "", bytes(data[5 : 5 + length])
