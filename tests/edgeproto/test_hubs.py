"""The ``hubs`` field of sync messages: every live gateway replica's hub URL,
sent with a resync, checked strictly on both ends."""

from __future__ import annotations

from typing import Any

import pytest

import edgeproto
from edgeproto import AgentSync, Entry, Kind, Message, ProtocolError

HUBS = ["wss://10.0.0.5:10000/", "wss://gw-b.example:10000/", "wss://[::1]:10000/"]


def entry(i: int, size: int = 100) -> Entry:
    return Entry(f"configmaps/default/c{i}", i + 1, edgeproto.encode_object({"d": "x" * size}))


def wire(msg: Message, max_size: int = edgeproto.DEFAULT_MAX_MESSAGE) -> Message:
    """Through the envelope, as the agent receives it."""
    data = edgeproto.encode_message(msg, max_size=max_size)
    return edgeproto.decode_message(data, max_size=max_size)


def test_good_lists_pass() -> None:
    assert edgeproto.check_hubs(HUBS) == tuple(HUBS)
    assert edgeproto.check_hubs(["wss://h"]) == ("wss://h",)
    long = "wss://" + "h" * (edgeproto.MAX_HUB_URL - len("wss://"))
    assert edgeproto.check_hubs([long]) == (long,)
    many = [f"wss://h{i}:10000/" for i in range(edgeproto.MAX_HUBS)]
    assert len(edgeproto.check_hubs(many)) == edgeproto.MAX_HUBS


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("wss://a:1/", "must be a list"),
        ({"a": 1}, "must be a list"),
        ([], "empty"),
        ([f"wss://h{i}/" for i in range(edgeproto.MAX_HUBS + 1)], "limit"),
        ([1], "must be a string"),
        ([None], "must be a string"),
        (["https://a:1/"], "not wss://"),
        (["ws://a:1/"], "not wss://"),
        (["WSS://a:1/"], "not wss://"),
        (["wss://"], "no host"),
        (["wss://:10000/"], "no host"),
        (["wss://a:0/"], "no host or port"),
        (["wss://a:99999/"], "malformed"),
        (["wss://a:port/"], "malformed"),
        (["wss://user@a:1/"], "no user"),
        (["wss://a:1/?x=1"], "no user, query or fragment"),
        (["wss://a:1/#f"], "no user, query or fragment"),
        (["wss://a b:1/"], "characters"),
        (["wss://a:1/\n"], "characters"),
        (["wss://é:1/"], "characters"),
        (["wss://" + "h" * edgeproto.MAX_HUB_URL], "limit"),
        (["wss://a:1/", "wss://a:1/"], "twice"),
    ],
)
def test_bad_lists_are_refused_saying_why(value: Any, says: str) -> None:
    with pytest.raises(ProtocolError, match=says) as caught:
        edgeproto.check_hubs(value)
    assert caught.value.code == "bad-field"


def test_a_snapshot_carries_the_list_in_its_first_message_only() -> None:
    msgs = edgeproto.snapshot_messages(
        9, [entry(i, 3000) for i in range(10)], max_size=8192, hubs=HUBS
    )
    assert len(msgs) > 1
    assert msgs[0].body["hubs"] == HUBS
    assert all("hubs" not in m.body for m in msgs[1:])
    sync = AgentSync("pi", 0)
    sync.hello(now=0.0)
    batches = [sync.receive(wire(m, 8192), nbytes=1, now=1.0) for m in msgs]
    assert batches[:-1] == [None] * (len(msgs) - 1)
    last = batches[-1]
    assert last is not None and last.replace and last.hubs == tuple(HUBS)
    assert len(last.upserts) == 10


def test_a_delta_resync_hands_the_list_over_with_its_last_batch() -> None:
    msgs = edgeproto.change_messages(
        9, [entry(i, 3000) for i in range(10)], ["configmaps/default/gone"], resync=True,
        max_size=8192, hubs=HUBS,
    )  # fmt: skip
    assert len(msgs) > 1 and msgs[0].body["hubs"] == HUBS
    sync = AgentSync("pi", 5)
    sync.hello(now=0.0)
    batches = [sync.receive(wire(m, 8192), nbytes=1, now=1.0) for m in msgs]
    assert all(b is not None and b.hubs is None for b in batches[:-1])
    last = batches[-1]
    assert last is not None and last.resync is not None and last.hubs == tuple(HUBS)


def test_messages_with_a_long_list_stay_within_the_size_limit() -> None:
    hubs = [f"wss://{'h' * 200}{i}:10000/" for i in range(edgeproto.MAX_HUBS)]
    limit = 16 * 1024
    for msgs in (
        edgeproto.snapshot_messages(3, [entry(i, 1500) for i in range(40)], max_size=limit, hubs=hubs),
        edgeproto.change_messages(3, [entry(i, 1500) for i in range(40)], [], resync=True, max_size=limit, hubs=hubs),
    ):  # fmt: skip
        for m in msgs:
            assert len(edgeproto.encode_message(m, max_size=limit)) <= limit


def test_no_list_means_keep_the_one_known() -> None:
    sync = AgentSync("pi", 0)
    sync.hello(now=0.0)
    (msg,) = edgeproto.snapshot_messages(2, [entry(1)])
    assert "hubs" not in msg.body
    batch = sync.receive(wire(msg), nbytes=1, now=1.0)
    assert batch is not None and batch.hubs is None
    (msg,) = edgeproto.snapshot_messages(2, [entry(1)], hubs=[])  # empty: left out
    assert "hubs" not in msg.body


def test_a_bad_list_refuses_the_message_and_applies_nothing() -> None:
    sync = AgentSync("pi", 0)
    sync.hello(now=0.0)
    msg = Message(
        Kind.SNAPSHOT,
        rev=4,
        body={"objects": [entry(1).to_wire()], "more": False, "hubs": ["http://evil:80/"]},
    )
    with pytest.raises(ProtocolError, match=r"hub URL 'http://evil:80/' is not wss://"):
        sync.receive(wire(msg), nbytes=1, now=1.0)
    assert sync.last_rev == 0
    change = Message(
        Kind.CHANGE,
        rev=4,
        body={"upserts": [], "deletes": [], "more": False, "resync": True, "hubs": "wss://a/"},
    )
    with pytest.raises(ProtocolError, match="hubs must be a list"):
        sync.receive(wire(change), nbytes=1, now=1.0)
