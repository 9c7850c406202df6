"""What runs on this node as plain data (sans-io): sandboxes and containers as
containerd reports them, and the labels edged puts on them to find them again."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ANNOTATION_GRACE",
    "LABEL_CONTAINER",
    "LABEL_HASH",
    "LABEL_KIND",
    "LABEL_NAME",
    "LABEL_NAMESPACE",
    "LABEL_OWNER",
    "LABEL_UID",
    "ContainerInfo",
    "ContainerSample",
    "PodRuntime",
    "SandboxInfo",
    "parse_int",
]

LABEL_OWNER = "io.edgeflock.node"
LABEL_UID = "io.kubernetes.pod.uid"
LABEL_NAME = "io.kubernetes.pod.name"
LABEL_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_CONTAINER = "io.kubernetes.container.name"
LABEL_HASH = "io.edgeflock.container.hash"
LABEL_KIND = "io.edgeflock.container.kind"
ANNOTATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"


def parse_int(value: str | None, default: int) -> int:
    try:
        return int(value or "")
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    id: str
    uid: str
    name: str
    namespace: str
    attempt: int
    ready: bool
    created_at: int
    ip: str


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    state: str  # created, running, exited, unknown
    created_at: int  # ns
    started_at: int
    finished_at: int
    exit_code: int
    reason: str
    message: str
    image: str
    image_ref: str
    log_path: str
    hash: str
    kind: str  # init or app
    grace: int  # the pod's termination grace period when the container was created


@dataclass(frozen=True, slots=True)
class ContainerSample:
    """One running container's resource usage, as containerd measured it
    (CRI ``ListContainerStats``): CPU as cumulative core-nanoseconds at
    ``time_ns`` (containerd's clock, ns since the epoch), memory as the
    working set in bytes."""

    id: str
    namespace: str
    pod: str
    container: str
    cpu_ns: int
    time_ns: int
    memory: int


@dataclass
class PodRuntime:
    sandboxes: list[SandboxInfo] = field(default_factory=list)
    containers: list[ContainerInfo] = field(default_factory=list)

    def ready_sandbox(self) -> SandboxInfo | None:
        ready = [s for s in self.sandboxes if s.ready]
        return max(ready, key=lambda s: s.created_at) if ready else None

    def latest(self, name: str, kind: str, sandbox_id: str | None = None) -> list[ContainerInfo]:
        """Containers named ``name`` (newest first)."""
        cs = [
            c
            for c in self.containers
            if c.name == name
            and c.kind == kind
            and (sandbox_id is None or c.sandbox_id == sandbox_id)
        ]
        return sorted(cs, key=lambda c: (c.attempt, c.created_at), reverse=True)
