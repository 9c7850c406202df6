"""KubeEdge's EdgeApplication overriders, applied to a workload manifest. Pure: no I/O.

An EdgeApplication (``apps.kubeedge.io/v1alpha1``) gives each target node group
``overriders``: ``replicas``, ``imageOverriders`` (change the registry,
repository or tag of container images), ``envOverriders``, ``commandOverriders``,
``argsOverriders`` and ``resourcesOverriders``. They act as KubeEdge's
edgeapplication controller makes them act (``overridemanager``), on the pod
template of a workload (``spec.template.spec``) or of a Pod (``spec``):

- replicas: sets ``spec.replicas`` (Deployments only).
- image: ``Registry``/``Repository``/``Tag`` with ``add`` (appended to that
  component as text), ``replace`` or ``remove``; every container's image, or
  the one image at ``predicate.path``. Images are split as Docker references
  are (``[host[:port]/]repository[:tag|@digest]``; the first path part is a host
  when it has a ``.`` or ``:`` or is ``localhost``). A tag value that is a
  digest sets the digest.
- env: per container (``containerName``), ``add`` appends the variables,
  ``remove`` drops those of the given names, ``replace`` replaces them by name
  (in place; new names are appended).
- command/args: ``add`` appends the values, ``remove`` drops every occurrence.
- resources: each non-zero quantity of ``value.requests``/``value.limits`` is
  set (the others are kept).

Where KubeEdge silently produces something broken, this module says so
instead (``OverrideError``): an image that is not a reference before or after
the change, an operator or component outside the enum, a tag value that is
neither a tag nor a digest, a negative or non-integer replica count. Overriders
naming a container the workload does not have change nothing, as in KubeEdge;
``apply_overriders`` returns those as notes so the controller can report them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import GatewayError

__all__ = [
    "ImageRef",
    "OverrideError",
    "apply_overriders",
    "override_image",
    "parse_image",
    "pod_spec_path",
]

POD_TEMPLATE_KINDS = frozenset({"Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job"})


class OverrideError(GatewayError):
    """An overrider that cannot be applied; the message names it (its field path
    under ``overriders``) and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---- image references (Docker's grammar, github.com/distribution/reference) -------

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image reference split as KubeEdge splits it."""

    hostname: str  # "registry.example:5000"; "" when the reference names none
    repository: str  # "team/app"
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        full = f"{self.hostname}/{self.repository}" if self.hostname else self.repository
        if self.tag:
            return f"{full}:{self.tag}"
        if self.digest:
            return f"{full}@{self.digest}"
        return full


def parse_image(image: str) -> ImageRef:
    """``image`` split into host, repository and tag or digest; ``ValueError`` if
    it is not a Docker image reference (as ``docker pull`` would refuse it)."""
    if not isinstance(image, str) or not image:
        raise ValueError("an image reference must be a non-empty string")
    m = _REFERENCE.fullmatch(image)
    if m is None:
        if image.lower() != image and _REFERENCE.fullmatch(image.lower()):
            raise ValueError(f"{image!r}: repository name must be lowercase")
        raise ValueError(f"{image!r} is not a valid image reference")
    name, tag, digest = m.group(1), m.group(2) or "", m.group(3) or ""
    if len(name) > _NAME_MAX:
        raise ValueError(f"{image!r}: repository name must not be more than {_NAME_MAX} characters")
    host, repo = _split_hostname(name)
    # Docker's Parse yields a tagged reference when there is a tag (a digest
    # beside it is not kept), else a digested one.
    return ImageRef(host, repo, tag, "" if tag else digest)


def _split_hostname(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (not any(c in first for c in ".:") and first != "localhost"):
        return "", name
    return first, rest


def override_image(image: str, component: Any, operator: Any, value: Any) -> str:
    """``image`` with one component changed as an ``imageOverrider`` says.
    ``ValueError`` names what is wrong."""
    ref = parse_image(image)
    if operator not in ("add", "remove", "replace"):
        raise ValueError(f"operator {operator!r} is not one of add, remove, replace")
    val = "" if value is None else value
    if not isinstance(val, str):
        raise ValueError("value must be a string")
    if operator in ("add", "replace") and not val:
        raise ValueError(f"value must not be empty when operator is {operator!r}")
    if component == "Registry":
        host = {"add": ref.hostname + val, "replace": val, "remove": ""}[operator]
        out = ImageRef(host, ref.repository, ref.tag, ref.digest)
    elif component == "Repository":
        repo = {"add": ref.repository + val, "replace": val, "remove": ""}[operator]
        out = ImageRef(ref.hostname, repo, ref.tag, ref.digest)
    elif component == "Tag":
        if operator == "remove":  # a parsed reference has a tag or a digest, not both
            out = ImageRef(ref.hostname, ref.repository)
        else:
            new = (ref.tag or ref.digest) + val if operator == "add" else val
            if _TAG_RE.fullmatch(new):
                out = ImageRef(ref.hostname, ref.repository, new, "")
            elif _DIGEST_RE.fullmatch(new):
                out = ImageRef(ref.hostname, ref.repository, "", new)
            else:
                raise ValueError(f"{new!r} is neither a tag nor a digest")
    else:
        raise ValueError(f"component {component!r} is not one of Registry, Repository, Tag")
    text = str(out)
    try:
        parse_image(text)
    except ValueError as exc:
        raise ValueError(f"the result {text!r} is not a valid image reference ({exc})") from None
    return text


# ---- applying overriders -----------------------------------------------------------


def pod_spec_path(kind: str) -> tuple[str, ...] | None:
    """Where a kind keeps its pod spec: ``spec`` for a Pod,
    ``spec.template.spec`` for the workload kinds; None for other kinds."""
    if kind == "Pod":
        return ("spec",)
    if kind in POD_TEMPLATE_KINDS:
        return ("spec", "template", "spec")
    return None


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _list(overriders: Mapping[str, Any], field: str) -> list[Any]:
    value = overriders.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OverrideError(field, "must be a list")
    return value


def apply_overriders(
    manifest: Mapping[str, Any], overriders: Mapping[str, Any] | None, *, where: str = "overriders"
) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``manifest`` with ``overriders`` applied, and notes about
    overriders that changed nothing (a container the manifest does not have).
    ``where`` prefixes field paths in errors and notes
    (``spec.workloadScope.targetNodeGroups[1].overriders``). ``OverrideError``
    for an overrider that cannot be applied."""
    obj = copy.deepcopy(dict(manifest))
    notes: list[str] = []
    if not overriders:
        return obj, notes
    if not isinstance(overriders, Mapping):
        raise OverrideError(where, "must be an object")
    kind = str(obj.get("kind", ""))
    path = pod_spec_path(kind)
    pod_spec = _dig(obj, path) if path else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(containers, list):
        containers = []

    replicas = overriders.get("replicas")
    if replicas is not None:
        if kind != "Deployment":
            raise OverrideError(f"{where}.replicas", f"applies to Deployments, not {kind}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise OverrideError(f"{where}.replicas", f"{replicas!r} is not a whole number >= 0")
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise OverrideError(f"{where}.replicas", "the manifest's spec is not an object")
        spec["replicas"] = replicas

    for i, rule in enumerate(_list(overriders, "imageOverriders")):
        _override_images(obj, path, containers, rule, f"{where}.imageOverriders[{i}]")

    for field in ("commandOverriders", "argsOverriders"):
        target = "command" if field == "commandOverriders" else "args"
        for i, rule in enumerate(_list(overriders, field)):
            at = f"{where}.{field}[{i}]"
            for c in _matching(containers, rule, at, notes):
                c[target] = _override_strings(c.get(target), rule, at)

    for i, rule in enumerate(_list(overriders, "envOverriders")):
        at = f"{where}.envOverriders[{i}]"
        for c in _matching(containers, rule, at, notes):
            c["env"] = _override_env(c.get("env"), rule, at)

    for i, rule in enumerate(_list(overriders, "resourcesOverriders")):
        at = f"{where}.resourcesOverriders[{i}]"
        for c in _matching(containers, rule, at, notes):
            _override_resources(c, rule, at)
    return obj, notes


def _matching(containers: list[Any], rule: Any, at: str, notes: list[str]) -> list[dict[str, Any]]:
    if not isinstance(rule, Mapping):
        raise OverrideError(at, "must be an object")
    name = rule.get("containerName")
    if not isinstance(name, str) or not name:
        raise OverrideError(f"{at}.containerName", "is required")
    found = [c for c in containers if isinstance(c, dict) and c.get("name") == name]
    if not found:
        notes.append(f"{at}: no container named {name!r}; nothing changed")
    return found


def _override_images(
    obj: dict[str, Any],
    path: tuple[str, ...] | None,
    containers: list[Any],
    rule: Any,
    at: str,
) -> None:
    if not isinstance(rule, Mapping):
        raise OverrideError(at, "must be an object")
    component, operator, value = rule.get("component"), rule.get("operator"), rule.get("value")
    predicate = rule.get("predicate")
    if predicate is not None:
        if not isinstance(predicate, Mapping) or not isinstance(predicate.get("path"), str):
            raise OverrideError(f"{at}.predicate.path", "is required")
        ptr = predicate["path"]
        parent, last = _resolve_pointer(obj, ptr, f"{at}.predicate.path")
        current = parent[last]
        if not isinstance(current, str):
            raise OverrideError(f"{at}.predicate.path", f"{ptr!r} does not name a string")
        try:
            parent[last] = override_image(current, component, operator, value)
        except ValueError as exc:
            raise OverrideError(at, str(exc)) from None
        return
    if path is None:
        return  # KubeEdge finds no images in other kinds without a predicate
    for c in containers:
        if not isinstance(c, dict):
            continue
        image = c.get("image")
        if not isinstance(image, str):
            raise OverrideError(at, f"container {c.get('name')!r} has no image to override")
        try:
            c["image"] = override_image(image, component, operator, value)
        except ValueError as exc:
            raise OverrideError(at, f"container {c.get('name')!r}: {exc}") from None


def _resolve_pointer(obj: Any, ptr: str, at: str) -> tuple[Any, Any]:
    """The container of the value a ``/a/0/b`` path names, and its key there."""
    if not ptr.startswith("/"):
        raise OverrideError(at, f"{ptr!r} must start with '/'")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ptr.strip("/").split("/")]
    node: Any = obj
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise OverrideError(at, f"{ptr!r}: no element {part!r}")
            key = int(part)
        elif not isinstance(node, dict) or part not in node:
            raise OverrideError(at, f"{ptr!r}: no field {part!r}")
        if last:
            return node, key
        node = node[key]
    raise OverrideError(at, f"{ptr!r} names no field")


def _override_strings(current: Any, rule: Mapping[str, Any], at: str) -> list[str]:
    operator = rule.get("operator")
    values = rule.get("value") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise OverrideError(f"{at}.value", "must be a list of strings")
    cur = [str(v) for v in current] if isinstance(current, list) else []
    if operator == "add":
        return cur + values
    if operator == "remove":
        drop = set(values)
        return [v for v in cur if v not in drop]
    raise OverrideError(f"{at}.operator", f"{operator!r} is not one of add, remove")


def _override_env(current: Any, rule: Mapping[str, Any], at: str) -> list[Any]:
    operator = rule.get("operator")
    values = rule.get("value") or []
    if not isinstance(values, list) or not all(
        isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] for v in values
    ):
        raise OverrideError(f"{at}.value", "must be a list of env vars, each with a name")
    cur = [e for e in current if isinstance(e, dict)] if isinstance(current, list) else []
    if operator == "add":
        if not values:
            raise OverrideError(f"{at}.value", "must not be empty when operator is 'add'")
        return cur + copy.deepcopy(values)
    if operator == "remove":
        drop = {v["name"] for v in values}
        return [e for e in cur if e.get("name") not in drop]
    if operator == "replace":
        if not values:
            raise OverrideError(f"{at}.value", "must not be empty when operator is 'replace'")
        by_name = {v["name"]: copy.deepcopy(v) for v in values}
        out = [by_name.pop(e.get("name"), e) for e in cur]
        return out + list(by_name.values())
    raise OverrideError(f"{at}.operator", f"{operator!r} is not one of add, remove, replace")


