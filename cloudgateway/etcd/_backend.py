"""The store on etcd v3, etcd's model used natively.

The store's revision is etcd's revision, a record's ``mod_rev`` (its
``resourceVersion``) its key's mod_revision and ``create_rev`` its
create_revision; history and tombstones are etcd's MVCC until compaction. The
key layout and the stored envelope are in ``_codec.py``; reading history
through watches in ``_follow.py``.

Every write is one etcd transaction guarded in etcd: a create on
``create_revision == 0``, everything else on the ``mod_revision`` the writer
read (a client's ``expect_rev``, or the revision ``modify``/``update`` read
the record at: a lost race is read again and retried, so a ``modify`` edit
may run more than once). With a fence (``key``, ``create_revision``) every
write also compares the fence key's create_revision, so a writer that lost its
leadership lease writes nothing (``Fenced``). A write etcd may or may not have
committed (the member went away mid-call) raises ``Unavailable``, never a
success.

Revisions move for every write to etcd, not only this store's, so they are
increasing but may skip.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._backend import (
    UNCHANGED,
    AlreadyExists,
    Backend,
    Compacted,
    Event,
    Fenced,
    FutureRevision,
    NodeOf,
    NotFound,
    Record,
    StoreError,
    Unavailable,
    check_expected,
    check_limit,
    check_rev_arg,
    check_text,
    dump,
    normalized_object,
    place,
    settle_new,
    settle_replacement,
    with_rv,
    with_status,
)
from ._client import (
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdFutureRevision,
    EtcdUnavailable,
    pb,
    prefix_end,
)
from ._codec import Layout, envelope
from ._follow import Follow, read_history

log = logging.getLogger(__name__)

__all__ = ["EtcdBackend"]

T = TypeVar("T")

_TXN_OPS = 64  # ranges per multi-get transaction (etcd allows 128 ops by default)
_RETRIES = 100  # optimistic write attempts before giving up (Unavailable)


def _cmp_created(key: bytes, rev: int) -> Any:
    return pb.Compare(
        key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=rev
    )


def _cmp_mod(key: bytes, rev: int) -> Any:
    return pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=rev)


def _put(key: bytes, value: bytes) -> Any:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _del(key: bytes) -> Any:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


def _get(key: bytes, revision: int = 0) -> Any:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, revision=revision))


class EtcdBackend:
    """A ``Backend`` on an etcd cluster (``client``), under ``root``.

    Thread-safe: ``Store`` may run several reads at once (``parallel``) and
    ``write_many`` runs each write in its own transaction on a small thread
    pool. ``read(fn)`` pins one etcd revision for the calling thread."""

    parallel = 8  # how many calls Store may run at once

    def __init__(
        self,
        client: EtcdClient,
        *,
        node_of: NodeOf,
        root: str = "/edgeflock/",
        fence: tuple[bytes, int] | None = None,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.root = root
        self.fence = fence
        self._node_of = node_of
        self._layout = Layout(root)
        self._owns_client = owns_client
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._horizon = 0  # etcd's compaction horizon as last learned
        self._probed = False

    def __repr__(self) -> str:
        return f"EtcdBackend({self.client!r}, root={self.root!r})"

    def with_fence(self, fence: tuple[bytes, int]) -> EtcdBackend:
        """A backend on the same client and root whose every write also needs
        ``fence`` (key, create_revision) to hold."""
        return EtcdBackend(
            self.client, node_of=self._node_of, root=self.root, fence=fence, owns_client=False
        )

    # ---- plumbing -----------------------------------------------------------------------

    def _etcd(self, fn: Callable[[], T], *, rev: int | None = None) -> T:
        if self._closed:
            raise StoreError("store is closed")
        try:
            return fn()
        except EtcdCompacted as exc:
            if rev:
                self._learn_horizon(rev + 1)
            raise Compacted(f"revision {rev} is older than the compaction horizon") from exc
        except EtcdFutureRevision as exc:
            raise FutureRevision(f"revision {rev} is newer than the store's revision") from exc
        except EtcdUnavailable as exc:
            raise Unavailable(f"etcd unavailable: {exc}") from exc
        except EtcdError as exc:
            raise StoreError(f"etcd refused: {exc}") from exc

    def _learn_horizon(self, rev: int) -> None:
        with self._lock:
            if rev > self._horizon:
                self._horizon = rev
                self._probed = False  # somebody compacted further: find out where

    def _pinned(self) -> int | None:
        rev: int | None = getattr(self._local, "rev", None)
        return rev

    def _at(self, rev: int | None) -> int:
        """The etcd revision to read at (0: now). Explicit revisions must not be
        past a pinned snapshot; revision 0 is etcd's first (empty) state."""
        check_rev_arg("rev", rev)
        pinned = self._pinned()
        if rev is None:
            return pinned or 0
        if pinned is not None and rev > pinned:
            raise FutureRevision(f"revision {rev} is newer than the store's revision {pinned}")
        return max(rev, 1)

    def _now(self) -> int:
        resp = self._etcd(lambda: self.client.range(self._layout.compacted, count_only=True))
        return int(resp.header.revision)

    def _writable(self) -> None:
        if self._pinned() is not None:
            raise StoreError("cannot write inside read()")

    # ---- reads --------------------------------------------------------------------------

    def read(self, fn: Callable[[Backend], T]) -> T:
        """``fn(self)`` with every read inside at one etcd revision (pinned for
        this thread); nested calls join it; writes inside are refused."""
        if self._pinned() is not None:
            return fn(self)
        self._local.rev = self._now()
        try:
            return fn(self)
        finally:
            self._local.rev = None

    def current_rev(self) -> int:
        return self._pinned() or self._now()

    def compact_rev(self) -> int:
        """The compaction horizon: the highest of what this store's ``compact``
        recorded, what etcd refused, and (probed once, and again after a
        surprise) the first revision etcd still serves."""
        resp = self._etcd(lambda: self.client.range(self._layout.compacted))
        recorded = int(resp.kvs[0].value) if resp.kvs else 0
        with self._lock:
            probed, horizon = self._probed, self._horizon
        if not probed:
            horizon = self._probe(horizon, int(resp.header.revision))
            with self._lock:
                self._horizon = max(self._horizon, horizon)
                self._probed = True
        return max(recorded, horizon)

    def _probe(self, known: int, head: int) -> int:
        """The lowest revision etcd still serves (0 if nothing was compacted),
        by bisection between ``known`` and ``head``."""

        def serves(rev: int) -> bool:
            try:
                self.client.range(self._layout.compacted, revision=rev, count_only=True)
            except EtcdCompacted:
                return False
            except EtcdFutureRevision:
                return True
            except EtcdError as exc:
                raise Unavailable(f"etcd unavailable: {exc}") from exc
            return True

        if serves(max(known, 1)):
            return known if known > 1 else 0
        bad, good = max(known, 1), head
        while good - bad > 1:
            mid = (bad + good) // 2
            if serves(mid):
                good = mid
            else:
                bad = mid
        return good

    def get(self, key: str, *, rev: int | None = None) -> Record:
        check_text("key", key)
        at = self._at(rev)
        resp = self._etcd(lambda: self.client.range(self._layout.obj(key), revision=at), rev=at)
        if not resp.kvs:
            where = "" if rev is None else f" at revision {rev}"
            raise NotFound(f"{key} not found{where}", key=key)
        return self._layout.record(resp.kvs[0])

    def get_many(self, keys: Iterable[str], *, rev: int | None = None) -> builtins.list[Record]:
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            check_text("key", key)
        return self._get_many(wanted, self._at(rev))

    def _get_many(self, keys: builtins.list[str], at: int) -> builtins.list[Record]:
        """The records of ``keys`` at ``at`` (0: now; every chunk at the first
        chunk's revision), in order, missing ones skipped."""
        out: builtins.list[Record] = []
        for i in range(0, len(keys), _TXN_OPS):
            chunk = keys[i : i + _TXN_OPS]
            ops = [_get(self._layout.obj(k), at) for k in chunk]
            resp = self._etcd(lambda ops=ops: self.client.txn(success=ops), rev=at)  # type: ignore[misc]
            at = at or int(resp.header.revision)
            for r in resp.responses:
                out.extend(self._layout.record(kv) for kv in r.response_range.kvs)
        return out

    def list(
        self,
        prefix: str,
        *,
        rev: int | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[Record], int]:
        lo = self._layout.obj(check_text("prefix", prefix, empty=True))
        hi = prefix_end(lo)
        start = lo
        if after is not None:
            start = max(lo, self._layout.obj(check_text("after", after, empty=True)) + b"\x00")
        if limit is not None:
            check_limit(limit)
        at = self._at(rev)
        if start >= hi:  # nothing can follow ``after``: still check the revision
            resp = self._etcd(
                lambda: self.client.range(lo, hi, revision=at, count_only=True), rev=at
            )
            return [], rev if rev is not None else (at or int(resp.header.revision))
        resp = self._etcd(
            lambda: self.client.range(start, hi, revision=at, limit=limit or 0), rev=at
        )
        records = [self._layout.record(kv) for kv in resp.kvs]
        return records, rev if rev is not None else (at or int(resp.header.revision))

    def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        """The node index at the revision, then those objects at the same
        revision: costs what the node holds."""
        lo = self._layout.node_prefix(
            check_text("node", node), check_text("prefix", prefix, empty=True)
        )
        at = self._at(rev)
        resp = self._etcd(
            lambda: self.client.range(lo, prefix_end(lo), revision=at, keys_only=True), rev=at
        )
        keys = [self._layout.key_of_index(kv.key) for kv in resp.kvs]
        return self._get_many(keys, at or int(resp.header.revision))

    def changes_since(self, prefix: str, rev: int, *, limit: int = 10000) -> builtins.list[Event]:
        """From etcd's history: a watch from ``rev + 1`` with prev_kv, read up
        to the revision current at the call (the pinned one inside ``read``)."""
        lo = self._layout.obj(check_text("prefix", prefix, empty=True))
        check_rev_arg("rev", rev)
        check_limit(limit)
        upto = self.current_rev()
        if rev > upto:
            raise FutureRevision(f"revision {rev} is newer than the store's revision {upto}")
        horizon = self.compact_rev()
        if rev < horizon:
            raise Compacted(f"revision {rev} is older than the compaction horizon {horizon}")
        marker = self._etcd(lambda: self.client.range(self._layout.marker, revision=upto), rev=upto)
        last = int(marker.kvs[0].mod_revision) if marker.kvs else 0
        if rev >= last:
            return []
        return read_history(
            self.client,
            self._layout,
            lo,
            prefix_end(lo),
            rev,
            last,
            limit,
            on_compacted=self._learn_horizon,
        )

    def follow(self, from_rev: int, *, give_up_after: float = 30.0) -> Follow:
        """The replica's one watch on the store from ``from_rev`` (exclusive):
        store events and progress revisions, in order (see ``Follow``)."""
        check_rev_arg("from_rev", from_rev)
        if self._closed:
            raise StoreError("store is closed")
        return Follow(
            self.client,
            self._layout,
            from_rev,
            give_up_after=give_up_after,
            on_compacted=self._learn_horizon,
        )

    # ---- writes -------------------------------------------------------------------------

    def _commit(self, key: str, compares: builtins.list[Any], ops: builtins.list[Any]) -> Any:
        """One guarded transaction (which also puts the store's marker key); on
        failure, ``responses[0]`` holds the object as it is now. ``Fenced`` if
        the fence is what failed."""
        ops = [*ops, _put(self._layout.marker, b"")]
        failure = [_get(self._layout.obj(key))]
        if self.fence is not None:
            fkey, frev = self.fence
            compares = [*compares, _cmp_created(fkey, frev)]
            failure.append(_get(fkey))
        resp = self._etcd(lambda: self.client.txn(compares, ops, failure))
        if not resp.succeeded and self.fence is not None:
            kvs = resp.responses[1].response_range.kvs
            if not kvs or kvs[0].create_revision != self.fence[1]:
                raise Fenced(f"{key}: not written: the fence no longer holds", key=key)
        return resp

    def _head(self, key: str) -> Record:
        resp = self._etcd(lambda: self.client.range(self._layout.obj(key)))
        if not resp.kvs:
            raise NotFound(f"{key} not found", key=key)
        return self._layout.record(resp.kvs[0])

    def create(self, key: str, value: dict[str, Any]) -> Event:
        check_text("key", key)
        obj = normalized_object(key, value)
        self._writable()
        settle_new(obj)
        node = place(self._node_of, key, obj)
        okey = self._layout.obj(key)
        ops = [_put(okey, envelope(obj, key, node, None))]
        if node is not None:
            ops.append(_put(self._layout.node_key(node, key), b""))
        resp = self._commit(key, [_cmp_created(okey, 0)], ops)
        if not resp.succeeded:
            raise AlreadyExists(f"{key} already exists", key=key)
        rev = int(resp.header.revision)
        obj["metadata"]["resourceVersion"] = str(rev)
        return Event("ADDED", rev, key, Record(key, obj, rev, rev, rev, node), None)

    def _rewrite(
        self, key: str, make: Callable[[Record], Any], expect_rev: int | None
    ) -> Event | None:
        """Read ``key``, write ``make(record)`` guarded on the revision read;
        a lost race reads again (``expect_rev`` then fails as ``Conflict``)."""
        self._writable()
        okey = self._layout.obj(key)
        for _ in range(_RETRIES):
            prev = check_expected(self._head(key), expect_rev)
            obj = make(prev)
            if obj is UNCHANGED:
                return None
            changed = settle_replacement(prev, obj)
            node = place(self._node_of, key, obj)
            ops = [_put(okey, envelope(obj, key, node, None if changed else prev.spec_rev))]
            if node != prev.node:
                if prev.node is not None:
                    ops.append(_del(self._layout.node_key(prev.node, key)))
                if node is not None:
                    ops.append(_put(self._layout.node_key(node, key), b""))
            resp = self._commit(key, [_cmp_mod(okey, prev.mod_rev)], ops)
            if resp.succeeded:
                rev = int(resp.header.revision)
                obj["metadata"]["resourceVersion"] = str(rev)
                spec_rev = rev if changed else prev.spec_rev
                rec = Record(key, obj, rev, prev.create_rev, spec_rev, node)
                return Event("MODIFIED", rev, key, rec, prev)
        raise Unavailable(f"{key}: too many concurrent writes; try again", key=key)

    def update(self, key: str, value: dict[str, Any], *, expect_rev: int | None = None) -> Event:
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)
        normalized_object(key, value)  # refuse bad values before reading anything
        ev = self._rewrite(key, lambda prev: normalized_object(key, value), expect_rev)
        assert ev is not None
        return ev

    def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)
        status = json.loads(dump(status, key))
        ev = self._rewrite(key, lambda prev: with_status(prev, status), expect_rev)
        assert ev is not None
        return ev

    def modify(
        self,
        key: str,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        expect_rev: int | None = None,
    ) -> Event | None:
        """Write ``edit(current record)``, guarded on the revision read; when
        another write got in between, ``edit`` runs again on the newer record
        (it must be a pure function of the record)."""
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)

        def make(prev: Record) -> Any:
            new = edit(prev)
            if new is UNCHANGED:
                return UNCHANGED
            if status:
                return with_status(prev, json.loads(dump(new, key)))
            return normalized_object(key, new)

        return self._rewrite(key, make, expect_rev)

    def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)
        self._writable()
        okey = self._layout.obj(key)
        for _ in range(_RETRIES):
            prev = check_expected(self._head(key), expect_rev)
            ops = [_del(okey)]
            if prev.node is not None:
                ops.append(_del(self._layout.node_key(prev.node, key)))
            resp = self._commit(key, [_cmp_mod(okey, prev.mod_rev)], ops)
            if resp.succeeded:
                rev = int(resp.header.revision)
                value = with_rv(prev.value, rev)
                rec = Record(key, value, rev, prev.create_rev, prev.spec_rev, prev.node)
                return Event("DELETED", rev, key, rec, prev)
        raise Unavailable(f"{key}: too many concurrent writes; try again", key=key)

    def write_many(self, writes: Sequence[Callable[[], T]]) -> builtins.list[T | Exception]:
        """Each write in its own transaction, several at once: writes queued
        together come from independent callers, so any order is a valid one.
        Results in input order."""
        self._writable()
        if len(writes) <= 1:
            return [_outcome(w) for w in writes]
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="etcd-write")
            pool = self._pool
        futures = [pool.submit(_outcome, w) for w in writes]
        return [f.result() for f in futures]

    # ---- housekeeping -------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Record the horizon (``{root}compacted``, only ever raised), then
        compact etcd's history to ``rev``. At or below the horizon: a no-op."""
        check_rev_arg("rev", rev)
        self._writable()
        head = self._now()
        if rev > head:
            raise FutureRevision(f"cannot compact to {rev}: the store is at revision {head}")
        ckey = self._layout.compacted
        for _ in range(_RETRIES):
            if rev <= self.compact_rev():
                return
            resp = self._etcd(lambda: self.client.range(ckey))
            guard = _cmp_mod(ckey, resp.kvs[0].mod_revision) if resp.kvs else _cmp_created(ckey, 0)
            if self._commit("compacted", [guard], [_put(ckey, str(rev).encode())]).succeeded:
                break
        else:
            raise Unavailable("too many concurrent compactions; try again")
        try:
            self._etcd(lambda: self.client.call("Compact", pb.CompactionRequest(revision=rev)))
        except Compacted:
            pass  # etcd was already compacted further (by another store on it)
        self._learn_horizon(rev)
        log.debug("compacted etcd %s to revision %d", self.client, rev)

    def compact_keep(self, revisions: int) -> None:
        check_rev_arg("revisions", revisions)
        self.compact(max(0, self._now() - revisions))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._owns_client:
            self.client.close()


def _outcome(write: Callable[[], T]) -> T | Exception:
    try:
        return write()
    except Exception as exc:
        return exc
