"""The gateway's revisioned store: etcd's MVCC model on SQLite (apsw).

One global revision, bumped by every write. Every revision of every key is kept
(deletes leave tombstones) until compaction, so any view can be read as of an
older revision. Each record carries:

- ``mod_rev``: the revision of its last write (its resourceVersion);
- ``create_rev``;
- ``spec_rev``: the revision of the last write that changed anything but
  ``.status`` (status-only writes do not move it);
- ``node``: the node whose view it belongs to directly (indexed).

``SqliteBackend`` is blocking; ``Store`` runs it in a worker thread and
publishes each write's ``Event`` to bounded subscriptions.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import apsw
import trio

from ._errors import GatewayError

log = logging.getLogger(__name__)

__all__ = [
    "AlreadyExists",
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
]

T = TypeVar("T")


class StoreError(GatewayError):
    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    pass


class Compacted(StoreError):
    pass


class FutureRevision(StoreError):
    pass


class SubscriptionLost(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: dict[str, Any]
    mod_rev: int
    create_rev: int
    spec_rev: int
    node: str | None


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    rev: int
    key: str
    record: Record
    prev: Record | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv(
    key TEXT NOT NULL,
    mod_rev INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    spec_rev INTEGER NOT NULL,
    node TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    value TEXT,
    PRIMARY KEY (key, mod_rev)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_node ON kv(node, key);
CREATE INDEX IF NOT EXISTS kv_rev ON kv(mod_rev);
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(name, value) VALUES ('rev', 0), ('compact_rev', 0);
"""

