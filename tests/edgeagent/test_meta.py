from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from edgeagent._cli import agent_status
from edgeagent._meta import Meta, MetaError, _MetaSync, open_meta_sync
from edgeproto import Apply, Entry, encode_object


def e(key: str, rev: int, **data: str) -> Entry:
    return Entry(key, rev, encode_object({"metadata": {"name": key}, "data": data}))


async def test_apply_commits_objects_and_last_rev(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db")
    await meta.apply(Apply([e("configmaps/d/a", 1), e("pods/d/p", 2)], [], 2))
    assert await meta.get_state("last_rev") == 2
    assert await meta.counts() == {"ConfigMap": 1, "Pod": 1}
    await meta.apply(Apply([e("configmaps/d/a", 3, x="y")], ["pods/d/p"], None))
    assert await meta.get_state("last_rev") == 2  # intermediate chunk: rev unchanged
    assert await meta.counts() == {"ConfigMap": 1}
    obj = await meta.get("configmaps/d/a")
    assert obj is not None and obj["data"] == {"x": "y"}
    meta.close()


async def test_snapshot_replaces(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db")
    await meta.apply(Apply([e("configmaps/d/a", 1), e("configmaps/d/b", 1)], [], 1))
    await meta.apply(Apply([e("configmaps/d/b", 1), e("secrets/d/c", 5)], [], 5, replace=True))
    assert [k for k, _ in await meta.list_objects("configmaps")] == ["configmaps/d/b"]
    assert await meta.counts() == {"ConfigMap": 1, "Secret": 1}
    meta.close()


async def test_outbox_coalesces_and_acks(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db", outbox_max=100)
    body = cbor2.dumps({"status": {"phase": "Pending"}})
    await meta.enqueue([("pods/d/p", "status", body, True)])
    first = await meta.outbox_after(0, 10)
    await meta.enqueue(
        [("pods/d/p", "status", cbor2.dumps({"status": {"phase": "Running"}}), True)]
    )
    items = await meta.outbox_after(0, 10)
    assert len(items) == 1 and items[0].seq > first[0].seq
    assert cbor2.loads(items[0].body)["status"]["phase"] == "Running"
    # An ack for the superseded sequence number keeps the newer entry.
    await meta.outbox_ack([first[0].seq])
    assert await meta.outbox_depth() == 1
    await meta.outbox_ack([items[0].seq])
    assert await meta.outbox_depth() == 0
    meta.close()


async def test_outbox_is_bounded_and_drops_events_first(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db", outbox_max=10)
    await meta.enqueue([(f"pods/d/p{i}", "status", b"\xa0", True) for i in range(5)])
    await meta.enqueue([(f"event/{i}", "event", b"\xa0", False) for i in range(20)])
    assert await meta.outbox_depth() == 10
    keys = [it.key for it in await meta.outbox_after(0, 100)]
    assert all(f"pods/d/p{i}" in keys for i in range(5))  # statuses survive
    assert await meta.get_state("outbox_dropped") == 15
    assert meta.counters["outbox_dropped"] == 15
    meta.close()


async def test_sequence_numbers_never_go_back_after_reopen(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db")
    await meta.enqueue([("pods/d/p", "status", b"\xa0", True)])
    (item,) = await meta.outbox_after(0, 10)
    await meta.outbox_ack([item.seq])
    meta.close()
    meta = Meta(tmp_path / "meta.db")
    await meta.enqueue([("pods/d/q", "status", b"\xa0", True)])
    (item2,) = await meta.outbox_after(0, 10)
    assert item2.seq > item.seq
    meta.close()


def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notadb"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MetaError, match="notadb"):
        _MetaSync(bad, outbox_max=10)


async def test_changes_wake_waiters(tmp_path: Path) -> None:
    import trio

    meta = Meta(tmp_path / "meta.db")
    gen = meta.generation
    async with trio.open_nursery() as n:
        n.start_soon(meta.apply, Apply([e("configmaps/d/a", 1)], [], 1))
        with trio.fail_after(5):
            assert await meta.wait_changed(gen) > gen
    meta.close()


def test_new_stores_use_small_pages_in_wal_mode(tmp_path: Path) -> None:
    """512-byte pages and WAL: fewer bytes written to the SD card per small update."""
    m = _MetaSync(tmp_path / "meta.db", outbox_max=10)
    try:
        assert m.conn.execute("PRAGMA page_size").fetchall() == [(512,)]
        assert m.conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        m.close()


async def test_an_outbox_from_before_stable_row_ids_is_upgraded(tmp_path: Path) -> None:
    import apsw

    path = tmp_path / "meta.db"
    old = apsw.Connection(str(path))
    old.execute(
        "CREATE TABLE outbox(seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
        "coalesce INTEGER NOT NULL, op TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL);"
        "INSERT INTO outbox VALUES(7, 'pods/default/a', 1, 'status', x'a0', 1.0);"
        "INSERT INTO outbox VALUES(9, 'pods/default/b', 1, 'status', x'a0', 2.0);"
    )
    old.close()
    m = Meta(path)
    try:
        items = await m.outbox_after(0, 10)
        assert [(i.seq, i.key) for i in items] == [(7, "pods/default/a"), (9, "pods/default/b")]
        # A coalesced report keeps its row and gets a new sequence number.
        await m.enqueue([("pods/default/a", "status", cbor2.dumps({"status": {}}), True)])
        items = await m.outbox_after(0, 10)
        assert [(i.seq, i.key) for i in items] == [(9, "pods/default/b"), (10, "pods/default/a")]
        cols = [r[1] for r in m._sync.conn.execute("PRAGMA table_info(outbox)")]
        assert cols[:2] == ["id", "seq"]
    finally:
        m.close()


def test_status_beside_an_agent_creating_or_writing_its_store(tmp_path: Path) -> None:
    """`edgeagent status` opens the store read-only: it neither races the agent
    creating its tables nor waits on the agent's write transaction."""
    db = tmp_path / "meta.db"
    db.touch()  # the agent has just opened the file and not created its tables yet
    st = agent_status(tmp_path)
    assert st["objects"] == {} and st["outbox"] == 0 and st["last_rev"] == 0
    assert db.stat().st_size == 0  # status created nothing

    agent = open_meta_sync(db)
    try:
        agent.execute("BEGIN IMMEDIATE")
        agent.execute("INSERT OR REPLACE INTO state(name, value) VALUES('last_rev', '7')")
        assert agent_status(tmp_path)["last_rev"] == 0  # only what is committed
        agent.execute("COMMIT")
        assert agent_status(tmp_path)["last_rev"] == 7
    finally:
        agent.close()
