"""Node health on a real store, with clocks the tests move: the grace period
passes without anyone waiting for it. Which nodes are connected is the hub's to
say: here a set stands for the hub's sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._health import NodeHealth, ready_condition
from cloudgateway._store import SqliteBackend, Store
from tests.conftest import ManualClock

GRACE = 40.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    yield Store(backend)
    backend.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def health(store: Store, clock: ManualClock) -> NodeHealth:
    return NodeHealth(store, grace=GRACE, clock=clock, wall=lambda: 1_700_000_000.0)


async def ready(store: Store, node: str) -> dict[str, Any] | None:
    rec = await store.get(edgeproto.make_key("nodes", "", node))
    return ready_condition(rec.value.get("status"))


async def test_not_ready_only_after_the_grace_period(
    store: Store, health: NodeHealth, clock: ManualClock
) -> None:
    await health.connected("pi-01")
    cond = await ready(store, "pi-01")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "AgentConnected"
    assert cond["lastTransitionTime"] == edgeproto.rfc3339(1_700_000_000.0)
    sessions: set[str] = set()  # pi-01 disconnected
    clock.advance(GRACE - 0.01)
    await health.check(sessions)
    assert (await ready(store, "pi-01") or {}).get("status") == "True"
    clock.advance(0.01)
    await health.check(sessions)
    cond = await ready(store, "pi-01")
    assert cond is not None and cond["status"] == "Unknown"
    assert cond["reason"] == "NodeStatusUnknown" and "40 s" in cond["message"]
    # offline since now; last heard from a grace period ago
    assert cond["lastTransitionTime"] == edgeproto.rfc3339(1_700_000_000.0)
    assert cond["lastHeartbeatTime"] == edgeproto.rfc3339(1_700_000_000.0 - GRACE)
    assert health.transitions == 2
    # Checked again: nothing more is written.
    rev = store.current_rev()
    clock.advance(GRACE)
    await health.check(sessions)
    assert store.current_rev() == rev


async def test_heartbeats_hold_the_grace_period_off(
    store: Store, health: NodeHealth, clock: ManualClock
) -> None:
    await health.connected("pi-01")
    sessions: set[str] = set()  # pi-01 disconnected
    for _ in range(10):  # a heartbeat every 30 s: the 40 s grace never runs out
        clock.advance(30)
        health.heartbeat("pi-01")
        await health.check(sessions)
    assert (await ready(store, "pi-01") or {}).get("status") == "True"
    # A node that is connected stays Ready however long it is silent.
    await health.connected("pi-02")
    sessions.add("pi-02")
    clock.advance(10 * GRACE)
    await health.check(sessions)
    assert (await ready(store, "pi-02") or {}).get("status") == "True"
    assert (await ready(store, "pi-01") or {}).get("status") == "Unknown"


async def test_ready_nodes_in_the_store_get_a_full_grace_period_from_start(
    store: Store, clock: ManualClock
) -> None:
    first = NodeHealth(store, grace=GRACE, clock=clock)
    await first.connected("pi-01")  # Ready in the store, from an earlier run
    clock.advance(1000)
    again = NodeHealth(store, grace=GRACE, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run, set)
        clock.advance(GRACE - 1)
        await again.check(())
        assert (await ready(store, "pi-01") or {}).get("status") == "True"
        clock.advance(1)
        await again.check(())
        assert (await ready(store, "pi-01") or {}).get("status") == "Unknown"
        nursery.cancel_scope.cancel()
