"""OpenAPI documents of the API, generated from the kinds' schemas
(``_apischema``): ``/openapi/v3`` (an index of group-versions, then one
OpenAPI 3.0 document each) and ``/openapi/v2`` (one Swagger 2.0 document).

kubectl reads the v3 documents: ``explain`` renders the schemas; ``apply``
computes strategic merge patches from their ``x-kubernetes-patch-*``
extensions; and, seeing that each kind's PATCH takes the ``fieldValidation``
parameter, ``create``/``apply``/``replace``/``edit`` leave validation to the
server instead of downloading a schema to validate with. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import edgeproto
from edgeproto import Resource

from ._apischema import KIND_SCHEMAS, SCALE, Schema, named_schemas

__all__ = ["group_version_paths", "openapi_v2", "openapi_v3", "openapi_v3_index"]

_TITLE = "edgeflock"
_API_VERSION = "v1.30.0"  # the Kubernetes API this one follows (as /version says)

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Ignore, Warn (default) or Strict: what to do with fields the schema does "
    "not know (Strict refuses the request, Warn answers with a Warning header; both drop them).",
    "schema": {"type": "string", "uniqueItems": True},
}
_DRY_RUN = {
    "name": "dryRun",
    "in": "query",
    "description": "All: run the request without writing anything.",
    "schema": {"type": "string", "uniqueItems": True},
}
_FIELD_MANAGER = {
    "name": "fieldManager",
    "in": "query",
    "description": "The name of the actor making the change.",
    "schema": {"type": "string", "uniqueItems": True},
}
_LIST_PARAMS = [
    {"name": n, "in": "query", "description": d, "schema": {"type": t, "uniqueItems": True}}
    for n, d, t in (
        ("labelSelector", "Only objects whose labels match.", "string"),
        ("fieldSelector", "Only objects whose fields match.", "string"),
        ("watch", "Stream changes instead of a list.", "boolean"),
        ("resourceVersion", "List or watch from this revision.", "string"),
        ("limit", "At most this many objects.", "integer"),
        ("continue", "Where the previous chunk stopped.", "string"),
    )
]
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def _schema_json(s: Schema, ref: str, *, expand: bool = False, v3: bool = True) -> dict[str, Any]:
    """``s`` as an OpenAPI schema; a named type is a reference unless ``expand``."""
    if s.name is not None and not expand:
        target = {"$ref": ref + s.name}
        out: dict[str, Any] = {"allOf": [target]} if v3 else dict(target)
        _list_extensions(s, out)
        return out
    out = {}
    if s.description:
        out["description"] = s.description
    if s.format == "int-or-percent":  # Kubernetes' IntOrString, as its documents write it
        out["type"], out["format"] = "string", "int-or-string"
    else:
        if s.type is not None:
            out["type"] = s.type
        if s.format is not None:
            out["format"] = s.format
    if s.enum:
        out["enum"] = list(s.enum)
    if s.minimum is not None:
        out["minimum"] = s.minimum
    if s.max_length is not None:
        out["maxLength"] = s.max_length
    if s.required:
        out["required"] = list(s.required)
    if s.properties:
        out["properties"] = {
            k: _schema_json(v, ref, v3=v3) for k, v in sorted(s.properties.items())
        }
    if s.values is not None:
        out["additionalProperties"] = _schema_json(s.values, ref, v3=v3)
    if s.items is not None:
        out["items"] = _schema_json(s.items, ref, v3=v3)
    if s.open:
        out["x-kubernetes-preserve-unknown-fields"] = True
    _list_extensions(s, out)
    return out


def _list_extensions(s: Schema, out: dict[str, Any]) -> None:
    if s.type != "array":
        return
    if s.merge:
        out["x-kubernetes-patch-strategy"] = "merge,retainKeys" if s.retain_keys else "merge"
        if s.merge_key is not None:
            out["x-kubernetes-patch-merge-key"] = s.merge_key
    if s.merge_key is not None and s.unique:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = [s.merge_key]
    elif s.merge and s.merge_key is None:
        out["x-kubernetes-list-type"] = "set"
    elif not s.merge:
        out["x-kubernetes-list-type"] = "atomic"


def _gvk(r: Resource) -> dict[str, str]:
    return {"group": r.group, "version": r.version, "kind": r.kind}


def _components(resources: Iterable[Resource], ref: str, *, v3: bool) -> dict[str, Any]:
    resources = list(resources)
    kinds = {r.kind: r for r in resources}
    roots = [KIND_SCHEMAS[k] for k in kinds if k in KIND_SCHEMAS]
    wanted = {s.name for s in roots}
    scaled = any("scale" in r.subresources for r in resources)
    out: dict[str, Any] = {}
    for s in named_schemas([*roots, SCALE] if scaled else roots):
        assert s.name is not None
        body = _schema_json(s, ref, expand=True, v3=v3)
        kind = s.name.rsplit(".", 1)[1]
        if s.name in wanted:
            body["x-kubernetes-group-version-kind"] = [_gvk(kinds[kind])]
        elif s is SCALE:
            body["x-kubernetes-group-version-kind"] = [
                {"group": "autoscaling", "version": "v1", "kind": "Scale"}
            ]
        out[s.name] = body
    return out


def _operation_id(verb: str, r: Resource, namespaced: bool, suffix: str = "") -> str:
    group = "".join(p.capitalize() for p in (r.group.split(".")[0] or "core").split("-"))
    scope = "Namespaced" if namespaced and r.namespaced else ""
    return f"{verb}{group}{r.version.capitalize()}{scope}{r.kind}{suffix}"


def _paths(r: Resource, ref: str, *, v3: bool) -> dict[str, Any]:
    prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    base = f"{prefix}/namespaces/{{namespace}}/{r.name}" if r.namespaced else f"{prefix}/{r.name}"
    schema = KIND_SCHEMAS.get(r.kind)
    target = (
        {"$ref": ref + schema.name} if schema is not None and schema.name else {"type": "object"}
    )

    def param(name: str) -> dict[str, Any]:
        p: dict[str, Any] = {"name": name, "in": "path", "required": True}
        if v3:
            p["schema"] = {"type": "string", "uniqueItems": True}
        else:
            p["type"] = "string"
        return p

    def body(types: Iterable[str], schema_: dict[str, Any]) -> dict[str, Any]:
        if v3:
            return {
                "requestBody": {
                    "required": True,
                    "content": {t: {"schema": schema_} for t in types},
                }
            }
        return {
            "consumes": list(types),
            "parameters": [{"name": "body", "in": "body", "required": True, "schema": schema_}],
        }

    def answer(code: str, schema_: dict[str, Any] = target) -> dict[str, Any]:
        if v3:
            return {
                code: {"description": "OK", "content": {"application/json": {"schema": schema_}}}
            }
        return {code: {"description": "OK", "schema": schema_}}

    def op(verb: str, action: str, suffix: str = "", **extra: Any) -> dict[str, Any]:
        params = list(extra.pop("query", []))
        if not v3:
            params = [_v2_param(p) for p in params]
        o: dict[str, Any] = {
            "operationId": _operation_id(verb, r, True, suffix),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(r),
            "responses": answer("201" if action == "post" else "200"),
        }
        b = extra.pop("body", None)
        if b is not None:
            o.update(b)
            if not v3:
                params = b["parameters"] + params
                o.pop("parameters")
        if params:
            o["parameters"] = params
        return o

    writes = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
    scope = [param("namespace")] if r.namespaced else []
    patch_body = body(_PATCH_TYPES, {"type": "object", "description": "A patch."})
    item = {
        "parameters": [*scope, param("name")],
        "get": op("read", "get"),
        "put": op("replace", "put", query=writes, body=body(["application/json"], target)),
        "patch": op("patch", "patch", query=writes, body=patch_body),
        "delete": op("delete", "delete", query=[_DRY_RUN]),
    }
    collection: dict[str, Any] = {
        "get": op("list", "list", query=_LIST_PARAMS),
        "post": op("create", "post", query=writes, body=body(["application/json"], target)),
    }
    if scope:
        collection["parameters"] = scope
    out = {base: collection, f"{base}/{{name}}": item}
    for sub in ("status", "scale"):
        if sub not in r.subresources:
            continue
        suffix = sub.capitalize()
        sub_target = target if sub == "status" else {"$ref": f"{ref}{SCALE.name}"}
        get = op("read", "get", suffix)
        get["responses"] = answer("200", sub_target)
        put = op(
            "replace", "put", suffix, query=writes, body=body(["application/json"], sub_target)
        )
        put["responses"] = answer("200", sub_target)
        patch = op("patch", "patch", suffix, query=writes, body=patch_body)
        patch["responses"] = answer("200", sub_target)
        out[f"{base}/{{name}}/{sub}"] = {
            "parameters": [*scope, param("name")],
            "get": get,
            "put": put,
            "patch": patch,
        }
    return out


def _v2_param(p: dict[str, Any]) -> dict[str, Any]:
    q = {k: v for k, v in p.items() if k != "schema"}
    q["type"] = p.get("schema", {}).get("type", "string")
    return q


def group_version_paths() -> dict[str, list[Resource]]:
    """``api/v1`` / ``apis/GROUP/VERSION`` → the resources served there."""
    out: dict[str, list[Resource]] = {}
    for r in edgeproto.RESOURCES:
        gv = f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}"
        out.setdefault(gv, []).append(r)
    return out


def openapi_v3(gv: str) -> dict[str, Any] | None:
    """The OpenAPI 3.0 document of one group-version (``api/v1``), or None."""
    resources = group_version_paths().get(gv)
    if resources is None:
        return None
    ref = "#/components/schemas/"
    paths: dict[str, Any] = {}
    for r in resources:
        paths.update(_paths(r, ref, v3=True))
    return {
        "openapi": "3.0.0",
        "info": {"title": _TITLE, "version": _API_VERSION},
        "paths": paths,
        "components": {"schemas": _components(resources, ref, v3=True)},
    }


def openapi_v3_index() -> dict[str, Any]:
    """``/openapi/v3``: where each group-version's document is, with a hash of
    it so that clients can cache it."""
    paths = {}
    for gv in group_version_paths():
        doc = json.dumps(openapi_v3(gv), sort_keys=True).encode()
        digest = hashlib.sha512(doc).hexdigest()[:32].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def openapi_v2() -> dict[str, Any]:
    """One Swagger 2.0 document for everything served."""
    ref = "#/definitions/"
    paths: dict[str, Any] = {}
    for r in edgeproto.RESOURCES:
        paths.update(_paths(r, ref, v3=False))
    return {
        "swagger": "2.0",
        "info": {"title": _TITLE, "version": _API_VERSION},
        "paths": paths,
        "definitions": _components(edgeproto.RESOURCES, ref, v3=False),
    }
