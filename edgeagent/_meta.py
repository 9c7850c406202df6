"""The agent's metadata store (apsw/SQLite): objects from the cloud, sync state
and the outbox of reports waiting for the gateway's ack.

Everything the agent knows lives here, so it starts and answers queries with
the gateway unreachable. WAL mode, ``synchronous=NORMAL``: a crash can lose at
most the last committed batch, which the gateway resends (last_rev did not move)
or the outbox resends (not acked). Each sync batch is one transaction with its
last_rev, committed before the ack.

A store that cannot be opened for writing because its card is full or
read-only is opened read-only instead, and a write that finds the card so at
run time switches the store to read-only too (``storage_problem`` says why):
the agent serves the objects it has, keeps state and reports in memory, and
``Meta.run`` keeps trying to open the store for writing; once the card has
room again, what was kept in memory is written and the store is writable.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio

import edgeproto
from edgeproto import Apply, decode_object

from ._errors import AgentError

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "Meta",
    "MetaError",
    "OutboxItem",
    "StorageProblem",
    "open_meta_read_only",
    "open_meta_sync",
]

T = TypeVar("T")

SCHEMA_VERSION = 1  # PRAGMA user_version of the store this agent writes
MIN_FREE_BYTES = 256 * 1024  # a read-only store (full card) is written again past this

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects(
    key TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    rev INTEGER NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state(name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox(
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    coalesce INTEGER NOT NULL,
    op TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
"""


class MetaError(AgentError):
    """The metadata database cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    key: str  # what coalesces: the object's key, maybe with a "#tag"
    op: str
    body: bytes  # CBOR map

    @property
    def object_key(self) -> str:
        """The key of the object the report is about. An outbox key may carry a
        ``#tag`` so that several reports about one object coalesce separately (a
        device's status, its edge-set desired values, each history slot)."""
        return self.key.partition("#")[0]


@dataclass(frozen=True, slots=True)
class StorageProblem:
    """Why the store is read-only: ``reason`` is a node condition's reason
    (``EdgeStorageFull`` or ``EdgeStorageReadOnly``), ``message`` the detail."""

    reason: str
    message: str


# What a full or read-only card makes SQLite answer when the store is opened
# for writing (creating the WAL index on a full tmpfs is an I/O error).
_STORAGE_ERRORS = (apsw.IOError, apsw.FullError, apsw.ReadOnlyError, apsw.CantOpenError)


def open_meta_sync(path: Path) -> apsw.Connection:
    try:
        conn = apsw.Connection(str(path))
    except apsw.Error as exc:
        raise MetaError(f"cannot open {path}: {exc}") from exc
    try:
        conn.setbusytimeout(5000)
        # 512-byte pages (set when the file is created; SQLite's default is 4 KiB):
        # a twin update or an outbox row touches a few pages per commit, and every
        # page is written whole to the WAL. Small pages write ~4x fewer bytes per
        # update to the SD card (BENCHMARKS.md); the page cache stays 512 KiB.
        conn.execute("PRAGMA page_size=512")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # A board's metadata is small and read rarely: a 512 KiB page cache
        # instead of SQLite's 2 MiB default keeps the agent's RSS down.
        conn.execute("PRAGMA cache_size=-512")
        with conn:
            version = _check_version(path, conn)
            conn.execute(_SCHEMA)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except (apsw.Error, MetaError) as exc:
        conn.close()
        if isinstance(exc, MetaError):
            raise
        raise MetaError(f"cannot open {path}: {exc}") from exc
    return conn


