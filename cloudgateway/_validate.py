"""Validation of Kubernetes objects written through the API. Pure: no I/O.

``validate`` returns a normalized copy (apiVersion/kind defaulted, namespace set
for namespaced kinds, a Secret's ``stringData`` folded into ``data``) or raises
``Invalid`` listing every problem found, each with the field path Kubernetes
would name (``spec.containers[0].image``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._apischema import KIND_SCHEMAS, Schema
from ._appsvalidate import APPS_CHECKS, APPS_UPDATE_CHECKS
from ._errors import GatewayError

__all__ = [
    "FORMATS",
    "MAX_DEPTH",
    "MAX_OBJECT_BYTES",
    "Cause",
    "Invalid",
    "validate",
    "validate_update",
]

MAX_OBJECT_BYTES = 1 << 20  # etcd's default request limit is 1.5 MiB; stay under it
MAX_DEPTH = 64  # nesting of objects and arrays; real manifests stay far below this

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
DUPLICATE = "FieldValueDuplicate"
NOT_SUPPORTED = "FieldValueNotSupported"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL = re.compile(_DNS_LABEL)
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_PERCENT = re.compile(r"[0-9]+%")


@dataclass(frozen=True, slots=True)
class Cause:
    field: str  # "spec.containers[0].image"; "" for the object as a whole
    reason: str  # FieldValueRequired | FieldValueInvalid | FieldValueDuplicate | ...
    message: str


class Invalid(GatewayError):
    """The object failed validation; ``causes`` says where and why."""

    def __init__(self, kind: str, name: str, causes: list[Cause]) -> None:
        detail = "; ".join(f"{c.field or '<object>'}: {c.message}" for c in causes)
        super().__init__(f'{kind} "{name}" is invalid: {detail}')
        self.kind = kind
        self.name = name
        self.causes = causes


class _Causes:
    def __init__(self) -> None:
        self.items: list[Cause] = []

    def bad(self, field: str, message: str, reason: str = INVALID) -> None:
        self.items.append(Cause(field, reason, message))

    def required(self, field: str, message: str = "Required value") -> None:
        self.bad(field, message, REQUIRED)


def is_subdomain(v: Any) -> bool:
    """A DNS-1123 subdomain: object names, node names."""
    return isinstance(v, str) and 0 < len(v) <= 253 and _SUBDOMAIN.fullmatch(v) is not None


def is_dns_label(v: Any) -> bool:
    """A DNS-1123 label: namespaces, container names."""
    return isinstance(v, str) and 0 < len(v) <= 63 and _LABEL.fullmatch(v) is not None


def is_qualified_name(k: Any) -> bool:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain."""
    if not isinstance(k, str) or not k:
        return False
    prefix, slash, name = k.rpartition("/")
    if slash and not is_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def is_label_value(v: Any) -> bool:
    return isinstance(v, str) and (
        v == "" or (len(v) <= 63 and _QUALIFIED_NAME.fullmatch(v) is not None)
    )


