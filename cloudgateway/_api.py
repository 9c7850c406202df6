"""The HTTP API, shaped like Kubernetes': discovery, CRUD, patches (strategic
merge, JSON merge, JSON patch: ``_patch.py``), the status
subresource, lists with label and field selectors, watches, and errors as
``Status`` objects. Resources come from ``edgeproto.RESOURCES``: a kind added
there (core or under ``/apis/GROUP/VERSION``) is served without changes here."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import re
import secrets
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import trio
import yaml

import edgeproto
from edgeproto import Resource

from ._apimetrics import METRICS_GROUP, METRICS_VERSION, MetricsApi, MetricsNotFound
from ._apistats import RequestStats
from ._backend import normalized_object, settle_new, settle_replacement, with_status
from ._errors import GatewayError
from ._http import HttpConfig, HttpServer, Request, Response, json_response, status_body
from ._kproto import PROTOBUF, ProtobufError, decode_object
from ._openapi import openapi_v2, openapi_v3, openapi_v3_index
from ._patch import PatchError, apply_json_patch, apply_strategic_merge_patch, merge_patch
from ._podstream import StreamOpener, exec_in_pod, exec_websocket, pod_logs, wants_websocket
from ._releaseapi import RELEASES_GROUP, RELEASES_VERSION, ReleasesApi
from ._releases import Releases
from ._revocation import revocation_key, revoke_node
from ._scale import SCALE_API_VERSION, scale_of, scaled_replicas
from ._ssa import ApplyConflict, SsaError, conflict_message, path_text, record_update
from ._ssa import apply as ssa_apply
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
    Subscription,
    SubscriptionLost,
    Unavailable,
)
from ._streams import StreamError
from ._tables import table_of
from ._ui import is_ui_path, ui_response
from ._usage import UsageCache
from ._validate import (
    MAX_DEPTH,
    Cause,
    Invalid,
    is_dns_label,
    is_label_value,
    is_qualified_name,
    validate,
)
from .controllers._gc import Propagation, mark_for_deletion

log = logging.getLogger(__name__)

__all__ = [
    "VERSION_INFO",
    "ApiError",
    "ApiServer",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "status_body",
]

# Every field of Kubernetes' version.Info (the Python client's VersionApi
# refuses an answer missing one); the Go fields say what runs instead.
VERSION_INFO = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-edgeflock",
    "gitCommit": "edgeflock",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor}",
    "compiler": sys.implementation.name,
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_NAMESPACE_VERBS = [v for v in _VERBS if v != "deletecollection"]
# Created when the API starts if missing; the first three cannot be deleted.
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_PROTECTED_NAMESPACES = _INITIAL_NAMESPACES[:3]
_AUTHZ_GROUP = "authorization.k8s.io"
_AUTHZ_REVIEWS = {
    "selfsubjectaccessreviews": "SelfSubjectAccessReview",
    "selfsubjectrulesreviews": "SelfSubjectRulesReview",
}
# Core kinds edgeflock does not run but kubectl looks for (``kubectl cluster-info``
# lists kube-system's Services): served read-only and always empty.
_ABSENT = {"services": ("Service", ("service", "svc"))}
_LIST_BATCH = 500  # records read per store call while filling a page of a paged list
_STATUS_VERBS = ["get", "patch", "update"]
_MERGE_PATCH = "application/merge-patch+json"
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_APPLY_PATCH = "application/apply-patch+yaml"
_PATCH_TYPES = (_STRATEGIC_PATCH, _MERGE_PATCH, _JSON_PATCH, _APPLY_PATCH)
_REPLAY_BATCH = 1000  # history events read per store call while replaying a watch
_CHUNK_LINES = 500  # watch lines per chunk while replaying


def _unavailable(exc: Unavailable) -> ApiError:
    err = ApiError(503, "ServiceUnavailable", f"the store is unavailable, retry: {exc}")
    err.details["retryAfterSeconds"] = 1
    return err


def _unavailable_response(exc: Unavailable) -> Response:
    resp = json_response(503, _unavailable(exc).status())
    resp.headers.append(("retry-after", "1"))
    return resp


class ApiError(GatewayError):
    """An error answered as a Kubernetes ``Status`` with HTTP status ``code``."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.details: dict[str, Any] = {}
        if name is not None:
            self.details["name"] = name
        if kind is not None:
            self.details["kind"] = kind
        if causes is not None:
            self.details["causes"] = causes

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, str(self), self.details)


