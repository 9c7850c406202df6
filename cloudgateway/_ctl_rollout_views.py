"""What ``edgectl rollout`` decides and prints, as pure functions of API objects.

The decisions are kubectl's (``pkg/polymorphichelpers``: ``rollout_status.go``,
``history.go``, ``rollback.go``), so edgectl and kubectl agree on the same
objects; the messages are kubectl's words. Beside them, edgeflock's edge-aware
detail: the boards a DaemonSet rollout is waiting for because they are offline,
and a rollout the controller paused itself (or a user paused).

No I/O: ``_ctl_rollout`` fetches the objects and prints what these return.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from ._tables import get_path

__all__ = [
    "CHANGE_CAUSE",
    "DS_PAUSED",
    "DS_PENDING_OFFLINE",
    "RESTARTED_AT",
    "REVISION",
    "RolloutError",
    "controlled_by",
    "daemonset_history",
    "daemonset_status",
    "daemonset_undo_patch",
    "deployment_history",
    "deployment_status",
    "deployment_undo_patch",
    "describe_template",
    "edge_detail",
    "held_by_controller",
    "history_table",
    "selector_string",
]

CHANGE_CAUSE: Final = "kubernetes.io/change-cause"
REVISION: Final = "deployment.kubernetes.io/revision"
RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"
POD_TEMPLATE_HASH: Final = "pod-template-hash"
# edgeflock's marks on a DaemonSet (Kubernetes has no paused DaemonSet):
DS_PAUSED: Final = "edgeflock.io/paused"  # present: the rollout is held; value: why
DS_PENDING_OFFLINE: Final = "edgeflock.io/pending-offline"  # "node1,node2"
# Annotations a Deployment keeps through ``rollout undo`` (kubectl's annotationsToSkip).
_KEEP_ON_UNDO: Final = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)


class RolloutError(Exception):
    """A decision that ends the command with an error (kubectl's wording)."""


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _name(o: dict[str, Any]) -> str:
    return str(get_path(o, "metadata", "name") or "")


# ---- rollout status -----------------------------------------------------------------


def deployment_status(d: dict[str, Any]) -> tuple[str, bool]:
    """(message, done) for a Deployment, as kubectl's DeploymentStatusViewer;
    a Progressing condition with reason ProgressDeadlineExceeded raises."""
    name, st = _name(d), d.get("status") or {}
    if _int(get_path(d, "metadata", "generation")) > _int(st.get("observedGeneration")):
        return "Waiting for deployment spec update to be observed...", False
    for c in st.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Progressing":
            if c.get("reason") == "ProgressDeadlineExceeded":
                raise RolloutError(f'deployment "{name}" exceeded its progress deadline')
    replicas = get_path(d, "spec", "replicas")
    want = 1 if replicas is None else _int(replicas)  # the API's default
    updated, total = _int(st.get("updatedReplicas")), _int(st.get("replicas"))
    available = _int(st.get("availableReplicas"))
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if updated < want:
        return f"{waiting}{updated} out of {want} new replicas have been updated...", False
    if total > updated:
        return f"{waiting}{total - updated} old replicas are pending termination...", False
    if available < updated:
        return f"{waiting}{available} of {updated} updated replicas are available...", False
    return f'deployment "{name}" successfully rolled out', True


def daemonset_status(ds: dict[str, Any]) -> tuple[str, bool]:
    """(message, done) for a DaemonSet, as kubectl's DaemonSetStatusViewer
    (an absent update strategy is the API's default, RollingUpdate)."""
    strategy = get_path(ds, "spec", "updateStrategy", "type") or "RollingUpdate"
    if strategy != "RollingUpdate":
        raise RolloutError("rollout status is only available for RollingUpdate strategy type")
    name, st = _name(ds), ds.get("status") or {}
    if _int(get_path(ds, "metadata", "generation")) > _int(st.get("observedGeneration")):
        return "Waiting for daemon set spec update to be observed...", False
    desired, updated = (
        _int(st.get("desiredNumberScheduled")),
        _int(st.get("updatedNumberScheduled")),
    )
    available = _int(st.get("numberAvailable"))
    waiting = f'Waiting for daemon set "{name}" rollout to finish: '
    if updated < desired:
        return f"{waiting}{updated} out of {desired} new pods have been updated...", False
    if available < desired:
        return f"{waiting}{available} of {desired} updated pods are available...", False
    return f'daemon set "{name}" successfully rolled out', True


def _node_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [n.strip() for n in v.split(",") if n.strip()]
    if isinstance(v, list):
        return [str(n) for n in v if isinstance(n, str) and n]
    return []


def pending_offline(ds: dict[str, Any]) -> list[str]:
    """The boards, offline now, that have not got the current revision: from the
    controller's status (``status.pendingOffline``) or its annotation."""
    nodes = _node_list(get_path(ds, "status", "pendingOffline"))
    if not nodes:
        nodes = _node_list(get_path(ds, "metadata", "annotations", DS_PENDING_OFFLINE))
    return sorted(set(nodes))


def paused_reason(obj: dict[str, Any]) -> str | None:
    """Why a rollout is held, or None: a Deployment's ``spec.paused``, or
    edgeflock's pause mark on a DaemonSet (its value says why when the
    controller paused it; ``true`` when a user did)."""
    if obj.get("kind") == "Deployment" or get_path(obj, "spec", "paused") is not None:
        return "paused" if get_path(obj, "spec", "paused") is True else None
    mark = get_path(obj, "metadata", "annotations", DS_PAUSED)
    if mark is None:
        return None
    text = str(mark).strip()
    return "paused" if text.lower() in ("", "true") else f"paused: {text}"


def held_by_controller(obj: dict[str, Any]) -> str | None:
    """Why the controller paused a DaemonSet rollout itself (the pause mark's
    value, other than ``true``, which a user's ``rollout pause`` writes), or None."""
    if obj.get("kind") == "Deployment":
        return None
    mark = get_path(obj, "metadata", "annotations", DS_PAUSED)
    text = str(mark).strip() if mark is not None else ""
    return text if text and text.lower() != "true" else None


def edge_detail(obj: dict[str, Any]) -> list[str]:
    """edgeflock's lines under kubectl's message: offline boards still to be
    updated, and a held rollout."""
    lines = []
    offline = pending_offline(obj) if obj.get("kind") != "Deployment" else []
    if offline:
        lines.append(
            f"  {len(offline)} offline board{'s' if len(offline) != 1 else ''} pending "
            f"(updated when back online): {', '.join(offline)}"
        )
    reason = paused_reason(obj)
    if reason:
        lines.append(f"  rollout {reason}")
    return lines


# ---- history ------------------------------------------------------------------------


def selector_string(selector: Any) -> str:
    """A LabelSelector (matchLabels, matchExpressions) as a ``labelSelector``
    query string."""
    if not isinstance(selector, dict):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        if not isinstance(e, dict):
            continue
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """``obj`` has ``owner`` as its controller (metav1.IsControlledBy: by uid)."""
    uid = get_path(owner, "metadata", "uid")
    for ref in get_path(obj, "metadata", "ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return bool(uid) and ref.get("uid") == uid
    return False


def _strip_patch(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_patch(x) for k, x in v.items() if k != "$patch"}
    if isinstance(v, list):
        return [_strip_patch(x) for x in v]
    return v


def revision_template(cr: dict[str, Any]) -> dict[str, Any]:
    """The pod template a ControllerRevision of a DaemonSet records (its data is
    the patch ``{"spec": {"template": {..., "$patch": "replace"}}}``)."""
    t = get_path(cr, "data", "spec", "template")
    return _strip_patch(t) if isinstance(t, dict) else {}


def daemonset_history(
    ds: dict[str, Any], revisions: list[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """revision number -> ControllerRevision, for the revisions ``ds`` controls."""
    out: dict[int, dict[str, Any]] = {}
    for cr in revisions:
        if controlled_by(cr, ds) and isinstance(cr.get("revision"), int):
            out[cr["revision"]] = cr
    return out


def _revision_of(obj: dict[str, Any]) -> int | None:
    text = get_path(obj, "metadata", "annotations", REVISION)
    try:
        return int(text) if isinstance(text, str) else None
    except ValueError:
        return None


def deployment_history(
    d: dict[str, Any], replicasets: list[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """revision number -> ReplicaSet, for the ReplicaSets ``d`` controls that
    carry ``deployment.kubernetes.io/revision``."""
    out: dict[int, dict[str, Any]] = {}
    for rs in replicasets:
        rev = _revision_of(rs)
        if rev is not None and controlled_by(rs, d):
            out[rev] = rs
    return out


def history_table(history: dict[int, dict[str, Any]]) -> str:
    """kubectl's REVISION / CHANGE-CAUSE table (tabwriter, padding 2)."""
    if not history:
        return "No rollout history found."
    rows = [("REVISION", "CHANGE-CAUSE")]
    for rev in sorted(history):
        cause = get_path(history[rev], "metadata", "annotations", CHANGE_CAUSE)
        rows.append((str(rev), str(cause) if cause else "<none>"))
    width = max(len(r[0]) for r in rows) + 2
    return "".join(f"{a.ljust(width)}{b}\n" for a, b in rows)


# ---- undo ---------------------------------------------------------------------------


def _find_previous(history: dict[int, dict[str, Any]], to_revision: int) -> dict[str, Any]:
    if to_revision < 0:
        raise RolloutError(f"unable to find specified revision {to_revision} in history")
    if to_revision == 0:
        if len(history) <= 1:
            raise RolloutError("no last revision to roll back to")
        return history[sorted(history)[-2]]
    if to_revision not in history:
        raise RolloutError(f"unable to find specified revision {to_revision} in history")
    return history[to_revision]


def daemonset_undo_patch(
    ds: dict[str, Any], history: dict[int, dict[str, Any]], to_revision: int
) -> dict[str, Any] | None:
    """The strategic merge patch that restores a DaemonSet's template from its
    history (the revision's own data, as kubectl sends it); None when the
    template already matches that revision."""
    cr = _find_previous(history, to_revision)
    if revision_template(cr) == (get_path(ds, "spec", "template") or {}):
        return None
    data = cr.get("data")
    if not isinstance(data, dict):
        raise RolloutError(f"unable to parse history {_name(cr)}")
    return data


def _without_hash(template: Any) -> dict[str, Any]:
    t: dict[str, Any] = json.loads(json.dumps(template if isinstance(template, dict) else {}))
    labels = get_path(t, "metadata", "labels")
    if isinstance(labels, dict):
        labels.pop(POD_TEMPLATE_HASH, None)
    return t


def deployment_undo_patch(
    d: dict[str, Any], history: dict[int, dict[str, Any]], to_revision: int
) -> list[dict[str, Any]] | None:
    """The JSON patch that restores a Deployment's template (and the
    ReplicaSet's annotations) from revision ``to_revision`` (0: the one before
    the newest), as kubectl's DeploymentRollbacker; None when the template
    already matches."""
    if to_revision < 0:
        raise RolloutError(f"unable to find specified revision {to_revision} in history")
    if to_revision == 0:
        if len(history) < 2:
            raise RolloutError(f'no rollout history found for deployment "{_name(d)}"')
        rs = history[sorted(history)[-2]]
    elif to_revision in history:
        rs = history[to_revision]
    else:
        raise RolloutError(f"unable to find specified revision {to_revision} in history")
    if get_path(d, "spec", "paused") is True:
        raise RolloutError(
            "you cannot rollback a paused deployment; resume it first with "
            "'edgectl rollout resume' and try again"
        )
    template = _without_hash(get_path(rs, "spec", "template"))
    if template == _without_hash(get_path(d, "spec", "template")):
        return None
    current = get_path(d, "metadata", "annotations") or {}
    annotations = {k: v for k, v in current.items() if k in _KEEP_ON_UNDO}
    for k, v in (get_path(rs, "metadata", "annotations") or {}).items():
        if k not in _KEEP_ON_UNDO:
            annotations[k] = v
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]


# ---- a pod template, as kubectl describes one ------------------------------------


def _multiline(title: str, pairs: list[str]) -> list[str]:
    if not pairs:
        return [f"{title}:\t<none>"]
    return [f"{title}:\t{pairs[0]}"] + [f"\t{p}" for p in pairs[1:]]


def _ports(ports: list[Any], field: str) -> str:
    out = []
    for p in ports:
        if isinstance(p, dict):
            text = f"{_int(p.get(field))}/{p.get('protocol') or 'TCP'}"
            out.append(f"{text} ({p['name']})" if p.get("name") else text)
    return ", ".join(out)


def _describe_container(c: dict[str, Any]) -> list[str]:
    lines = [f"   {c.get('name')}:", f"    Image:\t{c.get('image') or ''}"]
    ports = [p for p in c.get("ports") or [] if isinstance(p, dict)]
    for label, field in (("Port", "containerPort"), ("Host Port", "hostPort")):
        text = _ports(ports, field)
        if "," in text:
            lines.append(f"    {label}s:\t{text}")
        else:
            lines.append(f"    {label}:\t{text or '<none>'}")
    for label in ("command", "args"):
        if c.get(label):
            lines.append(f"    {label.title()}:")
            lines += [f"      {s}" for arg in c[label] for s in str(arg).split("\n")]
    for kind in ("limits", "requests"):
        amounts = get_path(c, "resources", kind) or {}
        if amounts:
            lines.append(f"    {kind.title()}:")
            lines += [f"      {k}:\t{v}" for k, v in sorted(amounts.items())]
    env = [e for e in c.get("env") or [] if isinstance(e, dict)]
    lines.append("    Environment:" + ("" if env else "\t<none>"))
    for e in env:
        if "valueFrom" in e:
            lines.append(f"      {e.get('name')}:\t<set from {_value_from(e['valueFrom'])}>")
            continue
        first, *rest = str(e.get("value") or "").split("\n")
        lines.append(f"      {e.get('name')}:\t{first}")
        lines += [f"      \t{s}" for s in rest]
    mounts = [m for m in c.get("volumeMounts") or [] if isinstance(m, dict)]
    lines.append("    Mounts:" + ("" if mounts else "\t<none>"))
    for m in sorted(mounts, key=lambda m: str(m.get("mountPath"))):
        flags = ["ro" if m.get("readOnly") else "rw"]
        if m.get("subPath"):
            flags.append(f'path="{m["subPath"]}"')
        lines.append(f"      {m.get('mountPath')} from {m.get('name')} ({','.join(flags)})")
    return lines


def _value_from(src: Any) -> str:
    if not isinstance(src, dict) or not src:
        return "?"
    kind, ref = next(iter(src.items()))
    if isinstance(ref, dict):
        return f"{kind} {ref.get('name') or ref.get('fieldPath') or ''}".strip()
    return str(kind)


def _toleration(t: dict[str, Any]) -> str:
    text = str(t.get("key") or "")
    if t.get("value"):
        text += f"={t['value']}"
    if t.get("effect"):
        text += f":{t['effect']}"
    if t.get("operator") == "Exists" and not t.get("value"):
        text += " op=Exists" if (t.get("key") or t.get("effect")) else "op=Exists"
    if isinstance(t.get("tolerationSeconds"), int):
        text += f" for {t['tolerationSeconds']}s"
    return text


def describe_template(template: dict[str, Any]) -> str:
    """``Pod Template:`` as ``kubectl rollout history --revision N`` prints it
    (kubectl's DescribePodTemplate, for the fields edgeflock's pods have)."""
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    lines = ["Pod Template:"]
    labels = meta.get("labels") or {}
    lines += _multiline("  Labels", [f"{k}={v}" for k, v in sorted(labels.items())])
    notes = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    if notes:
        lines += _multiline("  Annotations", [f"{k}: {v}" for k, v in sorted(notes.items())])
    if spec.get("serviceAccountName"):
        lines.append(f"  Service Account:\t{spec['serviceAccountName']}")
    for title, field in (("Init Containers", "initContainers"), ("Containers", "containers")):
        cs = [c for c in spec.get(field) or [] if isinstance(c, dict)]
        if field == "initContainers" and not cs:
            continue
        lines.append(f"  {title}:" + ("" if cs else " <none>"))
        for c in cs:
            lines += _describe_container(c)
    volumes = [v for v in spec.get("volumes") or [] if isinstance(v, dict)]
    lines.append("  Volumes:" + ("" if volumes else "\t<none>"))
    for v in volumes:
        source = next((k for k in v if k != "name"), "")
        lines += [f"   {v.get('name')}:", f"    Type:\t{source}"]
    if spec.get("priorityClassName"):
        lines.append(f"  Priority Class Name:\t{spec['priorityClassName']}")
    selector = spec.get("nodeSelector") or {}
    lines += _multiline("  Node-Selectors", [f"{k}={v}" for k, v in sorted(selector.items())])
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    tolerations.sort(key=lambda t: str(t.get("key") or ""))
    lines += _multiline("  Tolerations", [_toleration(t) for t in tolerations])
    return "\n".join(lines) + "\n"


Viewer = Callable[[dict[str, Any]], tuple[str, bool]]
