"""edged's two CRI transports on a real containerd: the lean h2 client (the
default) and grpcio (``cri_transport = "grpcio"``) — answers larger than a
flow-control window each way, error mapping, deadlines, concurrency bounds, and
no grpc on the default path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from edgeagent._config import AgentConfig
from edgeagent.edged import CriError
from edgeagent.edged._cri import pb
from edgeagent.edged._edged import open_cri_client
from edgeagent.edged._h2 import CriClient
from tests.conftest import wait_for

from .conftest import CGROUP_ROOT, Containerd, Node, running


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
async def test_a_pod_runs_and_big_messages_cross_both_ways(
    nursery: trio.Nursery, node: Node, transport: str
) -> None:
    node.transport = transport
    edged = await node.start(nursery)
    await node.put(node.pod("big", [node.container()]))
    await node.wait_status("big", running)
    # ~200 KB of arguments: more than the 64 KiB window containerd grants a new stream,
    # so the request goes out as the runtime opens its window.
    args = ["a" * 1000] * 200
    code, out, err = await edged.exec_sync(
        "default", "big", None, ["sh", "-c", 'printf "%s" "$@" | wc -c', "sh", *args], 10
    )
    assert (code, out.strip(), err) == (0, b"200000", b"")
    # 1 MB back: many DATA frames, past any default window.
    code, out, _ = await edged.exec_sync(
        "default", "big", None, ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"], 10
    )
    assert code == 0 and out == b"x" * 1_000_000


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
async def test_errors_map_to_grpc_status_names(containerd: Containerd, transport: str) -> None:
    cri = open_cri_client(containerd.address, transport, concurrency=2, timeout=10)
    try:
        version = await cri.call("Version", pb.VersionRequest())
        assert version.runtime_name == "containerd"
        with pytest.raises(CriError) as info:
            await cri.call("ContainerStatus", pb.ContainerStatusRequest(container_id="no-such"))
        assert info.value.code == "NOT_FOUND" and "no-such" in info.value.details
        with pytest.raises(CriError) as info:
            await cri.call("PullImage", pb.PullImageRequest(image=pb.ImageSpec(image="::bad::")))
        assert info.value.code in ("UNKNOWN", "INVALID_ARGUMENT") and info.value.details
        # 17 MB: over containerd's 16 MiB limit; it answers before the request is all
        # sent (on h2, while the request waits for the runtime to open its window)
        huge = pb.ImageStatusRequest(image=pb.ImageSpec(image="x" * 17_000_000))
        with pytest.raises(CriError) as info:
            await cri.call("ImageStatus", huge)
        assert info.value.code == "RESOURCE_EXHAUSTED" and "larger than max" in info.value.details
        # the client goes on serving calls
        assert (await cri.call("Version", pb.VersionRequest())).runtime_name == "containerd"
    finally:
        cri.close()
    gone = open_cri_client("unix:///nonexistent/cri.sock", transport, concurrency=1, timeout=2)
    try:
        with pytest.raises(CriError) as info:
            await gone.call("Version", pb.VersionRequest())
        assert info.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and info.value.unavailable
    finally:
        gone.close()


@contextmanager
def frozen(containerd: Containerd) -> Iterator[None]:
    """containerd stopped (SIGSTOP): it accepts on its socket's backlog but answers nothing."""
    pid = int((containerd.dir / "containerd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_h2_deadline_and_concurrency_bound_on_a_hung_runtime(containerd: Containerd) -> None:
    cri = CriClient(containerd.address, concurrency=2, timeout=30)
    try:
        await cri.call("Version", pb.VersionRequest())  # one pooled connection
        with frozen(containerd):
            with pytest.raises(CriError) as info:
                await cri.call("Version", pb.VersionRequest(), rpc_timeout=0.3)
            assert info.value.code == "DEADLINE_EXCEEDED" and info.value.unavailable
            answers: list[str] = []

            async def version() -> None:
                answers.append((await cri.call("Version", pb.VersionRequest())).runtime_name)

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(version)

                async def bounded() -> bool:
                    s = cri.statistics()
                    return s.borrowed_tokens == 2 and s.tasks_waiting == 4

                await wait_for(bounded, timeout=5, what="2 calls in flight, 4 waiting")
                os.kill(int((containerd.dir / "containerd.pid").read_text()), signal.SIGCONT)
        assert answers == ["containerd"] * 6
        assert cri.statistics().borrowed_tokens == 0
    finally:
        cri.close()


def test_the_default_agent_runs_edged_without_importing_grpc(
    containerd: Containerd, tmp_path: Path
) -> None:
    # A fresh interpreter runs edged as the agent configures it by default, through its
    # first relist on the real containerd, then lists what it imported.
    assert AgentConfig.__dataclass_fields__["cri_transport"].default == "h2"
    code = f"""
import sys, trio
from pathlib import Path
from edgeagent._config import AgentConfig
from edgeagent._meta import Meta
from edgeagent.edged import Edged, EdgedOptions

async def main() -> None:
    d = Path(sys.argv[1])
    meta = Meta(d / "meta.db")
    cfg = AgentConfig(data_dir=d, node="grpc-free", hub_url="wss://127.0.0.1:9/x", cri={containerd.address!r})
    edged = Edged(cfg, meta, EdgedOptions(relist_interval=0.2, cgroup_root={CGROUP_ROOT!r}))
    async with trio.open_nursery() as nursery:
        await nursery.start(edged.run)
        nursery.cancel_scope.cancel()
    meta.close()
    print(" ".join(sorted(sys.modules)))

trio.run(main)
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert "h2.connection" in out and "google.protobuf" in out
    assert [m for m in out if m == "grpc" or m.startswith("grpc.")] == []


def test_the_transport_is_chosen_on_the_command_line(tmp_path: Path) -> None:
    from edgeagent._config import load_config

    (tmp_path / "enrollment.json").write_text('{"node": "n1", "hub": "wss://127.0.0.1:9/hub"}')
    (tmp_path / "agent.toml").write_text('cri_transport = "grpcio"\n')
    assert load_config(tmp_path).cri_transport == "grpcio"
    assert load_config(tmp_path, cri_transport="h2").cri_transport == "h2"  # the flag wins
    bad = subprocess.run(
        [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(tmp_path),
         "--cri-transport", "http3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'http3'" in bad.stderr
