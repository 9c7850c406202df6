"""The HTTP API, shaped like Kubernetes': discovery, CRUD, merge patch, status
subresource, list with selectors and watch, errors as ``Status`` objects."""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

import edgeproto
from edgeproto import Resource

from ._http import Request, Response, json_response, serve_http
from ._store import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    FutureRevision,
    NotFound,
    Record,
    Store,
    StoreError,
    SubscriptionLost,
)
from ._validate import Invalid, validate

log = logging.getLogger(__name__)

__all__ = ["ApiError", "ApiServer", "merge_patch", "parse_label_selector"]

VERSION_INFO = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-edgeflock",
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.details = details


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


Selector = Callable[[Mapping[str, Any]], bool]


def parse_label_selector(text: str) -> Selector:
    reqs: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!", None))
        else:
            reqs.append((part, "exists", None))
        if not reqs[-1][0]:
            raise ApiError(400, "BadRequest", f"invalid label selector {text!r}")

    def match(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for k, op, v in reqs:
            if op == "=" and labels.get(k) != v:
                return False
            if op == "!=" and labels.get(k) == v:
                return False
            if op == "exists" and k not in labels:
                return False
            if op == "!" and k in labels:
                return False
        return True

    return match


_FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "metadata.name": lambda o: (o.get("metadata") or {}).get("name"),
    "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace"),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName"),
    "status.phase": lambda o: (o.get("status") or {}).get("phase"),
}


