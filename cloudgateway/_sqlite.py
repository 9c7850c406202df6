"""The embedded store backend: etcd's MVCC model on SQLite (apsw).

Tables (readable with the sqlite3 CLI; values are compact JSON text):

- ``kv(key, mod_rev, create_rev, spec_rev, node, deleted, value)``: every
  revision of every key, tombstones (``deleted = 1``, ``value`` NULL) included;
- ``cur(key, mod_rev, node)``: the live head of each key, for fast current
  reads and ``list_by_node``;
- ``meta(name, value)``: ``rev`` and ``compact_rev``.

A file carries its schema version in ``PRAGMA user_version``; a file of another
version is refused (there are no released formats to migrate from yet).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import apsw

from ._backend import (
    UNCHANGED,
    AlreadyExists,
    Backend,
    Compacted,
    Event,
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

log = logging.getLogger(__name__)

__all__ = ["SqliteBackend"]

T = TypeVar("T")

_SCHEMA_VERSION = 1

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


# ---- SQL ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE kv(
    key TEXT NOT NULL,
    mod_rev INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    spec_rev INTEGER NOT NULL,
    node TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    value TEXT,
    PRIMARY KEY (key, mod_rev)
) WITHOUT ROWID;
CREATE INDEX kv_node ON kv(node, key);
CREATE INDEX kv_rev ON kv(mod_rev);
CREATE TABLE cur(
    key TEXT PRIMARY KEY,
    mod_rev INTEGER NOT NULL,
    node TEXT
) WITHOUT ROWID;
CREATE INDEX cur_node ON cur(node, key);
CREATE TABLE meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta(name, value) VALUES ('rev', 0), ('compact_rev', 0);
"""

_COLS = "kv.key, kv.mod_rev, kv.create_rev, kv.spec_rev, kv.node, kv.deleted, kv.value"

_HEAD = f"SELECT {_COLS} FROM kv WHERE key = ? ORDER BY mod_rev DESC LIMIT 1"
_AT = f"SELECT {_COLS} FROM kv WHERE key = ? AND mod_rev <= ? ORDER BY mod_rev DESC LIMIT 1"
_BEFORE = f"SELECT {_COLS} FROM kv WHERE key = ? AND mod_rev < ? ORDER BY mod_rev DESC LIMIT 1"

