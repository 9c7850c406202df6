"""Nodes' reports applied to a real store (SQLite in tmp_path): what a board may
write, what the gateway keeps of its own, and how each report is answered."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio
import trio.testing

import edgeproto
from cloudgateway._reports import ReportLimits, Reports
from cloudgateway._store import SqliteBackend, Store
from edgeproto import Kind, Message, topics
from tests.conftest import fill_up, join_node, start_agent, start_gateway, wait_for
from tests.mqtt_fixtures import Broker, open_broker

DEVICE = "devices/default/thermo"


def device(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo", "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "thermo-model"},
            "nodeName": node,
            "properties": [{"name": "temperature", "desired": {"value": "20"}}],
        },
    }


def node_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}


def report(op: str, res: str, body: dict[str, Any], seq: int = 1) -> Message:
    return Message(Kind.REPORT, id=seq, res=res, op=op, body=body)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    b = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    yield b
    b.close()


@pytest.fixture
async def store(backend: SqliteBackend) -> Store:
    s = Store(backend)
    await s.create("nodes//node-a", node_obj("node-a"))
    await s.create("nodes//node-b", node_obj("node-b"))
    await s.create(DEVICE, device("node-a"))
    return s


@pytest.fixture
def reports(store: Store) -> Reports:
    return Reports(store, Counter())


def history(value: str, ts: int) -> dict[str, Any]:
    return {"history": [{"propertyName": "temperature", "value": value, "timestamp": str(ts)}]}


def _entry(ts: str) -> dict[str, str]:
    return {"propertyName": "temperature", "value": "1", "timestamp": ts}


def _deep(depth: int) -> list[Any]:
    v: list[Any] = []
    for _ in range(depth):
        v = [v]
    return v


def status(value: str) -> dict[str, Any]:
    twin = {"propertyName": "temperature", "reported": {"value": value, "metadata": {}}}
    return {"status": {"twins": [twin]}}


async def test_twin_history_survives_a_later_status_report(store: Store, reports: Reports) -> None:
    """Defect 1: a plain status report replaced the whole .status, erasing the
    gateway-owned twinHistory."""
    assert await reports.handle("node-a", report("twin-history", DEVICE, history("21", 1000))) == {}
    assert await reports.handle("node-a", report("status", DEVICE, status("22"), seq=2)) == {}
    got = (await store.get(DEVICE)).value["status"]
    assert got["twins"][0]["reported"]["value"] == "22"
    assert got["twinHistory"] == {"temperature": [{"value": "21", "timestamp": "1000"}]}
    # A board cannot write the gateway's history through a status report either.
    forged = status("23")
    forged["status"]["twinHistory"] = {"temperature": []}
    assert await reports.handle("node-a", report("status", DEVICE, forged, seq=3)) == {}
    got = (await store.get(DEVICE)).value["status"]
    assert got["twinHistory"] == {"temperature": [{"value": "21", "timestamp": "1000"}]}


async def test_node_status_keeps_the_ready_condition(store: Store, reports: Reports) -> None:
    ready = {"type": "Ready", "status": "True", "reason": "AgentConnected"}
    await store.update_status("nodes//node-a", {"conditions": [ready]})
    body = {"status": {"conditions": [{"type": "Ready", "status": "False"}], "capacity": {}}}
    assert await reports.handle("node-a", report("status", "nodes//node-a", body)) == {}
    got = (await store.get("nodes//node-a")).value["status"]
    assert got["conditions"] == [ready] and got["capacity"] == {}


async def test_a_device_rebound_between_read_and_write_is_not_written(
    store: Store, reports: Reports
) -> None:
    """Ownership is checked in the transaction that writes: a status report
    never lands on a device after it was bound to another node. The store's
    worker thread is held so that the report and the rebind queue in a known
    order: report first, rebind second."""
    release = threading.Event()
    held = trio.Event()

    def hold() -> None:
        trio.from_thread.run_sync(held.set)
        release.wait()

    answers: list[dict[str, Any]] = []
    rebound: list[int] = []

    async def send_report() -> None:
        answers.append(await reports.handle("node-a", report("status", DEVICE, status("30"))))

    async def rebind() -> None:
        ev = await store.modify(DEVICE, lambda rec: {**rec.value, "spec": device("node-b")["spec"]})
        assert ev is not None
        rebound.append(ev.rev)

    async with trio.open_nursery() as n:
        n.start_soon(store.call, hold)
        await held.wait()
        n.start_soon(send_report)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(rebind)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    rec = await store.get(DEVICE)
    assert rec.node == "node-b"
    if answers == [{}]:  # accepted: then it was written while node-a still owned it
        written = rec.value.get("status", {}).get("twins")
        assert written, rec.value
        events = await store.changes_since("devices/", 0)
        status_rev = min(e.rev for e in events if e.record.value.get("status"))
        assert status_rev < rebound[0], "node-a's status landed after the device moved to node-b"
    else:
        assert answers[0]["error"]["code"] == 403
    # And once bound to node-b, node-a's reports are refused.
    answer = await reports.handle("node-a", report("status", DEVICE, status("31"), seq=2))
    assert answer["error"]["code"] == 403
    for op, body in (
        ("twin-history", history("1", 5)),
        ("desired", {"desired": {"temperature": "1"}}),
    ):
        answer = await reports.handle("node-a", report(op, DEVICE, body, seq=3))
        assert answer["error"]["code"] == 403, (op, answer)


# ---- a store that cannot take a report: "try again", nothing lost -------------------


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


async def test_a_report_the_store_cannot_take_is_resent_until_it_lands(
    nursery: trio.Nursery, small_fs: Path, tmp_path: Path, broker: Broker
) -> None:
    """Defect 2, end to end through a real agent's outbox: the gateway's store on
    a real full filesystem (tmpfs) answers 'try again' (503, not final); the
    agent keeps the report and resends it after a back-off, without waiting for
    a reconnect, and it lands once there is room. Before, it was acked as a 409
    and deleted from the outbox for good."""
    gw = await start_gateway(nursery, small_fs / "gw")
    await join_node(gw, "pi-r1", tmp_path / "agent")
    agent = await start_agent(nursery, tmp_path / "agent", mqtt=broker.url)
    await wait_for(lambda: agent.status()["connected"], timeout=10)
    hub = gw.running.hub
    path = "/api/v1/namespaces/default/events"

    async def messages() -> list[str]:
        code, body = await gw.api("GET", path)
        assert code == 200, body
        return [e["message"] for e in body["items"]]

    # The bus subscribes after the agent starts: publish until the first lands.
    async def first_arrives() -> bool:
        await trio.to_thread.run_sync(broker.pub, topics.UPLOAD_PREFIX + "door", "before")
        with trio.move_on_after(0.5):
            await wait_for(messages, timeout=1)
        return bool(await messages())

    await wait_for(first_arrives, timeout=10)
    # Fill the disk, with the store's write-ahead log emptied first so that the
    # next commit needs new space (a WAL with room left would take it).
    conn = apsw.Connection(str(small_fs / "gw" / "store.db"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    filler = fill_up(small_fs)
    session = hub._sessions["pi-r1"]
    answered = hub.statistics().get("reports_retry", 0) + hub.statistics().get(
        "reports_rejected", 0
    )
    await trio.to_thread.run_sync(broker.pub, topics.UPLOAD_PREFIX + "door", "during")

    def more_answers() -> bool:
        stats = hub.statistics()
        return stats.get("reports_retry", 0) + stats.get("reports_rejected", 0) > answered

    await wait_for(more_answers, timeout=10)
    assert hub.statistics().get("reports_rejected", 0) == 0
    assert "during" not in await messages()
    assert agent.status()["outbox"] >= 1  # still on the board
    filler.unlink()
    got = await wait_for(lambda: _has(messages, "during"), timeout=10)
    assert sorted(set(got)) == ["before", "during"]
    assert hub._sessions["pi-r1"] is session  # resent on the same connection
    await agent.stop()
    gw.scope.cancel()


async def _has(fn: Any, item: str) -> list[str] | None:
    got = await fn()
    return got if item in got else None


async def test_an_internal_error_is_a_final_500_and_counted(
    reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours answers 500, final: resending would fail the same way
    forever and stall the board's outbox. No input is known to reach it, so a
    fault is planted in the event writer."""

    async def broken(_event: Any) -> None:
        raise KeyError("planted bug")

    monkeypatch.setattr(reports, "_record_event", broken)
    body = {"topic": "door", "payload": "open", "timestamp": 1}
    answer = await reports.handle("node-a", report("event", "nodes//node-a", body))
    assert answer["error"]["code"] == 500 and "retry" not in answer["error"]
    assert reports.counters["reports_internal_error"] == 1


