"""The issue's fleet story, black-box through edgectl: three boards on version N
(each its own releases root, installed as first boot does, run by ``edgeagent
launch`` on a real containerd with a pod each) upgraded to N+1 by one job with
``--concurrency 1``, one after another, their pods keeping their container IDs;
then a job to a deliberately broken N+2 (its agent fails at start after writing
a newer schema into the store) rolls the board it reached back to N+1 and stops
at its failure threshold, the other boards untouched."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import trio

from edgeagent._slots import Slots
from edgeagent._version import VERSION
from tests.conftest import Gateway, edgectl, start_gateway, wait_for
from tests.edgeagent.conftest import CRASH, GOOD, Releases, spawn_launcher
from tests.edged.conftest import Containerd, containerd  # noqa: F401  (the session's containerd)
from tests.test_join_release_key import join_cli

NS = "/api/v1/namespaces/default"
JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"
BOARDS = ["fleet-1", "fleet-2", "fleet-3"]


def pod(name: str, node: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
        },
    }


async def versions(gw: Gateway) -> dict[str, str]:
    out = {}
    for b in BOARDS:
        _, node = await gw.api("GET", f"/api/v1/nodes/{b}")
        info = ((node or {}).get("status") or {}).get("nodeInfo") or {}
        out[b] = str(info.get("kubeletVersion", "")).rpartition("edgeflock.")[2]
    return out


async def containers(gw: Gateway) -> dict[str, tuple[str, int]]:
    """Each board's pod: (container ID, restart count) as the gateway has it."""
    out = {}
    for b in BOARDS:
        _, p = await gw.api("GET", f"{NS}/pods/app-{b}")
        statuses = ((p or {}).get("status") or {}).get("containerStatuses") or []
        running = statuses and "running" in (statuses[0].get("state") or {})
        if running:
            out[b] = (statuses[0].get("containerID", ""), statuses[0].get("restartCount", -1))
    return out


async def job(gw: Gateway, name: str) -> dict[str, Any]:
    code, body = await gw.api("GET", f"{JOBS}/{name}")
    assert code == 200, body
    return dict(body)


def by_node(j: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["nodeName"]: e for e in (j.get("status") or {}).get("nodeStatus") or []}


