"""The agent on a full or read-only card, end to end (real tmpfs filled up, a
real read-only bind mount, a real gateway): it starts read-only on the objects
it has, tells the cloud (``DiskPressure`` with the reason), and once the card
takes writes again it stores what it missed and the condition clears."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tests.conftest import Gateway, fill_up, join_node, start_agent, wait_for
from tests.storage_fixtures import BindMount, bind_mount
from tests.test_sync_e2e import cm, create

__all__ = ["bind_mount"]  # a fixture


async def disk_condition(gw: Gateway, node: str) -> dict[str, Any]:
    code, body = await gw.api("GET", f"/api/v1/nodes/{node}")
    assert code == 200, body
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "DiskPressure"), {})


async def disk_is(gw: Gateway, node: str, status: str) -> dict[str, Any] | None:
    cond = await disk_condition(gw, node)
    return cond if cond.get("status") == status else None


async def an_agent_that_ran_once(nursery: trio.Nursery, gw: Gateway, node: str, data: Path) -> None:
    await join_node(gw, node, data)
    agent = await start_agent(nursery, data)
    await create(gw, "configmaps", cm("before", node))
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") == 1)
    await wait_for(lambda: disk_is(gw, node, "False"))
    await agent.stop()


async def starts_read_only_and_recovers(
    nursery: trio.Nursery, gw: Gateway, node: str, data: Path, reason: str, fix: Callable[[], None]
) -> None:
    agent = await start_agent(nursery, data, storage_retry=0.1)
    # Before: the store could not be opened, run_agent raised and the agent never started.
    cond = await wait_for(lambda: disk_is(gw, node, "True"))
    assert cond["reason"] == reason and "meta.db" in cond["message"]
    # In a thread: beside the read-only agent's exclusive lock, status waits
    # for its busy timeout before it reads the file as it is.
    status = await trio.to_thread.run_sync(agent.status)
    assert status["objects"]["ConfigMap"] == 1  # what it had, still served
    await create(gw, "configmaps", cm("during", node))  # cannot be stored yet
    fix()
    await wait_for(lambda: disk_is(gw, node, "False"), timeout=20)
    await wait_for(lambda: agent.status()["objects"].get("ConfigMap") == 2, timeout=20)
    await agent.stop()


async def test_the_agent_starts_on_a_full_card(
    nursery: trio.Nursery, gateway: Gateway, small_fs: Path
) -> None:
    data = small_fs / "agent"
    await an_agent_that_ran_once(nursery, gateway, "pi-full", data)
    filler = fill_up(small_fs)
    await starts_read_only_and_recovers(
        nursery, gateway, "pi-full", data, "EdgeStorageFull", filler.unlink
    )


async def test_the_agent_starts_on_a_read_only_card(
    nursery: trio.Nursery, gateway: Gateway, bind_mount: BindMount
) -> None:
    data = bind_mount.path / "agent"
    await an_agent_that_ran_once(nursery, gateway, "pi-ro", data)
    bind_mount.read_only()
    await starts_read_only_and_recovers(
        nursery, gateway, "pi-ro", data, "EdgeStorageReadOnly", bind_mount.writable
    )
