"""Deployments end to end: a real gateway in this process (API over TLS for
kubectl 1.32), the scheduler and the ReplicaSet and Deployment controllers run
by the controller runtime over its store (as the gateway's leader work runs
them), and boards simulated over the real protocol: each is enrolled with a
real join token, holds a real mTLS WebSocket session to the hub, syncs its view
with ``edgeproto.AgentSync`` and reports its pods' status (Running and Ready,
or ErrImagePull for an image named ``bad:*``) and its Node status as an agent
does. A stopped board goes NotReady after the gateway's grace period."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket as tws

import edgeproto
from cloudgateway.controllers import run_controllers
from cloudgateway.controllers._deployment import DeploymentController
from cloudgateway.controllers._gc import GarbageCollector
from cloudgateway.controllers._replicaset import ReplicaSetController
from cloudgateway.controllers._scheduler import Scheduler
from edgeproto import AgentSync, Kind, Message
from tests.cloudgateway.test_kubectl import ok, run
from tests.conftest import Gateway, join_node, start_gateway, wait_for

NODE_STATUS = {
    "capacity": {"cpu": "4", "memory": "4Gi", "pods": "110"},
    "allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"},
    "conditions": [{"type": "MemoryPressure", "status": "False", "reason": "AgentHasSufficientMemory"}],
}  # fmt: skip


class SimBoard:
    """One board over the real hub protocol (see the module's docstring)."""

    def __init__(self, name: str, data_dir: Path, hub_url: str) -> None:
        self.name = name
        self.dir = data_dir
        self.url = hub_url
        self.pods: dict[str, dict[str, Any]] = {}
        self.reported: dict[str, int] = {}  # pod key → generation reported on
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self._seq = 0

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(self.dir / "ca.crt"))
        ctx.load_cert_chain(str(self.dir / "node.crt"), str(self.dir / "node.key"))
        return ctx

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self._session(task_status)
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    async def _send(self, ws: Any, msg: Message) -> None:
        await ws.send_message(edgeproto.encode_message(msg))

    async def _report(self, ws: Any, key: str, status: dict[str, Any]) -> None:
        self._seq += 1
        await self._send(ws, Message(Kind.REPORT, id=self._seq, res=key, op="status",
                                     body={"status": status}))  # fmt: skip

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        sync = AgentSync(self.name, 0)
        async with tws.open_websocket_url(self.url, ssl_context=self._ssl()) as ws:
            await self._send(ws, sync.hello(now=trio.current_time()))
            await self._report(ws, f"nodes//{self.name}", NODE_STATUS)
            started = False
            async with trio.open_nursery() as nursery:

                async def ping() -> None:
                    while True:
                        await trio.sleep(1)  # the board's keepalive, as the agent's
                        await self._send(ws, Message(Kind.PING, id=0))

                nursery.start_soon(ping)
                while True:
                    raw = await ws.get_message()
                    msg = edgeproto.decode_message(raw)
                    if msg.kind not in (Kind.SNAPSHOT, Kind.CHANGE):
                        continue
                    applied = sync.receive(msg, nbytes=len(raw), now=trio.current_time())
                    if applied is None:
                        continue
                    if applied.replace:
                        self.pods.clear()
                    for key in applied.deletes:
                        self.pods.pop(key, None)
                        self.reported.pop(key, None)
                    for e in applied.upserts:
                        if e.key.startswith("pods/"):
                            self.pods[e.key] = edgeproto.decode_object(e.data)
                    if applied.rev is not None:
                        await self._send(ws, sync.persisted(applied.rev))
                    for key, pod in self.pods.items():
                        gen = pod["metadata"].get("generation")
                        if self.reported.get(key) != gen:  # new, or its spec changed
                            self.reported[key] = gen
                            await self._report(ws, key, pod_status(pod))
                    if not started:
                        started = True
                        task_status.started()


def pod_status(pod: dict[str, Any]) -> dict[str, Any]:
    image = pod["spec"]["containers"][0]["image"]
    now = edgeproto.rfc3339(time.time())
    if image.startswith("bad"):
        return {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [{
                "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "pull failed"}},
            }],
        }  # fmt: skip
    return {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": "app", "image": image, "imageID": "", "ready": True, "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }],
    }  # fmt: skip


class Fleet:
    def __init__(self, gw: Gateway, nursery: trio.Nursery, root: Path) -> None:
        self.gw, self.nursery, self.root = gw, nursery, root
        self.boards: dict[str, SimBoard] = {}

    async def add(self, name: str, **labels: str) -> SimBoard:
        d = self.root / name
        await join_node(self.gw, name, d)
        board = SimBoard(name, d, f"wss://127.0.0.1:{self.gw.ports['hub']}/")
        await self.nursery.start(board.run)
        self.boards[name] = board
        if labels:
            await ok(self.gw, "label", "node", name, *(f"{k}={v}" for k, v in labels.items()))
        return board