@pytest.mark.parametrize(
    ("op", "res", "body"),
    [
        ("event", "nodes//node-a", {"topic": "t", "payload": "p", "timestamp": 10**30}),
        ("event", "nodes//node-a", {"topic": "t", "payload": float("nan"), "timestamp": 1}),
        ("event", "nodes//node-a", {"topic": "t", "payload": b"\x00", "timestamp": 1}),
        ("status", "nodes//node-a", {"status": {"conditions": 5}}),
        ("status", "nodes//node-a", {"status": {"conditions": [{"type": 1, "status": "x"}]}}),
        ("status", "nodes//node-a", {"status": {"capacity": {"cpu": 4}}}),
        ("status", DEVICE, {"status": {"twins": {"propertyName": "t"}}}),
        ("status", DEVICE, {"status": {"twins": [{"propertyName": "t", "reported": 1}]}}),
        ("status", DEVICE, {"status": {"x": {1: 2}}}),
        ("status", DEVICE, {"status": {"x": 2**64}}),
        ("status", DEVICE, {"status": {"x": _deep(70)}}),
        ("status", DEVICE, {"status": {"x": "y" * 300_000}}),
        ("twin-history", DEVICE, {"history": [_entry("\u00b2")]}),
        ("twin-history", DEVICE, {"history": [_entry("1" * 40)]}),
        ("desired", DEVICE, {"desired": {"temperature": "x" * 5000}}),
        ("desired", "nodes//node-a", {"desired": {"temperature": "1"}}),
        ("launch", DEVICE, {}),
    ],
)
async def test_malformed_reports_are_answered_400(
    reports: Reports, op: str, res: str, body: dict[str, Any]
) -> None:
    answer = await reports.handle("node-a", report(op, res, body))
    assert answer["error"]["code"] == 400, answer
    assert reports.counters["reports_malformed"] == 1


