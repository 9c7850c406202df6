"""edged's default CRI client: unary gRPC over HTTP/2 on containerd's unix socket, in trio.

grpcio costs ~15 MB of resident memory and 7 threads per channel, more than the
rest of the agent's budget for edged, and all edged needs from it is unary calls
on a local socket. So ``CriClient`` keeps a small pool of HTTP/2 connections
(``H2Conn``), one call on each at a time (the ``CapacityLimiter`` of
``CriClientBase`` bounds them), each call under its deadline; a connection found
dead is replaced once, so containerd restarts are survived.

``H2Conn``: the sans-io ``h2`` library (with ``hpack``) does the framing, header
compression, SETTINGS/PING answers and flow-control bookkeeping; this module moves
its bytes over a trio socket and ``_grpcwire`` reads the answer. Windows are
opened wide at the start (2**31-1 for each stream and the connection) and h2 tops
the connection's up as answers are consumed; a request larger than the window the
runtime grants is sent as the runtime opens it. A broken socket, a protocol error
or a GOAWAY that leaves the call unfinished raise ``Lost`` (h2 takes no frame
after a GOAWAY, so a call the runtime would still have finished is lost too: the
caller gets UNAVAILABLE, as for a restart).
"""

from __future__ import annotations

from typing import Any

import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from ._cri import _RESPONSES, CriClientBase, pb
from ._errors import CriError
from ._grpcwire import Reply, ReplyTooLarge, code_name, frame, request_headers

__all__ = ["CriClient", "H2Conn", "Lost"]

BIG_WINDOW = (1 << 31) - 1
_DEFAULT_WINDOW = 65535
_CANCEL = 8  # HTTP/2 error code


class Lost(Exception):
    """The connection broke or the runtime is going away."""


class _Connection(H2Connection):
    # h2 remembers how each closed stream ended (2**16 of them by default, a few
    # MB on a long-lived connection); one call at a time needs only the last few.
    MAX_CLOSED_STREAMS = 16


_CONFIG = H2Configuration(client_side=True, header_encoding=None)


class H2Conn:
    """``await (await H2Conn.open(path)).unary("/runtime.v1.RuntimeService/Version", body, 5)``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.going_away = False
        self.h2 = _Connection(config=_CONFIG)
        self.h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: BIG_WINDOW,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(BIG_WINDOW - _DEFAULT_WINDOW)

    @classmethod
    async def open(cls, path: str) -> H2Conn:
        stream = await trio.open_unix_socket(path)
        try:
            conn = cls(stream)
            await conn._flush()
        except BaseException:
            stream.socket.close()
            raise
        return conn

    def close(self) -> None:
        self.stream.socket.close()

    async def unary(self, path: str, body: bytes, seconds: float) -> tuple[int, str, bytes]:
        """(grpc status, message, response bytes) of one call."""
        reply = Reply()
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, request_headers(path, seconds))
            msg = frame(body)
            sent = 0
            ended = False
            while sent < len(msg) and not ended:
                room = min(
                    self.h2.local_flow_control_window(sid),
                    self.h2.max_outbound_frame_size,
                    len(msg) - sent,
                )
                if room > 0:
                    end = sent + room == len(msg)
                    self.h2.send_data(sid, msg[sent : sent + room], end_stream=end)
                    sent += room
                else:  # the runtime's window is shut: wait for it to open
                    await self._flush()
                    ended = self._handle(await self._receive(), sid, reply)
            if sent < len(msg) and reply.reset is None:
                self.h2.reset_stream(sid, _CANCEL)  # answered before all was sent: stop sending
            await self._flush()
            while not ended:
                ended = self._handle(await self._receive(), sid, reply)
            await self._flush()  # window updates for what was consumed
        except H2Error as exc:
            raise Lost(f"HTTP/2 protocol error: {exc}") from None
        except ReplyTooLarge as exc:
            raise CriError(path, "RESOURCE_EXHAUSTED", str(exc)) from None
        return reply.result()

    def _handle(self, events: list[Event], sid: int, reply: Reply) -> bool:
        """Apply ``events`` to the call on stream ``sid``; True once it has ended."""
        ended = False
        for ev in events:
            if isinstance(ev, DataReceived):
                if ev.stream_id == sid and ev.data:
                    reply.data(ev.data)
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, ResponseReceived | TrailersReceived):
                if ev.stream_id == sid and ev.headers:
                    reply.headers(ev.headers)  # bytes (header_encoding=None)
            elif isinstance(ev, StreamEnded):
                ended = ended or ev.stream_id == sid
            elif isinstance(ev, StreamReset):
                if ev.stream_id == sid:
                    reply.stream_reset(int(ev.error_code))
                    ended = True
            elif isinstance(ev, ConnectionTerminated):
                self.going_away = True
                if not ended:
                    raise Lost(f"the runtime is going away (GOAWAY {ev.error_code!s})")
        return ended

    async def _receive(self) -> list[Event]:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Lost(f"connection lost: {exc}") from None
        if not data:
            raise Lost("connection closed by the runtime")
        return self.h2.receive_data(data)

    async def _flush(self) -> None:
        out = self.h2.data_to_send()
        if not out:
            return
        try:
            await self.stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Lost(f"connection lost: {exc}") from None


class CriClient(CriClientBase):
    """``await cri.call("RunPodSandbox", pb.RunPodSandboxRequest(...))``."""

    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        super().__init__(address, concurrency=concurrency, timeout=timeout)
        self.path = self.address.removeprefix("unix://")
        self._idle: list[H2Conn] = []  # one request per connection at a time

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
                    conn = self._idle.pop() if reused else await H2Conn.open(self.path)
                except OSError as exc:
                    raise CriError(method, "UNAVAILABLE", f"connect {self.path}: {exc}") from None
                ok = False
                try:
                    with trio.move_on_after(timeout) as scope:
                        status, message, raw = await conn.unary(path, body, timeout)
                    if scope.cancelled_caught:
                        raise CriError(method, "DEADLINE_EXCEEDED", f"no answer in {timeout:g} s")
                    ok = True
                except Lost as exc:
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
                    raise CriError(method, code_name(status), message)
                return getattr(pb, _RESPONSES[method]).FromString(raw)
        raise AssertionError("unreachable")
