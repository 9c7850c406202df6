"""Quiet watches with edged: labelling a running pod on a board with a real
containerd gives a watch exactly one MODIFIED event (edged does not rewrite the
pod's status for a metadata-only change). See tests/test_quiet_watch.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.conftest import join_node, start_agent, start_gateway, wait_for
from tests.test_quiet_watch import NS, label_and_count, pod

from .conftest import Containerd
from .test_reboot import default_cgroup_exists, remove_empty_default_cgroup

NODE = "pi-quiet"


def ready(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions", [])
    )


async def test_labelling_a_running_pod_gives_one_modified_event(
    nursery: trio.Nursery, tmp_path: Path, containerd: Containerd
) -> None:
    cg_existed = default_cgroup_exists()
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, NODE, tmp_path / "agent")
    agent = await start_agent(nursery, tmp_path / "agent", cri=containerd.address)
    try:
        assert (await gw.api("POST", f"{NS}/pods", pod("web", NODE, containerd.image)))[0] == 201

        async def web_ready() -> bool:
            code, obj = await gw.api("GET", f"{NS}/pods/web")
            return code == 200 and ready(obj)

        await wait_for(web_ready, timeout=30, interval=0.1)
        events = await label_and_count(gw, NODE, containerd.image, ready, ready)
        assert [e["type"] for e in events] == ["MODIFIED"], events
        assert events[0]["object"]["metadata"]["labels"] == {"a": "b"}

        for name in ("web", "marker"):
            assert (await gw.api("DELETE", f"{NS}/pods/{name}"))[0] == 200
        await wait_for(
            lambda: not containerd.ctr("containers", "ls", "-q").split(), timeout=30, interval=0.2
        )
    finally:
        await agent.stop()
        await gw.stop()
        if not cg_existed:
            remove_empty_default_cgroup()