@pytest.fixture
async def fleet(nursery: trio.Nursery, tmp_path: Path) -> Fleet:
    gw = await start_gateway(nursery, tmp_path / "gw", api_tls=True, grace=1.0, controllers=False)
    store = gw.store
    await nursery.start(
        run_controllers,
        store,
        [
            Scheduler(store),
            ReplicaSetController(store),
            DeploymentController(store),
            GarbageCollector(store),
        ],
    )
    return Fleet(gw, nursery, tmp_path)


def manifest(replicas: int = 3, image: str = "app:1", **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}], **spec},
            },
        },
    })  # fmt: skip


async def get(gw: Gateway, path: str) -> Any:
    """A GET of the API through kubectl (the API speaks TLS here)."""
    return json.loads(await ok(gw, "get", "--raw", path))


async def pods(gw: Gateway) -> list[dict[str, Any]]:
    return list((await get(gw, "/api/v1/namespaces/default/pods"))["items"])


DEPLOY = "/apis/apps/v1/namespaces/default/deployments/web"


async def test_kubectl_deployment_spread_scale_rollout_pause_undo(fleet: Fleet) -> None:
    gw = fleet.gw
    for name in ("pi-1", "pi-2", "pi-3"):
        await fleet.add(name, site="a")
    await fleet.add("pi-4", site="b")
    await ok(gw, "apply", "-f", "-", stdin=manifest(3, nodeSelector={"site": "a"}))
    out = await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    assert 'deployment "web" successfully rolled out' in out
    placed = sorted(p["spec"]["nodeName"] for p in await pods(gw))
    assert placed == ["pi-1", "pi-2", "pi-3"]  # one per matching board, none on pi-4

    out = await ok(gw, "get", "deploy,rs,pods")
    assert "deployment.apps/web" in out and "3/3" in out
    assert "replicaset.apps/web-" in out and out.count("pod/web-") == 3

    await ok(gw, "scale", "deploy/web", "--replicas", "5")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    ps = await pods(gw)
    assert len(ps) == 5 and {p["spec"]["nodeName"] for p in ps} == {"pi-1", "pi-2", "pi-3"}

    await ok(gw, "scale", "deploy/web", "--replicas", "3")
    await ok(gw, "set", "image", "deploy/web", "app=app:2")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    ps = await pods(gw)
    assert sorted(p["spec"]["containers"][0]["image"] for p in ps) == ["app:2"] * 3
    history = await ok(gw, "rollout", "history", "deploy/web")
    assert "1 " in history and "2 " in history

    await ok(gw, "rollout", "pause", "deploy/web")
    await ok(gw, "set", "image", "deploy/web", "app=app:3")
    assert (await get(gw, DEPLOY))["spec"]["paused"] is True
    await ok(gw, "rollout", "resume", "deploy/web")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    assert {p["spec"]["containers"][0]["image"] for p in await pods(gw)} == {"app:3"}

    await ok(gw, "rollout", "undo", "deploy/web")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")

    async def back() -> bool:
        ps = await pods(gw)
        return sorted(p["spec"]["containers"][0]["image"] for p in ps) == ["app:2"] * 3

    await wait_for(back)
    body = await get(gw, "/apis/apps/v1/namespaces/default/replicasets")
    revs = {
        r["spec"]["template"]["spec"]["containers"][0]["image"]:
        r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        for r in body["items"]
    }  # fmt: skip
    assert revs == {"app:1": "1", "app:2": "4", "app:3": "3"}


async def test_unschedulable_pod_says_why(fleet: Fleet) -> None:
    gw = fleet.gw
    await fleet.add("pi-1", site="a")
    await fleet.add("pi-2", site="b")
    await ok(gw, "apply", "-f", "-", stdin=manifest(1, nodeSelector={"site": "c"}))
    message = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."

    async def why() -> dict[str, Any] | None:
        for p in await pods(gw):
            for c in p.get("status", {}).get("conditions", []):
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return dict(c)
        return None

    cond = await wait_for(why)
    assert cond["reason"] == "Unschedulable" and cond["message"] == message
    out = await ok(gw, "get", "events", "--field-selector", "reason=FailedScheduling")
    assert "FailedScheduling" in out and message in out
    out = await ok(gw, "get", "pods")
    assert "Pending" in out
    # A board labelled to match: the pod is bound there.
    await ok(gw, "label", "node", "pi-2", "site=c", "--overwrite")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    assert [p["spec"]["nodeName"] for p in await pods(gw)] == ["pi-2"]


