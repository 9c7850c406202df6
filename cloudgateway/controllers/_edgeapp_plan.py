"""What a KubeEdge EdgeApplication produces, computed from plain objects. Pure: no I/O.

An ``EdgeApplication`` (``apps.kubeedge.io/v1alpha1``, namespaced) carries raw
manifests (``spec.workloadTemplate.manifests``) and target node groups
(``spec.workloadScope.targetNodeGroups[]``: ``name`` and ``overriders``). As
KubeEdge's edgeapplication controller does:

- each Deployment manifest becomes one Deployment per target group, named
  ``<manifest name>-<group>``, with that group's overriders applied
  (``_overriders``) and its pod template's ``nodeSelector`` set to
  ``{apps.kubeedge.io/belonging-to: <group>}`` (replaced, as KubeEdge replaces
  it); with no target groups a Deployment manifest produces nothing;
- each ``spec.workloadScope.targetNodeLabels[]`` entry likewise gets one
  Deployment, named ``<manifest name>-ls-<8 hex digits>`` (SHA-256 of the sorted
  ``matchLabels``, as KubeEdge names it), whose required node affinity is
  replaced by ``In`` terms for those labels (edgeflock also adds the entry's
  ``matchExpressions``, which KubeEdge ignores);
- a manifest of another kind is created once, unchanged;
- every produced object carries a controlling ownerReference to the
  EdgeApplication (so deleting it deletes them) and the annotation
  ``apps.kubeedge.io/last-applied-template`` (the produced object as last
  applied), from which a changed template is merged into the live object the
  way ``kubectl apply`` merges (fields others set, such as a ``kubectl scale``
  or the Deployment controller's annotations, survive until the template
  itself changes them);
- ``status.workloadStatus`` lists each produced object (``identifier``:
  ordinal, group, version, kind, namespace, name) with ``conditions``
  ``Available`` (a Deployment: ``readyReplicas`` equals ``spec.replicas``;
  other kinds: it exists) or ``Processing``, and one entry holding only the
  ordinal for a manifest that produced nothing.

Where KubeEdge logs and skips, this module reports (``Problem``): a manifest
that is not an object or has no kind or name, a kind the gateway does not
serve (a Service, a StatefulSet: edgeflock runs neither) or a cluster-scoped
one (a namespaced owner cannot own it), a namespace other than the
EdgeApplication's (ownerReferences do not cross namespaces; an empty one is
the EdgeApplication's), overriders that cannot be applied, a produced object
the API would refuse (its validation causes, with field paths), and two
manifests producing the same object. The controller turns problems into a
``ManifestsApplied=False`` condition and Warning Events.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import edgeproto

from .._patch import merge_patch
from .._validate import Invalid, validate
from ._nodegroup_plan import LABEL_BELONGING_TO
from ._overriders import OverrideError, apply_overriders

__all__ = [
    "API_VERSION",
    "CONDITION_TYPE",
    "KIND",
    "LAST_APPLIED",
    "AppPlan",
    "Problem",
    "Produced",
    "applied_condition",
    "create_merge_patch",
    "is_available",
    "next_object",
    "plan_edgeapp",
    "produced_resources",
    "workload_status",
]

API_VERSION = "apps.kubeedge.io/v1alpha1"
KIND = "EdgeApplication"
LAST_APPLIED = "apps.kubeedge.io/last-applied-template"
CONDITION_TYPE = "ManifestsApplied"

# Kinds an EdgeApplication may carry: the namespaced kinds the gateway serves,
# except Events (records, not workloads) and EdgeApplications themselves.
_NOT_PRODUCED = frozenset({"events", "edgeapplications"})


def produced_resources() -> list[edgeproto.Resource]:
    """The resources an EdgeApplication's manifests may create."""
    return [r for r in edgeproto.RESOURCES if r.namespaced and r.name not in _NOT_PRODUCED]


