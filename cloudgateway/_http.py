"""A small HTTP/1.1 server on h11 and trio, for the API and the join endpoint.

Keep-alive, bounded bodies and header sizes, chunked streaming responses (for
watches), optional TLS. A handler that raises becomes a 500; the server goes on.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

__all__ = ["Handler", "Request", "Response", "json_response", "serve_http"]

_READ = 65536


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, obj: Any) -> Response:
    return Response(
        status,
        json.dumps(obj, separators=(",", ":")).encode(),
        [("content-type", "application/json")],
    )


class _TooLarge(Exception):
    pass


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_body: int = 4 * 1024 * 1024,
    max_connections: int = 512,
    header_timeout: float = 30.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.CapacityLimiter(max_connections)

    async def on_conn(tcp: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(tcp)
            return
        try:
            peer = _peer(tcp)
            stream: trio.abc.Stream = tcp
            if ssl_context is not None:
                sstream = trio.SSLStream(tcp, ssl_context, server_side=True)
                try:
                    with trio.fail_after(header_timeout):
                        await sstream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    log.debug("TLS handshake with %s failed: %s", peer, exc)
                    await trio.aclose_forcefully(sstream)
                    return
                stream = sstream
            await _serve_connection(handler, stream, peer, max_body, header_timeout)
        finally:
            slots.release()

    task_status.started(bound)
    await trio.serve_listeners(on_conn, listeners)


async def _serve_connection(
    handler: Handler, stream: trio.abc.Stream, peer: str, max_body: int, header_timeout: float
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            try:
                with trio.fail_after(header_timeout):
                    req = await _read_request(conn, stream, peer, max_body)
            except _TooLarge:
                await _send_simple(conn, stream, 413, "request body too large")
                return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send_simple(conn, stream, 400, f"malformed request: {exc}")
                return
            if req is None:
                return
            try:
                resp = await handler(req)
            except Exception:
                log.exception("handler failed for %s %s from %s", req.method, req.path, peer)
                resp = json_response(
                    500,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": "internal error",
                        "reason": "InternalError",
                        "code": 500,
                    },
                )
            await _send_response(conn, stream, resp)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, peer: str, max_body: int
) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ)
            conn.receive_data(bytes(data))
            if not data and head is None:
                return None
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            head = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                raise _TooLarge
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = head.target.decode("latin-1")
            path, _, qs = target.partition("?")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            return Request(
                head.method.decode("ascii"),
                urllib.parse.unquote(path),
                urllib.parse.parse_qs(qs, keep_blank_values=True),
                headers,
                bytes(body),
                peer,
            )


async def _send(conn: h11.Connection, stream: trio.abc.Stream, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _send_simple(
    conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str
) -> None:
    reason = {400: "BadRequest", 413: "RequestEntityTooLarge"}.get(status, "BadRequest")
    resp = json_response(
        status,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status,
        },
    )
    resp.headers.append(("connection", "close"))
    try:
        await _send_response(conn, stream, resp)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _send_response(conn: h11.Connection, stream: trio.abc.Stream, resp: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
    if resp.stream is None:
        headers.append((b"content-length", str(len(resp.body)).encode()))
        await _send(conn, stream, h11.Response(status_code=resp.status, headers=headers))
        if resp.body:
            await _send(conn, stream, h11.Data(data=resp.body))
        await _send(conn, stream, h11.EndOfMessage())
        return
    headers.append((b"transfer-encoding", b"chunked"))
    await _send(conn, stream, h11.Response(status_code=resp.status, headers=headers))
    it = resp.stream
    try:
        async for chunk in it:
            if chunk:
                await _send(conn, stream, h11.Data(data=chunk))
        await _send(conn, stream, h11.EndOfMessage())
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