_COLS = "key, mod_rev, create_rev, spec_rev, node, deleted, value"


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _spec_part(value: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in value.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    for k in ("resourceVersion", "generation", "managedFields"):
        meta.pop(k, None)
    out["metadata"] = meta
    return out


class SqliteBackend:
    """Blocking MVCC store on one apsw connection (callers serialize access)."""

    def __init__(self, path: str, *, node_of: Callable[[str, dict[str, Any]], str | None]) -> None:
        self.path = path
        self._node_of = node_of
        self._lock = threading.RLock()
        self._in_read = False
        try:
            self._conn = apsw.Connection(path)
            self._conn.setbusytimeout(5000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                self._conn.execute(_SCHEMA)
        except apsw.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    # ---- reads -------------------------------------------------------------------

    def _meta(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def current_rev(self) -> int:
        with self._lock:
            return self._meta("rev")

    def compact_rev(self) -> int:
        with self._lock:
            return self._meta("compact_rev")

    def _check_rev(self, rev: int | None) -> int | None:
        if rev is None:
            return None
        if rev < self._meta("compact_rev"):
            raise Compacted(f"revision {rev} has been compacted")
        if rev > self._meta("rev"):
            raise FutureRevision(f"revision {rev} is newer than the store")
        return rev

    def _row(self, row: Any) -> Record | None:
        key, mod_rev, create_rev, spec_rev, node, deleted, value = row
        if deleted:
            return None
        obj = json.loads(value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(mod_rev)
        return Record(key, obj, mod_rev, create_rev, spec_rev, node)

    def _latest(self, key: str, rev: int | None) -> Any:
        if rev is None:
            return self._conn.execute(
                f"SELECT {_COLS} FROM kv WHERE key=? ORDER BY mod_rev DESC LIMIT 1", (key,)
            ).fetchone()
        return self._conn.execute(
            f"SELECT {_COLS} FROM kv WHERE key=? AND mod_rev<=? ORDER BY mod_rev DESC LIMIT 1",
            (key, rev),
        ).fetchone()

    def get(self, key: str, *, rev: int | None = None) -> Record:
        with self._lock:
            rev = self._check_rev(rev)
            row = self._latest(key, rev)
            rec = self._row(row) if row else None
            if rec is None:
                raise NotFound(f"{key} not found", key=key)
            return rec

    def get_many(self, keys: Iterable[str], *, rev: int | None = None) -> builtins.list[Record]:
        with self._lock:
            rev = self._check_rev(rev)
            out = []
            for key in keys:
                row = self._latest(key, rev)
                rec = self._row(row) if row else None
                if rec is not None:
                    out.append(rec)
            return out

    def list(self, prefix: str, *, rev: int | None = None) -> tuple[builtins.list[Record], int]:
        with self._lock:
            return self.read(lambda b: b._list(prefix, rev))

    def _list(self, prefix: str, rev: int | None) -> tuple[builtins.list[Record], int]:
        rev = self._check_rev(rev)
        at = rev if rev is not None else self._meta("rev")
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM kv k WHERE key>=? AND key<? AND mod_rev=("
            "SELECT max(mod_rev) FROM kv WHERE key=k.key AND mod_rev<=?) ORDER BY key",
            (prefix, _prefix_end(prefix), at),
        ).fetchall()
        out = [r for r in (self._row(row) for row in rows) if r is not None]
        return out, at

    def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        with self._lock:
            rev = self._check_rev(rev)
            at = rev if rev is not None else self._meta("rev")
            keys = [
                k
                for (k,) in self._conn.execute(
                    "SELECT DISTINCT key FROM kv WHERE node=? AND key>=? AND key<?",
                    (node, prefix, _prefix_end(prefix)),
                )
            ]
            out = []
            for key in keys:
                row = self._latest(str(key), at)
                rec = self._row(row) if row else None
                if rec is not None and rec.node == node:
                    out.append(rec)
            out.sort(key=lambda r: r.key)
            return out

    def read(self, fn: Callable[[SqliteBackend], T]) -> T:
        """Run ``fn`` in one read transaction: every read inside sees one snapshot."""
        with self._lock:
            if self._in_read:
                return fn(self)
            self._in_read = True
            self._conn.execute("BEGIN")
            try:
                return fn(self)
            finally:
                self._in_read = False
                self._conn.execute("COMMIT")

    def changes_since(self, prefix: str, rev: int, *, limit: int = 10000) -> builtins.list[Event]:
        with self._lock:
            return self.read(lambda b: b._changes_since(prefix, rev, limit))

    def _changes_since(self, prefix: str, rev: int, limit: int) -> builtins.list[Event]:
        if rev < self._meta("compact_rev"):
            raise Compacted(f"revision {rev} has been compacted")
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM kv WHERE mod_rev>? AND key>=? AND key<? ORDER BY mod_rev LIMIT ?",
            (rev, prefix, _prefix_end(prefix), limit),
        ).fetchall()
        events = []
        for row in rows:
            key, mod_rev = str(row[0]), int(row[1])  # type: ignore[arg-type]
            prev_row = self._latest(key, mod_rev - 1)
            prev = self._row(prev_row) if prev_row else None
            if row[5]:  # tombstone
                if prev is None:
                    continue
                rec = Record(
                    key,
                    _with_rv(prev.value, mod_rev),
                    mod_rev,
                    prev.create_rev,
                    prev.spec_rev,
                    prev.node,
                )
                events.append(Event("DELETED", mod_rev, key, rec, prev))
            else:
                cur = self._row(row)
                assert cur is not None
                events.append(Event("MODIFIED" if prev else "ADDED", mod_rev, key, cur, prev))
        return events

    # ---- writes ------------------------------------------------------------------

    def _write(
        self,
        key: str,
        value: dict[str, Any] | None,
        prev: Record | None,
        *,
        status_only: bool = False,
    ) -> Event:
        c = self._conn
        rev = self._meta("rev") + 1
        if value is None:
            assert prev is not None
            node = prev.node
            c.execute(
                "INSERT INTO kv(key, mod_rev, create_rev, spec_rev, node, deleted, value) "
                "VALUES(?, ?, ?, ?, ?, 1, NULL)",
                (key, rev, prev.create_rev, prev.spec_rev, node),
            )
            c.execute("UPDATE meta SET value=? WHERE name='rev'", (rev,))
            rec = Record(
                key, _with_rv(prev.value, rev), rev, prev.create_rev, prev.spec_rev, prev.node
            )
            return Event("DELETED", rev, key, rec, prev)
        try:
            node = self._node_of(key, value)
        except Exception as exc:
            raise StoreError(f"cannot place {key}: {exc}", key=key) from exc
        obj = copy.deepcopy(value)
        meta = obj.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        if prev is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            create_rev = spec_rev = rev
        else:
            pmeta = prev.value.get("metadata") or {}
            for k in ("uid", "creationTimestamp"):
                if k in pmeta:
                    meta[k] = pmeta[k]
            create_rev = prev.create_rev
            changed = not status_only and _spec_part(obj) != _spec_part(prev.value)
            spec_rev = rev if changed else prev.spec_rev
            meta["generation"] = int(pmeta.get("generation") or 1) + (1 if changed else 0)
        c.execute(
            "INSERT INTO kv(key, mod_rev, create_rev, spec_rev, node, deleted, value) "
            "VALUES(?, ?, ?, ?, ?, 0, ?)",
            (key, rev, create_rev, spec_rev, node, json.dumps(obj, separators=(",", ":"))),
        )
        c.execute("UPDATE meta SET value=? WHERE name='rev'", (rev,))
        rec = Record(key, _with_rv(obj, rev), rev, create_rev, spec_rev, node)
        return Event("ADDED" if prev is None else "MODIFIED", rev, key, rec, prev)

    def _current(self, key: str) -> Record | None:
        row = self._latest(key, None)
        return self._row(row) if row else None

    def _tx(self, fn: Callable[[], Event]) -> Event:
        with self._lock:
            try:
                with self._conn:
                    ev = fn()
            except apsw.Error as exc:
                raise StoreError(f"store write failed: {exc}") from exc
            return ev

    def create(self, key: str, value: dict[str, Any]) -> Event:
        def run() -> Event:
            if self._current(key) is not None:
                raise AlreadyExists(f"{key} already exists", key=key)
            return self._write(key, value, None)

        return self._tx(run)

    def _expect(self, key: str, expect_rev: int | None) -> Record:
        prev = self._current(key)
        if prev is None:
            raise NotFound(f"{key} not found", key=key)
        if expect_rev is not None and expect_rev != prev.mod_rev:
            raise Conflict(
                f"{key} was modified (resourceVersion {prev.mod_rev}, expected {expect_rev})",
                key=key,
            )
        return prev

    def update(self, key: str, value: dict[str, Any], *, expect_rev: int | None = None) -> Event:
        return self._tx(lambda: self._write(key, value, self._expect(key, expect_rev)))

    def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        def run() -> Event:
            prev = self._expect(key, expect_rev)
            value = dict(prev.value)
            value["status"] = status
            return self._write(key, value, prev, status_only=True)

        return self._tx(run)

    def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        return self._tx(lambda: self._write(key, None, self._expect(key, expect_rev)))

    def compact(self, rev: int) -> None:
        with self._lock:
            with self._conn:
                cur = self._meta("rev")
                rev = min(rev, cur)
                if rev <= self._meta("compact_rev"):
                    return
                # Rows superseded by a newer row at or before rev.
                self._conn.execute(
                    "DELETE FROM kv WHERE mod_rev<? AND EXISTS (SELECT 1 FROM kv n WHERE "
                    "n.key=kv.key AND n.mod_rev>kv.mod_rev AND n.mod_rev<=?)",
                    (rev, rev),
                )
                # Tombstones at or before rev that are now the oldest row of their key.
                self._conn.execute("DELETE FROM kv WHERE deleted=1 AND mod_rev<=?", (rev,))
                self._conn.execute("UPDATE meta SET value=? WHERE name='compact_rev'", (rev,))

    def compact_keep(self, revisions: int) -> None:
        target = self.current_rev() - revisions
        if target > self.compact_rev():
            self.compact(target)


def _with_rv(value: dict[str, Any], rev: int) -> dict[str, Any]:
    obj = dict(value)
    obj["metadata"] = {**(obj.get("metadata") or {}), "resourceVersion": str(rev)}
    return obj


class Subscription:
    """A bounded feed of store events. A subscriber that falls behind is cut off
    (``SubscriptionLost``) rather than slowing writers down."""

    def __init__(self, buffer: int) -> None:
        self._send, self._recv = trio.open_memory_channel[Event](buffer)
        self.lost = False
        self.delivered = 0

    def _offer(self, ev: Event) -> None:
        if self.lost:
            return
        try:
            self._send.send_nowait(ev)
        except trio.WouldBlock:
            self.lost = True
            self._send.close()

    async def receive(self) -> Event:
        try:
            ev = await self._recv.receive()
        except trio.EndOfChannel:
            raise SubscriptionLost("subscriber fell behind the store's events") from None
        self.delivered += 1
        return ev

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()

    def statistics(self) -> dict[str, int]:
        st = self._recv.statistics()
        return {
            "buffered": st.current_buffer_used,
            "delivered": self.delivered,
            "lost": int(self.lost),
        }


class Store:
    """Async face of the store: blocking calls in one worker thread, events to
    subscribers in revision order."""

    def __init__(self, backend: SqliteBackend, *, subscriber_buffer: int = 1024) -> None:
        self.backend = backend
        self._limiter = trio.CapacityLimiter(1)
        self._subs: set[Subscription] = set()
        self._buffer = subscriber_buffer
        self._rev = backend.current_rev()
        self.counters: Counter[str] = Counter()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def current_rev(self) -> int:
        return self._rev

    @contextlib.contextmanager
    def subscribe(self, *, buffer: int | None = None) -> Iterator[Subscription]:
        sub = Subscription(buffer or self._buffer)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def _publish(self, ev: Event) -> Event:
        self._rev = max(self._rev, ev.rev)
        for sub in list(self._subs):
            sub._offer(ev)
            if sub.lost:
                self.counters["subscribers_lost"] += 1
                self._subs.discard(sub)
        return ev

    async def get(self, key: str, *, rev: int | None = None) -> Record:
        return await self.call(lambda: self.backend.get(key, rev=rev))

    async def list(
        self, prefix: str, *, rev: int | None = None
    ) -> tuple[builtins.list[Record], int]:
        return await self.call(lambda: self.backend.list(prefix, rev=rev))

    async def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        return await self.call(lambda: self.backend.list_by_node(prefix, node, rev=rev))

    async def get_many(
        self, keys: Iterable[str], *, rev: int | None = None
    ) -> builtins.list[Record]:
        keys = list(keys)
        return await self.call(lambda: self.backend.get_many(keys, rev=rev))

    async def changes_since(
        self, prefix: str, rev: int, *, limit: int = 10000
    ) -> builtins.list[Event]:
        return await self.call(lambda: self.backend.changes_since(prefix, rev, limit=limit))

    async def create(self, key: str, value: dict[str, Any]) -> Event:
        return self._publish(await self.call(self.backend.create, key, value))

    async def update(
        self, key: str, value: dict[str, Any], *, expect_rev: int | None = None
    ) -> Event:
        return self._publish(
            await self.call(lambda: self.backend.update(key, value, expect_rev=expect_rev))
        )

    async def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        return self._publish(
            await self.call(lambda: self.backend.update_status(key, status, expect_rev=expect_rev))
        )

    async def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        return self._publish(
            await self.call(lambda: self.backend.delete(key, expect_rev=expect_rev))
        )
