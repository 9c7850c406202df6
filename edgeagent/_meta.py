"""The agent's metadata store (apsw/SQLite): objects from the cloud, sync state
and the outbox of reports waiting for the gateway's ack.

Everything the agent knows lives here, so it starts and answers queries with
the gateway unreachable. WAL mode, ``synchronous=NORMAL``: a crash can lose at
most the last committed batch, which the gateway resends (last_rev did not move)
or the outbox resends (not acked). Each sync batch is one transaction with its
last_rev, committed before the ack.
"""

from __future__ import annotations

import json
import logging
import time
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

__all__ = ["Meta", "MetaError", "OutboxItem", "open_meta_sync"]

T = TypeVar("T")

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


def open_meta_sync(path: Path) -> apsw.Connection:
    try:
        conn = apsw.Connection(str(path))
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
            _upgrade_outbox(conn)
            conn.execute(_SCHEMA)
    except apsw.Error as exc:
        raise MetaError(f"cannot open {path}: {exc}") from exc
    return conn


def _upgrade_outbox(conn: apsw.Connection) -> None:
    """Stores made before the outbox had a stable row id: move their rows over.

    The row id used to be the sequence number, so coalescing a report moved its
    row (a delete and an insert, each on its own page). Now a coalesced report
    is rewritten in place and only the small ``seq`` index entry moves."""
    cols = [row[1] for row in conn.execute("PRAGMA table_info(outbox)")]
    if cols and "id" not in cols:
        conn.execute(
            "ALTER TABLE outbox RENAME TO outbox_v1;" + _SCHEMA + "INSERT INTO outbox(seq, key, "
            "coalesce, op, body, created) SELECT seq, key, coalesce, op, body, created "
            "FROM outbox_v1 ORDER BY seq; DROP TABLE outbox_v1;"
        )


class _MetaSync:
    """The blocking half; every method runs in the meta worker thread."""

    def __init__(self, path: Path, *, outbox_max: int) -> None:
        self.path = path
        self.conn = open_meta_sync(path)
        self.outbox_max = outbox_max

    def close(self) -> None:
        self.conn.close()

    # state
    def get_state(self, name: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM state WHERE name=?", (name,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(str(row[0]))
        except (TypeError, ValueError):
            return default

    def set_state(self, items: dict[str, Any]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT INTO state(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    # objects
    def apply(self, batch: Apply, extra_state: dict[str, Any]) -> None:
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
        rows = self.conn.execute(
            "SELECT seq, key, op, body FROM outbox WHERE seq>? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]  # type: ignore[arg-type]

    def outbox_ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self.conn:
            self.conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
            self._keep_seq(max(seqs))

    def outbox_depth(self) -> int:
        return int(self._scalar("SELECT count(*) FROM outbox") or 0)

    def integrity_check(self) -> str:
        return str(self._scalar("PRAGMA integrity_check"))

    def _scalar(self, sql: str) -> Any:
        row = self.conn.execute(sql).fetchone()
        return None if row is None else row[0]


class Meta:
    """Async face of the metadata store: one worker thread, change notification."""

    def __init__(self, path: Path, *, outbox_max: int = 10_000) -> None:
        self._sync = _MetaSync(path, outbox_max=outbox_max)
        self._limiter = trio.CapacityLimiter(1)
        self._changed = trio.Event()
        self._outbox_changed = trio.Event()
        self.generation = 0
        self.outbox_generation = 0
        self.counters: Counter[str] = Counter()

    def close(self) -> None:
        self._sync.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except apsw.Error as exc:
            self.counters["meta_errors"] += 1
            raise MetaError(f"metadata store: {exc}") from exc

    async def get_state(self, name: str, default: Any = None) -> Any:
        return await self._call(self._sync.get_state, name, default)

    async def set_state(self, **items: Any) -> None:
        await self._call(self._sync.set_state, items)

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
        self._enqueued(await self._call(self._sync.enqueue, items))

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
        await self._call(self._sync.outbox_ack, seqs)

    async def outbox_depth(self) -> int:
        return await self._call(self._sync.outbox_depth)
