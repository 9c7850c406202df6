"""Pushing a release to a real gateway and starting a NodeUpgradeJob, through
the gateway's HTTP API (what ``edgectl upgrade push/start`` do)."""

from __future__ import annotations

import base64
import urllib.request
from typing import Any

import trio

from edgeproto.upgrade import CHUNK_SIZE
from tests.conftest import Gateway
from tests.edgeagent.hub_standin import ServedRelease

RELEASES = "/apis/edgeflock.io/v1alpha1/releases"
JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"


def _put_piece(gw: Gateway, sha: str, index: int, data: bytes) -> int:
    req = urllib.request.Request(
        f"{gw.api_url}{RELEASES}/{sha}/pieces/{index}", data=data, method="PUT"
    )
    req.add_header("Authorization", f"Bearer {gw.token}")
    req.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status)


async def push_release(gw: Gateway, r: ServedRelease) -> None:
    code, body = await gw.api(
        "POST",
        RELEASES,
        {
            "manifest": base64.b64encode(r.manifest_bytes).decode(),
            "signature": base64.b64encode(r.signature).decode(),
        },
    )
    assert code in (200, 201), body
    sha = r.manifest.sha256

    def upload() -> None:
        with open(r.path, "rb") as f:
            for i in range(len(r.manifest.chunks)):
                assert _put_piece(gw, sha, i, f.read(CHUNK_SIZE)) == 200

    await trio.to_thread.run_sync(upload)


async def start_job(gw: Gateway, name: str, version: str, nodes: list[str], **spec: Any) -> None:
    code, body = await gw.api(
        "POST",
        JOBS,
        {
            "apiVersion": "operations.kubeedge.io/v1alpha1",
            "kind": "NodeUpgradeJob",
            "metadata": {"name": name},
            "spec": {"version": version, "nodeNames": nodes, **spec},
        },
    )
    assert code == 201, body


async def node_status_of(gw: Gateway, job: str, node: str) -> dict[str, Any]:
    code, body = await gw.api("GET", f"{JOBS}/{job}")
    assert code == 200, body
    for entry in (body.get("status") or {}).get("nodeStatus") or []:
        if entry.get("nodeName") == node:
            return dict(entry)
    return {}
