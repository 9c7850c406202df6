"""Logs and exec through whichever replica the API request reaches.

A board holds one hub session, with one replica. ``RoutedStreams`` is the API's
``StreamOpener`` on every replica: a node connected here is served by the local
hub; any other node's stream is opened on the replica that holds it (found by
``owner_of``, e.g. the replica registry in etcd) through that replica's
``PeerServer``, over TLS where both ends show a replica certificate of the
fleet CA (``_peercert``). The frames are in ``_peerwire``. The relaying replica
only ever opens streams on its own hub: a request is forwarded at most once.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import json
import logging
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import trio

from ._accept import LazyPeer, close_socket, peer_name, serve_sockets
from ._config import GatewayConfig
from ._http import HttpConfig
from ._peercert import replica_from_peercert
from ._peerwire import (
    DATA,
    END,
    OPENED,
    REQUEST,
    FrameReader,
    OpenRequest,
    WireError,
    data_frames,
    encode_end,
    frame,
    parse_end,
    parse_request,
)
from ._pki import PkiError
from ._podstream import StreamOpener
from ._streams import PodStream, StreamError, result_error

log = logging.getLogger(__name__)

__all__ = [
    "LocalStreams",
    "OwnerOf",
    "PeerServer",
    "PeerStream",
    "RoutedStreams",
    "advertised_peer_address",
    "open_peer_stream",
]

CONNECT_TIMEOUT = 5.0  # TCP, TLS and the owner's "opened" (or its refusal)
LOOKUP_TIMEOUT = 5.0  # owner_of
_CLOSE_TIMEOUT = 1.0

# The replica holding a node's session, as "host:port" of its peer port, or
# None if no replica holds it; sync or async.
OwnerOf = Callable[[str], Awaitable[str | None] | str | None]


class LocalStreams(StreamOpener, Protocol):
    """This replica's hub, as routing sees it."""

    def connected_nodes(self) -> Iterable[str]: ...


def _split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def advertised_peer_address(config: GatewayConfig, port: int) -> str:
    """``host:port`` other replicas reach this replica's peer port at (what it
    registers): ``peer_advertise`` (with ``port`` if it names a host only),
    else the ``advertise`` host, else the peer port's bind address unless it
    is a wildcard, else this machine's host name; with the bound ``port``."""
    given = config.peer_advertise
    if given:
        with contextlib.suppress(ValueError):
            _split_address(given)
            return given
        host = given
    elif config.advertise:
        host = config.advertise
    elif config.peer.host not in ("", "0.0.0.0", "::"):
        host = config.peer.host
    else:
        host = socket.gethostname()
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---- the server: another replica's requests, served by the local hub ---------------


