"""Gateway replicas on etcd beside the embedded store, on this machine, in one run.

    .venv/bin/python bench/replicas.py [--nodes 6000] [--replicas 3] [--writes 400]

1. API write latency (sequential ConfigMap creates through the API, p50/p99)
   and resync time of simulated nodes (snapshot after join, delta after a
   change), on sqlite and on a three-member etcd.
2. A connect storm of ``--nodes`` simulated nodes spread over ``--replicas``
   replicas on etcd: memory per node per replica.
3. ``kill -9`` of the replica holding a third of them (the leader, started
   first) while a writer keeps creating ConfigMaps through another replica:
   how long until every orphaned node resumed on the survivors, by which mode,
   how many acknowledged writes are missing afterwards, and how long until a
   new leader.

Simulated nodes are the ones of bench/gateway_scale.py (real TLS with a node
certificate signed by the fleet CA, real WebSocket, the real protocol), each
given every replica's hub URL and failing over to a random other one.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio
from _harness import Gateway, free_port, machine, rss_kib
from gateway_scale import Sim as Fleet

ROOT = Path(__file__).resolve().parent.parent


# ---- etcd and replicas --------------------------------------------------------------


def etcd_start(d: Path, members: int) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "etcd"), "start", "--dir", str(d),
         "--members", str(members)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return "etcd://" + out.stdout.strip()


def etcd_stop(d: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "etcd"), "stop", "--dir", str(d)])


def replica(d: Path, store: str) -> Gateway:
    extra = {"store": store}
    if store != "sqlite":
        extra.update({"peer": f"127.0.0.1:{free_port()}", "advertise": "127.0.0.1"})
    return Gateway(d, **extra)


def metrics(gw: Gateway) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.ports['api']}/metrics")
    req.add_header("Authorization", f"Bearer {gw.token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def leads(gw: Gateway) -> bool:
    return "\nedgeflock_coord_leader 1" in "\n" + metrics(gw)


def post(gw: Gateway, path: str, body: Any) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{gw.ports['api']}{path}", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Authorization", f"Bearer {gw.token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def post_rv(gw: Gateway, path: str, body: Any) -> int:
    """POST ``body``; the created object's resourceVersion."""
    return int(gw.api("POST", path, body)["metadata"]["resourceVersion"])


def pod_for(node: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
    }


def cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# ---- simulated nodes ------------------------------------------------------------------


def make_certs(store: str, gw_dir: Path, out: Path, n: int) -> None:
    """Node certificates signed by the fleet CA (from the store when shared)."""
    from gateway_scale import make_certs as sign

    from cloudgateway._backends import open_backend, store_is_shared
    from cloudgateway._fleet import fleet_ca
    from cloudgateway._pki import load_or_create_pki
    from cloudgateway._store import Store

    if not store_is_shared(store):
        sign(gw_dir, out, n)
        return

    async def ca() -> tuple[bytes, bytes]:
        backend = open_backend(gw_dir, store)
        try:
            return await fleet_ca(Store(backend), gw_dir)
        finally:
            backend.close()

    sign(gw_dir, out, n, load_or_create_pki(out / "pki", ca=trio.run(ca)))


# ---- 1: latency and resync, sqlite vs etcd ---------------------------------------------


async def latency(root: Path, store: str, writes: int, nodes: int) -> dict[str, float]:
    gw = replica(root / f"gw-{store.split(':')[0]}", store)
    await trio.to_thread.run_sync(gw.start)
    try:
        lat = []
        for i in range(writes):
            t = time.perf_counter()
            code = await trio.to_thread.run_sync(
                post, gw, "/api/v1/namespaces/default/configmaps", cm(f"l-{i}")
            )
            lat.append(time.perf_counter() - t)
            assert code == 201, code
        certs = root / f"certs-{store.split(':')[0]}"
        certs.mkdir()
        await trio.to_thread.run_sync(make_certs, store, gw.data_dir, certs, nodes)
        fleet = Fleet(nodes, [f"wss://127.0.0.1:{gw.ports['hub']}/"], certs)
        async with trio.open_nursery() as nursery:
            for i in range(nodes):
                nursery.start_soon(fleet.node, i)
            await fleet.wait(set(range(nodes)), 300)
            snap = list(fleet.resync_seconds.values())
            # kill -9 the gateway and bring it back: every node resumes from its revision
            fleet.reset()  # before the kill: nodes resync while the gateway starts
            gw.stop(signal.SIGKILL)
            await trio.to_thread.run_sync(gw.start)
            await fleet.wait(set(range(nodes)), 300)
            delta = list(fleet.resync_seconds.values())
            modes = dict(fleet.resync_modes)
            nursery.cancel_scope.cancel()
        return {
            "p50": statistics.median(lat) * 1000,
            "p99": pct(lat, 99) * 1000,
            "snap": statistics.median(snap) * 1000,
            "delta": statistics.median(delta) * 1000,
            "delta_modes": float(modes.get("delta", 0)),
        }
    finally:
        gw.stop()


# ---- 2 and 3: storm over replicas, kill -9 one ------------------------------------------


