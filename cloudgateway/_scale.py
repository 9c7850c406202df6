"""The ``scale`` subresource of Deployments and ReplicaSets: an
``autoscaling/v1`` ``Scale`` object made from the workload (what ``kubectl
scale`` reads and writes) and the replica count a written Scale asks for.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ._appsvalidate import selector_text
from ._validate import Cause, Invalid

__all__ = ["SCALE_API_VERSION", "scale_of", "scaled_replicas"]

SCALE_API_VERSION = "autoscaling/v1"
_META_FIELDS = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The Scale of a workload: its ``spec.replicas`` (default 1), the
    replicas its status counts, and its selector as a label selector string."""
    meta = _dict(obj.get("metadata"))
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    replicas = spec.get("replicas", 1)
    selector = spec.get("selector")
    out_status: dict[str, Any] = {"replicas": status.get("replicas", 0)}
    if isinstance(selector, dict):
        out_status["selector"] = selector_text(selector)
    return {
        "kind": "Scale",
        "apiVersion": SCALE_API_VERSION,
        "metadata": {k: meta[k] for k in _META_FIELDS if k in meta},
        "spec": {"replicas": replicas},
        "status": out_status,
    }


def scaled_replicas(name: str, scale: Any) -> int:
    """The replicas a written Scale asks for, or ``Invalid`` (as Kubernetes
    answers: ``spec.replicas`` a whole number, at least 0)."""
    if not isinstance(scale, dict):
        raise Invalid("Scale", name, [Cause("", "FieldValueInvalid", "must be an object")])
    meta = scale.get("metadata")
    if isinstance(meta, dict) and meta.get("name") not in (None, name):
        raise Invalid(
            "Scale",
            name,
            [
                Cause(
                    "metadata.name",
                    "FieldValueInvalid",
                    f"{meta.get('name')!r} does not match the name in the URL ({name!r})",
                )
            ],
        )
    spec = scale.get("spec")
    replicas = spec.get("replicas", 0) if isinstance(spec, dict) else 0
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise Invalid(
            "Scale",
            name,
            [Cause("spec.replicas", "FieldValueInvalid", "must be a whole number")],
        )
    if replicas < 0:
        raise Invalid(
            "Scale",
            name,
            [
                Cause(
                    "spec.replicas",
                    "FieldValueInvalid",
                    f"Invalid value: {replicas}: must be greater than or equal to 0",
                )
            ],
        )
    return replicas
