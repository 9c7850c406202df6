"""A DaemonSet rollout across a fleet of simulated boards, 10 % of them offline.

    .venv/bin/python bench/daemonset_rollout.py [--boards 1000] [--offline 0.1]

One gateway (embedded store; its controllers run in it). Boards are simulated in
this process as in bench/gateway_scale.py (real TLS with node certificates from
the gateway's CA, real WebSocket, the real sync protocol through
``edgeproto.AgentSync``) and report each pod they are given Running and Ready, as
edged would. Every board is labelled ``site=a``; a tenth are then stopped and
their Nodes go NotReady. A DaemonSet with ``nodeSelector: {site: a}`` is applied
(v1), then its image is changed (v2). Printed: how long v1 and v2 take to reach
every online board (its pod reported Running with that image), the gateway's CPU
seconds for the update, the bytes each online board received for it, and that
the offline boards are listed as pending and never block the rollout.
"""

from __future__ import annotations

import argparse
import json
import resource
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio
import trio_websocket as tws
from _harness import Gateway, cpu_seconds, machine
from gateway_scale import make_certs

import edgeproto
from edgeproto import AgentSync, Kind, Message

NS = "/apis/apps/v1/namespaces/default/daemonsets"


def request(gw: Gateway, method: str, path: str, body: Any = None, ctype: str = "") -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{gw.ports['api']}{path}", data=data, method=method
    )
    req.add_header("Authorization", f"Bearer {gw.token}")
    req.add_header("Content-Type", ctype or "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def daemonset(image: str) -> dict[str, Any]:
    labels = {"app": "sensor-agent"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "sensor-agent", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "100%"},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"site": "a"},
                    "containers": [{"name": "app", "image": image}],
                },
            },
        },
    }


def running(pod: dict[str, Any], now: float) -> dict[str, Any]:
    at = edgeproto.rfc3339(now)
    containers = (pod.get("spec") or {}).get("containers") or []
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": at},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": at},
        ],
        "containerStatuses": [
            {
                "name": c.get("name"),
                "image": c.get("image"),
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": at}},
            }
            for c in containers
        ],
    }


class Board:
    """A simulated board: keeps its view across reconnects, reports its pods."""

    def __init__(self, i: int, url: str, certs: Path) -> None:
        self.name = f"sim-{i:05d}"
        self.i = i
        self.url = url
        self.certs = certs
        self.sync = AgentSync(self.name, 0)
        self.view: dict[str, dict[str, Any]] = {}
        self.reported: set[str] = set()
        self.bytes = 0
        self.scope = trio.CancelScope()
        self._seq = 0

    def ctx(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / f"n{self.i:05d}.crt"), str(self.certs / "node.key"))
        return ctx

    def images(self) -> set[str]:
        return {
            c.get("image")
            for k, p in self.view.items()
            if k.startswith("pods/") and p["metadata"]["uid"] in self.reported
            for c in (p.get("spec") or {}).get("containers") or []
        }

    async def run(self) -> None:
        with self.scope:
            ctx = self.ctx()
            while True:
                try:
                    async with tws.open_websocket_url(
                        self.url, ssl_context=ctx, message_queue_size=4, connect_timeout=15,
                        max_message_size=edgeproto.DEFAULT_MAX_MESSAGE * 2,
                    ) as ws:  # fmt: skip
                        await self.session(ws)
                except (OSError, tws.HandshakeError, tws.ConnectionClosed, ssl.SSLError):
                    await trio.sleep(0.5)

    async def session(self, ws: tws.WebSocketConnection) -> None:
        await ws.send_message(edgeproto.encode_message(self.sync.hello(now=trio.current_time())))
        while True:
            with trio.move_on_after(10):
                raw = await ws.get_message()
                self.bytes += len(raw)
                msg = edgeproto.decode_message(raw)
                if msg.kind in (Kind.SNAPSHOT, Kind.CHANGE):
                    apply = self.sync.receive(msg, nbytes=len(raw), now=trio.current_time())
                    if apply is not None:
                        if apply.replace:
                            self.view = {}
                        for key in apply.deletes:
                            self.view.pop(key, None)
                        for e in apply.upserts:
                            self.view[e.key] = edgeproto.decode_object(e.data)
                        if apply.rev is not None:
                            msg = self.sync.persisted(apply.rev)
                            await ws.send_message(edgeproto.encode_message(msg))
                        await self.report(ws)
                continue
            await ws.send_message(edgeproto.encode_message(Message(Kind.PING, id=1)))

    async def report(self, ws: tws.WebSocketConnection) -> None:
        for key, obj in list(self.view.items()):
            uid = obj["metadata"].get("uid")
            if not key.startswith("pods/") or uid in self.reported:
                continue
            self.reported.add(uid)
            self._seq += 1
            body = {"status": running(obj, time.time())}
            msg = Message(Kind.REPORT, id=self._seq, res=key, op="status", body=body)
            await ws.send_message(edgeproto.encode_message(msg))


