"""A small CRI client: unary gRPC over HTTP/2 on containerd's unix socket, in trio.

grpcio costs ~12 MB of resident memory and 7 threads per channel, more than the
rest of the agent's budget for edged, and all edged needs from it is unary calls
on a local socket. So this speaks just enough HTTP/2 (RFC 9113) and HPACK itself:
one request per connection at a time, a small pool of connections (the
``CapacityLimiter`` bounds it), flow-control windows opened wide and topped up,
SETTINGS/PING answered, GOAWAY and EOF mapped to ``UNAVAILABLE``. Messages are
encoded with protobuf from ``_cri_api_pb2`` (the runtime.v1 subset edged uses).
A dropped connection is reopened on the next call, so containerd restarts are
survived.
"""

from __future__ import annotations

import logging
import struct
import urllib.parse
from typing import Any, Protocol

import trio

from . import _cri_api_pb2
from ._errors import CriError
from ._hpack import HpackDecoder, HpackError, encode_headers

log = logging.getLogger(__name__)

__all__ = ["Cri", "CriClient", "CriClientBase", "pb"]

pb: Any = _cri_api_pb2

_RESPONSES = {
    "Version": "VersionResponse",
    "RunPodSandbox": "RunPodSandboxResponse",
    "StopPodSandbox": "StopPodSandboxResponse",
    "RemovePodSandbox": "RemovePodSandboxResponse",
    "PodSandboxStatus": "PodSandboxStatusResponse",
    "ListPodSandbox": "ListPodSandboxResponse",
    "CreateContainer": "CreateContainerResponse",
    "StartContainer": "StartContainerResponse",
    "StopContainer": "StopContainerResponse",
    "RemoveContainer": "RemoveContainerResponse",
    "ListContainers": "ListContainersResponse",
    "ContainerStatus": "ContainerStatusResponse",
    "ExecSync": "ExecSyncResponse",
    "ListContainerStats": "ListContainerStatsResponse",
    "ImageStatus": "ImageStatusResponse",
    "PullImage": "PullImageResponse",
}
_IMAGE_METHODS = {"ImageStatus", "PullImage"}
_SLOW = ("PullImage", "StopContainer", "StopPodSandbox", "ExecSync")

_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 16384
BIG_WINDOW = (1 << 31) - 1
MAX_MESSAGE = 16 << 20


class Cri(Protocol):
    """What edged needs of a CRI client (this module's, or ``_grpc``'s on grpcio)."""

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any: ...

    def close(self) -> None: ...


class _Lost(Exception):
    """The connection broke or the server is going away."""


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([ftype, flags])
        + struct.pack(">I", stream)
        + payload
    )


