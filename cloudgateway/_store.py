"""The gateway's revisioned store: etcd's MVCC model on SQLite (apsw).

One global revision, bumped by exactly one by every write. Every revision of
every key is kept (a delete writes a tombstone) until compaction, so the store
can be read as of any revision between the compaction horizon and now. Each
record carries:

- ``mod_rev``: the revision of its last write (its ``resourceVersion``);
- ``create_rev``: the revision that created it;
- ``spec_rev``: the revision of the last write that changed anything other than
  ``.status`` (and the store-managed ``metadata.resourceVersion`` and
  ``metadata.generation``); status-only writes keep it;
- ``node``: the node whose view it belongs to directly (``node_of``), indexed.

Tables (readable with the sqlite3 CLI; values are compact JSON text):

- ``kv(key, mod_rev, create_rev, spec_rev, node, deleted, value)``: every
  revision of every key, tombstones (``deleted = 1``, ``value`` NULL) included;
- ``cur(key, mod_rev, node)``: the live head of each key, for fast current
  reads and ``list_by_node``;
- ``meta(name, value)``: ``rev`` and ``compact_rev``.

``SqliteBackend`` is blocking. ``Store`` runs it in one worker thread at a time
and publishes each write's ``Event`` to bounded subscriptions, in revision order.
Every value the store hands out is fresh, but shared between the event's
subscribers: treat it as read-only.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast

import apsw
import trio

import edgeproto

from ._errors import GatewayError

log = logging.getLogger(__name__)

__all__ = [
    "UNCHANGED",
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
    "Unavailable",
]

T = TypeVar("T")


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()  # what a modify() edit returns to write nothing

_SCHEMA_VERSION = 1


# ---- errors -------------------------------------------------------------------------


class StoreError(GatewayError):
    """Root of the store's errors; ``key`` names the key concerned, if any."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(StoreError):
    """The key does not exist (or is deleted) at the revision read."""


class AlreadyExists(StoreError):
    """``create`` of a key that exists."""


class Conflict(StoreError):
    """The key's current ``mod_rev`` (or uid) is not the one the writer expected."""


class Compacted(StoreError):
    """The revision asked for is older than the compaction horizon."""


class FutureRevision(StoreError):
    """The revision asked for is newer than the store's current revision."""


class Unavailable(StoreError):
    """The store could not do it right now (database busy or locked, disk full,
    an I/O error, a backend unreachable): the same request may succeed later.
    Callers answering a peer must not treat this as a final refusal."""


class SubscriptionLost(StoreError):
    """The subscriber fell behind (or was closed) and missed events: re-list."""


# apsw errors that say "not now" rather than "never": the same write may succeed later.
_TRANSIENT = (
    apsw.BusyError,
    apsw.LockedError,
    apsw.FullError,
    apsw.IOError,
    apsw.CantOpenError,
    apsw.ReadOnlyError,
    apsw.InterruptError,
    apsw.NoMemError,
)


def _apsw_error(what: str, exc: apsw.Error) -> StoreError:
    cls = Unavailable if isinstance(exc, _TRANSIENT) else StoreError
    return cls(f"{what}: {exc}")


# ---- records and events -------------------------------------------------------------


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
    rev: int  # the revision this write created
    key: str
    record: Record  # new state; for DELETED the last value, with mod_rev = rev
    prev: Record | None  # state before the write (None for ADDED)