_ZERO_QUANTITY = re.compile(r"[+-]?(0+\.?0*|\.0+)([eE][+-]?[0-9]+|[a-zA-Z]{0,2})?")


def _is_zero(quantity: Any) -> bool:
    if isinstance(quantity, bool):
        return False
    if isinstance(quantity, int | float):
        return quantity == 0
    return isinstance(quantity, str) and _ZERO_QUANTITY.fullmatch(quantity.strip()) is not None


def _override_resources(container: dict[str, Any], rule: Mapping[str, Any], at: str) -> None:
    value = rule.get("value")
    if not isinstance(value, Mapping) or not value:
        raise OverrideError(f"{at}.value", "must not be empty")
    resources = container.get("resources")
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    for part in ("requests", "limits"):
        wanted = value.get(part)
        if wanted is None:
            continue
        if not isinstance(wanted, Mapping):
            raise OverrideError(f"{at}.value.{part}", "must be an object")
        for name, quantity in wanted.items():
            if not isinstance(quantity, str | int | float) or isinstance(quantity, bool):
                raise OverrideError(f"{at}.value.{part}.{name}", "must be a quantity")
            if _is_zero(quantity):
                continue  # KubeEdge overrides only non-zero quantities
            have = resources.get(part)
            if not isinstance(have, dict):
                have = resources[part] = {}
            have[name] = quantity if isinstance(quantity, str) else str(quantity)