def _not_found_path(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


# ---- selectors ----------------------------------------------------------------------

Selector = Callable[[Mapping[str, Any]], bool]

_NAME = r"[^\s=!(),]+"
_EXISTS = re.compile(rf"\s*(!?)\s*({_NAME})\s*")
_EQUALITY = re.compile(rf"\s*({_NAME})\s*(==|=|!=)\s*([^\s=!(),]*)\s*")
_SET = re.compile(rf"\s*({_NAME})\s+(in|notin)\s*\(([^()]*)\)\s*")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str) -> Selector:
    """``a=b``, ``a==b``, ``a!=b``, ``a`` (exists), ``!a``, ``a in (x,y)``,
    ``a notin (x,y)``, joined by commas (all must hold). Bad syntax: ApiError 400."""
    reqs: list[tuple[str, str, frozenset[str]]] = []

    def fail(why: str) -> ApiError:
        return ApiError(400, "BadRequest", f"unable to parse label selector {text!r}: {why}")

    for part in _split_requirements(text):
        if m := _SET.fullmatch(part):
            key, op = m.group(1), m.group(2)
            values = frozenset(v.strip() for v in m.group(3).split(","))
        elif m := _EQUALITY.fullmatch(part):
            key, op, values = (
                m.group(1),
                ("!=" if m.group(2) == "!=" else "="),
                frozenset([m.group(3)]),
            )
        elif m := _EXISTS.fullmatch(part):
            key, op, values = m.group(2), ("!" if m.group(1) else "exists"), frozenset()
        else:
            raise fail(f"cannot understand {part.strip()!r}")
        if not is_qualified_name(key):
            raise fail(f"invalid label key {key!r}")
        for v in values:
            if not is_label_value(v):
                raise fail(f"invalid label value {v!r}")
        reqs.append((key, op, values))

    def match(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata")
        labels = meta.get("labels") if isinstance(meta, Mapping) else None
        if not isinstance(labels, Mapping):
            labels = {}
        for key, op, values in reqs:
            present = key in labels
            value = labels.get(key)
            if op in ("=", "in"):
                ok = present and value in values
            elif op in ("!=", "notin"):
                ok = not present or value not in values
            elif op == "exists":
                ok = present
            else:
                ok = not present
            if not ok:
                return False
        return True

    return match


def _path_getter(*path: str) -> Callable[[Mapping[str, Any]], str]:
    def get(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for p in path:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(p)
        return cur if isinstance(cur, str) else ""

    return get


_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "metadata.name": _path_getter("metadata", "name"),
    "metadata.namespace": _path_getter("metadata", "namespace"),
    "spec.nodeName": _path_getter("spec", "nodeName"),
    "status.phase": _path_getter("status", "phase"),
    "type": _path_getter("type"),
    # Events' (``kubectl events --for node/pi-01``).
    **{
        f"involvedObject.{f}": _path_getter("involvedObject", f)
        for f in ("kind", "name", "namespace", "uid", "apiVersion", "resourceVersion", "fieldPath")
    },
    "reason": _path_getter("reason"),
    "source": _path_getter("source", "component"),
    "reportingComponent": _path_getter("reportingComponent"),
}


def parse_field_selector(text: str) -> Selector:
    """``field=value``, ``field==value`` and ``field!=value`` over ``metadata.name``,
    ``metadata.namespace``, ``spec.nodeName``, ``status.phase``, ``type``, and
    events' ``involvedObject.*``, ``reason``, ``source`` and
    ``reportingComponent``; a missing field reads as ``""``. Anything else:
    ApiError 400."""
    reqs: list[tuple[Callable[[Mapping[str, Any]], str], bool, str]] = []
    for part in _split_requirements(text):
        m = _EQUALITY.fullmatch(part)
        if m is None:
            raise ApiError(
                400, "BadRequest", f"invalid field selector {text!r}: cannot understand {part!r}"
            )
        getter = _FIELDS.get(m.group(1))
        if getter is None:
            raise ApiError(
                400,
                "BadRequest",
                f"field label not supported: {m.group(1)} (supported: {', '.join(_FIELDS)})",
            )
        reqs.append((getter, m.group(2) == "!=", m.group(3)))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((getter(obj) == v) != negate for getter, negate, v in reqs)

    return match


# ---- routing ------------------------------------------------------------------------


_POD_STREAMS = ("log", "exec")  # pod subresources served by the pod's node


@dataclass(frozen=True, slots=True)
class _Target:
    resource: Resource
    namespace: str | None  # from the URL; None: cluster-scoped, or all namespaces
    name: str | None  # None: the collection
    subresource: str | None  # "status" or None

    @property
    def key(self) -> str:
        assert self.name is not None
        return edgeproto.make_key(self.resource.name, self.namespace or "", self.name)

    @property
    def prefix(self) -> str:
        if self.resource.namespaced and self.namespace is not None:
            return f"{self.resource.name}/{self.namespace}/"
        return f"{self.resource.name}/"

    def key_for(self, name: str) -> str:
        return edgeproto.make_key(self.resource.name, self.namespace or "", name)


def _wants_table(req: Request) -> bool:
    """kubectl get asks ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...``."""
    accept = req.headers.get("accept", "")
    return any(
        "as=Table" in part and "g=meta.k8s.io" in part and "v=v1" in part
        for part in accept.split(",")
    )


def _parse_json(body: bytes, what: str = "request body") -> Any:
    if not body.strip():
        raise ApiError(400, "BadRequest", f"{what} is empty; expected JSON")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed in JSON")

    try:
        obj = json.loads(body, parse_constant=no_constants)
        json.dumps(obj, ensure_ascii=False).encode()  # lone surrogates cannot be stored
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "BadRequest", f"{what} is not valid JSON: {exc}") from None
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ApiError(400, "BadRequest", f"{what} is nested deeper than {MAX_DEPTH}")
            stack.extend(
                (c, depth + 1) for c in (value.values() if isinstance(value, dict) else value)
            )
    return obj


def _resource_version(obj: Any, where: str) -> int | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if rv is None or rv == "":
        return None
    if isinstance(rv, str) and rv.isdigit() and rv.isascii():
        return int(rv)
    raise ApiError(400, "BadRequest", f"{where}: invalid resourceVersion {rv!r}")


def _translate(ev: Event, match: Selector) -> tuple[str, dict[str, Any]] | None:
    """The watch event a client filtering with ``match`` sees for ``ev``: objects
    entering the selection are ADDED, those leaving it DELETED."""
    if ev.type == "DELETED":
        return ("DELETED", ev.record.value) if match(ev.record.value) else None
    now = match(ev.record.value)
    if ev.prev is None:
        before = now and ev.type == "MODIFIED"
    else:
        before = match(ev.prev.value)
    if now:
        return ("MODIFIED" if before else "ADDED", ev.record.value)
    return ("DELETED", ev.record.value) if before else None


_BAD_TARGET = re.compile("[\x00-\x1f\x7f\ufffd]")


def _check_target(req: Request) -> None:
    """A path or query with control characters (NUL...) or bytes that are not
    UTF-8 names nothing here: a 400, not a store error."""
    texts = [req.path, *req.query, *(v for values in req.query.values() for v in values)]
    if any(_BAD_TARGET.search(t) for t in texts):
        raise ApiError(
            400,
            "BadRequest",
            "the request path or query contains control characters or invalid UTF-8",
        )


def _line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


_FIELD_VALIDATION = ("Ignore", "Warn", "Strict")


class _UnknownFields:
    """A write's ``fieldValidation``: fields its kind's schema does not know are
    dropped (Ignore), dropped and named in ``Warning`` headers (Warn, the
    default), or make the request fail (Strict), as kube-apiserver does."""

    __slots__ = ("found", "mode")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.found: list[str] = []

    @classmethod
    def of(cls, req: Request) -> _UnknownFields:
        mode = req.param("fieldValidation") or "Warn"
        if mode not in _FIELD_VALIDATION:
            raise ApiError(
                400,
                "BadRequest",
                f"fieldValidation must be one of {', '.join(_FIELD_VALIDATION)}, not {mode!r}",
            )
        return cls(mode)

    def check(self, found: list[str]) -> None:
        if found and self.mode == "Strict":
            raise ApiError(
                400,
                "BadRequest",
                "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in found),
            )
        self.found = found

    def warn(self, resp: Response) -> Response:
        if self.mode == "Warn":
            resp.headers.extend(("warning", f'299 - "unknown field \\"{f}\\""') for f in self.found)
        return resp


def _as_json(req: Request) -> Request:
    """``req`` with a protobuf body (kubectl's typed writes) read into JSON."""
    ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != PROTOBUF:
        return req
    try:
        obj = decode_object(req.body)
    except ProtobufError as exc:
        raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
    headers = {**req.headers, "content-type": "application/json"}
    return dataclasses.replace(req, body=json.dumps(obj).encode(), headers=headers)


def _dry_run(req: Request) -> bool:
    """``dryRun=All`` (for DELETE also in the body's DeleteOptions, where
    kubectl puts it): do everything but write. Any other value is a 400."""
    values: list[Any] = list(req.query.get("dryRun", []))
    if req.method == "DELETE" and req.body.strip():
        opts = _parse_json(req.body, "DeleteOptions")
        in_body = opts.get("dryRun") if isinstance(opts, dict) else None
        if in_body is not None and not isinstance(in_body, list):
            raise ApiError(400, "BadRequest", "DeleteOptions.dryRun must be a list")
        values += in_body or []
    for v in values:
        if v != "All":
            raise ApiError(
                400, "BadRequest", f'invalid dryRun value {v!r}: the only supported value is "All"'
            )
    return bool(values)


