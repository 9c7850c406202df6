"""Replicas on etcd under faults, black-box (real processes, real etcd): the
etcd leader killed during a stream of API writes loses no acknowledged write;
etcd gone entirely makes the API answer 503 with a Status and comes back; a join
token raced on two replicas is used exactly once."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from cloudgateway._backends import etcd_store_url
from edgeagent._join import JoinFailed, join
from tests.conftest import EtcdCluster, wait_for_sync
from tests.replica_fixtures import Replica, leader_of

NS = "/api/v1/namespaces/default"


def cm(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}


def test_etcd_leader_killed_during_api_writes_loses_no_acknowledged_write(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    a = Replica(tmp_path / "gw-a", etcd3.url)
    a.start()
    try:
        acked: list[str] = []
        refused: dict[int, int] = {}
        for i in range(120):
            name = f"w-{i:03d}"
            if i == 40:
                etcd3.kill(etcd3.leader())
            deadline = time.monotonic() + 30
            while True:
                code, body = a.api("POST", f"{NS}/configmaps", cm(name), timeout=20)
                if code == 201:
                    acked.append(name)
                    break
                # a write whose fate was unknown may have landed: 409 on the retry
                if code == 409:
                    break
                assert code in (503, 504, 429), (code, body)
                assert isinstance(body, dict) and body.get("kind") == "Status", body
                refused[code] = refused.get(code, 0) + 1
                assert time.monotonic() < deadline, f"{name} refused for 30 s: {body}"
        code, listed = a.api("GET", f"{NS}/configmaps?limit=1000")
        assert code == 200
        names = {o["metadata"]["name"] for o in listed["items"]}
        assert set(acked) <= names, sorted(set(acked) - names)
        assert len(acked) >= 100
    finally:
        a.stop()


def agent_status(data_dir: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "edgeagent._cli", "status", "--data-dir", str(data_dir), "-o", "json"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(json.loads(out))


def test_all_of_etcd_gone_for_30_s(tmp_path: Path, etcd: EtcdCluster) -> None:
    a = Replica(tmp_path / "gw-a", etcd.url)
    a.start()
    board = tmp_path / "board"
    agent: subprocess.Popen[bytes] | None = None
    try:
        token = a.cli(
            "token", "create", "--store", etcd.url, "--data-dir", str(a.data_dir),
            "--node", "pi-etcd-down",
        ).strip()  # fmt: skip
        join(a.join_url, token, board)
        with open(board / "agent.log", "ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(board)],
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_for_sync(lambda: agent_status(board).get("connected"), timeout=30, interval=0.2)
        assert a.api("POST", f"{NS}/configmaps", cm("before"))[0] == 201
        etcd.kill(0)
        down = time.monotonic()
        outage = 0
        while time.monotonic() - down < 30:  # the outage's length is what is tested
            code, body = a.api("POST", f"{NS}/configmaps", cm(f"during-{outage}"), timeout=20)
            assert code == 503, (code, body)
            assert isinstance(body, dict) and body.get("kind") == "Status"
            assert a.proc is not None and a.proc.poll() is None  # the replica stays up
            assert agent_status(board).get("connected") is True  # the board keeps its session
            outage += 1
        assert outage >= 2
        etcd.restart(0)
        wait_for_sync(
            lambda: a.api("POST", f"{NS}/configmaps", cm("after"))[0] == 201,
            timeout=60,
            interval=0.2,
        )
        code, listed = a.api("GET", f"{NS}/configmaps")
        names = {o["metadata"]["name"] for o in listed["items"]}
        assert {"before", "after"} <= names
        assert not any(n.startswith("during-") for n in names)  # none was acknowledged
        assert agent_status(board).get("connected") is True
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        a.stop()


def test_join_token_raced_on_two_replicas_is_used_once(tmp_path: Path, etcd: EtcdCluster) -> None:
    a = Replica(tmp_path / "gw-a", etcd.url)
    b = Replica(tmp_path / "gw-b", etcd.url)
    a.start()
    b.start()
    try:
        token = a.cli(
            "token", "create", "--store", etcd.url, "--data-dir", str(a.data_dir),
            "--node", "pi-race",
        ).strip()  # fmt: skip
        results: dict[str, object] = {}

        def go(r: Replica) -> None:
            try:
                join(r.join_url, token, tmp_path / f"agent-{r.data_dir.name}")
                results[r.data_dir.name] = "joined"
            except JoinFailed as exc:
                results[r.data_dir.name] = str(exc)

        threads = [threading.Thread(target=go, args=(r,)) for r in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(v == "joined" for v in results.values()) == [False, True], results
    finally:
        a.stop()
        b.stop()


def test_controllers_run_on_the_leader_and_move_with_it(tmp_path: Path, etcd: EtcdCluster) -> None:
    """The fleet controllers run on one replica, the leader, on a fenced store;
    when it is killed the next leader's controllers carry on from the store."""
    a = Replica(tmp_path / "gw-a", etcd.url)
    a.start()  # first: the leader
    b = Replica(tmp_path / "gw-b", etcd.url)
    b.start()
    apps = "/apis/apps/v1/namespaces/default/replicasets"
    try:
        wait_for_sync(lambda: leader_of([a, b]) is a, timeout=30, interval=0.2)
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]},
                },
            },
        }
        assert b.api("POST", apps, rs)[0] == 201

        def pods(r: Replica) -> list[str]:
            code, listed = r.api("GET", f"{NS}/pods?labelSelector=app%3Dweb")
            return sorted(p["metadata"]["name"] for p in listed["items"]) if code == 200 else []

        first = wait_for_sync(lambda: len(pods(b)) == 2 and pods(b), timeout=30, interval=0.2)
        a.kill()
        wait_for_sync(lambda: leader_of([b]) is b, timeout=30, interval=0.2)
        scale = {"spec": {"replicas": 3}}
        code, _ = b.api("PATCH", f"{apps}/web", scale, ctype="application/merge-patch+json")
        assert code == 200
        now = wait_for_sync(lambda: len(pods(b)) == 3 and pods(b), timeout=30, interval=0.2)
        assert set(first) <= set(now)  # the first two kept: the new leader went on from the store
    finally:
        a.stop()
        b.stop()


