"""The API's requests as Kubernetes' apiserver counts them: by verb
(get, list, watch, create, update, patch, apply, delete, deletecollection),
resource, subresource and HTTP code, with latency histograms. Plain counters
(no metrics library); ``_metrics.py`` exports them. Labels come only from
known names (a resource or subresource this API serves), so a client cannot
make new series by asking for paths that do not exist."""

from __future__ import annotations

from collections import Counter

import edgeproto
from edgeio import SECONDS_BUCKETS, Histogram

from ._http import Request

_RESOURCES = {r.name: r for r in edgeproto.RESOURCES}
_APPLY = "application/apply-patch+yaml"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def classify(req: Request) -> tuple[str, str, str]:
    """(verb, resource, subresource) of a request; resource "" for anything
    that is not a resource (discovery, /openapi, /metrics, unknown paths)."""
    parts = [p for p in req.path.split("/") if p]
    rest: list[str] = []
    if len(parts) >= 2 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    res = _RESOURCES.get(rest[0]) if rest and len(rest) <= 3 else None
    method = req.method.upper()
    if method not in _METHODS:
        method = "OTHER"  # a client must not mint label values
    if res is None:
        return method.lower(), "", ""
    named = len(rest) >= 2
    sub = rest[2] if len(rest) == 3 and rest[2] in res.subresources else ""
    if method in ("GET", "HEAD"):
        verb = "get" if named else ("watch" if req.flag("watch") else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        verb = "apply" if ctype == _APPLY else "patch"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = method.lower()
    return verb, res.name, sub


class RequestStats:
    """Requests by (verb, resource, subresource, code) and their latency by
    (verb, resource, subresource); watches have no latency (they last)."""

    def __init__(self) -> None:
        self.total: Counter[tuple[str, str, str, str]] = Counter()
        self.seconds: dict[tuple[str, str, str], Histogram] = {}

    def observe(self, req: Request, status: int, seconds: float) -> None:
        verb, resource, sub = classify(req)
        if resource == "" and status == 404:
            verb = "other"  # any method on a path that is nowhere: one series
        self.total[verb, resource, sub, str(status)] += 1
        if verb == "watch":
            return
        hist = self.seconds.get((verb, resource, sub))
        if hist is None:
            hist = self.seconds[verb, resource, sub] = Histogram(SECONDS_BUCKETS)
        hist.observe(seconds)
