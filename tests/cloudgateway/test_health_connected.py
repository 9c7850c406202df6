"""NodeHealth keeps no record of its own of which nodes are connected: its loop
asks the hub (one source of truth; the two records disagreed while a node's
resync ran: the hub held the session, health had not been told)."""

from __future__ import annotations

from pathlib import Path

import trio

import edgeproto
from cloudgateway._health import NodeHealth, ready_condition
from cloudgateway._store import SqliteBackend, Store
from tests.conftest import ManualClock, wait_for

# The grace is measured on the manual clock; the loop ticks every grace/8 s of
# trio time (0.05 s: the floor), so a check follows each advance quickly.
GRACE = 0.4


def _node(name: str, ready: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


async def test_a_node_is_connected_while_the_hub_has_its_session(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    store = Store(backend)
    # "resyncing" was Ready before the gateway restarted; its new session is in
    # its resync: the hub has the session, health.connected() has not run yet.
    await store.create(edgeproto.make_key("nodes", "", "resyncing"), _node("resyncing", "True"))
    sessions = {"resyncing", "steady", "leaving"}  # the hub's record, the only one
    clock = ManualClock()

    async def ready(node: str) -> str | None:
        rec = await store.get(edgeproto.make_key("nodes", "", node))
        cond = ready_condition(rec.value.get("status"))
        return None if cond is None else str(cond["status"])

    async def is_unknown(node: str) -> bool:
        return await ready(node) == "Unknown"

    health = NodeHealth(store, grace=GRACE, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run, lambda: sessions)
        # In this order the loop checks them ("resyncing" is tracked from start).
        await health.connected("steady")
        await health.connected("leaving")
        assert await ready("steady") == "True" and await ready("leaving") == "True"

        sessions.discard("leaving")  # its session ended
        clock.advance(100 * GRACE)  # nobody sends a heartbeat
        await wait_for(lambda: is_unknown("leaving"))
        # The same pass went over them first: the hub still holds their sessions.
        assert await ready("resyncing") == "True"
        assert await ready("steady") == "True"

        sessions.discard("steady")
        await wait_for(lambda: is_unknown("steady"))
        assert await ready("resyncing") == "True"
        nursery.cancel_scope.cancel()
    backend.close()
