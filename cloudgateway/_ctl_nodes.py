"""``edgectl label|annotate|taint|cordon|uncordon``, as kubectl does them.

Each change is a JSON merge patch of what was read, carrying the
``resourceVersion`` it was read at: the gateway refuses it (409) if anything
wrote the object in between, and the command reads again and retries, so a
check such as "this label has no other value yet" is made against the very
object the patch changes. ``label`` and ``annotate`` work on any kind
(``edgectl label pod P k=v``); ``taint``, ``cordon`` and ``uncordon`` on nodes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from edgeproto import Resource
from edgeproto.labels import is_label_value, is_qualified_name

from .ctl import CtlError, _Ctx, _names, api_path, resolve_kind, server_error

__all__ = ["register"]

MERGE_PATCH = "application/merge-patch+json"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_ATTEMPTS = 20  # reads and patches when other writers keep getting in between


class _Unchanged(Exception):
    """Nothing to write: the object already is as asked."""


# A change: from the object read, the merge patch to send (without the
# resourceVersion) and the verb for the message; ``_Unchanged`` when none.
Change = Callable[[dict[str, Any]], tuple[dict[str, Any], str]]


def _patch_object(ctx: _Ctx, r: Resource, ns: str | None, name: str, change: Change) -> str:
    """Read, change, patch with the read resourceVersion; again on a conflict.
    Returns the verb of what was done (``labeled``, ``not labeled``...)."""
    client = ctx.client
    path = api_path(r, ns, name)
    for attempt in range(_ATTEMPTS):
        if attempt:  # another writer got in between: spread the retries out
            time.sleep(random.uniform(0, min(0.5, 0.02 * 2**attempt)))
        code, obj = client.request("GET", path)
        if code != 200 or not isinstance(obj, dict):
            raise CtlError(server_error(code, obj))
        try:
            patch, verb = change(obj)
        except _Unchanged as exc:
            return str(exc)
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        patch.setdefault("metadata", {})["resourceVersion"] = rv
        code, body = client.send_bytes("PATCH", path, json.dumps(patch).encode(), MERGE_PATCH)
        if code == 200:
            return verb
        if code != 409:
            raise CtlError(server_error(code, body))
    raise CtlError(f"error: {r.kind.lower()}/{name} kept changing; nothing written, try again")


def _target(ctx: _Ctx, words: list[str]) -> tuple[Resource, str | None, list[str], list[str]]:
    """``KIND NAME... ARGS...`` or ``KIND/NAME ARGS...``: the resource, its
    namespace, the names and the rest (the first word with ``=``, ``:`` or a
    trailing ``-`` starts the rest)."""
    if not words:
        raise CtlError("error: you must specify the type of resource", 2)

    def is_arg(w: str) -> bool:
        return "=" in w or ":" in w or w.endswith("-")

    kind, rest = words[0], words[1:]
    n = next((i for i, w in enumerate(rest) if is_arg(w)), len(rest))
    kind, names = _names(kind, rest[:n])
    if not names:
        raise CtlError(f"error: give the name of the {kind} (KIND NAME or KIND/NAME)", 2)
    r = resolve_kind(kind)
    ns = (ctx.namespace or "default") if r.namespaced else None
    return r, ns, names, rest[n:]


# ---- label, annotate ------------------------------------------------------------------


def _parse_pairs(what: str, words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``k=v`` to set and ``k-`` to remove, checked (labels: label syntax)."""
    if not words:
        raise CtlError(f"error: at least one {what} update is required", 2)
    sets: dict[str, str] = {}
    removes: list[str] = []
    for w in words:
        if "=" in w:
            key, _, value = w.partition("=")
            if not is_qualified_name(key):
                raise CtlError(f"error: invalid {what} key {key!r} in {w!r}", 2)
            if what == "label" and not is_label_value(value):
                raise CtlError(
                    f"error: invalid label value {value!r} in {w!r}: at most 63 characters of "
                    "alphanumerics, '-', '_' or '.' starting and ending with an alphanumeric",
                    2,
                )
            sets[key] = value
        elif w.endswith("-") and is_qualified_name(w[:-1]):
            removes.append(w[:-1])
        else:
            raise CtlError(f"error: invalid {what} format: {w!r} (KEY=VALUE or KEY-)", 2)
    both = sorted(set(sets) & set(removes))
    if both:
        raise CtlError(f"error: can not both modify and remove the {what} {both[0]!r}", 2)
    return sets, removes


