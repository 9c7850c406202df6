"""The per-pod sync loop: one task per pod compares the spec with what containerd
runs and acts (sandbox, init containers, containers, restarts with back-off,
liveness kills, termination), then reports the pod's status when it changed."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import trio

import edgeproto

from ._backoff import Backoff
from ._cri import Cri, pb
from ._errors import CriError
from ._model import ContainerInfo, PodRuntime, SandboxInfo
from ._pleg import Runtime
from ._probes import ProbeRunner
from ._spec import (
    ConfigError,
    container_config,
    container_hash,
    field_values,
    grace_period,
    object_refs,
    pull_policy,
    resolve_env,
    sandbox_config,
)
from ._status import Transitions, pod_status, runtime_down_status
from ._volumes import MountError, container_mounts, prepare_volumes

if TYPE_CHECKING:
    from .._meta import Meta

log = logging.getLogger(__name__)

__all__ = ["PodContext", "PodWorker", "remove_pod_cgroups"]

CGROUP_FS = Path("/sys/fs/cgroup")


@dataclass
class PodContext:
    """What every pod worker shares (built by Edged)."""

    cri: Cri
    runtime: Runtime
    meta: Meta
    owner: str
    pods_dir: Path
    cgroup_root: str
    backoff: Backoff
    host_ip: str
    pull_timeout: float
    retry: float  # seconds before retrying a failed sandbox / volume setup
    runtime_error: str = ""  # set while containerd is unreachable


def remove_pod_cgroups(cgroup_root: str, uid: str) -> None:
    """rmdir the pod's cgroup in every hierarchy (cgroup v1 and v2); best effort."""
    rel = f"{cgroup_root.strip('/')}/pod{uid}"
    candidates = [CGROUP_FS / rel]
    try:
        candidates += [d / rel for d in CGROUP_FS.iterdir() if d.is_dir()]
    except OSError:
        pass
    for path in candidates:
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                if child.is_dir():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
            try:
                path.rmdir()
            except OSError:
                pass