async def storm(root: Path, store: str, n: int, k: int) -> None:
    gws = [replica(root / f"r{j}", store) for j in range(k)]
    try:
        await _storm(root, gws, store, n, k)
    finally:
        for g in gws:
            g.stop()


async def _storm(root: Path, gws: list[Gateway], store: str, n: int, k: int) -> None:
    await trio.to_thread.run_sync(gws[0].start)
    while not leads(gws[0]):
        await trio.sleep(0.1)
    for g in gws[1:]:
        await trio.to_thread.run_sync(g.start)
    await trio.sleep(2)
    base = [rss_kib(g.proc.pid) for g in gws if g.proc]
    certs = root / "certs-storm"
    certs.mkdir()
    t = time.monotonic()
    await trio.to_thread.run_sync(make_certs, store, gws[0].data_dir, certs, n)
    print(f"signed {n} node certificates in {time.monotonic() - t:.1f} s")
    urls = [f"wss://127.0.0.1:{g.ports['hub']}/" for g in gws]
    fleet = Fleet(n, urls, certs, backoff_cap=10.0)
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(fleet.node, i)
        took = await fleet.wait(set(range(n)), 900)
        print(
            f"connect storm: {len(fleet.synced_at)}/{n} nodes synced over {k} replicas in {took:.1f} s"
        )
        await trio.sleep(15)
        for j, g in enumerate(gws):
            assert g.proc is not None
            held = sum(1 for u in fleet.at.values() if u == urls[j])
            rss = rss_kib(g.proc.pid)
            print(
                f"replica {j}: RSS {base[j] / 1024:.1f} MiB empty, {rss / 1024:.1f} MiB with {held} nodes "
                f"= {(rss - base[j]) / max(1, held):.1f} KiB per node"
            )
        # a pod applied through one replica, to a node connected to another
        lags = []
        for i in range(20):
            other = (urls.index(fleet.at[i]) + 1) % k
            t = trio.current_time()
            rv = await trio.to_thread.run_sync(
                post_rv,
                gws[other],
                "/api/v1/namespaces/default/pods",
                pod_for(f"sim-{i:05d}", f"p-{i}"),
            )
            while fleet.last_rev.get(i, 0) < rv:
                await trio.sleep(0.005)
            lags.append(trio.current_time() - t)
        print(
            f"pod applied through another replica reaches its node: p50 {statistics.median(lags) * 1000:.0f} ms, "
            f"max {max(lags) * 1000:.0f} ms (20 pods, POST to the node's ack)"
        )
        orphans = {i for i, u in fleet.at.items() if u == urls[0]}
        # a writer on replica 1 throughout the kill
        acked: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                name = f"k-{i}"
                if post(gws[1], "/api/v1/namespaces/default/configmaps", cm(name)) == 201:
                    acked.append(name)
                i += 1

        th = threading.Thread(target=writer)
        th.start()
        await trio.sleep(2)
        fleet.reset()
        t0 = trio.current_time()
        gws[0].stop(signal.SIGKILL)
        leader_at = None
        with trio.move_on_after(120):
            while leader_at is None:
                for g in gws[1:]:
                    if await trio.to_thread.run_sync(leads, g):
                        leader_at = trio.current_time() - t0
                await trio.sleep(0.1)
        await fleet.wait(orphans, 300)
        resumed = len(orphans & fleet.synced_at.keys())
        took = max((fleet.synced_at[i] for i in orphans if i in fleet.synced_at), default=t0) - t0
        await trio.sleep(2)
        stop.set()
        await trio.to_thread.run_sync(th.join)
        listed = await trio.to_thread.run_sync(
            gws[1].api, "GET", "/api/v1/namespaces/default/configmaps?limit=100000"
        )
        names = {o["metadata"]["name"] for o in listed["items"]}
        lost = [a for a in acked if a not in names]
        print(
            f"kill -9 of replica 0 (the leader) holding {len(orphans)} nodes: {resumed}/{len(orphans)} "
            f"resumed on the others within {took:.1f} s of the kill, modes {fleet.resync_modes}; new leader after "
            f"{leader_at if leader_at is None else round(leader_at, 1)} s; "
            f"{len(acked)} writes acknowledged during the kill, {len(lost)} missing afterwards"
        )
        nursery.cancel_scope.cancel()


async def run(args: argparse.Namespace, root: Path) -> None:
    url = await trio.to_thread.run_sync(etcd_start, root / "etcd", 3)
    try:
        rows = {}
        for store in ("sqlite", url):
            rows["sqlite" if store == "sqlite" else "etcd (3 members)"] = await latency(
                root, store, args.writes, args.resync_nodes
            )
        print(
            f"| store | API write p50 | p99 | snapshot resync p50 | delta resync p50 ({args.resync_nodes} nodes) |"
        )
        for name, r in rows.items():
            print(
                f"| {name} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['snap']:.0f} ms | "
                f"{r['delta']:.0f} ms ({int(r['delta_modes'])} by delta) |"
            )
        if args.nodes:
            await storm(root, url, args.nodes, args.replicas)
    finally:
        etcd_stop(root / "etcd")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=6000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--writes", type=int, default=400)
    ap.add_argument("--resync-nodes", type=int, default=200)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, args, Path(tmp))


if __name__ == "__main__":
    main()
