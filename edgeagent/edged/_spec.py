"""Pod spec helpers, sans-io: quantities, pull policy, spec hashes, environment
resolution, the mapping of resources to Linux cgroup values, and the CRI sandbox and
container configs built from a pod (as plain data in the CRI protobuf's field names:
edged's pod worker turns them into the messages)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import EdgedError
from ._model import (
    ANNOTATION_GRACE,
    LABEL_CONTAINER,
    LABEL_HASH,
    LABEL_KIND,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_OWNER,
    LABEL_UID,
)

__all__ = [
    "ConfigError",
    "LinuxResources",
    "Mount",
    "container_config",
    "container_hash",
    "cpu_millis",
    "field_values",
    "grace_period",
    "linux_resources",
    "memory_bytes",
    "object_data",
    "pull_policy",
    "resolve_env",
    "sandbox_config",
]


class ConfigError(EdgedError):
    """A container's configuration references something missing or invalid
    (reported as ``CreateContainerConfigError``)."""


_SUFFIX = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
    "n": 10**-9, "u": 10**-6, "m": 10**-3, "": 1, "k": 10**3, "K": 10**3, "M": 10**6,
    "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkKMGTPE]?)$")


def _quantity(value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"invalid quantity {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ConfigError(f"invalid quantity {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def cpu_millis(value: Any) -> int:
    return round(_quantity(value) * 1000)


def memory_bytes(value: Any) -> int:
    return int(_quantity(value))


@dataclass(frozen=True, slots=True)
class LinuxResources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0


def linux_resources(resources: Mapping[str, Any] | None) -> LinuxResources:
    """Like kubelet with cgroupfs: requests.cpu -> shares, limits.cpu -> CFS quota over a
    100 ms period, limits.memory -> memory limit. A limit without request sets both."""
    resources = resources or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    cpu_req = requests.get("cpu", limits.get("cpu"))
    shares = 2
    if cpu_req is not None:
        shares = max(2, cpu_millis(cpu_req) * 1024 // 1000)
    period = quota = 0
    if limits.get("cpu") is not None:
        period = 100_000
        quota = max(1000, cpu_millis(limits["cpu"]) * period // 1000)
    mem = memory_bytes(limits["memory"]) if limits.get("memory") is not None else 0
    return LinuxResources(period, quota, shares, mem)


def pull_policy(container: Mapping[str, Any]) -> str:
    policy = container.get("imagePullPolicy")
    if policy in ("Always", "IfNotPresent", "Never"):
        return str(policy)
    image = str(container.get("image") or "")
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def container_hash(container: Mapping[str, Any]) -> str:
    """A change to any of these fields replaces the running container (like kubelet's
    hash of the container spec); probes and resources of a running container do not."""
    keep = {
        k: container.get(k)
        for k in (
            "name", "image", "command", "args", "workingDir", "env", "envFrom", "ports",
            "volumeMounts", "securityContext", "resources",
        )
    }  # fmt: skip
    raw = json.dumps(keep, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def object_data(obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The keys of a ConfigMap (``data``, ``binaryData``) or Secret (``data`` base64,
    ``stringData``) as bytes."""
    if not obj:
        return {}
    out: dict[str, bytes] = {}
    secret = obj.get("kind") == "Secret" or "type" in obj
    for key, value in (obj.get("data") or {}).items():
        if isinstance(value, bytes):
            out[str(key)] = value
        elif secret:
            try:
                out[str(key)] = base64.b64decode(str(value), validate=True)
            except ValueError:
                out[str(key)] = str(value).encode()
        else:
            out[str(key)] = str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        out[str(key)] = value if isinstance(value, bytes) else base64.b64decode(str(value))
    for key, value in (obj.get("stringData") or {}).items():
        out[str(key)] = str(value).encode()
    return out


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; ``$$`` escapes; unknown references stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(sub, text)