async def test_three_boards_upgrade_one_after_another_and_a_broken_version_rolls_back(
    nursery: trio.Nursery,
    tmp_path: Path,
    releases: Releases,
    containerd: Containerd,  # noqa: F811
    launched: list[subprocess.Popen[bytes]],
) -> None:
    key = tmp_path / "release.key"
    rc, _, err = await edgectl("upgrade", "keygen", "--out", str(key))
    assert rc == 0, err
    gw = await start_gateway(nursery, tmp_path / "gw", release_key=tmp_path / "release.pub")
    for version, archive in ((GOOD, releases.good), (CRASH, releases.crash)):
        bundle = archive.parent / f"bundle-{version}"  # the bundle directory it was packed from
        rc, out, err = await gw.edgectl("upgrade", "push", str(bundle), "--key", str(key))
        assert rc == 0, err

    roots: dict[str, Path] = {}
    datas: dict[str, Path] = {}
    for b in BOARDS:
        roots[b], datas[b] = tmp_path / b / "opt", tmp_path / b / "data"
        # First boot's install of version N into the board's own releases root.
        await trio.to_thread.run_sync(
            Slots(roots[b], datas[b]).first_install, VERSION, releases.base
        )
        rc, _, err = await join_cli(gw, b, datas[b])  # takes the gateway's release key
        assert rc == 0, err
        (datas[b] / "agent.toml").write_text("backoff_base = 0.05\nbackoff_cap = 0.5\n")
        code, body = await gw.api("POST", f"{NS}/pods", pod(f"app-{b}", b, containerd.image))
        assert code == 201, body
        launched.append(
            spawn_launcher(datas[b], roots[b], "--cri", containerd.address, from_slot=True)
        )

    def logs() -> str:
        return "\n".join(
            f"--- {b}\n" + (datas[b] / "launch.log").read_text(errors="replace")[-1500:]
            for b in BOARDS
        )

    async def all_at(version: str) -> bool:
        return set((await versions(gw)).values()) == {version}

    await wait_for(lambda: all_at(VERSION), timeout=60, what=logs)
    await wait_for(lambda: _len(containers(gw), 3), timeout=60, interval=0.3, what=logs)
    before = await containers(gw)

    # ---- N -> N+1, one board at a time -----------------------------------------------
    rc, out, err = await gw.edgectl(
        "upgrade", "start", "--version", GOOD, "--nodes", ",".join(BOARDS),
        "--concurrency", "1", "--health-timeout", "120", "--name", "to-good",
    )  # fmt: skip
    assert rc == 0, err

    async def finished(name: str) -> bool:
        return (await job(gw, name)).get("status", {}).get("state") in ("completed", "failed")

    await wait_for(lambda: finished("to-good"), timeout=420, interval=0.5, what=logs)
    good = await job(gw, "to-good")
    assert good["status"]["state"] == "completed", good["status"]
    entries = by_node(good)
    assert {b: entries[b]["state"] for b in BOARDS} == dict.fromkeys(BOARDS, "healthy")
    # One after another: each board was handed the release only once the one
    # before it was healthy.
    order = sorted(BOARDS, key=lambda b: entries[b]["startTime"])
    for prev, nxt in itertools.pairwise(order):
        assert entries[nxt]["startTime"] >= entries[prev]["time"], entries
    await wait_for(lambda: all_at(GOOD), timeout=60, what=logs)
    assert await containers(gw) == before  # same containers, never restarted
    rc, out, err = await gw.edgectl("upgrade", "status", "to-good")
    assert rc == 0, err
    for b in BOARDS:
        assert any(line.split()[:3] == [b, "healthy", GOOD] for line in out.splitlines()), out

    # ---- N+1 -> broken N+2: the first board rolls back, the job stops ------------------
    rc, out, err = await gw.edgectl(
        "upgrade", "start", "--version", CRASH, "--nodes", ",".join(BOARDS),
        "--concurrency", "1", "--max-failed", "0.3", "--health-timeout", "120",
        "--name", "to-crash",
    )  # fmt: skip
    assert rc == 0, err
    await wait_for(lambda: finished("to-crash"), timeout=300, interval=0.5, what=logs)
    crash = await job(gw, "to-crash")
    assert crash["status"]["state"] == "failed", crash["status"]
    entries = by_node(crash)
    states = {b: entries[b]["state"] for b in BOARDS}
    rolled = [b for b, s in states.items() if s == "rolledBack"]
    assert len(rolled) == 1, states
    assert all(s == "pending" for b, s in states.items() if b not in rolled), states
    assert "start" in entries[rolled[0]]["reason"], entries[rolled[0]]  # why: it never started
    board = Slots(roots[rolled[0]], datas[rolled[0]])
    assert board.current_version() == GOOD and board.broken(CRASH)
    await wait_for(lambda: all_at(GOOD), timeout=60, what=logs)
    assert await containers(gw) == before
    # The broken agent had written a newer schema into the store; the launcher put
    # back the backup, which the agent of N+1 reads.
    rc, out, _ = await _agent_status(roots[rolled[0]], datas[rolled[0]])
    assert rc == 0, out

    for b in BOARDS:  # the pods go through the API: the agents remove their containers
        code, _ = await gw.api("DELETE", f"{NS}/pods/app-{b}")
        assert code == 200
    await wait_for(lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=60)
    gw.scope.cancel()


async def _len(aw: Any, n: int) -> bool:
    return len(await aw) == n


async def _agent_status(root: Path, data: Path) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        p = subprocess.run(
            [str(root / "current" / "bin" / "edgeagent"), "status", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout + p.stderr, ""

    return await trio.to_thread.run_sync(run)
