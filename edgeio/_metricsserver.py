"""The agent's and the mappers' opt-in ``/metrics`` listener: plain HTTP/1.1
on a loopback address, one request per connection, ``GET /metrics`` answered
with what ``await render()`` returns (Prometheus' text format). Small on purpose:
a scrape every few seconds needs no HTTP framework, and nothing here imports a
metrics library (the caller's ``render`` does, once metrics are on)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

import trio

from ._errors import EdgeIOError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_REQUEST = 8192  # a scrape's request head is a few hundred bytes
_TIMEOUT = 10.0  # to send the request head
_MAX_CONNECTIONS = 8  # more at once: closed at once


class MetricsAddressError(EdgeIOError, ValueError):
    """A metrics listen address that is not ``HOST:PORT`` on loopback."""


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9101`` or ``[::1]:9101`` → (host, port). Only loopback
    addresses (and ``localhost``): the endpoint has no authentication."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsAddressError(f"metrics address must be HOST:PORT, not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise MetricsAddressError(
                f"metrics address {text!r}: the host must be an IP address or localhost"
            ) from None
        if not loopback:
            raise MetricsAddressError(
                f"metrics address {text!r}: only loopback (127.0.0.1, ::1) is allowed; "
                "the endpoint has no authentication"
            )
    return host, int(port_text)


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


Render = Callable[[], Awaitable[bytes]]


async def _serve_one(stream: trio.SocketStream, render: Render) -> None:
    head = b""
    with trio.move_on_after(_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) <= _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    line = head.split(b"\r\n", 1)[0].split()
    if b"\r\n\r\n" not in head or len(line) != 3:
        answer = _response("400 Bad Request", b"bad request\n", "text/plain")
    elif line[0] not in (b"GET", b"HEAD"):
        answer = _response("405 Method Not Allowed", b"use GET\n", "text/plain")
    elif line[1].split(b"?")[0] != b"/metrics":
        answer = _response("404 Not Found", b"only /metrics is here\n", "text/plain")
    else:
        try:
            body = await render()
        except Exception:
            log.exception("rendering metrics failed")
            answer = _response("500 Internal Server Error", b"internal error\n", "text/plain")
        else:
            answer = _response("200 OK", body, CONTENT_TYPE)
            if line[0] == b"HEAD":
                answer = answer[: answer.index(b"\r\n\r\n") + 4]
    await stream.send_all(answer)


async def serve_metrics(
    address: str,
    render: Render,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``address`` (``HOST:PORT``, loopback) until
    cancelled; reports the bound port (useful with port 0)."""
    host, port = parse_listen(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    slots = trio.Semaphore(_MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            if slots.value == 0:
                return  # a flood of connections gets closed, not queued
            async with slots:
                await _serve_one(stream, render)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        finally:
            await trio.aclose_forcefully(stream)

    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)