# ---- SQL ----------------------------------------------------------------------------

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
CREATE TABLE IF NOT EXISTS cur(
    key TEXT PRIMARY KEY,
    mod_rev INTEGER NOT NULL,
    node TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cur_node ON cur(node, key);
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(name, value) VALUES ('rev', 0), ('compact_rev', 0);
"""

# Rebuilds ``cur`` from history (a no-op on a new file; fills it for files written
# before ``cur`` existed). Uses SQLite's bare-column rule: with max(), the other
# columns come from the row holding the maximum.
_REBUILD_CUR = """
DELETE FROM cur;
INSERT INTO cur(key, mod_rev, node)
    SELECT key, mod_rev, node FROM (
        SELECT key, max(mod_rev) AS mod_rev, node, deleted FROM kv GROUP BY key
    ) WHERE deleted = 0;
"""

_COLS = "kv.key, kv.mod_rev, kv.create_rev, kv.spec_rev, kv.node, kv.deleted, kv.value"

_HEAD = f"SELECT {_COLS} FROM kv WHERE key = ? ORDER BY mod_rev DESC LIMIT 1"
_AT = f"SELECT {_COLS} FROM kv WHERE key = ? AND mod_rev <= ? ORDER BY mod_rev DESC LIMIT 1"
_BEFORE = f"SELECT {_COLS} FROM kv WHERE key = ? AND mod_rev < ? ORDER BY mod_rev DESC LIMIT 1"

_LIST_CUR = (
    f"SELECT {_COLS} FROM cur JOIN kv ON kv.key = cur.key AND kv.mod_rev = cur.mod_rev "
    "WHERE cur.key >= ? AND cur.key < ? ORDER BY cur.key"
)
_LIST_AT = (
    "SELECT key, max(mod_rev), create_rev, spec_rev, node, deleted, value FROM kv "
    "WHERE key >= ? AND key < ? AND mod_rev <= ? GROUP BY key ORDER BY key"
)
_NODE_CUR = (
    f"SELECT {_COLS} FROM cur JOIN kv ON kv.key = cur.key AND kv.mod_rev = cur.mod_rev "
    "WHERE cur.node = ? AND cur.key >= ? AND cur.key < ? ORDER BY cur.key"
)
# Candidates come from the node index (every key that was ever on the node up to
# the revision); each is then checked against its head as of that revision.
_NODE_AT = (
    f"SELECT {_COLS} FROM kv WHERE kv.key IN ("
    "  SELECT DISTINCT key FROM kv INDEXED BY kv_node"
    "  WHERE node = ? AND key >= ? AND key < ? AND mod_rev <= ?"
    ") AND kv.mod_rev = ("
    "  SELECT max(h.mod_rev) FROM kv AS h WHERE h.key = kv.key AND h.mod_rev <= ?"
    ") AND kv.node = ? AND kv.deleted = 0 ORDER BY kv.key"
)
_CHANGES = (
    f"SELECT {_COLS} FROM kv INDEXED BY kv_rev WHERE mod_rev > ? AND key >= ? AND key < ? "
    "ORDER BY mod_rev LIMIT ?"
)
_INSERT = (
    "INSERT INTO kv(key, mod_rev, create_rev, spec_rev, node, deleted, value) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Rows superseded by a write in (old compact_rev, rev]; older ones went in earlier
# compactions.
_COMPACT_SUPERSEDED = """
DELETE FROM kv WHERE (key, mod_rev) IN (
    SELECT o.key, o.mod_rev FROM kv AS n JOIN kv AS o ON o.key = n.key AND o.mod_rev < n.mod_rev
    WHERE n.mod_rev > ? AND n.mod_rev <= ?
)
"""
_COMPACT_TOMBSTONES = "DELETE FROM kv WHERE deleted = 1 AND mod_rev > ? AND mod_rev <= ?"

_Row = tuple[str, int, int, int, str | None, int, str | None]


# ---- helpers ------------------------------------------------------------------------


def _key_range(prefix: str) -> tuple[str, str | bytes]:
    """``[prefix, end)`` for ``key >= ? AND key < ?``. Without a finite end the
    bound is an empty BLOB: SQLite sorts every TEXT value before every BLOB."""
    p = prefix
    while p:
        c = ord(p[-1]) + 1
        if c == 0xD800:  # skip the surrogates, which UTF-8 cannot carry
            c = 0xE000
        if c <= 0x10FFFF:
            return prefix, p[:-1] + chr(c)
        p = p[:-1]
    return prefix, b""


def _check_text(what: str, text: object, *, empty: bool = False) -> str:
    if not isinstance(text, str):
        raise StoreError(f"{what} must be a string, not {type(text).__name__}")
    if not text and not empty:
        raise StoreError(f"{what} must not be empty")
    if "\x00" in text:
        raise StoreError(f"{what} {text!r} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} {text!r} is not valid Unicode") from None
    return text


def _check_rev_arg(what: str, rev: object) -> None:
    if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool) or rev < 0):
        raise StoreError(f"{what} must be a non-negative integer, not {rev!r}")


def _dump(obj: Any, key: str) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"{key}: value is not storable as JSON: {exc}", key=key) from None


def _object(key: str, value: object) -> dict[str, Any]:
    """A private, JSON-normalized copy of ``value`` (what a later read returns)."""
    if not isinstance(value, dict):
        raise StoreError(f"{key}: value must be an object, not {type(value).__name__}", key=key)
    obj: dict[str, Any] = json.loads(_dump(value, key))
    if not isinstance(obj.setdefault("metadata", {}), dict):
        raise StoreError(f"{key}: metadata must be an object", key=key)
    return obj


def _now() -> str:
    return edgeproto.rfc3339(time.time())


def _spec_part(value: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in value.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    meta.pop("resourceVersion", None)
    meta.pop("generation", None)
    out["metadata"] = meta
    return out


def _with_rv(value: dict[str, Any], rev: int) -> dict[str, Any]:
    obj = dict(value)
    obj["metadata"] = {**(obj.get("metadata") or {}), "resourceVersion": str(rev)}
    return obj


def _record(row: _Row) -> Record | None:
    """The record a kv row holds, or None for a tombstone."""
    key, mod_rev, create_rev, spec_rev, node, deleted, value = row
    if deleted or value is None:
        return None
    obj = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(mod_rev)
    return Record(key, obj, mod_rev, create_rev, spec_rev, node)


# ---- the blocking backend -----------------------------------------------------------


class SqliteBackend:
    """Blocking MVCC store on one apsw connection.

    Thread-safe (one lock around the connection); ``Store`` additionally runs it
    in one worker thread at a time. Every write is one ``BEGIN IMMEDIATE``
    transaction. Any SQLite failure surfaces as ``StoreError``.
    """

    def __init__(self, path: str, *, node_of: Callable[[str, dict[str, Any]], str | None]) -> None:
        self.path = path
        self._node_of = node_of
        self._lock = threading.RLock()
        self._in_read = False
        self._in_batch = False
        try:
            self._conn = apsw.Connection(path)
        except apsw.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            self._conn.set_busy_timeout(5000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except apsw.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        except StoreError:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            version = cast(int, c.execute("PRAGMA user_version").fetchall()[0][0])
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}; "
                    f"this gateway knows up to {_SCHEMA_VERSION}"
                )
            c.execute(_SCHEMA)
            if version < _SCHEMA_VERSION:
                c.execute(_REBUILD_CUR)
                c.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteBackend({self.path!r})"

    # ---- plumbing ---------------------------------------------------------------------

    def _meta(self, name: str) -> int:
        rows = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchall()
        return cast(int, rows[0][0]) if rows else 0

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> builtins.list[_Row]:
        return cast("builtins.list[_Row]", self._conn.execute(sql, args).fetchall())

    def _one(self, sql: str, args: tuple[Any, ...]) -> Record | None:
        rows = self._fetch(sql, args)
        return _record(rows[0]) if rows else None

    def _at(self, rev: int | None) -> int:
        """The revision to read at, checked against the horizon and the head."""
        cur = self._meta("rev")
        if rev is None:
            return cur
        _check_rev_arg("rev", rev)
        if rev > cur:
            raise FutureRevision(f"revision {rev} is newer than the store's revision {cur}")
        compact = self._meta("compact_rev")
        if rev < compact:
            raise Compacted(f"revision {rev} is older than the compaction horizon {compact}")
        return rev

    def _reading(self, fn: Callable[[], T]) -> T:
        return self.read(lambda _b: fn())

    def read(self, fn: Callable[[SqliteBackend], T]) -> T:
        """Run ``fn(self)`` in one read transaction: every read inside sees one
        snapshot. Nested calls (reads inside ``fn``) join the outer transaction;
        writes inside ``fn`` are refused."""
        with self._lock:
            if self._in_read:
                return fn(self)
            try:
                self._conn.execute("BEGIN")
                self._meta("rev")  # take the snapshot now
            except apsw.Error as exc:
                self._abort()
                raise _apsw_error("store read failed", exc) from exc
            self._in_read = True
            try:
                result = fn(self)
            except apsw.Error as exc:
                raise _apsw_error("store read failed", exc) from exc
            finally:
                self._in_read = False
                self._abort()
            return result

    def _abort(self) -> None:
        with contextlib.suppress(apsw.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _write(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._in_read:
                raise StoreError("cannot write inside read()")
            try:
                if self._in_batch:
                    # Inside write_many's transaction: a savepoint, so a failed
                    # write undoes only itself.
                    self._conn.execute("SAVEPOINT w")
                    try:
                        result = fn()
                    except BaseException:
                        self._conn.execute("ROLLBACK TO w")
                        self._conn.execute("RELEASE w")
                        raise
                    self._conn.execute("RELEASE w")
                    return result
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn()
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._abort()
                    raise
            except apsw.Error as exc:
                raise _apsw_error("store write failed", exc) from exc
            return result

    def write_many(self, writes: Sequence[Callable[[], T]]) -> builtins.list[T | Exception]:
        """Run several writes (calls of this backend's write methods) in one
        transaction (group commit): each gets its result or its own exception,
        in order; a failed commit fails them all. One transaction instead of
        one each is what keeps a storm of node status writes cheap."""
        with self._lock:
            if self._in_read or self._in_batch:
                raise StoreError("cannot write_many inside read() or write_many()")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except apsw.Error as exc:
                self._abort()
                raise _apsw_error("store write failed", exc) from exc
            results: builtins.list[T | Exception] = []
            self._in_batch = True
            try:
                for write in writes:
                    try:
                        results.append(write())
                    except Exception as exc:
                        results.append(exc)
                self._conn.execute("COMMIT")
            except apsw.Error as exc:
                self._abort()
                return [_apsw_error("store write failed", exc) for _ in writes]
            except BaseException:
                self._abort()
                raise
            finally:
                self._in_batch = False
            return results

    # ---- reads ------------------------------------------------------------------------

    def current_rev(self) -> int:
        return self._reading(lambda: self._meta("rev"))

    def compact_rev(self) -> int:
        return self._reading(lambda: self._meta("compact_rev"))

    def get(self, key: str, *, rev: int | None = None) -> Record:
        _check_text("key", key)

        def run() -> Record:
            at = self._at(rev)
            rec = self._one(_HEAD if rev is None else _AT, (key,) if rev is None else (key, at))
            if rec is None:
                where = "" if rev is None else f" at revision {at}"
                raise NotFound(f"{key} not found{where}", key=key)
            return rec

        return self._reading(run)

    def get_many(self, keys: Iterable[str], *, rev: int | None = None) -> builtins.list[Record]:
        """Records of ``keys`` (in the order given, duplicates once); missing keys
        are skipped."""
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            _check_text("key", key)

        def run() -> builtins.list[Record]:
            at = self._at(rev)
            out = []
            for key in wanted:
                rec = self._one(_AT, (key, at))
                if rec is not None:
                    out.append(rec)
            return out

        return self._reading(run)

    def list(self, prefix: str, *, rev: int | None = None) -> tuple[builtins.list[Record], int]:
        """Live records under ``prefix`` sorted by key, and the revision read at."""
        lo, hi = _key_range(_check_text("prefix", prefix, empty=True))

        def run() -> tuple[builtins.list[Record], int]:
            at = self._at(rev)
            if at == self._meta("rev"):
                rows = self._fetch(_LIST_CUR, (lo, hi))
            else:
                rows = self._fetch(_LIST_AT, (lo, hi, at))
            return [r for r in map(_record, rows) if r is not None], at

        return self._reading(run)

    def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        """Live records under ``prefix`` whose node is ``node`` at ``rev``, sorted
        by key. Reads through the node indexes, never the whole prefix."""
        lo, hi = _key_range(_check_text("prefix", prefix, empty=True))
        _check_text("node", node)

        def run() -> builtins.list[Record]:
            at = self._at(rev)
            if at == self._meta("rev"):
                rows = self._fetch(_NODE_CUR, (node, lo, hi))
            else:
                rows = self._fetch(_NODE_AT, (node, lo, hi, at, at, node))
            return [r for r in map(_record, rows) if r is not None]

        return self._reading(run)

    def changes_since(self, prefix: str, rev: int, *, limit: int = 10000) -> builtins.list[Event]:
        """Events for keys under ``prefix`` with revisions above ``rev``, oldest
        first, at most ``limit``. ``prev`` is the state before each event."""
        lo, hi = _key_range(_check_text("prefix", prefix, empty=True))
        _check_rev_arg("rev", rev)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise StoreError(f"limit must be a positive integer, not {limit!r}")

        def run() -> builtins.list[Event]:
            self._at(rev)
            events = []
            for row in self._fetch(_CHANGES, (rev, lo, hi, limit)):
                key, mod_rev = row[0], row[1]
                prev = self._one(_BEFORE, (key, mod_rev))
                cur = _record(row)
                if cur is not None:
                    events.append(Event("MODIFIED" if prev else "ADDED", mod_rev, key, cur, prev))
                    continue
                if prev is not None:
                    value = _with_rv(prev.value, mod_rev)
                    dead = Record(key, value, mod_rev, prev.create_rev, prev.spec_rev, prev.node)
                else:  # cannot happen while history is intact; say what we know
                    _, _, name = key.rpartition("/")
                    value = {"metadata": {"name": name, "resourceVersion": str(mod_rev)}}
                    dead = Record(key, value, mod_rev, row[2], row[3], row[4])
                events.append(Event("DELETED", mod_rev, key, dead, prev))
            return events

        return self._reading(run)

    # ---- writes -----------------------------------------------------------------------

    def _place(self, key: str, obj: dict[str, Any]) -> str | None:
        try:
            node = self._node_of(key, obj)
        except Exception as exc:
            raise StoreError(f"cannot place {key} on a node: {exc}", key=key) from exc
        if node is not None and not isinstance(node, str):
            raise StoreError(
                f"cannot place {key}: node_of returned {type(node).__name__}, not a string",
                key=key,
            )
        return node

    def _put(
        self, key: str, obj: dict[str, Any], rev: int, create_rev: int, spec_rev: int
    ) -> Record:
        """Write ``obj`` (metadata already settled) as ``key``'s head at ``rev``."""
        node = self._place(key, obj)
        text = _dump(obj, key)
        c = self._conn
        c.execute(_INSERT, (key, rev, create_rev, spec_rev, node, 0, text))
        c.execute(
            "INSERT INTO cur(key, mod_rev, node) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET mod_rev = excluded.mod_rev, node = excluded.node",
            (key, rev, node),
        )
        c.execute("UPDATE meta SET value = ? WHERE name = 'rev'", (rev,))
        obj["metadata"]["resourceVersion"] = str(rev)
        return Record(key, obj, rev, create_rev, spec_rev, node)

    def _head(self, key: str, expect_rev: int | None) -> Record:
        prev = self._one(_HEAD, (key,))
        if prev is None:
            raise NotFound(f"{key} not found", key=key)
        if expect_rev is not None and expect_rev != prev.mod_rev:
            raise Conflict(
                f"{key} has been modified: resourceVersion is {prev.mod_rev}, "
                f"expected {expect_rev}",
                key=key,
            )
        return prev

    def _replace(self, prev: Record, obj: dict[str, Any]) -> Event:
        key = prev.key
        meta = obj["metadata"]
        pmeta = prev.value["metadata"]
        uid = meta.get("uid")
        if uid is not None and uid != pmeta.get("uid"):
            raise Conflict(f"{key}: uid {uid!r} does not match {pmeta.get('uid')!r}", key=key)
        for k in ("uid", "creationTimestamp"):  # set by the store at creation, immutable
            if k in pmeta:
                meta[k] = pmeta[k]
        meta.pop("resourceVersion", None)
        meta.pop("generation", None)
        rev = self._meta("rev") + 1
        changed = _spec_part(obj) != _spec_part(prev.value)
        generation = pmeta.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool):
            generation = 1
        meta["generation"] = generation + 1 if changed else generation
        rec = self._put(key, obj, rev, prev.create_rev, rev if changed else prev.spec_rev)
        return Event("MODIFIED", rev, key, rec, prev)

    def create(self, key: str, value: dict[str, Any]) -> Event:
        _check_text("key", key)
        obj = _object(key, value)

        def run() -> Event:
            if self._one(_HEAD, (key,)) is not None:
                raise AlreadyExists(f"{key} already exists", key=key)
            meta = obj["metadata"]
            meta.pop("resourceVersion", None)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            rev = self._meta("rev") + 1
            return Event("ADDED", rev, key, self._put(key, obj, rev, rev, rev), None)

        return self._write(run)

    def update(self, key: str, value: dict[str, Any], *, expect_rev: int | None = None) -> Event:
        """Replace ``key``'s value (``uid`` and ``creationTimestamp`` are kept)."""
        _check_text("key", key)
        _check_rev_arg("expect_rev", expect_rev)
        obj = _object(key, value)
        return self._write(lambda: self._replace(self._head(key, expect_rev), obj))

    def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        """Replace only ``.status`` (``None`` removes it); ``spec_rev`` is kept."""
        _check_text("key", key)
        _check_rev_arg("expect_rev", expect_rev)
        status = json.loads(_dump(status, key))
        return self._write(lambda: self._replace_status(self._head(key, expect_rev), status))

    def _replace_status(self, prev: Record, status: Any) -> Event:
        obj = json.loads(_dump(prev.value, prev.key))
        if status is None:
            obj.pop("status", None)
        else:
            obj["status"] = status
        return self._replace(prev, obj)

    def modify(
        self,
        key: str,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        expect_rev: int | None = None,
    ) -> Event | None:
        """Write ``edit(current record)`` in the same transaction that read it:
        the whole object, or with ``status`` its status only. ``edit`` returning
        ``UNCHANGED`` writes nothing (``None``); its exceptions pass through."""
        _check_text("key", key)
        _check_rev_arg("expect_rev", expect_rev)

        def run() -> Event | None:
            prev = self._head(key, expect_rev)
            new = edit(prev)
            if new is UNCHANGED:
                return None
            if status:
                return self._replace_status(prev, json.loads(_dump(new, key)))
            return self._replace(prev, _object(key, new))

        return self._write(run)

    def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        _check_text("key", key)
        _check_rev_arg("expect_rev", expect_rev)

        def run() -> Event:
            prev = self._head(key, expect_rev)
            rev = self._meta("rev") + 1
            c = self._conn
            c.execute(_INSERT, (key, rev, prev.create_rev, prev.spec_rev, prev.node, 1, None))
            c.execute("DELETE FROM cur WHERE key = ?", (key,))
            c.execute("UPDATE meta SET value = ? WHERE name = 'rev'", (rev,))
            value = _with_rv(prev.value, rev)
            rec = Record(key, value, rev, prev.create_rev, prev.spec_rev, prev.node)
            return Event("DELETED", rev, key, rec, prev)

        return self._write(run)

    # ---- compaction -------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Forget history before ``rev``: rows superseded at or before it and
        tombstones at or before it. Reads at ``rev`` or later are unchanged; older
        ones raise ``Compacted``. A ``rev`` at or below the horizon is a no-op."""
        _check_rev_arg("rev", rev)
        self._write(lambda: self._compact(rev))

    def compact_keep(self, revisions: int) -> None:
        """Compact to ``current_rev - revisions`` (no-op if not past the horizon)."""
        _check_rev_arg("revisions", revisions)
        self._write(lambda: self._compact(max(0, self._meta("rev") - revisions)))

    def _compact(self, rev: int) -> None:
        cur, old = self._meta("rev"), self._meta("compact_rev")
        if rev > cur:
            raise FutureRevision(f"cannot compact to {rev}: the store is at revision {cur}")
        if rev <= old:
            return
        c = self._conn
        c.execute(_COMPACT_SUPERSEDED, (old, rev))
        superseded = c.changes()
        c.execute(_COMPACT_TOMBSTONES, (old, rev))
        tombstones = c.changes()
        c.execute("UPDATE meta SET value = ? WHERE name = 'compact_rev'", (rev,))
        log.debug(
            "compacted %s to revision %d: %d old rows, %d tombstones",
            self.path,
            rev,
            superseded,
            tombstones,
        )


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

    def __init__(self, backend: SqliteBackend, *, subscriber_buffer: int = 1024) -> None:
        if subscriber_buffer < 1:
            raise StoreError(f"subscriber_buffer must be at least 1, not {subscriber_buffer}")
        self.backend = backend
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
        self, prefix: str, *, rev: int | None = None
    ) -> tuple[builtins.list[Record], int]:
        return await self.call(functools.partial(self.backend.list, prefix, rev=rev))

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
