"""Length-prefixed framing of envelope messages over byte streams.

WebSocket messages are framed by WebSocket itself; this framing is for plain
streams (log/exec tunnels, files, tests). Each frame is a 4-byte big-endian
length followed by one CBOR envelope.
"""

from __future__ import annotations

from ._envelope import DEFAULT_MAX_MESSAGE, Message, decode_message, encode_message
from ._errors import FrameTooLarge

__all__ = ["FrameDecoder", "frame_message"]

_HEADER = 4


def frame_message(msg: Message, *, max_size: int = DEFAULT_MAX_MESSAGE) -> bytes:
    payload = encode_message(msg, max_size=max_size)
    return len(payload).to_bytes(_HEADER, "big") + payload


class FrameDecoder:
    """Incremental decoder: feed bytes with ``receive_data``, pull messages with
    ``next_message`` until it returns None (more input needed).

    A header announcing more than ``max_size`` bytes raises ``FrameTooLarge`` at
    once, before the body is buffered, and the decoder is unusable after it; a
    malformed payload raises ``ProtocolError`` and decoding goes on after it.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._failed = False

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> Message | None:
        if self._failed:
            raise FrameTooLarge("decoder failed earlier; the stream must be closed")
        if len(self._buf) < _HEADER:
            return None
        size = int.from_bytes(self._buf[:_HEADER], "big")
        if size > self._max:
            self._failed = True
            raise FrameTooLarge(f"frame announces {size} bytes, limit {self._max}")
        if len(self._buf) < _HEADER + size:
            return None
        payload = bytes(self._buf[_HEADER : _HEADER + size])
        del self._buf[: _HEADER + size]
        # A malformed payload inside an intact frame is reported and skipped:
        # the length prefix keeps the stream in step.
        return decode_message(payload, max_size=self._max)