# ---- per-node quotas (defect 17: one node wrote 5,000 Events in 4.5 s) ---------------


class Clock:
    """Time for the token buckets, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(seq: int) -> Message:
    body = {"topic": "door", "payload": f"e{seq}", "timestamp": 1_795_000_000_000 + seq}
    return report("event", "nodes//node-a", body, seq=seq)


async def test_a_node_over_its_rates_is_told_to_come_back(store: Store) -> None:
    clock = Clock()
    limits = ReportLimits(rate=10, burst=20, event_rate=5, event_burst=10)
    reports = Reports(store, Counter(), limits, clock=clock)
    for seq in range(10):
        assert await reports.handle("node-a", event(seq)) == {}
    answer = await reports.handle("node-a", event(10))
    assert answer["error"]["code"] == 429 and answer["error"]["retry"] is True
    assert answer["retry_after"] == pytest.approx(0.2, abs=0.01)  # one event per 1/5 s
    # Other reports draw on the node's overall bucket only: 10 of its 20 are left.
    for seq in range(11, 21):
        assert await reports.handle("node-a", report("status", DEVICE, status("1"), seq)) == {}
    answer = await reports.handle("node-a", report("status", DEVICE, status("1"), 21))
    assert answer["error"]["code"] == 429 and answer["retry_after"] == pytest.approx(0.1, abs=0.01)
    # Another node has buckets of its own.
    body = {"status": {"capacity": {"cpu": "1"}}}
    assert await reports.handle("node-b", report("status", "nodes//node-b", body)) == {}
    clock.now += 0.2  # two tokens back overall, one event token
    assert await reports.handle("node-a", event(10)) == {}
    assert (await reports.handle("node-a", event(22)))["error"]["code"] == 429
    assert reports.counters["reports_throttled"] == 3
    events, _ = await store.list("events/")
    assert len(events) == 11


async def test_a_node_keeps_its_newest_events_only(store: Store) -> None:
    limits = ReportLimits(events_kept=10)
    reports = Reports(store, Counter(), limits)
    # An Event of someone else's is not the node's to lose.
    other = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "node-a.admin", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "node-a"},
        "reason": "Maintenance",
    }
    await store.create("events/default/node-a.admin", other)
    for seq in range(25):
        assert await reports.handle("node-a", event(seq)) == {}, seq
    events, _ = await store.list("events/")
    mine = sorted(
        int(r.value["message"][1:]) for r in events if r.key != "events/default/node-a.admin"
    )
    assert 9 <= len(mine) <= 10 and mine == list(range(25 - len(mine), 25)), mine
    assert any(r.key == "events/default/node-a.admin" for r in events)
    assert reports.counters["events_pruned"] == 25 - len(mine)


async def test_twin_history_stays_within_its_byte_budget(store: Store) -> None:
    await store.modify(
        DEVICE,
        lambda rec: {
            **rec.value,
            "spec": {
                **rec.value["spec"],
                "properties": [{"name": "temperature"}, {"name": "humidity"}],
            },
        },
    )
    reports = Reports(store, Counter(), ReportLimits(history_bytes=4000))
    for i in range(60):
        prop = ("temperature", "humidity")[i % 2]
        entry = {"propertyName": prop, "value": f"{i:03d}" + "x" * 97, "timestamp": str(1000 + i)}
        assert (
            await reports.handle("node-a", report("twin-history", DEVICE, {"history": [entry]}, i))
            == {}
        )
    kept = (await store.get(DEVICE)).value["status"]["twinHistory"]
    size = len(json.dumps(kept, separators=(",", ":")).encode())
    assert size <= 4000
    stamps = sorted(int(v["timestamp"]) for ring in kept.values() for v in ring)
    assert stamps == list(range(1060 - len(stamps), 1060))  # the newest, both properties
    assert reports.counters["history_pruned"] == 60 - len(stamps)
    # History of a property the device does not have is refused, final.
    entry = {"propertyName": "pressure", "value": "1", "timestamp": "5"}
    answer = await reports.handle("node-a", report("twin-history", DEVICE, {"history": [entry]}))
    assert answer["error"]["code"] == 400 and "pressure" in answer["error"]["message"]
