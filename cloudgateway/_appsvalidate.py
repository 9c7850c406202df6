"""What the workload kinds' schemas (``_appsschema``) cannot say, checked as
Kubernetes' apps validation does, with its field paths and words: a selector
that is not empty and matches its template's labels, a template that restarts
its pods always, rolling-update numbers and percentages, a progress deadline
longer than minReadySeconds, a selector that never changes once set; and the
defaults Kubernetes fills in (update strategy, replicas, history limit).

Each check takes a normalized object (after the schema walk, so its types may
still be wrong where the walk found them wrong: every check looks before it
reads) and reports problems as ``(field, reason, message)``. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ._upgradeschema import check_nodeupgradejob, check_nodeupgradejob_update

__all__ = [
    "APPS_CHECKS",
    "APPS_UPDATE_CHECKS",
    "Problem",
    "int_or_percent",
    "selector_matches",
    "selector_text",
]

Problem = tuple[str, str, str]  # field, reason (FieldValue...), message

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
FORBIDDEN = "FieldValueForbidden"
NOT_SUPPORTED = "FieldValueNotSupported"

_PERCENT = re.compile(r"([0-9]+)%")


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _invalid(field: str, value: Any, why: str) -> Problem:
    return field, INVALID, f"Invalid value: {_shown(value)}: {why}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def int_or_percent(value: Any, total: int, *, round_up: bool) -> int | None:
    """``value`` (a whole number or ``"N%"``) resolved against ``total``, as
    Kubernetes' ``GetScaledValueFromIntOrPercent`` does; None if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _PERCENT.fullmatch(value)):
        scaled = int(m.group(1)) * total
        return -(-scaled // 100) if round_up else scaled // 100
    return None


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Whether ``labels`` satisfy a LabelSelector (matchLabels and
    matchExpressions ANDed). An empty selector matches everything."""
    for k, v in _dict(selector.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for req in selector.get("matchExpressions") or []:
        if not isinstance(req, dict):
            return False
        key, op = str(req.get("key")), req.get("operator")
        values = req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def selector_text(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as a label selector string (``app=web,tier in (a,b)``),
    as ``metav1.LabelSelectorAsSelector(...).String()`` writes it (sorted by key)."""
    parts: list[tuple[str, str]] = []
    for k, v in _dict(selector.get("matchLabels")).items():
        parts.append((str(k), f"{k}={v}"))
    for req in selector.get("matchExpressions") or []:
        if not isinstance(req, dict):
            continue
        key, op = str(req.get("key")), req.get("operator")
        values = ",".join(sorted(str(v) for v in req.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(str(op))
        if text is not None:
            parts.append((key, text))
    return ",".join(t for _, t in sorted(parts))


def _selector_problems(
    selector: Any, path: str, kind: str, *, template_labels: Any, labels_path: str
) -> Iterator[Problem]:
    if not isinstance(selector, dict):
        return  # missing or mistyped: the schema walk said so
    expressions = selector.get("matchExpressions")
    if not _dict(selector.get("matchLabels")) and not expressions:
        yield _invalid(path, selector, f"empty selector is invalid for {kind}")
        return
    ok = True
    for i, req in enumerate(expressions if isinstance(expressions, list) else []):
        if not isinstance(req, dict):
            ok = False
            continue
        op, values = req.get("operator"), req.get("values")
        where = f"{path}.matchExpressions[{i}].values"
        if op in ("In", "NotIn") and not values:
            ok = False
            yield (
                where,
                REQUIRED,
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            )
        elif op in ("Exists", "DoesNotExist") and values:
            ok = False
            yield (
                where,
                FORBIDDEN,
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )
        elif op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            ok = False  # the schema walk named it
    labels = template_labels if isinstance(template_labels, dict) else {}
    if ok and not selector_matches(selector, labels):
        yield _invalid(labels_path, labels, "`selector` does not match template `labels`")


def _template_problems(spec: dict[str, Any], kind: str) -> Iterator[Problem]:
    template = spec.get("template")
    yield from _selector_problems(
        spec.get("selector"),
        "spec.selector",
        kind,
        template_labels=(
            _dict(_dict(template).get("metadata")).get("labels")
            if isinstance(template, dict)
            else None
        ),
        labels_path="spec.template.metadata.labels",
    )
    if not isinstance(template, dict):
        return
    policy = _dict(template.get("spec")).get("restartPolicy")
    if policy is not None and policy != "Always":
        yield (
            "spec.template.spec.restartPolicy",
            NOT_SUPPORTED,
            f'Unsupported value: {_shown(policy)}: supported values: "Always"',
        )


def _rolling_problems(rolling: Any, path: str) -> Iterator[Problem]:
    """maxUnavailable and maxSurge: at least 0, at most 100%, not both 0."""
    if not isinstance(rolling, dict):
        return
    zero = True
    seen = False
    for field in ("maxUnavailable", "maxSurge"):
        value = rolling.get(field)
        if value is None:
            continue
        n = int_or_percent(value, 100, round_up=False)
        if n is None:
            zero = False  # the schema walk named it
            continue
        seen = True
        where = f"{path}.{field}"
        if n < 0:
            yield _invalid(where, value, "must be greater than or equal to 0")
        elif isinstance(value, str) and n > 100:
            yield _invalid(where, value, "must not be greater than 100%")
        if n != 0:
            zero = False
    if seen and zero and rolling.get("maxUnavailable") is not None:
        yield _invalid(
            f"{path}.maxUnavailable",
            rolling["maxUnavailable"],
            "may not be 0 when `maxSurge` is 0",
        )


def _spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else None


def _default_rolling(spec: dict[str, Any], field: str, defaults: dict[str, Any]) -> None:
    strategy = spec.setdefault(field, {})
    if not isinstance(strategy, dict):
        return
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        if isinstance(rolling, dict):
            for k, v in defaults.items():
                rolling.setdefault(k, v)


def check_daemonset(obj: dict[str, Any]) -> Iterator[Problem]:
    spec = _spec(obj)
    if spec is None:
        return
    _default_rolling(spec, "updateStrategy", {"maxUnavailable": 1, "maxSurge": 0})
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("minReadySeconds", 0)
    yield from _template_problems(spec, "daemonset")
    strategy = _dict(spec.get("updateStrategy"))
    if strategy.get("type") == "RollingUpdate":
        yield from _rolling_problems(
            strategy.get("rollingUpdate"), "spec.updateStrategy.rollingUpdate"
        )


def check_deployment(obj: dict[str, Any]) -> Iterator[Problem]:
    spec = _spec(obj)
    if spec is None:
        return
    spec.setdefault("replicas", 1)
    strategy = spec.get("strategy")
    if not (isinstance(strategy, dict) and strategy.get("type") == "Recreate"):
        _default_rolling(spec, "strategy", {"maxUnavailable": "25%", "maxSurge": "25%"})
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    yield from _template_problems(spec, "deployment")
    strategy = _dict(spec.get("strategy"))
    if strategy.get("type") == "Recreate" and strategy.get("rollingUpdate") is not None:
        yield (
            "spec.strategy.rollingUpdate",
            FORBIDDEN,
            "Forbidden: may not be specified when strategy `type` is 'Recreate'",
        )
    elif strategy.get("type") == "RollingUpdate":
        yield from _rolling_problems(strategy.get("rollingUpdate"), "spec.strategy.rollingUpdate")
    deadline, ready = spec.get("progressDeadlineSeconds"), spec.get("minReadySeconds", 0)
    if (
        isinstance(deadline, int)
        and isinstance(ready, int)
        and not isinstance(deadline, bool)
        and deadline <= ready
    ):
        yield _invalid(
            "spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"
        )


def check_replicaset(obj: dict[str, Any]) -> Iterator[Problem]:
    spec = _spec(obj)
    if spec is None:
        return
    spec.setdefault("replicas", 1)
    yield from _template_problems(spec, "replicaset")


def check_controllerrevision(obj: dict[str, Any]) -> Iterator[Problem]:
    if obj.get("data") is None:
        yield "data", REQUIRED, "Required value: data is mandatory"


def check_nodegroup(obj: dict[str, Any]) -> Iterator[Problem]:
    spec = _spec(obj)
    if spec is None:
        return
    nodes = spec.get("nodes")
    if isinstance(nodes, list):
        seen: set[Any] = set()
        for i, n in enumerate(nodes):
            if isinstance(n, str) and n in seen:
                yield f"spec.nodes[{i}]", "FieldValueDuplicate", f"Duplicate value: {_shown(n)}"
            seen.add(n)


def _overrider_problems(ov: Any, path: str) -> Iterator[Problem]:
    if not isinstance(ov, dict):
        return
    for i, image in enumerate(ov.get("imageOverriders") or []):
        if (
            isinstance(image, dict)
            and image.get("operator") in ("add", "replace")
            and not image.get("value")
        ):
            yield (
                f"{path}.imageOverriders[{i}].value",
                REQUIRED,
                "Required value: must not be empty when operator is 'add' or 'replace'",
            )


def check_edgeapplication(obj: dict[str, Any]) -> Iterator[Problem]:
    spec = _spec(obj)
    if spec is None:
        return
    manifests = _dict(spec.get("workloadTemplate")).get("manifests")
    for i, m in enumerate(manifests if isinstance(manifests, list) else []):
        if not isinstance(m, dict):
            continue  # the schema walk named it
        where = f"spec.workloadTemplate.manifests[{i}]"
        for field in ("apiVersion", "kind"):
            if not isinstance(m.get(field), str) or not m[field]:
                yield f"{where}.{field}", REQUIRED, "Required value"
        if not isinstance(_dict(m.get("metadata")).get("name"), str):
            yield f"{where}.metadata.name", REQUIRED, "Required value"
    scope = _dict(spec.get("workloadScope"))
    groups = scope.get("targetNodeGroups")
    seen: set[Any] = set()
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        if not isinstance(g, dict):
            continue
        where = f"spec.workloadScope.targetNodeGroups[{i}]"
        name = g.get("name")
        if isinstance(name, str) and name in seen:
            yield f"{where}.name", "FieldValueDuplicate", f"Duplicate value: {_shown(name)}"
        seen.add(name)
        yield from _overrider_problems(g.get("overriders"), f"{where}.overriders")
    labels = scope.get("targetNodeLabels")
    for i, t in enumerate(labels if isinstance(labels, list) else []):
        if isinstance(t, dict):
            where = f"spec.workloadScope.targetNodeLabels[{i}]"
            yield from _overrider_problems(t.get("overriders"), f"{where}.overriders")


APPS_CHECKS: dict[str, Callable[[dict[str, Any]], Iterator[Problem]]] = {
    "DaemonSet": check_daemonset,
    "Deployment": check_deployment,
    "ReplicaSet": check_replicaset,
    "ControllerRevision": check_controllerrevision,
    "NodeGroup": check_nodegroup,
    "EdgeApplication": check_edgeapplication,
    "NodeUpgradeJob": check_nodeupgradejob,
}
"""Checks (and defaults) of a new object of each kind, after its schema walk."""


def _immutable(
    path: tuple[str, ...],
) -> Callable[[dict[str, Any], dict[str, Any]], Iterator[Problem]]:
    def check(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Problem]:
        before: Any = old
        after: Any = new
        for p in path:
            before, after = _dict(before).get(p), _dict(after).get(p)
        if before is not None and before != after:
            yield _invalid(".".join(path), after, "field is immutable")

    return check


APPS_UPDATE_CHECKS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Iterator[Problem]]] = {
    "DaemonSet": _immutable(("spec", "selector")),
    "Deployment": _immutable(("spec", "selector")),
    "ReplicaSet": _immutable(("spec", "selector")),
    "ControllerRevision": _immutable(("data",)),
    "NodeUpgradeJob": check_nodeupgradejob_update,
}
"""Checks of an update (``old`` the stored object, ``new`` the checked one)."""