def _propagation(req: Request, opts: Any) -> Propagation:
    """DeleteOptions' ``propagationPolicy`` (body, where kubectl puts it, or
    query), or the deprecated ``orphanDependents``; Background by default."""
    policy: Any = None
    orphan: Any = None
    if isinstance(opts, dict):
        policy, orphan = opts.get("propagationPolicy"), opts.get("orphanDependents")
    policy = policy or req.query.get("propagationPolicy", [None])[-1]
    if policy is None and orphan is not None:
        policy = "Orphan" if orphan is True or orphan == "true" else "Background"
    if policy is None:
        return "Background"
    if policy not in ("Background", "Foreground", "Orphan"):
        raise ApiError(
            422,
            "Invalid",
            f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: '
            f'"{policy}": supported values: "Foreground", "Background", "Orphan"',
            causes=[{"reason": "FieldValueNotSupported", "field": "propagationPolicy"}],
        )
    return cast(Propagation, policy)


def _field_manager(req: Request) -> str:
    """Who an ordinary write's fields belong to: ``fieldManager``, else the
    client's name from its User-Agent (``kubectl/v1.32 ...`` -> kubectl), as Kubernetes does."""
    given = req.param("fieldManager")
    if given:
        return _checked_manager(given)
    agent = req.headers.get("user-agent", "").split("/")[0].strip()
    return agent[:128] or "unknown"


def _checked_manager(name: str) -> str:
    if len(name) > 128 or not name.isprintable():
        raise ApiError(422, "Invalid", "fieldManager: at most 128 printable characters are allowed")
    return name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _apply_conflict(exc: ApplyConflict, name: str, kind: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        str(exc),
        name=name,
        kind=kind,
        causes=[
            {
                "reason": "FieldManagerConflict",
                "message": conflict_message(manager, api_version, path),
                "field": path_text(path),
            }
            for manager, api_version, path in exc.conflicts
        ],
    )


