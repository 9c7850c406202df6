"""Pod spec helpers, sans-io: quantities, pull policy, spec hashes, environment
resolution and the mapping of resources to Linux cgroup values."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import EdgedError

__all__ = [
    "ConfigError",
    "LinuxResources",
    "container_hash",
    "cpu_millis",
    "linux_resources",
    "memory_bytes",
    "object_data",
    "pull_policy",
    "resolve_env",
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
