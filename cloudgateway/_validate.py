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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._errors import GatewayError

__all__ = ["MAX_DEPTH", "MAX_OBJECT_BYTES", "Cause", "Invalid", "validate"]

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
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_PROTOCOLS = ("TCP", "UDP", "SCTP")


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
    resource: edgeproto.Resource, obj: Any, *, namespace: str | None, name: str | None
) -> dict[str, Any]:
    """A normalized copy of ``obj`` as a ``resource`` object, or ``Invalid``.

    ``namespace`` and ``name`` are the ones in the request URL (None when the
    URL has none); the object's own must agree with them."""
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
    _check_metadata(meta, causes)
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
    check = _CHECKS.get(kind)
    if check is not None:
        check(out, causes)
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


def _check_metadata(meta: dict[str, Any], causes: _Causes) -> None:
    for section in ("labels", "annotations"):
        m = meta.get(section)
        if m is None:
            continue
        if not isinstance(m, dict):
            causes.bad(f"metadata.{section}", "must be a map of string keys to string values")
            continue
        for k, v in m.items():
            if not is_qualified_name(k):
                causes.bad(
                    f"metadata.{section}",
                    f"{k!r}: keys are [prefix/]name, name at most 63 characters of "
                    "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
                )
            elif not isinstance(v, str):
                causes.bad(f"metadata.{section}.{k}", "value must be a string")
            elif section == "labels" and not is_label_value(v):
                causes.bad(
                    f"metadata.labels.{k}",
                    f"{v!r}: a label value is at most 63 characters of alphanumerics, "
                    "'-', '_' or '.', starting and ending with an alphanumeric",
                )
    for f in ("resourceVersion", "uid", "creationTimestamp", "generateName"):
        v = meta.get(f)
        if v is not None and not isinstance(v, str):
            causes.bad(f"metadata.{f}", "must be a string")


def _string_list(c: dict[str, Any], key: str, field: str, causes: _Causes) -> None:
    v = c.get(key)
    if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        causes.bad(field, "must be a list of strings")


