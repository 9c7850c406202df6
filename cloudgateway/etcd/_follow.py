"""Reading etcd's history through watches: a bounded read of past events
(``changes_since``) and the one long-lived watch a replica follows the store with.

A watch started at an old revision is "unsynced" while etcd replays history to
it. Neither the header revision of the responses sent meanwhile nor (etcd 3.4)
the answer to a progress request says how far the replay has got, so a bounded
read of history stops at an event it knows must come: the store's marker key
(``{root}rev``), which every store write puts, at the marker's revision.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .._backend import Compacted, Event, Unavailable
from ._client import EtcdClient, EtcdCompacted, EtcdUnavailable, Watch, pb, prefix_end
from ._codec import Layout

log = logging.getLogger(__name__)

__all__ = ["Follow", "compacted_at", "read_history"]

_DELETE = pb.Event.DELETE


def compacted_at(err: EtcdCompacted) -> int:
    """The horizon an ``EtcdCompacted`` names (0 when it names none)."""
    m = re.search(r"compacted at revision (\d+)", err.details)
    return int(m.group(1)) if m else 0


def read_history(
    client: EtcdClient,
    layout: Layout,
    lo: bytes,
    hi: bytes,
    after: int,
    last: int,
    limit: int,
    *,
    on_compacted: Callable[[int], None],
) -> list[Event]:
    """Store events on ``[lo, hi)`` with revisions in ``(after, last]``,
    oldest first, at most ``limit``, where ``last`` is the revision of the
    store's last write (its marker key's mod_revision) at the revision read:
    a watch on the objects and the marker from ``after + 1``, read until it
    reaches ``last`` (every store write puts the marker, so an event at
    ``last`` always comes), then cancelled. ``Unavailable`` when that takes
    longer than the client's timeout."""
    start, end = layout.history
    try:
        w = client.watch(start, end, start_revision=after + 1, prev_kv=True)
    except EtcdUnavailable as exc:
        raise Unavailable(f"store history unavailable: {exc}") from None
    except EtcdCompacted as exc:
        on_compacted(compacted_at(exc))
        raise Compacted(f"revision {after} is older than the compaction horizon") from None
    timer = threading.Timer(client.timeout, w.cancel)
    timer.daemon = True
    timer.start()
    events: list[Event] = []
    try:
        for resp in w.responses():
            for e in resp.events:
                rev = int(e.kv.mod_revision)
                if rev > last:
                    return events
                if lo <= e.kv.key < hi:
                    events.append(layout.event(e, _DELETE))
                    if len(events) >= limit:
                        return events
                if rev == last:
                    return events
        raise Unavailable("store history: etcd did not answer in time")
    except EtcdCompacted as exc:
        on_compacted(compacted_at(exc))
        raise Compacted(f"revision {after} is older than the compaction horizon") from None
    except EtcdUnavailable as exc:
        raise Unavailable(f"store history unavailable: {exc}") from None
    finally:
        timer.cancel()
        w.cancel()


class Follow:
    """The replica's one watch on every store object, from ``from_rev`` on:
    iterating yields store ``Event``s in revision order and plain ints for
    progress (the store reached that revision with no event for this store).

    When the member serving the watch dies, the watch is opened again on
    another member from the last revision seen, transparently; ``Unavailable``
    only when no member has answered for ``give_up_after`` seconds.
    ``Compacted`` when the next revision wanted is below etcd's horizon.
    ``close()`` (from any thread) ends the iteration."""

    def __init__(
        self,
        client: EtcdClient,
        layout: Layout,
        from_rev: int,
        *,
        give_up_after: float,
        on_compacted: Callable[[int], None],
    ) -> None:
        self._client = client
        self._layout = layout
        self.last = from_rev  # every event up to here has been yielded
        self._give_up_after = give_up_after
        self._on_compacted = on_compacted
        self._lock = threading.Lock()
        self._closed = False
        self._watch: Watch | None = None
        self._responses: Iterator[Any] | None = None
        self._ready: deque[Event | int] = deque()
        self._failing_since: float | None = None
        self.reconnects = 0

    def __iter__(self) -> Follow:
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            w, self._watch = self._watch, None
        if w is not None:
            w.cancel()

    def _open(self) -> Iterator[Any]:
        lo = self._layout.objects
        while True:
            with self._lock:
                if self._closed:
                    raise StopIteration
            try:
                w = self._client.watch(
                    lo,
                    prefix_end(lo),
                    start_revision=self.last + 1,
                    prev_kv=True,
                    progress_notify=True,
                )
            except EtcdCompacted as exc:
                self._compacted(exc)
            except EtcdUnavailable as exc:
                self._failing(exc)
                time.sleep(0.2)
                continue
            with self._lock:
                if self._closed:
                    w.cancel()
                    raise StopIteration
                self._watch = w
            return w.responses()

    def _compacted(self, exc: EtcdCompacted) -> None:
        self._on_compacted(compacted_at(exc))
        raise Compacted(
            f"the store's history from revision {self.last + 1} has been compacted"
        ) from None

    def _failing(self, exc: EtcdUnavailable) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("store watch: %s; reconnecting from revision %d", exc, self.last)
        elif now - self._failing_since > self._give_up_after:
            raise Unavailable(f"store watch: no etcd member answered: {exc}") from None

    def __next__(self) -> Event | int:
        while not self._ready:
            if self._responses is None:
                self._responses = self._open()
            try:
                resp = next(self._responses)
            except StopIteration:  # cancelled
                self._responses = None
                with self._lock:
                    if self._closed:
                        raise
                continue
            except EtcdCompacted as exc:
                self._responses = None
                self._compacted(exc)
            except EtcdUnavailable as exc:
                self._responses = None
                self.reconnects += 1
                self._failing(exc)
                continue
            self._failing_since = None
            for e in resp.events:
                ev = self._layout.event(e, _DELETE)
                if ev.rev > self.last:
                    self.last = ev.rev
                    self._ready.append(ev)
            if not resp.events and not resp.created and resp.header.revision > self.last:
                self.last = int(resp.header.revision)
                self._ready.append(self.last)
        return self._ready.popleft()
