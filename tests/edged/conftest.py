"""A real containerd for edged's tests: started once per session by
scripts/containerd in a temp dir, stopped at the end; each test gets its own agent
data dir, node name (the owner label) and metadata store."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from edgeagent._config import AgentConfig
from edgeagent._meta import Meta
from edgeagent.edged import Edged, EdgedOptions
from edgeproto import Apply, Entry, encode_object
from tests.conftest import wait_for, wait_for_sync

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "containerd"
CGROUP_ROOT = f"/edgeflock-test-{os.getpid()}"


@dataclass(frozen=True)
class Containerd:
    dir: Path
    address: str
    image: str

    def start(self) -> None:
        subprocess.run(
            [str(SCRIPT), "start", "--dir", str(self.dir)], check=True, capture_output=True
        )

    def kill(self) -> None:
        """SIGKILL containerd alone (its shims and containers keep running), like a crash."""
        pid = int((self.dir / "containerd.pid").read_text())
        os.kill(pid, 9)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for_sync(gone, timeout=5, what=f"containerd (pid {pid}) gone after SIGKILL")
        # reap it if it was our child (it is not: setsid in the script)
        (self.dir / "containerd.pid").unlink()

    def ctr(self, *args: str) -> str:
        return subprocess.run(
            ["ctr", "--address", f"{self.dir}/containerd.sock", "-n", "k8s.io", *args],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    d = tmp_path_factory.mktemp("containerd")
    image = subprocess.run(
        [str(SCRIPT), "image-name"], check=True, capture_output=True, text=True
    ).stdout.strip()
    c = Containerd(d, f"unix://{d}/containerd.sock", image)
    c.start()
    try:
        yield c
    finally:
        subprocess.run([str(SCRIPT), "stop", "--dir", str(d)], check=False, capture_output=True)
        for ctl in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:
            base = ctl / CGROUP_ROOT.strip("/")
            if base.is_dir():
                for p in sorted(base.rglob("*"), reverse=True):
                    if p.is_dir():
                        p.rmdir()
                base.rmdir()


def test_options(**kw: Any) -> EdgedOptions:
    kw.setdefault("relist_interval", 0.5)
    kw.setdefault("backoff_base", 0.5)
    kw.setdefault("backoff_cap", 4.0)
    kw.setdefault("retry", 0.5)
    kw.setdefault("cgroup_root", CGROUP_ROOT)
    return EdgedOptions(**kw)


def pod_cgroup_dirs(uid: str) -> list[Path]:
    rel = f"{CGROUP_ROOT.strip('/')}/pod{uid}"
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{rel}") if p.exists()]


@dataclass
class Node:
    """One agent's edged over a real containerd, with its metadata store."""

    containerd: Containerd
    data_dir: Path
    name: str
    meta: Meta
    options: EdgedOptions
    edged: Edged | None = None
    scope: trio.CancelScope | None = None
    rev: int = 0
    stopped: trio.Event = field(default_factory=trio.Event)
    transport: str = "h2"  # edged's CRI client (the agent's default)

    @property
    def config(self) -> AgentConfig:
        return AgentConfig(
            data_dir=self.data_dir, node=self.name, hub_url="wss://127.0.0.1:9/unused",
            cri=self.containerd.address, cri_transport=self.transport,
        )  # fmt: skip

    async def start(self, nursery: trio.Nursery) -> Edged:
        self.edged = Edged(self.config, self.meta, self.options)
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        edged = self.edged

        async def runner(task_status: trio.TaskStatus[None]) -> None:
            try:
                assert self.scope is not None
                with self.scope:
                    await edged.run(task_status=task_status)
            finally:
                self.stopped.set()

        await nursery.start(runner)
        return edged

    async def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
            await self.stopped.wait()

    def pod(self, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        spec.setdefault("terminationGracePeriodSeconds", 1)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4())},
            "spec": {"nodeName": self.name, "containers": containers, **spec},
        }

    def container(
        self, name: str = "main", script: str = "sleep 3600", **kw: Any
    ) -> dict[str, Any]:
        return {"name": name, "image": self.containerd.image, "command": ["sh", "-c", script], **kw}

    async def put(self, *objs: dict[str, Any]) -> None:
        entries = []
        for obj in objs:
            self.rev += 1
            kind = obj["kind"]
            res = {"Pod": "pods", "ConfigMap": "configmaps", "Secret": "secrets"}[kind]
            key = f"{res}/{obj['metadata'].get('namespace', 'default')}/{obj['metadata']['name']}"
            entries.append(Entry(key, self.rev, encode_object(obj)))
        await self.meta.apply(Apply(entries, [], self.rev))

    async def delete(self, *keys: str) -> None:
        self.rev += 1
        await self.meta.apply(Apply([], list(keys), self.rev))

    async def status(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        key = f"pods/{namespace}/{name}"
        items = await self.meta.outbox_after(0, 100_000)
        for item in reversed(items):
            if item.key == key:
                return dict(cbor2.loads(item.body)["status"])
        return None

    async def wait_status(
        self, name: str, pred: Any, timeout: float = 20.0, namespace: str = "default"
    ) -> dict[str, Any]:
        last: list[dict[str, Any] | None] = [None]

        async def met() -> dict[str, Any] | None:
            last[0] = st = await self.status(name, namespace)
            return st if st is not None and pred(st) else None

        def what() -> str:
            return f"pod {name}: status {pred!r}; last status {last[0]!r}"

        return dict(await wait_for(met, timeout, interval=0.05, what=what))

    def leftovers(self) -> list[str]:
        """containerd containers (sandboxes included) labelled with this node, pod
        cgroups, pod directories."""
        out = self.containerd.ctr(
            "containers", "ls", "-q", f'labels."io.edgeflock.node"=={self.name}'
        ).split()
        pods = self.data_dir / "pods"
        out += [str(p) for p in pods.iterdir()] if pods.is_dir() else []
        base = Path("/sys/fs/cgroup/memory") / CGROUP_ROOT.strip("/")
        out += [str(p) for p in base.glob("pod*")] if base.is_dir() else []
        return out


def running(st: dict[str, Any]) -> bool:
    return st.get("phase") == "Running" and all(
        "running" in c["state"] for c in st.get("containerStatuses", [])
    )


def waiting_reason(st: dict[str, Any], container: str = "main") -> str | None:
    for c in st.get("containerStatuses", []):
        if c["name"] == container:
            return c["state"].get("waiting", {}).get("reason")
    return None


@pytest.fixture
async def node(containerd: Containerd, tmp_path: Path) -> AsyncIterator[Node]:
    data = tmp_path / "agent"
    data.mkdir()
    meta = Meta(data / "meta.db")
    n = Node(containerd, data, f"node-{uuid.uuid4().hex[:8]}", meta, test_options())
    try:
        yield n
        await n.stop()
        # The pods vanish from the store while no edged runs; a fresh edged finds their
        # sandboxes and containers orphaned (by label) and removes them with their cgroups.
        n.rev += 1
        await meta.apply(Apply([], [], n.rev, replace=True))
        async with trio.open_nursery() as nursery:
            await n.start(nursery)

            async def clean() -> bool:
                return not await trio.to_thread.run_sync(n.leftovers)

            await wait_for(clean, timeout=30, interval=0.1)
            await n.stop()
    finally:
        await n.stop()
        meta.close()
