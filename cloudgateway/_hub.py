"""The hub: a TLS WebSocket server that keeps every connected node in sync.

Per connection: mTLS handshake (the client certificate names the node), then
``hello{node, last_rev}`` → admission → a resync (delta or snapshot) → live
changes, while the node's reports and requests are answered. This module is the
transport, admission and the session's lifetime; keeping views in sync is
``_hubsync``, applying reports ``_reports``, streams ``_streams``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio
import trio_websocket as tws

import edgeproto
from edgeio import Histogram
from edgeproto import Kind, Message, ProtocolError

from ._accept import LazyPeer, close_socket, peer_name, serve_sockets
from ._failures import FailureLog
from ._health import NodeHealth
from ._hubsync import CLOSE_TRY_AGAIN, CONNECTION_ENDED, HubSync, Session
from ._pki import PkiError, cert_issued_at, node_from_peercert
from ._releases import Releases
from ._reports import ReportLimits, Reports
from ._revocation import REVOCATIONS, revoked_at, revoked_node
from ._store import Store, StoreError, SubscriptionLost
from ._streams import NodeStream, StreamError
from ._tls import SocketTLSStream, accept_tls, client_hello_arrived

log = logging.getLogger(__name__)

__all__ = ["Hub", "HubConfig"]

CLOSE_POLICY = 1008
CLOSE_REPLACED = 4000
_CONNECTION_ENDED = CONNECTION_ENDED


@dataclass(frozen=True, slots=True)
class HubConfig:
    host: str = "0.0.0.0"
    port: int = 10000
    max_message: int = edgeproto.DEFAULT_MAX_MESSAGE
    # Admission: a connection must have sent its whole ClientHello this soon
    # after accept (it waits for it without a handshake slot, so a long wait
    # is cheap: clients slowed by a connect storm of their own need it), and
    # finish the TLS handshake within ``handshake_timeout`` of accept, time
    # queued for a handshake slot included.
    client_hello_timeout: float = 10.0
    handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    idle_timeout: float = 45.0  # no frame at all for this long → close (agents ping every 10 s)
    max_handshakes: int = 64  # concurrent TLS handshakes; more wait, already accepted
    # With every handshake slot taken and a client waiting for one, the slot
    # held longest goes, if held this long: a client that sent its ClientHello
    # and stalls (a replayed hello costs an attacker nothing) cannot keep
    # boards out until ``handshake_timeout``.
    handshake_grace: float = 1.0
    # Half-open connections (not yet through TLS) allowed beyond the handshake
    # slots; a newcomer past them sheds the OLDEST half-open one (a flood's idle
    # sockets go first; boards retrying are the newest).
    max_handshake_queue: int = 2048
    max_resyncs: int = 32  # concurrent resync computations
    max_waiting: int = 4096  # resyncs allowed to queue; the rest are told to come back
    progress_interval: float = 300.0  # idle nodes get their last_rev advanced this often
    senders: int = 16  # tasks sending live changes, shared by all sessions
    send_timeout: float = 30.0  # a node taking longer to take a change is disconnected


class _HalfOpen:
    """A connection on its way through admission; cancelled to shed it.
    ``scope`` is dropped when it leaves admission (``done``)."""

    __slots__ = ("done", "fd", "hello", "preempted", "scope", "shed", "slot_since")

    def __init__(self, deadline: float) -> None:
        self.scope: trio.CancelScope | None = trio.CancelScope(deadline=deadline)
        self.hello = False  # its ClientHello is in: waiting for, or in, a handshake
        self.slot_since: float | None = None  # holds a handshake slot; made progress since
        self.fd = -1  # its socket, while it holds a slot
        self.shed = False
        self.preempted = False
        self.done = False


class _Waiter:
    __slots__ = ("gone", "granted")

    def __init__(self) -> None:
        self.granted = trio.Event()
        self.gone = False  # cancelled while waiting; left in the stack lazily


class _Slots:
    """Handshake slots, handed to the NEWEST waiter first. Under a flood the
    clients queued longest are the flood's, or have given up; a board that
    just connected is served next instead of after all of them. Without a
    queue (the usual case) this is a plain counter."""

    def __init__(self, total: int) -> None:
        self.free = total
        self.waiting = 0
        self._stack: list[_Waiter] = []
        self._gone = 0

    async def acquire(self) -> None:
        if self.free:
            self.free -= 1
            return
        waiter = _Waiter()
        self._stack.append(waiter)
        self.waiting += 1
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():
                self.release()  # handed over as we were cancelled: pass it on
            else:
                waiter.gone = True
                self._gone += 1
                if self._gone > len(self._stack) // 2:
                    self._stack = [w for w in self._stack if not w.gone]
                    self._gone = 0
            raise
        finally:
            self.waiting -= 1

    def release(self) -> None:
        stack = self._stack
        while stack:
            waiter = stack.pop()
            if not waiter.gone:
                waiter.granted.set()
                return
            self._gone -= 1
        self.free += 1


class Hub:
    def __init__(
        self,
        store: Store,
        ssl_context: ssl.SSLContext,
        health: NodeHealth,
        config: HubConfig = HubConfig(),
        *,
        report_limits: ReportLimits | None = None,
        hub_urls: Callable[[], Sequence[str]] | None = None,
        releases: Releases | None = None,
    ) -> None:
        """``hub_urls``: the hub URL (``wss://HOST:PORT/``) of every live
        replica, sent to each node with its resync on every connect;
        ``releases``: the agent releases boards may fetch (``_releases``)."""
        self._store = store
        self._ssl = ssl_context
        self._health = health
        self.config = config
        self.counters: Counter[str] = Counter()
        self._sync = HubSync(store, config, self.counters, hub_urls=hub_urls)
        self._sessions = self._sync.sessions
        self._reports = Reports(
            store, self.counters, report_limits or ReportLimits(), releases=releases
        )
        self.usage = self._reports.usage  # nodes' latest resource usage (`top`)
        self._resyncs = trio.CapacityLimiter(config.max_resyncs)
        self._handshakes = _Slots(config.max_handshakes)
        # Half-open connections in accept order; those done leave lazily (at
        # the front), so shedding the oldest is O(1) amortized.
        self._half_open: deque[_HalfOpen] = deque()
        self._half_open_count = 0
        self._slot_holders: deque[_HalfOpen] = deque()  # by slot_since; lazily pruned
        self._slot_wanted = trio.lowlevel.ParkingLot()  # a client waits for a slot
        self._waiting = 0
        self._resync_seconds = 0.01  # moving average, for retry_after estimates
        self._stream_ids = 0
        self._failures = FailureLog(log)
        self.port = 0

    @property
    def report_limits(self) -> ReportLimits:
        return self._reports.limits

    def report_outcomes(self) -> dict[tuple[str, str], int]:
        """Reports by (op, outcome): "acked" or the reason it was not."""
        return dict(self._reports.outcomes)

    def upgrade_report_states(self) -> dict[str, int]:
        """Upgrade reports applied, by the state reported."""
        return dict(self._reports.upgrades.report_states)

    def resync_histograms(self) -> dict[str, tuple[Histogram, Histogram]]:
        """Resyncs by mode: (seconds, bytes sent) histograms."""
        sync = self._sync
        return {m: (sync.resync_seconds[m], sync.resync_bytes[m]) for m in sync.resync_seconds}

    def statistics(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "resyncs_running": self._resyncs.borrowed_tokens,
            "resyncs_waiting": self._waiting,
            "half_open": self._half_open_count,
            "handshakes_waiting": self._handshakes.waiting,
            **self.counters,
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._sync.run)
            nursery.start_soon(self._preempt_stalled_handshakes)
            await nursery.start(self._watch_revocations)
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
            self.port = listeners[0].socket.getsockname()[1]
            log.info("hub listening on %s:%d", self.config.host, self.port)
            task_status.started(self.port)
            await serve_sockets(self._handle_tcp, listeners, handler_nursery=nursery)

    # ---- connections ----------------------------------------------------------------

    async def _handle_tcp(self, sock: socket.socket) -> None:
        admitted = await self._admit_tls(sock)
        if admitted is None:
            return
        stream, peer = admitted
        try:
            cert = stream.getpeercert()
            node = node_from_peercert(cert)
            revoked = await self._revoked(node, cert_issued_at(cert))
        except (PkiError, StoreError) as exc:
            self.counters["tls_rejected"] += 1
            log.debug("TLS peer %s refused: %s", peer, exc)
            await trio.aclose_forcefully(stream)
            return
        try:
            async with trio.open_nursery() as nursery:
                request = await tws.wrap_server_stream(
                    nursery, stream, message_queue_size=4, max_message_size=self.config.max_message
                )
                ws = await request.accept()
                _shed_handshake(ws)
                try:
                    if revoked:  # told why after the upgrade, so the agent can log it
                        await ws.aclose(CLOSE_POLICY, "certificate revoked")
                        return
                    await self._serve_node(node, ws, peer, cert_issued_at(cert))
                finally:
                    await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            leaf = edgeproto.first_leaf(exc, skip=(trio.Cancelled,))
            if isinstance(leaf, _CONNECTION_ENDED):
                log.debug("node %s (%s) connection ended: %s", node, peer, leaf)
            elif isinstance(exc, Exception):
                # A bug of ours or a peer's input nobody foresaw: it costs this
                # connection (the agent reconnects), never the gateway.
                self.counters["connections_failed"] += 1
                self._failures.failed(f"connection of node {node} ({peer}) failed", leaf)
            else:
                raise  # cancelled (shutting down), KeyboardInterrupt...
        finally:
            await trio.aclose_forcefully(stream)

    async def _admit_tls(self, sock: socket.socket) -> tuple[SocketTLSStream, str] | None:
        """TLS on an accepted connection (and the peer's name), or None (closed)
        if it is shed, too slow or refused. A connection takes a handshake slot
        only once its whole ClientHello is in, so idle or trickling sockets hold
        none; a connect storm queues (cheap) for the slots instead of running
        thousands of handshakes at once, each slower than its client's patience.
        Until then a connection costs its socket, this task and a ``_HalfOpen``."""
        config = self.config
        if self._half_open_count >= config.max_handshakes + config.max_handshake_queue:
            self._shed_oldest()
        accepted = trio.current_time()
        pending = _HalfOpen(accepted + config.client_hello_timeout)
        self._half_open_count += 1
        self._half_open.append(pending)
        scope = pending.scope
        assert scope is not None
        stream: SocketTLSStream | None = None
        name: object = LazyPeer(sock)  # for logs; the TLS socket takes the descriptor
        try:
            with scope:
                if not await client_hello_arrived(sock):
                    self.counters["closed_half_open"] += 1
                    log.debug("%s closed before its ClientHello", name)
                    return None
                pending.hello = True
                scope.deadline = accepted + config.handshake_timeout
                name = peer = peer_name(sock)
                _tune_tcp(sock)
                stream = accept_tls(sock, self._ssl)
                slots = self._handshakes
                if not slots.free:
                    self._slot_wanted.unpark_all()
                await slots.acquire()
                try:
                    pending.fd = stream.fileno()
                    pending.slot_since = trio.current_time()
                    self._slot_holders.append(pending)
                    if slots.waiting:
                        self._slot_wanted.unpark_all()  # a holder to time, for those waiting
                    await stream.do_handshake()
                finally:
                    slots.release()
                    pending.slot_since = None
                    holders = self._slot_holders
                    while holders and holders[0].slot_since is None:
                        holders.popleft()
                admitted, stream = stream, None
                return admitted, peer
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            self.counters["tls_rejected"] += 1
            log.debug("TLS handshake with %s failed: %s", name, exc)
        finally:
            self._leave_half_open(pending)
            if pending.shed:  # the oldest half-open connection when a new one came
                self.counters["connections_shed"] += 1
            elif pending.preempted:
                self.counters["handshakes_preempted"] += 1
                log.debug("%s held a handshake slot longest while another waited", name)
            elif scope.cancelled_caught and not pending.hello:
                self.counters["client_hello_timeouts"] += 1
                log.debug(
                    "%s sent no ClientHello within %.1f s",
                    name,
                    config.client_hello_timeout,
                )
            elif scope.cancelled_caught:
                self.counters["handshake_timeouts"] += 1
                log.debug(
                    "TLS handshake with %s not done within %.1f s",
                    name,
                    config.handshake_timeout,
                )
            if stream is not None:
                await trio.aclose_forcefully(stream)
            close_socket(sock)  # unless TLS took it over (its descriptor is then -1)
        return None

    def _shed_oldest(self) -> None:
        queue = self._half_open
        while queue:
            oldest = queue.popleft()
            if not oldest.done:
                oldest.shed = True
                assert oldest.scope is not None
                oldest.scope.cancel()
                self._leave_half_open(oldest)
                return

    async def _preempt_stalled_handshakes(self) -> None:
        """While a client waits for a handshake slot, cancel the handshake that
        has waited longest on its client, once for ``handshake_grace``. One
        whose client has sent bytes not yet read is making progress: its
        clock restarts."""
        holders = self._slot_holders
        while True:
            if not holders or not self._handshakes.waiting:
                await self._slot_wanted.park()
                continue
            oldest = holders[0]
            if oldest.scope is None or oldest.slot_since is None:
                holders.popleft()  # shed meanwhile: its slot comes back as it unwinds
                continue
            due = oldest.slot_since + self.config.handshake_grace
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            holders.popleft()
            if _readable(oldest.fd):
                # Its client has answered and we have not read it yet (a busy
                # gateway, not a stalled client): progress, to the back.
                oldest.slot_since = trio.current_time()
                holders.append(oldest)
                continue
            oldest.preempted = True
            oldest.scope.cancel()

    def _leave_half_open(self, pending: _HalfOpen) -> None:
        if pending.done:
            return
        pending.done = True
        pending.scope = None
        self._half_open_count -= 1
        queue = self._half_open
        while queue and queue[0].done:
            queue.popleft()

    # ---- revoked nodes ---------------------------------------------------------------

    async def _revoked(self, node: str, issued_at: float) -> bool:
        """Was this certificate of ``node`` issued at or before its revocation?"""
        at = await revoked_at(self._store, node)
        if at is not None and issued_at <= at:
            self.counters["certificates_revoked_refused"] += 1
            log.info(
                "node %s: certificate issued before its revocation; refused",
                node,
                extra={"node": node},
            )
            return True
        return False

    async def revoke(self, node: str) -> None:
        """Close ``node``'s live session, if any, as revoked."""
        session = self._sessions.get(node)
        if session is None:
            return
        self.counters["sessions_revoked"] += 1
        log.info("node %s revoked; closing its session", node, extra={"node": node})
        with contextlib.suppress(*_CONNECTION_ENDED):
            await session.ws.aclose(CLOSE_POLICY, "certificate revoked")

    async def _watch_revocations(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """A revocation written to the store (by this gateway or another sharing
        it) closes the node's live session here."""
        started = False
        async with trio.open_nursery() as nursery:
            since = time.time()
            while True:
                with self._store.subscribe() as sub:
                    if not started:
                        task_status.started()
                        started = True
                    else:  # events were lost: revocations since then, from the store
                        records, _ = await self._store.list(REVOCATIONS + "/")
                        for rec in records:
                            node = revoked_node(rec.key)
                            if node is not None and rec.value.get("revokedAt", 0) >= since:
                                nursery.start_soon(self.revoke, node)
                    since = time.time()
                    try:
                        async for ev in sub:
                            node = revoked_node(ev.key)
                            if node is not None and ev.type != "DELETED":
                                nursery.start_soon(self.revoke, node)
                    except SubscriptionLost:
                        log.warning("revocation watch fell behind; checking the store")

    async def _serve_node(
        self, node: str, ws: tws.WebSocketConnection, peer: str, issued_at: float
    ) -> None:
        hello = await self._receive_hello(node, ws)
        if hello is None:
            return
        last_rev = hello.body.get("last_rev", 0)
        del hello  # nothing an idle session's frame needs to keep
        if type(last_rev) is not int or last_rev < 0:
            await self._send_error(ws, "bad-field", "hello.last_rev must be a non-negative int")
            return
        if not await self._admit():
            retry = self._retry_after()
            self.counters["resyncs_deferred"] += 1
            await self._send(
                ws,
                Message(
                    Kind.ERROR,
                    body={"code": "retry", "message": "gateway busy", "retry_after": retry},
                ),
            )
            await ws.aclose(CLOSE_TRY_AGAIN, "busy, retry later")
            return
        session = Session(node, ws)
        old = self._sessions.get(node)
        if old is not None:
            self.counters["sessions_replaced"] += 1
            log.info(
                "node %s reconnected from %s; closing its previous session",
                node,
                peer,
                extra={"node": node},
            )
            await old.ws.aclose(CLOSE_REPLACED, "replaced by a newer connection")
            del old  # or this frame keeps the replaced connection alive
        self._sessions[node] = session
        try:
            try:
                took = await self._sync.resync(session, last_rev)
            finally:
                self._resyncs.release()
            self._resync_seconds = 0.9 * self._resync_seconds + 0.1 * took
            if await self._revoked(node, issued_at):
                # Revoked while this connection was resyncing: Ready would
                # re-create the deleted Node.
                await ws.aclose(CLOSE_POLICY, "certificate revoked")
                return
            await self._health.connected(node)
            log.info(
                "node %s connected from %s (last_rev %d)",
                node,
                peer,
                last_rev,
                extra={"node": node},
            )
            self._sync.go_live(session)
            await self._reader(session)
        finally:
            for stream in (session.streams or {}).values():
                stream.abort(502, "BadGateway", f"node {node} disconnected")
            self._sync.forget(session)
            log.info("node %s disconnected", node, extra={"node": node})

    async def _receive_hello(self, node: str, ws: tws.WebSocketConnection) -> Message | None:
        with trio.move_on_after(self.config.hello_timeout) as scope:
            while True:
                msg = await self._receive(ws)
                if msg is None:
                    continue
                if msg.kind is not Kind.HELLO:
                    await self._send_error(
                        ws, "unexpected", f"expected hello, got {msg.kind.value}"
                    )
                    continue
                claimed = msg.body.get("node")
                if claimed != node:
                    self.counters["forbidden"] += 1
                    log.warning("certificate for node %s said hello as %r", node, claimed)
                    await self._send_error(
                        ws, "forbidden", f"this certificate is for node {node!r}"
                    )
                    await ws.aclose(CLOSE_POLICY, "node identity mismatch")
                    return None
                return msg
        if scope.cancelled_caught:
            await ws.aclose(CLOSE_POLICY, "no hello")
        return None

    async def _admit(self) -> bool:
        """Take a resync slot, queueing if a few are ahead; False means come back later."""
        try:
            self._resyncs.acquire_nowait()
        except trio.WouldBlock:
            if self._waiting >= self.config.max_waiting:
                return False
            self._waiting += 1
            try:
                await self._resyncs.acquire()
            finally:
                self._waiting -= 1
        return True

    def _retry_after(self) -> float:
        backlog = self._waiting + self._resyncs.borrowed_tokens
        base = 1.0 + backlog * self._resync_seconds / max(1, self.config.max_resyncs)
        return round(min(60.0, base * random.uniform(1.0, 2.0)), 2)

    async def _reader(self, session: Session) -> None:
        ws = session.ws
        msg: Message | None = None
        while True:
            msg = None  # not kept while idle
            with trio.move_on_after(self.config.idle_timeout) as scope:
                msg = await self._receive(ws)
            if scope.cancelled_caught:
                self.counters["idle_closed"] += 1
                log.info(
                    "node %s silent for %.0f s; closing", session.node, self.config.idle_timeout
                )
                await ws.aclose(CLOSE_POLICY, "idle")
                return
            self._health.heartbeat(session.node)
            if msg is None:
                continue
            if msg.kind is Kind.PING:
                await self._send(
                    ws, Message(Kind.PONG, parent=msg.id, body={"rev": session.sent_rev})
                )
            elif msg.kind is Kind.ACK:
                self.counters["acks"] += 1
            elif msg.kind is Kind.REPORT:
                body = await self._reports.handle(session.node, msg)
                await self._send(ws, Message(Kind.ACK, parent=msg.id, body=body))
            elif msg.kind is Kind.REQUEST:
                body = await self._reports.request(session.node, session.sent, msg)
                await self._send(ws, Message(Kind.RESPONSE, parent=msg.id, body=body))
            elif msg.kind in (Kind.STREAM_DATA, Kind.STREAM_END):
                self._stream_message(session, msg)
            elif msg.kind is Kind.ERROR:
                self.counters["errors_from_nodes"] += 1
                log.warning(
                    "node %s reported an error: %s",
                    session.node,
                    dict(msg.body),
                    extra={"node": session.node},
                )
            else:
                self.counters["frames_unexpected"] += 1
                await self._send_error(
                    ws, "unexpected", f"{msg.kind.value} not expected from a node"
                )

    # ---- streams (logs, exec) --------------------------------------------------------

    def connected_nodes(self) -> list[str]:
        return list(self._sessions)

    @contextlib.asynccontextmanager
    async def open_stream(
        self, node: str, key: str, op: str, params: dict[str, Any]
    ) -> AsyncIterator[NodeStream]:
        """Open a stream on ``node`` about the object ``key``; it is ended (and
        the node told) when the block exits."""
        session = self._sessions.get(node)
        if session is None:
            raise StreamError(
                503, "ServiceUnavailable", f"node {node} is not connected to this gateway"
            )
        self._stream_ids += 1
        sid = self._stream_ids
        ws = session.ws

        async def send(msg: Message) -> None:
            await self._send(ws, msg)

        stream = NodeStream(sid, send)
        if session.streams is None:
            session.streams = {}
        session.streams[sid] = stream
        self.counters["streams_opened"] += 1
        try:
            try:
                await send(Message(Kind.STREAM_OPEN, id=sid, res=key, op=op, body=params))
            except _CONNECTION_ENDED as exc:
                raise StreamError(503, "ServiceUnavailable", f"node {node} went away") from exc
            yield stream
        finally:
            session.streams.pop(sid, None)
            if not stream.ended:
                with trio.move_on_after(1, shield=True):
                    with contextlib.suppress(*_CONNECTION_ENDED):
                        await send(Message(Kind.STREAM_END, parent=sid, body={}))

    def _stream_message(self, session: Session, msg: Message) -> None:
        stream = (session.streams or {}).get(msg.parent or 0)
        if stream is None:
            self.counters["stream_frames_unknown"] += 1  # e.g. output after we ended it
            return
        if not stream.deliver(msg):
            self.counters["stream_frames_bad"] += 1

    # ---- framing --------------------------------------------------------------------

    async def _receive(self, ws: tws.WebSocketConnection) -> Message | None:
        """One message, or None after answering a bad frame with an error."""
        try:
            data = await ws.get_message()
        except tws.ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == 1009:
                self.counters["frames_oversized"] += 1
            raise
        if isinstance(data, str):
            self.counters["frames_malformed"] += 1
            await self._send_error(ws, "malformed", "text frames are not part of the protocol")
            return None
        try:
            return edgeproto.decode_message(data, max_size=self.config.max_message)
        except ProtocolError as exc:
            self.counters[f"frames_{exc.code}"] += 1
            log.debug("bad frame: %s", exc)
            if exc.message_kind == Kind.REPORT and exc.message_id is not None:
                # Answered by its id, final: the agent's outbox lets go of it
                # instead of holding a slot of its window for good.
                self.counters["reports_malformed"] += 1
                self.counters["reports_rejected"] += 1
                self._reports.outcomes["unknown", "malformed"] += 1
                error = {"code": 400, "message": f"undecodable report: {exc}"[:1000]}
                await self._send(
                    ws, Message(Kind.ACK, parent=exc.message_id, body={"error": error})
                )
            else:
                await self._send_error(ws, exc.code, str(exc))
            return None

    async def _send(self, ws: tws.WebSocketConnection, msg: Message) -> None:
        await ws.send_message(edgeproto.encode_message(msg, max_size=self.config.max_message))

    async def _send_error(self, ws: tws.WebSocketConnection, code: str, message: str) -> None:
        await self._send(ws, Message(Kind.ERROR, body={"code": code, "message": message}))


class _SpentHandshake:
    """Stands in for wsproto's HTTP upgrade machinery once the connection is open."""

    __slots__ = ()

    def events(self) -> Iterator[Any]:
        return iter(())


_SPENT = _SpentHandshake()


def _shed_handshake(ws: tws.WebSocketConnection) -> None:
    """Let go of the upgrade's h11 state. wsproto keeps its handshake object (an
    h11 connection, its buffers and the client's request) for the connection's
    whole life although it only reads it while upgrading: ~2.9 KiB per idle
    node. Once wsproto holds the open connection it asks the handshake for
    nothing but (no) pending events. Reaches into trio-websocket's ``_wsproto``;
    left alone if a version lays things out differently (pinned in
    pyproject.toml, checked by tests/cloudgateway/test_hub.py)."""
    proto = getattr(ws, "_wsproto", None)
    if proto is not None and getattr(proto, "connection", None) is not None:
        proto.handshake = _SPENT


def _readable(fd: int) -> bool:
    """Bytes (or the end of the stream) wait unread on ``fd``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _tune_tcp(sock: socket.socket) -> None:
    """What ``trio.SocketStream`` sets, for a connection taken without one:
    no Nagle delay, and at most 16 KiB unsent in the kernel before a writer waits."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14)
