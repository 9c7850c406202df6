"""Validation of Kubernetes objects written through the API. Pure functions."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import edgeproto

from ._errors import GatewayError

__all__ = ["Cause", "Invalid", "validate"]

MAX_OBJECT_BYTES = 1 << 20
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@dataclass(frozen=True, slots=True)
class Cause:
    field: str
    reason: str  # FieldValueRequired | FieldValueInvalid | FieldValueDuplicate
    message: str


class Invalid(GatewayError):
    def __init__(self, kind: str, name: str, causes: list[Cause]) -> None:
        detail = "; ".join(f"{c.field}: {c.message}" for c in causes)
        super().__init__(f'{kind} "{name}" is invalid: {detail}')
        self.kind = kind
        self.name = name
        self.causes = causes


def _subdomain(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 253 and bool(_SUBDOMAIN.match(v))


def _label_key(k: Any) -> bool:
    if not isinstance(k, str) or not k:
        return False
    prefix, _, name = k.rpartition("/")
    if prefix and not _subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def validate(
    resource: edgeproto.Resource, obj: Any, *, namespace: str | None, name: str | None
) -> dict[str, Any]:
    kind = resource.kind
    if not isinstance(obj, dict):
        raise Invalid(
            kind, name or "", [Cause("", "FieldValueInvalid", "object must be a JSON object")]
        )
    out = copy.deepcopy(obj)
    causes: list[Cause] = []

    def bad(field: str, message: str, reason: str = "FieldValueInvalid") -> None:
        causes.append(Cause(field, reason, message))

    out.setdefault("apiVersion", resource.api_version)
    out.setdefault("kind", kind)
    if out["apiVersion"] != resource.api_version:
        bad("apiVersion", f"must be {resource.api_version!r} for {resource.name}")
    if out["kind"] != kind:
        bad("kind", f"must be {kind!r} for {resource.name}")
    meta = out.get("metadata")
    if meta is None:
        meta = out["metadata"] = {}
    if not isinstance(meta, dict):
        raise Invalid(
            kind, name or "", [Cause("metadata", "FieldValueInvalid", "must be an object")]
        )
    oname = meta.get("name")
    if oname is None and name:
        oname = meta["name"] = name
    if oname is None:
        bad("metadata.name", "name is required", "FieldValueRequired")
    elif not _subdomain(oname):
        bad("metadata.name", f"{oname!r} must be a lowercase DNS-1123 subdomain")
    elif name is not None and oname != name:
        bad("metadata.name", f"{oname!r} does not match the name in the URL ({name!r})")
    if resource.namespaced:
        ns = meta.get("namespace")
        if ns is None:
            meta["namespace"] = ns = namespace or "default"
        if not isinstance(ns, str) or not _LABEL.match(ns) or len(ns) > 63:
            bad("metadata.namespace", f"{ns!r} is not a valid namespace")
        elif namespace is not None and ns != namespace:
            bad(
                "metadata.namespace",
                f"{ns!r} does not match the namespace in the URL ({namespace!r})",
            )
    else:
        meta.pop("namespace", None)
    for section in ("labels", "annotations"):
        m = meta.get(section)
        if m is None:
            continue
        if not isinstance(m, dict):
            bad(f"metadata.{section}", "must be a map of strings")
            continue
        for k, v in m.items():
            if not _label_key(k):
                bad(f"metadata.{section}", f"invalid key {k!r}")
            elif not isinstance(v, str):
                bad(f"metadata.{section}.{k}", "value must be a string")
            elif section == "labels" and (len(v) > 63 or not _LABEL_VALUE.match(v)):
                bad(f"metadata.labels.{k}", f"invalid label value {v!r}")
    check = _CHECKS.get(kind)
    if check is not None:
        check(out, bad)
    if not causes:
        try:
            size = len(json.dumps(out))
        except (TypeError, ValueError) as exc:
            size = 0
            bad("", f"not serializable: {exc}")
        if size > MAX_OBJECT_BYTES:
            bad("", f"object is {size} bytes, limit {MAX_OBJECT_BYTES}")
    if causes:
        raise Invalid(kind, str(oname or name or ""), causes)
    return out


def _check_pod(obj: dict[str, Any], bad: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        bad("spec", "spec is required", "FieldValueRequired")
        return
    node = spec.get("nodeName")
    if node is not None and not _subdomain(node):
        bad("spec.nodeName", f"{node!r} is not a valid node name")
    for section in ("initContainers", "containers"):
        cs = spec.get(section)
        if cs is None and section == "initContainers":
            continue
        if not isinstance(cs, list) or (section == "containers" and not cs):
            bad(f"spec.{section}", "must be a non-empty list", "FieldValueRequired")
            continue
        names: set[str] = set()
        for i, c in enumerate(cs):
            f = f"spec.{section}[{i}]"
            if not isinstance(c, dict):
                bad(f, "must be an object")
                continue
            n = c.get("name")
            if not isinstance(n, str) or not _LABEL.match(n) or len(n) > 63:
                bad(
                    f"{f}.name",
                    f"{n!r} must be a DNS-1123 label",
                    "FieldValueRequired" if n is None else "FieldValueInvalid",
                )
            elif n in names:
                bad(f"{f}.name", f"duplicate container name {n!r}", "FieldValueDuplicate")
            else:
                names.add(n)
            image = c.get("image")
            if not isinstance(image, str) or not image.strip():
                bad(f"{f}.image", "image is required", "FieldValueRequired")
            for lf in ("command", "args"):
                v = c.get(lf)
                if v is not None and not (
                    isinstance(v, list) and all(isinstance(x, str) for x in v)
                ):
                    bad(f"{f}.{lf}", "must be a list of strings")
            env = c.get("env")
            if env is not None:
                if not isinstance(env, list):
                    bad(f"{f}.env", "must be a list")
                else:
                    for j, e in enumerate(env):
                        if (
                            not isinstance(e, dict)
                            or not isinstance(e.get("name"), str)
                            or not e["name"]
                        ):
                            bad(f"{f}.env[{j}].name", "name is required", "FieldValueRequired")
            ports = c.get("ports")
            if ports is not None:
                if not isinstance(ports, list):
                    bad(f"{f}.ports", "must be a list")
                else:
                    for j, p in enumerate(ports):
                        cp = p.get("containerPort") if isinstance(p, dict) else None
                        if not isinstance(cp, int) or isinstance(cp, bool) or not 0 < cp < 65536:
                            bad(f"{f}.ports[{j}].containerPort", "must be a port number 1-65535")
    vols = spec.get("volumes")
    if vols is not None:
        if not isinstance(vols, list):
            bad("spec.volumes", "must be a list")
        else:
            for i, v in enumerate(vols):
                if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                    bad(f"spec.volumes[{i}].name", "name is required", "FieldValueRequired")


def _check_data(field: str, data: Any, bad: Any, *, b64: bool) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        bad(field, "must be a map of strings")
        return
    for k, v in data.items():
        if not isinstance(k, str) or not _DATA_KEY.match(k) or len(k) > 253:
            bad(field, f"invalid key {k!r}")
        elif not isinstance(v, str):
            bad(f"{field}[{k}]", "value must be a string")
        elif b64:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                bad(f"{field}[{k}]", "value must be base64")


def _check_configmap(obj: dict[str, Any], bad: Any) -> None:
    _check_data("data", obj.get("data"), bad, b64=False)
    _check_data("binaryData", obj.get("binaryData"), bad, b64=True)


def _check_secret(obj: dict[str, Any], bad: Any) -> None:
    string_data = obj.pop("stringData", None)
    _check_data("stringData", string_data, bad, b64=False)
    _check_data("data", obj.get("data"), bad, b64=True)
    if isinstance(string_data, dict) and all(isinstance(v, str) for v in string_data.values()):
        data = obj.get("data")
        if not isinstance(data, dict):
            data = {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(v.encode()).decode()
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _check_node(obj: dict[str, Any], bad: Any) -> None:
    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, dict):
        bad("spec", "must be an object")


_CHECKS = {
    "Pod": _check_pod,
    "ConfigMap": _check_configmap,
    "Secret": _check_secret,
    "Node": _check_node,
}
