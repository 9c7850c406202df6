"""Server-side apply: field sets, ownership and the apply merge. Pure data, no I/O.

An object's *field set* is the set of paths it sets, walked with the kind's
schema (``_apischema.py``) the way structured-merge-diff names them: ``f:name``
a field, ``k:{"name":"app"}`` an element of a list merged by key, ``v:"x"`` a
value of a set-like list. Atomic values (scalars, plain lists, fields an open
object does not describe) are one path each. Maps (labels) and keyed
elements are paths themselves too (``.`` in FieldsV1); a described struct is
only its fields.

``metadata.managedFields`` records, per manager and operation (``Apply`` or
``Update``), the paths it owns, in Kubernetes' FieldsV1 form. ``apply`` merges an
applied configuration into the live object: conflicts are the changed fields
another manager owns (unless forced, then the applier takes them), and what the
applier owned before but omits now is removed unless someone else owns it.
``record_update`` gives an ordinary write's changed fields to its manager.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._apischema import KIND_SCHEMAS, Schema
from ._errors import GatewayError

__all__ = [
    "LAST_APPLIED",
    "ApplyConflict",
    "Path",
    "SsaError",
    "apply",
    "conflict_message",
    "field_set",
    "fields_v1",
    "path_text",
    "record_update",
    "without_managed_fields",
]

Path = tuple[str, ...]

# Fields nobody owns: identity and what the server sets (as Kubernetes strips them).
_IGNORED: Final = frozenset(
    {
        ("f:apiVersion",),
        ("f:kind",),
        ("f:status",),
        ("f:metadata", "f:name"),
        ("f:metadata", "f:namespace"),
        ("f:metadata", "f:uid"),
        ("f:metadata", "f:resourceVersion"),
        ("f:metadata", "f:generation"),
        ("f:metadata", "f:creationTimestamp"),
        ("f:metadata", "f:deletionTimestamp"),
        ("f:metadata", "f:managedFields"),
        ("f:metadata", "f:selfLink"),
    }
)
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"
_NODE: Final = object()  # the "value" of a map or keyed element: present, compared by presence


class SsaError(GatewayError):
    """An applied configuration that cannot be merged (e.g. a keyed element without its key)."""


class ApplyConflict(GatewayError):
    """Fields another manager owns that the apply would change."""

    def __init__(self, conflicts: tuple[tuple[str, str, Path], ...]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts  # (manager, its apiVersion, path), sorted

    def __str__(self) -> str:
        n = len(self.conflicts)
        texts = [conflict_message(*c) for c in self.conflicts]
        if n == 1:
            return f"Apply failed with 1 conflict: {texts[0]}"
        return f"Apply failed with {n} conflicts: " + "\n".join(texts)


def conflict_message(manager: str, api_version: str, path: Path) -> str:
    """As Kubernetes words it: ``conflict with "m" using v1: .spec.x``."""
    using = f" using {api_version}" if api_version else ""
    return f"conflict with {json.dumps(manager)}{using}: {path_text(path)}"


def _key_text(item: Mapping[str, Any], key: str) -> str:
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"), sort_keys=True)


def _value_text(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"), sort_keys=True)


def path_text(path: Path) -> str:
    """``.spec.containers[name="app"].image``, as Kubernetes names a field in a conflict."""
    out = ""
    for part in path:
        tag, rest = part[:1], part[2:]
        if tag == "f":
            out += "." + rest
        elif tag == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(rest).items()) + "]"
        elif tag == "v":
            out += f"[={rest}]"
        else:
            out += "." + part
    return out


# ---- field sets --------------------------------------------------------------------


def _child(schema: Schema | None, key: str) -> Schema | None:
    if schema is None:
        return None
    found = schema.properties.get(key)
    if found is not None:
        return found
    return schema.values


def _walk(value: Any, schema: Schema | None, path: Path, out: dict[Path, Any]) -> None:
    if schema is not None and isinstance(value, dict) and schema.type == "object":
        if schema.values is not None and not schema.properties:  # a map: itself and its keys
            out[path] = _NODE
        elif not value:  # an empty struct is set as a whole
            out[path] = {}
            return
        for k, v in value.items():
            sub = _child(schema, k)
            p = (*path, f"f:{k}")
            if sub is None:  # undescribed in an open object: atomic
                out[p] = v
            else:
                _walk(v, sub, p, out)
        return
    if schema is not None and isinstance(value, list) and schema.merge:
        key = schema.merge_key
        out[path] = _NODE
        if key is None:
            for item in value:
                out[(*path, _value_text(item))] = item
            return
        for item in value:
            if not isinstance(item, dict) or item.get(key) is None:
                raise SsaError(f"{path_text(path)}: an element has no {key!r}, its merge key")
            p = (*path, _key_text(item, key))
            out[p] = _NODE
            _walk(item, schema.items, p, out)
        return
    out[path] = value


def _values(obj: Mapping[str, Any], kind: str) -> dict[Path, Any]:
    """Every path ``obj`` sets (ignored ones left out), with its value (maps and
    keyed elements: a marker)."""
    out: dict[Path, Any] = {}
    _walk(dict(obj), KIND_SCHEMAS.get(kind), (), out)
    out.pop((), None)
    for p in list(out):
        if p[:2] in _IGNORED or p[:1] in _IGNORED:
            del out[p]
    return out


def field_set(obj: Mapping[str, Any], kind: str) -> frozenset[Path]:
    return frozenset(_values(obj, kind))


def _changed(old: Mapping[Path, Any], new: Mapping[Path, Any]) -> set[Path]:
    missing = object()
    return {p for p, v in new.items() if old.get(p, missing) is not v and old.get(p, missing) != v}


# ---- FieldsV1 ----------------------------------------------------------------------


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The FieldsV1 tree of a set of paths (``.``: the node itself is in the set)."""
    ps = sorted(set(paths))  # a stable order: the same set, the same document
    root: dict[str, Any] = {}
    for p in ps:
        node = root
        for part in p:
            node = node.setdefault(part, {})
    for p in ps:  # a member with members below it says so first, with "."
        parent = root
        for part in p[:-1]:
            parent = parent[part]
        node = parent[p[-1]]
        if node and "." not in node:
            parent[p[-1]] = {".": {}, **node}
    return root


