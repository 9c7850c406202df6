"""HPACK (RFC 7541) for a gRPC client, sans-io: requests are encoded as literals
without indexing (no Huffman, no dynamic table), responses are decoded fully
(static and dynamic tables, Huffman strings)."""

from __future__ import annotations

from ._errors import EdgedError

__all__ = ["HpackDecoder", "HpackError", "encode_headers"]


class HpackError(EdgedError):
    """A header block that cannot be decoded."""


STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)  # fmt: skip

# Code lengths of RFC 7541 Appendix B for symbols 0..255 (EOS, 256, is 30 bits). The
# code is canonical: codes follow from the lengths (ordered by length, then symbol).
_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
)  # fmt: skip


def _canonical() -> dict[tuple[int, int], int]:
    lengths = (*_LENGTHS, 30)
    order = sorted(range(257), key=lambda s: (lengths[s], s))
    out: dict[tuple[int, int], int] = {}
    code = 0
    prev = lengths[order[0]]
    for k, sym in enumerate(order):
        if k:
            code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        out[(lengths[sym], code)] = sym
    return out


_DECODE = _canonical()


def huffman_decode(data: bytes) -> bytes:
    out = bytearray()
    code = 0
    n = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            n += 1
            sym = _DECODE.get((n, code))
            if sym is not None:
                if sym == 256:
                    raise HpackError("EOS in a Huffman string")
                out.append(sym)
                code = n = 0
            elif n > 30:
                raise HpackError("invalid Huffman code")
    if n > 7 or code != (1 << n) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    if pos >= len(data):
        raise HpackError("truncated integer")
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise HpackError("bad integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _encode_int(value: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, no Huffman."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _encode_int(len(n), 7) + n + _encode_int(len(v), 7) + v
    return bytes(out)


class HpackDecoder:
    def __init__(self, max_table_size: int = 4096) -> None:
        self._dynamic: list[tuple[str, str]] = []
        self._size = 0
        self._max = max_table_size
        self._limit = max_table_size

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        d = index - len(STATIC_TABLE) - 1
        if 0 <= d < len(self._dynamic):
            return self._dynamic[d]
        raise HpackError(f"header index {index} out of range")

    def _add(self, name: str, value: str) -> None:
        self._dynamic.insert(0, (name, value))
        self._size += len(name) + len(value) + 32
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max and self._dynamic:
            n, v = self._dynamic.pop()
            self._size -= len(n) + len(v) + 32

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise HpackError("truncated string")
        huff = bool(data[pos] & 0x80)
        length, pos = _int(data, pos, 7)
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise HpackError("truncated string")
        pos += length
        if huff:
            raw = huffman_decode(raw)
        return raw.decode("utf-8", errors="replace"), pos

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(data):
            b = data[pos]
            if b & 0x80:
                index, pos = _int(data, pos, 7)
                out.append(self._entry(index))
            elif b & 0x40:
                index, pos = _int(data, pos, 6)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                self._add(name, value)
                out.append((name, value))
            elif b & 0x20:
                size, pos = _int(data, pos, 5)
                if size > self._limit:
                    raise HpackError("table size update over the limit")
                self._max = size
                self._evict()
            else:
                index, pos = _int(data, pos, 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                out.append((name, value))
        return out