def _continue_token(rev: int, after: str) -> str:
    """Opaque to clients: the list's revision and the last key it returned."""
    raw = json.dumps({"rv": rev, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _parse_continue(token: str, prefix: str) -> tuple[int, str]:
    bad = ApiError(400, "BadRequest", f"invalid continue token {token!r}")
    try:
        raw = json.loads(base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True))
    except (ValueError, binascii.Error):
        raise bad from None
    rev, after = (raw.get("rv"), raw.get("after")) if isinstance(raw, dict) else (None, None)
    if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0:
        raise bad
    if not isinstance(after, str) or not after.startswith(prefix):
        raise bad  # a token of another list
    return rev, after


def _list_limit(req: Request) -> int | None:
    text = req.param("limit")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ApiError(400, "BadRequest", f"invalid limit {text!r}: expected a whole number")
    return int(text) or None  # limit=0: no limit


class ApiServer:
    """The admin API over ``store``; ``handle`` is an ``_http.Handler``.

    ``node_names``, if given, returns the names of the nodes connected to the
    hub right now; ``statistics()`` reports how many there are."""

    def __init__(
        self,
        store: Store,
        *,
        admin_token: str,
        node_names: Callable[[], Iterable[str]] | None = None,
        streams: StreamOpener | None = None,
        metrics: Callable[[], bytes] | None = None,
        metrics_token: str | None = None,
        usage: UsageCache | None = None,
        releases: Releases | None = None,
    ) -> None:
        """``metrics`` renders ``/metrics`` (Prometheus' text format; the
        API's own families if not given); ``metrics_token``, if given, may read
        ``/metrics`` and nothing else (the admin token may too)."""
        if not admin_token or not admin_token.strip():
            raise GatewayError("the admin token must not be empty")
        if metrics_token is not None and not metrics_token.strip():
            raise GatewayError("the metrics token must not be empty")
        self._store = store
        self._token = admin_token.strip().encode()
        self._metrics_token = metrics_token.strip().encode() if metrics_token else None
        self.requests = RequestStats()
        self._node_names = node_names
        self._streams = streams
        self._metrics = metrics
        # metrics.k8s.io (kubectl top), from the usage nodes report to this hub
        self._usage_api = MetricsApi(store, usage) if usage is not None else None
        # edgeflock.io/v1alpha1 releases (agent upgrades), kept beside the store
        self._releases_api = ReleasesApi(releases) if releases is not None else None
        self._server: HttpServer | None = None
        self._requests = 0
        self._errors: Counter[int] = Counter()
        self._watches_open = 0
        self._watches_lost = 0
        self._by_path = {(r.group, r.version, r.name): r for r in edgeproto.RESOURCES}

    def statistics(self) -> dict[str, int]:
        """Requests served, errors by HTTP status (``errors_404``...), watches."""
        stats = {
            "requests": self._requests,
            "errors": sum(self._errors.values()),
            "watches_open": self._watches_open,
            "watches_lost": self._watches_lost,
        }
        stats.update({f"errors_{code}": n for code, n in sorted(self._errors.items())})
        if self._node_names is not None:
            try:
                stats["nodes_connected"] = len(set(self._node_names()))
            except Exception:
                log.exception("node_names() failed")
        return stats

    def http_statistics(self) -> dict[str, int]:
        """The API's HTTP server: connections open, shed, refused, timed out."""
        return self._server.statistics() if self._server is not None else {}

    async def run(
        self,
        config: HttpConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the API (HTTPS with ``ssl_context``: kubectl sends bearer
        tokens only over TLS) until cancelled. Creates the namespaces every
        cluster has (``default``...) if they are missing."""
        for ns in _INITIAL_NAMESPACES:
            with contextlib.suppress(AlreadyExists):
                await self._store.create(
                    edgeproto.make_key("namespaces", "", ns), _namespace_object(ns)
                )
        self._server = HttpServer(self.handle, config, ssl_context=ssl_context)
        await self._server.run(task_status=task_status)

    def _metrics_response(self, req: Request) -> Response:
        """Prometheus' text format 0.0.4: what ``metrics`` renders, or the
        API's own families."""
        if req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on /metrics")
        from ._metrics import CONTENT_TYPE, api_metrics_text

        body = self._metrics() if self._metrics is not None else api_metrics_text(self)
        return Response(200, body, [("content-type", CONTENT_TYPE)])

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        resp = await self._handle(request)
        self.requests.observe(request, resp.status, time.perf_counter() - started)
        return resp

    async def _handle(self, request: Request) -> Response:
        self._requests += 1
        try:
            resp = await self._dispatch(_as_json(request))
        except ApiError as exc:
            resp = json_response(exc.code, exc.status())
        except StreamError as exc:
            resp = json_response(exc.code, status_body(exc.code, exc.reason, str(exc)))
        except Unavailable as exc:  # the store could not answer now: retry, nothing was done
            resp = _unavailable_response(exc)
        except Exception:
            log.exception(
                "API request %s %s from %s failed", request.method, request.path, request.peer
            )
            resp = json_response(500, status_body(500, "InternalError", "internal error"))
        if resp.status >= 400:
            self._errors[resp.status] += 1
        return resp

    # ---- routing -------------------------------------------------------------------

    async def _dispatch(self, req: Request) -> Response:
        _check_target(req)
        path = req.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return Response(200, b"ok", [("content-type", "text/plain")])
        if path == "/version":
            return json_response(200, VERSION_INFO)
        if path == "/metrics" and self._is_metrics_reader(req):
            return self._metrics_response(req)
        if is_ui_path(req.path):  # the dashboard's static files; its data comes with a token
            return ui_response(req)
        self._authorize(req)
        if path == "/openapi/v2" or path.startswith("/openapi/v3"):
            return self._openapi(req, path)
        if path == "/metrics":
            return self._metrics_response(req)
        parts = path.strip("/").split("/")
        if parts == ["api"]:
            return self._discovery(req, {"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return self._discovery(req, self._group_list())
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) == 2:
            return self._discovery(req, self._group(parts[1], path))
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_found_path(path)
        if group == _AUTHZ_GROUP and version == "v1":
            return await self._review(req, rest, path)
        if group == METRICS_GROUP and self._usage_api is not None:
            return await self._node_usage(req, version, rest, path)
        if group == RELEASES_GROUP and self._releases_api is not None:
            return await self._releases_api.serve(req, version, rest)
        if not rest:
            return self._discovery(req, self._resource_list(group, version, path))
        if (group, version) == ("", "v1"):
            inner = rest[2:] if rest[0] == "namespaces" and len(rest) >= 3 else rest
            if inner[0] in _ABSENT:
                return self._absent(req, inner, path)
        target = self._route(group, version, rest, path)
        return await self._serve(req, target)

    def _is_metrics_reader(self, req: Request) -> bool:
        """The request carries the read-only metrics token."""
        if self._metrics_token is None:
            return False
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(errors="replace"), self._metrics_token
        )

    def _authorize(self, req: Request) -> None:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(errors="replace"), self._token
        ):
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _discovery(self, req: Request, body: dict[str, Any]) -> Response:
        if req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        return json_response(200, body)

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {_AUTHZ_GROUP: ["v1"]}
        if self._usage_api is not None:
            groups[METRICS_GROUP] = [METRICS_VERSION]
        if self._releases_api is not None:
            groups[RELEASES_GROUP] = [RELEASES_VERSION]
        for r in edgeproto.RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group_body(g, vs) for g, vs in sorted(groups.items())],
        }

    def _group(self, group: str, path: str) -> dict[str, Any]:
        versions = [r.version for r in edgeproto.RESOURCES if r.group == group]
        if group == _AUTHZ_GROUP:
            versions = ["v1"]
        if group == METRICS_GROUP and self._usage_api is not None:
            versions = [METRICS_VERSION]
        if group == RELEASES_GROUP and self._releases_api is not None:
            versions = [RELEASES_VERSION]
        if not group or not versions:
            raise _not_found_path(path)
        return {"kind": "APIGroup", "apiVersion": "v1", **_group_body(group, versions)}

    def _resource_list(self, group: str, version: str, path: str) -> dict[str, Any]:
        rs = [r for r in edgeproto.RESOURCES if r.group == group and r.version == version]
        if not rs:
            raise _not_found_path(path)
        items: list[dict[str, Any]] = []
        for r in rs:
            entry: dict[str, Any] = {
                "name": r.name,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": _NAMESPACE_VERBS if r.name == "namespaces" else _VERBS,
            }
            shorts = [s for s in r.short_names if s not in (r.kind.lower(), r.name)]
            if shorts:
                entry["shortNames"] = shorts
            if r.categories:
                entry["categories"] = list(r.categories)
            items.append(entry)
            for sub in r.subresources:
                if sub in _POD_STREAMS or sub == "revocation":
                    continue  # not listed (as before: kubectl finds them by path)
                item: dict[str, Any] = {
                    "name": f"{r.name}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": _STATUS_VERBS,
                }
                if sub == "scale":
                    group_, version_ = SCALE_API_VERSION.split("/")
                    item.update(group=group_, version=version_, kind="Scale")
                items.append(item)
        if (group, version) == ("", "v1"):
            for name, (kind, aliases) in _ABSENT.items():
                items.append(
                    {
                        "name": name,
                        "singularName": aliases[0],
                        "namespaced": True,
                        "kind": kind,
                        "verbs": ["get", "list"],
                        "shortNames": list(aliases[1:]),
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": items,
        }

    def _absent(self, req: Request, rest: list[str], path: str) -> Response:
        """A kind of ``_ABSENT`` (``rest``: its name, maybe an object's name):
        its lists are empty, its objects not found."""
        if req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        if len(rest) > 2 or not all(rest):
            raise _not_found_path(path)
        name = rest[0]
        kind = _ABSENT[name][0]
        if len(rest) == 2:
            msg = f'{name} "{rest[1]}" not found (edgeflock runs no {kind}s)'
            raise ApiError(404, "NotFound", msg, name=rest[1], kind=name)
        meta = {"resourceVersion": str(self._store.current_rev())}
        if _wants_table(req):
            table = table_of(name, [], time.time(), meta["resourceVersion"])
            return json_response(200, table)
        return json_response(
            200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": []}
        )

    def _route(self, group: str, version: str, rest: list[str], path: str) -> _Target:
        if any(not p for p in rest):
            raise _not_found_path(path)
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = self._by_path.get((group, version, rest[0]))
        allowed = res.subresources if res is not None else ()
        if res is None or len(rest) > 3 or (len(rest) == 3 and rest[2] not in allowed):
            raise _not_found_path(path)
        name = rest[1] if len(rest) >= 2 else None
        if namespace is not None and not res.namespaced:
            raise _not_found_path(path)
        if name is not None and res.namespaced and namespace is None:
            raise _not_found_path(path)
        return _Target(res, namespace, name, rest[2] if len(rest) == 3 else None)

    async def _serve(self, req: Request, t: _Target) -> Response:
        m = req.method
        if m in ("POST", "PUT", "PATCH", "DELETE") and _dry_run(req):
            # (an unknown dryRun value is refused before anything runs)
            if t.subresource in (*_POD_STREAMS, "revocation"):
                raise ApiError(400, "BadRequest", f"dryRun is not supported on {t.subresource}")
        if t.name is None:
            if m in ("GET", "HEAD"):
                if m == "GET" and req.flag("watch"):
                    return self._watch(req, t)
                return await self._list(req, t)
            if m == "POST":
                if t.resource.namespaced and t.namespace is None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        f"create {t.resource.name} under /namespaces/NAMESPACE/{t.resource.name}",
                    )
                return await self._create(req, t)
            if m == "DELETE" and t.resource.name != "namespaces":
                return await self._delete_collection(req, t)
            raise ApiError(405, "MethodNotAllowed", f"{m} is not allowed on a collection")
        if t.subresource in _POD_STREAMS:
            return await self._pod_stream(req, t)
        if t.subresource == "revocation":
            return await self._revocation(req, t)
        if t.subresource == "scale":
            return await self._scale(req, t)
        if m in ("GET", "HEAD"):
            rec = await self._get(t)
            if _wants_table(req) and t.subresource is None:
                table = table_of(t.resource.name, [rec.value], time.time(), str(rec.mod_rev))
                return json_response(200, table)
            return json_response(200, rec.value)
        if m == "PUT":
            if t.subresource == "status":
                return await self._replace_status(req, t)
            return await self._replace(req, t)
        if m == "PATCH":
            return await self._patch(req, t)
        if m == "DELETE" and t.subresource is None:
            return await self._delete(req, t)
        raise ApiError(405, "MethodNotAllowed", f"{m} is not allowed on {req.path}")

    async def _pod_stream(self, req: Request, t: _Target) -> Response:
        allowed = ("GET",) if t.subresource == "log" else ("GET", "POST")
        if req.method not in allowed:
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        if self._streams is None:
            raise ApiError(501, "NotImplemented", "this server does not reach nodes")
        pod = (await self._get(t)).value
        if t.subresource == "log":
            return await pod_logs(self._streams, req, pod, t.key)
        if wants_websocket(req):  # kubectl exec
            return await exec_websocket(self._streams, req, pod, t.key)
        if "upgrade" in req.headers:  # kubectl's SPDY fallback: never run the command blind
            raise ApiError(
                400,
                "BadRequest",
                f"{req.headers['upgrade']} is not offered; exec speaks WebSocket "
                "(kubectl 1.30+) and runs commands without stdin or a terminal: drop -i/-t",
            )
        return await exec_in_pod(self._streams, req, pod, t.key)

    # ---- errors --------------------------------------------------------------------

    def _not_found(self, t: _Target, name: str) -> ApiError:
        kind = t.resource.name
        return ApiError(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)

    def _conflict(self, t: _Target, name: str) -> ApiError:
        kind = t.resource.name
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            name=name,
            kind=kind,
        )

    def _store_error(self, t: _Target, name: str, exc: StoreError) -> ApiError:
        kind = t.resource.name
        if isinstance(exc, NotFound):
            return self._not_found(t, name)
        if isinstance(exc, AlreadyExists):
            return ApiError(
                409, "AlreadyExists", f'{kind} "{name}" already exists', name=name, kind=kind
            )
        if isinstance(exc, Conflict):
            return self._conflict(t, name)
        if isinstance(exc, Unavailable):
            return _unavailable(exc)
        log.warning("store error on %s %s: %s", kind, name, exc)
        return ApiError(500, "InternalError", f"store error: {exc}", name=name, kind=kind)

    def _invalid(self, exc: Invalid) -> ApiError:
        return ApiError(
            422,
            "Invalid",
            str(exc),
            name=exc.name,
            kind=exc.kind,
            causes=[
                {"reason": c.reason, "field": c.field, "message": c.message} for c in exc.causes
            ],
        )

    def _validate(
        self,
        t: _Target,
        obj: Any,
        name: str | None,
        fields: _UnknownFields | None = None,
        *,
        old: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        found: list[str] = []
        try:
            out = validate(
                t.resource, obj, namespace=t.namespace, name=name, unknown=found, old=old
            )
        except Invalid as exc:
            raise self._invalid(exc) from None
        if fields is not None:
            fields.check(found)
        return out

    def _openapi(self, req: Request, path: str) -> Response:
        if req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {path}")
        if path == "/openapi/v2":
            return json_response(200, openapi_v2())
        if path == "/openapi/v3":
            return json_response(200, openapi_v3_index())
        doc = openapi_v3(path.removeprefix("/openapi/v3/"))
        if doc is None:
            raise _not_found_path(path)
        return json_response(200, doc)

    # ---- verbs ---------------------------------------------------------------------

    async def _get(self, t: _Target) -> Record:
        assert t.name is not None
        try:
            return await self._store.get(t.key)
        except StoreError as exc:
            raise self._store_error(t, t.name, exc) from None

    async def _create(self, req: Request, t: _Target) -> Response:
        body = _parse_json(req.body)
        if isinstance(body, dict):
            meta = body.get("metadata")
            if isinstance(meta, dict) and not meta.get("name"):
                gen = meta.get("generateName")
                if isinstance(gen, str) and gen:
                    suffix = "".join(
                        secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
                    )
                    body = {**body, "metadata": {**meta, "name": gen + suffix}}
        fields = _UnknownFields.of(req)
        obj = self._validate(t, body, None, fields)
        name = obj["metadata"]["name"]
        meta = obj["metadata"]
        # The server's, as Kubernetes does: kubectl sends creationTimestamp: null.
        for field in ("resourceVersion", "creationTimestamp", "uid"):
            meta.pop(field, None)
        if t.resource.name == "namespaces":
            self._check_namespace(name)
            obj = {**obj, **_namespace_object(name, obj)}
        elif t.resource.namespaced:
            await self._require_namespace(meta["namespace"])
        key = t.key_for(name)
        obj = record_update(None, obj, t.resource.kind, _field_manager(req), now=_now())
        if _dry_run(req):
            try:
                await self._store.get(key)
            except NotFound:
                new = normalized_object(key, obj)
                settle_new(new)
                return fields.warn(json_response(201, new))
            except StoreError as exc:
                raise self._store_error(t, name, exc) from None
            raise self._store_error(t, name, AlreadyExists(f"{key} already exists", key=key))
        try:
            ev = await self._store.create(key, obj)
        except StoreError as exc:
            raise self._store_error(t, name, exc) from None
        return fields.warn(json_response(201, ev.record.value))

    def _check_namespace(self, name: str) -> None:
        if not is_dns_label(name):
            raise self._invalid(
                Invalid(
                    "Namespace",
                    name,
                    [
                        Cause(
                            "metadata.name",
                            "FieldValueInvalid",
                            f"{name!r}: a namespace is a DNS-1123 label (at most 63 "
                            "characters of a-z, 0-9 and '-', starting and ending with an "
                            "alphanumeric)",
                        )
                    ],
                )
            )

    async def _require_namespace(self, namespace: str) -> None:
        """Objects go only into namespaces that exist (404 as Kubernetes answers)."""
        try:
            await self._store.get(edgeproto.make_key("namespaces", "", namespace))
        except NotFound:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                name=namespace,
                kind="namespaces",
            ) from None

    async def _replace(self, req: Request, t: _Target) -> Response:
        """PUT: replace everything but ``.status``, which only the status
        subresource writes (as Kubernetes does)."""
        assert t.name is not None
        body = _parse_json(req.body)
        fields = _UnknownFields.of(req)
        name = t.name
        self._validate(t, body, name, fields)  # refused before the store is read
        expect = _resource_version(body, "metadata.resourceVersion")

        def edit(cur: Record) -> dict[str, Any]:
            new = self._validate(t, body, name, old=cur.value)  # and what may not change
            if "status" in cur.value:
                new["status"] = cur.value["status"]
            else:
                new.pop("status", None)
            return new

        return fields.warn(
            await self._read_modify_write(
                t, expect, edit, dry_run=_dry_run(req), manager=_field_manager(req)
            )
        )

    async def _read_modify_write(
        self,
        t: _Target,
        expect: int | None,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
    ) -> Response:
        """``_modify`` answered with the object written."""
        obj = await self._modify(t, expect, edit, status=status, dry_run=dry_run, manager=manager)
        return json_response(200, obj)

    async def _modify(
        self,
        t: _Target,
        expect: int | None,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
    ) -> dict[str, Any]:
        """Write ``edit(current)``; with ``expect`` (the client's resourceVersion)
        a concurrent write is a Conflict; without it the edit applies to the current object.
        With ``dry_run`` the same checks run and the answer is what would be
        stored, but nothing is written. With ``manager`` the fields the edit
        changes become that manager's (an Update entry in managedFields)."""
        assert t.name is not None
        if manager is not None:
            plain_edit = edit
            kind = t.resource.kind

            def edit(cur: Record) -> Any:
                return record_update(cur.value, plain_edit(cur), kind, manager, now=_now())

        if dry_run:
            cur = await self._get(t)
            try:
                if expect is not None and expect != cur.mod_rev:
                    raise Conflict(f"{t.key} has been modified", key=t.key)
                new = edit(cur)
                obj = with_status(cur, new) if status else normalized_object(t.key, new)
                settle_replacement(cur, obj)
            except StoreError as exc:
                raise self._store_error(t, t.name, exc) from None
            obj["metadata"]["resourceVersion"] = str(cur.mod_rev)
            return obj
        try:
            ev = await self._store.modify(t.key, edit, status=status, expect_rev=expect)
        except StoreError as exc:
            raise self._store_error(t, t.name, exc) from None
        assert ev is not None  # the API's edits always write
        return ev.record.value

    async def _scale(self, req: Request, t: _Target) -> Response:
        """``/scale``: a workload's replicas as an autoscaling/v1 Scale; PUT and
        PATCH (merge, strategic merge, JSON patch on the Scale) write
        ``spec.replicas`` and nothing else."""
        assert t.name is not None
        name = t.name
        if req.method in ("GET", "HEAD"):
            return json_response(200, scale_of((await self._get(t)).value))
        if req.method == "PUT":
            body = _parse_json(req.body)
            expect = _resource_version(body, "metadata.resourceVersion")

            def wanted(cur: Record) -> Any:
                return body

        elif req.method == "PATCH":
            ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in (_STRATEGIC_PATCH, _MERGE_PATCH, _JSON_PATCH):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format ({ctype or 'none'}); "
                    f"accepted on scale: {_STRATEGIC_PATCH}, {_MERGE_PATCH}, {_JSON_PATCH}",
                )
            patch = _parse_json(req.body, "patch")
            expect = None

            def wanted(cur: Record) -> Any:
                try:
                    if ctype == _JSON_PATCH:
                        return apply_json_patch(scale_of(cur.value), patch)
                    return merge_patch(scale_of(cur.value), patch)  # a Scale has no lists
                except PatchError as exc:
                    raise ApiError(422, "Invalid", str(exc), name=name, kind="scale") from None

        else:
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")

        def edit(cur: Record) -> dict[str, Any]:
            try:
                replicas = scaled_replicas(name, wanted(cur))
            except Invalid as exc:
                raise self._invalid(exc) from None
            obj: dict[str, Any] = json.loads(json.dumps(cur.value))
            spec = obj.get("spec")
            if not isinstance(spec, dict):
                spec = obj["spec"] = {}
            spec["replicas"] = replicas
            return obj

        obj = await self._modify(
            t, expect, edit, dry_run=_dry_run(req), manager=_field_manager(req)
        )
        return json_response(200, scale_of(obj))

    async def _replace_status(self, req: Request, t: _Target) -> Response:
        assert t.name is not None
        body = _parse_json(req.body)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        meta = body.get("metadata")
        if isinstance(meta, dict) and meta.get("name") not in (None, t.name):
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name "
                f"on the URL ({t.name})",
            )
        status = body.get("status")
        self._check_status(t, status)
        expect = _resource_version(body, "metadata.resourceVersion")
        if _dry_run(req):
            return await self._read_modify_write(
                t, expect, lambda _cur: status, status=True, dry_run=True
            )
        try:
            ev = await self._store.update_status(t.key, status, expect_rev=expect)
        except StoreError as exc:
            raise self._store_error(t, t.name, exc) from None
        return json_response(200, ev.record.value)

    def _check_status(self, t: _Target, status: Any) -> None:
        if status is not None and not isinstance(status, dict):
            raise self._invalid(
                Invalid(
                    t.resource.kind,
                    t.name or "",
                    [Cause("status", "FieldValueInvalid", "must be an object")],
                )
            )

    async def _patch(self, req: Request, t: _Target) -> Response:
        assert t.name is not None
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({ctype or 'none'}); "
                f"accepted: {', '.join(_PATCH_TYPES)}",
            )
        if ctype == _APPLY_PATCH:
            return await self._apply(req, t)
        patch = _parse_json(req.body, "patch")
        if ctype == _JSON_PATCH:
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            expect = None
        else:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            expect = _resource_version(patch, "patch metadata.resourceVersion")
        kind = t.resource.kind

        def patched(cur: Record) -> Any:
            try:
                if ctype == _JSON_PATCH:
                    return apply_json_patch(cur.value, patch)
                if ctype == _STRATEGIC_PATCH:
                    return apply_strategic_merge_patch(cur.value, patch, kind)
                return merge_patch(cur.value, patch)
            except PatchError as exc:
                raise ApiError(
                    422, "Invalid", str(exc), name=t.name, kind=t.resource.name
                ) from None

        name = t.name
        if t.subresource == "status":

            def edit_status(cur: Record) -> Any:
                new = patched(cur)
                status = new.get("status") if isinstance(new, dict) else None
                self._check_status(t, status)
                return status

            return await self._read_modify_write(
                t, expect, edit_status, status=True, dry_run=_dry_run(req)
            )

        fields = _UnknownFields.of(req)

        def edit(cur: Record) -> dict[str, Any]:
            obj = self._validate(t, patched(cur), name, fields, old=cur.value)
            if "status" in cur.value:
                obj["status"] = cur.value["status"]
            else:
                obj.pop("status", None)
            return obj

        return fields.warn(
            await self._read_modify_write(
                t, expect, edit, dry_run=_dry_run(req), manager=_field_manager(req)
            )
        )

    async def _apply(self, req: Request, t: _Target) -> Response:
        """Server-side apply (``_ssa.py``): merge the applied configuration,
        owned by ``fieldManager``; create the object if it is absent."""
        assert t.name is not None
        name = t.name
        kind = t.resource.kind
        if t.subresource is not None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"server-side apply is not supported on {t.subresource}; apply the object",
            )
        manager = req.param("fieldManager")
        if not manager:
            raise ApiError(
                422, "Invalid", "fieldManager is required for apply requests (kubectl: kubectl)"
            )
        manager = _checked_manager(manager)
        try:
            config = yaml.safe_load(req.body.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ApiError(
                400, "BadRequest", f"the applied configuration is not YAML: {exc}"
            ) from None
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "the applied configuration must be an object")
        if config.get("kind") != kind or not config.get("apiVersion"):
            raise ApiError(
                400,
                "BadRequest",
                f"the applied configuration must give apiVersion and kind {kind!r} "
                f"(got kind {config.get('kind')!r})",
            )
        expect = _resource_version(config, "metadata.resourceVersion")
        force = req.flag("force")
        fields = _UnknownFields.of(req)

        def applied(cur: Record | None) -> dict[str, Any]:
            try:
                obj = ssa_apply(
                    None if cur is None else cur.value,
                    config,
                    kind,
                    manager,
                    force=force,
                    now=_now(),
                )
            except ApplyConflict as exc:
                raise _apply_conflict(exc, name, t.resource.name) from None
            except SsaError as exc:
                raise ApiError(422, "Invalid", str(exc), name=name, kind=t.resource.name) from None
            obj = self._validate(t, obj, name, fields, old=None if cur is None else cur.value)
            if cur is not None and "status" in cur.value:
                obj["status"] = cur.value["status"]
            else:
                obj.pop("status", None)
            return obj

        try:
            await self._store.get(t.key)
        except NotFound:
            return fields.warn(await self._apply_create(req, t, applied(None)))
        except StoreError as exc:
            raise self._store_error(t, name, exc) from None
        return fields.warn(await self._read_modify_write(t, expect, applied, dry_run=_dry_run(req)))

    async def _apply_create(self, req: Request, t: _Target, obj: dict[str, Any]) -> Response:
        assert t.name is not None
        meta = obj["metadata"]
        for field in ("resourceVersion", "creationTimestamp", "uid"):
            meta.pop(field, None)
        if t.resource.name == "namespaces":
            self._check_namespace(t.name)
            obj = {**obj, **_namespace_object(t.name, obj)}
        elif t.resource.namespaced:
            await self._require_namespace(meta["namespace"])
        if _dry_run(req):
            new = normalized_object(t.key, obj)
            settle_new(new)
            return json_response(201, new)
        try:
            ev = await self._store.create(t.key, obj)
        except StoreError as exc:
            raise self._store_error(t, t.name, exc) from None
        return json_response(201, ev.record.value)

    async def _delete(self, req: Request, t: _Target) -> Response:
        assert t.name is not None
        expect: int | None = None
        uid: Any = None
        opts: Any = None
        if req.body.strip():
            opts = _parse_json(req.body, "DeleteOptions")
            pre = opts.get("preconditions") if isinstance(opts, dict) else None
            if isinstance(pre, dict):
                expect = _resource_version({"metadata": pre}, "preconditions")
                uid = pre.get("uid")
        if uid is not None:
            cur = await self._get(t)
            if cur.value["metadata"].get("uid") != uid:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    f"{cur.value['metadata'].get('uid')}",
                    name=t.name,
                    kind=t.resource.name,
                )
            expect = cur.mod_rev if expect is None else expect
        if t.resource.name == "namespaces" and t.name in _PROTECTED_NAMESPACES:
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{t.name}" is forbidden: this namespace may not be deleted',
                name=t.name,
                kind="namespaces",
            )
        if _dry_run(req):
            cur = await self._get(t)
            if expect is not None and expect != cur.mod_rev:
                raise self._conflict(t, t.name)
            return json_response(200, cur.value)
        policy = _propagation(req, opts)
        if policy != "Background" and t.resource.name not in ("namespaces", "nodes"):
            # marked (deletionTimestamp + finalizer); the garbage collector
            # orphans or deletes the dependents, then the object
            now = _now()
            try:
                marked = await self._store.modify(
                    t.key, lambda cur: mark_for_deletion(cur.value, policy, now), expect_rev=expect
                )
                value = marked.record.value if marked is not None else (await self._get(t)).value
            except StoreError as exc:
                raise self._store_error(t, t.name, exc) from None
            return json_response(200, value)
        try:
            ev = await self._delete_key(t.resource, t.key, expect)
        except StoreError as exc:
            raise self._store_error(t, t.name, exc) from None
        return json_response(200, ev.record.value)

    async def _delete_key(self, resource: Resource, key: str, expect: int | None) -> Event:
        """Delete one object, with what follows from it: a deleted Node's
        certificates are revoked, a deleted Namespace's objects deleted (here,
        before the answer: there is no Terminating phase)."""
        _, _, name = edgeproto.split_key(key)
        if resource.name == "nodes":
            # Revoked first, or the board could reconnect between the delete and
            # the revocation and its Node come back with it.
            cur = await self._store.get(key)
            if expect is not None and cur.mod_rev != expect:
                raise Conflict(f"{key} is at revision {cur.mod_rev}, not {expect}", key=key)
            await revoke_node(self._store, name)
        ev = await self._store.delete(key, expect_rev=expect)
        if resource.name == "namespaces":
            for r in edgeproto.RESOURCES:
                if r.namespaced:
                    records, _ = await self._store.list(f"{r.name}/{name}/")
                    for rec in records:
                        with contextlib.suppress(NotFound):
                            await self._store.delete(rec.key)
        return ev

    async def _delete_collection(self, req: Request, t: _Target) -> Response:
        """DELETE on a collection: every object the label and field selectors
        match; the answer lists them as they were deleted."""
        if t.resource.namespaced and t.namespace is None:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"delete {t.resource.name} under /namespaces/NAMESPACE/{t.resource.name}",
            )
        match = self._selector(req)
        dry = _dry_run(req)
        records, rev = await self._store.list(t.prefix)
        deleted: list[dict[str, Any]] = []
        for rec in records:
            if not match(rec.value):
                continue
            if dry:
                deleted.append(rec.value)
                continue
            try:
                ev = await self._delete_key(t.resource, rec.key, None)
            except NotFound:
                continue  # deleted meanwhile
            except StoreError as exc:
                raise self._store_error(t, rec.key.rpartition("/")[2], exc) from None
            deleted.append(ev.record.value)
            rev = ev.rev
        return json_response(
            200,
            {
                "kind": f"{t.resource.kind}List",
                "apiVersion": t.resource.api_version,
                "metadata": {"resourceVersion": str(rev)},
                "items": deleted,
            },
        )

    async def _review(self, req: Request, rest: list[str], path: str) -> Response:
        """``authorization.k8s.io/v1``: discovery, and the self-reviews that
        ``kubectl auth can-i`` posts. The admin token may do everything."""
        if not rest:
            resources = [
                {
                    "name": name,
                    "singularName": kind.lower(),
                    "namespaced": False,
                    "kind": kind,
                    "verbs": ["create"],
                }
                for name, kind in _AUTHZ_REVIEWS.items()
            ]
            body = {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{_AUTHZ_GROUP}/v1",
                "resources": resources,
            }
            return self._discovery(req, body)
        kind = _AUTHZ_REVIEWS.get(rest[0]) if len(rest) == 1 else None
        if kind is None:
            raise _not_found_path(path)
        if req.method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        review = _parse_json(req.body, kind)
        if not isinstance(review, dict) or not isinstance(review.get("spec"), dict):
            raise ApiError(400, "BadRequest", f"a {kind} is an object with a spec")
        if kind == "SelfSubjectAccessReview":
            status: dict[str, Any] = {
                "allowed": True,
                "reason": "the admin token may do everything",
            }
        else:
            status = {
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": False,
            }
        answer = {
            "kind": kind,
            "apiVersion": f"{_AUTHZ_GROUP}/v1",
            "metadata": {"creationTimestamp": edgeproto.rfc3339(time.time())},
            "spec": review["spec"],
            "status": status,
        }
        return json_response(201, answer)

    async def _node_usage(self, req: Request, version: str, rest: list[str], path: str) -> Response:
        """``metrics.k8s.io/v1beta1``: NodeMetrics and PodMetrics (``_apimetrics``)."""
        assert self._usage_api is not None
        if version != METRICS_VERSION or any(not p for p in rest):
            raise _not_found_path(path)
        if req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        if req.flag("watch"):
            raise ApiError(405, "MethodNotAllowed", f"watch is not supported on {req.path}")
        try:
            resp = await self._usage_api.serve(req, rest, self._selector(req))
        except MetricsNotFound as exc:
            raise ApiError(404, "NotFound", str(exc), name=exc.name, kind=exc.kind) from None
        if resp is None:
            raise _not_found_path(path)
        return resp

    async def _revocation(self, req: Request, t: _Target) -> Response:
        """``POST nodes/X/revocation``: lock out every certificate of X issued
        so far (the Node, if any, stays); ``GET`` tells when X was revoked."""
        assert t.name is not None
        if req.method == "POST":
            try:
                await revoke_node(self._store, t.name)
            except StoreError as exc:
                raise self._store_error(t, t.name, exc) from None
        elif req.method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        try:
            rec = await self._store.get(revocation_key(t.name))
        except NotFound:
            raise ApiError(
                404, "NotFound", f'node "{t.name}" is not revoked', name=t.name, kind="nodes"
            ) from None
        return json_response(200, rec.value)

    # ---- list and watch ------------------------------------------------------------

    def _selector(self, req: Request) -> Selector:
        labels = parse_label_selector(req.param("labelSelector") or "")
        fields = parse_field_selector(req.param("fieldSelector") or "")
        return lambda o: labels(o) and fields(o)

    async def _list(self, req: Request, t: _Target) -> Response:
        """A list, or with ``limit`` one page of it: ``metadata.continue`` then
        names the rest, read at the first page's revision (410 Expired once
        compaction has passed it)."""
        match = self._selector(req)
        limit = _list_limit(req)
        token = req.param("continue")
        rev: int | None = None
        after: str | None = None
        if token:
            if req.param("resourceVersion"):
                raise ApiError(
                    400,
                    "BadRequest",
                    "specifying resource version is not allowed when using continue",
                )
            rev, after = _parse_continue(token, t.prefix)
        items: list[dict[str, Any]] = []
        more = False
        try:
            while True:
                batch = None if limit is None else _LIST_BATCH
                records, rev = await self._store.list(t.prefix, rev=rev, after=after, limit=batch)
                for r in records:
                    if limit is not None and len(items) == limit:
                        more = True
                        break
                    after = r.key
                    if match(r.value):
                        items.append(r.value)
                if more or batch is None or len(records) < batch:
                    break
        except Compacted:
            raise ApiError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list "
                "result. You can start a new list without the continue parameter.",
            ) from None
        except FutureRevision:
            raise ApiError(400, "BadRequest", f"invalid continue token {token!r}") from None
        meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if more and after is not None:
            meta["continue"] = _continue_token(rev, after)
        if _wants_table(req):
            table = table_of(t.resource.name, items, time.time(), str(rev))
            table["metadata"] = meta
            return json_response(200, table)
        return json_response(
            200,
            {
                "kind": f"{t.resource.kind}List",
                "apiVersion": t.resource.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def _watch(self, req: Request, t: _Target) -> Response:
        match = self._selector(req)
        text = req.param("resourceVersion") or "0"
        if not (text.isascii() and text.isdigit()):
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {text!r}")
        seconds = req.param("timeoutSeconds")
        try:
            limit = float(seconds) if seconds else math.inf
        except ValueError:
            limit = math.nan
        if math.isnan(limit) or limit < 0:
            raise ApiError(400, "BadRequest", f"invalid timeoutSeconds {seconds!r}")
        stream = _WatchStream(self, t.prefix, int(text), match, trio.current_time() + limit)
        return Response(200, headers=[("content-type", "application/json")], stream=stream)


def _namespace_object(name: str, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Namespace as Kubernetes keeps one: labelled with its name, Active."""
    obj = obj or {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    meta = obj.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}
    return {**obj, "metadata": {**meta, "labels": labels}, "status": {"phase": "Active"}}


def _group_body(group: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
    }


class _WatchStream:
    """The body of a watch: history (or the current objects) first, then live
    events, as newline-delimited JSON chunks. Subscribed on creation, before any
    history is read, so no write falls between the two."""

    def __init__(
        self, api: ApiServer, prefix: str, rv: int, match: Selector, deadline: float
    ) -> None:
        self._api = api
        self._store = api._store
        self._prefix = prefix
        self._rv = rv
        self._match = match
        self._deadline = deadline
        self._exit = contextlib.ExitStack()
        self._sub: Subscription = self._exit.enter_context(self._store.subscribe())
        self._pending: deque[bytes] = deque()
        self._last = rv
        self._replayed = False
        self._done = False
        self._closed = False
        api._watches_open += 1

    def __aiter__(self) -> _WatchStream:
        return self

    async def __anext__(self) -> bytes:
        if not self._replayed:
            self._replayed = True
            await self._replay()
        if self._pending:
            return self._take()
        while not self._done:
            with trio.move_on_at(self._deadline):
                try:
                    ev = await self._sub.receive()
                except SubscriptionLost:
                    self._api._watches_lost += 1
                    log.info("watch on %s fell behind; the client must re-list", self._prefix)
                    break
                if ev.rev <= self._last or not ev.key.startswith(self._prefix):
                    continue
                out = _translate(ev, self._match)
                if out is not None:
                    return _line(*out)
                continue
            break  # deadline
        await self.aclose()
        raise StopAsyncIteration

    def _take(self) -> bytes:
        lines = [self._pending.popleft() for _ in range(min(_CHUNK_LINES, len(self._pending)))]
        return b"".join(lines)

    async def _replay(self) -> None:
        if self._rv == 0:
            records, self._last = await self._store.list(self._prefix)
            self._pending.extend(_line("ADDED", r.value) for r in records if self._match(r.value))
            return
        try:
            while True:
                events = await self._store.changes_since(
                    self._prefix, self._last, limit=_REPLAY_BATCH
                )
                for ev in events:
                    out = _translate(ev, self._match)
                    if out is not None:
                        self._pending.append(_line(*out))
                    self._last = ev.rev
                if len(events) < _REPLAY_BATCH:
                    break
        except Compacted as exc:
            self._pending.append(
                _line(
                    "ERROR",
                    status_body(410, "Expired", f"too old resource version: {self._rv} ({exc})"),
                )
            )
            self._done = True
        except FutureRevision:
            self._pending.append(
                _line(
                    "ERROR",
                    status_body(
                        504,
                        "Timeout",
                        f"Too large resource version: {self._rv}, "
                        f"current: {self._store.current_rev()}",
                    ),
                )
            )
            self._done = True

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._exit.close()
            self._api._watches_open -= 1
        self._done = True
        self._replayed = True
        self._pending.clear()
        await trio.lowlevel.checkpoint()
