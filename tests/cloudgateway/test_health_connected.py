"""NodeHealth keeps no record of its own of which nodes are connected: it asks
the hub (one source of truth; the two records disagreed while a node's resync ran)."""

from __future__ import annotations

from pathlib import Path

import trio

import edgeproto
from cloudgateway._health import NodeHealth, ready_condition
from cloudgateway._store import SqliteBackend, Store
from tests.conftest import wait_for

# Real time, a short grace: the store works in a thread, and an autojump clock
# skips ahead while it does (past any deadline the test sets).
GRACE = 0.3


def _node(name: str, ready: str | None = None) -> dict[str, object]:
    obj: dict[str, object] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    if ready is not None:
        obj["status"] = {"conditions": [{"type": "Ready", "status": ready}]}
    return obj


async def test_a_node_is_connected_while_the_hub_has_its_session(tmp_path: Path) -> None:
    store = Store(SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node))
    # "resyncing" was Ready before the gateway restarted; its new session is still
    # in its resync (the hub has the session, health has not been told yet).
    await store.create(edgeproto.make_key("nodes", "", "resyncing"), _node("resyncing", "True"))
    sessions = {"steady", "leaving", "resyncing"}  # the hub's record

    async def ready(node: str) -> str | None:
        rec = await store.get(edgeproto.make_key("nodes", "", node))
        cond = ready_condition(rec.value.get("status"))
        return None if cond is None else str(cond["status"])

    health = NodeHealth(store, grace=GRACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run, lambda: sessions)
        await health.connected("steady")
        await health.connected("leaving")
        assert await ready("steady") == "True" and await ready("leaving") == "True"

        sessions.discard("leaving")  # its session ended: the grace period runs out
        await wait_for(lambda: _is(ready, "leaving", "Unknown"), timeout=10)
        start = trio.current_time()
        await wait_for(lambda: trio.current_time() - start > 2 * health.grace, timeout=10)
        # No heartbeat for far longer than the grace, but the hub holds their sessions.
        assert await ready("steady") == "True"
        assert await ready("resyncing") == "True"

        sessions.discard("steady")
        await wait_for(lambda: _is(ready, "steady", "Unknown"), timeout=10)
        assert await ready("resyncing") == "True"
        nursery.cancel_scope.cancel()
    store.backend.close()


async def _is(ready: object, node: str, value: str) -> bool:
    assert callable(ready)
    return bool(await ready(node) == value)
