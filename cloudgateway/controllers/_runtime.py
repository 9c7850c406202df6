"""The controller runtime: one store subscription feeding per-controller
deduplicating work queues, level-triggered reconciles, periodic resync and
retries with backoff.

A controller (``Controller``) names the store key prefixes it watches, maps
each change under them to the keys it reconciles (``keys_for``: a pod's change
to its owner's key, say) and reconciles one key at a time from what the store
holds now. Nothing a controller keeps in memory is needed for correctness: the
runtime lists every watched prefix at start, after a lost subscription and
every ``resync`` seconds, so a restarted gateway (or a new leader) continues
from the store.

A key that ends in ``/`` stands for every object under that prefix (a node's
label change concerns every DaemonSet): the worker that takes it lists the
prefix and queues each object's key.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

import edgeproto

from .._store import Conflict, Event, NotFound, Store, SubscriptionLost, Unavailable

log = logging.getLogger(__name__)

__all__ = [
    "Controller",
    "Runtime",
    "WorkQueue",
    "controller_owner_key",
    "owner_keys",
    "run_controllers",
]


class Controller(Protocol):
    """What the runtime runs. ``keys_for`` must be quick and must not block (it
    runs for every event under ``prefixes``); ``reconcile`` is level-triggered
    and idempotent. ``reconcile`` may return a delay in seconds after which the
    key is reconciled again (a pod turning available after minReadySeconds),
    else None. Any exception retries the key with backoff."""

    @property
    def name(self) -> str: ...

    @property
    def prefixes(self) -> Sequence[str]:
        """Store key prefixes whose changes it is told of."""
        ...

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        """Keys to reconcile after ``key`` changed from ``prev`` to ``value``
        (``value`` None: deleted; ``prev`` None: created, or seen by a list)."""
        ...

    async def reconcile(self, key: str) -> float | None: ...


# ---- helpers for keys_for ---------------------------------------------------------


def owner_keys(
    value: Mapping[str, Any] | None,
    kind: str,
    resource: str,
    namespace: str,
    *,
    controller_only: bool = True,
) -> list[str]:
    """Keys of the owners of kind ``kind`` (stored under ``resource``) that an
    object's ``metadata.ownerReferences`` name (only the ``controller: true``
    one by default), in ``namespace``."""
    if not value:
        return []
    meta = value.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    out: list[str] = []
    if not isinstance(refs, list):
        return out
    for ref in refs:
        if not isinstance(ref, Mapping) or ref.get("kind") != kind:
            continue
        if controller_only and ref.get("controller") is not True:
            continue
        name = ref.get("name")
        if isinstance(name, str) and name:
            out.append(edgeproto.make_key(resource, namespace, name))
    return out


def controller_owner_key(
    key: str,
    value: Mapping[str, Any] | None,
    prev: Mapping[str, Any] | None,
    kind: str,
    resource: str,
) -> list[str]:
    """The controlling owner's key (of ``kind``) before and after a change:
    both, when the change moved the object from one owner to another."""
    _, ns, _ = edgeproto.split_key(key)
    keys = owner_keys(value, kind, resource, ns)
    for k in owner_keys(prev, kind, resource, ns):
        if k not in keys:
            keys.append(k)
    return keys


# ---- the work queue ---------------------------------------------------------------


_PAGE = 256  # objects per read when relisting


class WorkQueue:
    """A deduplicating queue of keys, as client-go's: a key queued while it is
    queued is queued once; a key queued while a worker reconciles it is
    reconciled again after (never by two workers at once). Delayed adds wait
    in a heap until due. Unbounded by count of distinct keys only (each key
    once), which the store bounds."""

    def __init__(self) -> None:
        self._queue: list[str] = []  # FIFO order of dirty keys (deque semantics via index)
        self._head = 0
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._ready = trio.Event()
        self._delayed: list[tuple[float, int, str]] = []
        self._delayed_changed = trio.Event()
        self._seq = 0
        self.added = 0
        self.reconciled = 0

    def __len__(self) -> int:
        return len(self._queue) - self._head

    def add(self, key: str) -> None:
        self.added += 1
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again when its worker is done
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        self._seq += 1
        when = trio.current_time() + delay
        if not self._delayed or when < self._delayed[0][0]:
            self._delayed_changed.set()
        heapq.heappush(self._delayed, (when, self._seq, key))

    async def get(self) -> str:
        while not len(self):
            self._ready = trio.Event()
            await self._ready.wait()
        key = self._queue[self._head]
        self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._queue):
            del self._queue[: self._head]
            self._head = 0
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self.reconciled += 1
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    async def run_delays(self) -> None:
        """Move delayed keys into the queue when due (until cancelled)."""
        while True:
            self._delayed_changed = trio.Event()
            if not self._delayed:
                await self._delayed_changed.wait()
                continue
            when = self._delayed[0][0]
            with trio.move_on_at(when):
                await self._delayed_changed.wait()
                continue
            now = trio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, key = heapq.heappop(self._delayed)
                self.add(key)


# ---- the runtime ------------------------------------------------------------------


@dataclass
class _Slot:
    controller: Controller
    queue: WorkQueue = field(default_factory=WorkQueue)
    failures: dict[str, int] = field(default_factory=dict)
    errors: int = 0


class Runtime:
    """Runs controllers over one store. ``run_controllers`` is the usual entry."""

    def __init__(
        self,
        store: Store,
        controllers: Sequence[Controller],
        *,
        resync: float = 30.0,
        workers: int = 2,
        backoff_base: float = 0.05,
        backoff_max: float = 30.0,
        subscriber_buffer: int = 8192,
    ) -> None:
        names = [c.name for c in controllers]
        if len(set(names)) != len(names):
            raise ValueError(f"controller names must be unique: {names}")
        self._store = store
        self._slots = [_Slot(c) for c in controllers]
        self._resync = resync
        self._workers = max(1, workers)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._buffer = subscriber_buffer
        self.relists = 0
        self.events = 0

    def statistics(self) -> dict[str, int]:
        out = {"relists": self.relists, "events": self.events}
        for s in self._slots:
            out[f"{s.controller.name}_queued"] = len(s.queue)
            out[f"{s.controller.name}_reconciled"] = s.queue.reconciled
            out[f"{s.controller.name}_errors"] = s.errors
        return out

    def enqueue(self, controller: str, key: str) -> None:
        """Queue ``key`` for the named controller (tests, admin tools)."""
        for s in self._slots:
            if s.controller.name == controller:
                s.queue.add(key)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for s in self._slots:
                nursery.start_soon(s.queue.run_delays)
                for _ in range(self._workers):
                    nursery.start_soon(self._worker, s)
            started = False
            while True:
                try:
                    with self._store.subscribe(buffer=self._buffer) as sub:
                        await self._relist()
                        if not started:
                            started = True
                            task_status.started()
                        await self._follow(sub)
                except SubscriptionLost as exc:
                    log.warning("controllers: %s; listing everything again", exc)
                except Unavailable as exc:
                    log.warning("controllers: store unavailable (%s); retrying", exc)
                    await trio.sleep(1.0)

    async def _follow(self, sub: Any) -> None:
        next_resync = trio.current_time() + self._resync
        while True:
            with trio.move_on_at(next_resync):
                ev: Event = await sub.receive()
                self.events += 1
                self._dispatch(ev.key, _value(ev), ev.prev.value if ev.prev else None)
                continue
            await self._relist()
            next_resync = trio.current_time() + self._resync

    def _dispatch(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> None:
        for s in self._slots:
            c = s.controller
            if not any(key.startswith(p) for p in c.prefixes):
                continue
            try:
                for k in c.keys_for(key, value, prev):
                    s.queue.add(k)
            except Exception:
                log.exception("controller %s: keys_for(%s) failed", c.name, key)

    async def _relist(self) -> None:
        """Every watched object, as if just created: each controller's
        ``keys_for`` sees it (so it queues what it would on a change)."""
        self.relists += 1
        prefixes = sorted({p for s in self._slots for p in s.controller.prefixes})
        for prefix in prefixes:
            # In pages, so a relist of a large fleet never holds every object
            # decoded at once (the allocator would keep that peak). A relist only
            # nudges level-triggered controllers: pages need not share a revision.
            after: str | None = None
            while True:
                records, _ = await self._store.list(prefix, after=after, limit=_PAGE)
                for rec in records:
                    self._dispatch(rec.key, rec.value, None)
                if len(records) < _PAGE:
                    break
                after = records[-1].key
                del records
                await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()

    async def _worker(self, slot: _Slot) -> None:
        c = slot.controller
        while True:
            key = await slot.queue.get()
            again: float | None = None
            try:
                if key.endswith("/"):
                    records, _ = await self._store.list(key)
                    for rec in records:
                        slot.queue.add(rec.key)
                else:
                    again = await c.reconcile(key)
            except Exception as exc:
                n = slot.failures.get(key, 0) + 1
                slot.failures[key] = n
                delay = min(self._backoff_max, self._backoff_base * math.pow(2, n - 1))
                if isinstance(exc, (Conflict, NotFound)):
                    # someone wrote in between: read again (normal, not an error)
                    log.debug("controller %s: %s: %s; again in %.2f s", c.name, key, exc, delay)
                elif isinstance(exc, Unavailable):
                    slot.errors += 1
                    log.warning("controller %s: %s: %s; retry in %.2f s", c.name, key, exc, delay)
                else:
                    slot.errors += 1
                    log.exception("controller %s: %s failed; retry in %.2f s", c.name, key, delay)
                slot.queue.done(key)
                slot.queue.add_after(key, delay)
                continue
            slot.failures.pop(key, None)
            slot.queue.done(key)
            if again is not None:
                slot.queue.add_after(key, again)


def _value(ev: Event) -> Mapping[str, Any] | None:
    return None if ev.type == "DELETED" else ev.record.value


async def run_controllers(
    store: Store,
    controllers: Sequence[Controller],
    *,
    resync: float = 30.0,
    workers: int = 2,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``controllers`` over ``store`` until cancelled: one subscription,
    a work queue per controller, a full resync every ``resync`` seconds.
    Reports started (with the ``Runtime``, for its statistics) once every
    watched prefix has been listed and queued."""
    rt = Runtime(store, controllers, resync=resync, workers=workers)

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        await rt.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        task_status.started(rt)