class PodWorker:
    def __init__(self, ctx: PodContext, key: str, uid: str, pod: dict[str, Any] | None) -> None:
        self.ctx = ctx
        self.key = key
        self.uid = uid
        self.pod: dict[str, Any] = pod or {"metadata": {"uid": uid}, "spec": {"containers": []}}
        self.deleted = pod is None
        self.finished = trio.Event()
        self._wake = trio.Event()
        self._waiting: dict[str, tuple[str, str]] = {}  # container name -> (reason, message)
        self._probes: dict[tuple[str, str], ProbeRunner] = {}  # (container id, kind)
        self._last_status: dict[str, Any] | None = None
        self._transitions = Transitions()
        self._started_at = edgeproto.rfc3339(time.time())
        self._nursery: trio.Nursery | None = None
        self._err_since: dict[str, float] = {}

    # ---- identity
    @property
    def namespace(self) -> str:
        return str(self.pod.get("metadata", {}).get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.pod.get("metadata", {}).get("name") or "")

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.pod.get("spec") or {})

    @property
    def pod_dir(self) -> Path:
        return self.ctx.pods_dir / self.uid

    @property
    def host_network(self) -> bool:
        return bool(self.spec.get("hostNetwork"))

    def poke(self) -> None:
        self._wake.set()

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.poke()

    def delete(self) -> None:
        self.deleted = True
        self.poke()

    # ---- loop
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                while True:
                    self._wake = trio.Event()
                    deadline = await self._sync_guarded()
                    if deadline is None:
                        break
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.finished.set()

    async def _sync_guarded(self) -> float | None:
        try:
            if self.deleted or (self.pod.get("metadata") or {}).get("deletionTimestamp"):
                await self.terminate()
                if self.deleted:
                    return None
                await self.report(await self.ctx.runtime.list_pod(self.uid), None, "")
                return math.inf
            return await self.sync()
        except CriError as exc:
            if exc.unavailable:
                await self.report_runtime_down(str(exc))
                return trio.current_time() + self.ctx.retry
            log.warning("pod %s/%s: %s", self.namespace, self.name, exc)
            return trio.current_time() + self.ctx.retry

    # ---- the sync
    async def sync(self) -> float:
        ctx = self.ctx
        now_t = trio.current_time()
        deadline = math.inf
        rt = await ctx.runtime.list_pod(self.uid)
        objects = {k: await ctx.meta.get(k) for k in sorted(object_refs(self.pod))}
        mount_error = ""
        volumes: dict[str, str] = {}
        try:
            volumes = await trio.to_thread.run_sync(
                prepare_volumes, self.pod, self.pod_dir, objects
            )
        except (MountError, OSError) as exc:
            mount_error = str(exc)
        sandbox = rt.ready_sandbox()
        if sandbox is None:
            if mount_error:
                await self.report(rt, None, mount_error)
                return now_t + ctx.retry
            if self._finished_for_good(rt):
                await self.report(rt, None, "")
                return deadline
            sandbox, err = await self._create_sandbox(rt)
            if sandbox is None:
                await self.report(rt, None, "", sandbox_error=err)
                return now_t + ctx.retry
            rt = await ctx.runtime.list_pod(self.uid)
        self._stop_stale_probes(rt)
        initialized, d = await self._sync_init(rt, sandbox, volumes, objects, mount_error)
        deadline = min(deadline, d)
        if initialized:
            deadline = min(
                deadline, await self._sync_app(rt, sandbox, volumes, objects, mount_error)
            )
        rt = await ctx.runtime.list_pod(self.uid)
        await self._prune(rt, sandbox)
        self._start_probes(rt, sandbox)
        await self.report(rt, sandbox, mount_error)
        if mount_error:
            deadline = min(deadline, trio.current_time() + ctx.retry)
        return deadline

    def _finished_for_good(self, rt: PodRuntime) -> bool:
        """restartPolicy Never/OnFailure and every app container already completed."""
        policy = self.spec.get("restartPolicy", "Always")
        if policy == "Always" or not rt.containers:
            return False
        for c in self.spec.get("containers") or []:
            latest = rt.latest(str(c.get("name")), "app")
            if not latest or latest[0].state != "exited":
                return False
            if policy == "OnFailure" and latest[0].exit_code != 0:
                return False
        return True

    def sandbox_config(self, attempt: int) -> Any:
        return pb.PodSandboxConfig(
            **sandbox_config(
                self.pod,
                uid=self.uid,
                owner=self.ctx.owner,
                attempt=attempt,
                log_directory=str(self.pod_dir / "logs"),
                cgroup_root=self.ctx.cgroup_root,
            )
        )

    async def _create_sandbox(self, rt: PodRuntime) -> tuple[SandboxInfo | None, str]:
        ctx = self.ctx
        # A dead sandbox takes its containers with it (like kubelet: all are recreated).
        for c in rt.containers:
            if c.state in ("running", "created"):
                await self._stop_container(c, self._grace())
        for s in rt.sandboxes:
            await self._remove_sandbox(s.id)
        attempt = max((s.attempt + 1 for s in rt.sandboxes), default=0)
        key = f"{self.uid}/sandbox"
        now = time.time()
        ready = ctx.backoff.ready_at(key, now) if ctx.backoff.delay(key) else now
        if ready > now + 0.001 and attempt:
            return None, "back-off creating the pod sandbox"
        await trio.to_thread.run_sync(self._make_dirs)
        try:
            resp = await ctx.cri.call(
                "RunPodSandbox", pb.RunPodSandboxRequest(config=self.sandbox_config(attempt))
            )
        except CriError as exc:
            if exc.unavailable:
                raise
            ctx.backoff.restarted(key, now, 0)
            log.warning("pod %s/%s: sandbox: %s", self.namespace, self.name, exc.details)
            return None, exc.details
        log.info("pod %s/%s: sandbox %s", self.namespace, self.name, resp.pod_sandbox_id[:12])
        rt2 = await ctx.runtime.list_pod(self.uid)
        sb = next((s for s in rt2.sandboxes if s.id == resp.pod_sandbox_id), None)
        return sb, ""

    def _make_dirs(self) -> None:
        (self.pod_dir / "logs").mkdir(parents=True, exist_ok=True)

    def _grace(self) -> int:
        return grace_period(self.pod)

    # ---- containers
    async def _sync_init(
        self,
        rt: PodRuntime,
        sb: SandboxInfo,
        volumes: dict[str, str],
        objects: dict[str, Any],
        mount_error: str,
    ) -> tuple[bool, float]:
        policy = self.spec.get("restartPolicy", "Always")
        for spec in self.spec.get("initContainers") or []:
            name = str(spec.get("name"))
            latest = rt.latest(name, "init", sb.id)
            cur = latest[0] if latest else None
            if cur is not None and cur.state in ("running", "created"):
                return False, math.inf
            if cur is not None and cur.state == "exited" and cur.exit_code == 0:
                self._waiting.pop(name, None)
                continue
            if cur is not None and policy == "Never":
                return False, math.inf  # the pod failed
            d = await self._start_or_backoff(
                spec, "init", rt, sb, cur, volumes, objects, mount_error
            )
            return False, d
        return True, math.inf

    async def _sync_app(
        self,
        rt: PodRuntime,
        sb: SandboxInfo,
        volumes: dict[str, str],
        objects: dict[str, Any],
        mount_error: str,
    ) -> float:
        policy = self.spec.get("restartPolicy", "Always")
        deadline = math.inf
        for spec in self.spec.get("containers") or []:
            name = str(spec.get("name"))
            latest = rt.latest(name, "app", sb.id)
            cur = latest[0] if latest else None
            if cur is not None and cur.state in ("running", "created"):
                if cur.hash != container_hash(spec):
                    log.info(
                        "pod %s/%s: container %s changed; replacing",
                        self.namespace,
                        self.name,
                        name,
                    )
                    await self._stop_container(cur, self._grace())
                    self.ctx.backoff.forget(f"{self.uid}/{name}")
                    rt = await self.ctx.runtime.list_pod(self.uid)
                    cur = next((c for c in rt.containers if c.id == cur.id), None)
                elif self._probe_failed(cur.id):
                    kind = "startup" if self._probes.get((cur.id, "startup")) else "liveness"
                    log.info(
                        "pod %s/%s: container %s failed its %s probe; restarting",
                        self.namespace, self.name, name, kind,
                    )  # fmt: skip
                    probe = spec.get("livenessProbe") or spec.get("startupProbe") or {}
                    grace = probe.get("terminationGracePeriodSeconds", self._grace())
                    await self._stop_container(cur, int(grace))
                    rt = await self.ctx.runtime.list_pod(self.uid)
                    cur = next((c for c in rt.containers if c.id == cur.id), None)
                else:
                    self._waiting.pop(name, None)
                    continue
            if cur is not None and cur.state in ("exited", "unknown"):
                if policy == "Never" or (policy == "OnFailure" and cur.exit_code == 0):
                    self._waiting.pop(name, None)
                    continue
            d = await self._start_or_backoff(
                spec, "app", rt, sb, cur, volumes, objects, mount_error
            )
            deadline = min(deadline, d)
        return deadline

    def _probe_failed(self, cid: str) -> bool:
        for kind in ("liveness", "startup"):
            r = self._probes.get((cid, kind))
            if r is not None and r.result is False:
                return True
        return False

    async def _start_or_backoff(
        self,
        spec: Mapping[str, Any],
        kind: str,
        rt: PodRuntime,
        sb: SandboxInfo,
        cur: ContainerInfo | None,
        volumes: dict[str, str],
        objects: dict[str, Any],
        mount_error: str,
    ) -> float:
        """Start ``spec``'s container unless its back-off says wait; returns when to
        look again."""
        name = str(spec.get("name"))
        key = f"{self.uid}/{name}"
        backoff = self.ctx.backoff
        now = time.time()
        if mount_error:
            self._waiting[name] = ("ContainerCreating", mount_error)
            return math.inf
        if cur is not None and cur.state == "exited":
            finished = cur.finished_at / 1e9 if cur.finished_at else now
            ready = backoff.ready_at(key, finished)
            if ready > now:
                delay = backoff.delay(key)
                self._waiting[name] = (
                    "CrashLoopBackOff",
                    f"back-off {delay:g}s restarting failed container={name} "
                    f"pod={self.name}_{self.namespace}({self.uid})",
                )
                return trio.current_time() + (ready - now)
        # a config/image error waits for its own back-off before the next try
        prev = self._waiting.get(name)
        if prev and prev[0] in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError",
                                "CreateContainerConfigError", "RunContainerError"):  # fmt: skip
            ready = backoff.ready_at(key + "/err", 0) + self._err_since.get(key, 0)
            if ready > now:
                if prev[0] == "ErrImagePull":
                    self._waiting[name] = (
                        "ImagePullBackOff",
                        f'Back-off pulling image "{spec.get("image")}"',
                    )
                return trio.current_time() + (ready - now)
        attempt = max((c.attempt + 1 for c in rt.latest(name, kind)), default=0)
        err = await self._start_container(spec, kind, sb, attempt, volumes, objects)
        if err is not None:
            self._waiting[name] = err
            self._err_since[key] = now
            backoff.restarted(key + "/err", now, 0)
            return trio.current_time() + backoff.delay(key + "/err")
        backoff.forget(key + "/err")
        self._err_since.pop(key, None)
        self._waiting.pop(name, None)
        if cur is not None:
            ran = (cur.finished_at - cur.started_at) / 1e9 if cur.started_at else 0.0
            backoff.restarted(key, now, max(0.0, ran))
        return math.inf

    async def _ensure_image(self, spec: Mapping[str, Any]) -> tuple[str, str] | None:
        image = str(spec.get("image") or "")
        if not image:
            return ("InvalidImageName", "no image given")
        policy = pull_policy(spec)
        cri = self.ctx.cri
        present = False
        if policy != "Always":
            resp = await cri.call(
                "ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
            )
            present = bool(resp.image.id)
        if present:
            return None
        if policy == "Never":
            return (
                "ErrImageNeverPull",
                f'Container image "{image}" is not present with pull policy of Never',
            )
        try:
            await cri.call(
                "PullImage",
                pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                rpc_timeout=self.ctx.pull_timeout,
            )
        except CriError as exc:
            if exc.code == "UNAVAILABLE" and "containerd.sock" in exc.details:
                raise
            return ("ErrImagePull", f"failed to pull image {image!r}: {exc.details}")
        return None

    async def _start_container(
        self,
        spec: Mapping[str, Any],
        kind: str,
        sb: SandboxInfo,
        attempt: int,
        volumes: dict[str, str],
        objects: dict[str, Any],
    ) -> tuple[str, str] | None:
        name = str(spec.get("name"))
        err = await self._ensure_image(spec)
        if err is not None:
            log.warning("pod %s/%s: container %s: %s", self.namespace, self.name, name, err[1])
            return err
        try:
            config = self._container_config(spec, kind, sb, attempt, volumes, objects)
        except (ConfigError, MountError, OSError) as exc:
            return ("CreateContainerConfigError", str(exc))
        try:
            resp = await self.ctx.cri.call(
                "CreateContainer",
                pb.CreateContainerRequest(
                    pod_sandbox_id=sb.id,
                    config=config,
                    sandbox_config=self.sandbox_config(sb.attempt),
                ),
            )
        except CriError as exc:
            if exc.unavailable:
                raise
            return ("CreateContainerError", exc.details)
        try:
            await self.ctx.cri.call(
                "StartContainer", pb.StartContainerRequest(container_id=resp.container_id)
            )
        except CriError as exc:
            if exc.unavailable:
                raise
            log.warning("pod %s/%s: container %s: %s", self.namespace, self.name, name, exc.details)
            return ("RunContainerError", exc.details)
        log.info(
            "pod %s/%s: started %s container %s (attempt %d) %s",
            self.namespace, self.name, kind, name, attempt, resp.container_id[:12],
        )  # fmt: skip
        return None

    def _container_config(
        self,
        spec: Mapping[str, Any],
        kind: str,
        sb: SandboxInfo,
        attempt: int,
        volumes: dict[str, str],
        objects: dict[str, Any],
    ) -> Any:
        fields = field_values(self.pod, self.uid, sb.ip or self.ctx.host_ip, self.ctx.host_ip)
        env = resolve_env(spec, objects, self.namespace, fields)
        mounts = container_mounts(self.pod, spec, volumes)
        return pb.ContainerConfig(
            **container_config(
                self.pod,
                spec,
                kind=kind,
                uid=self.uid,
                owner=self.ctx.owner,
                attempt=attempt,
                env=env,
                mounts=mounts,
            )
        )

    async def _stop_container(self, c: ContainerInfo, grace: int) -> None:
        try:
            await self.ctx.cri.call(
                "StopContainer",
                pb.StopContainerRequest(container_id=c.id, timeout=grace),
                rpc_timeout=grace + 30,
            )
        except CriError as exc:
            if exc.code != "NOT_FOUND":
                raise

    async def _remove_container(self, cid: str) -> None:
        try:
            await self.ctx.cri.call("RemoveContainer", pb.RemoveContainerRequest(container_id=cid))
        except CriError as exc:
            if exc.code != "NOT_FOUND":
                raise

    async def _remove_sandbox(self, sid: str) -> None:
        for method, req in (
            ("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sid)),
            ("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sid)),
        ):
            try:
                await self.ctx.cri.call(method, req)
            except CriError as exc:
                if exc.code != "NOT_FOUND":
                    raise

    async def _prune(self, rt: PodRuntime, sb: SandboxInfo) -> None:
        """Keep the newest two containers per name (current + lastState); drop
        containers of other sandboxes and any older exited ones."""
        keep: set[str] = set()
        for kind in ("init", "app"):
            for name in {c.name for c in rt.containers if c.kind == kind}:
                for c in rt.latest(name, kind, sb.id)[:2]:
                    keep.add(c.id)
        for c in rt.containers:
            if c.id not in keep and c.state in ("exited", "unknown"):
                await self._remove_container(c.id)
        for s in rt.sandboxes:
            if s.id != sb.id and not any(
                c.sandbox_id == s.id for c in rt.containers if c.id in keep
            ):
                await self._remove_sandbox(s.id)

    # ---- probes
    def _start_probes(self, rt: PodRuntime, sb: SandboxInfo) -> None:
        if self._nursery is None:
            return
        host = "127.0.0.1" if self.host_network or not sb.ip else sb.ip
        specs = {str(c.get("name")): c for c in self.spec.get("containers") or []}
        for c in rt.containers:
            if c.state != "running" or c.kind != "app" or c.name not in specs:
                continue
            spec = specs[c.name]
            for kind in ("startup", "liveness", "readiness"):
                probe = spec.get(f"{kind}Probe")
                if not probe or (c.id, kind) in self._probes:
                    continue
                gate = self._gate(c.id) if kind != "startup" else (lambda: True)
                runner = ProbeRunner(self.ctx.cri, kind, probe, spec, c.id, host, self.poke, gate)
                self._probes[(c.id, kind)] = runner
                self._nursery.start_soon(runner.run)

    def _gate(self, cid: str) -> Any:
        def gate() -> bool:
            s = self._probes.get((cid, "startup"))
            return s is None or s.result is True

        return gate

    def _stop_stale_probes(self, rt: PodRuntime) -> None:
        running = {c.id for c in rt.containers if c.state == "running"}
        for key in [k for k in self._probes if k[0] not in running]:
            self._probes.pop(key).cancel_scope.cancel()

    # ---- termination
    async def terminate(self) -> None:
        ctx = self.ctx
        for r in self._probes.values():
            r.cancel_scope.cancel()
        self._probes.clear()
        rt = await ctx.runtime.list_pod(self.uid)
        async with trio.open_nursery() as nursery:
            for c in rt.containers:
                if c.state in ("running", "created", "unknown"):
                    # an orphan (no spec left) gets the grace period it was created with
                    grace = c.grace if self.key == "" else self._grace()
                    nursery.start_soon(self._stop_container, c, grace)
        if not self.deleted:
            return  # deletionTimestamp set: containers stopped, the object stays
        for c in rt.containers:
            await self._remove_container(c.id)
        for s in rt.sandboxes:
            await self._remove_sandbox(s.id)
        await trio.to_thread.run_sync(self._cleanup_host)
        ctx.backoff.forget(f"{self.uid}/")
        log.info("pod %s/%s (%s) removed", self.namespace, self.name, self.uid)

    def _cleanup_host(self) -> None:
        remove_pod_cgroups(self.ctx.cgroup_root, self.uid)
        shutil.rmtree(self.pod_dir, ignore_errors=True)

    # ---- status
    def build_status(
        self, rt: PodRuntime, sb: SandboxInfo | None, mount_error: str, sandbox_error: str = ""
    ) -> dict[str, Any]:
        return pod_status(
            self.spec,
            rt,
            sb,
            waiting=self._waiting,
            probes={key: runner.result for key, runner in self._probes.items()},
            transitions=self._transitions,
            now=edgeproto.rfc3339(time.time()),
            started_at=self._started_at,
            host_ip=self.ctx.host_ip,
            mount_error=mount_error,
            sandbox_error=sandbox_error,
            runtime_error=self.ctx.runtime_error,
        )

    async def report(
        self, rt: PodRuntime, sb: SandboxInfo | None, mount_error: str, sandbox_error: str = ""
    ) -> None:
        await self.publish(self.build_status(rt, sb, mount_error, sandbox_error))

    async def report_runtime_down(self, error: str) -> None:
        now = edgeproto.rfc3339(time.time())
        await self.publish(runtime_down_status(self._last_status, error, self._transitions, now))

    async def publish(self, status: dict[str, Any]) -> None:
        if status == self._last_status:
            return
        self._last_status = status
        await self.ctx.meta.enqueue([(self.key, "status", cbor2.dumps({"status": status}), True)])
        log.debug("pod %s/%s: %s", self.namespace, self.name, status.get("phase"))

    @property
    def status(self) -> dict[str, Any] | None:
        return self._last_status