def _too_deep(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((c, depth + 1) for c in children)
    return False


def validate(
    resource: edgeproto.Resource,
    obj: Any,
    *,
    namespace: str | None,
    name: str | None,
    unknown: list[str] | None = None,
) -> dict[str, Any]:
    """A normalized copy of ``obj`` as a ``resource`` object, or ``Invalid``.

    ``namespace`` and ``name`` are the ones in the request URL (None when the
    URL has none); the object's own must agree with them. The object is checked
    against its kind's schema (``_apischema``); fields the schema does not know
    are dropped, as a Kubernetes API server drops them, and their paths appended
    to ``unknown`` when a list is given (for ``fieldValidation``)."""
    kind = resource.kind
    if not isinstance(obj, dict):
        raise Invalid(kind, name or "", [Cause("", INVALID, "the object must be a JSON object")])
    if _too_deep(obj, MAX_DEPTH):
        raise Invalid(kind, name or "", [Cause("", INVALID, f"nested deeper than {MAX_DEPTH}")])
    out = copy.deepcopy(obj)
    causes = _Causes()

    out.setdefault("apiVersion", resource.api_version)
    out.setdefault("kind", kind)
    if out["apiVersion"] != resource.api_version:
        causes.bad("apiVersion", f"must be {resource.api_version!r} for {resource.name}")
    if out["kind"] != kind:
        causes.bad("kind", f"must be {kind!r} for {resource.name}")
    meta = out.get("metadata")
    if meta is None:
        meta = out["metadata"] = {}
    if not isinstance(meta, dict):
        raise Invalid(kind, name or "", [Cause("metadata", INVALID, "must be an object")])
    oname = meta.get("name")
    if oname is None and name:
        oname = meta["name"] = name
    if oname is None or oname == "":
        causes.required("metadata.name", "name is required")
    elif not is_subdomain(oname):
        causes.bad(
            "metadata.name",
            f"{oname!r}: must be a lowercase DNS-1123 subdomain (a-z, 0-9, '-', '.'; "
            "at most 253 characters, starting and ending with an alphanumeric)",
        )
    elif name is not None and oname != name:
        causes.bad("metadata.name", f"{oname!r} does not match the name in the URL ({name!r})")
    if resource.namespaced:
        ns = meta.get("namespace")
        if ns is None or ns == "":
            meta["namespace"] = ns = namespace or "default"
        if not is_dns_label(ns):
            causes.bad("metadata.namespace", f"{ns!r} is not a valid namespace (a DNS-1123 label)")
        elif namespace is not None and ns != namespace:
            causes.bad(
                "metadata.namespace",
                f"{ns!r} does not match the namespace in the URL ({namespace!r})",
            )
    else:
        meta.pop("namespace", None)
    status = out.get("status")
    if status is not None and not isinstance(status, dict):
        causes.bad("status", "must be an object")
    found: list[tuple[dict[str, Any], str, str]] = []
    schema = KIND_SCHEMAS.get(kind)
    if schema is not None:
        _walk(schema, out, "", causes, found)
    for parent, key, path in found:
        parent.pop(key, None)
        if unknown is not None:
            unknown.append(path)
    check = _CHECKS.get(kind)
    if check is not None:
        check(out, causes)
    apps_check = APPS_CHECKS.get(kind)
    if apps_check is not None:
        for field, reason, message in apps_check(out):
            causes.bad(field, message, reason)
    try:
        text = json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        causes.bad("", f"not representable as JSON: {exc}")
    else:
        if size > MAX_OBJECT_BYTES:
            causes.bad("", f"the object is {size} bytes; the limit is {MAX_OBJECT_BYTES}")
    if causes.items:
        raise Invalid(kind, oname if isinstance(oname, str) else (name or ""), causes.items)
    return out


def validate_update(resource: edgeproto.Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """``Invalid`` if ``new`` (a validated object) changes what may not change
    in ``old`` (the stored one): a workload's selector, a revision's data."""
    check = APPS_UPDATE_CHECKS.get(resource.kind)
    if check is None:
        return
    causes = [Cause(field, reason, message) for field, reason, message in check(old, new)]
    if causes:
        name = (new.get("metadata") or {}).get("name")
        raise Invalid(resource.kind, name if isinstance(name, str) else "", causes)


# ---- the schema walk ---------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "a boolean",
}
_PROPERTY_TYPES = ("int", "float", "double", "string", "boolean", "bytes", "stream")


def _is_base64(v: str) -> bool:
    try:
        base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


Check = Callable[[Any], tuple[str, str] | None]  # value -> (reason, message) or None


def _rule(ok: Callable[[Any], bool], message: str, reason: str = INVALID) -> Check:
    return lambda v: None if ok(v) else (reason, message.format(v=v))


def _env_name(v: Any) -> tuple[str, str] | None:
    if not v:
        return REQUIRED, "name is required"
    return (INVALID, f"{v!r}: must not contain '='") if "=" in v else None


def _property_name(v: Any) -> tuple[str, str] | None:
    if not v:
        return REQUIRED, "name is required"
    if len(v) > 128 or "/" in v or "#" in v or "+" in v:
        return INVALID, f"{v!r}: at most 128 characters, no '/', '#' or '+'"
    return None


FORMATS: dict[str, Check] = {
    "label-value": _rule(
        is_label_value,
        "{v!r}: a label value is at most 63 characters of alphanumerics, '-', '_' or '.', "
        "starting and ending with an alphanumeric",
    ),
    "qualified-name": _rule(
        is_qualified_name,
        "{v!r}: keys are [prefix/]name, name at most 63 characters of alphanumerics, "
        "'-', '_' or '.', starting and ending with an alphanumeric",
    ),
    "data-key": _rule(
        lambda k: len(k) <= 253 and _DATA_KEY.fullmatch(k) is not None,
        "{v!r}: a key is at most 253 characters of alphanumerics, '-', '_' or '.'",
    ),
    "base64": _rule(_is_base64, "value must be valid base64"),
    "dns-label": _rule(is_dns_label, "{v!r}: must be a DNS-1123 label"),
    "dns-subdomain": _rule(is_subdomain, "{v!r}: must be a DNS-1123 subdomain"),
    "node-name": _rule(lambda v: v == "" or is_subdomain(v), "{v!r} is not a valid node name"),
    "port": _rule(lambda v: 0 < v < 65536, "{v!r}: must be between 1 and 65535"),
    "image": _rule(lambda v: bool(v.strip()), "image is required", REQUIRED),
    "non-empty": _rule(bool, "must not be empty", REQUIRED),
    "env-name": _env_name,
    "property-name": _property_name,
    "property-type": _rule(
        lambda v: v.lower() in _PROPERTY_TYPES,
        "{v!r}: one of " + ", ".join(_PROPERTY_TYPES),
        NOT_SUPPORTED,
    ),
    "int-or-percent": _rule(
        lambda v: (
            (isinstance(v, int) and not isinstance(v, bool))
            or (isinstance(v, str) and _PERCENT.fullmatch(v) is not None)
        ),
        "{v!r}: must be a whole number or a percentage such as '25%'",
    ),
    "number-or-string": _rule(
        lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
        "must be a number or a numeric string",
    ),
}


def _has_type(value: Any, t: str) -> bool:
    if isinstance(value, bool) and t in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[t])


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(
    schema: Schema,
    value: Any,
    path: str,
    causes: _Causes,
    unknown: list[tuple[dict[str, Any], str, str]],
) -> None:
    t = schema.type
    if t is not None and not _has_type(value, t):
        causes.bad(path, f"must be {_TYPE_WORDS[t]}")
        return
    if schema.enum and value not in schema.enum:
        causes.bad(path, f"{value!r}: must be one of {', '.join(schema.enum)}", NOT_SUPPORTED)
        return
    if schema.format is not None and (check := FORMATS.get(schema.format)) is not None:
        problem = check(value)
        if problem is not None:
            causes.bad(path, problem[1], problem[0])
            return
    if schema.minimum is not None and value < schema.minimum:
        causes.bad(path, f"{value!r}: must be at least {schema.minimum}")
    if schema.max_length is not None and len(value) > schema.max_length:
        causes.bad(path, f"longer than {schema.max_length} characters")
    if t == "object" and schema.values is not None:
        key_check = FORMATS.get(schema.keys or "")
        for k, v in value.items():
            problem = key_check(k) if key_check is not None else None
            if problem is not None:
                causes.bad(path, problem[1], problem[0])
                continue
            sub = f"{path}[{k}]" if schema.keys == "data-key" else _join(path, k)
            _walk(schema.values, v, sub, causes, unknown)
    elif t == "object":
        for k in schema.required:
            if value.get(k) is None:
                prop = schema.properties.get(k)
                causes.required(_join(path, k), (prop and prop.message) or f"{k} is required")
        for k, v in value.items():
            prop = schema.properties.get(k)
            if prop is None:
                if not schema.open:
                    unknown.append((value, k, _join(path, k)))
            elif v is not None:
                _walk(prop, v, _join(path, k), causes, unknown)
    elif t == "array":
        if len(value) < schema.min_items:
            causes.required(path, schema.message or "Required value")
        seen: set[Any] = set()
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            if schema.items is not None:
                _walk(schema.items, item, sub, causes, unknown)
            if schema.unique and schema.merge_key and isinstance(item, dict):
                k = item.get(schema.merge_key)
                if isinstance(k, str | int) and not isinstance(k, bool):
                    if k in seen:
                        causes.bad(f"{sub}.{schema.merge_key}", f"duplicate {k!r}", DUPLICATE)
                    seen.add(k)


