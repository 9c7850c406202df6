from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from edgeagent._cli import agent_status
from edgeagent._meta import Meta, MetaError, _MetaSync, open_meta_sync
from edgeproto import Apply, Entry, encode_object
from tests.conftest import fill_up, wait_for
from tests.storage_fixtures import BindMount, bind_mount

__all__ = ["bind_mount"]  # a fixture


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


def test_a_store_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    import apsw

    path = tmp_path / "meta.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA user_version=7")
    conn.close()
    with pytest.raises(MetaError, match="schema version 7, newer than this agent's 1"):
        _MetaSync(path, outbox_max=10)
    fresh = open_meta_sync(tmp_path / "fresh.db")
    try:
        assert fresh.execute("PRAGMA user_version").fetchall() == [(1,)]
    finally:
        fresh.close()


async def _a_store_with_objects(path: Path) -> None:
    meta = Meta(path)
    await meta.apply(Apply([e("configmaps/d/a", 1), e("pods/d/p", 2)], [], 2))
    await meta.enqueue([("pods/d/p", "status", b"\xa0", True), ("ev/1", "event", b"\xa0", False)])
    meta.close()


async def _serves_read_only(meta: Meta, reason: str) -> None:
    """What a read-only store answers: its objects, state and reports in memory,
    and a clear refusal to apply changes."""
    problem = meta.storage_problem
    assert problem is not None and problem.reason == reason
    assert await meta.counts() == {"ConfigMap": 1, "Pod": 1}
    assert await meta.get_state("last_rev") == 2
    await meta.set_state(connected=True)
    assert await meta.get_state("connected") is True
    with pytest.raises(MetaError, match="cannot apply changes"):
        await meta.apply(Apply([e("configmaps/d/b", 3)], [], 3))
    stored = await meta.outbox_after(0, 10)
    assert [i.key for i in stored] == ["pods/d/p", "ev/1"]
    await meta.enqueue([("pods/d/p", "status", b"\xa1", True), ("ev/2", "event", b"\xa0", False)])
    await meta.outbox_ack([stored[1].seq])  # a stored report acked while read-only
    items = await meta.outbox_after(0, 10)
    assert [(i.key, i.body) for i in items] == [("pods/d/p", b"\xa1"), ("ev/2", b"\xa0")]
    assert items[0].seq > stored[1].seq
    assert await meta.outbox_depth() == 2


async def _written_when_writable(meta: Meta, path: Path) -> None:
    """Once writable: what was kept in memory is in the file."""
    assert meta.storage_problem is None
    await meta.apply(Apply([e("configmaps/d/b", 3)], [], 3))
    meta.close()
    again = Meta(path)
    try:
        assert [(i.key, i.body) for i in await again.outbox_after(0, 10)] == [
            ("pods/d/p", b"\xa1"),
            ("ev/2", b"\xa0"),
        ]
        assert await again.get_state("connected") is True
        assert await again.counts() == {"ConfigMap": 2, "Pod": 1}
        assert again._sync.integrity_check() == "ok"
    finally:
        again.close()


async def test_a_full_card_opens_read_only_and_becomes_writable(small_fs: Path) -> None:
    """A real full tmpfs: before, opening the store failed (creating the WAL's
    index is an I/O error), so the agent could not start."""
    import trio

    path = small_fs / "meta.db"
    await _a_store_with_objects(path)
    filler = fill_up(small_fs)
    meta = Meta(path, writable_retry=0.02)
    await _serves_read_only(meta, "EdgeStorageFull")
    async with trio.open_nursery() as nursery:
        await nursery.start(meta.run)
        await wait_for(lambda: meta.counters["writable_attempts"] >= 3)  # still full
        assert meta.storage_problem is not None
        filler.unlink()
        with trio.fail_after(10):
            await meta.wait_writable()
        nursery.cancel_scope.cancel()
    await _written_when_writable(meta, path)


async def test_a_read_only_card_opens_read_only_and_becomes_writable(bind_mount: BindMount) -> None:
    import trio

    path = bind_mount.path / "meta.db"
    await _a_store_with_objects(path)
    bind_mount.read_only()
    meta = Meta(path, writable_retry=0.02)
    await _serves_read_only(meta, "EdgeStorageReadOnly")
    assert sorted(p.name for p in bind_mount.path.iterdir()) == ["meta.db"]  # nothing written
    async with trio.open_nursery() as nursery:
        await nursery.start(meta.run)
        await wait_for(lambda: meta.counters["writable_attempts"] >= 3)  # still read-only
        assert meta.storage_problem is not None
        bind_mount.writable()
        with trio.fail_after(10):
            await meta.wait_writable()
        nursery.cancel_scope.cancel()
    await _written_when_writable(meta, path)


async def test_an_unopenable_store_on_a_full_card_is_still_an_error(small_fs: Path) -> None:
    """Read-only mode serves an existing store; it does not invent an empty one."""
    fill_up(small_fs)
    with pytest.raises(MetaError, match=r"meta\.db"):
        Meta(small_fs / "meta.db")


async def test_a_card_filling_up_under_a_running_store_turns_it_read_only(small_fs: Path) -> None:
    """The store was opened writable, then the card fills (a real tmpfs): the
    write that finds it full switches the store to read-only, and what can be
    kept in memory is (reports, state) instead of failing."""
    import trio

    path = small_fs / "meta.db"
    meta = Meta(path, writable_retry=0.02)
    await meta.apply(Apply([e("configmaps/d/a", 1)], [], 1))
    filler = fill_up(small_fs)
    body = b"x" * 4000
    for i in range(1000):  # the WAL may take a few writes before the card says full
        await meta.enqueue([(f"pods/d/p{i}", "status", body, True)])
        if meta.storage_problem is not None:
            break
    problem = meta.storage_problem
    assert problem is not None and problem.reason == "EdgeStorageFull"
    assert len(await meta.outbox_after(0, 10_000)) == i + 1  # the failed one too, in memory
    with pytest.raises(MetaError, match="cannot apply changes"):
        await meta.apply(Apply([e("configmaps/d/b", 2)], [], 2))
    async with trio.open_nursery() as nursery:
        await nursery.start(meta.run)
        await wait_for(lambda: meta.counters["writable_attempts"] >= 3)  # still full
        assert meta.storage_problem is not None
        filler.unlink()
        with trio.fail_after(10):
            await meta.wait_writable()
        nursery.cancel_scope.cancel()
    meta.close()
    again = Meta(path)
    try:
        assert again.storage_problem is None
        assert len(await again.outbox_after(0, 10_000)) == i + 1
    finally:
        again.close()
