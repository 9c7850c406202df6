"""The gateway's revisioned store: the async facade over a ``Backend``.

``Store`` runs a blocking ``Backend`` (``_backend.py``: the protocol, records,
events and errors; ``_sqlite.py``: the embedded SQLite backend) in one worker
thread at a time, commits writers that arrive together in one transaction
(group commit), and publishes each write's ``Event`` to bounded subscriptions,
in revision order, before the write returns. Every value the store hands out is
fresh, but shared between the event's subscribers: treat it as read-only.

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

from ._backend import (
    UNCHANGED,
    AlreadyExists,
    Backend,
    Compacted,
    Conflict,
    Event,
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

    def __init__(self, backend: Backend, *, subscriber_buffer: int = 1024) -> None:
        if subscriber_buffer < 1:
            raise StoreError(f"subscriber_buffer must be at least 1, not {subscriber_buffer}")
        self.backend: Backend = backend
        self._limiter = trio.CapacityLimiter(1)
        self._write_lock = trio.Lock()
        self._pending: builtins.list[_PendingWrite] = []
        self._subs: set[Subscription] = set()
        self._buffer = subscriber_buffer
        self._rev = backend.current_rev()
        self._published = 0
        self._lost = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the store's worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def current_rev(self) -> int:
        """The revision of the last write through this Store (no I/O)."""
        return self._rev

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
                    try:
                        outcomes = await self.call(self.backend.write_many, [b.fn for b in batch])
                    except BaseException as exc:
                        for b in batch:
                            if b is not w:
                                b.settle(Unavailable(f"store write failed: {exc!r}"))
                        raise
                    for b, outcome in zip(batch, outcomes, strict=True):
                        b.settle(outcome)
                        if isinstance(outcome, Event):
                            self._publish(outcome)
        except BaseException:
            if not w.done:  # cancelled before anyone took it: it never runs
                with contextlib.suppress(ValueError):
                    self._pending.remove(w)
            raise
        if isinstance(w.outcome, Exception):
            raise w.outcome
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
