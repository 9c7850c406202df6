"""One board upgraded end to end: a real gateway and NodeUpgradeJob, the
board run by ``edgeagent launch`` from a releases root where this tree is
installed (``installed``, built once per session with the slot tests), the
release of this tree at a bumped version downloaded over the hub, installed,
switched to, started on trial by the launcher, marked healthy after its first
resync. The 3-board fleet test (the lead's) builds on the same pieces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import trio

from edgeagent._slots import Slots
from edgeagent._version import VERSION
from tests.conftest import start_gateway, wait_for
from tests.edgeagent.conftest import GOOD, Installed, Releases, spawn_launcher
from tests.edgeagent.hub_standin import keypair, release_of
from tests.edgeagent.upgrade_fixtures import node_status_of, push_release, start_job
from tests.test_join_release_key import join_cli


async def test_a_board_upgrades_to_a_new_version_and_confirms_it_healthy(
    nursery: trio.Nursery,
    tmp_path: Path,
    releases: Releases,
    installed: Installed,
    launched: list[subprocess.Popen[bytes]],
) -> None:
    root = installed.slots.root
    installed.slots.set_link("current", VERSION)
    installed.slots.set_link("previous", None)
    private, public = keypair()
    (tmp_path / "release.pub").write_bytes(public)
    gw = await start_gateway(nursery, tmp_path / "gw", release_key=tmp_path / "release.pub")
    release = release_of(releases.good, GOOD, private)
    await push_release(gw, release)
    data = tmp_path / "board"
    rc, _, err = await join_cli(gw, "pi-e2e", data)
    assert rc == 0, err
    (data / "agent.toml").write_text("backoff_base = 0.05\nbackoff_cap = 0.5\n")
    slots = Slots(root, data)
    launched.append(spawn_launcher(data, root))

    async def at(version: str) -> bool:
        _, node = await gw.api("GET", "/api/v1/nodes/pi-e2e")
        info = (node.get("status") or {}).get("nodeInfo") or {}
        return str(info.get("kubeletVersion", "")).endswith(f"edgeflock.{version}")

    def log_tail() -> str:
        return (data / "launch.log").read_text(errors="replace")[-3000:]

    await wait_for(lambda: at(VERSION), timeout=30, what=log_tail)
    await start_job(gw, "up-e2e", GOOD, ["pi-e2e"], healthTimeoutSeconds=120)

    async def healthy() -> bool:
        return (await node_status_of(gw, "up-e2e", "pi-e2e")).get("state") == "healthy"

    await wait_for(healthy, timeout=120, interval=0.2, what=log_tail)
    assert slots.current_version() == GOOD and slots.link("previous") == VERSION
    await wait_for(lambda: slots.trial() is None, timeout=30, what=log_tail)
    await wait_for(lambda: at(GOOD), timeout=30, what=log_tail)
    left = [n for n in os.listdir(data / "upgrade") if n.endswith((".part", ".tar"))]
    assert left == []  # the download is gone once switched
    installed.slots.set_link("current", VERSION)
    installed.slots.set_link("previous", None)
    gw.scope.cancel()