class PeerServer:
    """The peer port: serves stream requests of other replicas from ``local``
    (this replica's hub, never routed further). ``config``'s host, port (0:
    any free one), ``max_connections`` and ``head_timeout`` (the TLS handshake,
    then the open request) apply; its HTTP-only fields do not."""

    def __init__(
        self, local: StreamOpener, ssl_context: ssl.SSLContext, config: HttpConfig
    ) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the peer port must require client certificates")
        self._local = local
        self._ssl = ssl_context
        self.config = config
        self._open = 0
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return {"connections_open": self._open, **self.counters}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        task_status.started(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            await serve_sockets(self._on_connection, listeners, handler_nursery=nursery)

    async def _on_connection(self, sock: socket.socket) -> None:
        if self._open >= self.config.max_connections:
            self.counters["refused_busy"] += 1
            log.warning("peer port: %d connections open, refusing %s", self._open, LazyPeer(sock))
            close_socket(sock)
            return
        self._open += 1
        where = peer_name(sock)
        tls: trio.SSLStream[trio.SocketStream] | None = None
        try:
            tcp = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            tls = trio.SSLStream(tcp, self._ssl, server_side=True)
            await self._serve(tls, where)
        except Exception:
            log.exception("peer connection from %s failed", where)
        finally:
            self._open -= 1
            if tls is not None:
                await _close(tls)
            else:
                close_socket(sock)

    async def _serve(self, tls: trio.SSLStream[trio.SocketStream], where: str) -> None:
        reader = FrameReader(tls, (REQUEST,))
        try:
            with trio.fail_after(self.config.head_timeout):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.counters["tls_failed"] += 1
            log.info("peer TLS handshake with %s failed: %r", where, exc.__cause__ or exc)
            return
        try:
            replica = replica_from_peercert(tls.getpeercert())
        except PkiError as exc:
            self.counters["refused_not_replica"] += 1
            log.warning("peer port: %s refused: %s", where, exc)
            return
        try:
            with trio.fail_after(self.config.head_timeout):
                got = await reader.read()
            if got is None:
                return
            request = parse_request(got[1])
        except trio.TooSlowError:
            self.counters["request_timeouts"] += 1
            return
        except WireError as exc:
            self.counters["bad_requests"] += 1
            log.warning("peer port: bad request from replica %s at %s: %s", replica, where, exc)
            await self._refuse(tls, StreamError(exc.code, exc.reason, str(exc)))
            return
        except trio.BrokenResourceError:
            return
        log.debug("replica %s opens %s on %s (%s)", replica, request.op, request.node, request.key)
        await self._relay(tls, reader, request)

    async def _refuse(self, tls: trio.abc.Stream, err: StreamError) -> None:
        body = {"error": {"code": err.code, "reason": err.reason, "message": str(err)}}
        with trio.move_on_after(_CLOSE_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
            await tls.send_all(frame(END, _json(body)))

    async def _relay(self, tls: trio.abc.Stream, reader: FrameReader, req: OpenRequest) -> None:
        try:
            async with self._local.open_stream(req.node, req.key, req.op, req.params) as stream:
                self.counters["streams_relayed"] += 1
                await tls.send_all(frame(OPENED))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._client_gone, reader, nursery.cancel_scope)
                    item = await stream.receive()
                    while item is not None:
                        for piece in data_frames(*item):
                            await tls.send_all(piece)
                        self.counters["bytes_relayed"] += len(item[1])
                        item = await stream.receive()
                    await tls.send_all(encode_end(stream))
                    nursery.cancel_scope.cancel()
        except StreamError as exc:  # the local hub refused to open it
            self.counters["streams_refused"] += 1
            await self._refuse(tls, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters["clients_gone"] += 1

    async def _client_gone(self, reader: FrameReader, scope: trio.CancelScope) -> None:
        """The client sends nothing after its request: its end (or anything
        else) ends the stream, and leaving ``open_stream`` tells the node."""
        with contextlib.suppress(WireError, trio.BrokenResourceError, trio.ClosedResourceError):
            await reader.read()
        self.counters["clients_closed"] += 1
        scope.cancel()


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ---- the client: a stream another replica relays ----------------------------------


class PeerStream:
    """The ``PodStream`` face (``receive``, ``error``, ``result``) of a stream
    relayed by the replica at ``address``."""

    def __init__(self, reader: FrameReader, address: str) -> None:
        self._reader = reader
        self._address = address
        self.result: dict[str, Any] = {}
        self.ended = False

    def _abort(self, message: str) -> None:
        self.result = {"error": {"code": 502, "reason": "BadGateway", "message": message}}
        self.ended = True

    async def receive(self) -> tuple[int, bytes] | None:
        if self.ended:
            return None
        try:
            got = await self._reader.read()
        except WireError as exc:
            self._abort(f"the replica at {self._address} broke the peer protocol: {exc}")
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._abort(f"the connection to the replica at {self._address} broke: {exc}")
            return None
        if got is None:
            self._abort(f"the replica at {self._address} closed the stream")
            return None
        kind, payload = got
        if kind == DATA and payload[:1] in (b"\x01", b"\x02"):
            return payload[0], payload[1:]
        if kind == END:
            try:
                self.result = parse_end(payload)
            except WireError as exc:
                self._abort(str(exc))
            self.ended = True
            return None
        self._abort(f"the replica at {self._address} sent a malformed {kind!r} frame")
        return None

    def error(self) -> StreamError | None:
        return result_error(self.result)


async def _connect(
    address: str, ssl_context: ssl.SSLContext
) -> tuple[trio.SSLStream[trio.SocketStream], str]:
    """TLS to the peer port at ``address``; the replica id its certificate names."""
    host, port = _split_address(address)
    tcp = await trio.open_tcp_stream(host, port)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        tls = trio.SSLStream(tcp, ssl_context, server_hostname=None if _is_ip(host) else host)
        await tls.do_handshake()
        return tls, replica_from_peercert(tls.getpeercert())
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise


@contextlib.asynccontextmanager
async def open_peer_stream(
    address: str,
    ssl_context: ssl.SSLContext,
    request: OpenRequest,
    *,
    own_id: str,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> AsyncIterator[PeerStream]:
    """The stream ``request`` asks for, relayed by the replica at ``address``;
    closed (and the node's end with it) when the block exits. Failing to reach
    the replica is a 503, the replica's refusal is its StreamError."""
    what = f"the replica at {address} (holding node {request.node})"
    tls: trio.SSLStream[trio.SocketStream] | None = None
    try:
        with trio.fail_after(connect_timeout):
            tls, replica = await _connect(address, ssl_context)
            if replica == own_id:
                # A registration of ours that outlived our session with the node.
                raise StreamError(
                    503,
                    "ServiceUnavailable",
                    f"node {request.node} is not connected to any gateway replica",
                )
            await tls.send_all(request.encode())
            reader = FrameReader(tls, (OPENED, DATA, END))
            got = await reader.read()
    except trio.TooSlowError:
        await _close(tls)
        raise StreamError(
            503, "ServiceUnavailable", f"{what} did not answer within {connect_timeout:g} s"
        ) from None
    except (OSError, ValueError, trio.BrokenResourceError, WireError) as exc:
        await _close(tls)
        raise StreamError(503, "ServiceUnavailable", f"{what} is unreachable: {exc}") from None
    except PkiError as exc:
        await _close(tls)
        raise StreamError(502, "BadGateway", f"{address} is not a gateway replica: {exc}") from None
    except BaseException:
        await _close(tls)
        raise
    try:
        if got is None:
            raise StreamError(503, "ServiceUnavailable", f"{what} closed the connection")
        kind, payload = got
        if kind == END:
            try:
                err = result_error(parse_end(payload))
            except WireError as exc:
                raise StreamError(exc.code, exc.reason, str(exc)) from None
            raise err or StreamError(502, "BadGateway", f"{what} ended the stream unopened")
        if kind != OPENED:
            raise StreamError(502, "BadGateway", f"{what} sent {kind!r} before opening")
        yield PeerStream(reader, address)
    finally:
        await _close(tls)


async def _close(tls: trio.abc.Stream | None) -> None:
    """Close with a TLS close_notify (the other end sees a clean end, not a
    broken connection), never waiting long for it."""
    if tls is None:
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(_CLOSE_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await tls.aclose()
            return
        await trio.aclose_forcefully(tls)


# ---- routing --------------------------------------------------------------------------


class RoutedStreams:
    """``StreamOpener`` for the API on a replica: the local hub for a node
    connected here, else the replica ``owner_of(node)`` names, through its peer
    port (``peer_ssl`` from ``peer_client_ssl``). ``replica_id`` is this
    replica's: an owner record pointing back here means no replica holds it."""

    def __init__(
        self,
        local: LocalStreams,
        owner_of: OwnerOf,
        peer_ssl: ssl.SSLContext,
        replica_id: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        lookup_timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self._local = local
        self._owner_of = owner_of
        self._ssl = peer_ssl
        self._id = replica_id
        self._connect_timeout = connect_timeout
        self._lookup_timeout = lookup_timeout
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def _owner(self, node: str) -> str | None:
        try:
            with trio.fail_after(self._lookup_timeout):
                got = self._owner_of(node)
                if inspect.isawaitable(got):
                    got = await got
        except trio.TooSlowError:
            raise StreamError(
                503,
                "ServiceUnavailable",
                f"could not find the replica holding node {node}: "
                f"no answer within {self._lookup_timeout:g} s",
            ) from None
        except Exception as exc:
            log.warning("owner_of(%s) failed: %r", node, exc)
            raise StreamError(
                503, "ServiceUnavailable", f"could not find the replica holding node {node}: {exc}"
            ) from None
        return got

    @contextlib.asynccontextmanager
    async def open_stream(
        self, node: str, key: str, op: str, params: dict[str, Any]
    ) -> AsyncIterator[PodStream]:
        if node in self._local.connected_nodes():
            self.counters["local"] += 1
            async with self._local.open_stream(node, key, op, params) as stream:
                yield stream
            return
        address = await self._owner(node)
        if address is None:
            self.counters["not_connected"] += 1
            raise StreamError(
                503, "ServiceUnavailable", f"node {node} is not connected to any gateway replica"
            )
        opening = open_peer_stream(
            address,
            self._ssl,
            OpenRequest(node, key, op, params),
            own_id=self._id,
            connect_timeout=self._connect_timeout,
        )
        async with contextlib.AsyncExitStack() as stack:
            try:
                stream = await stack.enter_async_context(opening)
            except StreamError:
                self.counters["forward_failed"] += 1
                raise
            self.counters["forwarded"] += 1
            yield stream