def _well_formed(part: str) -> bool:
    tag = part[:2]
    if tag == "f:":
        return True
    if tag not in ("k:", "v:"):
        return False
    try:
        value = json.loads(part[2:])
    except ValueError:
        return False
    return tag == "v:" or (isinstance(value, dict) and bool(value))


def _paths_of(tree: Any, prefix: Path = ()) -> set[Path]:
    """The paths of a FieldsV1 tree; parts that name nothing (a client may send
    any managedFields) are left out."""
    out: set[Path] = set()
    if not isinstance(tree, dict):
        return out
    if not tree and prefix:
        out.add(prefix)
    for k, v in tree.items():
        if k == ".":
            if prefix:
                out.add(prefix)
        elif isinstance(k, str) and _well_formed(k):
            out |= _paths_of(v, (*prefix, k))
    return out


@dataclass(slots=True)
class _Entry:
    manager: str
    operation: str
    api_version: str
    time: str
    paths: set[Path]
    subresource: str = ""


def _managed(obj: Mapping[str, Any]) -> Any:
    meta = obj.get("metadata")
    return meta.get("managedFields") if isinstance(meta, dict) else None


def _entries(obj: Mapping[str, Any]) -> list[_Entry]:
    raw = _managed(obj)
    out: list[_Entry] = []
    for e in raw if isinstance(raw, list) else []:
        if not isinstance(e, dict) or not isinstance(e.get("manager"), str):
            continue
        out.append(
            _Entry(
                e["manager"],
                str(e.get("operation", "Update")),
                str(e.get("apiVersion", "")),
                str(e.get("time", "")),
                _paths_of(e.get("fieldsV1", {})),
                str(e.get("subresource", "")),
            )
        )
    return out


