"""Patches as the Kubernetes API applies them: JSON merge patch (RFC 7386),
JSON patch (RFC 6902, through the ``jsonpatch`` library) and strategic merge
patch, with the patch strategies and merge keys of the kinds edgeflock serves.

Strategic merge patch is a merge patch that knows, per field, whether a list is
replaced whole (the default) or merged element by element: lists of objects by a
merge key (``containers`` by ``name``, ``ports`` by ``containerPort``, ...), lists
of strings as sets (``finalizers``). It adds directives: ``$patch``
(``replace``/``delete``/``merge``, on a map or as a list element),
``$retainKeys`` (keep only these keys of the original map),
``$setElementOrder/<list>`` (the order of a merged list) and
``$deleteFromPrimitiveList/<list>`` (values to remove from a set-like list).
Which lists merge, and by which key, is read from the API's schemas
(``_apischema``), where it is transcribed from the ``patchStrategy`` and
``patchMergeKey`` tags of Kubernetes' types.

Pure functions over JSON values: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

from ._apischema import KIND_SCHEMAS, Schema
from ._errors import GatewayError

__all__ = [
    "PatchError",
    "apply_json_patch",
    "apply_strategic_merge_patch",
    "create_strategic_merge_patch",
    "merge_patch",
    "patch_schema_for",
]


class PatchError(GatewayError):
    """A patch that cannot be applied: a bad directive, a missing merge key, a
    failed JSON patch test or path (the API answers 422)."""


# ---- merge keys, from the API's schemas --------------------------------------------


def patch_schema_for(kind: str) -> Schema | None:
    """The schema whose merge keys apply to objects of ``kind`` (None: no
    merged lists, a strategic patch acts as a merge patch)."""
    return KIND_SCHEMAS.get(kind)


def _field(schema: Schema | None, key: str) -> Schema | None:
    if schema is None:
        return None
    if schema.values is not None:
        return schema.values
    return schema.properties.get(key)


def _merged(field: Schema | None) -> bool:
    return field is not None and field.type == "array" and field.merge


def _items(field: Schema | None) -> Schema | None:
    return field.items if field is not None else None


# ---- JSON merge patch ------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` deletes,
    anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---- JSON patch ------------------------------------------------------------------


def apply_json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902: ``ops`` is a list of operations. Errors name the failing one."""
    import jsonpatch  # only the API's patch path needs it
    import jsonpointer

    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        return jsonpatch.JsonPatch(ops).apply(target)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"JSON patch test failed: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(f"invalid JSON patch: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PatchError(f"invalid JSON patch: {exc!r}") from None


# ---- strategic merge patch: apply ------------------------------------------------

_PATCH: Final = "$patch"
_RETAIN: Final = "$retainKeys"
_ORDER: Final = "$setElementOrder/"
_DELETE_PRIMITIVE: Final = "$deleteFromPrimitiveList/"


class _Deleted:
    __slots__ = ()


_DELETED: Final = _Deleted()


