"""Edged: runs the pods bound to this node on containerd (CRI), from the agent's
metadata store, so pods come back after a reboot with the gateway unreachable.

containerd is the source of truth for what runs: sandboxes and containers carry
labels (node, pod uid, container name, spec hash), and after a restart of the
agent or containerd the running ones are adopted, not recreated. Only back-off
timers live in memory."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from edgeio import SECONDS_BUCKETS, Histogram

from .._config import AgentConfig
from ._errors import ContainerNotRunning, CriError, EdgedError, PodNotFound
from ._logs import LogDecoder

if TYPE_CHECKING:
    from .._meta import Meta
    from ._model import ContainerInfo, ContainerSample
    from ._pods import PodContext, PodWorker

log = logging.getLogger(__name__)

__all__ = ["Edged", "EdgedOptions"]


@dataclass(frozen=True, slots=True)
class EdgedOptions:
    relist_interval: float = 1.0  # PLEG relist period
    backoff_base: float = 10.0  # crash-loop back-off: base doubling up to cap, like kubelet
    backoff_cap: float = 300.0
    backoff_reset: float = 600.0
    cgroup_root: str = "/edgeflock"  # pod cgroups: CGROUP_ROOT/pod<uid> (cgroupfs)
    owner: str | None = None  # label value marking this agent's sandboxes (default: node)
    cri_concurrency: int = 8
    cri_timeout: float = 60.0
    pull_timeout: float = 120.0
    retry: float = 2.0  # seconds before retrying a failed sandbox / volume set-up


def host_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


CRI_TRANSPORTS = ("h2", "grpcio")


def _check_transport(transport: str) -> None:
    if transport not in CRI_TRANSPORTS:
        raise EdgedError(
            f"cri_transport must be one of {', '.join(CRI_TRANSPORTS)}, not {transport!r}"
        )


def open_cri_client(address: str, transport: str, *, concurrency: int, timeout: float) -> Any:
    """A CRI client on ``transport``: "h2" (the default, edged's lean client) or "grpcio"."""
    _check_transport(transport)
    if transport == "grpcio":
        from ._grpc import GrpcCriClient

        return GrpcCriClient(address, concurrency=concurrency, timeout=timeout)
    from ._h2 import CriClient

    return CriClient(address, concurrency=concurrency, timeout=timeout)


class _TimedCri:
    """A CRI client whose unary calls are timed, by method (``Edged.cri_seconds``)."""

    def __init__(self, client: Any, seconds: dict[str, Histogram]) -> None:
        self._client = client
        self._seconds = seconds

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any:
        started = trio.current_time()
        try:
            return await self._client.call(method, request, rpc_timeout)
        finally:
            hist = self._seconds.get(method)
            if hist is None:
                hist = self._seconds[method] = Histogram(SECONDS_BUCKETS)
            hist.observe(trio.current_time() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Edged:
    def __init__(
        self, config: AgentConfig, meta: Meta, options: EdgedOptions | None = None
    ) -> None:
        if not config.cri:
            raise EdgedError("edged needs a CRI address (config key 'cri' or --cri)")
        _check_transport(config.cri_transport)  # at start-up, not when edged first runs
        self.config = config
        self.meta = meta
        self.options = options or EdgedOptions()
        self.owner = self.options.owner or config.node
        self.pods_dir = config.data_dir / "pods"
        self._workers: dict[str, PodWorker] = {}  # by pod uid
        self._ctx: PodContext | None = None
        self._nursery: trio.Nursery | None = None
        self._loaded = False
        self.cri_seconds: dict[str, Histogram] = {}  # CRI call latency by method

    # ---- service
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from ._backoff import Backoff
        from ._pleg import Relister, Runtime
        from ._pods import PodContext

        opts = self.options
        assert self.config.cri
        cri = _TimedCri(
            open_cri_client(
                self.config.cri,
                self.config.cri_transport,
                concurrency=opts.cri_concurrency,
                timeout=opts.cri_timeout,
            ),
            self.cri_seconds,
        )
        try:
            runtime = Runtime(cri, self.owner)
            self._ctx = PodContext(
                cri=cri,
                runtime=runtime,
                meta=self.meta,
                owner=self.owner,
                pods_dir=self.pods_dir,
                cgroup_root=opts.cgroup_root,
                backoff=Backoff(opts.backoff_base, opts.backoff_cap, opts.backoff_reset),
                host_ip=await trio.to_thread.run_sync(host_ip),
                pull_timeout=opts.pull_timeout,
                retry=opts.retry,
            )
            await trio.to_thread.run_sync(_make_private_dir, self.pods_dir)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                gen = self.meta.generation
                await self._sync_pods()
                self._loaded = True
                relister = Relister(runtime, opts.relist_interval, self._changed, self._health)
                self.relister = relister
                await nursery.start(relister.run)
                nursery.start_soon(self._clean_orphans_later)
                task_status.started()
                log.info("edged running %d pods on %s", len(self._workers), cri.address)
                while True:
                    await self.meta.wait_changed(gen)
                    gen = self.meta.generation
                    await self._sync_pods()
        finally:
            self._nursery = None
            cri.close()

    async def _sync_pods(self) -> None:
        assert self._ctx is not None and self._nursery is not None
        from ._pods import PodWorker

        seen: set[str] = set()
        for key, pod in await self.meta.list_objects("pods"):
            if (pod.get("spec") or {}).get("nodeName") != self.config.node:
                continue
            uid = str((pod.get("metadata") or {}).get("uid") or key)
            seen.add(uid)
            w = self._workers.get(uid)
            if w is None:
                w = PodWorker(self._ctx, key, uid, pod)
                self._workers[uid] = w
                self._nursery.start_soon(self._run_worker, w)
            elif w.pod != pod:
                w.update(pod)
            else:
                w.poke()  # a ConfigMap or Secret it uses may have changed
        for uid, w in list(self._workers.items()):
            if uid not in seen and not w.deleted:
                w.delete()

    async def _run_worker(self, w: PodWorker) -> None:
        try:
            while True:
                try:
                    await w.run()
                    return
                except Exception:
                    log.exception("pod worker %s/%s failed; restarting it", w.namespace, w.name)
                    w.finished = trio.Event()
                    await trio.sleep(self.options.retry)
        finally:
            if self._workers.get(w.uid) is w:
                del self._workers[w.uid]

    def _changed(self, uid: str) -> None:
        w = self._workers.get(uid)
        if w is not None:
            w.poke()
        elif self._loaded and self._ctx is not None and self._nursery is not None and uid:
            from ._pods import PodWorker

            log.info("removing orphaned sandbox/containers of pod %s", uid)
            w = PodWorker(self._ctx, "", uid, None)
            self._workers[uid] = w
            self._nursery.start_soon(self._run_worker, w)

    def _health(self, ok: bool, error: str) -> None:
        if self._ctx is None:
            return
        self._ctx.runtime_error = "" if ok else (error or "unreachable")
        for w in self._workers.values():
            w.poke()

    async def _clean_orphans_later(self) -> None:
        """Pod cgroups and pod directories whose pod is neither known nor running."""
        from ._pods import remove_pod_cgroups

        await trio.sleep(self.options.relist_interval * 3)
        assert self._ctx is not None
        known = set(self._workers) | set(self.relister.last)
        try:
            entries = await trio.to_thread.run_sync(lambda: list(self.pods_dir.iterdir()))
        except OSError:
            entries = []
        for d in entries:
            if d.name not in known and d.name not in self._workers:
                log.info("removing orphaned pod directory %s", d)
                await trio.to_thread.run_sync(_rmtree, d)
        root = Path("/sys/fs/cgroup")

        def stale_cgroups() -> set[str]:
            out: set[str] = set()
            for ctl in [root, *root.iterdir()] if root.is_dir() else []:
                base = ctl / self.options.cgroup_root.strip("/")
                if base.is_dir():
                    out.update(p.name[3:] for p in base.glob("pod*") if p.is_dir())
            return out

        for uid in await trio.to_thread.run_sync(stale_cgroups):
            if uid not in self._workers and uid not in self.relister.last:
                await trio.to_thread.run_sync(remove_pod_cgroups, self.options.cgroup_root, uid)

    # ---- queries
    def pod_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The last status reported for a pod (None before the first)."""
        w = self._find(namespace, name)
        return w.status

    def _find(self, namespace: str, name: str) -> PodWorker:
        for w in self._workers.values():
            if not w.deleted and w.namespace == namespace and w.name == name:
                return w
        raise PodNotFound(f'pod "{namespace}/{name}" not found on this node')

    async def _container(self, namespace: str, pod: str, container: str | None) -> ContainerInfo:
        w = self._find(namespace, pod)
        assert self._ctx is not None
        names = [str(c.get("name")) for c in w.spec.get("containers") or []]
        init_names = [str(c.get("name")) for c in w.spec.get("initContainers") or []]
        name = container or (names[0] if names else "")
        if name not in names and name not in init_names:
            raise PodNotFound(f'container "{name}" not found in pod "{namespace}/{pod}"')
        rt = await self._ctx.runtime.list_pod(w.uid)
        latest = rt.latest(name, "app" if name in names else "init")
        if not latest:
            raise PodNotFound(f'container "{name}" of pod "{namespace}/{pod}" has not started')
        return latest[0]

    async def exec_sync(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        cmd: list[str],
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` in the container (CRI ExecSync); (exit code, stdout, stderr)."""
        from ._cri import pb

        info = await self._container(namespace, pod, container)
        if info.state != "running":
            raise ContainerNotRunning(f'container "{info.name}" is not running')
        assert self._ctx is not None
        resp = await self._ctx.cri.call(
            "ExecSync",
            pb.ExecSyncRequest(container_id=info.id, cmd=cmd, timeout=max(1, int(timeout))),
            rpc_timeout=timeout + 5,
        )
        return int(resp.exit_code), bytes(resp.stdout), bytes(resp.stderr)

    async def read_logs(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        tail: int | None = None,
        follow: bool = False,
    ) -> AsyncIterator[bytes]:
        """What the container printed (the CRI log-line prefixes stripped). With
        ``follow``, keeps yielding until the container stops."""
        info = await self._container(namespace, pod, container)
        path = trio.Path(info.log_path)
        decoder = LogDecoder()
        try:
            f = await trio.open_file(path, "rb")
        except OSError as exc:
            raise EdgedError(f"cannot read the log of {info.name!r}: {exc}") from exc
        async with f:
            data = await f.read()
            first = decoder.feed(data)
            if tail is not None:
                lines = first.splitlines(keepends=True)
                first = b"".join(lines[-tail:]) if tail > 0 else b""
            if first:
                yield first
            if not follow:
                return
            idle = 0.0
            while True:
                chunk = await f.read(65536)
                if chunk:
                    out = decoder.feed(chunk)
                    if out:
                        yield out
                    continue
                await trio.sleep(0.2)
                idle += 0.2
                if idle >= 1.0:
                    idle = 0.0
                    try:
                        cur = await self._container(namespace, pod, info.name)
                    except (PodNotFound, CriError):
                        return
                    if cur.id != info.id or cur.state != "running":
                        tail_bytes = decoder.feed(await f.read())
                        if tail_bytes:
                            yield tail_bytes
                        return

    def pod_statuses(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, name, last reported status) of every pod edged runs."""
        return [
            (w.namespace, w.name, w.status)
            for w in self._workers.values()
            if not w.deleted and w.status is not None
        ]

    async def container_stats(self) -> list[ContainerSample]:
        """Resource usage of this node's running containers (CRI
        ``ListContainerStats``, selected by this agent's owner label); raises
        ``EdgedError`` (``CriError``) while edged or containerd is not running."""
        from ._cri import pb
        from ._model import (
            LABEL_CONTAINER,
            LABEL_NAME,
            LABEL_NAMESPACE,
            LABEL_OWNER,
            ContainerSample,
        )

        if self._ctx is None:
            raise EdgedError("edged is not running")
        request = pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(label_selector={LABEL_OWNER: self.owner})
        )
        resp = await self._ctx.cri.call("ListContainerStats", request)
        out = []
        for s in resp.stats:
            labels = s.attributes.labels
            if not (s.HasField("cpu") and s.HasField("memory") and LABEL_NAME in labels):
                continue  # a container of someone else's, or one being torn down
            out.append(
                ContainerSample(
                    id=s.attributes.id,
                    namespace=labels.get(LABEL_NAMESPACE, ""),
                    pod=labels[LABEL_NAME],
                    container=labels.get(LABEL_CONTAINER, s.attributes.metadata.name),
                    cpu_ns=int(s.cpu.usage_core_nano_seconds.value),
                    time_ns=int(s.cpu.timestamp),
                    memory=int(s.memory.working_set_bytes.value),
                )
            )
        return out

    def statistics(self) -> dict[str, Any]:
        return {
            "pods": len(self._workers),
            "relists": getattr(getattr(self, "relister", None), "relists", 0),
        }


def _make_private_dir(path: Path) -> None:
    """Pod directories hold Secret volumes: only root may look inside (containers see
    their bind mounts, not the host path above them)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
