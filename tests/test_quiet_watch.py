"""Quiet watches: a metadata-only change of a pod bound to a board gives a watch
exactly one MODIFIED event; the board does not write the pod's status again.

Here the board runs no container runtime (its pods are reported Pending with
ContainerRuntimeNotEnabled); tests/edged/test_quiet_watch.py runs the same check
with edged over a real containerd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from tests.cloudgateway.test_api import Watch
from tests.cloudgateway.test_http import Client
from tests.conftest import Gateway, join_node, start_agent, wait_for

NS = "/api/v1/namespaces/default"


def pod(name: str, node: str, image: str = "busybox:1.36") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "exec sleep 3600"],
                }
            ],
        },
    }


async def watch(gw: Gateway, path: str) -> Watch:
    client = await Client.connect(gw.ports["api"])
    await client.send_request("GET", path, headers=[("authorization", f"Bearer {gw.token}")])
    head = await client.read_head()
    assert head.status_code == 200
    return Watch(client)


async def patch(gw: Gateway, path: str, body: dict[str, Any]) -> int:
    """A JSON merge patch, as ``kubectl label`` sends it."""
    client = await Client.connect(gw.ports["api"])
    try:
        headers = [
            ("authorization", f"Bearer {gw.token}"),
            ("content-type", "application/merge-patch+json"),
        ]
        await client.send_request("PATCH", path, json.dumps(body).encode(), headers)
        head = await client.read_head()
        while await client.read_chunk() is not None:
            pass
        return int(head.status_code)
    finally:
        await client.aclose()


async def label_and_count(
    gw: Gateway, node: str, image: str, reported: Any, status_of_marker: Any
) -> list[dict[str, Any]]:
    """Label pod ``web`` (already reported), then create pod ``marker`` on the
    same board and read the watch until the marker's status has come back. The
    board's reports reach the gateway in the order it made them, and whatever it
    writes about web for the label it writes when the label arrives, before the
    marker's first status: so every event about web caused by the label is in
    what this returns."""
    _, obj = await gw.api("GET", f"{NS}/pods/web")
    assert reported(obj), obj
    rv = obj["metadata"]["resourceVersion"]
    w = await watch(gw, f"{NS}/pods?watch=1&resourceVersion={rv}")
    try:
        assert await patch(gw, f"{NS}/pods/web", {"metadata": {"labels": {"a": "b"}}}) == 200
        assert (await gw.api("POST", f"{NS}/pods", pod("marker", node, image)))[0] == 201
        web_events: list[dict[str, Any]] = []
        while True:
            ev = await w.next()
            assert ev is not None, "the watch ended"
            obj = ev["object"]
            if obj["metadata"]["name"] == "web":
                web_events.append(ev)
            elif status_of_marker(obj):
                return web_events
    finally:
        await w.aclose()


def pending(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("reason") == "ContainerRuntimeNotEnabled"


async def test_labelling_a_pod_on_a_board_without_runtime_gives_one_modified_event(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    await join_node(gateway, "pi-01", tmp_path / "agent")
    agent = await start_agent(nursery, tmp_path / "agent")
    await wait_for(lambda: agent.status()["connected"], timeout=10)
    assert (await gateway.api("POST", f"{NS}/pods", pod("web", "pi-01")))[0] == 201

    async def web_reported() -> bool:
        code, obj = await gateway.api("GET", f"{NS}/pods/web")
        return code == 200 and pending(obj)

    await wait_for(web_reported, timeout=10, interval=0.05)
    events = await label_and_count(gateway, "pi-01", "busybox:1.36", pending, pending)
    assert [e["type"] for e in events] == ["MODIFIED"], events
    assert events[0]["object"]["metadata"]["labels"] == {"a": "b"}

    # A change of what the status is made of is still reported.
    _, obj = await gateway.api("GET", f"{NS}/pods/web")
    obj["spec"]["containers"][0]["image"] = "busybox:1.37"
    assert (await gateway.api("PUT", f"{NS}/pods/web", obj))[0] == 200

    async def new_image_reported() -> bool:
        _, obj = await gateway.api("GET", f"{NS}/pods/web")
        return bool(obj["status"]["containerStatuses"][0]["image"] == "busybox:1.37")

    await wait_for(new_image_reported, timeout=10, interval=0.05)
    await agent.stop()