def apply_strategic_merge_patch(original: Any, patch: Any, kind: str) -> dict[str, Any]:
    """``patch`` applied to ``original`` (an object of ``kind``) as the API server
    applies a strategic merge patch. The inputs are not modified."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    out = _apply_map(original if isinstance(original, dict) else {}, patch, patch_schema_for(kind))
    return {} if out is _DELETED else out


def _apply_map(original: dict[str, Any], patch: dict[str, Any], schema: Schema | None) -> Any:
    directive = patch.get(_PATCH)
    if directive == "delete":
        return _DELETED
    if directive == "replace":
        original = {}
    elif directive not in (None, "merge"):
        raise PatchError(f"unknown $patch directive {directive!r} in a map")
    out = dict(original)
    retain = patch.get(_RETAIN)
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise PatchError("$retainKeys must be a list of field names")
        missing = [k for k, v in patch.items() if not k.startswith("$") and v is not None]
        missing = [k for k in missing if k not in retain]
        if missing:
            raise PatchError(f"$retainKeys {retain} does not contain the patched keys {missing}")
        out = {k: v for k, v in out.items() if k in retain}
    orders: dict[str, Any] = {}
    removals: dict[str, Any] = {}
    for k, v in patch.items():
        if k in (_PATCH, _RETAIN):
            continue
        if k.startswith(_ORDER):
            orders[k[len(_ORDER) :]] = v
            continue
        if k.startswith(_DELETE_PRIMITIVE):
            removals[k[len(_DELETE_PRIMITIVE) :]] = v
            continue
        if k.startswith("$"):
            raise PatchError(f"unknown patch directive {k!r}")
        field = _field(schema, k)
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            cur = out.get(k)
            merged = _apply_map(cur if isinstance(cur, dict) else {}, v, field)
            if merged is _DELETED:
                out.pop(k, None)
            else:
                out[k] = merged
        elif isinstance(v, list) and field is not None and _merged(field):
            cur = out.get(k)
            out[k] = _apply_list(cur if isinstance(cur, list) else [], v, field, k)
        elif isinstance(v, list):
            out[k] = [_strip(e, _items(field)) for e in v]
        else:
            out[k] = v
    for name, values in removals.items():
        if not isinstance(values, list):
            raise PatchError(f"{_DELETE_PRIMITIVE}{name} must be a list")
        cur = out.get(name)
        if isinstance(cur, list):
            out[name] = [x for x in cur if x not in values]
    for name, order in orders.items():
        if not isinstance(order, list):
            raise PatchError(f"{_ORDER}{name} must be a list")
        field = _field(schema, name)
        cur = out.get(name)
        if isinstance(cur, list) and field is not None and _merged(field):
            out[name] = _ordered(cur, order, original.get(name), field.merge_key, name)
    return out


def _strip(value: Any, schema: Schema | None) -> Any:
    """A value from a patch that replaces: its directives applied against nothing."""
    if isinstance(value, dict):
        r = _apply_map({}, value, schema)
        return {} if r is _DELETED else r
    return value


def _element_key(item: Any, key: str, name: str) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise PatchError(f"an element of {name} does not contain its merge key {key!r}")
    return item[key]


def _apply_list(original: list[Any], patch: list[Any], field: Schema, name: str) -> list[Any]:
    key, element = field.merge_key, field.items
    if key is None:  # a set of primitives: union, in order
        if any(isinstance(x, dict) for x in patch):
            if {_PATCH: "replace"} in patch:
                return [x for x in patch if x != {_PATCH: "replace"}]
            raise PatchError(f"{name} is a list of values, not of objects")
        out = list(original)
        out += [x for x in patch if x not in original]
        return out
    if any(isinstance(x, dict) and x.get(_PATCH) == "replace" for x in patch):
        return [_strip(x, element) for x in patch if not (isinstance(x, dict) and _PATCH in x)]
    out = list(original)
    index: dict[Any, int] = {}
    for i, item in enumerate(out):
        if isinstance(item, dict) and key in item:
            index.setdefault(_hashable(item[key]), i)
    removed: set[int] = set()
    for item in patch:
        k = _hashable(_element_key(item, key, name))
        directive = item.get(_PATCH)
        if directive == "delete":
            if k in index:
                removed.add(index[k])
            continue
        if directive not in (None, "merge"):
            raise PatchError(f"unknown $patch directive {directive!r} in {name}")
        if k in index and index[k] not in removed:
            merged = _apply_map(out[index[k]], item, element)
            out[index[k]] = merged
        else:
            index[k] = len(out)
            removed.discard(index[k])
            out.append(_strip(item, element))
    return [x for i, x in enumerate(out) if i not in removed and x is not _DELETED]


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else (type(value).__name__, value)


def _ordered(
    items: list[Any], order: list[Any], server: Any, key: str | None, name: str
) -> list[Any]:
    """``items`` in the order ``$setElementOrder`` gives; items it does not name
    (the server's own) keep their place relative to the server's order."""

    def ident(x: Any) -> Any:
        return _hashable(_element_key(x, key, name) if key is not None else x)

    wanted: dict[Any, int] = {}
    for i, o in enumerate(order):
        wanted.setdefault(ident(o), i)
    server_pos: dict[Any, int] = {}
    for i, x in enumerate(server if isinstance(server, list) else []):
        if key is None or (isinstance(x, dict) and key in x):
            server_pos.setdefault(ident(x), i)
    named = sorted((x for x in items if ident(x) in wanted), key=lambda x: wanted[ident(x)])
    others = [x for x in items if ident(x) not in wanted]
    out: list[Any] = []
    i = j = 0
    while i < len(others) or j < len(named):
        if j >= len(named):
            out.append(others[i])
            i += 1
        elif i >= len(others):
            out.append(named[j])
            j += 1
        else:
            a, b = server_pos.get(ident(others[i])), server_pos.get(ident(named[j]))
            if a is not None and b is not None and a < b:
                out.append(others[i])
                i += 1
            else:
                out.append(named[j])
                j += 1
    return out


# ---- strategic merge patch: create (two-way) -------------------------------------


def create_strategic_merge_patch(original: Any, modified: Any, kind: str) -> dict[str, Any]:
    """The strategic merge patch that turns ``original`` into ``modified`` (as
    kubectl computes one): changed keys, ``null`` for removed ones, merged lists
    as element patches with ``$patch: delete`` for removed elements and
    ``$setElementOrder`` for their order."""
    if not isinstance(original, dict) or not isinstance(modified, dict):
        raise PatchError("both objects must be JSON objects")
    return _diff_map(original, modified, patch_schema_for(kind))


def _diff_map(
    original: dict[str, Any], modified: dict[str, Any], schema: Schema | None
) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for k in original:
        if k not in modified:
            patch[k] = None
    for k, new in modified.items():
        old = original.get(k, _DELETED)
        if old == new and type(old) is type(new):
            continue
        field = _field(schema, k)
        if isinstance(old, dict) and isinstance(new, dict):
            sub = _diff_map(old, new, field)
            if sub:
                patch[k] = sub
        elif isinstance(old, list) and isinstance(new, list) and field and _merged(field):
            _diff_list(patch, k, old, new, field)
        elif isinstance(new, dict) and old is not _DELETED:
            patch[k] = {**new, _PATCH: "replace"}
        else:
            patch[k] = new
    return patch


def _diff_list(
    patch: dict[str, Any], name: str, old: list[Any], new: list[Any], field: Schema
) -> None:
    key = field.merge_key
    if key is None:
        added = [x for x in new if x not in old]
        gone = [x for x in old if x not in new]
        if added:
            patch[name] = added
        if gone:
            patch[_DELETE_PRIMITIVE + name] = gone
        patch[_ORDER + name] = list(new)
        return
    by_key = {_hashable(x.get(key)): x for x in old if isinstance(x, dict)}
    new_keys = {_hashable(x.get(key)) for x in new if isinstance(x, dict)}
    elements: list[Any] = []
    for item in new:
        prev = by_key.get(_hashable(item.get(key)))
        if prev is None:
            elements.append(item)
            continue
        sub = _diff_map(prev, item, field.items)
        if sub:
            elements.append({**sub, key: item[key]})
    for item in old:
        if isinstance(item, dict) and _hashable(item.get(key)) not in new_keys:
            elements.append({key: item[key], _PATCH: "delete"})
    if elements:
        patch[name] = elements
    patch[_ORDER + name] = [{key: x[key]} for x in new]
