"""TLS for the hub's many idle connections, with OpenSSL on the socket itself.

``trio.SSLStream`` runs OpenSSL over two memory BIOs and copies every record
through Python. Each BIO keeps the buffer it grew to during the handshake, and
the stream carries its own locks and conflict detectors: about 5 KiB per
connection in all, which at thousands of idle nodes is a tenth of the gateway's
memory. ``SocketTLSStream`` lets OpenSSL read and write the non-blocking socket
(an ``ssl.SSLSocket``) and waits on the descriptor with trio when OpenSSL wants
more. It is a plain ``trio.abc.Stream``, so trio-websocket runs over it as over
any other stream.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["SocketTLSStream", "accept_tls", "client_hello_arrived"]

_RECEIVE_SIZE = 65536
# TLS record layer (RFC 8446 section 5.1): type, legacy version (2 bytes),
# length (2 bytes); a handshake record is type 22 and its body at most 2^14 bytes.
_RECORD_HEADER = 5
_HANDSHAKE_RECORD = 22
_MAX_RECORD_BODY = 2**14
T = TypeVar("T")


class SocketTLSStream(trio.abc.Stream):
    __slots__ = ("_closed", "_receiving", "_sending", "_sock")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._closed = False
        self._sending = False
        self._receiving = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._sock.getpeercert()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")

    async def _retry(self, what: str, op: Callable[[], T]) -> T:
        """``op()`` until OpenSSL stops asking to wait; its failures as trio's."""
        while True:
            self._check_open()
            try:
                return op()
            except ssl.SSLWantReadError:
                wait = trio.lowlevel.wait_readable
            except ssl.SSLWantWriteError:
                wait = trio.lowlevel.wait_writable
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(f"TLS {what} failed: {exc}") from exc
            # Waiting outside the except clause: an idle connection does not
            # keep the want-read exception and its traceback (~0.7 KiB).
            try:
                await wait(self._sock)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("the TLS stream was closed") from None

    async def do_handshake(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._retry("handshake", self._sock.do_handshake)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            size = max_bytes or _RECEIVE_SIZE
            data = await self._retry("receive", lambda: self._sock.recv(size))
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            while view:
                # After a want-write OpenSSL must be handed the same bytes again,
                # which a retry of the same send does.
                sent = await self._retry("send", functools.partial(self._sock.send, view))
                view = view[sent:]
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._sock)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # Best effort close_notify, never waiting for the peer's: the socket is
        # non-blocking, so this writes what fits and returns.
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self._sock.unwrap()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint()


async def client_hello_arrived(sock: socket.socket) -> bool:
    """Wait until the first TLS record a client sends (its ClientHello) has
    arrived whole, without reading it: OpenSSL reads it later. False if the
    peer closed first; OSError if it reset. ``sock`` is non-blocking.

    The socket's receive low-water mark (``SO_RCVLOWAT``) is set to the bytes
    still missing, so the kernel wakes us once, when they are all in: a client
    trickling its hello costs no wake-up per byte. Bytes that are not a TLS
    handshake record, or a record longer than TLS allows, count as arrived:
    OpenSSL refuses them at once."""
    need = _RECORD_HEADER
    seen = -1
    try:
        while True:
            try:
                data = sock.recv(need, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data is not None and len(data) >= need:
                if need > _RECORD_HEADER:
                    return True
                body = int.from_bytes(data[3:5], "big")
                if data[0] != _HANDSHAKE_RECORD or body > _MAX_RECORD_BODY:
                    return True
                need += body
                continue
            if data is not None:
                if len(data) <= seen or not data:  # readable, nothing new: end of stream
                    return False
                seen = len(data)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
            await trio.lowlevel.wait_readable(sock)
    finally:
        if seen >= 0:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def accept_tls(conn: trio.SocketStream | socket.socket, context: ssl.SSLContext) -> SocketTLSStream:
    """Put TLS on an accepted connection: its non-blocking socket, or trio's
    stream (whose descriptor is taken from trio). The handshake is left to
    ``do_handshake``."""
    if isinstance(conn, trio.SocketStream):
        sock = socket.socket(fileno=conn.socket.detach())
        sock.setblocking(False)
    else:
        sock = conn
    try:
        return SocketTLSStream(
            context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        )
    except BaseException:
        sock.close()
        raise
