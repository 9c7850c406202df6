"""Logs and exec from the cloud through the node's hub connection: routing,
errors, flow control and cancellation, with edgectl as the client.

The pod-side backend here reads a real file and runs real processes on this
host: it stands in for edged so the tunnel is tested on its own; the same path
against real containers is tested in tests/edged.
"""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from tests.conftest import Agent, Gateway, join_node, start_agent, wait_for

NS = "/api/v1/namespaces/default"


class HostStreams:
    """Logs from files under ``root/<pod>/<container>.log``; exec as host processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open_readers = 0

    async def read_logs(
        self, namespace: str, pod: str, container: str | None, tail: int | None, follow: bool
    ) -> AsyncIterator[bytes]:
        path = self.root / pod / f"{container}.log"
        if not path.exists():
            raise LookupError(f'container "{container}" in pod "{pod}" has not started')
        self.open_readers += 1
        try:
            data = path.read_bytes()
            if tail is not None:
                data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
            pos = path.stat().st_size
            yield data
            while follow:
                # A follower polls the file for growth, as edged's does for a
                # container's log: the behaviour this fake stands in for.
                await trio.sleep(0.02)
                size = path.stat().st_size
                if size > pos:
                    with path.open("rb") as f:
                        f.seek(pos)
                        yield f.read(size - pos)
                    pos = size
        finally:
            self.open_readers -= 1

    async def exec_sync(
        self, namespace: str, pod: str, container: str | None, cmd: list[str], timeout: float
    ) -> tuple[int, bytes, bytes]:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                cmd, capture_stdout=True, capture_stderr=True, check=False
            )
        return proc.returncode, proc.stdout, proc.stderr


def pod(name: str, node: str, containers: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
    }


async def board(
    nursery: trio.Nursery, gw: Gateway, tmp_path: Path, node: str, streams: Any
) -> Agent:
    await join_node(gw, node, tmp_path / node)
    agent = await start_agent(nursery, tmp_path / node, pod_streams=streams)
    await wait_for(lambda: agent.status()["connected"], timeout=10)
    return agent


async def test_logs_and_exec_travel_through_the_hub(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    host = HostStreams(tmp_path / "logs")
    (tmp_path / "logs" / "web").mkdir(parents=True)
    log_file = tmp_path / "logs" / "web" / "app.log"
    log_file.write_bytes(b"".join(b"line %d\n" % i for i in range(5)))
    agent = await board(nursery, gateway, tmp_path, "pi-01", host)
    assert (await gateway.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201
    assert (await gateway.api("POST", f"{NS}/pods", pod("two", "pi-01", ("a", "b"))))[0] == 201
    await wait_for(lambda: agent.status()["objects"].get("Pod") == 2, timeout=15)

    rc, out, err = await gateway.edgectl("logs", "web", "--tail", "2")
    assert (rc, out, err) == (0, "line 3\nline 4\n", "")

    rc, out, err = await gateway.edgectl(
        "exec", "web", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"
    )
    assert (rc, out, err) == (3, "hi\n", "oops\n")

    # Clear errors, with Kubernetes' codes.
    rc, _, err = await gateway.edgectl("logs", "nope")
    assert rc == 1 and "NotFound" in err and '"nope" not found' in err
    rc, _, err = await gateway.edgectl("logs", "two")
    assert rc == 1 and "a container name must be specified for pod two" in err
    rc, _, err = await gateway.edgectl("logs", "web", "-c", "sidecar")
    assert rc == 1 and "container sidecar is not valid for pod web" in err
    rc, _, err = await gateway.edgectl("logs", "two", "-c", "a")
    assert rc == 1 and "(NotFound)" in err and "has not started" in err
    rc, _, err = await gateway.edgectl("exec", "web")
    assert rc == 2 and "needs a command" in err


async def test_big_logs_are_flow_controlled_and_follow_ends_with_the_client(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    host = HostStreams(tmp_path / "logs")
    (tmp_path / "logs" / "web").mkdir(parents=True)
    log_file = tmp_path / "logs" / "web" / "app.log"
    big = b"".join(b"%08d %s\n" % (i, b"x" * 90) for i in range(20_000))  # ~2 MB
    log_file.write_bytes(big)
    await board(nursery, gateway, tmp_path, "pi-01", host)
    assert (await gateway.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201
    await wait_for(lambda: host.root.exists(), timeout=1)

    async def fetched() -> bool:
        code, _ = await gateway.api("GET", f"{NS}/pods/web")
        return code == 200

    await wait_for(fetched)
    rc, out, _ = await gateway.edgectl("logs", "web")
    assert rc == 0 and out.encode() == big

    # Follow: new lines arrive; closing the client ends the node's reader.
    def follow_some() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.ports["api"], timeout=10)
        conn.request(
            "GET",
            f"{NS}/pods/web/log?follow=true&tailLines=1",
            headers={"Authorization": f"Bearer {gateway.token}"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        got = b""
        while b"appended" not in got:
            with log_file.open("ab") as f:
                f.write(b"appended\n")
            got += resp.read1(65536)
        conn.close()
        return got

    got = await trio.to_thread.run_sync(follow_some)
    assert got.startswith(b"00019999 ") and b"appended\n" in got
    await wait_for(lambda: host.open_readers == 0, timeout=5)
    stats = gateway.running.hub.statistics()
    assert stats["streams_opened"] >= 2 and stats.get("stream_frames_bad", 0) == 0


async def test_stream_errors_node_side(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    # A node that runs no pods says so; a node that is offline is reported so.
    agent = await board(nursery, gateway, tmp_path, "pi-01", None)
    assert (await gateway.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201
    assert (await gateway.api("POST", f"{NS}/pods", pod("far", "pi-02")))[0] == 201
    await wait_for(lambda: agent.status()["objects"].get("Pod") == 1, timeout=15)
    rc, _, err = await gateway.edgectl("logs", "web")
    assert rc == 1 and "NotImplemented" in err and "--cri" in err
    rc, _, err = await gateway.edgectl("exec", "far", "--", "true")
    assert rc == 1 and "ServiceUnavailable" in err and "pi-02 is not connected" in err
    code, body = await gateway.api("POST", f"{NS}/pods/web/log")
    assert code == 405, body
    code, body = await gateway.api("POST", f"{NS}/pods/web/exec", {"command": "ls"})
    assert code == 400 and "non-empty list" in body["message"]
    code, body = await gateway.api("GET", "/api/v1/namespaces/default/configmaps/x/log")
    assert code == 404


async def kubectl_exec(
    gateway: Gateway, pod_name: str, command: list[str], **extra: str
) -> tuple[dict[int, bytes], dict[str, Any]]:
    """What kubectl 1.30+ does for ``kubectl exec POD -- CMD``: a WebSocket
    upgrade on GET .../exec, channel-tagged messages back, a Status on channel 3."""
    import json
    import urllib.parse

    import trio_websocket as tws

    query = urllib.parse.urlencode(
        [("command", c) for c in command]
        + [("stdout", "true"), ("stderr", "true")]
        + list(extra.items())
    )
    got: dict[int, bytes] = {1: b"", 2: b""}
    status: dict[str, Any] = {}
    # Our own TCP stream, closed here: trio-websocket's open_websocket leaves its
    # socket open when the server closes first (see docs/ARCHITECTURE.md).
    tcp = await trio.open_tcp_stream("127.0.0.1", gateway.ports["api"])
    async with tcp, trio.open_nursery() as nursery:
        ws = await tws.wrap_client_stream(
            nursery,
            tcp,
            "127.0.0.1",
            f"{NS}/pods/{pod_name}/exec?{query}",
            subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"],
            extra_headers=[(b"authorization", f"Bearer {gateway.token}".encode())],
        )
        assert ws.subprotocol == "v5.channel.k8s.io"
        with trio.fail_after(10):
            while True:
                try:
                    msg = await ws.get_message()
                except tws.ConnectionClosed as exc:
                    assert exc.reason is not None and exc.reason.code == 1000
                    break
                assert isinstance(msg, bytes)
                if msg[0] == 3:
                    status = json.loads(msg[1:])
                else:
                    got[msg[0]] += msg[1:]
        nursery.cancel_scope.cancel()
    return got, status


async def test_kubectl_exec_over_websocket(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    import trio_websocket as tws

    agent = await board(nursery, gateway, tmp_path, "pi-01", HostStreams(tmp_path / "logs"))
    assert (await gateway.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201
    await wait_for(lambda: agent.status()["objects"].get("Pod") == 1, timeout=15)

    got, status = await kubectl_exec(gateway, "web", ["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    assert got == {1: b"hi\n", 2: b"oops\n"}
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    got, status = await kubectl_exec(gateway, "web", ["true"])
    assert got == {1: b"", 2: b""} and status == {"metadata": {}, "status": "Success"}

    # -i/-t: refused before anything runs, with a message kubectl prints
    rejected: list[tws.ConnectionRejected] = []
    try:
        await kubectl_exec(gateway, "web", ["sh"], stdin="true")
    except* tws.ConnectionRejected as group:
        rejected.extend(e for e in group.exceptions if isinstance(e, tws.ConnectionRejected))
    assert [r.status_code for r in rejected] == [400]
    assert b"drop -i/-t" in (rejected[0].body or b"")

    # kubectl's SPDY fallback must not run the command blind
    marker = tmp_path / "ran"
    conn = http.client.HTTPConnection("127.0.0.1", gateway.ports["api"], timeout=10)
    query = f"command=touch&command={marker}&stdout=true"
    conn.request(
        "POST",
        f"{NS}/pods/web/exec?{query}",
        headers={
            "Authorization": f"Bearer {gateway.token}",
            "Connection": "Upgrade",
            "Upgrade": "SPDY/3.1",
        },
    )
    resp = await trio.to_thread.run_sync(conn.getresponse)
    assert resp.status == 400 and b"SPDY/3.1 is not offered" in resp.read()
    conn.close()
    assert not marker.exists()
