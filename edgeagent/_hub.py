"""The agent's link to the cloud: a TLS WebSocket client that resyncs on every
connect, applies changes to the metadata store before acking them, and drains
the outbox of reports until each is acked.

Reconnects back off exponentially with full jitter (capped), so a gateway
coming back is not hit by every board at once; with several gateway replicas
the client fails over among their hubs (``_failover``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import ssl
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import cbor2
import trio

import edgeproto
from edgeproto import AgentSync, Kind, Message, ProtocolError

from ._config import AgentConfig
from ._failover import Failover, full_jitter
from ._lean import import_trio_websocket, trim_heap
from ._meta import Meta, MetaError
from ._requests import HubUnavailable, RequestError, Requests
from ._streams import PodStreams, StreamServer
from ._version import VERSION

log = logging.getLogger(__name__)

__all__ = ["HubClient", "HubUnavailable", "RequestError", "full_jitter", "open_hub_connection"]

AGENT_VERSION = VERSION
_STREAM_KINDS = (Kind.STREAM_OPEN, Kind.STREAM_ACK, Kind.STREAM_END)
ACK_BATCH_SECONDS = 1.0  # acked outbox rows are deleted this long after the first ack

if TYPE_CHECKING:
    import trio_websocket as tws
else:
    tws = import_trio_websocket()


@contextlib.asynccontextmanager
async def open_hub_connection(
    hub_url: str, ssl_context: ssl.SSLContext, *, connect_timeout: float, max_message: int
) -> AsyncIterator[tws.WebSocketConnection]:
    """A WebSocket over TLS to the hub, opened layer by layer (TCP, TLS,
    WebSocket), each step under ``connect_timeout``; the stream is always closed on
    exit. Errors inside come out unwrapped from trio's exception groups."""
    url = urllib.parse.urlsplit(hub_url)
    if url.scheme != "wss" or not url.hostname:
        raise ProtocolError(f"hub URL must be wss://HOST:PORT/, got {hub_url!r}")
    host, port = url.hostname, url.port or 443
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host, https_compatible=True)
    try:
        with trio.fail_after(connect_timeout):
            await stream.do_handshake()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await _websocket_handshake(
                    nursery, stream, f"{host}:{port}", url.path or "/", max_message
                )
            try:
                yield ws
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise edgeproto.first_leaf(group, skip=(trio.Cancelled,)) from None
    finally:
        await trio.aclose_forcefully(stream)


