"""Edge events: the Event a node's report becomes, who may send one, resends, TTL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import edgeproto
from cloudgateway._events import edge_event, prune_events
from cloudgateway._store import SqliteBackend, Store
from edgeproto import Kind, Message, ProtocolError
from tests.cloudgateway.test_hub import connect, recv, send
from tests.conftest import Gateway, join_node


def test_the_event_names_the_node_and_keeps_the_payload() -> None:
    ms = 1_795_000_000_123
    ev = edge_event(
        "pi-1", 42, {"topic": "alarm/heat", "payload": {"b": 2, "a": 1}, "timestamp": ms}
    )
    assert ev["metadata"]["name"] == f"pi-1.{ms:x}.42"  # same report, same name
    assert ev["metadata"]["annotations"] == {"edgeflock.io/topic": "alarm/heat"}
    assert ev["message"] == '{"a":1,"b":2}'
    assert (
        ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-11-18T11:06:40Z"
    )  # date -u -d @1795000000
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "pi-1"}
    text = edge_event("pi-1", 1, {"topic": "t", "payload": "é" * 2000, "timestamp": 0})
    assert len(text["message"]) == 1024 and text["message"].endswith("...")
    assert edgeproto.owner_node("events/default/x", text) is None  # never sent to a node


@pytest.mark.parametrize(
    ("seq", "body", "error"),
    [
        (1, {"payload": 1, "timestamp": 0}, "topic"),
        (1, {"topic": "", "payload": 1, "timestamp": 0}, "topic"),
        (1, {"topic": "t", "payload": 1, "timestamp": "now"}, "timestamp"),
        (1, {"topic": "t", "payload": 1, "timestamp": -5}, "timestamp"),
        (None, {"topic": "t", "payload": 1, "timestamp": 0}, "sequence"),
        (1, {"topic": "t", "payload": b"\x00", "timestamp": 0}, "not JSON"),
        (1, {"topic": "t", "payload": float("nan"), "timestamp": 0}, "not JSON"),
    ],
)
def test_malformed_event_reports_are_refused(seq: Any, body: Any, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        edge_event("pi-1", seq, body)


async def test_events_older_than_the_ttl_are_pruned(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        store = Store(backend)
        old = edge_event("pi-1", 1, {"topic": "t", "payload": "old", "timestamp": 0})
        old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        await store.create("events/default/" + old["metadata"]["name"], old)
        new = edge_event("pi-1", 2, {"topic": "t", "payload": "new", "timestamp": 0})
        await store.create("events/default/" + new["metadata"]["name"], new)
        keep, _ = await store.list("events/")
        assert len(keep) == 2
        assert await prune_events(store, 3600, now=time.time()) == 1
        left, _ = await store.list("events/")
        assert [r.value["message"] for r in left] == ["new"]
        assert await prune_events(store, 3600) == 0
    finally:
        backend.close()


async def test_a_node_reports_events_about_itself_only_and_resends_are_one_event(
    gateway: Gateway, tmp_path: Path
) -> None:
    a = tmp_path / "a"
    await join_node(gateway, "node-a", a)
    await join_node(gateway, "node-b", tmp_path / "b")
    body = {"topic": "door", "payload": "opened", "timestamp": 1_795_000_000_000}
    async with connect(a) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
        skip = (Kind.CHANGE,)
        await send(ws, Message(Kind.REPORT, id=7, res="nodes//node-b", op="event", body=body))
        assert (await recv(ws, skip=skip)).body["error"]["code"] == 403
        bad = {**body, "timestamp": "soon"}
        await send(ws, Message(Kind.REPORT, id=8, res="nodes//node-a", op="event", body=bad))
        assert (await recv(ws, skip=skip)).body["error"]["code"] == 400
        for _ in range(2):  # the outbox resends until acked
            await send(ws, Message(Kind.REPORT, id=9, res="nodes//node-a", op="event", body=body))
            ack = await recv(ws, skip=skip)
            assert ack.kind is Kind.ACK and ack.parent == 9 and "error" not in ack.body
    code, listed = await gateway.api("GET", "/api/v1/namespaces/default/events")
    assert code == 200
    assert [(e["involvedObject"]["name"], e["message"]) for e in listed["items"]] == [
        ("node-a", "opened")
    ]