@dataclass(frozen=True, slots=True)
class _MetaChange:
    """Set and remove keys of ``metadata.<section>`` (labels or annotations)."""

    section: str
    sets: dict[str, str]
    removes: list[str]
    overwrite: bool
    verb: str  # "labeled", "annotated"
    notes: list[str]

    def __call__(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        self.notes.clear()  # called again after a conflict
        current = (obj.get("metadata") or {}).get(self.section) or {}
        what = self.section.rstrip("s")
        for key, value in self.sets.items():
            if key in current and current[key] != value and not self.overwrite:
                raise CtlError(
                    f"error: '{key}' already has a value ({current[key]}), and --overwrite is false"
                )
        changes: dict[str, Any] = {k: v for k, v in self.sets.items() if current.get(k) != v}
        for key in self.removes:
            if key in current:
                changes[key] = None
            elif what == "label":
                self.notes.append(f'label "{key}" not found.')
        if not changes:
            raise _Unchanged(f"not {self.verb}")
        return {"metadata": {self.section: changes}}, self.verb


def _cmd_meta(ctx: _Ctx, section: str, verb: str) -> int:
    what = section.rstrip("s")
    r, ns, names, words = _target(ctx, list(ctx.args.words))
    sets, removes = _parse_pairs(what, words)
    rc = 0
    for name in names:
        notes: list[str] = []
        change = _MetaChange(section, sets, removes, ctx.args.overwrite, verb, notes)
        try:
            done = _patch_object(ctx, r, ns, name, change)
        except CtlError as exc:
            ctx.err.write(f"{exc}\n")
            rc = exc.code
            continue
        for note in notes:
            ctx.out.write(note + "\n")
        ctx.out.write(f"{r.kind.lower()}/{name} {done}\n")
    return rc


def cmd_label(ctx: _Ctx) -> int:
    """``label KIND NAME k=v k2- [--overwrite]``."""
    return _cmd_meta(ctx, "labels", "labeled")


def cmd_annotate(ctx: _Ctx) -> int:
    """``annotate KIND NAME k=v k2- [--overwrite]``."""
    return _cmd_meta(ctx, "annotations", "annotated")


# ---- taint ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str  # "" only in a removal: every effect of the key

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.value:
            out["value"] = self.value
        out["effect"] = self.effect
        return out


def parse_taint(text: str) -> tuple[Taint, bool]:
    """``key[=value]:Effect`` to add, ``key-``, ``key:Effect-`` (or
    ``key=value:Effect-``) to remove: (taint, removal). ``CtlError`` (usage)
    when malformed."""
    remove = text.endswith("-")
    body = text[:-1] if remove else text
    head, colon, effect = body.partition(":")
    key, eq, value = head.partition("=")

    def bad(why: str) -> CtlError:
        return CtlError(f"error: invalid taint spec: {text} ({why})", 2)

    if not is_qualified_name(key):
        raise bad(f"{key!r} is not a valid taint key")
    if value and not is_label_value(value):
        raise bad(f"{value!r} is not a valid taint value")
    if eq and not remove and not value:
        raise bad("an '=' needs a value after it")
    if colon and effect not in EFFECTS:
        raise bad(f"the effect must be one of {', '.join(EFFECTS)}")
    if not remove and not colon:
        raise bad("expected key[=value]:Effect")
    return Taint(key, value, effect), remove


@dataclass(frozen=True, slots=True)
class _TaintChange:
    adds: list[Taint]
    removes: list[Taint]
    overwrite: bool
    name: str

    def __call__(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        spec = obj.get("spec") or {}
        taints: list[Any] = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        old = list(taints)
        for rm in self.removes:
            keep = [
                t
                for t in taints
                if not (t.get("key") == rm.key and (not rm.effect or t.get("effect") == rm.effect))
            ]
            if len(keep) == len(taints):
                shown = f"{rm.key}:{rm.effect}" if rm.effect else rm.key
                raise CtlError(f'error: taint "{shown}" not found')
            taints = keep
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for add in self.adds:
            same = [t for t in taints if t.get("key") == add.key and t.get("effect") == add.effect]
            if same and not self.overwrite:
                raise CtlError(
                    f"error: node {self.name} already has {add.key} taint(s) with same "
                    "effect(s) and --overwrite is false"
                )
            new = add.spec()
            if add.effect == "NoExecute":  # when eviction's tolerationSeconds start
                prior = same[0] if same else {}
                unchanged = prior.get("value", "") == add.value
                new["timeAdded"] = prior.get("timeAdded") if unchanged and prior else now
            if same:  # replaced where it was
                at = taints.index(same[0])
                taints = [t for t in taints if t not in same]
                taints.insert(at, new)
            else:
                taints.append(new)
        if taints == old:
            raise _Unchanged("not modified")
        verb = "modified" if self.adds and self.removes else "tainted" if self.adds else "untainted"
        return {"spec": {"taints": taints or None}}, verb


def cmd_taint(ctx: _Ctx) -> int:
    """``taint node NAME key=value:Effect key:Effect key- key:Effect- [--overwrite]``."""
    r, _ns, names, words = _target(ctx, list(ctx.args.words))
    if r.name != "nodes":
        raise CtlError(f"error: only nodes can be tainted, not {r.name}", 2)
    if not words:
        raise CtlError("error: at least one taint update is required", 2)
    adds: list[Taint] = []
    removes: list[Taint] = []
    for w in words:
        taint, remove = parse_taint(w)
        (removes if remove else adds).append(taint)
    rc = 0
    for name in names:
        try:
            done = _patch_object(
                ctx, r, None, name, _TaintChange(adds, removes, ctx.args.overwrite, name)
            )
        except CtlError as exc:
            ctx.err.write(f"{exc}\n")
            rc = exc.code
            continue
        ctx.out.write(f"node/{name} {done}\n")
    return rc


# ---- cordon, uncordon -----------------------------------------------------------------


def _cordon(ctx: _Ctx, unschedulable: bool) -> int:
    nodes = resolve_kind("nodes")
    verb = "cordoned" if unschedulable else "uncordoned"

    def change(obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if bool((obj.get("spec") or {}).get("unschedulable")) == unschedulable:
            raise _Unchanged(f"already {verb}")
        return {"spec": {"unschedulable": True if unschedulable else None}}, verb

    rc = 0
    for word in ctx.args.node:
        kind, names = _names(word, []) if "/" in word else ("nodes", [word])
        if resolve_kind(kind).name != "nodes":
            raise CtlError(f"error: only nodes can be {verb}, not {kind}", 2)
        for name in names:
            try:
                done = _patch_object(ctx, nodes, None, name, change)
            except CtlError as exc:
                ctx.err.write(f"{exc}\n")
                rc = exc.code
                continue
            ctx.out.write(f"node/{name} {done}\n")
    return rc


def cmd_cordon(ctx: _Ctx) -> int:
    """``cordon NODE...``: no new pods are placed there (``spec.unschedulable``)."""
    return _cordon(ctx, True)


def cmd_uncordon(ctx: _Ctx) -> int:
    """``uncordon NODE...``."""
    return _cordon(ctx, False)


# ---- registration ---------------------------------------------------------------------


def register(
    sub: Any,
    commands: MutableMapping[str, Callable[[_Ctx], int]],
    global_flags: Callable[..., None],
) -> None:
    """Add the commands' parsers to ``sub`` and their handlers to ``commands``."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        global_flags(p, top=False)
        return p

    meta = (("label", "labels", cmd_label), ("annotate", "annotations", cmd_annotate))
    for name, what, fn in meta:
        p = add(name, f"set or remove {what}: {name} KIND NAME k=v k2-")
        p.add_argument("words", nargs="+", metavar="KIND NAME KEY=VALUE|KEY-")
        p.add_argument("--overwrite", action="store_true", help="allow changing a value")
        commands[name] = fn
    t = add("taint", "add or remove node taints: taint node NAME key=value:NoSchedule key-")
    t.add_argument("words", nargs="+", metavar="node NAME KEY[=VALUE]:EFFECT[-]|KEY-")
    t.add_argument("--overwrite", action="store_true", help="allow replacing a taint")
    commands["taint"] = cmd_taint
    for name, fn, help_text in (
        ("cordon", cmd_cordon, "mark nodes unschedulable (no new pods)"),
        ("uncordon", cmd_uncordon, "mark nodes schedulable again"),
    ):
        p = add(name, help_text)
        p.add_argument("node", nargs="+", metavar="NODE")
        commands[name] = fn
