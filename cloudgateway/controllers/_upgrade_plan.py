"""What the NodeUpgradeJob controller decides, as a pure function of the job,
what it knows of the targeted nodes and releases, and the time: the job's
next ``status`` (``next_status``), and which nodes should carry the job's
assignment (``assigned``). No I/O; ``_upgrade.py`` reads and writes.

A node's entry in ``status.nodeStatus`` is *handed out* once it has a
``startTime`` (the controller then puts the assignment on the Node); its
``state`` moves with the board's reports until it is terminal (``healthy``,
``rolledBack``, ``failed``). Offline (NotReady) nodes are not handed out and
take no slot of ``concurrency``; handed-out nodes keep theirs until terminal
(a board restarting into its new version goes NotReady for a moment).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import edgeproto
from edgeproto.upgrade import Assignment, NodeState

from .._upgradeschema import DEFAULTS, failure_tolerance

__all__ = [
    "KUBELET_PREFIX",
    "NodeFacts",
    "ReleaseRef",
    "agent_version",
    "assigned",
    "handed_out",
    "next_deadline",
    "next_status",
]

KUBELET_PREFIX = "-edgeflock."  # kubeletVersion: v1.30.0-edgeflock.<version>
UPGRADING, COMPLETED, FAILED, ABORTED = "upgrading", "completed", "failed", "aborted"
_TERMINAL = frozenset(s.value for s in NodeState if s.terminal)
_FAILED = frozenset({NodeState.FAILED.value, NodeState.ROLLED_BACK.value})


@dataclass(frozen=True, slots=True)
class NodeFacts:
    ready: bool
    version: str | None  # the edgeflock version its kubeletVersion names
    arch: str | None  # the bundle architecture of its kubernetes.io/arch label
    busy: str | None = None  # another job whose assignment it carries


@dataclass(frozen=True, slots=True)
class ReleaseRef:
    sha256: str
    size: int


def agent_version(node: Mapping[str, Any]) -> str | None:
    """The edgeflock version a Node's ``status.nodeInfo.kubeletVersion`` names."""
    info = ((node.get("status") or {}).get("nodeInfo") or {}) if isinstance(node, Mapping) else {}
    text = info.get("kubeletVersion") if isinstance(info, Mapping) else None
    if not isinstance(text, str) or KUBELET_PREFIX not in text:
        return None
    return text.split(KUBELET_PREFIX, 1)[1] or None


def _spec_int(spec: Mapping[str, Any], field: str) -> int:
    v = spec.get(field)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else DEFAULTS[field]


def _tolerance(spec: Mapping[str, Any]) -> float:
    t = failure_tolerance(spec.get("failureTolerate"))
    return t if t is not None else float(DEFAULTS["failureTolerate"])


def _time(text: Any) -> float | None:
    return edgeproto.parse_rfc3339(text) if isinstance(text, str) else None


def handed_out(entry: Mapping[str, Any]) -> bool:
    return bool(entry.get("startTime")) and entry.get("state") not in _TERMINAL


def _set(entry: dict[str, Any], state: str, reason: str, at: str) -> None:
    entry.update(state=state, reason=reason, time=at)


