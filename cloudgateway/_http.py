"""A small HTTP/1.1 server on h11 and trio, for the API and the join endpoint.

Keep-alive, bounded bodies and header sizes, chunked streaming responses (for
watches), optional TLS. A handler that raises becomes a 500; a connection that
misbehaves is closed; nothing a client sends stops the server.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from ._accept import LazyPeer, close_socket, peer_name, serve_sockets

log = logging.getLogger(__name__)

__all__ = [
    "Handler",
    "HttpConfig",
    "HttpServer",
    "Request",
    "Response",
    "json_response",
    "serve_http",
    "status_body",
]

_READ = 65536
_MAX_HEAD = 64 * 1024  # request line plus headers
_LINGER_SECONDS = 2.0  # after an error answer, read what the client still sends...
_LINGER_BYTES = 8 * 1024 * 1024  # ...up to this much, so that it sees the answer
_REASONS = {
    400: "BadRequest",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    414: "RequestURITooLong",
    431: "RequestHeaderFieldsTooLarge",
    501: "NotImplemented",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # "GET"
    path: str  # "/api/v1/nodes" (percent-decoded, no query)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    peer: str  # "127.0.0.1:54321"

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, if given."""
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        """A boolean query parameter: ``1`` or ``true``."""
        return (self.param(name) or "").lower() in ("1", "true")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # If set: chunked transfer, ``body`` ignored; closed (``aclose``) when the
    # client goes away or the stream ends. The connection closes afterwards.
    stream: AsyncIterator[bytes] | None = None
    # If set: the request asked to switch protocols (``Upgrade``) and this
    # accepts. ``status`` and ``headers`` are sent as a 101, then this gets the
    # connection and any bytes already read past the request; the connection
    # closes when it returns.
    upgrade: Callable[[trio.abc.Stream, bytes], Awaitable[None]] | None = None


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, obj: Any) -> Response:
    return Response(
        status,
        json.dumps(obj, separators=(",", ":")).encode(),
        [("content-type", "application/json")],
    )


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Kubernetes ``Status`` object describing a failure."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _status(status: int, reason: str, message: str) -> Response:
    return json_response(status, status_body(status, reason, message))


class _TooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """One HTTP server's address and limits (the API's, the join endpoint's)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body: int = 4 * 1024 * 1024
    # Open connections; at the cap a new one takes the place of the connection
    # that has waited longest for a request (see ``_Admission``).
    max_connections: int = 512
    # No request started this long after accept or after the previous answer:
    # closed without a word (idle keep-alive, or a socket that never speaks).
    idle_timeout: float = 10.0
    # The TLS handshake (from accept), and each request's line and headers
    # (from their first byte), within this: trickling bytes does not extend it.
    head_timeout: float = 10.0
    # A whole request, body included, within this from its first byte.
    request_timeout: float = 30.0


class _Slot:
    __slots__ = ("scope", "shed")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.shed = False


class _Admission:
    """The open connections of one server. A connection waiting for a request
    (handshaking, idle, or still sending its head) may be shed: at the cap the
    one that has waited longest makes room, so a flood of idle or slow sockets
    cannot lock real clients out. A connection being answered is never shed;
    if every one is, the newcomer is refused."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._open = 0
        self._waiting: dict[_Slot, None] = {}  # insertion order: longest waiting first
        self.shed = 0
        self.refused = 0

    def open(self) -> _Slot | None:
        if self._open >= self._cap:
            if not self._waiting:
                self.refused += 1
                return None
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.shed = True
            oldest.scope.cancel()
            self._open -= 1  # no longer counted: its task ends at its next checkpoint
            self.shed += 1
        self._open += 1
        slot = _Slot()
        self._waiting[slot] = None
        return slot

    def waiting(self, slot: _Slot) -> None:
        if not slot.shed:
            self._waiting.pop(slot, None)
            self._waiting[slot] = None  # to the back: it waits from now

    def busy(self, slot: _Slot) -> None:
        self._waiting.pop(slot, None)

    def close(self, slot: _Slot) -> None:
        self._waiting.pop(slot, None)
        if not slot.shed:
            self._open -= 1

    def statistics(self) -> dict[str, int]:
        return {
            "connections_open": self._open,
            "connections_waiting": len(self._waiting),
            "connections_shed": self.shed,
            "connections_refused": self.refused,
        }


