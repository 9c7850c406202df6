"""NodeUpgradeJobs run by the real controller in a real gateway, boards
simulated on the real hub protocol (real TLS, real reports and requests):
one at a time with concurrency 1, offline boards waiting without taking a
slot, a board already at the version, the failure threshold stopping the
job, abort, a report about a deleted job, the per-board timeout, the job
deadline and a gateway restarted mid-job; and what edgectl shows."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from edgeproto.upgrade import NodeState
from tests.conftest import Gateway, start_gateway
from tests.upgrade.boards import Board, keygen, make_bundle, push, settle

JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"


async def setup(gw: Gateway, tmp_path: Path, names: list[str]) -> tuple[list[Board], bytes]:
    key, pub = await keygen(tmp_path)
    await push(gw, make_bundle(tmp_path / "bundle", "0.2.0"), key)
    boards = [Board(gw, n, tmp_path / n, "0.1.0") for n in names]
    for b in boards:
        await b.join()
    return boards, pub.read_bytes()


async def job(gw: Gateway, name: str) -> dict[str, Any]:
    status, body = await gw.api("GET", f"{JOBS}/{name}")
    assert status == 200, body
    return body


def states(j: dict[str, Any]) -> dict[str, str]:
    return {e["nodeName"]: e["state"] for e in (j.get("status") or {}).get("nodeStatus") or []}


async def start(gw: Gateway, *argv: str) -> None:
    rc, _, err = await gw.edgectl("upgrade", "start", "--version", "0.2.0", *argv)
    assert rc == 0, err


def given(boards: list[Board]) -> list[str]:
    return [b.name for b in boards if b.ws is not None and b.assignment() is not None]


async def test_one_at_a_time_offline_waits_then_completed(gateway: Gateway, tmp_path: Path) -> None:
    boards, pub = await setup(gateway, tmp_path, ["a-off", "pi-b", "pi-c", "pi-d"])
    off, b, c, d = boards
    d.version = "0.2.0"  # already there
    async with AsyncExitStack() as stack:
        for x in (b, c, d):
            await stack.enter_async_context(x.connected())
        await start(gateway, "--nodes", "a-off,pi-b,pi-c,pi-d", "--name", "up")
        # a-off never connected (not Ready): it takes no slot; pi-b goes first.
        await settle([b, c, d], lambda: given([b, c, d]) == ["pi-b"])
        rc, out, _ = await gateway.edgectl("upgrade", "status")
        assert rc == 0
        lines = out.splitlines()
        assert lines[0].startswith("job up: version 0.2.0, upgrading, 1/4 healthy, 0 failed")
        assert lines[1].split() == ["NODE", "STATE", "VERSION", "REASON"]
        rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
        assert rows["a-off"][1:3] == ["offline", "<unknown>"], out
        assert rows["pi-b"][1:3] == ["pending", "0.1.0"], out
        assert rows["pi-d"][1:3] == ["healthy", "0.2.0"], out
        a = b.assignment()
        assert a is not None and a.job == "up" and a.version == "0.2.0"
    for x in (b,):  # pi-b upgrades (two sessions: before and after its restart)
        await x.upgrade(a, pub)
    async with AsyncExitStack() as stack:
        for x in (b, c):
            await stack.enter_async_context(x.connected())
        # pi-b is done: its assignment is taken off, pi-c gets one.
        await settle([b, c], lambda: given([b, c]) == ["pi-c"])
        a = c.assignment()
        assert a is not None
    await c.upgrade(a, pub)
    j = await job(gateway, "up")
    assert states(j) == {
        "a-off": "pending",
        "pi-b": "healthy",
        "pi-c": "healthy",
        "pi-d": "healthy",
    }
    assert j["status"]["state"] == "upgrading"
    async with off.connected():  # back online: it gets the job
        await settle([off], lambda: off.assignment() is not None)
        a = off.assignment()
        assert a is not None
    await off.upgrade(a, pub)

    async def done() -> bool:
        return (await job(gateway, "up")).get("status", {}).get("state") == "completed"

    await settle([], done)
    async with off.connected():
        await settle([off], lambda: off.assignment() is None)
    rc, out, _ = await gateway.edgectl("upgrade", "status", "up")
    assert out.startswith("job up: version 0.2.0, completed, 4/4 healthy, 0 failed"), out
    assert "edgeflock_hub_upgrade_reports_total" in await metrics(gateway)


async def metrics(gw: Gateway) -> str:
    import urllib.request

    import trio

    def get() -> str:
        req = urllib.request.Request(gw.api_url + "/metrics")
        req.add_header("Authorization", f"Bearer {gw.token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.read().decode())

    return await trio.to_thread.run_sync(get)


async def test_failure_threshold_abort_and_a_gone_job(gateway: Gateway, tmp_path: Path) -> None:
    boards, _ = await setup(gateway, tmp_path, ["pi-1", "pi-2", "pi-3"])
    async with AsyncExitStack() as stack:
        for x in boards:
            await stack.enter_async_context(x.connected())
        await start(gateway, "--nodes", "pi-1,pi-2,pi-3", "--name", "f", "--max-failed", "30%")
        await settle(boards, lambda: given(boards) == ["pi-1"])
        a = boards[0].assignment()
        assert a is not None
        assert await boards[0].report(a, NodeState.DOWNLOADING) == {}
        assert await boards[0].report(a, NodeState.FAILED, "signature does not verify") == {}

        async def failed() -> bool:
            return (await job(gateway, "f")).get("status", {}).get("state") == "failed"

        await settle(boards, failed)
        await settle(boards, lambda: given(boards) == [])
        j = await job(gateway, "f")
        assert states(j) == {"pi-1": "failed", "pi-2": "pending", "pi-3": "pending"}
        assert "1 of 3 boards failed or rolled back" in j["status"]["reason"]
        # A stale report about a finished board is acked and dropped.
        assert await boards[0].report(a, NodeState.INSTALLING) == {}
        # Abort: the first board's assignment is taken off, nobody else gets one.
        await start(gateway, "--nodes", "pi-2,pi-3", "--name", "g")
        await settle(boards, lambda: given(boards) == ["pi-2"])
        a = boards[1].assignment()
        assert a is not None
        rc, out, err = await gateway.edgectl("upgrade", "abort")  # the most recent job: g
        assert rc == 0 and "nodeupgradejob/g aborted" in out, err
        await settle(boards, lambda: given(boards) == [])
        assert (await job(gateway, "g")).get("status", {}).get("state") == "aborted"
        # A report about a deleted job: acked, dropped, counted.
        status, _ = await gateway.api("DELETE", f"{JOBS}/g")
        assert status == 200
        dropped = gateway.running.hub.statistics().get("upgrade_reports_dropped", 0)
        assert await boards[1].report(a, NodeState.DOWNLOADING) == {}
        assert gateway.running.hub.statistics()["upgrade_reports_dropped"] == dropped + 1
        # A malformed one is a 400 naming the field; another node's a 403.
        from edgeproto import Kind, Message

        bad = await boards[1].call(
            Message(Kind.REPORT, res="nodes//pi-2", op="upgrade", body={"job": "g"}), Kind.ACK
        )
        assert bad["error"]["code"] == 400 and "exactly" in bad["error"]["message"], bad
        body = {"job": "g", "uid": "u", "version": "0.2.0", "state": "failed", "reason": ""}
        other = await boards[1].call(
            Message(Kind.REPORT, res="nodes//pi-3", op="upgrade", body={**body, "time": "t"}),
            Kind.ACK,
        )
        assert other["error"]["code"] == 403, other


async def test_timeout_deadline_and_restart(nursery: Any, tmp_path: Path) -> None:
    gw = await start_gateway(nursery, tmp_path / "gateway")
    boards, pub = await setup(gw, tmp_path, ["pi-x", "pi-y", "pi-z"])
    x, y, _ = boards
    async with x.connected():
        await start(gw, "--nodes", "pi-x", "--name", "t", "--timeout", "2", "--max-failed", "1")
        await settle([x], lambda: given([x]) == ["pi-x"])
        # pi-x never reports: after 2 s it fails, its assignment is taken off.
        await settle([x], lambda: given([x]) == [], timeout=15)
    j = await job(gw, "t")
    assert j["status"]["state"] == "completed", j["status"]  # within failureTolerate 1
    entry = j["status"]["nodeStatus"][0]
    assert entry["state"] == "failed" and "timed out" in entry["reason"], entry
    # A job whose only board stays offline ends at its deadline.
    status, body = await gw.api(
        "POST",
        JOBS,
        {
            "apiVersion": "operations.kubeedge.io/v1alpha1",
            "kind": "NodeUpgradeJob",
            "metadata": {"name": "d"},
            "spec": {"version": "0.2.0", "nodeNames": ["pi-z"], "activeDeadlineSeconds": 2},
        },
    )
    assert status == 201, body

    async def ended() -> bool:
        return (await job(gw, "d")).get("status", {}).get("state") == "failed"

    await settle([], ended, timeout=15)
    entry = (await job(gw, "d"))["status"]["nodeStatus"][0]
    assert "deadline" in entry["reason"] and "offline" in entry["reason"], entry
    # The gateway restarts mid-job; pi-y upgrades meanwhile, reports when it is back.
    async with y.connected():
        await start(gw, "--nodes", "pi-y", "--name", "r")
        await settle([y], lambda: given([y]) == ["pi-y"])
        a = y.assignment()
        assert a is not None
    await gw.stop()
    gw2 = await start_gateway(nursery, tmp_path / "gateway")
    y.gw = gw2
    await y.upgrade(a, pub)

    async def completed() -> bool:
        return (await job(gw2, "r")).get("status", {}).get("state") == "completed"

    await settle([], completed)
    assert states(await job(gw2, "r")) == {"pi-y": "healthy"}
    gw2.scope.cancel()