async def until(what: str, pred: Any, timeout: float) -> float:
    t0 = trio.current_time()
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return trio.current_time() - t0
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


async def run(args: argparse.Namespace, root: Path) -> None:
    gw = Gateway(root / "gw", grace="5s")
    certs = root / "certs"
    certs.mkdir()
    await trio.to_thread.run_sync(make_certs, gw.data_dir, certs, args.boards)
    await trio.to_thread.run_sync(gw.start)
    assert gw.proc is not None
    url = f"wss://127.0.0.1:{gw.ports['hub']}/"
    boards = [Board(i, url, certs) for i in range(args.boards)]
    offline = {b.name for b in boards if b.i % round(1 / args.offline) == 0}
    try:
        async with trio.open_nursery() as nursery:
            for b in boards:
                nursery.start_soon(b.run)
            took = await until(
                "every board synced", lambda: all(b.sync.last_rev for b in boards), 600
            )
            print(f"{args.boards} boards connected and synced in {took:.1f} s")

            def nodes() -> int:
                return len(request(gw, "GET", "/api/v1/nodes")["items"])

            while await trio.to_thread.run_sync(nodes) < args.boards:  # Nodes made on connect
                await trio.sleep(0.2)

            def label(b: Board) -> None:
                patch = {"metadata": {"labels": {"site": "a"}}}
                request(
                    gw, "PATCH", f"/api/v1/nodes/{b.name}", patch, "application/merge-patch+json"
                )

            for b in boards:
                await trio.to_thread.run_sync(label, b)
            for b in boards:
                if b.name in offline:
                    b.scope.cancel()

            def notready() -> int:
                items = request(gw, "GET", "/api/v1/nodes")["items"]
                return sum(
                    1
                    for n in items
                    for c in (n.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") != "True"
                )

            t0 = trio.current_time()
            while await trio.to_thread.run_sync(notready) < len(offline):
                await trio.sleep(0.5)
            print(
                f"{len(offline)} boards stopped; their Nodes NotReady after {trio.current_time() - t0:.1f} s"
            )
            online = [b for b in boards if b.name not in offline]

            await trio.to_thread.run_sync(request, gw, "POST", NS, daemonset("sensor-agent:1.4"))
            took = await until(
                "v1 on every online board",
                lambda: all(b.images() == {"sensor-agent:1.4"} for b in online),
                600,
            )
            print(f"v1 reached all {len(online)} online boards in {took:.1f} s")
            await trio.sleep(3)  # the controller's status settles
            before = {b.name: b.bytes for b in online}
            cpu0 = cpu_seconds(gw.proc.pid)
            patch = {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "app", "image": "sensor-agent:1.5"}]}
                    }
                }
            }
            await trio.to_thread.run_sync(
                request, gw, "PATCH", f"{NS}/sensor-agent", patch,
                "application/strategic-merge-patch+json",
            )  # fmt: skip
            took = await until(
                "v2 on every online board",
                lambda: all(b.images() == {"sensor-agent:1.5"} for b in online),
                600,
            )
            cpu = cpu_seconds(gw.proc.pid) - cpu0
            sent = sorted(b.bytes - before[b.name] for b in online)
            pod = next(iter(p for k, p in online[0].view.items() if k.startswith("pods/")))
            one_pod = len(edgeproto.encode_object(pod))

            def settled() -> dict[str, Any] | None:
                ds = request(gw, "GET", f"{NS}/sensor-agent")
                st = ds.get("status") or {}
                done = st.get("updatedNumberScheduled") == st.get("numberAvailable") == len(online)
                return ds if done else None

            t0 = trio.current_time()
            while (ds := await trio.to_thread.run_sync(settled)) is None:
                await trio.sleep(0.2)
            print(
                f"DaemonSet status done (kubectl rollout status finishes) {trio.current_time() - t0:.1f} s later"
            )
            pending = (ds.get("status") or {}).get("pendingOffline") or []
            print(
                f"v2 (set image) reached all {len(online)} online boards in {took:.1f} s; "
                f"gateway CPU {cpu:.1f} s; bytes per board for the update: median "
                f"{sent[len(sent) // 2]}, max {sent[-1]} (one pod object encoded: {one_pod} B); "
                f"offline boards pending: {len(pending)}/{len(offline)}; "
                f"status: {json.dumps({k: v for k, v in (ds.get('status') or {}).items() if 'umber' in k})}"
            )
            nursery.cancel_scope.cancel()
    finally:
        gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boards", type=int, default=1000)
    ap.add_argument("--offline", type=float, default=0.1)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, args, Path(tmp))


if __name__ == "__main__":
    main()