class _Conn:
    """One HTTP/2 connection, used by one call at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.hpack = HpackDecoder()
        self.next_id = 1
        self.going_away = False
        self.consumed = 0  # connection-window bytes received since the last WINDOW_UPDATE

    @classmethod
    async def open(cls, path: str) -> _Conn:
        stream = await trio.open_unix_socket(path)
        conn = cls(stream)
        settings = struct.pack(">HI", 2, 0) + struct.pack(">HI", 4, BIG_WINDOW)  # no push; window
        try:
            await stream.send_all(
                PREFACE
                + _frame(SETTINGS, 0, 0, settings)
                + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", BIG_WINDOW - 65535))
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.stream.socket.close()

    async def _read_frame(self) -> tuple[int, int, int, bytes]:
        while len(self.buf) < 9:
            await self._fill()
        length = int.from_bytes(self.buf[:3], "big")
        if length > MAX_FRAME:  # our SETTINGS keep the default SETTINGS_MAX_FRAME_SIZE
            raise _Lost(f"frame of {length} bytes exceeds {MAX_FRAME}")
        while len(self.buf) < 9 + length:
            await self._fill()
        ftype, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = bytes(self.buf[9 : 9 + length])
        del self.buf[: 9 + length]
        return ftype, flags, stream, payload

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _Lost(f"connection lost: {exc}") from None
        if not data:
            raise _Lost("connection closed by the runtime")
        self.buf += data

    async def unary(self, path: str, body: bytes, seconds: float) -> tuple[int, str, bytes]:
        """(grpc status, message, response bytes)."""
        sid = self.next_id
        self.next_id += 2
        headers = encode_headers(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", f"{max(1, int(seconds * 1000))}m"),
            ]
        )
        msg = b"\x00" + struct.pack(">I", len(body)) + body
        out = bytearray(_frame(HEADERS, END_HEADERS, sid, headers))
        for i in range(0, len(msg), MAX_FRAME):
            last = i + MAX_FRAME >= len(msg)
            out += _frame(DATA, END_STREAM if last else 0, sid, msg[i : i + MAX_FRAME])
        try:
            await self.stream.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _Lost(f"connection lost: {exc}") from None
        data = bytearray()
        block = bytearray()
        ended = False
        status: int | None = None
        message = ""
        http_status = ""
        while True:
            ftype, flags, stream, payload = await self._read_frame()
            if ftype == SETTINGS:
                if not flags & ACK:
                    await self._send(_frame(SETTINGS, ACK, 0))
                continue
            if ftype == PING:
                if not flags & ACK:
                    await self._send(_frame(PING, ACK, 0, payload))
                continue
            if ftype == GOAWAY:
                self.going_away = True
                last_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if last_id < sid:
                    raise _Lost("the runtime is going away")
                continue
            if ftype == DATA:
                self.consumed += len(payload)
            if stream != sid:
                continue
            if ftype == RST_STREAM:
                code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
                return 14 if code in (7, 11) else 1, f"stream reset (HTTP/2 error {code})", b""
            if ftype == DATA:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                data += payload
                if len(data) > MAX_MESSAGE + 5:
                    raise CriError(path, "RESOURCE_EXHAUSTED", "response too large")
                if flags & END_STREAM:
                    break
                continue
            if ftype in (HEADERS, CONTINUATION):
                if ftype == HEADERS:
                    ended = bool(flags & END_STREAM)
                    if flags & PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    if flags & PRIORITY:
                        payload = payload[5:]
                block += payload
                if flags & END_HEADERS:
                    try:
                        fields = self.hpack.decode(bytes(block))
                    except HpackError as exc:
                        raise _Lost(f"bad header block: {exc}") from None
                    block.clear()
                    for name, value in fields:
                        if name == ":status":
                            http_status = value
                        elif name == "grpc-status":
                            status = int(value) if value.isdigit() else 2
                        elif name == "grpc-message":
                            message = urllib.parse.unquote(value)
                    if ended:
                        break
        if self.consumed > (1 << 24):
            await self._send(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.consumed)))
            self.consumed = 0
        if status is None:
            return 2, f"no grpc-status (HTTP status {http_status or '?'})", b""
        if status != 0:
            return status, message, b""
        if len(data) < 5 or data[0] != 0:
            return 13, "malformed or compressed response message", b""
        length = int.from_bytes(data[1:5], "big")
        return 0, "", bytes(data[5 : 5 + length])

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _Lost(f"connection lost: {exc}") from None


class CriClientBase:
    """What both transports share: the unix socket address, the timeout, and the
    concurrency limits (calls that may take long, a pull, a stop waiting out a
    grace period, an exec, have limits of their own, so they never starve
    relisting and status calls)."""

    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        self.address = address if "://" in address else f"unix://{address}"
        if not self.address.startswith("unix://"):
            raise CriError("connect", "INVALID_ARGUMENT", f"{address}: only unix:// sockets")
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)
        self._slow = {m: trio.CapacityLimiter(concurrency) for m in _SLOW}

    def statistics(self) -> trio.CapacityLimiterStatistics:
        return self._limiter.statistics()

    def _limit(self, method: str) -> trio.CapacityLimiter:
        return self._slow.get(method, self._limiter)

    @staticmethod
    def _path(method: str) -> str:
        service = "ImageService" if method in _IMAGE_METHODS else "RuntimeService"
        return f"/runtime.v1.{service}/{method}"


class CriClient(CriClientBase):
    """``await cri.call("RunPodSandbox", pb.RunPodSandboxRequest(...))``."""

    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        super().__init__(address, concurrency=concurrency, timeout=timeout)
        self.path = self.address.removeprefix("unix://")
        self._idle: list[_Conn] = []  # one request per connection at a time

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any:
        path = self._path(method)
        timeout = rpc_timeout or self.timeout
        body = request.SerializeToString()
        async with self._limit(method):
            for attempt in (0, 1):
                reused = bool(self._idle)
                try:
                    conn = self._idle.pop() if reused else await _Conn.open(self.path)
                except OSError as exc:
                    raise CriError(method, "UNAVAILABLE", f"connect {self.path}: {exc}") from None
                ok = False
                try:
                    with trio.move_on_after(timeout) as scope:
                        status, message, raw = await conn.unary(path, body, timeout)
                    if scope.cancelled_caught:
                        raise CriError(method, "DEADLINE_EXCEEDED", f"no answer in {timeout:g} s")
                    ok = True
                except _Lost as exc:
                    # A pooled connection may have died while idle (containerd restarted):
                    # try once more on a fresh one.
                    if reused and attempt == 0:
                        continue
                    raise CriError(method, "UNAVAILABLE", str(exc)) from None
                finally:
                    if ok and not conn.going_away:
                        self._idle.append(conn)
                    else:
                        conn.close()
                if status != 0:
                    name = _CODES[status] if status < len(_CODES) else "UNKNOWN"
                    raise CriError(method, name, message)
                return getattr(pb, _RESPONSES[method]).FromString(raw)
        raise AssertionError("unreachable")
