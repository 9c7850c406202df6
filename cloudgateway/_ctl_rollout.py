"""``edgectl rollout status|history|undo|pause|resume|restart``, ``set image``
and ``scale``: kubectl's commands, against the same API objects.

What is decided and printed comes from ``_ctl_rollout_views`` (kubectl's
decisions); this module fetches, watches and patches over the API. Kubernetes
has no paused DaemonSet: edgeflock's pause mark (an annotation the DaemonSet
controller honours) stands in for one. Registered in ``ctl._parser`` by
``add_parsers``; each subparser names its handler in ``run``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from edgeproto import Resource

from . import _ctl_rollout_views as views
from ._tables import get_path
from .ctl import Client, CtlError, _Ctx, _global_flags, _names, api_path, resolve_kind, server_error

__all__ = ["add_parsers", "parse_duration"]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


# ---- HTTP: PATCH with a patch type --------------------------------------------------


def patch(client: Client, path: str, body: Any, content_type: str) -> tuple[int, Any]:
    """PATCH ``path`` with ``body`` as ``content_type``: (status, decoded answer),
    errors answered by the server returned, not raised (as ``Client.request``)."""
    return client.send_bytes("PATCH", path, json.dumps(body).encode(), content_type)


# ---- targets ------------------------------------------------------------------------


def qualified(r: Resource) -> str:
    """``daemonset.apps``: how kubectl names a kind in its messages."""
    return f"{r.kind.lower()}.{r.group}" if r.group else r.kind.lower()


def plural(r: Resource) -> str:
    """``daemonsets.apps``: how the API and kubectl name a resource in errors."""
    return f"{r.name}.{r.group}" if r.group else r.name


def _targets(ctx: _Ctx, kinds: tuple[str, ...], what: str) -> list[tuple[Resource, str]]:
    """``KIND/NAME...`` or ``KIND NAME...`` -> [(resource, name)], each of a kind
    in ``kinds``."""
    words = list(ctx.args.resource)
    if not words:
        raise CtlError("error: required resource not specified (KIND/NAME or KIND NAME...)", 2)
    out: list[tuple[Resource, str]] = []
    if "/" in words[0]:
        for w in words:
            if "/" not in w:
                raise CtlError(
                    "error: there is no need to specify a resource type as a separate argument "
                    "when passing arguments in resource/name form",
                    2,
                )
            kind, names = _names(w, [])
            out += [(resolve_kind(kind), n) for n in names]
    else:
        kind, names = _names(words[0], words[1:])
        if not names:
            raise CtlError(f"error: {what} needs a NAME (e.g. {kind}/NAME)", 2)
        r = resolve_kind(kind)
        out = [(r, n) for n in names]
    for r, _ in out:
        if r.name not in kinds:
            raise CtlError(f"error: {what} is not supported for {plural(r)}")
    return out


def _ns(ctx: _Ctx) -> str:
    return ctx.namespace or "default"


def _get(ctx: _Ctx, r: Resource, name: str) -> dict[str, Any]:
    code, body = ctx.client.request("GET", api_path(r, _ns(ctx), name))
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    return body


def _list(ctx: _Ctx, kind: str, selector: str) -> list[dict[str, Any]]:
    r = resolve_kind(kind)
    query = "?" + urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
    code, body = ctx.client.request("GET", api_path(r, _ns(ctx)) + query)
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    return [i for i in body.get("items") or [] if isinstance(i, dict)]


def _patch(ctx: _Ctx, r: Resource, name: str, body: Any, ctype: str, sub: str = "") -> Any:
    path = api_path(r, _ns(ctx), name) + (f"/{sub}" if sub else "")
    code, answer = patch(ctx.client, path, body, ctype)
    if code != 200:
        raise CtlError(server_error(code, answer))
    return answer


def _each(
    ctx: _Ctx, targets: list[tuple[Resource, str]], one: Callable[[Resource, str], str]
) -> int:
    """Run ``one`` per target, printing its line; errors go to stderr and the
    others still run (kubectl's ContinueOnError); exit 1 if any failed."""
    rc = 0
    for r, name in targets:
        try:
            ctx.out.write(one(r, name) + "\n")
        except CtlError as exc:
            if exc.code != 1:
                raise
            ctx.err.write(f"{exc}\n")
            rc = 1
        except views.RolloutError as exc:
            ctx.err.write(f"error: {exc}\n")
            rc = 1
    return rc


# ---- rollout status -----------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``2h``, ``0``) in seconds, as kubectl's
    ``--timeout`` takes it."""
    t = text.strip()
    if t in ("0", "+0", ""):
        return 0.0
    pos, total = 0, 0.0
    while pos < len(t):
        m = _DURATION.match(t, pos)
        if m is None:
            raise CtlError(f'error: invalid duration "{text}" (e.g. 30s, 5m, 1h)', 2)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "t", "true"):
        return True
    if t in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def _status_text(viewer: views.Viewer, obj: dict[str, Any]) -> tuple[str, bool]:
    message, done = viewer(obj)
    lines = [message, *([] if done else views.edge_detail(obj))]
    return "\n".join(lines) + "\n", done


def cmd_rollout_status(ctx: _Ctx) -> int:
    """kubectl's ``rollout status``: the status of every change until done
    (or once, with ``--watch=false``); exit 1 on an error the viewer reports
    (progress deadline exceeded), the object deleted, or ``--timeout``."""
    targets = _targets(ctx, ("daemonsets", "deployments"), "rollout status")
    if len(targets) != 1:
        raise CtlError("error: rollout status takes exactly one resource", 2)
    r, name = targets[0]
    viewer = views.daemonset_status if r.name == "daemonsets" else views.deployment_status
    timeout = parse_duration(ctx.args.timeout)
    deadline = time.monotonic() + timeout if timeout > 0 else math.inf
    obj = _get(ctx, r, name)
    last = ""

    def show(o: dict[str, Any]) -> bool:
        nonlocal last
        try:
            text, done = _status_text(viewer, o)
        except views.RolloutError as exc:
            raise CtlError(f"error: {exc}") from None
        if text != last:  # kubectl repeats a line per event; one is enough
            ctx.out.write(text)
            ctx.out.flush()
            last = text
        held = None if done else views.held_by_controller(o)
        if held is not None:  # it will not go on by itself: say so, as a deadline is
            raise CtlError(
                f'error: {r.kind.lower()} "{name}" rollout paused: {held} '
                f"(edgectl rollout undo {r.name}/{name}, or resume)"
            )
        return done

    if show(obj) or not ctx.args.watch:
        return 0
    rv = str(get_path(obj, "metadata", "resourceVersion") or "0")
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CtlError("error: timed out waiting for the condition")
        query: dict[str, str] = {
            "watch": "1",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": rv,
        }
        if remaining != math.inf:
            query["timeoutSeconds"] = f"{remaining:.3f}"
        path = api_path(r, _ns(ctx)) + "?" + urllib.parse.urlencode(query)
        for ev in ctx.client.stream(path):
            o = ev.get("object")
            if not isinstance(o, dict):
                continue
            kind = ev.get("type")
            if kind == "ERROR":
                if o.get("code") == 410:  # history compacted: start again from now
                    o = _get(ctx, r, name)
                else:
                    raise CtlError(server_error(int(o.get("code") or 500), o))
            elif kind == "DELETED":
                raise CtlError("error: object has been deleted")
            elif kind not in ("ADDED", "MODIFIED"):
                continue
            rv = str(get_path(o, "metadata", "resourceVersion") or rv)
            if show(o):
                return 0


# ---- rollout history / undo ---------------------------------------------------------


def _history(ctx: _Ctx, r: Resource, obj: dict[str, Any]) -> dict[int, dict[str, Any]]:
    selector = views.selector_string(get_path(obj, "spec", "selector"))
    if r.name == "daemonsets":
        return views.daemonset_history(obj, _list(ctx, "controllerrevisions", selector))
    return views.deployment_history(obj, _list(ctx, "replicasets", selector))


def _template_of(r: Resource, entry: dict[str, Any]) -> dict[str, Any]:
    if r.name == "daemonsets":
        return views.revision_template(entry)
    # kubectl shows a ReplicaSet's change-cause among its template's annotations
    t = json.loads(json.dumps(get_path(entry, "spec", "template") or {}))
    cause = get_path(entry, "metadata", "annotations", views.CHANGE_CAUSE)
    if cause and isinstance(t, dict):
        meta = t.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), views.CHANGE_CAUSE: cause}
    return t if isinstance(t, dict) else {}


def cmd_rollout_history(ctx: _Ctx) -> int:
    args = ctx.args
    targets = _targets(ctx, ("daemonsets", "deployments"), "rollout history")

    def one(r: Resource, name: str) -> str:
        obj = _get(ctx, r, name)
        history = _history(ctx, r, obj)
        if args.revision and args.revision not in history:
            raise views.RolloutError("unable to find the specified revision")
        if args.output:
            entries = (
                [history[args.revision]] if args.revision else [history[k] for k in sorted(history)]
            )
            for e in entries:
                _dump_entry(ctx, e, args.output)
            return ""
        if args.revision:
            body = views.describe_template(_template_of(r, history[args.revision]))
            return f"{qualified(r)}/{name} with revision #{args.revision}\n{body}"
        return f"{qualified(r)}/{name} \n{views.history_table(history)}"

    return _each(ctx, targets, one)


def _dump_entry(ctx: _Ctx, entry: dict[str, Any], fmt: str) -> None:
    from .ctl import _dump

    _dump(entry, fmt, ctx.out)


def cmd_rollout_undo(ctx: _Ctx) -> int:
    to_revision = ctx.args.to_revision
    targets = _targets(ctx, ("daemonsets", "deployments"), "rollout undo")

    def one(r: Resource, name: str) -> str:
        obj = _get(ctx, r, name)
        history = _history(ctx, r, obj)
        label = f"{qualified(r)}/{name}"
        if r.name == "daemonsets":
            body: Any = views.daemonset_undo_patch(obj, history, to_revision)
            ctype = STRATEGIC
        else:
            body = views.deployment_undo_patch(obj, history, to_revision)
            ctype = JSON_PATCH
        if body is None:
            matches = f"current template already matches revision {to_revision}"
            return f"{label} skipped rollback ({matches})"
        try:
            _patch(ctx, r, name, body, ctype)
        except CtlError as exc:
            raise CtlError(f"error: failed restoring revision {to_revision}: {exc}") from None
        return f"{label} rolled back"

    return _each(ctx, targets, one)


# ---- rollout pause / resume / restart -----------------------------------------------


def _pause(ctx: _Ctx, paused: bool) -> int:
    verb = "pause" if paused else "resume"
    targets = _targets(ctx, ("daemonsets", "deployments"), f"rollout {verb}")

    def one(r: Resource, name: str) -> str:
        obj = _get(ctx, r, name)
        label = f"{qualified(r)}/{name}"
        if r.name == "deployments":
            now = get_path(obj, "spec", "paused") is True
            body: dict[str, Any] = {"spec": {"paused": True if paused else None}}
        else:
            now = get_path(obj, "metadata", "annotations", views.DS_PAUSED) is not None
            body = {"metadata": {"annotations": {views.DS_PAUSED: "true" if paused else None}}}
        if now == paused:
            state = "is already paused" if paused else "is not paused"
            raise CtlError(f'error: {plural(r)} "{name}" {state}')
        _patch(ctx, r, name, body, MERGE)
        return f"{label} {'paused' if paused else 'resumed'}"

    return _each(ctx, targets, one)


def cmd_rollout_pause(ctx: _Ctx) -> int:
    return _pause(ctx, True)


def cmd_rollout_resume(ctx: _Ctx) -> int:
    return _pause(ctx, False)


def cmd_rollout_restart(ctx: _Ctx) -> int:
    """A new template annotation (``kubectl.kubernetes.io/restartedAt``): every
    pod is replaced by the rollout it starts."""
    targets = _targets(ctx, ("daemonsets", "deployments"), "rollout restart")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def one(r: Resource, name: str) -> str:
        obj = _get(ctx, r, name)
        if r.name == "deployments" and get_path(obj, "spec", "paused") is True:
            raise CtlError(
                f'error: {plural(r)} "{name}" can\'t restart paused deployment '
                "(run rollout resume first)"
            )
        body = {"spec": {"template": {"metadata": {"annotations": {views.RESTARTED_AT: stamp}}}}}
        _patch(ctx, r, name, body, STRATEGIC)
        return f"{qualified(r)}/{name} restarted"

    return _each(ctx, targets, one)


# ---- set image ----------------------------------------------------------------------


def cmd_set_image(ctx: _Ctx) -> int:
    """``set image KIND/NAME CONTAINER=IMAGE...`` (``*`` for every container):
    a strategic merge patch of the changed containers, by name."""
    args = ctx.args
    words = list(args.items)
    pairs = [w for w in words if "=" in w]
    resources = [w for w in words if "=" not in w]
    if not resources:
        raise CtlError(
            "error: one or more resources must be specified as <resource> <name> "
            "or <resource>/<name>",
            2,
        )
    if not pairs:
        raise CtlError("error: at least one image update is required", 2)
    images: dict[str, str] = {}
    for p in pairs:
        container, _, image = p.partition("=")
        if not container or not image:
            raise CtlError(f"error: invalid image update {p!r}: expected CONTAINER=IMAGE", 2)
        images[container] = image
    if "*" in images and len(images) > 1:
        raise CtlError(
            "error: all containers are already specified by *, but saw more than one "
            "container_name=container_image pairs",
            2,
        )
    ctx.args.resource = resources
    kinds = ("daemonsets", "deployments", "replicasets", "pods")
    targets = _targets(ctx, kinds, "set image")
    rc = 0
    for r, name in targets:
        try:
            obj = _get(ctx, r, name)
        except CtlError as exc:
            ctx.err.write(f"{exc}\n")
            rc = 1
            continue
        spec_path = ("spec",) if r.name == "pods" else ("spec", "template", "spec")
        spec = get_path(obj, *spec_path) or {}
        changed: dict[str, list[dict[str, str]]] = {}
        found = set()
        for field in ("initContainers", "containers"):
            for c in spec.get(field) or []:
                if not isinstance(c, dict):
                    continue
                for want, image in images.items():
                    if want in ("*", c.get("name")):
                        found.add(want)
                        if c.get("image") != image:
                            changed.setdefault(field, []).append(
                                {"name": str(c.get("name")), "image": image}
                            )
        for want in images:
            if want not in found:
                ctx.err.write(f'error: unable to find container named "{want}"\n')
                rc = 1
        if not changed:
            continue
        body: dict[str, Any] = dict(changed)
        for key in reversed(spec_path):
            body = {key: body}
        try:
            _patch(ctx, r, name, body, STRATEGIC)
        except CtlError as exc:
            ctx.err.write(f"error: failed to patch image update to pod template: {exc}\n")
            rc = 1
            continue
        ctx.out.write(f"{qualified(r)}/{name} image updated\n")
    return rc


# ---- scale --------------------------------------------------------------------------


def cmd_scale(ctx: _Ctx) -> int:
    """``scale KIND/NAME --replicas N``: through the ``/scale`` subresource
    when the API has one for the kind, else a merge patch of spec.replicas;
    ``--current-replicas`` is checked first, as kubectl does."""
    args = ctx.args
    if args.replicas < 0:
        raise CtlError("error: The --replicas=COUNT flag is required, and COUNT must be >= 0", 2)
    targets = _targets(ctx, ("deployments", "replicasets"), "scale")

    def one(r: Resource, name: str) -> str:
        if args.current_replicas is not None and args.current_replicas >= 0:
            now = get_path(_get(ctx, r, name), "spec", "replicas")
            now = 1 if now is None else now
            if now != args.current_replicas:
                raise CtlError(f"error: Expected replicas to be {args.current_replicas}, was {now}")
        body = {"spec": {"replicas": args.replicas}}
        path = api_path(r, _ns(ctx), name)
        code, answer = patch(ctx.client, path + "/scale", body, MERGE)
        if code == 404:
            _get(ctx, r, name)  # the object's own 404 when it is missing
            code, answer = patch(ctx.client, path, body, MERGE)
        if code != 200:
            raise CtlError(server_error(code, answer))
        return f"{qualified(r)}/{name} scaled"

    return _each(ctx, targets, one)


# ---- arguments ----------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add ``rollout``, ``set`` and ``scale`` to edgectl's subcommands; each
    parser's ``run`` default is its handler."""
    ro = sub.add_parser("rollout", help="manage the rollout of a DaemonSet or Deployment")
    _global_flags(ro, top=False)
    verbs = ro.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, run: Callable[[_Ctx], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=help_text)
        _global_flags(p, top=False)
        p.add_argument("resource", metavar="KIND/NAME", nargs="*", help="ds/NAME or deploy/NAME")
        p.set_defaults(run=run)
        return p

    st = verb("status", "show the status of the rollout (and boards offline)", cmd_rollout_status)
    st.add_argument(
        "-w",
        "--watch",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="watch until the rollout is done (default true; --watch=false: once)",
    )
    st.add_argument("--timeout", default="0", metavar="DURATION", help="give up after (e.g. 5m)")
    hi = verb("history", "list the revisions of a rollout", cmd_rollout_history)
    hi.add_argument("--revision", type=int, default=0, metavar="N", help="details of revision N")
    hi.add_argument("-o", "--output", choices=("json", "yaml"))
    un = verb("undo", "roll back to the previous (or a given) revision", cmd_rollout_undo)
    un.add_argument("--to-revision", type=int, default=0, metavar="N")
    verb("pause", "hold a rollout (DaemonSets: edgeflock's pause mark)", cmd_rollout_pause)
    verb("resume", "continue a held rollout", cmd_rollout_resume)
    verb("restart", "replace every pod through a rollout", cmd_rollout_restart)

    se = sub.add_parser("set", help="change a field of a workload")
    _global_flags(se, top=False)
    what = se.add_subparsers(dest="what", required=True, metavar="FIELD")
    im = what.add_parser("image", help="set container images: KIND/NAME CONTAINER=IMAGE...")
    _global_flags(im, top=False)
    im.add_argument("items", metavar="KIND/NAME CONTAINER=IMAGE", nargs="+")
    im.set_defaults(run=cmd_set_image)

    sc = sub.add_parser("scale", help="set the replicas of a Deployment or ReplicaSet")
    _global_flags(sc, top=False)
    sc.add_argument("resource", metavar="KIND/NAME", nargs="+")
    sc.add_argument("--replicas", type=int, required=True, metavar="N")
    sc.add_argument("--current-replicas", type=int, default=None, metavar="N")
    sc.set_defaults(run=cmd_scale)