class _WatchedStream(trio.abc.Stream):
    """The TLS stream as trio-websocket sees it, noting when the peer ends the
    connection. trio-websocket's client handshake waits for the server's answer
    even after its reader has seen the connection end (a TLS alert rejecting
    our certificate arrives after our side of the TLS 1.3 handshake is done):
    this is how the caller learns of it at once."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ended = trio.Event()
        self.why: BaseException | None = None

    def _end(self, why: BaseException | None) -> None:
        if not self.ended.is_set():
            self.why = why
            self.ended.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self._end(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self._end(exc)
            raise
        if not data:
            self._end(None)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _websocket_handshake(
    nursery: trio.Nursery, stream: trio.abc.Stream, host: str, path: str, max_message: int
) -> tws.WebSocketConnection:
    """The WebSocket upgrade over ``stream``; a peer that ends the connection
    before answering (a TLS alert, a reset, a close) fails it at once."""
    watched = _WatchedStream(stream)
    ws: tws.WebSocketConnection | None = None
    async with trio.open_nursery() as race:

        async def cancel_when_ended() -> None:
            await watched.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(cancel_when_ended)
        ws = await tws.wrap_client_stream(
            nursery,
            watched,  # type: ignore[arg-type]  # any trio Stream works; the hint is narrow
            host,
            path,
            message_queue_size=4,
            max_message_size=max_message,
        )
        race.cancel_scope.cancel()
    if ws is None:
        cause = watched.why.__cause__ if watched.why is not None else None
        detail = f": {cause}" if cause is not None else " (connection closed)"
        raise trio.BrokenResourceError(
            f"the gateway ended the connection during the handshake{detail}"
        ) from watched.why
    return ws


class _Retry(Exception):
    def __init__(self, after: float) -> None:
        super().__init__(f"gateway asked to retry in {after} s")
        self.after = after


# What ends a session with the hub: the hub's doing, or the network's (the
# client moves to another hub) or, for MetaError, this board's store.
_SESSION_ERRORS = (
    OSError,
    ssl.SSLError,
    tws.HandshakeError,
    tws.ConnectionClosed,
    trio.BrokenResourceError,
    trio.TooSlowError,
    ProtocolError,
    MetaError,  # a change could not be stored (full card): not acked, resent
)


class HubClient:
    def __init__(
        self,
        config: AgentConfig,
        meta: Meta,
        ssl_context: Callable[[], ssl.SSLContext],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = config
        self._meta = meta
        self._ssl_factory = ssl_context
        self._rng = rng or random.Random()
        # The hubs known and the one in use; loaded from the store by run().
        self.failover = Failover(
            config.hubs, base=config.backoff_base, cap=config.backoff_cap, rng=self._rng
        )
        self._hub_noted: str | None = None  # the hub last written to the store's state
        self.connected = False
        self.counters: Counter[str] = Counter()
        # The last resync stored: (mode, wall-clock time, seconds, bytes).
        self.last_resync: tuple[str, float, float, int] | None = None
        self._ids = 0
        self._inflight: set[int] = set()
        self._acked = trio.Event()
        # Reports the gateway answered "not now" (its store busy or full, this
        # node over its rate): kept in the outbox and sent again from
        # _resend_at on. They hold their place in the window meanwhile, so a
        # gateway in trouble slows the sender down instead of seeing the whole
        # outbox go by.
        self._retry: set[int] = set()
        self._resend_at = 0.0
        self._retry_round = 0  # rounds of resends since the last report went through
        # Acked outbox rows are deleted in batches, at most once a second: one
        # SQLite transaction per burst of acks, not one per report (SD cards). A
        # crash before the delete only resends reports the gateway already has,
        # which it applies again unchanged.
        self._acks: list[int] = []
        self._acks_waiting = trio.Event()
        self._synced = False
        self._storing = True  # False: a session on a read-only store applies nothing
        # Set by the app when edged runs: serves the cloud's logs/exec streams.
        self.pod_streams: PodStreams | None = None
        self._stream_server: StreamServer | None = None
        # Requests to the gateway (release pieces): open while a session is up.
        self._requests = Requests(self._next_id, (OSError, tws.ConnectionClosed))
        self._send_requests: Callable[[Message], Awaitable[None]] | None = None
        self._up = trio.Event()  # set while connected (a resync completed)
        self.resyncs = 0  # resyncs stored since this process started
        self._resynced = trio.Event()

    def statistics(self) -> dict[str, int]:
        return {
            "connected": int(self.connected),
            "inflight": len(self._inflight),
            "requests_in_flight": self._requests.in_flight,
            **self.counters,
        }

    async def request(
        self,
        op: str,
        res: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float,  # noqa: ASYNC109  # ends as HubUnavailable, the request forgotten
    ) -> dict[str, Any]:
        """Send ``request{op, res, body}`` on the current session and return
        the body of its ``response``; several may be in flight. Raises
        ``HubUnavailable`` at once when not connected (no resync completed on
        the current session), when the session ends before the answer, or
        after ``timeout`` seconds; ``RequestError`` when the gateway answers
        with an error."""
        return await self._requests.request(op, res, body, timeout=timeout)

    async def wait_connected(self) -> None:
        """Until a session is up and its resync completed."""
        while not (self.connected and self._requests.is_open):
            await self._up.wait()

    async def wait_resynced(self, after: int = 0) -> int:
        """Until more than ``after`` resyncs were stored since this process
        started; returns how many."""
        while self.resyncs <= after:
            await self._resynced.wait()
        return self.resyncs

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if up:
            self._up.set()
        elif self._up.is_set():
            self._up = trio.Event()

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    @property
    def hub_url(self) -> str:
        """The hub connected to, or being (or last) tried."""
        return self.failover.current

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._load_hubs()
        await self._meta.set_state(connected=False)
        while True:
            url = self.failover.current
            await self._note_hub(url)
            retry_after: float | None = None
            hub_failed = True
            why = "session ended"
            try:
                await self._session(url)
                hub_failed = False  # this agent ended it (its store became writable)
            except _Retry as exc:
                self.counters["told_to_retry"] += 1
                retry_after, why = exc.after, str(exc)
            except _SESSION_ERRORS as exc:
                self.counters["disconnects"] += 1
                hub_failed = not isinstance(exc, MetaError)
                why = _describe(exc)
            finally:
                if self.connected:
                    self._set_connected(False)
                    await self._meta.set_state(connected=False)
            first = self._synced or self.failover.attempt == 0  # of a run of failures
            delay = self.failover.ended(
                worked=self._synced, hub_failed=hub_failed, retry_after=retry_after
            )
            nxt = self.failover.current
            if nxt != url:
                self.counters["hub_moves"] += 1
            level = logging.DEBUG if not first else logging.WARNING if hub_failed else logging.INFO
            log.log(
                level,
                "hub %s: %s; %s in %.1f s",
                url,
                why,
                "retrying" if nxt == url else f"trying {nxt}",
                delay,
            )
            await trio.sleep(delay)

    async def _load_hubs(self) -> None:
        """The hub list and the hub in use, as the store has them. The
        enrollment's list (the enrolled hub first) is used instead when the store
        has none, or one learnt under another enrollment (the board joined again)."""
        enrolled = list(self._cfg.hubs)
        stored = await self._meta.get_state("hubs")
        try:
            hubs = list(edgeproto.check_hubs(stored))
        except ProtocolError:
            hubs = []
        if not hubs or await self._meta.get_state("hubs_enrolled") != enrolled:
            hubs = enrolled
            await self._meta.set_state(hubs=hubs, hubs_enrolled=enrolled)
        current = await self._meta.get_state("hub")
        self.failover = Failover(
            hubs,
            current if isinstance(current, str) else None,
            base=self._cfg.backoff_base,
            cap=self._cfg.backoff_cap,
            rng=self._rng,
        )

    async def _note_hub(self, url: str) -> None:
        """Write the hub about to be tried to the store, for ``edgeagent status``."""
        if url != self._hub_noted:
            await self._meta.set_state(hub=url)
            self._hub_noted = url

    async def _session(self, url: str) -> None:
        """One connection to the hub at ``url``; ``self._synced`` says whether a
        resync completed before it ended."""
        cfg = self._cfg
        self._inflight.clear()
        self._retry.clear()  # a new connection resends the whole outbox anyway
        self._synced = False
        async with open_hub_connection(
            url,
            self._ssl_factory(),
            connect_timeout=cfg.connect_timeout,
            max_message=cfg.max_message,
        ) as ws:
            await self._converse(ws, url)

    async def _converse(self, ws: tws.WebSocketConnection, url: str) -> None:
        cfg = self._cfg
        last_rev = int(await self._meta.get_state("last_rev", 0))
        sync = AgentSync(cfg.node, last_rev)
        await self._send(ws, sync.hello(now=trio.current_time(), agent_version=AGENT_VERSION))
        log.info("connected to %s as %s (last_rev %d)", url, cfg.node, last_rev)

        async def send(msg: Message) -> None:
            await self._send(ws, msg)

        self._storing = self._meta.storage_problem is None
        self._send_requests = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ack_writer)
                self._stream_server = StreamServer(
                    cfg.node, self._meta, self.pod_streams, send, nursery
                )
                nursery.start_soon(self._pinger, ws)
                nursery.start_soon(self._outbox_sender, ws)
                if not self._storing:
                    nursery.start_soon(self._resync_when_writable, nursery.cancel_scope)
                while True:
                    with trio.move_on_after(cfg.heartbeat * 3) as idle:
                        data = await ws.get_message()
                    if idle.cancelled_caught:
                        raise trio.TooSlowError("no message from the gateway for 3 heartbeats")
                    if await self._handle(ws, sync, data):
                        self._synced = True
        finally:
            self._requests.close("the session with the gateway ended")
            if self._up.is_set():
                self._up = trio.Event()
            with trio.CancelScope(shield=True):
                await self._flush_acks()

    async def _resync_when_writable(self, session: trio.CancelScope) -> None:
        """End a session begun on a read-only store once it is writable: the
        next one resyncs what this one could not store."""
        await self._meta.wait_writable()
        log.info("store writable again: reconnecting to resync")
        session.cancel()

    async def _flush_acks(self) -> None:
        if self._acks:
            seqs, self._acks = self._acks, []
            await self._meta.outbox_ack(seqs)

    async def _ack_writer(self) -> None:
        while True:
            await self._acks_waiting.wait()
            self._acks_waiting = trio.Event()
            await trio.sleep(ACK_BATCH_SECONDS)
            await self._flush_acks()

    async def _handle(
        self, ws: tws.WebSocketConnection, sync: AgentSync, data: bytes | str
    ) -> bool:
        """Handle one frame; True when it completed a resync."""
        if isinstance(data, str):
            self.counters["frames_malformed"] += 1
            return False
        try:
            msg = edgeproto.decode_message(data, max_size=self._cfg.max_message)
        except ProtocolError as exc:
            self.counters[f"frames_{exc.code}"] += 1
            log.warning("bad frame from the gateway: %s", exc)
            await self._send(ws, Message(Kind.ERROR, body={"code": exc.code, "message": str(exc)}))
            return False
        if msg.kind in (Kind.SNAPSHOT, Kind.CHANGE):
            return await self._sync(ws, sync, msg, len(data))
        if msg.kind is Kind.ACK and msg.parent is not None:
            self._on_ack(msg.parent, msg.body)
        elif msg.kind is Kind.RESPONSE and msg.parent is not None:
            if not self._requests.deliver(msg.parent, msg.body):
                self.counters["responses_late"] += 1
        elif msg.kind is Kind.ERROR:
            if msg.body.get("code") == "retry":
                after = msg.body.get("retry_after", 5)
                raise _Retry(float(after) if isinstance(after, int | float) else 5.0)
            self.counters["errors_from_gateway"] += 1
            log.warning("gateway error: %s", dict(msg.body))
        elif msg.kind is Kind.PONG:
            self.counters["pongs"] += 1
        elif msg.kind in _STREAM_KINDS and self._stream_server is not None:
            self._stream_server.handle(msg)
        else:
            self.counters["frames_unexpected"] += 1
        return False

    def _on_ack(self, seq: int, body: Any) -> None:
        """An answer to report ``seq``: done (applied or refused for good, its
        row is deleted), or "try again later" (its row stays and is resent)."""
        err = body.get("error")
        if isinstance(err, dict) and err.get("retry") is True:
            if seq not in self._inflight:
                return  # answered twice: it is resent already
            self._inflight.discard(seq)
            self.counters["reports_retry"] += 1
            after = body.get("retry_after")
            after = float(after) if isinstance(after, int | float) and after >= 0 else 1.0
            after = min(after, self._cfg.backoff_cap)
            now = trio.current_time()
            if not self._retry:  # the first of a round: back off further each round
                backoff = full_jitter(
                    self._retry_round, self._cfg.backoff_base, self._cfg.backoff_cap
                )
                self._resend_at = now + max(after, backoff)
                log.info("gateway asked to resend report %d later: %s", seq, err.get("message"))
            else:
                self._resend_at = max(self._resend_at, now + after)
            self._retry.add(seq)
        else:
            self._inflight.discard(seq)
            if err:
                self.counters["reports_rejected"] += 1
                log.warning("gateway rejected report %d: %s", seq, err)
            self._retry_round = 0
            self._acks.append(seq)
            self._acks_waiting.set()
        self._acked.set()
        self._acked = trio.Event()

    async def _sync(
        self, ws: tws.WebSocketConnection, sync: AgentSync, msg: Message, nbytes: int
    ) -> bool:
        try:
            batch = sync.receive(msg, nbytes=nbytes, now=trio.current_time())
        except ProtocolError as exc:
            self.counters[f"frames_{exc.code}"] += 1
            log.warning("bad sync message: %s", exc)
            await self._send(ws, Message(Kind.ERROR, body={"code": exc.code, "message": str(exc)}))
            if msg.kind is Kind.SNAPSHOT or msg.body.get("resync"):
                # Part of a resync: going on without it would apply the rest
                # of a snapshot as if it were the whole view (deleting what the
                # refused part held). The session ends; nothing was applied or
                # acked, and the next one resyncs from the same last_rev.
                self.counters["resyncs_refused"] += 1
                raise
            return False
        if batch is None:
            return False
        if batch.hubs is not None and self.failover.update(batch.hubs):
            log.info("gateway replicas' hubs: %s", ", ".join(batch.hubs))
        if not self._storing:
            # The store was read-only (a full card) when this session began:
            # nothing is applied, so nothing is acked; the session ends when the
            # store is writable, and the next one resyncs.
            self.counters["sync_batches_not_stored"] += 1
            if batch.resync is None:
                return False
            self._session_up()
            log.warning("resync received but not stored: the store is read-only")
            return True
        extra: dict[str, Any] = {}
        if batch.hubs is not None:
            extra["hubs"] = list(batch.hubs)  # one row: replaced in the batch's transaction
        if batch.resync is not None:
            r = batch.resync
            extra["last_resync"] = {
                "mode": r.mode,
                "bytes": r.bytes,
                "seconds": round(r.seconds, 4),
                "objects": r.objects,
                "at": time.time(),
            }
            extra["connected"] = True
        await self._meta.apply(batch, **extra)
        if batch.rev is not None:
            await self._send(ws, sync.persisted(batch.rev))
        if batch.resync is not None:
            self.resyncs += 1
            self._resynced.set()
            self._resynced = trio.Event()
            self._session_up()
            r = batch.resync
            self.last_resync = (r.mode, time.time(), r.seconds, r.bytes)
            self.counters[f"resyncs_{r.mode}"] += 1
            log.info(
                "resync (%s): %d objects, %d bytes in %.3f s", r.mode, r.objects, r.bytes, r.seconds
            )
            trim_heap()  # a snapshot's decoding garbage would otherwise stay resident
            return True
        return False

    def _session_up(self) -> None:
        """A resync completed: the session is up, requests may be sent on it."""
        if not self.connected and self._send_requests is not None:
            self._requests.open(self._send_requests)
        self._set_connected(True)

    async def _pinger(self, ws: tws.WebSocketConnection) -> None:
        while True:
            await trio.sleep(self._cfg.heartbeat)
            await self._send(ws, Message(Kind.PING, id=self._next_id()))

    async def _outbox_sender(self, ws: tws.WebSocketConnection) -> None:
        last_sent = 0
        while True:
            # Taken before anything below awaits: an answer arriving meanwhile
            # (one that asks to resend, say) sets it, and the waits end at once.
            answered = self._acked
            if self._retry and trio.current_time() >= self._resend_at:
                # Go back to the oldest report to resend; what was sent since
                # and is still in flight or acked is skipped below.
                last_sent = min(last_sent, min(self._retry) - 1)
                self._retry.clear()
                self._retry_round += 1
            # No resend pending: wait forever (until woken).
            wake = self._resend_at if self._retry else math.inf
            room = self._cfg.outbox_window - len(self._inflight) - len(self._retry)
            if room <= 0:
                with trio.move_on_at(wake):
                    await answered.wait()
                continue
            seen_gen = self._meta.outbox_generation
            items = await self._meta.outbox_after(last_sent, room)
            done = set(self._acks)  # acked, not deleted yet
            for it in items:
                last_sent = it.seq
                if it.seq in self._inflight or it.seq in done:
                    continue
                try:
                    body = cbor2.loads(it.body)
                except Exception:  # a corrupt row must not block the queue
                    log.warning("dropping unreadable outbox entry %s", it.key)
                    await self._meta.outbox_ack([it.seq])
                    continue
                self._inflight.add(it.seq)
                await self._send(
                    ws, Message(Kind.REPORT, id=it.seq, res=it.object_key, op=it.op, body=body)
                )
            if not items:
                with trio.move_on_at(wake):
                    await self._wait_outbox_or_answer(seen_gen, answered)

    async def _wait_outbox_or_answer(self, generation: int, answered: trio.Event) -> None:
        """Until a report is enqueued after ``generation`` or ``answered`` is set
        (a "try again" sets a time to resend)."""
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, functools.partial(self._meta.wait_outbox, generation))
            nursery.start_soon(first, answered.wait)

    async def _send(self, ws: tws.WebSocketConnection, msg: Message) -> None:
        await ws.send_message(edgeproto.encode_message(msg, max_size=self._cfg.max_message))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, tws.ConnectionClosed) and exc.reason is not None:
        return f"closed ({exc.reason.code} {exc.reason.reason or ''})".strip()
    return f"{type(exc).__name__}: {exc}"