def resolve_env(
    container: Mapping[str, Any],
    objects: Mapping[str, Mapping[str, Any] | None],
    namespace: str,
    field_values: Mapping[str, str],
) -> list[tuple[str, str]]:
    """The container's environment. ``objects`` maps ``configmaps/NS/NAME`` and
    ``secrets/NS/NAME`` keys to the objects (None when missing); ``field_values``
    answers ``fieldRef`` paths (``metadata.name``, ``status.podIP``…).
    Raises :class:`ConfigError` for a missing object or key that is not optional."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = str(src.get("prefix") or "")
        for field, res in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = src.get(field)
            if not ref:
                continue
            key = f"{res}/{namespace}/{ref.get('name')}"
            obj = objects.get(key)
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{res[:-1]} "{ref.get("name")}" not found')
            for k, v in object_data(obj).items():
                env[prefix + k] = v.decode(errors="replace")
    for item in container.get("env") or []:
        name = str(item.get("name") or "")
        if not name:
            continue
        if "value" in item:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        source = item.get("valueFrom") or {}
        if not source:
            env[name] = ""
            continue
        for field, res in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            ref = source.get(field)
            if not ref:
                continue
            key = f"{res}/{namespace}/{ref.get('name')}"
            obj = objects.get(key)
            data = object_data(obj)
            if obj is None or ref.get("key") not in data:
                if ref.get("optional"):
                    break
                what = f'{res[:-1]} "{ref.get("name")}"'
                if obj is None:
                    raise ConfigError(f"{what} not found")
                raise ConfigError(f"couldn't find key {ref.get('key')} in {what}")
            env[name] = data[str(ref.get("key"))].decode(errors="replace")
            break
        else:
            path = (source.get("fieldRef") or {}).get("fieldPath")
            if path:
                env[name] = field_values.get(str(path), "")
    return list(env.items())


def object_refs(pod: Mapping[str, Any]) -> set[str]:
    """Keys of the ConfigMaps and Secrets a pod's volumes and env reference."""
    ns = str((pod.get("metadata") or {}).get("namespace") or "default")
    spec = pod.get("spec") or {}
    out: set[str] = set()
    for vol in spec.get("volumes") or []:
        if (vol.get("configMap") or {}).get("name"):
            out.add(f"configmaps/{ns}/{vol['configMap']['name']}")
        if (vol.get("secret") or {}).get("secretName"):
            out.add(f"secrets/{ns}/{vol['secret']['secretName']}")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for src in c.get("envFrom") or []:
            if (src.get("configMapRef") or {}).get("name"):
                out.add(f"configmaps/{ns}/{src['configMapRef']['name']}")
            if (src.get("secretRef") or {}).get("name"):
                out.add(f"secrets/{ns}/{src['secretRef']['name']}")
        for item in c.get("env") or []:
            source = item.get("valueFrom") or {}
            if (source.get("configMapKeyRef") or {}).get("name"):
                out.add(f"configmaps/{ns}/{source['configMapKeyRef']['name']}")
            if (source.get("secretKeyRef") or {}).get("name"):
                out.add(f"secrets/{ns}/{source['secretKeyRef']['name']}")
    return out


# -- the CRI configs -------------------------------------------------------------------


class Mount(Protocol):
    """A bind mount of a volume into a container (``_volumes.VolumeMount``)."""

    @property
    def container_path(self) -> str: ...
    @property
    def host_path(self) -> str: ...
    @property
    def readonly(self) -> bool: ...


def _kv(d: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (d or {}).items()}


def _identity(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("name") or ""), str(meta.get("namespace") or "default")


def grace_period(pod: Mapping[str, Any]) -> int:
    """``terminationGracePeriodSeconds`` (30 when unset)."""
    g = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return 30 if g is None else max(0, int(g))


