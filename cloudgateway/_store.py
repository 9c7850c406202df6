"""The gateway's revisioned store: the async facade over a ``Backend``.

``Store`` runs a blocking ``Backend`` (``_backend.py``: the protocol, records,
events and errors; ``_sqlite.py``: the embedded SQLite backend;
``etcd/_backend.py``: etcd) in worker threads (one at a time, or the backend's
``parallel``), hands writers that arrive together to the backend at once
(group commit), and publishes each write's ``Event`` to bounded subscriptions,
in revision order, before the write returns. Every value the store hands out is
fresh, but shared between the event's subscribers: treat it as read-only.

A backend that can ``follow`` (etcd, shared by several replicas) feeds the
subscribers from that one watch only, so writes by other replicas reach this
replica's subscribers too: ``Store.run`` follows and publishes, and a write
returns once the follower has published it (or after ``follow_wait`` seconds,
logged); a Store nobody runs (a one-shot CLI command) publishes nothing.
Without ``follow`` (SQLite) each write publishes its own event and
``run`` returns at once.

The names other modules use (``Record``, ``Event``, the errors, ``SqliteBackend``)
are importable from here too.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import trio

from edgeio import COUNT_BUCKETS, SECONDS_BUCKETS, Histogram

from ._backend import (
    UNCHANGED,
    AlreadyExists,
    Backend,
    Compacted,
    Conflict,
    Event,
    Fenced,
    FutureRevision,
    NotFound,
    Record,
    StoreError,
    SubscriptionLost,
    Unavailable,
)
from ._sqlite import SqliteBackend

log = logging.getLogger(__name__)

__all__ = [
    "UNCHANGED",
    "AlreadyExists",
    "Backend",
    "Compacted",
    "Conflict",
    "Event",
    "Fenced",
    "FutureRevision",
    "NotFound",
    "Record",
    "SqliteBackend",
    "Store",
    "StoreError",
    "Subscription",
    "SubscriptionLost",
    "Unavailable",
]

T = TypeVar("T")


# ---- the async facade ---------------------------------------------------------------


class Subscription:
    """A bounded feed of store events, in revision order. A subscriber that lets
    its buffer fill up is cut off (``SubscriptionLost``) instead of slowing the
    writers; it must re-list and subscribe again."""

    def __init__(self, buffer: int) -> None:
        self._send, self._recv = trio.open_memory_channel[Event](buffer)
        self._capacity = buffer
        self._lost = False
        self._closed = False
        self._delivered = 0

    @property
    def lost(self) -> bool:
        return self._lost

    def _cut(self) -> None:
        """Mark the subscription lost (events were missed): it must re-list."""
        if not self._lost and not self._closed:
            self._lost = True
            self._send.close()

    def _offer(self, ev: Event) -> bool:
        """Queue ``ev``; False once the subscription is lost."""
        if self._lost or self._closed:
            return False
        try:
            self._send.send_nowait(ev)
        except trio.WouldBlock:
            self._lost = True
            self._send.close()
            return False
        return True

    def _close(self) -> None:
        self._closed = True
        self._send.close()
        self._recv.close()

    async def receive(self) -> Event:
        if self._lost:
            await trio.lowlevel.checkpoint()
            raise SubscriptionLost("subscriber fell behind the store's events; re-list")
        try:
            ev = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._lost:
                raise SubscriptionLost(
                    "subscriber fell behind the store's events; re-list"
                ) from None
            raise SubscriptionLost("subscription is closed") from None
        self._delivered += 1
        return ev

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()

    def statistics(self) -> dict[str, int]:
        return {
            "capacity": self._capacity,
            "buffered": self._recv.statistics().current_buffer_used,
            "delivered": self._delivered,
            "lost": int(self._lost),
        }


_BATCH = 256  # writes committed together at most (well under a subscriber's buffer)


class _PendingWrite:
    __slots__ = ("done", "fn", "outcome")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = False
        self.outcome: Any = None

    def settle(self, outcome: Any) -> None:
        self.outcome, self.done = outcome, True


class Store:
    """Async face of the store: blocking calls in one worker thread at a time;
    every write's event goes to the subscribers, in revision order, before the
    write returns. Write only through this object, or subscribers miss events."""

    def __init__(
        self,
        backend: Backend,
        *,
        subscriber_buffer: int = 1024,
        follow_wait: float = 10.0,
        rev: int | None = None,
    ) -> None:
        """``rev``: the revision to start from when the caller knows it (else
        the backend is asked, a blocking call)."""
        if subscriber_buffer < 1:
            raise StoreError(f"subscriber_buffer must be at least 1, not {subscriber_buffer}")
        self.backend: Backend = backend
        parallel = getattr(backend, "parallel", 1)
        self._limiter = trio.CapacityLimiter(parallel if isinstance(parallel, int) else 1)
        follow = getattr(backend, "follow", None)
        self._follow: Callable[[int], Any] | None = follow if callable(follow) else None
        self._follow_wait = follow_wait
        self._following = False  # run() is following: writers wait for their event
        self._parent: Store | None = None  # over(): the Store whose watch feeds this one
        self._advanced = trio.Event()
        self.follow_restarts = 0
        self._write_lock = trio.Lock()
        self._pending: builtins.list[_PendingWrite] = []
        self._subs: set[Subscription] = set()
        self._buffer = subscriber_buffer
        self._rev = backend.current_rev() if rev is None else rev
        self._published = 0
        self._lost = 0
        # Group commits: how long each took in the backend, how many writes it held.
        self.write_seconds = Histogram(SECONDS_BUCKETS)
        self.write_batch = Histogram(COUNT_BUCKETS)

    def over(self, backend: Backend) -> Store:
        """A Store writing through ``backend`` (the same store seen another
        way: fenced on a leader's term, say) that shares this Store's
        subscriptions and revision: its subscribers get every event this
        Store's watch publishes, its own writes included."""
        if self._follow is None:
            raise StoreError("only a store fed by its watch can be shared this way")
        child = Store(backend, subscriber_buffer=self._buffer, rev=self._rev)
        child._subs = self._subs
        child._parent = self
        return child

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the store's worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def current_rev(self) -> int:
        """The revision of the last write published (no I/O); with a follower,
        the revision it has reached (progress included)."""
        return self._parent.current_rev() if self._parent is not None else self._rev

    @property
    def follows(self) -> bool:
        """True when subscribers are fed by ``run`` (a backend that can follow)."""
        return self._follow is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the backend (its one watch) and publish what it yields, until
        cancelled; returns at once for a backend that cannot follow. A watch
        that fell behind compaction cuts every subscriber off (they re-list)
        and starts again from the revision now; an unreachable backend is
        retried from the last revision seen."""
        if self._follow is None:
            task_status.started()
            return
        self._following = True
        task_status.started()
        try:
            await self._follow_forever()
        finally:
            self._following = False

    async def _follow_forever(self) -> None:
        while True:
            try:
                await self._follow_from(self._rev)
            except Compacted as exc:
                self.follow_restarts += 1
                self._lose_all(f"store watch fell behind compaction ({exc})")
                rev = await self._retrying(self.backend.current_rev)
                self._advance(rev)
            except Unavailable as exc:
                self.follow_restarts += 1
                log.warning("store watch: %s; retrying from revision %d", exc, self._rev)
                await trio.sleep(1)

    async def _retrying(self, fn: Callable[[], T]) -> T:
        while True:
            try:
                return await self.call(fn)
            except Unavailable as exc:
                log.warning("store unavailable: %s; retrying", exc)
                await trio.sleep(1)

    async def _follow_from(self, rev: int) -> None:
        assert self._follow is not None
        follower = self._follow(rev)
        token = trio.lowlevel.current_trio_token()

        def deliver(item: Any) -> None:
            if isinstance(item, Event):
                if item.rev > self._rev:
                    self._publish(item)
                    self._advance(item.rev)
            else:
                self._advance(item)

        def pump() -> None:
            try:
                for item in follower:
                    trio.from_thread.run_sync(deliver, item, trio_token=token)
            except trio.RunFinishedError:
                pass
            finally:
                follower.close()

        try:
            await trio.to_thread.run_sync(pump, abandon_on_cancel=True)
        finally:
            follower.close()

    def _advance(self, rev: int) -> None:
        if rev > self._rev:
            self._rev = rev
        self._advanced.set()
        self._advanced = trio.Event()

    def _lose_all(self, why: str) -> None:
        log.warning("%s: every subscriber must re-list", why)
        for sub in list(self._subs):
            sub._cut()
            self._subs.discard(sub)
            self._lost += 1

    async def _until_published(self, rev: int) -> None:
        """Wait until the follower has published ``rev`` (bounded)."""
        with trio.move_on_after(self._follow_wait):
            while self._rev < rev:
                await self._advanced.wait()
            return
        log.warning(
            "store watch has not reached revision %d after %.0f s (at %d); returning anyway",
            rev,
            self._follow_wait,
            self._rev,
        )

    @contextlib.contextmanager
    def subscribe(self, *, buffer: int | None = None) -> Iterator[Subscription]:
        """Events of writes made while the block runs (call ``list`` inside the
        block, then skip events at or below the listed revision)."""
        size = self._buffer if buffer is None else buffer
        if size < 1:
            raise StoreError(f"subscription buffer must be at least 1, not {size}")
        sub = Subscription(size)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
            sub._close()

    def statistics(self) -> dict[str, int]:
        return {
            "rev": self._rev,
            "subscribers": len(self._subs),
            "subscribers_lost": self._lost,
            "events_published": self._published,
        }

    def _publish(self, ev: Event) -> None:
        self._rev = max(self._rev, ev.rev)
        self._published += 1
        for sub in list(self._subs):
            if not sub._offer(ev) and sub.lost:
                self._subs.discard(sub)
                self._lost += 1
                log.warning(
                    "store subscriber fell behind at revision %d (buffer %d); cut off",
                    ev.rev,
                    sub._capacity,
                )

    async def _write(self, fn: Callable[[], T]) -> T:
        """Queue a backend write; whoever holds the write lock commits everything
        queued by then (up to ``_BATCH``) in one transaction, so writers arriving
        together share one worker-thread trip and one commit."""
        w = _PendingWrite(fn)
        self._pending.append(w)
        try:
            while not w.done:  # a long queue takes more than one batch
                async with self._write_lock:
                    if w.done:
                        break
                    batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
                    started = trio.current_time()
                    try:
                        outcomes = await self.call(self.backend.write_many, [b.fn for b in batch])
                    except BaseException as exc:
                        for b in batch:
                            if b is not w:
                                b.settle(Unavailable(f"store write failed: {exc!r}"))
                        raise
                    self.write_seconds.observe(trio.current_time() - started)
                    self.write_batch.observe(len(batch))
                    for b, outcome in zip(batch, outcomes, strict=True):
                        b.settle(outcome)
                        if isinstance(outcome, Event) and self._follow is None:
                            self._publish(outcome)
        except BaseException:
            if not w.done:  # cancelled before anyone took it: it never runs
                with contextlib.suppress(ValueError):
                    self._pending.remove(w)
            raise
        if isinstance(w.outcome, Exception):
            raise w.outcome
        if isinstance(w.outcome, Event):
            if self._following:
                await self._until_published(w.outcome.rev)
            elif self._parent is not None and self._parent._following:
                await self._parent._until_published(w.outcome.rev)
        return cast(T, w.outcome)

    # ---- reads ------------------------------------------------------------------------

    async def get(self, key: str, *, rev: int | None = None) -> Record:
        return await self.call(functools.partial(self.backend.get, key, rev=rev))

    async def list(
        self,
        prefix: str,
        *,
        rev: int | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[Record], int]:
        return await self.call(
            functools.partial(self.backend.list, prefix, rev=rev, after=after, limit=limit)
        )

    async def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        return await self.call(functools.partial(self.backend.list_by_node, prefix, node, rev=rev))

    async def get_many(
        self, keys: Iterable[str], *, rev: int | None = None
    ) -> builtins.list[Record]:
        return await self.call(functools.partial(self.backend.get_many, list(keys), rev=rev))

    async def changes_since(
        self, prefix: str, rev: int, *, limit: int = 10000
    ) -> builtins.list[Event]:
        return await self.call(
            functools.partial(self.backend.changes_since, prefix, rev, limit=limit)
        )

    # ---- writes -----------------------------------------------------------------------

    async def create(self, key: str, value: dict[str, Any]) -> Event:
        return await self._write(functools.partial(self.backend.create, key, value))

    async def update(
        self, key: str, value: dict[str, Any], *, expect_rev: int | None = None
    ) -> Event:
        return await self._write(
            functools.partial(self.backend.update, key, value, expect_rev=expect_rev)
        )

    async def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        return await self._write(
            functools.partial(self.backend.update_status, key, status, expect_rev=expect_rev)
        )

    async def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        return await self._write(functools.partial(self.backend.delete, key, expect_rev=expect_rev))

    async def modify(
        self,
        key: str,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        expect_rev: int | None = None,
    ) -> Event | None:
        """Write ``edit(record)`` (the whole object, or with ``status`` its status
        only), read and written in one transaction so no other write gets in
        between. ``edit`` runs in the store's worker thread: a pure function of
        the record; returning ``UNCHANGED`` writes nothing (``None``). With
        ``expect_rev`` (a client's resourceVersion) the record must be at that
        revision (else ``Conflict``)."""
        return await self._write(
            functools.partial(self.backend.modify, key, edit, status=status, expect_rev=expect_rev)
        )

    async def compact(self, rev: int) -> None:
        await self.call(self.backend.compact, rev)

    async def compact_keep(self, revisions: int) -> None:
        await self.call(self.backend.compact_keep, revisions)