@dataclass(frozen=True, slots=True)
class Problem:
    """Why (part of) a manifest produced nothing, or what changed nothing."""

    reason: str  # InvalidManifest | UnsupportedKind | NamespaceMismatch | OverrideFailed | ...
    message: str
    ordinal: int | None = None  # the manifest's index; None: about the scope
    warning_only: bool = False  # produced anyway (an overrider that matched nothing)


@dataclass(slots=True)
class Produced:
    """One object the EdgeApplication wants to exist, as it should be."""

    ordinal: int
    resource: edgeproto.Resource
    key: str
    obj: dict[str, Any]  # with ownerReference and the last-applied annotation
    group: str | None  # the target node group; None for a kind created once

    def identifier(self) -> dict[str, Any]:
        meta = self.obj["metadata"]
        return {
            "ordinal": self.ordinal,
            "group": self.resource.group,
            "version": self.resource.version,
            "kind": self.resource.kind,
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
        }


@dataclass(slots=True)
class AppPlan:
    produced: list[Produced] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    manifests: int = 0  # how many manifests the spec holds

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning_only]


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def owner_reference(app: Mapping[str, Any]) -> dict[str, Any]:
    meta = _map(app.get("metadata"))
    return {
        "apiVersion": str(app.get("apiVersion") or API_VERSION),
        "kind": KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _set_owner(obj: dict[str, Any], ref: dict[str, Any]) -> None:
    meta = obj.setdefault("metadata", {})
    refs = [
        r
        for r in meta.get("ownerReferences") or []
        if isinstance(r, Mapping) and not (r.get("kind") == KIND and r.get("controller") is True)
    ]
    meta["ownerReferences"] = [*refs, ref]


def _with_last_applied(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` carrying the annotation that records it (without the annotation)."""
    core = copy.deepcopy(obj)
    anns = dict(_map(core["metadata"].get("annotations")))
    anns.pop(LAST_APPLIED, None)
    if anns:
        core["metadata"]["annotations"] = anns
    else:
        core["metadata"].pop("annotations", None)
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    out = copy.deepcopy(core)
    out["metadata"]["annotations"] = {**anns, LAST_APPLIED: text}
    return out


def plan_edgeapp(app: Mapping[str, Any]) -> AppPlan:
    """Every object ``app`` should produce, and every problem found on the way."""
    plan = AppPlan()
    meta = _map(app.get("metadata"))
    app_ns = str(meta.get("namespace") or "default")
    spec = _map(app.get("spec"))
    manifests = _map(spec.get("workloadTemplate")).get("manifests")
    if manifests is None:
        manifests = []
    if not isinstance(manifests, list):
        plan.problems.append(
            Problem("InvalidManifest", "spec.workloadTemplate.manifests must be a list")
        )
        manifests = []
    plan.manifests = len(manifests)
    targets: list[_Target] = []
    scope = _map(spec.get("workloadScope"))
    raw_targets = scope.get("targetNodeGroups")
    seen_groups: set[str] = set()
    for i, t in enumerate(raw_targets if isinstance(raw_targets, list) else []):
        at = f"spec.workloadScope.targetNodeGroups[{i}]"
        name = _map(t).get("name")
        if not isinstance(name, str) or not name:
            plan.problems.append(Problem("InvalidScope", f"{at}.name is required"))
            continue
        if name in seen_groups:
            plan.problems.append(
                Problem("InvalidScope", f"{at}: node group {name!r} is listed twice")
            )
            continue
        seen_groups.add(name)
        targets.append(
            _Target(
                f"node group {name!r}",
                name,
                _map(_map(t).get("overriders")),
                f"{at}.overriders",
                group=name,
            )
        )
    raw_labels = scope.get("targetNodeLabels")
    for i, t in enumerate(raw_labels if isinstance(raw_labels, list) else []):
        label_target = _label_target(plan, i, _map(t))
        if label_target is not None:
            targets.append(label_target)
    owner = owner_reference(app)
    keys: dict[str, int] = {}
    for ordinal, manifest in enumerate(manifests):
        at = f"spec.workloadTemplate.manifests[{ordinal}]"
        resource = _resolve(plan, ordinal, at, manifest, app_ns)
        if resource is None:
            continue
        assert isinstance(manifest, Mapping)
        base = copy.deepcopy(dict(manifest))
        base["metadata"] = dict(_map(base.get("metadata")))
        base["metadata"]["namespace"] = app_ns
        for f in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
            base["metadata"].pop(f, None)
        base.pop("status", None)
        variants: list[tuple[dict[str, Any], _Target | None]] = []
        if resource.kind == "Deployment":
            for tgt in targets:
                try:
                    obj, notes = apply_overriders(base, tgt.overriders, where=tgt.where)
                except OverrideError as exc:
                    plan.problems.append(
                        Problem("OverrideFailed", f"{at} for {tgt.what}: {exc}", ordinal)
                    )
                    continue
                for note in notes:
                    plan.problems.append(Problem("OverrideIgnored", note, ordinal, True))
                obj["metadata"]["name"] = f"{obj['metadata']['name']}-{tgt.suffix}"
                spec_ = obj.get("spec")
                template = spec_.get("template") if isinstance(spec_, dict) else None
                pod_spec = template.get("spec") if isinstance(template, dict) else None
                if isinstance(pod_spec, dict):  # else validation names what is missing
                    tgt.pin(pod_spec)
                variants.append((obj, tgt))
        else:
            variants.append((base, None))
        for obj, target in variants:
            _set_owner(obj, owner)
            found: list[str] = []
            try:
                obj = validate(resource, obj, namespace=app_ns, name=None, unknown=found)
            except Invalid as exc:
                causes = "; ".join(
                    f"{c.field}: {c.message}" if c.field else c.message for c in exc.causes
                )
                for_group = f" for {target.what}" if target else ""
                plan.problems.append(
                    Problem(
                        "InvalidManifest",
                        f"{at}{for_group}: {resource.kind} {obj['metadata'].get('name')!r} "
                        f"is invalid: {causes}",
                        ordinal,
                    )
                )
                continue
            for path in found:
                plan.problems.append(
                    Problem("UnknownField", f"{at}: unknown field {path!r} dropped", ordinal, True)
                )
            key = edgeproto.make_key(resource.name, app_ns, obj["metadata"]["name"])
            if key in keys:
                plan.problems.append(
                    Problem(
                        "DuplicateObject",
                        f"{at}: {key} is already produced by manifests[{keys[key]}]",
                        ordinal,
                    )
                )
                continue
            keys[key] = ordinal
            group = target.group if target else None
            plan.produced.append(Produced(ordinal, resource, key, _with_last_applied(obj), group))
    return plan


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a Deployment manifest goes: a node group, or nodes by labels."""

    what: str  # for messages: "node group 'hangzhou'"
    suffix: str  # of the produced name
    overriders: Mapping[str, Any]
    where: str  # the overriders' field path
    group: str | None = None
    requirements: tuple[dict[str, Any], ...] = ()  # node affinity, for label targets

    def pin(self, pod_spec: dict[str, Any]) -> None:
        """Keep the pod template on the target's nodes, as KubeEdge does: a node
        group replaces the nodeSelector; labels replace the required node affinity."""
        if self.group is not None:
            pod_spec["nodeSelector"] = {LABEL_BELONGING_TO: self.group}
            return
        affinity = pod_spec.get("affinity")
        affinity = dict(affinity) if isinstance(affinity, Mapping) else {}
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [dict(r) for r in self.requirements]}]
            }
        }
        pod_spec["affinity"] = affinity


def label_suffix(match_labels: Mapping[str, str]) -> str:
    """KubeEdge's name suffix for a label target: ``ls-`` and the first 4 bytes
    (hex) of SHA-256 over the sorted keys and their values."""
    h = hashlib.sha256()
    for k in sorted(match_labels):
        h.update(k.encode())
        h.update(str(match_labels[k]).encode())
    return "ls-" + h.digest()[:4].hex()


def _label_target(plan: AppPlan, i: int, t: Mapping[str, Any]) -> _Target | None:
    """A ``targetNodeLabels`` entry: a Deployment named after its matchLabels,
    pinned by required node affinity (``In`` for each label; edgeflock also
    honours ``matchExpressions``, which KubeEdge ignores)."""
    at = f"spec.workloadScope.targetNodeLabels[{i}]"
    selector = _map(t.get("labelSelector"))
    match = _map(selector.get("matchLabels"))
    if not match:
        plan.problems.append(
            Problem(
                "InvalidScope",
                f"{at}.labelSelector.matchLabels is required (the workload is named after it)",
            )
        )
        return None
    reqs = [{"key": k, "operator": "In", "values": [str(match[k])]} for k in sorted(match)]
    for e in selector.get("matchExpressions") or []:
        expr = _map(e)
        req: dict[str, Any] = {"key": expr.get("key"), "operator": expr.get("operator")}
        if expr.get("values"):
            req["values"] = list(expr["values"])
        reqs.append(req)
    text = ",".join(f"{k}={match[k]}" for k in sorted(match))
    return _Target(
        f"node labels {text}",
        label_suffix({str(k): str(v) for k, v in match.items()}),
        _map(t.get("overriders")),
        f"{at}.overriders",
        requirements=tuple(reqs),
    )


def _resolve(
    plan: AppPlan, ordinal: int, at: str, manifest: Any, app_ns: str
) -> edgeproto.Resource | None:
    def bad(reason: str, message: str) -> None:
        plan.problems.append(Problem(reason, f"{at}: {message}", ordinal))

    if not isinstance(manifest, Mapping):
        bad("InvalidManifest", "must be an object")
        return None
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not api_version:
        bad("InvalidManifest", "apiVersion is required")
        return None
    if not isinstance(kind, str) or not kind:
        bad("InvalidManifest", "kind is required")
        return None
    meta = _map(manifest.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        bad("InvalidManifest", "metadata.name is required")
        return None
    resource = next(
        (r for r in edgeproto.RESOURCES if r.kind == kind and r.api_version == api_version), None
    )
    if resource is None:
        served = ", ".join(f"{r.api_version} {r.kind}" for r in produced_resources())
        bad(
            "UnsupportedKind",
            f"{api_version} {kind} {name!r}: edgeflock does not run this kind, so nothing "
            f"was created for it (an EdgeApplication may carry: {served})",
        )
        return None
    if not resource.namespaced or resource.name in _NOT_PRODUCED:
        why = "is cluster-scoped" if not resource.namespaced else "cannot be produced"
        bad(
            "UnsupportedKind",
            f"{kind} {name!r} {why}; an EdgeApplication creates namespaced workloads only",
        )
        return None
    ns = meta.get("namespace")
    if ns not in (None, "", app_ns):
        bad(
            "NamespaceMismatch",
            f"{kind} {name!r} names namespace {ns!r}, the EdgeApplication is in {app_ns!r} "
            "(what it creates is owned by it, and ownerReferences do not cross namespaces)",
        )
        return None
    return resource


# ---- applying to live objects ----------------------------------------------------


def create_merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (objects diffed
    key by key, ``None`` deleting, anything else replacing). ``{}``: no change."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for k in old:
        if k not in new:
            patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = copy.deepcopy(v)
        elif isinstance(v, Mapping) and isinstance(old[k], Mapping):
            sub = create_merge_patch(old[k], v)
            if sub:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = copy.deepcopy(v)
    return patch


class NotOurs(Exception):
    """The live object is controlled by something else."""


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in _map(obj.get("metadata")).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


def next_object(
    desired: Mapping[str, Any], live: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """What to write for ``desired`` over ``live``: ``desired`` itself when
    nothing lives there, None when ``live`` already carries this template,
    else ``live`` with the template's change since it was last applied merged
    in (without a record of it, the whole template merged in). ``NotOurs`` if
    ``live`` is controlled by another owner."""
    if live is None:
        return copy.deepcopy(dict(desired))
    want_ref = _controller(desired)
    have_ref = _controller(live)
    if have_ref is not None and want_ref is not None and have_ref.get("uid") != want_ref.get("uid"):
        raise NotOurs(
            f"{have_ref.get('kind')} {have_ref.get('name')!r} (uid {have_ref.get('uid')}) "
            "controls it"
        )
    want_text = _map(_map(desired.get("metadata")).get("annotations")).get(LAST_APPLIED)
    have_text = _map(_map(live.get("metadata")).get("annotations")).get(LAST_APPLIED)
    if want_text is not None and want_text == have_text:
        return None
    new_core = json.loads(want_text) if isinstance(want_text, str) else dict(desired)
    old_core: Any = {}
    if isinstance(have_text, str):
        try:
            old_core = json.loads(have_text)
        except ValueError:
            old_core = {}
    patch = create_merge_patch(old_core, new_core)
    patch.pop("status", None)
    meta_patch = patch.setdefault("metadata", {})
    for f in ("uid", "resourceVersion", "creationTimestamp", "generation", "namespace", "name"):
        meta_patch.pop(f, None)
    meta_patch.setdefault("annotations", {})
    if isinstance(meta_patch["annotations"], dict):
        meta_patch["annotations"][LAST_APPLIED] = want_text
    else:  # the template dropped every annotation: keep only the record
        meta_patch["annotations"] = {LAST_APPLIED: want_text}
    # ownerReferences are a list: merge patch replaces it, with the desired one
    meta_patch["ownerReferences"] = copy.deepcopy(
        _map(desired.get("metadata")).get("ownerReferences")
    )
    out = merge_patch(dict(live), patch)
    assert isinstance(out, dict)
    return out


# ---- status ------------------------------------------------------------------------


def is_available(produced: Produced, live: Mapping[str, Any] | None) -> bool:
    """KubeEdge's test: a Deployment is available when ``status.readyReplicas``
    equals ``spec.replicas`` (default 1); any other kind when it exists."""
    if live is None:
        return False
    if produced.resource.kind != "Deployment":
        return True
    replicas = _map(live.get("spec")).get("replicas", 1)
    ready = _map(live.get("status")).get("readyReplicas", 0)
    return bool(ready == replicas)


def workload_status(
    plan: AppPlan, live: Mapping[str, Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """``status.workloadStatus``: an entry per produced object, and an entry with
    the ordinal alone for each manifest that produced nothing; sorted by
    ordinal, then name. ``live`` maps produced keys to their live objects."""
    out: list[dict[str, Any]] = []
    have: set[int] = set()
    for p in plan.produced:
        have.add(p.ordinal)
        cond = "Available" if is_available(p, live.get(p.key)) else "Processing"
        out.append({"identifier": p.identifier(), "conditions": cond})
    for ordinal in range(plan.manifests):
        if ordinal not in have:
            out.append({"identifier": {"ordinal": ordinal}, "conditions": "Processing"})
    out.sort(key=lambda s: (s["identifier"]["ordinal"], str(s["identifier"].get("name", ""))))
    return out


def applied_condition(
    problems: list[Problem], previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """The ``ManifestsApplied`` condition (edgeflock's; KubeEdge's status has
    none): False with the problems' reasons and messages when any manifest
    could not be applied; the transition time kept while the status stays."""
    errors = [p for p in problems if not p.warning_only]
    if errors:
        status, reason = "False", errors[0].reason
        message = "; ".join(p.message for p in errors)
    else:
        status, reason, message = "True", "Applied", "every manifest was applied"
    cond = {"type": CONDITION_TYPE, "status": status, "reason": reason, "message": message}
    prev = _map(previous)
    if prev.get("status") == status and prev.get("lastTransitionTime"):
        cond["lastTransitionTime"] = prev["lastTransitionTime"]
    else:
        cond["lastTransitionTime"] = now
    return cond