def _check_version(path: Path, conn: apsw.Connection) -> int:
    """The store's schema version; a newer one than this agent knows is refused
    (0 is a new file, or one written before the version was recorded)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise MetaError(
            f"{path} has schema version {version}, newer than this agent's "
            f"{SCHEMA_VERSION}: it was written by a newer edgeagent"
        )
    return version


def open_meta_read_only(path: Path, *, busy_timeout_ms: int = 5000) -> apsw.Connection:
    """Open an existing store without writing anything, for a full or
    read-only card, where opening it for writing fails (SQLite must create the
    WAL's index file). Tried in turn: a plain read-only open (the WAL's files
    exist and can be read as they are); an exclusive-lock open, which keeps the
    WAL index in memory and so reads the WAL on a full card; an immutable open
    (a read-only card with no WAL: nothing can change the file)."""
    if not path.is_file():
        raise MetaError(f"cannot open {path} read-only: no such file")
    uri = "file:" + urllib.parse.quote(str(path.absolute()))
    attempts = (
        (str(path), apsw.SQLITE_OPEN_READONLY, False),
        (str(path), apsw.SQLITE_OPEN_READWRITE, True),
        (uri + "?immutable=1", apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, False),
    )
    errors: list[str] = []
    for name, flags, exclusive in attempts:
        conn: apsw.Connection | None = None
        try:
            conn = apsw.Connection(name, flags=flags)
            conn.setbusytimeout(busy_timeout_ms)
            conn.execute("PRAGMA query_only=1")  # this connection never writes
            if exclusive:
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA cache_size=-512")
            _check_version(path, conn)
            tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"objects", "state", "outbox"} <= tables:
                raise MetaError(f"{path} has no agent store to read")
        except apsw.Error as exc:
            errors.append(str(exc))
            if conn is not None:
                conn.close()
            continue
        except MetaError:
            if conn is not None:
                conn.close()
            raise
        return conn
    raise MetaError(f"cannot open {path} even read-only: {'; '.join(errors)}")


def _storage_problem(path: Path, exc: BaseException | None) -> StorageProblem | None:
    """Why ``path`` cannot be written, when that is the card's fault (full or
    read-only) rather than the file's; ``exc`` is SQLite's error."""
    if not isinstance(exc, _STORAGE_ERRORS) or not path.is_file():
        return None
    try:
        st = os.statvfs(path.parent)
        read_only = bool(st.f_flag & os.ST_RDONLY) or not os.access(path.parent, os.W_OK)
    except OSError:
        read_only = False
    if read_only:
        return StorageProblem(
            "EdgeStorageReadOnly",
            f"the agent's store {path} is on a read-only filesystem ({exc}); "
            "serving the last known objects, changes from the cloud wait",
        )
    return StorageProblem(
        "EdgeStorageFull",
        f"the agent's store {path} cannot be written ({exc}): the disk is "
        "probably full; serving the last known objects, changes from the cloud wait",
    )


def _has_room(path: Path) -> bool:
    """Room for the store to work again: a card that is only just not full
    would flip the store between read-only and writable."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize >= MIN_FREE_BYTES