def parse_field_selector(text: str) -> Selector:
    reqs: list[tuple[Callable[[Mapping[str, Any]], Any], bool, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        neg = "!=" in part
        k, v = (
            part.split("!=" if neg else ("==" if "==" in part else "="), 1)
            if ("=" in part)
            else (part, "")
        )
        getter = _FIELDS.get(k.strip())
        if getter is None:
            raise ApiError(400, "BadRequest", f"field label not supported: {k.strip()}")
        reqs.append((getter, neg, v.strip()))

    def match(obj: Mapping[str, Any]) -> bool:
        for getter, neg, v in reqs:
            got = getter(obj) or ""
            if (got == v) == neg:
                return False
        return True

    return match


@dataclass(frozen=True, slots=True)
class _Route:
    resource: Resource
    namespace: str | None  # None: all namespaces (lists) or cluster-scoped
    name: str | None
    subresource: str | None


class ApiServer:
    def __init__(self, store: Store, *, admin_token: str) -> None:
        self._store = store
        self._token = admin_token
        self.counters: Counter[str] = Counter()
        self.watches = 0

    def statistics(self) -> dict[str, int]:
        return {"watches": self.watches, **self.counters}

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_http(self.handle, host, port, task_status=task_status)

    async def handle(self, request: Request) -> Response:
        self.counters["requests"] += 1
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            self.counters[f"errors_{exc.code}"] += 1
            return json_response(exc.code, status_body(exc.code, exc.reason, str(exc), exc.details))

    # ---- routing -------------------------------------------------------------------

    async def _dispatch(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return Response(200, b"ok", [("content-type", "text/plain")])
        if path == "/version":
            return json_response(200, VERSION_INFO)
        self._authorize(req)
        if path == "/metrics":
            lines = [f"edgeflock_api_{k} {v}" for k, v in sorted(self.statistics().items())]
            return Response(
                200, ("\n".join(lines) + "\n").encode(), [("content-type", "text/plain")]
            )
        if path == "/api":
            return json_response(
                200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if path == "/apis":
            return json_response(200, self._group_list())
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        if not rest:
            return json_response(200, self._resource_list(group, version))
        route = self._route(group, version, rest, path)
        return await self._serve(req, route)

    def _authorize(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._token.encode()
        ):
            raise ApiError(
                401, "Unauthorized", "Unauthorized: a valid admin bearer token is required"
            )

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, set[str]] = {}
        for r in edgeproto.RESOURCES:
            if r.group:
                groups.setdefault(r.group, set()).add(r.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(vs)],
                    "preferredVersion": {
                        "groupVersion": f"{g}/{sorted(vs)[-1]}",
                        "version": sorted(vs)[-1],
                    },
                }
                for g, vs in sorted(groups.items())
            ],
        }

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        rs = [r for r in edgeproto.RESOURCES if r.group == group and r.version == version]
        if not rs:
            raise ApiError(404, "NotFound", f"no API {group}/{version}")
        items = []
        for r in rs:
            items.append(
                {
                    "name": r.name,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": _VERBS,
                    "shortNames": [s for s in r.short_names if s != r.kind.lower()],
                }
            )
            items.append(
                {
                    "name": f"{r.name}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": items,
        }

    def _route(self, group: str, version: str, rest: list[str], path: str) -> _Route:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = next(
            (
                r
                for r in edgeproto.RESOURCES
                if r.group == group and r.version == version and r.name == rest[0]
            ),
            None,
        )
        if res is None or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        if not res.namespaced and namespace is not None:
            raise ApiError(404, "NotFound", f"{res.name} is not namespaced")
        name = rest[1] if len(rest) >= 2 else None
        if res.namespaced and name is not None and namespace is None:
            raise ApiError(
                404, "NotFound", f"{res.name} are namespaced: use /namespaces/NS/{res.name}/NAME"
            )
        return _Route(res, namespace, name, rest[2] if len(rest) == 3 else None)

    # ---- verbs ---------------------------------------------------------------------

    def _key(self, route: _Route, name: str | None = None) -> str:
        return edgeproto.make_key(
            route.resource.name, route.namespace or "", name or route.name or ""
        )

    def _prefix(self, route: _Route) -> str:
        return (
            f"{route.resource.name}/{route.namespace}/"
            if route.namespace
            else f"{route.resource.name}/"
        )

    async def _serve(self, req: Request, route: _Route) -> Response:
        m = req.method
        if route.name is None:
            if m == "GET":
                if _flag(req, "watch"):
                    return self._watch(req, route)
                return await self._list(req, route)
            if m == "POST":
                return await self._create(req, route)
            raise ApiError(405, "MethodNotAllowed", f"{m} is not supported on a collection")
        if m == "GET":
            return json_response(200, (await self._get(route)).value)
        if m == "PUT":
            return await self._replace(req, route)
        if m == "PATCH":
            return await self._patch(req, route)
        if m == "DELETE":
            return await self._delete(route)
        raise ApiError(405, "MethodNotAllowed", f"{m} is not supported")

    def _not_found(self, route: _Route) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{route.resource.name} "{route.name}" not found',
            {"name": route.name, "kind": route.resource.name},
        )

    async def _get(self, route: _Route) -> Record:
        try:
            return await self._store.get(self._key(route))
        except NotFound:
            raise self._not_found(route) from None

    def _body(self, req: Request) -> Any:
        try:
            return json.loads(req.body)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"request body is not valid JSON: {exc}") from None

    def _validate(self, route: _Route, obj: Any, name: str | None) -> dict[str, Any]:
        try:
            return validate(route.resource, obj, namespace=route.namespace, name=name)
        except Invalid as exc:
            raise ApiError(
                422,
                "Invalid",
                str(exc),
                {
                    "name": exc.name,
                    "kind": exc.kind,
                    "causes": [
                        {"reason": c.reason, "field": c.field, "message": c.message}
                        for c in exc.causes
                    ],
                },
            ) from None

    def _store_error(self, route: _Route, name: str, exc: StoreError) -> ApiError:
        kind = route.resource.name
        if isinstance(exc, AlreadyExists):
            return ApiError(
                409,
                "AlreadyExists",
                f'{kind} "{name}" already exists',
                {"name": name, "kind": kind},
            )
        if isinstance(exc, Conflict):
            return ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "kind": kind},
            )
        if isinstance(exc, NotFound):
            return ApiError(
                404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind}
            )
        log.warning("store error on %s %s: %s", kind, name, exc)
        return ApiError(500, "InternalError", f"store error: {exc}")

    async def _create(self, req: Request, route: _Route) -> Response:
        obj = self._validate(route, self._body(req), None)
        name = obj["metadata"]["name"]
        obj["metadata"].pop("resourceVersion", None)
        try:
            ev = await self._store.create(self._key(route, name), obj)
        except StoreError as exc:
            raise self._store_error(route, name, exc) from None
        return json_response(201, ev.record.value)

    def _expect(self, obj: dict[str, Any]) -> int | None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv in (None, ""):
            return None
        try:
            return int(rv)
        except (TypeError, ValueError):
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv!r}") from None

    async def _replace(self, req: Request, route: _Route) -> Response:
        assert route.name is not None
        body = self._body(req)
        key = self._key(route)
        try:
            if route.subresource == "status":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "body must be an object")
                expect = self._expect(body)
                ev = await self._store.update_status(key, body.get("status"), expect_rev=expect)
            else:
                obj = self._validate(route, body, route.name)
                expect = self._expect(obj)
                ev = await self._store.update(key, obj, expect_rev=expect)
        except StoreError as exc:
            raise self._store_error(route, route.name, exc) from None
        return json_response(200, ev.record.value)

    async def _patch(self, req: Request, route: _Route) -> Response:
        assert route.name is not None
        ctype = req.headers.get("content-type", "").split(";")[0].strip()
        if ctype not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json",
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"patch type {ctype!r} is not supported; use merge-patch+json",
            )
        patch = self._body(req)
        for _ in range(5):
            rec = await self._get(route)
            merged = merge_patch(rec.value, patch)
            key = self._key(route)
            try:
                if route.subresource == "status":
                    ev = await self._store.update_status(
                        key, merged.get("status"), expect_rev=rec.mod_rev
                    )
                else:
                    obj = self._validate(route, merged, route.name)
                    want = (
                        self._expect(patch.get("metadata") or {})
                        if isinstance(patch, dict)
                        else None
                    )
                    ev = await self._store.update(key, obj, expect_rev=want or rec.mod_rev)
                return json_response(200, ev.record.value)
            except Conflict as exc:
                if isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion"):
                    raise self._store_error(route, route.name, exc) from None
                continue  # someone wrote in between: re-read and re-apply
            except StoreError as exc:
                raise self._store_error(route, route.name, exc) from None
        raise ApiError(409, "Conflict", "too many concurrent writers; try again")

    async def _delete(self, route: _Route) -> Response:
        assert route.name is not None
        try:
            ev = await self._store.delete(self._key(route))
        except StoreError as exc:
            raise self._store_error(route, route.name, exc) from None
        return json_response(200, ev.record.value)

    def _selectors(self, req: Request) -> Selector:
        ls = parse_label_selector(_q(req, "labelSelector") or "")
        fs = parse_field_selector(_q(req, "fieldSelector") or "")
        return lambda o: ls(o) and fs(o)

    async def _list(self, req: Request, route: _Route) -> Response:
        match = self._selectors(req)
        records, rev = await self._store.list(self._prefix(route))
        items = [r.value for r in records if match(r.value)]
        return json_response(
            200,
            {
                "kind": f"{route.resource.kind}List",
                "apiVersion": route.resource.api_version,
                "metadata": {"resourceVersion": str(rev)},
                "items": items,
            },
        )

    def _watch(self, req: Request, route: _Route) -> Response:
        match = self._selectors(req)
        rv_text = _q(req, "resourceVersion") or "0"
        try:
            rv = int(rv_text)
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from None
        t = _q(req, "timeoutSeconds")
        try:
            timeout = float(t) if t else math.inf
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid timeoutSeconds {t!r}") from None
        prefix = self._prefix(route)
        return Response(
            200,
            headers=[("content-type", "application/json")],
            stream=self._watch_stream(prefix, rv, match, limit_s=timeout),
        )

    async def _watch_stream(
        self, prefix: str, rv: int, match: Selector, *, limit_s: float
    ) -> AsyncIterator[bytes]:
        self.watches += 1
        try:
            with self._store.subscribe() as sub, trio.move_on_after(limit_s):
                last = rv
                try:
                    if rv <= 0:
                        records, last = await self._store.list(prefix)
                        for r in records:
                            if match(r.value):
                                yield _line("ADDED", r.value)
                    else:
                        while True:
                            events = await self._store.changes_since(prefix, last)
                            for ev in events:
                                if match(ev.record.value):
                                    yield _line(ev.type, ev.record.value)
                                last = ev.rev
                            if len(events) < 10000:
                                break
                except (Compacted, FutureRevision) as exc:
                    yield _line(
                        "ERROR",
                        status_body(410, "Expired", f"too old resource version: {rv} ({exc})"),
                    )
                    return
                try:
                    async for ev in sub:
                        if ev.rev <= last or not ev.key.startswith(prefix):
                            continue
                        if match(ev.record.value) or (ev.prev is not None and match(ev.prev.value)):
                            yield _line(ev.type, ev.record.value)
                except SubscriptionLost:
                    self.counters["watches_lost"] += 1
        finally:
            self.watches -= 1


def _line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _q(req: Request, name: str) -> str | None:
    vals = req.query.get(name)
    return vals[-1] if vals else None


def _flag(req: Request, name: str) -> bool:
    return (_q(req, name) or "").lower() in ("1", "true", "yes")


def event_matches(ev: Event, prefix: str) -> bool:
    return ev.key.startswith(prefix)
