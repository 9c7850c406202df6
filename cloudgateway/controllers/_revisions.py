"""Template hashes and ControllerRevisions as Kubernetes writes them for a
DaemonSet, so ``kubectl rollout history|undo ds/NAME`` work unchanged (pure).

- The hash: FNV-32a over the template (canonical JSON here; Kubernetes hashes
  its Go struct dump, so the values differ but look alike), then the
  collision count, printed in decimal and mapped onto Kubernetes' safe
  alphabet (``rand.SafeEncodeString``): up to ten of ``bcdfghjklmnpqrstvwxz2456789``.
- A revision: ``<ds>-<hash>``, labels = the template's + ``controller-revision-hash``,
  annotations = the DaemonSet's, controller ownerReference, ``data`` = the
  strategic merge patch that puts the template back
  (``{"spec": {"template": {..., "$patch": "replace"}}}``), and ``revision``.
  ``kubectl rollout undo`` applies that patch to the DaemonSet.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HASH_LABEL",
    "SAFE_ALPHABET",
    "TEMPLATE_GENERATION_LABEL",
    "controller_ref",
    "revision_number",
    "revision_object",
    "revision_patch",
    "revision_template",
    "safe_encode",
    "template_hash",
]

HASH_LABEL = "controller-revision-hash"
TEMPLATE_GENERATION_LABEL = "pod-template-generation"
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def _fnv32a(data: bytes, h: int = _FNV_OFFSET) -> int:
    for b in data:
        h ^= b
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """Kubernetes' ``rand.SafeEncodeString``: each byte onto the safe alphabet."""
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in text.encode())


def template_hash(template: Any, collision_count: int = 0) -> str:
    h = _fnv32a(json.dumps(template, sort_keys=True, separators=(",", ":")).encode())
    if collision_count:
        h = _fnv32a(collision_count.to_bytes(4, "little"), h)
    return safe_encode(str(h))


def controller_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner.get("metadata") or {}
    return {
        "apiVersion": str(owner.get("apiVersion") or "apps/v1"),
        "kind": str(owner.get("kind") or "DaemonSet"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def revision_patch(template: Any) -> dict[str, Any]:
    t = copy.deepcopy(template) if isinstance(template, dict) else {}
    t["$patch"] = "replace"
    return {"spec": {"template": t}}


def revision_template(cr: Mapping[str, Any]) -> dict[str, Any] | None:
    """The template a revision puts back (None if it holds none)."""
    data = cr.get("data")
    spec = data.get("spec") if isinstance(data, Mapping) else None
    t = spec.get("template") if isinstance(spec, Mapping) else None
    if not isinstance(t, Mapping):
        return None
    return {k: v for k, v in t.items() if k != "$patch"}


def revision_number(cr: Mapping[str, Any]) -> int:
    n = cr.get("revision")
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def revision_object(ds: Mapping[str, Any], hash_: str, revision: int) -> dict[str, Any]:
    meta = ds.get("metadata") or {}
    spec = ds.get("spec") or {}
    template = spec.get("template") or {}
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels[HASH_LABEL] = hash_
    out_meta: dict[str, Any] = {
        "name": f"{meta.get('name')}-{hash_}",
        "namespace": meta.get("namespace") or "default",
        "labels": labels,
        "ownerReferences": [controller_ref(ds)],
    }
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping) and annotations:
        out_meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": out_meta,
        "data": revision_patch(template),
        "revision": revision,
    }