def _encode(entries: list[_Entry]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        if not e.paths:
            continue
        d: dict[str, Any] = {
            "manager": e.manager,
            "operation": e.operation,
            "apiVersion": e.api_version,
            "time": e.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(e.paths),
        }
        if e.subresource:
            d["subresource"] = e.subresource
        out.append(d)
    return out


def _with_entries(obj: dict[str, Any], entries: list[_Entry]) -> dict[str, Any]:
    meta = dict(obj.get("metadata") or {})
    encoded = _encode(entries)
    if encoded:
        meta["managedFields"] = encoded
    else:
        meta.pop("managedFields", None)
    return {**obj, "metadata": meta}


def without_managed_fields(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """``obj`` without ``metadata.managedFields`` (what boards are sent)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


# ---- navigating and editing objects by path ---------------------------------------


def _find(items: list[Any], part: str) -> int | None:
    tag, rest = part[:1], json.loads(part[2:])
    for i, item in enumerate(items):
        if tag == "v" and item == rest:
            return i
        if tag == "k" and isinstance(item, dict) and all(item.get(k) == v for k, v in rest.items()):
            return i
    return None


def _remove(obj: Any, path: Path) -> None:
    """Delete the field or element at ``path`` if it is there."""
    node = obj
    for part in path[:-1]:
        if isinstance(node, dict) and part.startswith("f:"):
            node = node.get(part[2:])
        elif isinstance(node, list):
            i = _find(node, part)
            node = None if i is None else node[i]
        else:
            return
        if node is None:
            return
    last = path[-1]
    if isinstance(node, dict) and last.startswith("f:"):
        node.pop(last[2:], None)
    elif isinstance(node, list):
        i = _find(node, last)
        if i is not None:
            del node[i]


def _is_key(path: Path) -> bool:
    """Is ``path`` the key field of a keyed element (which stays while the element does)?"""
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    return path[-1][2:] in json.loads(path[-2][2:])


def _merge(live: Any, config: Any, schema: Schema | None) -> Any:
    """``config`` merged into ``live``: structs and maps field by field, keyed and
    set-like lists element by element (new ones appended), everything else replaced."""
    if isinstance(live, dict) and isinstance(config, dict) and schema is not None:
        if schema.type == "object":
            out = dict(live)
            for k, v in config.items():
                sub = _child(schema, k)
                out[k] = v if sub is None or k not in live else _merge(live[k], v, sub)
            return out
    if isinstance(live, list) and isinstance(config, list) and schema is not None and schema.merge:
        out_list = list(live)
        key = schema.merge_key
        for item in config:
            part = _value_text(item) if key is None else _key_text(item, key)
            i = _find(out_list, part)
            if i is None:
                out_list.append(item)
            elif key is not None:
                out_list[i] = _merge(out_list[i], item, schema.items)
        return out_list
    return config


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# ---- the operations ----------------------------------------------------------------


def apply(
    live: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    kind: str,
    manager: str,
    *,
    force: bool,
    now: str,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``config`` to ``live`` (None: absent),
    with its managedFields updated. Raises ApplyConflict (not forced) or SsaError."""
    schema = KIND_SCHEMAS.get(kind)
    wanted: dict[str, Any] = _drop_nulls({k: v for k, v in config.items() if k != "status"})
    cfg_meta = wanted.get("metadata")
    if isinstance(cfg_meta, dict):
        wanted["metadata"] = {k: v for k, v in cfg_meta.items() if k != "managedFields"}
    base: dict[str, Any] = copy.deepcopy(dict(live)) if live is not None else {}
    entries = _entries(base)
    applied = field_set(wanted, kind)
    mine = next((e for e in entries if e.manager == manager and e.operation == "Apply"), None)
    others = [e for e in entries if e is not mine]
    owned_by_others: set[Path] = set().union(*(e.paths for e in others))

    # what this manager applied before and omits now goes, unless others own it
    if mine is not None:
        gone = {
            p
            for p in mine.paths - applied
            if not any(q[: len(p)] == p for q in owned_by_others) and not _is_key(p)
        }
        for p in gone:
            if not any(p[:i] in gone for i in range(1, len(p))):  # the topmost ones
                _remove(base, p)

    merged = _merge(base, wanted, schema)
    before = _values(live or {}, kind)
    after = _values(merged, kind)
    changed = _changed(before, after)
    conflicts = sorted(
        {(e.manager, e.api_version, p) for e in others for p in e.paths & changed & applied}
    )
    if conflicts and not force and manager == "kubectl":
        # As Kubernetes does for kubectl moving an object from client-side
        # apply: fields the last-applied annotation holds, with the live
        # values, are kubectl's own and do not conflict.
        allowed = _last_applied(live or {}, kind, before)
        conflicts = [c for c in conflicts if c[2] not in allowed]
        force = not conflicts
    if conflicts and not force:
        raise ApplyConflict(tuple(conflicts))
    for e in others:
        if force:
            e.paths -= changed & applied
        e.paths &= after.keys()
    api_version = str(merged.get("apiVersion", ""))
    new_mine = _Entry(manager, "Apply", api_version, now, set(applied & after.keys()))
    kept = list(others)
    if mine is None:
        kept.append(new_mine)
    else:
        kept.insert(entries.index(mine), new_mine)
    return _with_entries(merged, kept)


def _last_applied(live: Mapping[str, Any], kind: str, values: Mapping[Path, Any]) -> set[Path]:
    """The paths of ``live``'s last-applied annotation whose values it shares with ``live``."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    try:
        last = json.loads(annotations.get(LAST_APPLIED, ""))
        if not isinstance(last, dict) or last.get("apiVersion") != live.get("apiVersion"):
            return set()
        then = _values(last, kind)
    except (TypeError, ValueError, SsaError):
        return set()
    missing = object()
    return {p for p, v in then.items() if values.get(p, missing) == v}


def record_update(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], kind: str, manager: str, *, now: str
) -> dict[str, Any]:
    """``new`` (an ordinary write of ``old``) with ``manager``'s Update entry owning
    the fields the write changed, taken from the other managers. Writes that
    change nothing leave managedFields as they were. A write that sends other
    managedFields than the object has sets them (as Kubernetes lets clients do:
    kubectl moves client-side apply's fields to its server-side manager so).
    """
    sent = _managed(new)
    entries = _entries(new if sent is not None and sent != _managed(old or {}) else old or {})
    before = _values(old or {}, kind)
    try:
        after = _values(new, kind)
    except SsaError:  # a keyed list a plain write left without keys: validation says so
        return _with_entries(dict(new), entries)
    changed = _changed(before, after)
    for e in entries:
        e.paths -= changed
        e.paths &= after.keys()
    if changed:
        mine = next((e for e in entries if e.manager == manager and e.operation == "Update"), None)
        if mine is None:
            mine = _Entry(manager, "Update", str(new.get("apiVersion", "")), now, set())
            entries.append(mine)
        mine.paths |= changed
        mine.time = now
    return _with_entries(dict(new), entries)