class _MetaSync:
    """The blocking half; every method runs in the meta worker thread."""

    def __init__(self, path: Path, *, outbox_max: int) -> None:
        self.path = path
        self.outbox_max = outbox_max
        self.problem: StorageProblem | None = None
        # While read-only: state and reports kept in memory, and the stored
        # reports the gateway acked, all written when the store is writable.
        self.mem_state: dict[str, Any] = {}
        self.mem_outbox: dict[str, tuple[OutboxItem, bool, float]] = {}
        self.mem_acked: set[int] = set()
        self.mem_seq = 0
        try:
            self.conn = open_meta_sync(path)
        except MetaError as exc:
            problem = _storage_problem(path, exc.__cause__)
            if problem is None:
                raise
            self.conn = open_meta_read_only(path)
            self.keep_in_memory(problem)

    def keep_in_memory(self, problem: StorageProblem) -> None:
        """From now on, until ``try_writable``: the store is only read."""
        log.warning("%s", problem.message)
        self.mem_seq = max(
            int(self._scalar("SELECT max(seq) FROM outbox") or 0),
            int(self.get_state("outbox_seq", 0)),
        )
        self.problem = problem

    def close(self) -> None:
        self.conn.close()

    def try_writable(self) -> bool:
        """Open the store for writing again and write what was kept in memory;
        False (and still read-only) while the card is still full or read-only."""
        if self.problem is None:
            return True
        if not _has_room(self.path):
            return False
        self.conn.close()
        try:
            conn = open_meta_sync(self.path)
        except MetaError:
            self.conn = open_meta_read_only(self.path)
            return False
        try:
            with conn:
                self._write_kept(conn)
        except (apsw.Error, ValueError) as exc:
            log.info("store %s: still cannot write (%s)", self.path, exc)
            conn.close()
            self.conn = open_meta_read_only(self.path)
            return False
        self.conn = conn
        self.problem = None
        self.mem_state.clear()
        self.mem_outbox.clear()
        self.mem_acked.clear()
        return True

    def _write_kept(self, conn: apsw.Connection) -> None:
        conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in self.mem_acked])
        conn.executemany(
            "INSERT INTO outbox(seq, key, coalesce, op, body, created) "
            "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "seq=excluded.seq, op=excluded.op, body=excluded.body, created=excluded.created",
            [
                (it.seq, it.key, int(coalesce), it.op, it.body, created)
                for it, coalesce, created in self.mem_outbox.values()
            ],
        )
        row = conn.execute("SELECT value FROM state WHERE name='outbox_seq'").fetchone()
        stored_seq = int(json.loads(str(row[0]))) if row else 0
        state = {**self.mem_state, "outbox_seq": max(self.mem_seq, stored_seq)}
        conn.executemany(
            "INSERT INTO state(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            [(k, json.dumps(v)) for k, v in state.items()],
        )

    def _read_only(self, what: str) -> MetaError:
        assert self.problem is not None
        return MetaError(f"cannot {what}: {self.problem.message}")

    # state
    def get_state(self, name: str, default: Any = None) -> Any:
        if name in self.mem_state:
            return self.mem_state[name]
        row = self.conn.execute("SELECT value FROM state WHERE name=?", (name,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(str(row[0]))
        except (TypeError, ValueError):
            return default

    def set_state(self, items: dict[str, Any]) -> None:
        if self.problem is not None:
            self.mem_state.update(items)
            return
        with self.conn:
            self.conn.executemany(
                "INSERT INTO state(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    # objects
    def apply(self, batch: Apply, extra_state: dict[str, Any]) -> None:
        if self.problem is not None:
            raise self._read_only("apply changes from the cloud")
        c = self.conn
        with c:
            if batch.replace:
                keep = {e.key for e in batch.upserts}
                have = {str(k): v for k, v in c.execute("SELECT key, rev FROM objects")}
                c.executemany(
                    "DELETE FROM objects WHERE key=?", [(k,) for k in have if k not in keep]
                )
                rows = [e for e in batch.upserts if have.get(e.key) != e.rev]
            else:
                rows = batch.upserts
                c.executemany("DELETE FROM objects WHERE key=?", [(k,) for k in batch.deletes])
            c.executemany(
                "INSERT INTO objects(key, resource, rev, data) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET rev=excluded.rev, data=excluded.data",
                [(e.key, e.key.split("/", 1)[0], e.rev, e.data) for e in rows],
            )
            state = dict(extra_state)
            if batch.rev is not None:
                state["last_rev"] = batch.rev
            if state:
                c.executemany(
                    "INSERT INTO state(name, value) VALUES(?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    [(k, json.dumps(v)) for k, v in state.items()],
                )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT data FROM objects WHERE key=?", (key,)).fetchone()
        return None if row is None else decode_object(bytes(row[0]))

    def list_objects(self, resource: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.conn.execute(
            "SELECT key, data FROM objects WHERE resource=? ORDER BY key", (resource,)
        ).fetchall()
        return [(str(k), decode_object(bytes(d))) for k, d in rows]  # type: ignore[arg-type]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for resource, n in self.conn.execute(
            "SELECT resource, count(*) FROM objects GROUP BY resource"
        ):
            try:
                out[edgeproto.resource_by_name(resource).kind] = n
            except edgeproto.ProtocolError:
                out[resource] = n
        return out

    # outbox
    def enqueue(self, items: Iterable[tuple[str, str, bytes, bool]]) -> int:
        """(key, op, body, coalesce) rows; a coalescing key replaces its older entry.
        Returns how many entries were dropped to stay within the bound."""
        if self.problem is not None:
            return self._enqueue_in_memory(items)
        c = self.conn
        dropped = 0
        now = time.time()
        with c:
            seq = int(self._scalar("SELECT max(seq) FROM outbox") or 0)
            seq = max(seq, int(self.get_state("outbox_seq", 0)))
            for key, op, body, coalesce in items:
                seq += 1
                c.execute(
                    "INSERT INTO outbox(seq, key, coalesce, op, body, created) "
                    "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "seq=excluded.seq, op=excluded.op, body=excluded.body, "
                    "created=excluded.created",
                    (seq, key, int(coalesce), op, body, now),
                )
            n = int(self._scalar("SELECT count(*) FROM outbox") or 0)
            if n > self.outbox_max:
                over = n - self.outbox_max
                # Drop the oldest non-coalescing entries (events) first, then the oldest.
                c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                    "ORDER BY coalesce ASC, seq ASC LIMIT ?)",
                    (over,),
                )
                dropped = over
                total = int(self.get_state("outbox_dropped", 0)) + over
                c.execute(
                    "INSERT INTO state(name, value) VALUES('outbox_dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (json.dumps(total),),
                )
                self._keep_seq(seq)  # the newest entry may have been dropped
        return dropped

    def _enqueue_in_memory(self, items: Iterable[tuple[str, str, bytes, bool]]) -> int:
        """Read-only: reports wait in memory (a kept report shadows a stored one
        with its key, as the stored row would be replaced), within the bound."""
        now = time.time()
        for key, op, body, coalesce in items:
            self.mem_seq += 1
            self.mem_outbox[key] = (OutboxItem(self.mem_seq, key, op, body), coalesce, now)
        over = len(self.mem_outbox) - self.outbox_max
        if over <= 0:
            return 0
        oldest = sorted(self.mem_outbox.values(), key=lambda v: (v[1], v[0].seq))[:over]
        for it, _, _ in oldest:
            del self.mem_outbox[it.key]
        return over

    def _keep_seq(self, seq: int) -> None:
        """Sequence numbers never go back: the highest one issued is either in the
        outbox or recorded here whenever rows leave it (acked or dropped). Not
        written on every enqueue: one page less per commit on the SD card."""
        if seq > int(self.get_state("outbox_seq", 0)):
            self.conn.execute(
                "INSERT INTO state(name, value) VALUES('outbox_seq', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (json.dumps(seq),),
            )

    def outbox_after(self, seq: int, limit: int) -> list[OutboxItem]:
        hidden = len(self.mem_acked) + len(self.mem_outbox)  # rows the memory overrides
        rows = self.conn.execute(
            "SELECT seq, key, op, body FROM outbox WHERE seq>? ORDER BY seq LIMIT ?",
            (seq, limit + hidden),
        ).fetchall()
        items = [OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]  # type: ignore[arg-type]
        if self.problem is None:
            return items
        items = [i for i in items if i.seq not in self.mem_acked and i.key not in self.mem_outbox]
        items += [it for it, _, _ in self.mem_outbox.values() if it.seq > seq]
        return sorted(items, key=lambda i: i.seq)[:limit]

    def outbox_ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        if self.problem is not None:
            acked = set(seqs)
            for key in [k for k, (it, _, _) in self.mem_outbox.items() if it.seq in acked]:
                acked.discard(self.mem_outbox.pop(key)[0].seq)
            self.mem_acked |= acked
            return
        with self.conn:
            self.conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
            self._keep_seq(max(seqs))

    def outbox_depth(self) -> int:
        if self.problem is not None:
            return len(self.outbox_after(0, 1 << 30))
        return int(self._scalar("SELECT count(*) FROM outbox") or 0)

    def io_statistics(self) -> dict[str, int]:
        """Outbox depth, reports dropped to keep it bounded (ever, from the
        store), and bytes of pages SQLite wrote through this connection since
        it opened (``SQLITE_DBSTATUS_CACHE_WRITE`` times the page size: to the
        WAL; checkpoints copying them into the database file are not counted)."""
        pages = self.conn.status(apsw.SQLITE_DBSTATUS_CACHE_WRITE)[0]
        page_size = int(self._scalar("PRAGMA page_size") or 0)
        return {
            "outbox_depth": self.outbox_depth(),
            "outbox_dropped": int(self.get_state("outbox_dropped", 0) or 0),
            "sqlite_written_bytes": pages * page_size,
        }

    def integrity_check(self) -> str:
        return str(self._scalar("PRAGMA integrity_check"))

    def _scalar(self, sql: str) -> Any:
        row = self.conn.execute(sql).fetchone()
        return None if row is None else row[0]


class Meta:
    """Async face of the metadata store: one worker thread, change notification."""

    def __init__(
        self, path: Path, *, outbox_max: int = 10_000, writable_retry: float = 10.0
    ) -> None:
        self._sync = _MetaSync(path, outbox_max=outbox_max)
        self._limiter = trio.CapacityLimiter(1)
        self._changed = trio.Event()
        self._outbox_changed = trio.Event()
        self._storage_event = trio.Event()
        self.storage_generation = 0
        self._writable_retry = writable_retry
        self.generation = 0
        self.outbox_generation = 0
        self.counters: Counter[str] = Counter()

    def close(self) -> None:
        self._sync.close()

    @property
    def storage_problem(self) -> StorageProblem | None:
        """Why the store is read-only, or None when it is writable."""
        return self._sync.problem

    async def wait_writable(self) -> None:
        while self._sync.problem is not None:
            await self.wait_storage_changed(self.storage_generation)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Whenever the store is read-only, try every ``writable_retry`` seconds
        to write to it again."""
        task_status.started()
        while True:
            while self._sync.problem is None:
                await self.wait_storage_changed(self.storage_generation)
            await trio.sleep(self._writable_retry)
            self.counters["writable_attempts"] += 1
            if await self._call(self._sync.try_writable):
                log.warning("store %s is writable again", self._sync.path)
                self._storage_changed()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except apsw.Error as exc:
            self.counters["meta_errors"] += 1
            problem = None if self._sync.problem else _storage_problem(self._sync.path, exc)
            if problem is not None:  # the card filled up (or went read-only) under us
                await trio.to_thread.run_sync(
                    self._sync.keep_in_memory, problem, limiter=self._limiter
                )
                self._storage_changed()
            raise MetaError(f"metadata store: {exc}") from exc

    async def _call_or_keep(self, fn: Callable[..., T], *args: Any) -> T:
        """``_call`` for what is kept in memory while the store is read-only:
        when this very call found the card full, it is made again, in memory."""
        try:
            return await self._call(fn, *args)
        except MetaError:
            if self._sync.problem is None:
                raise
            return await self._call(fn, *args)

    def _storage_changed(self) -> None:
        self.storage_generation += 1
        self._storage_event.set()
        self._storage_event = trio.Event()

    async def wait_storage_changed(self, generation: int) -> int:
        """Wait until the store became read-only or writable after ``generation``."""
        while self.storage_generation == generation:
            await self._storage_event.wait()
        return self.storage_generation

    async def get_state(self, name: str, default: Any = None) -> Any:
        return await self._call(self._sync.get_state, name, default)

    async def set_state(self, **items: Any) -> None:
        await self._call_or_keep(self._sync.set_state, items)

    async def apply(self, batch: Apply, **extra_state: Any) -> None:
        await self._call(self._sync.apply, batch, extra_state)
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, generation: int) -> int:
        """Wait until the objects changed after ``generation``; returns the new one."""
        while self.generation == generation:
            await self._changed.wait()
        return self.generation

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self._call(self._sync.get, key)

    async def list_objects(self, resource: str) -> list[tuple[str, dict[str, Any]]]:
        return await self._call(self._sync.list_objects, resource)

    async def counts(self) -> dict[str, int]:
        return await self._call(self._sync.counts)

    async def enqueue(self, items: list[tuple[str, str, bytes, bool]]) -> None:
        self._enqueued(await self._call_or_keep(self._sync.enqueue, items))

    def _enqueued(self, dropped: int) -> None:
        """Count what the bound dropped and wake the outbox's sender."""
        if dropped:
            self.counters["outbox_dropped"] += dropped
            log.warning("outbox full: dropped %d oldest entries", dropped)
        self.outbox_generation += 1
        self._outbox_changed.set()
        self._outbox_changed = trio.Event()

    async def wait_outbox(self, generation: int) -> int:
        """Wait until something was enqueued after ``generation``; returns the new one."""
        while self.outbox_generation == generation:
            await self._outbox_changed.wait()
        return self.outbox_generation

    async def transact(
        self, fn: Callable[[apsw.Connection], list[tuple[str, str, bytes, bool]]]
    ) -> None:
        """Run ``fn(connection)`` in the meta thread and enqueue the outbox items it
        returns, all in one transaction (one WAL commit: modules batch their own
        tables' writes with their reports to spare SD cards)."""

        def run() -> int:
            dropped = -1
            with self._sync.conn:
                items = fn(self._sync.conn)
                if items:
                    dropped = self._sync.enqueue(items)
            return dropped

        dropped = await self._call(run)
        if dropped >= 0:
            self._enqueued(dropped)

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxItem]:
        return await self._call(self._sync.outbox_after, seq, limit)

    async def outbox_ack(self, seqs: list[int]) -> None:
        await self._call_or_keep(self._sync.outbox_ack, seqs)

    async def outbox_depth(self) -> int:
        return await self._call(self._sync.outbox_depth)

    async def io_statistics(self) -> dict[str, int]:
        return await self._call(self._sync.io_statistics)