def field_values(pod: Mapping[str, Any], uid: str, pod_ip: str, host_ip: str) -> dict[str, str]:
    """What ``fieldRef`` paths in the pod's environment resolve to."""
    name, namespace = _identity(pod)
    spec = pod.get("spec") or {}
    fields = {
        "metadata.name": name,
        "metadata.namespace": namespace,
        "metadata.uid": uid,
        "spec.nodeName": str(spec.get("nodeName") or ""),
        "spec.serviceAccountName": str(spec.get("serviceAccountName") or ""),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items():
        fields[f"metadata.labels['{k}']"] = str(v)
    return fields


def sandbox_config(
    pod: Mapping[str, Any],
    *,
    uid: str,
    owner: str,
    attempt: int,
    log_directory: str,
    cgroup_root: str,
) -> dict[str, Any]:
    """The pod's CRI ``PodSandboxConfig``: labels that find it again, host ports, DNS,
    host network and the pod cgroup under ``cgroup_root``."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    name, namespace = _identity(pod)
    hostnet = bool(spec.get("hostNetwork"))
    labels = {
        **_kv(meta.get("labels")),
        LABEL_OWNER: owner,
        LABEL_UID: uid,
        LABEL_NAME: name,
        LABEL_NAMESPACE: namespace,
    }
    ports = [
        {
            "protocol": {"UDP": 1, "SCTP": 2}.get(str(p.get("protocol")), 0),
            "container_port": int(p.get("containerPort") or 0),
            "host_port": int(p.get("hostPort") or 0),
            "host_ip": str(p.get("hostIP") or ""),
        }
        for c in spec.get("containers") or []
        for p in c.get("ports") or []
        if p.get("hostPort")
    ]
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    security: dict[str, Any] = {
        "namespace_options": {"network": 2 if hostnet else 0, "pid": 1, "ipc": 0},
        "privileged": any(
            bool((c.get("securityContext") or {}).get("privileged")) for c in containers
        ),
    }
    run_as_user = (spec.get("securityContext") or {}).get("runAsUser")
    if run_as_user is not None:
        security["run_as_user"] = {"value": int(run_as_user)}
    dns = None
    dc = spec.get("dnsConfig") or {}
    if dc:
        dns = {
            "servers": [str(x) for x in dc.get("nameservers") or []],
            "searches": [str(x) for x in dc.get("searches") or []],
            "options": [
                f"{o.get('name')}:{o['value']}" if o.get("value") else str(o.get("name"))
                for o in dc.get("options") or []
            ],
        }
    return {
        "metadata": {"name": name, "uid": uid, "namespace": namespace, "attempt": attempt},
        # host network: leave the hostname empty (containerd then keeps the host's)
        "hostname": "" if hostnet else str(spec.get("hostname") or name)[:63],
        "log_directory": log_directory,
        "dns_config": dns,
        "port_mappings": ports,
        "labels": labels,
        "annotations": _kv(meta.get("annotations")),
        "linux": {
            "cgroup_parent": f"{cgroup_root.rstrip('/')}/pod{uid}",
            "security_context": security,
        },
    }


def container_config(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    kind: str,
    uid: str,
    owner: str,
    attempt: int,
    env: Sequence[tuple[str, str]],
    mounts: Sequence[Mount],
) -> dict[str, Any]:
    """A container's CRI ``ContainerConfig`` with its resolved environment (``$(VAR)``
    expanded in command and args), mounts, cgroup limits and security context."""
    name = str(container.get("name"))
    pod_name, namespace = _identity(pod)
    spec = pod.get("spec") or {}
    res = linux_resources(container.get("resources"))
    psc = spec.get("securityContext") or {}
    csc = container.get("securityContext") or {}
    security: dict[str, Any] = {
        "privileged": bool(csc.get("privileged", False)),
        "readonly_rootfs": bool(csc.get("readOnlyRootFilesystem", False)),
        "no_new_privs": csc.get("allowPrivilegeEscalation") is False,
        "namespace_options": {
            "network": 2 if spec.get("hostNetwork") else 0, "pid": 1, "ipc": 0
        },
    }  # fmt: skip
    user = csc.get("runAsUser", psc.get("runAsUser"))
    if user is not None:
        security["run_as_user"] = {"value": int(user)}
    group = csc.get("runAsGroup", psc.get("runAsGroup"))
    if group is not None:
        security["run_as_group"] = {"value": int(group)}
    caps = csc.get("capabilities") or {}
    if caps:
        security["capabilities"] = {
            "add_capabilities": [str(c) for c in caps.get("add") or []],
            "drop_capabilities": [str(c) for c in caps.get("drop") or []],
        }
    values = dict(env)
    return {
        "metadata": {"name": name, "attempt": attempt},
        "image": {"image": str(container.get("image"))},
        "command": [expand(str(x), values) for x in container.get("command") or []],
        "args": [expand(str(x), values) for x in container.get("args") or []],
        "working_dir": str(container.get("workingDir") or ""),
        "envs": [{"key": k, "value": v} for k, v in env],
        "mounts": [
            {"container_path": m.container_path, "host_path": m.host_path, "readonly": m.readonly}
            for m in mounts
        ],
        "labels": {
            LABEL_OWNER: owner,
            LABEL_UID: uid,
            LABEL_NAME: pod_name,
            LABEL_NAMESPACE: namespace,
            LABEL_CONTAINER: name,
            LABEL_HASH: container_hash(container),
            LABEL_KIND: kind,
        },
        "annotations": {ANNOTATION_GRACE: str(grace_period(pod))},
        "log_path": f"{name}/{attempt}.log",
        "linux": {
            "resources": {
                "cpu_period": res.cpu_period,
                "cpu_quota": res.cpu_quota,
                "cpu_shares": res.cpu_shares,
                "memory_limit_in_bytes": res.memory_limit_in_bytes,
            },
            "security_context": security,
        },
    }