def test_a_replica_killed_mid_apply_loses_no_acknowledged_write(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """kill -9 of the replica a writer is applying through: every write it
    acknowledged is in the fleet's store, read through the other replica."""
    a = Replica(tmp_path / "gw-a", etcd.url)
    b = Replica(tmp_path / "gw-b", etcd.url)
    a.start()
    b.start()
    try:
        acked: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    code, _ = a.api("POST", f"{NS}/configmaps", cm(f"m-{i:04d}"), timeout=5)
                except (OSError, http.client.HTTPException):
                    return  # the replica is gone (before the answer, or in its middle)
                if code == 201:
                    acked.append(f"m-{i:04d}")
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        wait_for_sync(lambda: len(acked) >= 50, timeout=30, interval=0.05)
        a.kill()  # mid-stream: some write is in flight
        t.join(30)
        stop.set()
        code, listed = b.api("GET", f"{NS}/configmaps?limit=5000")
        assert code == 200
        names = {o["metadata"]["name"] for o in listed["items"]}
        assert set(acked) <= names, sorted(set(acked) - names)
    finally:
        a.stop()
        b.stop()


def test_a_replica_on_an_etcd_that_requires_client_certificates(
    tmp_path: Path, etcd_tls: EtcdCluster
) -> None:
    """--etcd-ca/--etcd-cert/--etcd-key: the replica and the CLI reach an etcd
    that takes only TLS clients with a certificate; without them, one clear error."""
    tls = etcd_tls.dir / "tls"
    flags = ["--etcd-ca", str(tls / "ca.crt"), "--etcd-cert", str(tls / "client.crt")]
    flags += ["--etcd-key", str(tls / "client.key")]
    store = etcd_store_url(
        etcd_tls.url,
        ca=str(tls / "ca.crt"),
        cert=str(tls / "client.crt"),
        key=str(tls / "client.key"),
    )
    a = Replica(tmp_path / "gw-a", store)
    a.start()
    try:
        assert a.api("POST", f"{NS}/configmaps", cm("over-tls"))[0] == 201
        token = a.cli(
            "token", "create", "--store", etcd_tls.url, *flags, "--data-dir", str(a.data_dir),
            "--node", "pi-tls",
        ).strip()  # fmt: skip
        join(a.join_url, token, tmp_path / "board")  # the token is in the fleet's store
        bare = subprocess.run(
            [sys.executable, "-m", "cloudgateway._cli", "token", "create", "--store",
             etcd_tls.url, "--data-dir", str(tmp_path / "cli"), "--node", "pi-x"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bare.returncode == 1
        assert bare.stderr.strip().splitlines()[-1].startswith("error: etcd unavailable: ")
    finally:
        a.stop()
