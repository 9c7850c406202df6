"""CRI container log files (``TIMESTAMP STREAM TAG content``), sans-io parsing."""

from __future__ import annotations

__all__ = ["LogDecoder"]


class LogDecoder:
    """Feed bytes of a CRI log file; get back what the container wrote.

    Lines tagged ``F`` (full) end with a newline; ``P`` (partial) lines continue on
    the next one. Incomplete trailing input is buffered (up to ``max_line``)."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max:
                    out += self._buf
                    self._buf.clear()
                return bytes(out)
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            out += decode_line(line)


def decode_line(line: bytes) -> bytes:
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return line + b"\n"
    content = parts[3] if len(parts) == 4 else b""
    return content if parts[2] == b"P" else content + b"\n"