# Both take (lo, after, hi[, rev], limit): keys in [lo, hi) and above ``after``
# (pass lo's predecessor, "", when there is none), at most ``limit`` (-1: all).
_LIST_CUR = (
    f"SELECT {_COLS} FROM cur JOIN kv ON kv.key = cur.key AND kv.mod_rev = cur.mod_rev "
    "WHERE cur.key >= ? AND cur.key > ? AND cur.key < ? ORDER BY cur.key LIMIT ?"
)
# Each key's head as of the revision, tombstones dropped before the limit counts.
_LIST_AT = (
    "SELECT * FROM ("
    "  SELECT key, max(mod_rev), create_rev, spec_rev, node, deleted, value FROM kv"
    "  WHERE key >= ? AND key > ? AND key < ? AND mod_rev <= ? GROUP BY key"
    ") WHERE deleted = 0 ORDER BY key LIMIT ?"
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

    def __init__(self, path: str, *, node_of: NodeOf) -> None:
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
            self._open_schema()
        except apsw.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        except StoreError:
            self._conn.close()
            raise

    def _open_schema(self) -> None:
        """Create the schema in a new file; refuse a file of another version."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            version = cast(int, c.execute("PRAGMA user_version").fetchall()[0][0])
            if version == 0:
                tables = c.execute("SELECT count(*) FROM sqlite_master").fetchall()[0][0]
                if tables:
                    raise StoreError(
                        f"store {self.path} has no schema version: it was written by a "
                        "pre-release gateway and cannot be read; start from a new data dir"
                    )
                c.execute(_SCHEMA)
                c.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}; "
                    f"this gateway reads only version {_SCHEMA_VERSION}"
                )
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
        check_rev_arg("rev", rev)
        if rev > cur:
            raise FutureRevision(f"revision {rev} is newer than the store's revision {cur}")
        compact = self._meta("compact_rev")
        if rev < compact:
            raise Compacted(f"revision {rev} is older than the compaction horizon {compact}")
        return rev

    def _reading(self, fn: Callable[[], T]) -> T:
        return self.read(lambda _b: fn())

    def read(self, fn: Callable[[Backend], T]) -> T:
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
        check_text("key", key)

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
            check_text("key", key)

        def run() -> builtins.list[Record]:
            at = self._at(rev)
            out = []
            for key in wanted:
                rec = self._one(_AT, (key, at))
                if rec is not None:
                    out.append(rec)
            return out

        return self._reading(run)

    def list(
        self,
        prefix: str,
        *,
        rev: int | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[Record], int]:
        """Live records under ``prefix`` sorted by key, and the revision read at;
        with ``after``, only keys after it; with ``limit``, at most that many."""
        lo, hi = _key_range(check_text("prefix", prefix, empty=True))
        above = "" if after is None else check_text("after", after, empty=True)
        if limit is not None:
            check_limit(limit)
        n = -1 if limit is None else limit

        def run() -> tuple[builtins.list[Record], int]:
            at = self._at(rev)
            if at == self._meta("rev"):
                rows = self._fetch(_LIST_CUR, (lo, above, hi, n))
            else:
                rows = self._fetch(_LIST_AT, (lo, above, hi, at, n))
            return [r for r in map(_record, rows) if r is not None], at

        return self._reading(run)

    def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        """Live records under ``prefix`` whose node is ``node`` at ``rev``, sorted
        by key. Reads through the node indexes, never the whole prefix."""
        lo, hi = _key_range(check_text("prefix", prefix, empty=True))
        check_text("node", node)

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
        lo, hi = _key_range(check_text("prefix", prefix, empty=True))
        check_rev_arg("rev", rev)
        check_limit(limit)

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
                    value = with_rv(prev.value, mod_rev)
                    dead = Record(key, value, mod_rev, prev.create_rev, prev.spec_rev, prev.node)
                else:  # cannot happen while history is intact; say what we know
                    _, _, name = key.rpartition("/")
                    value = {"metadata": {"name": name, "resourceVersion": str(mod_rev)}}
                    dead = Record(key, value, mod_rev, row[2], row[3], row[4])
                events.append(Event("DELETED", mod_rev, key, dead, prev))
            return events

        return self._reading(run)

    # ---- writes -----------------------------------------------------------------------

    def _put(
        self, key: str, obj: dict[str, Any], rev: int, create_rev: int, spec_rev: int
    ) -> Record:
        """Write ``obj`` (metadata already settled) as ``key``'s head at ``rev``."""
        node = place(self._node_of, key, obj)
        text = dump(obj, key)
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
        return check_expected(prev, expect_rev)

    def _replace(self, prev: Record, obj: dict[str, Any]) -> Event:
        changed = settle_replacement(prev, obj)
        rev = self._meta("rev") + 1
        rec = self._put(prev.key, obj, rev, prev.create_rev, rev if changed else prev.spec_rev)
        return Event("MODIFIED", rev, prev.key, rec, prev)

    def create(self, key: str, value: dict[str, Any]) -> Event:
        check_text("key", key)
        obj = normalized_object(key, value)

        def run() -> Event:
            if self._one(_HEAD, (key,)) is not None:
                raise AlreadyExists(f"{key} already exists", key=key)
            settle_new(obj)
            rev = self._meta("rev") + 1
            return Event("ADDED", rev, key, self._put(key, obj, rev, rev, rev), None)

        return self._write(run)

    def update(self, key: str, value: dict[str, Any], *, expect_rev: int | None = None) -> Event:
        """Replace ``key``'s value (``uid`` and ``creationTimestamp`` are kept)."""
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)
        obj = normalized_object(key, value)
        return self._write(lambda: self._replace(self._head(key, expect_rev), obj))

    def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        """Replace only ``.status`` (``None`` removes it); ``spec_rev`` is kept."""
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)
        status = json.loads(dump(status, key))
        return self._write(lambda: self._replace_status(self._head(key, expect_rev), status))

    def _replace_status(self, prev: Record, status: Any) -> Event:
        return self._replace(prev, with_status(prev, status))

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
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)

        def run() -> Event | None:
            prev = self._head(key, expect_rev)
            new = edit(prev)
            if new is UNCHANGED:
                return None
            if status:
                return self._replace_status(prev, json.loads(dump(new, key)))
            return self._replace(prev, normalized_object(key, new))

        return self._write(run)

    def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        check_text("key", key)
        check_rev_arg("expect_rev", expect_rev)

        def run() -> Event:
            prev = self._head(key, expect_rev)
            rev = self._meta("rev") + 1
            c = self._conn
            c.execute(_INSERT, (key, rev, prev.create_rev, prev.spec_rev, prev.node, 1, None))
            c.execute("DELETE FROM cur WHERE key = ?", (key,))
            c.execute("UPDATE meta SET value = ? WHERE name = 'rev'", (rev,))
            value = with_rv(prev.value, rev)
            rec = Record(key, value, rev, prev.create_rev, prev.spec_rev, prev.node)
            return Event("DELETED", rev, key, rec, prev)

        return self._write(run)

    # ---- compaction -------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Forget history before ``rev``: rows superseded at or before it and
        tombstones at or before it. Reads at ``rev`` or later are unchanged; older
        ones raise ``Compacted``. A ``rev`` at or below the horizon is a no-op."""
        check_rev_arg("rev", rev)
        self._write(lambda: self._compact(rev))

    def compact_keep(self, revisions: int) -> None:
        """Compact to ``current_rev - revisions`` (no-op if not past the horizon)."""
        check_rev_arg("revisions", revisions)
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
