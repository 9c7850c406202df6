"""Node labels as a board asks for them at join: Kubernetes' label syntax, the
NodeRestriction admission plugin's rule on ``kubernetes.io``/``k8s.io`` keys,
the well-known labels the gateway puts on every Node, and the ``k=v,k2=v2``
text the agent's ``--labels`` flag (and ``edgeflash prepare --labels``) takes.

Shared by the agent (checked before a join token is spent), the gateway (which
decides) and edgeflash (checked when an image is baked). Pure: no I/O.

Facts from Kubernetes: label syntax from ``apimachinery/pkg/util/validation``
(``IsQualifiedName``, ``IsValidLabelValue``); the keys a node may set on itself
from ``kubelet/apis/well_known_labels.go`` (``IsKubeletLabel``), which the
NodeRestriction plugin enforces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "ARCH",
    "EDGE_ROLE",
    "HOSTNAME",
    "LABEL_ARCH",
    "LABEL_OS",
    "MAX_LABELS",
    "LabelError",
    "check_label",
    "check_node_labels",
    "format_labels",
    "goarch",
    "is_label_value",
    "is_qualified_name",
    "node_may_set",
    "parse_labels",
]

HOSTNAME = "kubernetes.io/hostname"
LABEL_ARCH = "kubernetes.io/arch"
LABEL_OS = "kubernetes.io/os"
EDGE_ROLE = "node-role.kubernetes.io/edge"
MAX_LABELS = 64  # labels a board may ask for at join

# platform.machine() → Go's GOARCH, the values of kubernetes.io/arch.
ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "riscv64": "riscv64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}

# IsKubeletLabel: the kubernetes.io / k8s.io keys a node may set on itself.
_NODE_KEYS = frozenset(
    {
        HOSTNAME,
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        LABEL_OS,
        LABEL_ARCH,
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    }
)
_NODE_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class LabelError(ValueError):
    """A label that is not valid, or not one a node may set; the message names it."""


def is_qualified_name(key: object) -> bool:
    """A label key: ``[prefix/]name``; prefix a DNS-1123 subdomain (≤ 253),
    name ≤ 63 alphanumerics, ``-``, ``_``, ``.``, alphanumeric at both ends."""
    if not isinstance(key, str) or not key:
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _NAME.fullmatch(name) is not None


def is_label_value(value: object) -> bool:
    """A label value: empty, or ≤ 63 characters as a key's name part."""
    return isinstance(value, str) and (
        value == "" or (len(value) <= 63 and _NAME.fullmatch(value) is not None)
    )


def check_label(key: object, value: object) -> None:
    """Raise ``LabelError`` naming the label when it is not valid syntax."""
    if not is_qualified_name(key):
        raise LabelError(
            f"invalid label key {key!r}: a key is [prefix/]name, the name at most 63 "
            "characters of alphanumerics, '-', '_' or '.' starting and ending with an "
            "alphanumeric, the prefix a DNS subdomain"
        )
    if not is_label_value(value):
        raise LabelError(
            f"invalid value {value!r} of label {key!r}: at most 63 characters of "
            "alphanumerics, '-', '_' or '.' starting and ending with an alphanumeric (or empty)"
        )


def _namespace(key: str) -> str:
    return key.rpartition("/")[0]


def node_may_set(key: str) -> bool:
    """Whether a node may put ``key`` on its own Node (NodeRestriction): any key
    outside ``kubernetes.io`` and ``k8s.io``, and inside them only the
    well-known ones (hostname, os, arch, zone, region, instance type) and those
    under ``kubelet.kubernetes.io`` / ``node.kubernetes.io``."""
    ns = _namespace(key)
    kubernetes = ns in ("kubernetes.io", "k8s.io") or ns.endswith((".kubernetes.io", ".k8s.io"))
    if not kubernetes or key in _NODE_KEYS:
        return True
    return any(ns == n or ns.endswith("." + n) for n in _NODE_NAMESPACES)


def check_node_labels(labels: object) -> dict[str, str]:
    """The labels a board asks for, checked: a mapping of valid keys to valid
    values, at most ``MAX_LABELS``, none a ``kubernetes.io``/``k8s.io`` key a
    node may not set. Raises ``LabelError`` naming the first bad label."""
    if not isinstance(labels, Mapping):
        raise LabelError(f"labels must be a mapping of key to value, not {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels: a node may ask for at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        check_label(key, value)
        if not node_may_set(key):
            raise LabelError(
                f"label {key!r}: a node may not set labels under kubernetes.io or k8s.io "
                "except the well-known ones (kubernetes.io/hostname, kubernetes.io/arch, "
                "kubernetes.io/os, topology.kubernetes.io/zone|region, "
                "node.kubernetes.io/*...); an operator sets it with 'edgectl label node'"
            )
        out[key] = value
    return out


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (``k=`` for an empty value; blanks around items ignored)
    as a mapping, checked with ``check_node_labels``. A key given twice is an
    error."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise LabelError(f"label {item!r}: expected KEY=VALUE")
        key, value = key.strip(), value.strip()
        if key in labels:
            raise LabelError(f"label {key!r} is given twice")
        labels[key] = value
    return check_node_labels(labels)


def format_labels(labels: Mapping[str, str]) -> str:
    """The ``k=v,k2=v2`` text of ``labels`` (sorted by key)."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def goarch(machine: str) -> str:
    """``platform.machine()`` as the value of ``kubernetes.io/arch``."""
    m = machine.strip().lower()
    return ARCH.get(m, m)
