"""kubectl 1.32 itself against DaemonSets the controller runs (real gateway
over TLS, simulated boards on the hub protocol): apply, set image, rollout
status (finishing with a board offline), rollout history (with --revision),
rollout undo, delete --cascade=orphan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.cloudgateway.simboard import SimBoard
from tests.cloudgateway.test_daemonset import start_controllers
from tests.cloudgateway.test_kubectl import ok, run
from tests.conftest import Gateway, start_gateway, wait_for

MANIFEST = """
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: sensor
spec:
  selector:
    matchLabels: {app: sensor}
  template:
    metadata:
      labels: {app: sensor}
    spec:
      nodeSelector: {site: a}
      containers:
      - name: app
        image: sensor:1.4
"""


@pytest.fixture
async def setup(
    nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, dict[str, SimBoard]]]:
    gw = await start_gateway(nursery, tmp_path / "gw", api_tls=True, grace=1.0)
    boards = {}
    for name in ("k1", "k2"):
        b = SimBoard(gw, name, tmp_path / name)
        await b.join()
        b.start(nursery)
        boards[name] = b
    for b in boards.values():
        with trio.fail_after(10):
            await b.connected.wait()
    scope, _ = await start_controllers(nursery, gw)
    await ok(gw, "label", "node", "k1", "k2", "site=a")
    yield gw, boards
    scope.cancel()
    async with trio.open_nursery() as n:
        for b in boards.values():
            n.start_soon(b.stop)


def images(boards: dict[str, SimBoard]) -> list[str]:
    return sorted(i for b in boards.values() for imgs in b.images().values() for i in imgs)


async def test_kubectl_rollout_history_undo_and_status(
    setup: tuple[Gateway, dict[str, SimBoard]],
) -> None:
    gw, boards = setup
    await ok(gw, "apply", "-f", "-", stdin=MANIFEST)
    await ok(gw, "rollout", "status", "ds/sensor", "--timeout=20s")
    assert images(boards) == ["sensor:1.4", "sensor:1.4"]
    await ok(gw, "set", "image", "ds/sensor", "app=sensor:1.5")
    out = await ok(gw, "rollout", "status", "ds/sensor", "--timeout=20s")
    assert 'daemon set "sensor" successfully rolled out' in out
    assert images(boards) == ["sensor:1.5", "sensor:1.5"]

    out = await ok(gw, "rollout", "history", "ds/sensor")
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert rows == ["1", "2"], out
    out = await ok(gw, "rollout", "history", "ds/sensor", "--revision=1")
    assert "sensor:1.4" in out and "sensor:1.5" not in out

    out = await ok(gw, "rollout", "undo", "ds/sensor")
    assert "rolled back" in out, out
    await ok(gw, "rollout", "status", "ds/sensor", "--timeout=20s")
    await wait_for(lambda: images(boards) == ["sensor:1.4", "sensor:1.4"], timeout=15)
    out = await ok(gw, "rollout", "history", "ds/sensor")
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert rows == ["2", "3"], out  # revision 1 came back as 3, as Kubernetes does

    # a board offline: kubectl's rollout status finishes on the online one
    await boards["k2"].stop()

    async def k2_unknown() -> bool:
        out = await ok(gw, "get", "node", "k2", "-o", "json")
        conds = json.loads(out)["status"]["conditions"]
        return any(c["type"] == "Ready" and c["status"] == "Unknown" for c in conds)

    await wait_for(k2_unknown, timeout=10)
    await ok(gw, "set", "image", "ds/sensor", "app=sensor:1.6")
    out = await ok(gw, "rollout", "status", "ds/sensor", "--timeout=20s")
    assert "successfully rolled out" in out
    out = await ok(gw, "get", "ds", "sensor", "-o", "json")
    conds = {c["type"]: c for c in json.loads(out)["status"]["conditions"]}
    assert conds["NodesOffline"]["message"] == "pending on 1 offline node(s): k2"


async def test_kubectl_delete_cascade_orphan(setup: tuple[Gateway, dict[str, SimBoard]]) -> None:
    gw, boards = setup
    await ok(gw, "apply", "-f", "-", stdin=MANIFEST)
    await ok(gw, "rollout", "status", "ds/sensor", "--timeout=20s")
    pods = sorted(n for b in boards.values() for n in b.pods())
    await ok(gw, "delete", "ds", "sensor", "--cascade=orphan")

    async def ds_gone() -> bool:
        code, _, _ = await run(gw, "get", "ds", "sensor")
        return code != 0

    await wait_for(ds_gone, timeout=10)
    out = await ok(gw, "get", "pods", "-o", "json")
    items = json.loads(out)["items"]
    assert sorted(p["metadata"]["name"] for p in items) == pods
    assert all("ownerReferences" not in p["metadata"] for p in items)
    assert sorted(n for b in boards.values() for n in b.pods()) == pods
