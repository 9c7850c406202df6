"""The API's requests as Kubernetes' apiserver counts them: by verb
(get, list, watch, create, update, patch, apply, delete, deletecollection),
API group, resource, subresource and HTTP code, with latency histograms. Plain counters
(no metrics library); ``_metrics.py`` exports them. Labels come only from
known names (a resource or subresource this API serves), so a client cannot
make new series by asking for paths that do not exist."""

from __future__ import annotations

from collections import Counter

import edgeproto
from edgeio import SECONDS_BUCKETS, Histogram

from ._http import Request

_RESOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    (r.group, r.name): r.subresources for r in edgeproto.RESOURCES
}
# metrics.k8s.io (kubectl top), served beside the stored resources.
_RESOURCES.update({("metrics.k8s.io", "nodes"): (), ("metrics.k8s.io", "pods"): ()})
_APPLY = "application/apply-patch+yaml"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def classify(req: Request) -> tuple[str, str, str, str]:
    """(verb, group, resource, subresource) of a request; group and resource
    "" for anything that is not a resource (discovery, /openapi, /metrics,
    the dashboard, unknown paths)."""
    parts = [p for p in req.path.split("/") if p]
    rest: list[str] = []
    group = ""
    if len(parts) >= 2 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    subs = _RESOURCES.get((group, rest[0])) if rest and len(rest) <= 3 else None
    method = req.method.upper()
    if method not in _METHODS:
        method = "OTHER"  # a client must not mint label values
    if subs is None:
        return method.lower(), "", "", ""
    named = len(rest) >= 2
    sub = rest[2] if len(rest) == 3 and rest[2] in subs else ""
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
    return verb, group, rest[0], sub


class RequestStats:
    """Requests by (verb, group, resource, subresource, code) and their
    latency by (verb, group, resource, subresource); watches have no latency
    (they last)."""

    def __init__(self) -> None:
        self.total: Counter[tuple[str, str, str, str, str]] = Counter()
        self.seconds: dict[tuple[str, str, str, str], Histogram] = {}

    def observe(self, req: Request, status: int, seconds: float) -> None:
        key = classify(req)
        if key[2] == "" and status == 404:
            key = ("other", "", "", "")  # any method on a path that is nowhere: one series
        self.total[(*key, str(status))] += 1
        if key[0] == "watch":
            return
        hist = self.seconds.get(key)
        if hist is None:
            hist = self.seconds[key] = Histogram(SECONDS_BUCKETS)
        hist.observe(seconds)
