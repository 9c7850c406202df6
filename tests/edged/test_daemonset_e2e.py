"""A DaemonSet on a real board: joined with a label, its pod created by the
gateway's own controller runs on the board's containerd through edged; a
template change replaces it; the board's label removed, the pod goes; the
DaemonSet deleted, nothing is left on the board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from cloudgateway._join import create_join_token
from edgeagent._join import join
from tests.conftest import Gateway, start_agent, start_gateway, wait_for

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

DS = "/apis/apps/v1/namespaces/default/daemonsets"
PODS = "/api/v1/namespaces/default/pods"


def daemonset(image: str, greeting: str) -> dict[str, Any]:
    labels = {"app": "sensor-agent"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "sensor-agent", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"site": "a"},
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "while true; do sleep 0.5; done"],
                            "env": [{"name": "GREETING", "value": greeting}],
                        }
                    ],
                },
            },
        },
    }


async def test_a_daemonset_runs_on_a_real_labelled_board(
    nursery: trio.Nursery, tmp_path: Path, containerd: Containerd
) -> None:
    cg_existed = default_cgroup_exists()
    gw = await start_gateway(nursery, tmp_path / "gw", grace=5.0)
    token = await create_join_token(gw.data_dir, "pi-ds", 600.0)
    board = tmp_path / "board"
    await trio.to_thread.run_sync(lambda: join(gw.join_url, token, board, labels={"site": "a"}))
    agent = await start_agent(nursery, board, cri=containerd.address)
    try:
        assert (await gw.api("POST", DS, daemonset(containerd.image, "one")))[0] == 201

        async def running_pod(greeting: str) -> dict[str, Any] | None:
            code, listed = await gw.api("GET", f"{PODS}?labelSelector=app%3Dsensor-agent")
            for p in listed["items"] if code == 200 else []:
                env = p["spec"]["containers"][0].get("env") or []
                if (p.get("status") or {}).get("phase") == "Running" and env[0][
                    "value"
                ] == greeting:
                    return dict(p)
            return None

        first = await wait_for(lambda: running_pod("one"), timeout=60, interval=0.2)
        assert first["spec"]["nodeName"] == "pi-ds"
        assert first["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        assert first["metadata"]["name"].startswith("sensor-agent-")

        # a template change replaces the pod on the board
        code, _ = await gw.api("PUT", f"{DS}/sensor-agent", await _with_greeting(gw, "two"))
        assert code == 200
        second = await wait_for(lambda: running_pod("two"), timeout=60, interval=0.2)
        assert second["metadata"]["uid"] != first["metadata"]["uid"]

        # the board stops matching: its pod is removed
        patch = {"metadata": {"labels": {"site": None}}}
        code, _ = await merge_patch(gw, "/api/v1/nodes/pi-ds", patch)
        assert code == 200

        async def no_pods() -> bool:
            code, listed = await gw.api("GET", f"{PODS}?labelSelector=app%3Dsensor-agent")
            return code == 200 and not listed["items"]

        await wait_for(no_pods, timeout=60, interval=0.2)
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )

        # matching again, then the DaemonSet deleted: nothing left on the board
        relabel = {"metadata": {"labels": {"site": "a"}}}
        code, _ = await merge_patch(gw, "/api/v1/nodes/pi-ds", relabel)
        assert code == 200
        await wait_for(lambda: running_pod("two"), timeout=60, interval=0.2)
        assert (await gw.api("DELETE", f"{DS}/sensor-agent"))[0] == 200
        await wait_for(no_pods, timeout=60, interval=0.2)
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
    finally:
        await agent.stop()
        gw.scope.cancel()
        if not cg_existed:
            remove_empty_default_cgroup()


async def merge_patch(gw: Gateway, path: str, body: Any) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(
        lambda: gw.request("PATCH", path, body, "application/merge-patch+json")
    )


async def _with_greeting(gw: Gateway, greeting: str) -> dict[str, Any]:
    code, ds = await gw.api("GET", f"{DS}/sensor-agent")
    assert code == 200
    ds["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = greeting
    return dict(ds)
