from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproto import (
    AgentSync,
    Entry,
    Kind,
    Message,
    ProtocolError,
    change_messages,
    decode_message,
    diff_views,
    encode_message,
    encode_object,
    plan_resync,
    snapshot_messages,
)


def entry(i: int, size: int = 10) -> Entry:
    return Entry(f"configmaps/default/cm{i:04d}", i, encode_object({"data": {"k": "v" * size}}))


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 5)),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 5)),
)
def test_diff_views_reaches_new_view(old: dict[str, int], new: dict[str, int]) -> None:
    ups, dels = diff_views(old, new)
    state = {k: v for k, v in old.items() if k not in dels}
    state.update({k: new[k] for k in ups})
    assert state == new
    assert not set(ups) & set(dels)
    assert all(old.get(k) != new[k] for k in ups)


def test_plan_resync() -> None:
    assert plan_resync(0, 10, 0) == "snapshot"
    assert plan_resync(5, 10, 0) == "delta"
    assert plan_resync(5, 10, 6) == "snapshot"
    assert plan_resync(11, 10, 0) == "snapshot"  # gateway store was reset


def test_snapshot_chunks_apply_once_with_replace() -> None:
    entries = [entry(i, 300) for i in range(40)]
    msgs = snapshot_messages(99, entries, max_size=4096)
    assert len(msgs) > 1
    assert [m.body["more"] for m in msgs] == [True] * (len(msgs) - 1) + [False]
    sync = AgentSync("n1", 0)
    out = []
    for m in msgs:
        data = encode_message(m, max_size=4096)
        out.append(sync.receive(decode_message(data, max_size=4096), nbytes=len(data), now=1.0))
    assert out[:-1] == [None] * (len(msgs) - 1)
    final = out[-1]
    assert final is not None and final.replace and final.rev == 99
    assert final.upserts == entries
    assert final.resync is not None and final.resync.mode == "snapshot"
    assert final.resync.objects == 40
    ack = sync.persisted(99)
    assert ack.kind is Kind.ACK and ack.rev == 99 and sync.last_rev == 99


def test_change_chunks_set_rev_only_on_last() -> None:
    ups = [entry(i, 300) for i in range(30)]
    dels = [f"secrets/default/s{i}" for i in range(5)]
    msgs = change_messages(50, ups, dels, resync=True, max_size=4096)
    sync = AgentSync("n1", 40)
    batches = [sync.receive(m, nbytes=100, now=0.0) for m in msgs]
    assert all(b is not None for b in batches)
    assert [b.rev for b in batches if b] == [None] * (len(msgs) - 1) + [50]
    assert [e for b in batches if b for e in b.upserts] == ups
    assert [k for b in batches if b for k in b.deletes] == dels
    last = batches[-1]
    assert last is not None and last.resync is not None
    assert last.resync.mode == "delta" and last.resync.bytes == 100 * len(msgs)


def test_empty_change_still_advances_rev() -> None:
    (msg,) = change_messages(7, [], [], resync=True)
    batch = AgentSync("n", 3).receive(msg, nbytes=10, now=0)
    assert batch is not None and batch.rev == 7 and batch.upserts == [] and batch.resync


def test_object_larger_than_message_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        snapshot_messages(1, [entry(1, 10_000)], max_size=2048)


@pytest.mark.parametrize(
    "body",
    [
        {"upserts": "nope"},
        {"upserts": [{"k": "a/b/c", "r": 1}]},
        {"upserts": [{"k": "", "r": 1, "o": b""}]},
        {"upserts": [{"k": "a/b/c", "r": -1, "o": b"x"}]},
        {"deletes": [1]},
    ],
)
def test_bad_change_bodies(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        AgentSync("n", 0).receive(Message(Kind.CHANGE, rev=1, body=body), nbytes=1, now=0)


def test_sync_message_needs_rev() -> None:
    with pytest.raises(ProtocolError):
        AgentSync("n", 0).receive(Message(Kind.CHANGE, body={}), nbytes=1, now=0)


def test_hello_carries_last_rev() -> None:
    hello = AgentSync("pi-01", 42).hello(now=0)
    assert (
        hello.kind is Kind.HELLO and hello.body["node"] == "pi-01" and hello.body["last_rev"] == 42
    )


def test_resync_duration_counts_from_hello() -> None:
    sync = AgentSync("n", 0)
    sync.hello(now=10.0)
    msgs = snapshot_messages(5, [entry(1)])
    batch = sync.receive(msgs[0], nbytes=50, now=12.5)
    assert batch is not None and batch.resync is not None
    assert batch.resync.seconds == 2.5 and batch.resync.bytes == 50