class HttpServer:
    """Serves ``handler`` as ``config`` says; ``run`` until cancelled."""

    def __init__(
        self, handler: Handler, config: HttpConfig, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._handler = handler
        self.config = config
        self._ssl = ssl_context
        self._admission = _Admission(config.max_connections)
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return {**self._admission.statistics(), **self.counters}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Reports the bound port (useful with port 0) through ``task_status``."""
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        task_status.started(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            await serve_sockets(self._on_connection, listeners, handler_nursery=nursery)

    async def _on_connection(self, sock: socket.socket) -> None:
        slot = self._admission.open()
        if slot is None:
            log.debug(
                "refusing %s: %d connections busy", LazyPeer(sock), self.config.max_connections
            )
            close_socket(sock)
            return
        stream: trio.abc.Stream | None = None
        try:
            with slot.scope:
                # A socket that never speaks costs only its slot and this task:
                # the stream, TLS and HTTP state are made once it has.
                slot.scope.deadline = trio.current_time() + self.config.idle_timeout
                await trio.lowlevel.wait_readable(sock)
                slot.scope.deadline = math.inf
                if self._ssl is None and _tls_hello(sock):
                    self.counters["tls_on_plain"] += 1
                    log.debug("%s: TLS on the plaintext port, closed", LazyPeer(sock))
                    return
                peer = peer_name(sock)
                tcp = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                stream = tcp
                if self._ssl is not None:
                    tls = trio.SSLStream(tcp, self._ssl, server_side=True)
                    stream = tls
                    try:
                        with trio.fail_after(self.config.head_timeout):
                            await tls.do_handshake()
                    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                        self.counters["tls_failed"] += 1
                        log.debug("TLS handshake with %s failed: %r", peer, exc.__cause__ or exc)
                        return
                await _Connection(self, slot, stream, peer).serve()
            if stream is None and slot.scope.cancelled_caught and not slot.shed:
                self.counters["idle_closed"] += 1
                log.debug(
                    "%s: sent nothing within %.0f s", LazyPeer(sock), self.config.idle_timeout
                )
        except Exception:
            log.exception("connection from %s failed", LazyPeer(sock))
        finally:
            if slot.shed:
                log.debug("%s shed: waited longest for a request at the cap", LazyPeer(sock))
            self._admission.close(slot)
            if stream is not None:
                await trio.aclose_forcefully(stream)
            else:
                close_socket(sock)


async def serve_http(
    handler: Handler,
    config: HttpConfig,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` until cancelled (an ``HttpServer`` nobody asks for statistics)."""
    await HttpServer(handler, config, ssl_context=ssl_context).run(task_status=task_status)


class _Connection:
    def __init__(self, server: HttpServer, slot: _Slot, stream: trio.abc.Stream, peer: str) -> None:
        self._server = server
        self._config = server.config
        self._slot = slot
        self._stream = stream
        self._peer = peer
        self._max_body = server.config.max_body
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)

    async def serve(self) -> None:
        try:
            while await self._one_exchange():
                self._conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection from %s broke: %r", self._peer, exc)
        finally:
            await trio.aclose_forcefully(self._stream)

    def _started(self) -> bool:
        """Has the client sent any of the next request?"""
        return self._conn.their_state is not h11.IDLE or bool(self._conn.trailing_data[0])

    async def _one_exchange(self) -> bool:
        """Read one request and answer it; True to keep the connection open."""
        conn = self._conn
        server = self._server
        try:
            req = await self._read_request()
        except trio.TooSlowError:
            if not self._started():
                server.counters["idle_closed"] += 1
                log.debug("%s: no request within %.0f s", self._peer, self._config.idle_timeout)
                return False
            server.counters["slow_requests"] += 1
            log.debug("%s: request not received in time", self._peer)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send_error(408, "Timeout", "request not received in time")
            return False
        except _TooLarge:
            await self._send_error(
                413, "RequestEntityTooLarge", f"request body over {self._max_body} bytes"
            )
            return False
        except h11.RemoteProtocolError as exc:
            log.debug("%s: malformed HTTP: %s", self._peer, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                reason = _REASONS.get(status, "BadRequest")
                await self._send_error(status, reason, f"malformed request: {exc}")
            return False
        if req is None:
            return False
        try:
            resp = await self._server._handler(req)
            if not isinstance(resp, Response):
                raise TypeError(f"handler returned {type(resp).__name__}, not Response")
        except Exception:
            log.exception("handler failed for %s %s from %s", req.method, req.path, self._peer)
            resp = _status(500, "InternalError", "internal error")
        if resp.upgrade is not None:
            await self._switch(resp)
            return False
        if resp.stream is not None:
            if req.method != "HEAD":
                await self._send_stream(resp)
                return False
            await _aclose(resp.stream, self._peer)
            resp.stream = None
        await self._send_plain(resp, head_only=req.method == "HEAD")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_request(self) -> Request | None:
        """The next request, or None if the client closed. Raises TooSlowError
        past a deadline: ``idle_timeout`` for its first byte, then
        ``head_timeout`` for its head and ``request_timeout`` for all of it,
        both counted from that first byte."""
        conn = self._conn
        config = self._config
        admission = self._server._admission
        admission.waiting(self._slot)  # sheddable until its head is in
        head: h11.Request | None = None
        body = bytearray()
        fed = len(conn.trailing_data[0])  # bytes of this request h11 has been given
        first_byte = trio.current_time() if fed else None
        with trio.CancelScope() as scope:
            while True:
                if first_byte is None:
                    scope.deadline = trio.current_time() + config.idle_timeout
                elif head is None:
                    scope.deadline = first_byte + config.head_timeout
                else:
                    scope.deadline = first_byte + config.request_timeout
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                    data = await self._stream.receive_some(_READ)
                    if data and first_byte is None:
                        first_byte = trio.current_time()
                    conn.receive_data(bytes(data))
                    fed += len(data)
                    continue
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return None
                if isinstance(event, h11.Request):
                    # h11 caps only an incomplete head; one that arrived whole is
                    # held to the same limit here.
                    if fed - len(conn.trailing_data[0]) > _MAX_HEAD:
                        raise h11.RemoteProtocolError("request head too large", 431)
                    head = event
                    admission.busy(self._slot)
                    length = dict(event.headers).get(b"content-length")
                    if length is not None and int(length) > self._max_body:
                        raise _TooLarge
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self._max_body:
                        raise _TooLarge
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return _request(head, bytes(body), self._peer)
        raise trio.TooSlowError

    async def _send(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            await self._stream.send_all(data)

    async def _send_error(self, status: int, reason: str, message: str) -> None:
        """Answer and close gracefully: the client may still be sending (a body
        we refused), and closing with unread data would reset the connection
        before it reads the answer."""
        resp = _status(status, reason, message)
        resp.headers.append(("connection", "close"))
        try:
            await self._send_plain(resp, head_only=False)
            if isinstance(self._stream, trio.SocketStream):
                await self._stream.send_eof()
                with trio.move_on_after(_LINGER_SECONDS):
                    drained = 0
                    while drained < _LINGER_BYTES:
                        data = await self._stream.receive_some(_READ)
                        if not data:
                            break
                        drained += len(data)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _head(self, resp: Response, framing: tuple[bytes, bytes]) -> h11.Response:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
        headers = [h for h in headers if h[0].lower() not in (b"content-length", framing[0])]
        headers.append(framing)
        return h11.Response(status_code=resp.status, headers=headers)

    async def _send_plain(self, resp: Response, *, head_only: bool) -> None:
        try:
            head = self._head(resp, (b"content-length", str(len(resp.body)).encode()))
        except (UnicodeEncodeError, h11.LocalProtocolError) as exc:
            log.error("bad response headers for %s: %s", self._peer, exc)
            resp = _status(500, "InternalError", "internal error: bad response headers")
            head = self._head(resp, (b"content-length", str(len(resp.body)).encode()))
        await self._send(head)
        if resp.body and not head_only:
            await self._send(h11.Data(data=resp.body))
        await self._send(h11.EndOfMessage())

    async def _switch(self, resp: Response) -> None:
        assert resp.upgrade is not None
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
        try:
            await self._send(h11.InformationalResponse(status_code=101, headers=headers))
        except h11.LocalProtocolError as exc:  # the client did not ask to switch
            log.error("cannot switch protocols with %s: %s", self._peer, exc)
            return
        leftover, _closed = self._conn.trailing_data
        try:
            await resp.upgrade(self._stream, bytes(leftover))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("%s went away after switching protocols: %r", self._peer, exc)
        except Exception:
            log.exception("the switched-protocol handler for %s failed", self._peer)

    async def _send_stream(self, resp: Response) -> None:
        """Send ``resp.stream`` chunk by chunk until it ends or the client goes away."""
        it = resp.stream
        assert it is not None
        try:
            resp.headers.append(("connection", "close"))
            await self._send(self._head(resp, (b"transfer-encoding", b"chunked")))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_client_gone, nursery.cancel_scope)
                try:
                    async for chunk in it:
                        if chunk:
                            await self._send(h11.Data(data=chunk))
                    await self._send(h11.EndOfMessage())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    log.debug("%s went away during a stream", self._peer)
                except Exception:
                    log.exception("response stream for %s failed", self._peer)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await _aclose(it, self._peer)

    async def _wait_client_gone(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` once the client closes its side (it sends nothing
        more during a streamed response; anything it does send is dropped)."""
        try:
            while await self._stream.receive_some(_READ):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def _aclose(it: AsyncIterator[bytes], peer: str) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    with trio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:
            log.exception("closing the response stream for %s failed", peer)


def _request(head: h11.Request, body: bytes, peer: str) -> Request:
    target = head.target.decode("latin-1")
    if target.startswith(("http://", "https://")):  # absolute form
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, qs = target.partition("?")
    headers: dict[str, str] = {}
    for k, v in head.headers:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(
        head.method.decode("ascii", "replace"),
        urllib.parse.unquote(path),
        urllib.parse.parse_qs(qs, keep_blank_values=True),
        headers,
        body,
        peer,
    )


_TLS_HANDSHAKE = 0x16  # first byte of a TLS record carrying a ClientHello


def _tls_hello(sock: socket.socket) -> bool:
    """Whether the peer's first byte (peeked, not consumed) starts a TLS
    handshake record: a TLS client on a plaintext port, which could not read
    an HTTP answer."""
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return False
    return first == bytes([_TLS_HANDSHAKE])