def _failed_share(entries: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(1 for e in entries if e.get("state") in _FAILED), len(entries)


def next_status(
    job: Mapping[str, Any],
    *,
    targets: list[str] | None,
    facts: Mapping[str, NodeFacts | None],
    releases: Mapping[str, ReleaseRef],
    now: float,
) -> dict[str, Any]:
    """The job's status after one look at the world. ``targets``: the nodes
    the job selects now (used only if the job has not started); ``facts``:
    per targeted node, None if it does not exist; ``releases``: the complete
    release of the job's version for each architecture."""
    spec = job.get("spec") or {}
    version = str(spec.get("version"))
    at = edgeproto.rfc3339(now)
    status: dict[str, Any] = copy.deepcopy(dict(job.get("status") or {}))
    if not status.get("state"):
        status = {
            "state": UPGRADING,
            "startTime": at,
            "nodeStatus": [
                {"nodeName": n, "state": NodeState.PENDING.value, "reason": "", "time": at}
                for n in sorted(set(targets or ()))
            ],
        }
    if status["state"] != UPGRADING:
        return status
    entries: list[dict[str, Any]] = [
        e for e in status.get("nodeStatus") or [] if isinstance(e, dict)
    ]
    if spec.get("suspend") is True:
        status.update(
            state=ABORTED,
            reason="suspended: nothing more is handed out (boards already upgraded stay)",
            completionTime=at,
        )
        return status
    timeout = _spec_int(spec, "timeoutSeconds")
    started = _time(status.get("startTime")) or now
    deadline = started + _spec_int(spec, "activeDeadlineSeconds")
    for e in entries:
        name, state = e.get("nodeName"), e.get("state")
        f = facts.get(name) if isinstance(name, str) else None
        if state in _TERMINAL:
            continue
        if not e.get("startTime"):  # not handed out
            if f is not None and f.version == version:
                _set(e, NodeState.HEALTHY.value, f"already at version {version}", at)
            continue
        if f is None:
            _set(e, NodeState.FAILED.value, f"node {name} was deleted", at)
            continue
        handed = _time(e.get("startTime")) or now
        if now - handed > timeout:
            _set(
                e,
                NodeState.FAILED.value,
                f"timed out: not healthy within timeoutSeconds ({timeout} s) of the hand-out"
                + (f" (last state {state})" if state != NodeState.PENDING.value else ""),
                at,
            )
    if now > deadline:
        for e in entries:
            if e.get("state") not in _TERMINAL:
                _set(
                    e,
                    NodeState.FAILED.value,
                    "the job's deadline (activeDeadlineSeconds "
                    f"{_spec_int(spec, 'activeDeadlineSeconds')} s) passed first"
                    + ("" if e.get("startTime") else ": the board was offline"),
                    at,
                )
    tolerance = _tolerance(spec)
    if _over(entries, tolerance):
        return _finish(status, entries, tolerance, at)
    slots = _spec_int(spec, "concurrency") - sum(1 for e in entries if handed_out(e))
    for e in entries:
        if slots <= 0:
            break
        if e.get("state") in _TERMINAL or e.get("startTime"):
            continue
        name = str(e.get("nodeName"))
        f = facts.get(name)
        if f is None:
            _set(e, NodeState.FAILED.value, f"node {name} does not exist", at)
            continue
        if not f.ready:
            _waiting(e, "waiting: the node is offline", at)
            continue
        if f.busy:
            _waiting(e, f"waiting: the node is being upgraded by job {f.busy}", at)
            continue
        if f.arch is None:
            _set(
                e,
                NodeState.FAILED.value,
                "the node's kubernetes.io/arch label names no architecture edgeflock releases",
                at,
            )
            continue
        release = releases.get(f.arch)
        if release is None:
            _set(
                e,
                NodeState.FAILED.value,
                f"no complete release of version {version} for {f.arch} "
                "(push one with edgectl upgrade push)",
                at,
            )
            continue
        e.update(
            state=NodeState.PENDING.value,
            reason="handed out",
            time=at,
            startTime=at,
            release=release.sha256,
            size=release.size,
        )
        slots -= 1
    if _over(entries, tolerance) or all(e.get("state") in _TERMINAL for e in entries):
        return _finish(status, entries, tolerance, at)
    return status


def _waiting(e: dict[str, Any], reason: str, at: str) -> None:
    if e.get("reason") != reason:
        e.update(reason=reason, time=at)


def _over(entries: list[dict[str, Any]], tolerance: float) -> bool:
    failed, total = _failed_share(entries)
    return bool(total) and failed / total > tolerance


def _finish(
    status: dict[str, Any], entries: list[dict[str, Any]], tolerance: float, at: str
) -> dict[str, Any]:
    failed, total = _failed_share(entries)
    healthy = sum(1 for e in entries if e.get("state") == NodeState.HEALTHY.value)
    share = f"{failed} of {total} boards failed or rolled back (failureTolerate {tolerance:g})"
    if _over(entries, tolerance):
        status.update(state=FAILED, reason=f"{share}: stopped", completionTime=at)
    else:
        status.update(
            state=COMPLETED,
            reason=f"{healthy} of {total} boards healthy; {share}",
            completionTime=at,
        )
    return status


def assigned(job: Mapping[str, Any]) -> dict[str, Assignment]:
    """The assignment each node should carry for this job now (none unless
    the job is upgrading; only its handed-out, unfinished nodes)."""
    status = job.get("status") or {}
    if status.get("state") != UPGRADING:
        return {}
    spec = job.get("spec") or {}
    meta = job.get("metadata") or {}
    out: dict[str, Assignment] = {}
    for e in status.get("nodeStatus") or []:
        if not isinstance(e, dict) or not handed_out(e):
            continue
        size, release = e.get("size"), e.get("release")
        if not isinstance(size, int) or not isinstance(release, str):
            continue
        out[str(e.get("nodeName"))] = Assignment(
            job=str(meta.get("name")),
            uid=str(meta.get("uid")),
            version=str(spec.get("version")),
            release=release,
            size=size,
            health_timeout=min(86400, _spec_int(spec, "healthTimeoutSeconds")),
        )
    return out


def next_deadline(job: Mapping[str, Any]) -> float | None:
    """When something will time out next (a handed-out node, or the job), as
    a Unix time; None when the job is not upgrading."""
    status = job.get("status") or {}
    if status.get("state") != UPGRADING:
        return None
    spec = job.get("spec") or {}
    started = _time(status.get("startTime"))
    times = [] if started is None else [started + _spec_int(spec, "activeDeadlineSeconds")]
    timeout = _spec_int(spec, "timeoutSeconds")
    for e in status.get("nodeStatus") or []:
        if isinstance(e, dict) and handed_out(e):
            t = _time(e.get("startTime"))
            if t is not None:
                times.append(t + timeout)
    return min(times) if times else None