# ---- what a schema cannot say ------------------------------------------------------


def _check_pod(obj: dict[str, Any], causes: _Causes) -> None:
    """An init container's name must not be a container's (each list is unique
    by its schema)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return

    def names(section: str) -> list[Any]:
        cs = spec.get(section)
        return (
            [c.get("name") if isinstance(c, dict) else None for c in cs or []]
            if (isinstance(cs, list))
            else []
        )

    taken = {n for n in names("containers") if isinstance(n, str)}
    for i, n in enumerate(names("initContainers")):
        if n in taken:
            causes.bad(
                f"spec.initContainers[{i}].name", f"duplicate container name {n!r}", DUPLICATE
            )


def _check_configmap(obj: dict[str, Any], causes: _Causes) -> None:
    data, binary = obj.get("data"), obj.get("binaryData")
    if isinstance(data, dict) and isinstance(binary, dict):
        for k in sorted(set(data) & set(binary)):
            causes.bad(f"binaryData[{k}]", "duplicate of a key in data", DUPLICATE)


def _check_secret(obj: dict[str, Any], causes: _Causes) -> None:
    """``stringData`` is folded into ``data`` (base64); ``type`` defaults to Opaque."""
    string_data = obj.pop("stringData", None)
    if not causes.items and isinstance(string_data, dict):
        data = obj.get("data")
        merged: dict[str, Any] = dict(data) if isinstance(data, dict) else {}
        for k, v in string_data.items():
            try:
                merged[k] = base64.b64encode(v.encode()).decode("ascii")
            except UnicodeEncodeError:
                causes.bad(f"stringData[{k}]", "value is not valid Unicode text")
        obj["data"] = merged
    obj.setdefault("type", "Opaque")


_CHECKS: dict[str, Callable[[dict[str, Any], _Causes], None]] = {
    "Pod": _check_pod,
    "ConfigMap": _check_configmap,
    "Secret": _check_secret,
}