async def test_pod_on_a_board_gone_offline_stays_and_counts_apart(fleet: Fleet) -> None:
    gw = fleet.gw
    for name in ("pi-1", "pi-2", "pi-3"):
        await fleet.add(name)
    await ok(gw, "apply", "-f", "-", stdin=manifest(2))
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    before = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in await pods(gw)}
    victim_pod, victim_node = sorted(before.items())[0]
    await fleet.boards[victim_node].stop()

    async def counted_apart() -> dict[str, Any] | None:
        d = await get(gw, DEPLOY)
        st = d.get("status", {})
        return dict(st) if st.get("offlineReplicas") == 1 else None

    st = await wait_for(counted_apart)  # the node went NotReady, the controller saw it
    assert st["availableReplicas"] == 2 and st["replicas"] == 2
    after = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in await pods(gw)}
    assert after == before  # not evicted, not rescheduled: edge autonomy
    # kubectl rollout status does not wait on the offline board.
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=30s")
    # A rollout goes on without it: new pods on the online boards.
    await ok(gw, "set", "image", "deploy/web", "app=app:2")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    ps = await pods(gw)
    assert {p["spec"]["containers"][0]["image"] for p in ps} == {"app:2"}
    assert victim_node not in {p["spec"]["nodeName"] for p in ps}
    assert victim_pod not in {p["metadata"]["name"] for p in ps}


async def test_bad_image_pauses_at_the_threshold(fleet: Fleet) -> None:
    gw = fleet.gw
    for name in ("pi-1", "pi-2", "pi-3"):
        await fleet.add(name)
    m = json.loads(manifest(3))
    m["metadata"]["annotations"] = {"edgeflock.io/max-failed": "0"}
    await ok(gw, "apply", "-f", "-", stdin=json.dumps(m))
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    await ok(gw, "set", "image", "deploy/web", "app=bad:1")

    async def paused() -> dict[str, Any] | None:
        d = await get(gw, DEPLOY)
        conds = {c["type"]: c for c in d.get("status", {}).get("conditions", [])}
        prog = conds.get("Progressing", {})
        if d["spec"].get("paused") and prog.get("reason") == "FailureThresholdExceeded":
            return dict(prog)
        return None

    prog = await wait_for(paused)
    assert "ErrImagePull" in prog["message"]
    images = sorted(p["spec"]["containers"][0]["image"] for p in await pods(gw))
    assert images.count("app:1") >= 2  # the old revision keeps serving
    # kubectl: resume first (it refuses to undo a paused deployment), then undo.
    code, _, err = await run(gw, "rollout", "undo", "deploy/web")
    assert code != 0 and "paused" in err
    await ok(gw, "rollout", "resume", "deploy/web")
    await ok(gw, "rollout", "undo", "deploy/web")
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    images = sorted(p["spec"]["containers"][0]["image"] for p in await pods(gw))
    assert images == ["app:1"] * 3


async def test_delete_removes_replicasets_and_pods_orphan_keeps_them(fleet: Fleet) -> None:
    gw = fleet.gw
    for name in ("pi-1", "pi-2"):
        await fleet.add(name)
    await ok(gw, "apply", "-f", "-", stdin=manifest(2))
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    await ok(gw, "delete", "deploy/web", "--cascade=orphan")
    rss = (await get(gw, "/apis/apps/v1/namespaces/default/replicasets"))["items"]
    assert len(rss) == 1

    async def orphaned() -> bool:
        (rs,) = (await get(gw, "/apis/apps/v1/namespaces/default/replicasets"))["items"]
        return not rs["metadata"].get("ownerReferences")

    await wait_for(orphaned)
    assert len(await pods(gw)) == 2  # the orphaned ReplicaSet keeps its pods
    await ok(gw, "delete", "rs", "--all")

    async def gone() -> bool:
        return not await pods(gw)

    await wait_for(gone)
    # A deployment deleted in the background takes its ReplicaSets and pods along.
    await ok(gw, "apply", "-f", "-", stdin=manifest(2))
    await ok(gw, "rollout", "status", "deploy/web", "--timeout=60s")
    await ok(gw, "delete", "deploy/web")

    async def all_gone() -> bool:
        rss = (await get(gw, "/apis/apps/v1/namespaces/default/replicasets"))["items"]
        return not rss and not await pods(gw)

    await wait_for(all_gone)
    for board in fleet.boards.values():
        await wait_for(lambda b=board: not b.pods)  # the boards were told to stop them
