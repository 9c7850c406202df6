"""Accepting TCP connections cheaply, for servers that must outlast a flood.

``trio.serve_listeners`` wraps every accepted socket in a ``trio.SocketStream``
(two socket options, a lock and a conflict detector) and yields to the
scheduler between two accepts. Under a flood of sockets that never speak, that
work is spent on connections that will be dropped, while the one real client
waits its turn in the kernel's accept queue behind them. ``serve_sockets``
hands the handler the bare non-blocking socket and empties the accept queue in
batches; the handler builds a stream only for a connection that has spoken.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

__all__ = ["LazyPeer", "close_socket", "peer_name", "serve_sockets"]

log = logging.getLogger(__name__)

Handler = Callable[[socket.socket], Awaitable[None]]

_ACCEPT_BATCH = 256  # accepts between two looks at the rest of the program
# Out of descriptors or kernel memory: wait a little instead of spinning (as trio does).
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CAPACITY_PAUSE = 0.1
_GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPERM, errno.EPROTO})


async def serve_sockets(
    handler: Handler, listeners: list[trio.SocketListener], *, handler_nursery: trio.Nursery
) -> None:
    """Accept on ``listeners`` (taken over: their sockets are detached) until
    cancelled; each connection's non-blocking socket goes to ``handler`` in a
    task of ``handler_nursery``, which owns (and closes) it."""
    socks = [socket.socket(fileno=listener.socket.detach()) for listener in listeners]
    try:
        async with trio.open_nursery() as nursery:
            for sock in socks:
                sock.setblocking(False)
                nursery.start_soon(_accept_loop, sock, handler, handler_nursery)
    finally:
        for sock in socks:
            close_socket(sock)


async def _accept_loop(sock: socket.socket, handler: Handler, nursery: trio.Nursery) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    continue  # that connection failed before we took it
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("accept failed (%s); retrying in %.1f s", exc, _CAPACITY_PAUSE)
                await trio.sleep(_CAPACITY_PAUSE)
                break
            conn.setblocking(False)
            nursery.start_soon(handler, conn)


def close_socket(sock: socket.socket) -> None:
    """Close a socket trio may be watching (wakes its waiters with ClosedResourceError)."""
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def peer_name(sock: socket.socket) -> str:
    """``host:port`` of the peer (``[v6]:port``), or ``?`` once it is gone."""
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


class LazyPeer:
    """A socket's ``peer_name`` for log arguments: looked up only if the
    message is logged (a flood's sockets are mostly never named)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __str__(self) -> str:
        return peer_name(self._sock)