def _objects(
    parent: dict[str, Any], key: str, field: str, causes: _Causes
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(field[i], item)`` for each object in the list ``parent[key]``; a value
    that is not a list, or an item that is not an object, is a cause."""
    items = parent.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        causes.bad(field, "must be a list")
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield f"{field}[{i}]", item
        else:
            causes.bad(f"{field}[{i}]", "must be an object")


def _check_container(c: Any, f: str, names: set[str], causes: _Causes) -> None:
    if not isinstance(c, dict):
        causes.bad(f, "must be an object")
        return
    n = c.get("name")
    if n is None:
        causes.required(f"{f}.name")
    elif not is_dns_label(n):
        causes.bad(f"{f}.name", f"{n!r}: must be a DNS-1123 label")
    elif n in names:
        causes.bad(f"{f}.name", f"duplicate container name {n!r}", DUPLICATE)
    else:
        names.add(n)
    image = c.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        causes.required(f"{f}.image", "image is required")
    elif not isinstance(image, str):
        causes.bad(f"{f}.image", "must be a string")
    _string_list(c, "command", f"{f}.command", causes)
    _string_list(c, "args", f"{f}.args", causes)
    for ef, e in _objects(c, "env", f"{f}.env", causes):
        en = e.get("name")
        if not isinstance(en, str) or not en:
            causes.required(f"{ef}.name", "name is required")
        elif "=" in en:
            causes.bad(f"{ef}.name", f"{en!r}: must not contain '='")
        if "value" in e and not isinstance(e["value"], str):
            causes.bad(f"{ef}.value", "must be a string")
        if "valueFrom" in e and not isinstance(e["valueFrom"], dict):
            causes.bad(f"{ef}.valueFrom", "must be an object")
    for pf, p in _objects(c, "ports", f"{f}.ports", causes):
        cp = p.get("containerPort")
        if cp is None:
            causes.required(f"{pf}.containerPort")
        elif not _is_port(cp):
            causes.bad(f"{pf}.containerPort", f"{cp!r}: must be between 1 and 65535")
        hp = p.get("hostPort")
        if hp is not None and not _is_port(hp):
            causes.bad(f"{pf}.hostPort", f"{hp!r}: must be between 1 and 65535")
        proto = p.get("protocol")
        if proto is not None and proto not in _PROTOCOLS:
            causes.bad(f"{pf}.protocol", f"{proto!r}: must be one of {_PROTOCOLS}", NOT_SUPPORTED)


def _is_port(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536


def _check_pod(obj: dict[str, Any], causes: _Causes) -> None:
    spec = obj.get("spec")
    if spec is None:
        causes.required("spec", "spec is required")
        return
    if not isinstance(spec, dict):
        causes.bad("spec", "must be an object")
        return
    node = spec.get("nodeName")
    if node is not None and node != "" and not is_subdomain(node):
        causes.bad("spec.nodeName", f"{node!r} is not a valid node name")
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in _RESTART_POLICIES:
        causes.bad(
            "spec.restartPolicy", f"{policy!r}: must be one of {_RESTART_POLICIES}", NOT_SUPPORTED
        )
    names: set[str] = set()
    for section in ("containers", "initContainers"):
        cs = spec.get(section)
        if cs is None and section == "initContainers":
            continue
        if cs is None or cs == []:
            causes.required(f"spec.{section}", "at least one container is required")
            continue
        if not isinstance(cs, list):
            causes.bad(f"spec.{section}", "must be a list")
            continue
        for i, c in enumerate(cs):
            _check_container(c, f"spec.{section}[{i}]", names, causes)
    vnames: set[str] = set()
    for vf, v in _objects(spec, "volumes", "spec.volumes", causes):
        vn = v.get("name")
        if vn is None:
            causes.required(f"{vf}.name")
        elif not is_dns_label(vn):
            causes.bad(f"{vf}.name", f"{vn!r}: must be a DNS-1123 label")
        elif vn in vnames:
            causes.bad(f"{vf}.name", f"duplicate volume {vn!r}", DUPLICATE)
        else:
            vnames.add(vn)


def _check_data(field: str, data: Any, causes: _Causes, *, b64: bool) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        causes.bad(field, "must be a map of string keys to string values")
        return
    for k, v in data.items():
        if not isinstance(k, str) or len(k) > 253 or _DATA_KEY.fullmatch(k) is None:
            causes.bad(
                field, f"{k!r}: a key is at most 253 characters of alphanumerics, '-', '_' or '.'"
            )
        elif not isinstance(v, str):
            causes.bad(f"{field}[{k}]", "value must be a string")
        elif b64:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                causes.bad(f"{field}[{k}]", "value must be valid base64")


def _check_configmap(obj: dict[str, Any], causes: _Causes) -> None:
    data, binary = obj.get("data"), obj.get("binaryData")
    _check_data("data", data, causes, b64=False)
    _check_data("binaryData", binary, causes, b64=True)
    if isinstance(data, dict) and isinstance(binary, dict):
        for k in sorted(set(data) & set(binary)):
            causes.bad(f"binaryData[{k}]", "duplicate of a key in data", DUPLICATE)


def _check_secret(obj: dict[str, Any], causes: _Causes) -> None:
    string_data = obj.pop("stringData", None)
    before = len(causes.items)
    _check_data("stringData", string_data, causes, b64=False)
    _check_data("data", obj.get("data"), causes, b64=True)
    if len(causes.items) == before and isinstance(string_data, dict):
        data = obj.get("data")
        merged: dict[str, Any] = dict(data) if isinstance(data, dict) else {}
        for k, v in string_data.items():
            try:
                merged[k] = base64.b64encode(v.encode()).decode("ascii")
            except UnicodeEncodeError:
                causes.bad(f"stringData[{k}]", "value is not valid Unicode text")
        obj["data"] = merged
    t = obj.setdefault("type", "Opaque")
    if not isinstance(t, str) or not t:
        causes.bad("type", "must be a non-empty string")


def _check_node(obj: dict[str, Any], causes: _Causes) -> None:
    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, dict):
        causes.bad("spec", "must be an object")
    elif isinstance(spec, dict):
        u = spec.get("unschedulable")
        if u is not None and not isinstance(u, bool):
            causes.bad("spec.unschedulable", "must be a boolean")


# ---- devices.kubeedge.io/v1beta1 -------------------------------------------------------

_PROPERTY_TYPES = ("int", "float", "double", "string", "boolean", "bytes", "stream")
_ACCESS_MODES = ("ReadWrite", "ReadOnly")
_MAX_TWIN_VALUE = 4096  # a desired value travels in every twin message; keep it small


def _property_name(item: dict[str, Any], field: str, names: set[str], causes: _Causes) -> None:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        causes.required(f"{field}.name", "name is required")
    elif len(name) > 128 or "/" in name or "#" in name or "+" in name:
        causes.bad(f"{field}.name", f"{name!r}: at most 128 characters, no '/', '#' or '+'")
    elif name in names:
        causes.bad(f"{field}.name", f"{name!r}: duplicate property", DUPLICATE)
    else:
        names.add(name)


def _check_cycle(prop: dict[str, Any], key: str, field: str, causes: _Causes) -> None:
    v = prop.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        causes.bad(f"{field}.{key}", f"{v!r}: milliseconds, a whole number >= 0")


def _check_devicemodel(obj: dict[str, Any], causes: _Causes) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.required("spec", "spec is required")
        return
    names: set[str] = set()
    for f, prop in _objects(spec, "properties", "spec.properties", causes):
        _property_name(prop, f, names, causes)
        t = prop.get("type")
        if t is not None and (not isinstance(t, str) or t.lower() not in _PROPERTY_TYPES):
            causes.bad(f"{f}.type", f"{t!r}: one of {', '.join(_PROPERTY_TYPES)}", NOT_SUPPORTED)
        mode = prop.get("accessMode")
        if mode is not None and mode not in _ACCESS_MODES:
            causes.bad(f"{f}.accessMode", f"{mode!r}: ReadWrite or ReadOnly", NOT_SUPPORTED)
        for bound in ("minimum", "maximum"):
            b = prop.get(bound)
            if b is not None and not isinstance(b, str | int | float):
                causes.bad(f"{f}.{bound}", "must be a number or a numeric string")
    protocol = spec.get("protocol")
    if protocol is not None and not isinstance(protocol, str):
        causes.bad("spec.protocol", "must be a string (the protocol name)")


def _check_device(obj: dict[str, Any], causes: _Causes) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.required("spec", "spec is required")
        return
    ref = spec.get("deviceModelRef")
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        causes.required("spec.deviceModelRef.name", "the DeviceModel's name is required")
    node = spec.get("nodeName")
    if node is not None and not is_subdomain(node):
        causes.bad("spec.nodeName", f"{node!r}: must be a node name (DNS-1123 subdomain)")
    protocol = spec.get("protocol")
    if protocol is not None:
        if not isinstance(protocol, dict):
            causes.bad("spec.protocol", "must be an object")
        else:
            pn = protocol.get("protocolName")
            if pn is not None and not isinstance(pn, str):
                causes.bad("spec.protocol.protocolName", "must be a string")
            cd = protocol.get("configData")
            if cd is not None and not isinstance(cd, dict):
                causes.bad("spec.protocol.configData", "must be an object")
    names: set[str] = set()
    for f, prop in _objects(spec, "properties", "spec.properties", causes):
        _property_name(prop, f, names, causes)
        desired = prop.get("desired")
        if desired is not None:
            if not isinstance(desired, dict):
                causes.bad(f"{f}.desired", "must be an object with a value")
            else:
                v = desired.get("value")
                if v is not None and not isinstance(v, str):
                    causes.bad(f"{f}.desired.value", "twin values are strings (quote numbers)")
                elif isinstance(v, str) and len(v) > _MAX_TWIN_VALUE:
                    causes.bad(f"{f}.desired.value", f"longer than {_MAX_TWIN_VALUE} characters")
        visitors = prop.get("visitors")
        if visitors is not None and not isinstance(visitors, dict):
            causes.bad(f"{f}.visitors", "must be an object")
        elif isinstance(visitors, dict):
            cd = visitors.get("configData")
            if cd is not None and not isinstance(cd, dict):
                causes.bad(f"{f}.visitors.configData", "must be an object")
        _check_cycle(prop, "collectCycle", f, causes)
        _check_cycle(prop, "reportCycle", f, causes)
        rtc = prop.get("reportToCloud")
        if rtc is not None and not isinstance(rtc, bool):
            causes.bad(f"{f}.reportToCloud", "must be a boolean")


def _check_event(obj: dict[str, Any], causes: _Causes) -> None:
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict):
        causes.required("involvedObject", "an Event is about an object: kind and name")
    else:
        for f in ("kind", "name"):
            if not isinstance(involved.get(f), str) or not involved.get(f):
                causes.required(f"involvedObject.{f}")
    for f in ("reason", "message", "type"):
        if f in obj and not isinstance(obj[f], str):
            causes.bad(f, "must be a string")


_CHECKS: dict[str, Callable[[dict[str, Any], _Causes], None]] = {
    "Pod": _check_pod,
    "ConfigMap": _check_configmap,
    "Secret": _check_secret,
    "Node": _check_node,
    "Device": _check_device,
    "DeviceModel": _check_devicemodel,
    "Event": _check_event,
}
