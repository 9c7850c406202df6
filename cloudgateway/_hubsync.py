"""Keeping connected nodes in sync: the hub's store-events → nodes half.

The session keeps the membership last sent (``key -> spec_rev``); any store
event that can touch the node's view marks the session dirty and queues it for
one of a few shared sender tasks, which recomputes the view and sends only the
difference. Dirty flags coalesce bursts and give backpressure for free: a slow
node just gets fewer, larger changes. Idle sessions cost no task of their own
(most of a gateway's thousands of nodes are idle at any moment).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio
import trio_websocket as tws

import edgeproto
from edgeio import BYTES_BUCKETS, SECONDS_BUCKETS, Histogram
from edgeproto import Message, ProtocolError

from ._store import Store, SubscriptionLost
from ._view import View, ViewSync, plan_node_sync

if TYPE_CHECKING:
    from ._hub import HubConfig
    from ._streams import NodeStream

log = logging.getLogger(__name__)

__all__ = ["CLOSE_TRY_AGAIN", "CONNECTION_ENDED", "HubSync", "Session"]

CLOSE_TRY_AGAIN = 1013

CONNECTION_ENDED = (
    tws.ConnectionClosed,
    trio.BrokenResourceError,
    tws.HandshakeError,
    trio.ClosedResourceError,
)


class Session:
    __slots__ = (
        "dirty",
        "live",
        "node",
        "progress",
        "progress_at",
        "queued",
        "refs",
        "sent",
        "sent_rev",
        "streams",
        "ws",
    )

    def __init__(self, node: str, ws: tws.WebSocketConnection) -> None:
        self.node = node
        self.ws = ws
        self.sent: dict[str, int] = {}
        self.sent_rev = 0
        self.refs: frozenset[str] = frozenset()
        self.dirty = False  # the view may have changed since it was last sent
        self.live = False  # resynced, not yet disconnected: live changes may flow
        self.queued = False  # waiting for, or held by, a sender task
        self.progress = False  # send an empty change to advance the node's last_rev
        self.progress_at = 0.0  # when last_rev was last advanced
        self.streams: dict[int, NodeStream] | None = None  # made on first use: most have none


class HubSync:
    """The sessions of connected nodes and what keeps their views current."""

    def __init__(
        self,
        store: Store,
        config: HubConfig,
        counters: Counter[str],
        *,
        hub_urls: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self.counters = counters
        self._hub_urls = hub_urls
        self._hubs_problem = ""  # the last reason the list was not sent, logged once
        self.sessions: dict[str, Session] = {}
        self._watchers: dict[str, set[str]] = {}  # key -> nodes whose view depends on it
        self._ready: deque[Session] = deque()  # dirty sessions, each at most once
        self._ready_lot = trio.lowlevel.ParkingLot()
        # Resyncs by mode (snapshot, delta): how long each took and what it sent.
        self.resync_seconds: dict[str, Histogram] = {}
        self.resync_bytes: dict[str, Histogram] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._dispatch)
            for _ in range(self.config.senders):
                nursery.start_soon(self._sender)
            nursery.start_soon(self._progress_ticker)
            task_status.started()

    # ---- store events → dirty sessions -------------------------------------------------

    async def _dispatch(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        while True:
            with self._store.subscribe() as sub:
                if not started:
                    task_status.started()
                    started = True
                else:
                    for s in self.sessions.values():
                        self.mark_dirty(s)
                try:
                    async for ev in sub:
                        self._route(ev.key, ev.record.node, ev.prev.node if ev.prev else None)
                except SubscriptionLost:
                    self.counters["dispatch_resubscribed"] += 1
                    log.warning("hub fell behind the store's events; resyncing all sessions")

    def _route(self, key: str, node: str | None, prev_node: str | None) -> None:
        for n in (node, prev_node):
            if n is not None and (s := self.sessions.get(n)) is not None:
                self.mark_dirty(s)
        for n in self._watchers.get(key, ()):
            if (s := self.sessions.get(n)) is not None:
                self.mark_dirty(s)

    def mark_dirty(self, session: Session) -> None:
        session.dirty = True
        if session.live and not session.queued:
            session.queued = True
            self._ready.append(session)
            self._ready_lot.unpark()

    def watch(self, session: Session, view: View) -> None:
        old, new = session.refs, view.refs
        for k in old - new:
            nodes = self._watchers.get(k)
            if nodes is not None:
                nodes.discard(session.node)
                if not nodes:
                    del self._watchers[k]
        for k in new - old:
            self._watchers.setdefault(k, set()).add(session.node)
        session.refs = new

    # ---- a session's life ---------------------------------------------------------------

    async def resync(self, session: Session, last_rev: int) -> float:
        """Bring the node up to date from ``last_rev`` (a delta or a snapshot);
        returns the seconds it took."""
        t0 = trio.current_time()
        plan = await self._store.call(plan_node_sync, self._store.backend, session.node, last_rev)
        self.watch(session, plan.view)
        hubs = self.hubs()
        if plan.mode == "snapshot":
            msgs = edgeproto.snapshot_messages(
                plan.rev, plan.upserts, max_size=self.config.max_message, hubs=hubs
            )
        else:
            msgs = edgeproto.change_messages(
                plan.rev,
                plan.upserts,
                plan.deletes,
                resync=True,
                max_size=self.config.max_message,
                hubs=hubs,
            )
        sent = 0
        for m in msgs:
            sent += await self._send(session.ws, m)
        session.sent = plan.view.membership()
        session.sent_rev = plan.rev
        self.counters[f"resyncs_{plan.mode}"] += 1
        took = trio.current_time() - t0
        if plan.mode not in self.resync_seconds:
            self.resync_seconds[plan.mode] = Histogram(SECONDS_BUCKETS)
            self.resync_bytes[plan.mode] = Histogram(BYTES_BUCKETS)
        self.resync_seconds[plan.mode].observe(took)
        self.resync_bytes[plan.mode].observe(sent)
        return took

    def hubs(self) -> tuple[str, ...] | None:
        """Every live replica's hub URL, to send with a resync; None (the field
        left out: boards keep the list they have) when there is no source, it
        gives nothing, or what it gives is not a valid list (a board would
        refuse the whole resync message: said once in the log instead)."""
        if self._hub_urls is None:
            return None
        try:
            urls = list(self._hub_urls())
            return edgeproto.check_hubs(urls) if urls else None
        except ProtocolError as exc:
            problem = f"not sending the replicas' hub URLs to nodes: {exc}"
        except Exception as exc:  # the registry's bug must not cost a resync
            problem = f"not sending the replicas' hub URLs to nodes: {type(exc).__name__}: {exc}"
        self.counters["hubs_not_sent"] += 1
        if problem != self._hubs_problem:
            self._hubs_problem = problem
            log.warning("%s", problem)
        return None

    def go_live(self, session: Session) -> None:
        """Resynced: from now on live changes flow to the session."""
        session.live = True
        session.progress_at = trio.current_time() - random.uniform(0, 0.2) * (
            self.config.progress_interval
        )
        if session.dirty:  # something changed while the resync was under way
            session.dirty = False
            self.mark_dirty(session)

    def forget(self, session: Session) -> bool:
        """The session ended: no live changes, no watches. False if a newer
        session of the node had replaced it already."""
        session.live = False
        if self.sessions.get(session.node) is not session:
            return False
        del self.sessions[session.node]
        self.watch(session, View({}, frozenset()))
        return True

    # ---- live changes -------------------------------------------------------------------

    async def _sender(self) -> None:
        """One of the shared senders: take a dirty session, send what changed."""
        while True:
            while not self._ready:
                await self._ready_lot.park()
            session = self._ready.popleft()
            progress, session.progress = session.progress, False
            session.dirty = False
            try:
                if session.live:
                    await self._send_live(session, progress)
            finally:
                session.queued = False
                if session.dirty and session.live:
                    session.dirty = False
                    self.mark_dirty(session)

    async def _send_live(self, session: Session, progress: bool) -> None:
        with trio.move_on_after(self.config.send_timeout) as scope:
            try:
                if await self._send_changes(session, progress=progress):
                    self.counters["changes_sent"] += 1
            except CONNECTION_ENDED:
                return  # its reader sees the same and ends the session
            except Exception:
                self.counters["send_errors"] += 1
                log.exception(
                    "sending changes to node %s failed", session.node, extra={"node": session.node}
                )
                scope.cancel()  # fall through to closing: its view is unknown now
        if scope.cancelled_caught:
            self.counters["sessions_too_slow"] += 1
            log.warning(
                "node %s took more than %.0f s to take a change; closing",
                session.node,
                self.config.send_timeout,
                extra={"node": session.node},
            )
            with trio.move_on_after(1, shield=True):
                with contextlib.suppress(*CONNECTION_ENDED):
                    await session.ws.aclose(CLOSE_TRY_AGAIN, "too slow")

    async def _progress_ticker(self) -> None:
        """Now and then advance idle nodes' last_rev (an empty change) so a later
        resync stays a delta after compaction."""
        interval = self.config.progress_interval
        while True:
            await trio.sleep(interval / 10)
            now, rev = trio.current_time(), self._store.current_rev()
            for session in list(self.sessions.values()):
                if session.live and now - session.progress_at >= interval:
                    session.progress_at = now
                    if rev != session.sent_rev:
                        session.progress = True
                        self.mark_dirty(session)

    async def _send_changes(self, session: Session, *, progress: bool) -> bool:
        """One live step. A function of its own so that the view (every record of
        the node's objects) is garbage as soon as it returns, not kept alive by a
        loop variable while the session idles."""
        plan: ViewSync = await self._store.call(
            plan_node_sync, self._store.backend, session.node, None, session.sent
        )
        self.watch(session, plan.view)
        if not plan.upserts and not plan.deletes and not progress:
            return False  # e.g. a status write: nothing the node needs
        for m in edgeproto.change_messages(
            plan.rev, plan.upserts, plan.deletes, max_size=self.config.max_message
        ):
            await self._send(session.ws, m)
        session.sent = plan.view.membership()
        session.sent_rev = plan.rev
        session.progress_at = trio.current_time()
        return True

    async def _send(self, ws: tws.WebSocketConnection, msg: Message) -> int:
        """Send ``msg``; the bytes it took."""
        data = edgeproto.encode_message(msg, max_size=self.config.max_message)
        await ws.send_message(data)
        return len(data)
